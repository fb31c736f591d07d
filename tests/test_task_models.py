"""The task models' training: examples formatted exactly as generation and scoring see them, the
shared-prefix loss equal to the plain one, and saved models that the stages' own loaders load.
Training here runs a handful of steps (the workflow's full runs are checked end to end)."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import Qwen2ForCausalLM

from alignpro import task_models, task_plans
from alignpro.generation import load_generator
from alignpro.sampling import Sampling
from alignpro.reward import RewardScorer
from alignpro.rewrite import prompter_conversation

ROOT = Path(__file__).resolve().parents[1]


def few_step_plans() -> dict[str, task_plans.TrainingPlan]:
    """Every role trains one cycle of 3 steps on small batches, checked on 8 held-out instances, with
    no targets to reach."""
    return {
        role: dataclasses.replace(plan, cycle_steps=3, max_cycles=1, batch_size=4, held_out=8, targets=())
        for role, plan in task_models.PLANS.items()
    }


@pytest.fixture
def few_steps(monkeypatch):
    monkeypatch.setattr(task_models, "PLANS", few_step_plans())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every role trained with the few-step plans, once for the tests that only read the models."""
    root = tmp_path_factory.mktemp("task-models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(task_models, "PLANS", few_step_plans())
        task_models.train_task_model("phrasing", "base", root / "base", seed=0)
        for role in ("frozen", "reward", "prompter"):
            task_models.train_task_model("phrasing", role, root / role, base_dir=root / "base", seed=0)
    return root


@pytest.mark.parametrize("kind", ["answer", "prompter"])
def test_examples_are_tokenized_as_the_chat_template_renders_them(kind):
    tokenizer = task_models.task_tokenizer()
    prompt, answer = "Tally these up: owl fox cat", "3"
    batch = task_models.chat_batch(tokenizer, kind, [(prompt, answer)])
    conversation = prompter_conversation(prompt) if kind == "prompter" else [{"role": "user", "content": prompt}]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    expected_prompt = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    expected_answer = tokenizer(answer + task_models.IM_END, add_special_tokens=False)["input_ids"]
    assert list(batch.prefix) + batch.input_ids[0] == expected_prompt + expected_answer
    labelled = [token for token in batch.labels[0] if token != -100]
    assert labelled == expected_answer and batch.labels[0][: -len(expected_answer)] == [-100] * (len(batch.input_ids[0]) - len(expected_answer))


@pytest.mark.model
def test_shared_prefix_loss_and_gradients_equal_the_plain_ones():
    tokenizer = task_models.task_tokenizer()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(task_models.base_config(tokenizer))
    batch = task_models.prompter_batch(tokenizer, random.Random(0), 4)
    shared = task_models.lm_loss(model, tokenizer, batch)
    shared.backward()
    shared_grad = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    model.zero_grad()
    ids = [list(batch.prefix) + sequence for sequence in batch.input_ids]
    labels = [[-100] * len(batch.prefix) + sequence for sequence in batch.labels]
    plain = model(
        input_ids=task_models.pad(ids, tokenizer.pad_token_id),
        attention_mask=task_models.pad([[1] * len(sequence) for sequence in ids], 0),
        labels=task_models.pad(labels, -100),
    ).loss
    plain.backward()
    assert shared.item() == pytest.approx(plain.item(), rel=1e-5)
    assert torch.allclose(shared_grad, model.model.layers[0].self_attn.q_proj.weight.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.model
def test_saved_models_load_through_the_stages_loaders(trained):
    """The frozen model and prompter answer through the generation backend, the reward model scores
    through RewardScorer: the code paths hub models take."""
    frozen = load_generator("transformers", str(trained / "frozen"), dtype="float32", batch_size=4)
    answers = frozen.chat([[{"role": "user", "content": "Tally these up: owl fox cat"}]], Sampling(n=2, max_new_tokens=8))
    assert len(answers[0]) == 2 and all(answer.num_tokens >= 1 for answer in answers[0])
    prompter = load_generator("transformers", str(trained / "prompter"), dtype="float32", batch_size=4)
    assert len(prompter.chat([prompter_conversation("Mirror these: ant bee cow")], Sampling(max_new_tokens=8))[0]) == 1
    scorer = RewardScorer(str(trained / "reward"), dtype="float32", max_length=512)
    scores = scorer.score(["Tally these up: owl fox cat"] * 2, ["3", "cat"])
    assert len(scores) == 2 and all(isinstance(score, float) for score in scores)
    for role in ("base", "frozen", "reward", "prompter"):
        card = json.loads((trained / role / task_plans.TRAINING_CARD).read_text())
        assert card["role"] == role and card["steps"] == 3 and card["seed"] == 0
        assert [check["step"] for check in card["checks"]] == [3] and card["checks"][-1]["loss"] == card["final_loss"]
    assert set(json.loads((trained / "reward" / task_plans.TRAINING_CARD).read_text())) >= {
        "pairwise_accuracy_vs_misread", "pairwise_accuracy_vs_wrong_words"
    }
    assert (trained / "base" / "tokenizer.json").read_text() == (trained / "prompter" / "tokenizer.json").read_text()


@pytest.mark.model
def test_fine_tuned_models_start_from_the_base(trained, few_steps, tmp_path):
    """A fine-tune with a learning rate of zero leaves the base's weights as they were."""
    plans = {**task_models.PLANS, "frozen": dataclasses.replace(task_models.PLANS["frozen"], learning_rate=0.0)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(task_models, "PLANS", plans)
        task_models.train_task_model("phrasing", "frozen", tmp_path / "frozen", base_dir=trained / "base", seed=0)
    base, frozen = load_file(trained / "base/model.safetensors"), load_file(tmp_path / "frozen/model.safetensors")
    assert base.keys() == frozen.keys() and all(torch.equal(base[key], frozen[key]) for key in base)


def test_the_learning_rate_warms_up_decays_and_restarts_from_half_the_peak():
    plan = task_plans.TrainingPlan(cycle_steps=100, max_cycles=3, batch_size=1, learning_rate=1.0, targets=())
    factors = [plan.learning_rate_factor(step) for step in range(300)]
    assert factors[0] == pytest.approx(0.2) and factors[4] == pytest.approx(1.0, abs=1e-2)  # 5 warm-up steps
    assert factors[99] < 1e-3 and factors[100] == pytest.approx(0.1)  # the second cycle warms up again
    assert max(factors[100:200]) == pytest.approx(0.5, abs=1e-2) and max(factors[200:]) == pytest.approx(0.25, abs=1e-2)


def _scripted_figures(figures):
    """An evaluation that reports `figures` in turn, one per check, and counts its calls."""
    calls = []

    def evaluate(model):
        calls.append(model.training)
        return {"score": figures[len(calls) - 1]}

    return evaluate, calls


def _tiny_lm():
    tokenizer = task_models.task_tokenizer()
    torch.manual_seed(0)
    return tokenizer, Qwen2ForCausalLM(task_models.base_config(tokenizer))


@pytest.mark.model
def test_training_goes_on_cycle_by_cycle_until_the_targets_hold():
    tokenizer, model = _tiny_lm()
    plan = task_plans.TrainingPlan(
        cycle_steps=2, max_cycles=5, batch_size=2, learning_rate=1e-3, targets=(task_plans.Target("score", low=0.9),)
    )
    evaluate, calls = _scripted_figures([0.5, 0.8, 0.95, 0.99, 0.99])
    rng = random.Random(0)
    losses, checks = task_models.train_until_targets(
        model, plan, lambda: task_models.base_batch(tokenizer, rng, 2), lambda m, b: task_models.lm_loss(m, tokenizer, b), evaluate, "test"
    )
    assert len(losses) == 6 and calls == [False] * 3  # three cycles, each checked in eval mode
    assert [check.step for check in checks] == [2, 4, 6]
    assert [check.missed for check in checks] == [["score ≥ 0.9"], ["score ≥ 0.9"], []]


@pytest.mark.model
def test_a_missed_target_fails_with_the_figures_of_every_check():
    tokenizer, model = _tiny_lm()
    plan = task_plans.TrainingPlan(
        cycle_steps=2, max_cycles=2, batch_size=2, learning_rate=1e-3,
        targets=(task_plans.Target("score", low=0.05, high=0.35), task_plans.Target("score", low=0.5)),
    )
    evaluate, _ = _scripted_figures([0.3, 0.4])
    rng = random.Random(0)
    with pytest.raises(task_models.TargetsMissed) as missed:
        task_models.train_until_targets(
            model, plan, lambda: task_models.base_batch(tokenizer, rng, 2), lambda m, b: task_models.lm_loss(m, tokenizer, b), evaluate, "train test"
        )
    message = str(missed.value)
    assert "train test: after 4 steps (2 cycles) still missed score ≥ 0.05 and ≤ 0.35; score ≥ 0.5" in message
    assert '{"score": 0.3}' in message and '{"score": 0.4}' in message


@pytest.mark.model
def test_a_role_that_misses_its_targets_leaves_no_model(few_steps, tmp_path):
    """The real held-out evaluation, with a target nothing reaches: the job fails and writes nothing."""
    impossible = dataclasses.replace(task_models.PLANS["base"], targets=(task_plans.Target("sampled_accuracy_clear", low=1.5),))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(task_models, "PLANS", {**task_models.PLANS, "base": impossible})
        with pytest.raises(task_models.TargetsMissed, match=r"train base: after 3 steps \(1 cycles\) still missed sampled_accuracy_clear ≥ 1.5"):
            task_models.train_task_model("phrasing", "base", tmp_path / "base", seed=0)
    assert not (tmp_path / "base").exists()


@pytest.mark.model
def test_training_is_seeded(few_steps, tmp_path):
    for run in ("a", "b", "c"):
        task_models.train_task_model("phrasing", "base", tmp_path / run, seed=1 if run == "c" else 0)
    a, b, c = (load_file(tmp_path / run / "model.safetensors") for run in ("a", "b", "c"))
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(a[key], c[key]) for key in a)


def test_unknown_task_role_or_missing_base_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'arithmetic'"):
        task_models.train_task_model("arithmetic", "base", tmp_path / "x")
    with pytest.raises(ValueError, match="unknown task model role 'judge'"):
        task_models.train_task_model("phrasing", "judge", tmp_path / "x")
    with pytest.raises(ValueError, match="fine-tuned from the base model"):
        task_models.train_task_model("phrasing", "frozen", tmp_path / "x")


def test_the_schema_names_the_tasks_defined_here_and_the_base_comes_first():
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    assert schema["$defs"]["model"]["properties"]["task"]["enum"] == list(task_plans.TASKS)
    assert task_plans.ROLES[0] == "base" and set(task_plans.PLANS) == set(task_plans.ROLES)
