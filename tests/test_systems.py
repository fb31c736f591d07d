"""The methods registry: the systems it makes, their names and patterns, and the config schema's list."""

import re
from pathlib import Path

import polars as pl
import yaml

from alignpro.systems import METHODS, REFERENCE, answers_original, label, method_rank, split_system, system_names, system_pattern

ROOT = Path(__file__).resolve().parents[1]
EVERY_METHOD = list(METHODS)


def test_the_config_schema_lists_the_registry_methods():
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    assert schema["properties"]["methods"]["items"]["enum"] == EVERY_METHOD


def test_system_names_cover_every_method_prompter_and_beta():
    names = system_names(EVERY_METHOD, ["p", "q"], ["0.1", "1"])
    assert names == [
        "base", "rlhf", "sft/p", "sft/q", "alignpro/p", "alignpro/q",
        "alignpro/p/beta0.1", "alignpro/p/beta1", "alignpro/q/beta0.1", "alignpro/q/beta1",
        "alignpro-star/p/beta0.1", "alignpro-star/p/beta1", "alignpro-star/q/beta0.1", "alignpro-star/q/beta1",
    ]


def test_system_names_follow_the_chosen_methods_not_their_order_in_the_config():
    assert system_names(["alignpro-star", "base"], ["p"], ["0.5"]) == ["base", "alignpro-star/p/beta0.5"]
    assert system_names(["sft"], ["p"], []) == ["sft/p"]


def test_split_system():
    assert split_system("alignpro/p/beta0.2") == ("alignpro", "p", "0.2")
    assert split_system("sft/p") == ("sft", "p", None)
    assert split_system("rlhf") == ("rlhf", None, None)


def full_match(pattern: str, name: str) -> bool:
    return re.fullmatch(f"(?:{pattern})", name) is not None


def test_patterns_match_exactly_their_systems():
    names = system_names(EVERY_METHOD, ["p"], ["0.1"])
    assert all(full_match(system_pattern(), name) for name in names)
    judged = system_pattern(lambda method: method.name != REFERENCE)
    assert [name for name in names if full_match(judged, name)] == names[1:]
    rewritten = system_pattern(lambda method: method.rewrites == "prompter")
    assert [name for name in names if full_match(rewritten, name)] == ["sft/p", "alignpro/p", "alignpro/p/beta0.1"]
    for wrong in ("sft/p/beta0.1", "alignpro-star/p", "base/p", "rlhf/p", "sft", "other/p"):
        assert not full_match(system_pattern(), wrong), wrong


def test_what_each_method_answers():
    assert [name for name in METHODS if answers_original(name)] == ["base", "rlhf"]


def test_display_order_and_labels():
    frame = pl.DataFrame({"method": ["rlhf", "custom", "alignpro", "base"]})
    assert frame.sort(method_rank(), "method")["method"].to_list() == ["base", "alignpro", "rlhf", "custom"]
    assert label("alignpro", None) == "alignpro" and label("alignpro-star", 0.1) == "alignpro-star β=0.1"
