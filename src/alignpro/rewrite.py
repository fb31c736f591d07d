"""The rewrite stage: the prompter turns each user prompt x into x' with a fixed meta-prompt.

The meta-prompt goes in the USER turn, with the prompt to rewrite quoted inside it, not in a system
turn followed by the bare prompt: (1) given a bare prompt as the user turn, small chat models tend
to answer it instead of rewriting it, while an instruction that surrounds the prompt marks it as
text to work on; (2) small instruction-tuned models follow user-turn instructions more reliably
than system prompts; (3) some chat templates (Gemma's, for one) reject a system role.

The prompter is asked to put x' between <prompt> tags; `extract_rewrite` also accepts the usual
deviations (a label such as "Rewritten prompt:", quotes, code fences, several candidates, an
"Explanation:" after an untagged rewrite) and falls back to x when nothing usable is left, so the
frozen model always gets a prompt.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from alignpro.generation import SamplingSettings
from alignpro.sampling import Completion, Sampling
from alignpro.settings import from_section
from alignpro.tables import REWRITES

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "Rewrite the prompt below so that an AI assistant answers it as helpfully, accurately and safely "
    "as possible. Make it clearer and more specific, and give it structure where that helps (context, "
    "the exact task, the expected form of the answer). Keep the user's intent, details and language; "
    "do not change what is being asked.",
    "Do not answer the prompt. Reply with the rewritten prompt only, between <prompt> and </prompt>.",
)
META_PROMPT = "\n\n".join(INSTRUCTIONS) + "\n\nPrompt to rewrite:\n<original_prompt>\n{prompt}\n</original_prompt>"

# Rewrites may grow (that is the point) but not without bound; short prompts get this much room.
RUNAWAY_FLOOR_CHARS = 200

_TAG_NAME = r"(?:(?:rewritten|improved|revised|new)[ _-]?)?prompt"
_OPEN_TAG = re.compile(rf"<\s*{_TAG_NAME}\s*>", re.IGNORECASE)
_CLOSE_TAG = re.compile(rf"<\s*/\s*{_TAG_NAME}\s*>", re.IGNORECASE)
_ADJECTIVE = r"(?:rewritten|improved|revised|refined|optimi[sz]ed|enhanced|clearer|better|new)"
_LABEL = (
    r"[#*_\s]*"  # markdown heading or emphasis
    r"(?:(?:sure|okay|ok|certainly)\W{0,3}\s*)?"
    r"(?:here(?:'s|’s|\s+is)\s+(?:(?:the|an?|my|your)\s+)?)?"
    rf"(?:(?:{_ADJECTIVE}\s+)?(?:version\s+of\s+(?:(?:the|your)\s+)?)?(?:prompt|rewrite)(?:\s*#?\d+)?"
    rf"|{_ADJECTIVE}\s+version(?:\s*#?\d+)?"
    r"|(?:option|candidate|alternative|version)\s*#?\d+(?:\s*\([^()\n]*\))?)"  # "Option 1 (Concise):"
    r"[*_\s]*:[*_]*"
)
_LEADING_LABEL = re.compile(_LABEL, re.IGNORECASE)
_LABEL_LINE = re.compile(rf"^{_LABEL}", re.IGNORECASE | re.MULTILINE)
# After a leading label, a paragraph that comments on the rewrite ends it.
_AFTERWORD = re.compile(
    r"\n[ \t]*\n[#*_\s]*(?:explanation\b[^\n:]*:"
    r"|this\s+(?:(?:rewritten|revised|improved|new)\s+(?:prompt|version)|prompt|rewrite)\b)",
    re.IGNORECASE,
)
_FENCED = re.compile(r"```[^\n]*\n((?:(?!```).)*?)\n?```", re.DOTALL)
_QUOTE_PAIRS = ('""', "''", "“”", "‘’", "«»")


def prompter_conversation(prompt: str) -> list[dict]:
    """The prompter's input for one prompt: a single user turn holding the meta-prompt and x."""
    return [{"role": "user", "content": META_PROMPT.format(prompt=prompt)}]


def extract_rewrite(
    raw: str, prompt: str, finish_reason: str, *, fallback_on_truncation: bool, max_length_ratio: float
) -> tuple[str, str | None]:
    """x' from the prompter's raw output, or (x, reason) when it is unusable.

    Reasons: "truncated" (the output hit max_new_tokens before a closing </prompt> tag, if
    fallback_on_truncation), "empty" (nothing left, or the meta-prompt echoed back) and "runaway"
    (longer than max_length_ratio times x, at least RUNAWAY_FLOOR_CHARS characters).
    """
    rewrite, closed = _extract(raw)
    if finish_reason == "length" and fallback_on_truncation and not closed:
        return prompt, "truncated"
    if not rewrite or _echoes_instructions(raw):
        return prompt, "empty"
    if len(rewrite) > max(max_length_ratio * len(prompt), RUNAWAY_FLOOR_CHARS):
        return prompt, "runaway"
    return rewrite, None


def _extract(raw: str) -> tuple[str, bool]:
    """The first candidate rewrite in `raw`, and whether a closing tag ended it."""
    tagged = _first_tagged(raw)
    text, closed = tagged if tagged else (_first_labelled_candidate(raw), False)
    return _unwrap(text), closed


def _first_tagged(raw: str) -> tuple[str, bool] | None:
    """The text in the first <prompt> block; an unclosed block ends at the next one or at the end."""
    opening = _OPEN_TAG.search(raw)
    if opening is None:
        closing = _CLOSE_TAG.search(raw)
        return (raw[: closing.start()], True) if closing else None
    rest = raw[opening.end() :]
    closing = _CLOSE_TAG.search(rest)
    next_opening = _OPEN_TAG.search(rest)
    if closing and not (next_opening and next_opening.start() < closing.start()):
        return rest[: closing.start()], True
    return (rest[: next_opening.start()] if next_opening else rest), False


def _first_labelled_candidate(raw: str) -> str:
    """When the output starts with a label, a later line starting with one begins another candidate,
    and a paragraph explaining the rewrite ("Explanation:", "This rewritten prompt ...") ends it."""
    label = _LEADING_LABEL.match(raw)
    if label is None:
        return raw
    ends = [m.start() for m in (_LABEL_LINE.search(raw, label.end()), _AFTERWORD.search(raw, label.end())) if m]
    return raw[: min(ends)] if ends else raw


def _unwrap(text: str) -> str:
    """Strip whitespace, code fences, a leading label and enclosing quotes until none is left."""
    while True:
        stripped = text.strip()
        fenced = _FENCED.fullmatch(stripped)
        label = _LEADING_LABEL.match(stripped)
        if fenced:
            stripped = fenced.group(1)
        elif label:
            stripped = stripped[label.end() :]
        elif len(stripped) >= 2 and stripped[0] + stripped[-1] in _QUOTE_PAIRS and stripped[0] not in stripped[1:-1]:
            stripped = stripped[1:-1]
        if stripped == text:
            return text
        text = stripped


def _echoes_instructions(raw: str) -> bool:
    """Whether the output repeats a paragraph of the meta-prompt's instructions."""
    output = _normalized(raw)
    return any(_normalized(paragraph) in output for paragraph in INSTRUCTIONS)


def _normalized(text: str) -> str:
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class RewriteSettings(SamplingSettings):
    """The `rewrite` section: the prompter's sampling, and when its rewrite falls back to x."""

    fallback_on_truncation: bool = True
    max_length_ratio: float = 8.0

    @classmethod
    def from_config(cls, section: dict | None) -> RewriteSettings:
        return from_section(cls, section, "rewrite")


@dataclass(frozen=True)
class Rewrite:
    """One prompter sample: its completion, the x' taken from it (x on fallback) and why it fell back."""

    completion: Completion
    text: str
    fallback_reason: str | None


def sample_rewrites(
    prompter, prompts: list[str], sampling: Sampling, *, fallback_on_truncation: bool, max_length_ratio: float
) -> list[list[Rewrite]]:
    """`sampling.n` rewrites per prompt from one batched call to the prompter, extracted with
    `extract_rewrite`, so training (best-of-K) and evaluation read rewrites the same way."""
    outputs = prompter.chat([prompter_conversation(prompt) for prompt in prompts], sampling)
    return [
        [
            Rewrite(
                completion,
                *extract_rewrite(
                    completion.text,
                    prompt,
                    completion.finish_reason,
                    fallback_on_truncation=fallback_on_truncation,
                    max_length_ratio=max_length_ratio,
                ),
            )
            for completion in completions
        ]
        for prompt, completions in zip(prompts, outputs)
    ]


def rewrite_prompts(
    generator,
    prompts: pa.Table,
    *,
    sampling: Sampling,
    prompter: str,
    fallback_on_truncation: bool,
    max_length_ratio: float,
) -> pa.Table:
    """One rewrite per prompt (a REWRITES table), falling back to x where the prompter failed."""
    originals = prompts.column("prompt").to_pylist()
    samples = sample_rewrites(
        generator,
        originals,
        dataclasses.replace(sampling, n=1),
        fallback_on_truncation=fallback_on_truncation,
        max_length_ratio=max_length_ratio,
    )
    rows = [
        {
            "prompt_id": prompt_id,
            "prompt": prompt,
            "rewrite": sample.text,
            "raw_output": sample.completion.text,
            "fallback": sample.fallback_reason is not None,
            "fallback_reason": sample.fallback_reason,
            "prompter": prompter,
        }
        for prompt_id, prompt, (sample,) in zip(prompts.column("prompt_id").to_pylist(), originals, samples)
    ]
    _log_fallbacks(prompter, [row["fallback_reason"] for row in rows])
    return pa.Table.from_pylist(rows, schema=REWRITES)


def _log_fallbacks(prompter: str, reasons: list[str | None]) -> None:
    counts = Counter(reason for reason in reasons if reason is not None)
    by_reason = ", ".join(f"{reason}: {count}" for reason, count in sorted(counts.items())) or "none"
    log.info(
        "%s: %d of %d rewrites fell back to the original prompt (%s)", prompter, counts.total(), len(reasons), by_reason
    )
