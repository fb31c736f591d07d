"""Judge prompts as data: one YAML file per prompt in this package, chosen by a judge's `api.prompt`.

A file holds the system prompt (its `{criteria}` filled from `criteria`, the sentence the report quotes),
the user template (`{question}`, `{answer_a}`, `{answer_b}` and the block id `{fence}`), the reminder sent
on the one retry after an unparsable reply, and the verdict's format: a regex whose first group
`labels` maps to A, B or TIE, matched on the reply's last non-empty line only, the whole line (`full`)
or anywhere in it (`search`). The id is the version: the judge's cache keys on it and on the rendered
text, so two prompts can be run and compared side by side in one workspace.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import yaml

DEFAULT_PROMPT = "pairwise-v1"


@dataclass(frozen=True)
class JudgePrompt:
    """One prompt file, loaded and checked (see the module's docstring)."""

    id: str
    description: str
    criteria: str
    system: str
    user: str
    reminder: str
    pattern: re.Pattern
    match: str
    labels: dict[str, str]

    @classmethod
    def load(cls, name: str) -> "JudgePrompt":
        """The prompt file `name`.yaml; an unknown name is an error listing the prompts there are."""
        file = resources.files(__name__) / f"{name}.yaml"
        if not file.is_file():
            raise ValueError(f"judge prompt {name!r} does not exist; the prompts are {judge_prompt_names()}")
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
        verdict = data["verdict"]
        if data["id"] != name or verdict["match"] not in ("full", "search") or set(verdict["labels"].values()) != {"A", "B", "TIE"}:
            raise ValueError(f"judge prompt file {file}: its id must be {name!r}, verdict.match full or search, "
                             "and verdict.labels must map onto A, B and TIE")
        return cls(
            id=data["id"], description=data["description"], criteria=data["criteria"],
            system=data["system"].format(criteria=data["criteria"]), user=data["user"], reminder=data["reminder"],
            pattern=re.compile(verdict["pattern"], re.IGNORECASE), match=verdict["match"], labels=verdict["labels"],
        )

    @property
    def text(self) -> str:
        """Everything the judge is sent besides the pair: what the cache keys on."""
        return self.system + self.user + self.reminder

    def messages(self, question: str, answer_a: str, answer_b: str, remind: bool = False) -> list[dict]:
        """The chat messages for one order; `remind` adds the format reminder used on the one retry."""
        fence = fence_for(question, answer_a, answer_b)
        user = self.user.format(fence=fence, question=question, answer_a=answer_a, answer_b=answer_b)
        if remind:
            user = f"{user}\n\n{self.reminder}"
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def parse(self, text: str) -> str | None:
        """A, B or TIE from the reply's last non-empty line only, so verdict-like text the judge quoted
        earlier (from an answer) never counts; None when that line holds no verdict."""
        line = _last_line(text).strip(" \t*`_.'\"")
        if self.match == "full":
            match = self.pattern.fullmatch(line)
        else:
            match = next(reversed(list(self.pattern.finditer(line))), None)
        return self.labels[match.group(1).upper()] if match else None


@functools.cache
def judge_prompt_names() -> list[str]:
    """The judge prompts shipped, by id."""
    return sorted(entry.name.removesuffix(".yaml") for entry in resources.files(__name__).iterdir()
                  if entry.name.endswith(".yaml"))


@functools.cache
def judge_prompt(name: str) -> JudgePrompt:
    return JudgePrompt.load(name)


def fence_for(question: str, answer_a: str, answer_b: str) -> str:
    """A block id derived from the quoted texts: an answer cannot contain its own block's closing tag."""
    return hashlib.sha256("\0".join((question, answer_a, answer_b)).encode("utf-8")).hexdigest()[:12]


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def reason_of(text: str) -> str:
    """The judge's text before its verdict line, without a `REASON:` label."""
    body = text.rstrip()
    body = body[: len(body) - len(_last_line(body))].strip()
    return re.sub(r"^\W*REASON\W*:\s*", "", body, flags=re.IGNORECASE)


