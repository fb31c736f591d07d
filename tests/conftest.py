"""Shared pytest fixtures: offline Hugging Face settings and tiny random models.

The environment variables are set at import time, before any test module
imports transformers/datasets/vllm, so nothing ever tries to reach the hub.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest  # noqa: E402


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
