"""Judge prompts as data: one YAML file per prompt in this package, chosen by a judge's `api.prompt`.

A file holds the system prompt (its `{criteria}` filled from `criteria`, the sentence the report quotes),
the user template (`{question}`, `{answer_a}`, `{answer_b}` and the block id `{fence}`), the reminder sent
on the one retry after an unparsable reply, and the verdict's format: a regex whose first group
`labels` maps to A, B or TIE, matched on the reply's last non-empty line only, the whole line (`full`)
or anywhere in it (`search`). `examples` are replies with the verdict the parser must read from each
(null for none), checked whenever the file is loaded, so a run with a broken file stops at start. The
id is the version: the judge's cache keys on it and on the rendered text, so two prompts can be run
and compared side by side in one workspace; the file's digest is a param of its judge jobs.
"""

from __future__ import annotations

import functools
import hashlib
import re
import string
from dataclasses import dataclass
from importlib import resources

import yaml

DEFAULT_PROMPT = "pairwise-v1"
FIELDS = ("id", "description", "criteria", "system", "user", "reminder", "verdict", "examples")
VERDICT_FIELDS = ("pattern", "match", "labels")
VERDICTS = ("A", "B", "TIE")


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
    sha256: str  # of the file: a param of the judge's jobs, so that editing the file reruns them

    @classmethod
    def load(cls, name: str) -> "JudgePrompt":
        """The prompt file `name`.yaml; an unknown name is an error listing the prompts there are."""
        file = resources.files(__name__) / f"{name}.yaml"
        if not file.is_file():
            raise ValueError(f"judge prompt {name!r} does not exist; the prompts are {judge_prompt_names()}")
        return cls.from_file(file, name)

    @classmethod
    def from_file(cls, file, name: str) -> "JudgePrompt":
        """Prompt `name` from `file`, checked so that a broken file stops a run at start, naming the file
        and the field, instead of paying for replies no parser reads: every field present, the id the
        file's name, the templates with exactly their placeholders, a verdict pattern that compiles with
        the group `labels` reads, and each of the file's `examples` read as the verdict it gives."""
        text = file.read_text(encoding="utf-8")
        data = yaml.safe_load(text)

        def refuse(field: str, problem: str) -> ValueError:
            return ValueError(f"judge prompt file {file}: {field}: {problem}")

        verdict = data.get("verdict") or {}
        missing = [key for key in FIELDS if key not in data] + [f"verdict.{key}" for key in VERDICT_FIELDS if key not in verdict]
        if missing:
            raise refuse(", ".join(missing), "missing")
        if data["id"] != name:
            raise refuse("id", f"{data['id']!r} is not the file's name {name!r}")
        for field, wanted in (("system", {"criteria"}), ("user", {"fence", "question", "answer_a", "answer_b"}), ("reminder", set())):
            used = {field_name for _, field_name, _, _ in string.Formatter().parse(data[field]) if field_name is not None}
            if used != wanted:
                raise refuse(field, f"its placeholders are {sorted(used)}, where it takes {sorted(wanted)}")
        if verdict["match"] not in ("full", "search"):
            raise refuse("verdict.match", f"{verdict['match']!r} is neither full nor search")
        try:
            pattern = re.compile(verdict["pattern"], re.IGNORECASE)
        except re.error as error:
            raise refuse("verdict.pattern", f"does not compile: {error}") from None
        if pattern.groups < 1:
            raise refuse("verdict.pattern", "has no group: its first group is the label verdict.labels reads")
        labels = verdict["labels"]
        if set(labels.values()) != set(VERDICTS) or any(key != str(key).upper() for key in labels):
            raise refuse("verdict.labels", f"{labels} must map upper-case labels onto each of {', '.join(VERDICTS)}")
        prompt = cls(
            id=data["id"], description=data["description"], criteria=data["criteria"],
            system=data["system"].format(criteria=data["criteria"]), user=data["user"], reminder=data["reminder"],
            pattern=pattern, match=verdict["match"], labels=labels, sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        )
        examples = data["examples"] or []
        if not set(VERDICTS) <= {example.get("verdict") for example in examples}:
            raise refuse("examples", f"needs a reply for each verdict ({', '.join(VERDICTS)}) with the verdict it gives")
        for index, example in enumerate(examples):
            try:
                read = prompt.parse(example["reply"])
            except KeyError as error:
                raise refuse(f"examples[{index}]", f"verdict.pattern reads the label {error}, which verdict.labels lacks") from None
            if read != example["verdict"]:
                raise refuse(f"examples[{index}]", f"verdict.pattern reads {read} from {example['reply']!r}, not {example['verdict']}")
        return prompt

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


