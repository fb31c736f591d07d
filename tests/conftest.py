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

SESSION_ENVIRONMENT = dict(os.environ)  # what every test starts from


@pytest.fixture(autouse=True)
def environment_of_the_session():
    """Each test leaves os.environ as the session had it. Libraries change it when imported, for the
    rest of the process: importing TRL sets VLLM_LOGGING_LEVEL=ERROR (trl._compat) and, through vLLM,
    LD_LIBRARY_PATH. Every subprocess a later test starts inherited that, so which tests ran before
    decided what it logged: after a test importing TRL, vLLM's KV cache line was missing from the
    two-engine test's process (test_memory.py; under pytest-xdist, whose workers run tests in another
    order). PYTEST_CURRENT_TEST is pytest's own."""
    yield
    for name in set(os.environ) | set(SESSION_ENVIRONMENT):
        if name == "PYTEST_CURRENT_TEST" or os.environ.get(name) == SESSION_ENVIRONMENT.get(name):
            continue
        if name in SESSION_ENVIRONMENT:
            os.environ[name] = SESSION_ENVIRONMENT[name]
        else:
            del os.environ[name]

NEEDS = ("slow", "vllm", "model", "workflow", "browser")  # pyproject.toml's markers for what a test needs


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Every test that needs none of NEEDS is a unit test: `pytest -m unit` is the quick tier. Under
    pytest-xdist (`-n`), tests that share a module- or class-scoped fixture run in one worker, so that
    the fixture (e.g. the embedded default's run) is built once."""
    for item in items:
        if not any(item.get_closest_marker(need) for need in NEEDS):
            item.add_marker(pytest.mark.unit)
    if config.pluginmanager.hasplugin("xdist"):
        for item, group in shared_fixture_groups(items).items():
            item.add_marker(pytest.mark.xdist_group(group))


def shared_fixture_groups(items) -> dict[pytest.Item, str]:
    """Test -> a name shared by every test it is linked to through module- or class-scoped fixtures
    (fixtures a test asks for by name, directly or through other fixtures; not those it asks for with
    `request.getfixturevalue`). Tests without such fixtures, and items that are not test functions,
    are left out."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    first_keys: dict[pytest.Item, str] = {}
    for item in items:
        keys = []
        fixtures = getattr(item, "_fixtureinfo", None)  # pytest's record of the fixtures a test function uses
        for name, definitions in (fixtures.name2fixturedefs.items() if fixtures else ()):
            scope = definitions[-1].scope
            if scope in ("module", "class"):
                owner = item.getparent(pytest.Class if scope == "class" else pytest.Module)
                keys.append(f"{owner.nodeid}::{name}")
        for key in keys[1:]:
            parent[root(key)] = root(keys[0])
        if keys:
            first_keys[item] = keys[0]
    return {item: root(key) for item, key in first_keys.items()}


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
