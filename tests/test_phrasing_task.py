"""The phrasing task: its prompts and reference answers, the bundled file, and the training data of
the three models it trains (the frozen model's misreadings, the reward model's grades, the prompter's
paraphrases)."""

from __future__ import annotations

import random
from collections import Counter
from importlib import resources

import pytest

from alignpro import datasets, phrasing_task as task
from alignpro.checkers import exact


def test_each_operation_has_one_clear_and_four_vague_phrasings_of_one_form():
    for operation in task.OPERATIONS.values():
        assert len(operation.phrasings) == 5 and len(set(operation.phrasings)) == 5
        assert all(phrasing.endswith(": {words}") and phrasing.count("{") == 1 for phrasing in operation.phrasings)
        assert operation.misread_as in task.OPERATIONS and operation.misread_as != operation.name


def test_reference_answers():
    words = ("owl", "fox", "cat")
    answers = {name: task.Instance(name, 0, words).reference for name in task.OPERATIONS}
    assert answers == {"reverse": "cat fox owl", "upper": "OWL FOX CAT", "count": "3", "last": "cat"}
    assert task.Instance("reverse", 2, words).prompt == "Turn these around: owl fox cat"
    assert task.Instance("reverse", 0, words).is_clear and not task.Instance("reverse", 1, words).is_clear


def test_a_misreading_is_never_the_right_answer():
    rng = random.Random(0)
    for _ in range(2000):
        instance = task.random_instance(rng)
        misread = task.OPERATIONS[task.OPERATIONS[instance.operation].misread_as].answer(instance.words)
        assert not exact(misread, instance.reference)


def test_prompt_set_is_seeded_distinct_and_checkable():
    rows = task.prompt_set(200, seed=3)
    assert rows == task.prompt_set(200, seed=3) and rows != task.prompt_set(200, seed=4)
    assert len({row["prompt"] for row in rows}) == 200
    phrasings = {
        phrasing.removesuffix("{words}"): (name, index)
        for name, operation in task.OPERATIONS.items()
        for index, phrasing in enumerate(operation.phrasings)
    }
    for row in rows:
        start, words = row["prompt"].split(": ")
        instance = task.Instance(*phrasings[f"{start}: "], tuple(words.split()))
        assert instance.prompt == row["prompt"]
        assert (row["reference"], row["category"], row["phrasing"]) == (
            instance.reference, instance.operation, "clear" if instance.is_clear else "vague"
        )
    kinds = Counter(row["phrasing"] for row in task.prompt_set(2000, seed=0))
    assert 0.15 < kinds["clear"] / 2000 < 0.25  # one phrasing in five is clear


def test_bundled_file_is_the_generated_prompt_set():
    """src/alignpro/data/phrasing_task.jsonl is `python -m alignpro.phrasing_task`'s output: regenerate
    it after changing the task."""
    bundled = (resources.files("alignpro") / "data" / "phrasing_task.jsonl").read_text(encoding="utf-8")
    assert bundled == task.prompt_set_jsonl()


def test_the_dataset_stage_reads_the_bundled_task_with_its_references():
    spec = {"source": "local", "path": "bundled:phrasing_task", "prompt_column": "prompt", "reference_column": "reference",
            "checker": "exact", "min_chars": 1, "max_chars": 8000, "test_size": 40, "train_size": 100}
    train, test = datasets.prepare_dataset("phrasing", spec, seed=0)
    assert (train.num_rows, test.num_rows) == (100, 40)
    rows = {row["prompt"]: row for row in task.prompt_set(task.PROMPT_SET_SIZE, 0)}
    for row in test.to_pylist():
        assert row["reference"] == rows[row["prompt"]]["reference"]
        assert row["source"] == f"bundled:phrasing_task/{rows[row['prompt']]['category']}"


def test_an_unknown_bundled_set_is_named():
    with pytest.raises(ValueError, match="no bundled prompt set 'nope'.*phrasing_task"):
        datasets.check_local_file("bundled:nope", "prompt")


def test_frozen_answers_misread_vague_phrasings_at_the_set_rate():
    rng = random.Random(1)
    clear = [task.Instance("count", 0, ("owl", "fox", "cat"))] * 500
    assert all(task.frozen_answer(instance, rng) == "3" for instance in clear)
    vague = task.Instance("count", 3, ("owl", "fox", "cat"))
    misread = sum(task.frozen_answer(vague, rng) == "cat" for _ in range(4000)) / 4000  # count is misread as last
    assert misread == pytest.approx(task.MISREAD_RATE, abs=0.03)


def test_graded_answers_are_graded_by_what_they_get_right():
    rng = random.Random(2)
    grades = Counter()
    for _ in range(4000):
        instance = task.random_instance(rng)
        answer, grade = task.graded_answer(instance, rng)
        assert (grade == task.GRADES["correct"]) == (answer == instance.reference)
        others = {task.OPERATIONS[name].answer(instance.words) for name in task.OPERATIONS if name != instance.operation}
        if grade == task.GRADES["wrong_operation"]:
            assert answer in others
        grades[grade] += 1
    assert grades[task.GRADES["correct"]] / 4000 > 0.5  # half by construction, plus corruptions that change nothing
    assert grades[task.GRADES["wrong_words"]] > 0 and grades[task.GRADES["wrong_operation"]] > 0


def test_paraphrases_keep_operation_and_words_and_cover_every_phrasing():
    rng = random.Random(3)
    instance = task.Instance("upper", 2, ("ant", "bee", "cow", "dog"))
    seen = Counter()
    for _ in range(1000):
        target = task.paraphrase(instance, rng)
        assert (target.operation, target.words) == (instance.operation, instance.words)
        seen[target.phrasing] += 1
    assert set(seen) == set(range(5)) and min(seen.values()) > 150
