"""Shared pytest fixtures: offline Hugging Face settings, no SLURM controller probe, tiny random models.

The environment variables are set at import time, before any test module
imports transformers/datasets/vllm, so nothing ever tries to reach the hub.
"""

import os
import shutil
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest  # noqa: E402


def _skip_the_slurm_controller_probe() -> None:
    """Every Snakemake process imports the SLURM executor plugin, which at import runs `scontrol show
    config`; where SLURM's tools are installed but no controller runs (a machine .ci/slurm set up, its
    daemons stopped), that waits 9 s, in each of the hundreds of Snakemake processes the tests start
    (every job is one). The tests run Snakemake locally and never submit: an `scontrol` that fails at
    once, first on the PATH the tests and their subprocesses see, answers the probe instead."""
    if shutil.which("scontrol") is None:
        return
    folder = Path(tempfile.mkdtemp(prefix="alignpro-tests-no-slurm-"))
    (folder / "scontrol").write_text("#!/bin/sh\n# the tests submit nothing to SLURM\nexit 1\n")
    (folder / "scontrol").chmod(0o755)
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ['PATH']}"


_skip_the_slurm_controller_probe()

NEEDS = ("slow", "vllm", "model", "workflow", "browser")  # pyproject.toml's markers for what a test needs


def pytest_collection_modifyitems(items):
    """Every test that needs none of NEEDS is a unit test: `pytest -m unit` is the quick tier."""
    for item in items:
        if not any(item.get_closest_marker(need) for need in NEEDS):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def tiny_prompter(tmp_path_factory):
    """Path to a tiny random prompter (Qwen2ForCausalLM + tokenizer)."""
    from alignpro.tinymodels import build_tiny_model

    return build_tiny_model("prompter", tmp_path_factory.mktemp("tiny_prompter"))


@pytest.fixture(scope="session")
def tiny_frozen(tmp_path_factory):
    """Path to a tiny random frozen LLM (Qwen2ForCausalLM + tokenizer)."""
    from alignpro.tinymodels import build_tiny_model

    return build_tiny_model("frozen", tmp_path_factory.mktemp("tiny_frozen"))


@pytest.fixture(scope="session")
def tiny_reward(tmp_path_factory):
    """Path to a tiny random reward model (Qwen2ForSequenceClassification)."""
    from alignpro.tinymodels import build_tiny_model

    return build_tiny_model("reward", tmp_path_factory.mktemp("tiny_reward"))


@pytest.fixture(scope="session")
def short_context_frozen(tiny_frozen, tmp_path_factory):
    """The tiny frozen model with a context of 96 tokens, so that ordinary prompts overflow it."""
    import json
    import shutil

    path = tmp_path_factory.mktemp("short_context") / "model"
    shutil.copytree(tiny_frozen, path)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 96
    (path / "config.json").write_text(json.dumps(config))
    return path
