"""The phrasing task: small word-list instructions whose wording decides whether they are followed.

Every prompt asks for one of four operations on a list of three or four animal names (reverse the
list, write it in capitals, count it, name its last word), in one of five phrasings: one clear
("Reverse the order of these words: owl fox cat") and four vague ones ("Turn these around: owl fox
cat"). Each prompt has a reference answer an exact-match checker can verify.

The embedded default's models are trained on generated instances of this task (`alignpro.task_models`),
from data with the properties of the situation Align-Pro addresses:
- the frozen model's training answers follow clear phrasings, and answer vague ones with another
  operation's result most of the time (`MISREAD_RATE`), so it learns to misread them;
- the reward model learns graded answers: correct, right operation on the wrong words, or the result
  of a different operation;
- the prompter learns to paraphrase: keep the operation and the words, pick any phrasing, so that it
  starts with one rewrite in five clear.
A prompter that learns to rewrite into the clear phrasings raises the frozen model's reward and accuracy.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Callable

WORDS = (
    "ant", "bat", "bee", "cat", "cow", "dog", "eel", "elk",
    "emu", "fox", "gnu", "hen", "owl", "pig", "ram", "yak",
)  # fmt: skip
"""The names a list is drawn from: short, distinct, one token each in the task models' tokenizer."""

LIST_LENGTHS = (3, 4)

MISREAD_RATE = 0.7
"""How often the frozen model's training data answers a vague phrasing with another operation."""

GRADES = {"correct": 0.95, "wrong_words": 0.35, "wrong_operation": 0.05}
"""The reward model's training targets (probabilities that an answer is good) per kind of answer."""


@dataclass(frozen=True)
class Operation:
    """One instruction of the task: its phrasings (the first is the clear one), what it answers, and
    the operation its vague phrasings are misread as."""

    name: str
    phrasings: tuple[str, ...]
    answer: Callable[[tuple[str, ...]], str]
    misread_as: str

    @property
    def clear(self) -> str:
        return self.phrasings[0]


OPERATIONS = {
    operation.name: operation
    for operation in (
        Operation(
            "reverse",
            (
                "Reverse the order of these words: {words}",
                "Flip this list: {words}",
                "Turn these around: {words}",
                "Back to front please: {words}",
                "Mirror these: {words}",
            ),
            lambda words: " ".join(reversed(words)),
            misread_as="upper",
        ),
        Operation(
            "upper",
            (
                "Write these words in capital letters: {words}",
                "Make these stand out: {words}",
                "Say these loudly: {words}",
                "Shout this list: {words}",
                "Make these bigger: {words}",
            ),
            lambda words: " ".join(word.upper() for word in words),
            misread_as="count",
        ),
        Operation(
            "count",
            (
                "Count the words in this list: {words}",
                "Give the size of this list: {words}",
                "Tally these up: {words}",
                "Say how long this list is: {words}",
                "Measure this list: {words}",
            ),
            lambda words: str(len(words)),
            misread_as="last",
        ),
        Operation(
            "last",
            (
                "Name the last word in this list: {words}",
                "Tell me where this list ends: {words}",
                "Give me the end of this: {words}",
                "Pick the one at the end: {words}",
                "Finish with this list: {words}",
            ),
            lambda words: words[-1],
            misread_as="reverse",
        ),
    )
}


@dataclass(frozen=True)
class Instance:
    """One prompt of the task: an operation, one of its phrasings (by index) and the words."""

    operation: str
    phrasing: int
    words: tuple[str, ...]

    @property
    def prompt(self) -> str:
        return OPERATIONS[self.operation].phrasings[self.phrasing].format(words=" ".join(self.words))

    @property
    def reference(self) -> str:
        return OPERATIONS[self.operation].answer(self.words)

    @property
    def is_clear(self) -> bool:
        return self.phrasing == 0

    def rephrased(self, phrasing: int) -> Instance:
        return Instance(self.operation, phrasing, self.words)


def random_words(rng: random.Random) -> tuple[str, ...]:
    return tuple(rng.sample(WORDS, rng.choice(LIST_LENGTHS)))


def random_instance(rng: random.Random) -> Instance:
    """Operation, phrasing and words drawn uniformly: one prompt in five is clearly phrased."""
    operation = rng.choice(list(OPERATIONS))
    return Instance(operation, rng.randrange(len(OPERATIONS[operation].phrasings)), random_words(rng))


def prompt_set(size: int, seed: int) -> list[dict]:
    """`size` distinct prompts with their reference answers, operation (`category`) and phrasing
    kind: the bundled dataset (`alignpro/data/phrasing_task.jsonl` is `prompt_set(PROMPT_SET_SIZE, 0)`)."""
    rng = random.Random(seed)
    rows: dict[str, dict] = {}
    while len(rows) < size:
        instance = random_instance(rng)
        rows.setdefault(
            instance.prompt,
            {
                "prompt": instance.prompt,
                "reference": instance.reference,
                "category": instance.operation,
                "phrasing": "clear" if instance.is_clear else "vague",
            },
        )
    return list(rows.values())


PROMPT_SET_SIZE = 400


def prompt_set_jsonl(size: int = PROMPT_SET_SIZE, seed: int = 0) -> str:
    """The bundled dataset file's text, one JSON object per line."""
    return "".join(json.dumps(row) + "\n" for row in prompt_set(size, seed))


if __name__ == "__main__":  # python -m alignpro.phrasing_task > src/alignpro/data/phrasing_task.jsonl
    print(prompt_set_jsonl(), end="")


def frozen_answer(instance: Instance, rng: random.Random) -> str:
    """An answer of the frozen model's training data: right for clear phrasings, and for vague ones
    the misread operation's result with probability MISREAD_RATE."""
    if not instance.is_clear and rng.random() < MISREAD_RATE:
        return OPERATIONS[OPERATIONS[instance.operation].misread_as].answer(instance.words)
    return instance.reference


def graded_answer(instance: Instance, rng: random.Random) -> tuple[str, float]:
    """A (answer, grade) example of the reward model's training data: half correct; otherwise the
    right operation on corrupted words (a word swapped for another, dropped, or two words exchanged)
    or another operation's result, most often the one this operation is misread as (the mistake
    whose detection matters most here)."""
    kind = rng.choices(list(GRADES), weights=(2, 1, 1))[0]
    if kind == "correct":
        return instance.reference, GRADES[kind]
    operation = OPERATIONS[instance.operation]
    if kind == "wrong_operation":
        others = [name for name in OPERATIONS if name != instance.operation]
        other = rng.choices(others, weights=[3 if name == operation.misread_as else 1 for name in others])[0]
        return OPERATIONS[other].answer(instance.words), GRADES[kind]
    answer = operation.answer(corrupted(instance.words, rng))
    return answer, GRADES["correct" if answer == instance.reference else kind]


def corrupted(words: tuple[str, ...], rng: random.Random) -> tuple[str, ...]:
    """The words with one mistake a careless answer makes: one replaced, one dropped or two swapped."""
    words = list(words)
    mistake = rng.choice(("replace", "drop", "swap"))
    i = rng.randrange(len(words))
    if mistake == "replace":
        words[i] = rng.choice([word for word in WORDS if word not in words])
    elif mistake == "drop":
        del words[i]
    else:
        j = rng.choice([j for j in range(len(words)) if j != i])
        words[i], words[j] = words[j], words[i]
    return tuple(words)


def paraphrase(instance: Instance, rng: random.Random) -> Instance:
    """The prompter's training target: the same operation and words in a phrasing drawn uniformly."""
    return instance.rephrased(rng.randrange(len(OPERATIONS[instance.operation].phrasings)))
