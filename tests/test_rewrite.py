"""The rewrite stage: extracting x' from the prompter's output, its fallbacks, and the REWRITES table."""

import logging

import pytest

from alignpro.sampling import Completion, Sampling
from alignpro.rewrite import (
    INSTRUCTIONS,
    META_PROMPT,
    RUNAWAY_FLOOR_CHARS,
    extract_rewrite,
    prompter_conversation,
    rewrite_prompts,
)
from alignpro.tables import REWRITES, conform, prompt_id_of
from fakes import prompts_table

PROMPT = "how do i make bread"
REWRITE = "Explain step by step how to bake a simple loaf of bread at home, listing the ingredients first."


def extract(raw, prompt=PROMPT, finish_reason="stop", fallback_on_truncation=True, max_length_ratio=8.0):
    return extract_rewrite(
        raw, prompt, finish_reason, fallback_on_truncation=fallback_on_truncation, max_length_ratio=max_length_ratio
    )


def test_conversation_is_one_user_turn_quoting_the_prompt():
    conversation = prompter_conversation("what is {x}?")
    assert [turn["role"] for turn in conversation] == ["user"]
    assert conversation[0]["content"] == META_PROMPT.format(prompt="what is {x}?")
    assert "what is {x}?" in conversation[0]["content"]
    assert "<prompt>" in conversation[0]["content"] and "Do not answer" in conversation[0]["content"]


@pytest.mark.parametrize(
    "raw",
    [
        f"<prompt>{REWRITE}</prompt>",
        f"<prompt>\n  {REWRITE}\n</prompt>\n",
        f"Sure! Here is the rewritten prompt:\n<prompt>{REWRITE}</prompt>\nThis version is clearer.",
        f"<Rewritten_Prompt>{REWRITE}</Rewritten_Prompt>",
        f"{REWRITE}</prompt>",
        f"Rewritten prompt: {REWRITE}",
        f"**Improved Prompt:**\n{REWRITE}",
        f"Here's a clearer version of your prompt:\n\n{REWRITE}",
        f'"{REWRITE}"',
        f"“{REWRITE}”",
        f"```\n{REWRITE}\n```",
        f"```text\n{REWRITE}\n```",
        f'<prompt>"{REWRITE}"</prompt>',
        f"Rewritten prompt:\n```markdown\n{REWRITE}\n```",
        f"   \n{REWRITE}\n\n",
    ],
)
def test_extracts_the_rewrite_from_common_formats(raw):
    assert extract(raw) == (REWRITE, None)


@pytest.mark.parametrize(
    "raw",
    [
        f"<prompt>{REWRITE}</prompt>\n<prompt>Another candidate.</prompt>",
        f"<prompt>{REWRITE}\n<prompt>Another candidate.</prompt>",
        f"Rewritten prompt 1: {REWRITE}\nRewritten prompt 2: Another candidate.",
        f"Option 1: {REWRITE}\n\nOption 2: Another candidate.",
    ],
)
def test_takes_the_first_of_several_candidates(raw):
    assert extract(raw)[0] == REWRITE


def test_keeps_inner_quotes_code_and_lines_that_only_look_like_labels():
    rewrite = 'Fix this Python code:\n```python\nprint("hi"\n```\nExplain the error and the "fix".'
    assert extract(f"<prompt>{rewrite}</prompt>", prompt=rewrite) == (rewrite, None)
    quoted_twice = '"Hello" and "goodbye": translate both into French.'
    assert extract(quoted_twice) == (quoted_twice, None)


@pytest.mark.parametrize("raw", ["", "   \n", "<prompt></prompt>", "<prompt> \n </prompt>", '""', "```\n\n```"])
def test_empty_output_falls_back(raw):
    assert extract(raw) == (PROMPT, "empty")


def test_echoed_meta_prompt_falls_back():
    assert extract(META_PROMPT.format(prompt=PROMPT)) == (PROMPT, "empty")
    assert extract(INSTRUCTIONS[1]) == (PROMPT, "empty"), "the tag line echoed alone must not yield ' and '"
    reflowed = "\n".join(INSTRUCTIONS[0].upper().split(" "))
    assert extract(f"<prompt>{reflowed}</prompt>") == (PROMPT, "empty")


def test_truncated_output_falls_back_only_when_asked():
    assert extract(f"<prompt>{REWRITE}", finish_reason="length") == (PROMPT, "truncated")
    assert extract(REWRITE, finish_reason="length") == (PROMPT, "truncated")
    kept = extract(f"<prompt>{REWRITE}", finish_reason="length", fallback_on_truncation=False)
    assert kept == (REWRITE, None)


def test_rewrite_closed_before_the_token_limit_is_not_truncated():
    raw = f"<prompt>{REWRITE}</prompt> To bake bread you first need flour, water and"
    assert extract(raw, finish_reason="length") == (REWRITE, None)


def test_runaway_rewrite_falls_back():
    prompt = "x" * 100
    assert extract("y" * 400, prompt=prompt, max_length_ratio=4.0) == ("y" * 400, None)
    assert extract("y" * 401, prompt=prompt, max_length_ratio=4.0) == (prompt, "runaway")


def test_short_prompts_may_grow_up_to_the_floor():
    assert extract("y" * RUNAWAY_FLOOR_CHARS, prompt="hi", max_length_ratio=2.0) == ("y" * RUNAWAY_FLOOR_CHARS, None)
    assert extract("y" * (RUNAWAY_FLOOR_CHARS + 1), prompt="hi", max_length_ratio=2.0) == ("hi", "runaway")


class ScriptedGenerator:
    """Returns prepared completions and records what it was asked."""

    def __init__(self, completions: list[Completion]):
        self.completions = completions
        self.calls = []

    def chat(self, conversations, sampling, keys=None):
        self.calls.append((conversations, sampling))
        return [[completion] * sampling.n for completion in self.completions[: len(conversations)]]


def test_rewrite_prompts_builds_the_rewrites_table(caplog):
    prompts = ["how do i make bread", "tell me a joke", "sum 2 and 2", "capital of france?"]
    generator = ScriptedGenerator(
        [
            Completion(f"<prompt>{REWRITE}</prompt>", "stop", 20),
            Completion("<prompt>Tell me a clean, short joke", "length", 8),
            Completion("", "stop", 1),
            Completion("z" * 1000, "stop", 300),
        ]
    )
    with caplog.at_level(logging.INFO, logger="alignpro.rewrite"):
        table = rewrite_prompts(
            generator,
            prompts_table(prompts),
            sampling=Sampling(n=3, temperature=0.7, max_new_tokens=64),
            prompter="tiny",
            fallback_on_truncation=True,
            max_length_ratio=8.0,
        )

    assert table.schema == REWRITES
    assert conform(table, REWRITES, "rewrites").equals(table)
    (conversations, sampling), = generator.calls
    assert sampling == Sampling(n=1, temperature=0.7, max_new_tokens=64)
    assert conversations == [prompter_conversation(p) for p in prompts]

    rows = table.to_pylist()
    assert [row["prompt_id"] for row in rows] == [prompt_id_of(p) for p in prompts]
    assert [row["prompt"] for row in rows] == prompts
    assert [row["fallback_reason"] for row in rows] == [None, "truncated", "empty", "runaway"]
    assert [row["fallback"] for row in rows] == [False, True, True, True]
    assert rows[0]["rewrite"] == REWRITE
    assert all(row["rewrite"] == row["prompt"] for row in rows[1:])
    assert [row["raw_output"] for row in rows] == [c.text for c in generator.completions]
    assert {row["prompter"] for row in rows} == {"tiny"}
    assert "3 of 4 rewrites fell back to the original prompt (empty: 1, runaway: 1, truncated: 1)" in caplog.text


@pytest.mark.model
def test_rewrite_prompts_with_the_tiny_prompter(tiny_prompter):
    """End to end through the real chat template; random weights never close a <prompt> tag."""
    from alignpro.generation import load_generator

    prompts = ["how do i make bread", "tell me a joke"]
    table = rewrite_prompts(
        load_generator("transformers", str(tiny_prompter), batch_size=2),
        prompts_table(prompts),
        sampling=Sampling(temperature=1.0, max_new_tokens=16),
        prompter="tiny",
        fallback_on_truncation=True,
        max_length_ratio=8.0,
    )
    assert table.schema == REWRITES
    rows = table.to_pylist()
    assert [(row["rewrite"], row["fallback_reason"]) for row in rows] == [(p, "truncated") for p in prompts]
    assert all(row["raw_output"] for row in rows)
