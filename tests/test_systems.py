"""The methods registry: the systems it makes, their names and patterns, and the config schema's list."""

import re
from pathlib import Path

import polars as pl
import yaml

from alignpro.systems import (
    METHODS, REFERENCE, Cell, System, answers_original, grid, label, method_rank, system_pattern, systems, training_runs,
)

ROOT = Path(__file__).resolve().parents[1]
EVERY_METHOD = list(METHODS)


def test_the_config_schema_lists_the_registry_methods():
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    assert schema["properties"]["methods"]["items"]["enum"] == EVERY_METHOD


def system_names(methods, prompters, beta_tags):
    return [system.path for system in systems(methods, prompters, beta_tags)]


def test_system_names_cover_every_method_prompter_and_beta():
    names = system_names(EVERY_METHOD, ["p", "q"], ["0.1", "1"])
    assert names == [
        "base", "rlhf", "sft/p", "sft/q", "alignpro/p", "alignpro/q", "alignpro-grpo/p", "alignpro-grpo/q",
        "alignpro-rloo/p", "alignpro-rloo/q",
        "alignpro/p/beta0.1", "alignpro/p/beta1", "alignpro/q/beta0.1", "alignpro/q/beta1",
        "alignpro-grpo/p/beta0.1", "alignpro-grpo/p/beta1", "alignpro-grpo/q/beta0.1", "alignpro-grpo/q/beta1",
        "alignpro-rloo/p/beta0.1", "alignpro-rloo/p/beta1", "alignpro-rloo/q/beta0.1", "alignpro-rloo/q/beta1",
        "alignpro-star/p/beta0.1", "alignpro-star/p/beta1", "alignpro-star/q/beta0.1", "alignpro-star/q/beta1",
    ]


def test_system_names_follow_the_chosen_methods_not_their_order_in_the_config():
    assert system_names(["alignpro-star", "base"], ["p"], ["0.5"]) == ["base", "alignpro-star/p/beta0.5"]
    assert system_names(["sft"], ["p"], []) == ["sft/p"]


def test_a_system_parses_back_from_its_path():
    assert System.parse("alignpro/p/beta0.2") == System("alignpro", "p", "0.2")
    assert System.parse("sft/p") == System("sft", "p") and System.parse("rlhf") == System("rlhf")
    for system in systems(EVERY_METHOD, ["p", "q"], ["0.1", "1"]):
        assert System.parse(system.path) == system


def test_labels_and_training_runs_of_systems():
    assert System("alignpro", "p", "0.1").label == "alignpro β=0.1" == label("alignpro", 0.1)
    assert System("base").label == "base"
    runs = {system.path: system.training_run for system in systems(EVERY_METHOD, ["p"], ["0.1"])}
    assert runs == {
        "base": None, "rlhf": "rlhf", "sft/p": None, "alignpro/p": "p/ppo", "alignpro/p/beta0.1": "p/ppo-beta0.1",
        "alignpro-grpo/p": "p/grpo", "alignpro-grpo/p/beta0.1": "p/grpo-beta0.1", "alignpro-rloo/p": "p/rloo",
        "alignpro-rloo/p/beta0.1": "p/rloo-beta0.1", "alignpro-star/p/beta0.1": None,
    }


def test_the_grid_has_every_dataset_frozen_and_system_once():
    chosen = systems(["base", "alignpro"], ["p"], ["0.1"])
    cells = grid(["d1", "d2"], ["f1", "f2"], chosen)
    assert len(cells) == len(set(cells)) == 2 * 2 * 3
    assert [cell.path for cell in cells[:3]] == ["d1/f1/base", "d1/f1/alignpro/p", "d1/f1/alignpro/p/beta0.1"]
    assert cells[3].path == "d1/f2/base" and cells[-1].path == "d2/f2/alignpro/p/beta0.1"
    assert Cell("d", "f", System("alignpro", "p", "0.1")).label == "alignpro β=0.1 p → f (d)"
    assert Cell("d", "f", System("rlhf")).label == "rlhf f (d)"


def test_training_runs_in_the_order_the_report_draws_them():
    cells = grid(["d"], ["f"], systems(EVERY_METHOD, ["p", "q"], ["0.1", "1"]))
    assert [cell.system.path for cell in training_runs(cells)] == [
        "alignpro/p", "alignpro/p/beta0.1", "alignpro/p/beta1", "alignpro/q", "alignpro/q/beta0.1", "alignpro/q/beta1",
        "alignpro-grpo/p", "alignpro-grpo/p/beta0.1", "alignpro-grpo/p/beta1", "alignpro-grpo/q", "alignpro-grpo/q/beta0.1",
        "alignpro-grpo/q/beta1", "alignpro-rloo/p", "alignpro-rloo/p/beta0.1", "alignpro-rloo/p/beta1", "alignpro-rloo/q",
        "alignpro-rloo/q/beta0.1", "alignpro-rloo/q/beta1", "rlhf",
    ]


def full_match(pattern: str, name: str) -> bool:
    return re.fullmatch(f"(?:{pattern})", name) is not None


def test_patterns_match_exactly_their_systems():
    names = system_names(EVERY_METHOD, ["p"], ["0.1"])
    assert all(full_match(system_pattern(), name) for name in names)
    judged = system_pattern(lambda method: method.name != REFERENCE)
    assert [name for name in names if full_match(judged, name)] == names[1:]
    rewritten = system_pattern(lambda method: method.rewrites == "prompter")
    assert [name for name in names if full_match(rewritten, name)] == [
        "sft/p", "alignpro/p", "alignpro-grpo/p", "alignpro-rloo/p", "alignpro/p/beta0.1", "alignpro-grpo/p/beta0.1",
        "alignpro-rloo/p/beta0.1",
    ]
    for wrong in ("sft/p/beta0.1", "alignpro-star/p", "base/p", "rlhf/p", "sft", "other/p"):
        assert not full_match(system_pattern(), wrong), wrong


def test_what_each_method_answers():
    assert [name for name in METHODS if answers_original(name)] == ["base", "rlhf"]
    assert [name for name, method in METHODS.items() if method.answered_by == "trained"] == ["rlhf"]


def test_display_order_and_labels():
    frame = pl.DataFrame({"method": ["rlhf", "custom", "alignpro", "base"]})
    assert frame.sort(method_rank(), "method")["method"].to_list() == ["base", "alignpro", "rlhf", "custom"]
    assert label("alignpro", None) == "alignpro" and label("alignpro-star", 0.1) == "alignpro-star β=0.1"


def test_each_trainer_makes_a_trained_method_and_its_runs_name_their_beta():
    from alignpro.trainers import TRAINERS

    for trainer in TRAINERS.values():
        method = METHODS[trainer.method]
        assert (method.trainer, method.kl, method.rewrites, method.colour) == (trainer.name, "training", "prompter", trainer.colour)
        assert System(trainer.method, "p").training_run == f"p/{trainer.name}"
        assert System(trainer.method, "p", "0.1").training_run == f"p/{trainer.name}-beta0.1"
        assert trainer.beta_tag(trainer.run("0.1")) == "0.1" and trainer.beta_tag(trainer.run(None)) is None
        assert re.fullmatch(trainer.run_pattern(), f"{trainer.name}-beta1e-05")
        assert not re.fullmatch(trainer.run_pattern(), f"{trainer.name}x") and not re.fullmatch(trainer.run_pattern(), "rlhf")
        swept = trainer.settings({"steps": 3, trainer.beta_key: 9.0}, 0.25)
        assert swept[trainer.beta_key] == 0.25 and swept["steps"] == 3
        assert trainer.settings({"steps": 3, trainer.beta_key: 9.0}, None)[trainer.beta_key] == 9.0
        assert callable(trainer.train_function())
    assert TRAINERS["ppo"].settings({"adaptive_kl": True}, 0.5) == {"adaptive_kl": False, "init_kl_coef": 0.5}
