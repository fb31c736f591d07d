"""Typed config sections: unknown keys are named with their section, and each dataclass's defaults are
the config schema's (the one source of defaults)."""

from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import yaml

from alignpro.frozen_api import FrozenAPISettings
from alignpro.generation import GenerationSettings
from alignpro.judge import JudgeSettings
from alignpro.lora import LoraSettings
from alignpro.ppo import PPOConfig
from alignpro.rewrite import RewriteSettings
from alignpro.sft import SFTSettings
from alignpro.trl_trainers import TRLSettings

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text())
SECTIONS = {  # dataclass -> its section's properties in the schema
    PPOConfig: SCHEMA["$defs"]["ppo"]["properties"],
    TRLSettings: SCHEMA["$defs"]["trl"]["properties"],
    LoraSettings: SCHEMA["$defs"]["lora"]["properties"],
    SFTSettings: SCHEMA["properties"]["sft"]["properties"],
    JudgeSettings: SCHEMA["$defs"]["api"]["properties"] | SCHEMA["$defs"]["judge"]["properties"]["api"]["allOf"][1]["properties"],
    FrozenAPISettings: SCHEMA["$defs"]["api"]["properties"] | SCHEMA["$defs"]["model"]["properties"]["api"]["allOf"][1]["properties"],
    RewriteSettings: SCHEMA["$defs"]["sampling"]["properties"] | SCHEMA["properties"]["rewrite"]["allOf"][1]["properties"],
    GenerationSettings: SCHEMA["$defs"]["sampling"]["properties"] | SCHEMA["properties"]["generation"]["allOf"][1]["properties"],
}
NOT_IN_THE_SECTION = {"seed"}  # the config's top-level seed, passed in by the stage
# Keys the schema requires (no default there); the dataclass's placeholder is refused by from_config.
REQUIRED = {FrozenAPISettings: SCHEMA["$defs"]["model"]["properties"]["api"]["allOf"][1]["required"]}


def default_of(field):
    if field.default is not MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not MISSING else MISSING


@pytest.mark.parametrize("cls", list(SECTIONS), ids=lambda cls: cls.__name__)
def test_dataclass_defaults_are_the_schema_defaults(cls):
    properties = SECTIONS[cls]
    for field in fields(cls):
        if field.name in NOT_IN_THE_SECTION:
            continue
        assert field.name in properties, f"{cls.__name__}.{field.name} is not in the schema"
        default = default_of(field)
        if field.name == "lora":
            assert default == LoraSettings() and properties["lora"]["default"] == {}
            continue
        if field.name in REQUIRED.get(cls, ()):
            continue
        expected = properties[field.name].get("default", MISSING)
        if isinstance(default, tuple):
            default = list(default)
        assert default == expected, f"{cls.__name__}.{field.name}: dataclass {default!r}, schema {expected!r}"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: PPOConfig.from_config({"kl_target": 6.0}, "rlhf"), "config rlhf.kl_target: unknown key"),
        (lambda: PPOConfig.from_config({"lora": {"rank": 4}}, "ppo"), "config ppo.lora.rank: unknown key"),
        (lambda: SFTSettings.from_config({"epoch": 2}), "config sft.epoch: unknown key"),
        (lambda: SFTSettings.from_config({"lora": {"alhpa": 2}}), "config sft.lora.alhpa: unknown key"),
        (lambda: JudgeSettings.from_config({"model": "gpt-4", "max_token": 9}, "gpt4"), "config judges.gpt4.api.max_token: unknown key"),
        (lambda: RewriteSettings.from_config({"n_samples": 2}), "config rewrite.n_samples: unknown key"),
        (lambda: GenerationSettings.from_config({"max_tokens": 9}), "config generation.max_tokens: unknown key"),
    ],
)
def test_unknown_keys_are_named_with_their_section(build, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        build()


def test_keys_of_other_stages_are_left_out():
    assert SFTSettings.from_config({"pairs": {"source": "best_of_k"}, "epochs": 2}).epochs == 2
    assert PPOConfig.from_config({"max_prompts": 64, "steps": 3}).steps == 3
    assert JudgeSettings.from_config({"cache": "judge.sqlite", "model": "m"}, "gpt4").model == "m"


def test_training_stages_take_the_generation_section_without_n_samples():
    """So that changing the evaluation's number of samples retrains nothing."""
    section = {"backend": "transformers", "n_samples": 4, "temperature": 0.7, "max_new_tokens": 32}
    training = GenerationSettings.for_training(section)
    assert training == {"backend": "transformers", "temperature": 0.7, "max_new_tokens": 32}
    assert GenerationSettings.from_config(training).sampling(seed=3).temperature == 0.7


def test_a_key_given_twice_in_a_config_file_is_refused_naming_it_and_its_lines(tmp_path):
    from alignpro.config_files import check_unique_keys

    path = tmp_path / "twice.yaml"
    path.write_text("judges:\n  gpt4: {backend: offline}\n  local: {backend: offline}\n  gpt4: {backend: api}\nseed: 0\n")
    with pytest.raises(ValueError, match=rf"{path}: key 'gpt4' is given twice in one mapping, on lines 2 and 4"):
        check_unique_keys(path)
    merged = tmp_path / "merged.yaml"  # a merge key's keys overridden beside it are not duplicates
    merged.write_text("ppo: &ppo {steps: 2, lr: 1}\nrlhf:\n  <<: *ppo\n  steps: 4\n")
    check_unique_keys(merged)
