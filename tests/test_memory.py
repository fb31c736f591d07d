"""The memory plan (alignpro.memory): shares per job checked at start, and two vLLM engines of one job
that start side by side in one process, each with its share (this file is the engines' entry point:
python tests/test_memory.py PROMPTER FROZEN SHARE)."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from alignpro import memory

PAPER_DEFAULTS = {
    "rewrite": {"prompter_engine": 0.85},
    "generate": {"frozen_engine": 0.85},
    "sft_pairs": {"prompter_engine": 0.25, "frozen_engine": 0.5, "reward_model": 0.15},
    "star_candidates": {"prompter_engine": 0.25, "frozen_engine": 0.5, "reward_model": 0.15},
    "ppo": {"frozen_engine": 0.3, "reward_model": 0.1, "training": 0.5},
}


def test_a_plan_within_the_device_passes_and_one_beyond_is_named():
    memory.check_plan(PAPER_DEFAULTS)
    both_at_vllms_default = {**PAPER_DEFAULTS, "sft_pairs": {"prompter_engine": 0.85, "frozen_engine": 0.85, "reward_model": 0.15}}
    with pytest.raises(ValueError, match=r"config gpu_memory\.sft_pairs: the shares of this job's parts add up to 1\.85 "
                                         r"of the device \(prompter_engine 0\.85, frozen_engine 0\.85, reward_model 0\.15\)"):
        memory.check_plan(both_at_vllms_default)


def test_an_engine_takes_its_jobs_share_and_a_transformers_section_is_left_alone():
    section = {"backend": "vllm", "temperature": 1.0, "vllm": {"max_model_len": 512}}
    started = memory.with_engine_share(section, PAPER_DEFAULTS, "ppo", "frozen_engine")
    assert started == {"backend": "vllm", "temperature": 1.0, "vllm": {"max_model_len": 512, "gpu_memory_utilization": 0.3}}
    assert section["vllm"] == {"max_model_len": 512}  # not changed in place
    transformers = {"backend": "transformers", "vllm": {}}
    assert memory.with_engine_share(transformers, PAPER_DEFAULTS, "ppo", "frozen_engine") is transformers


KV_CACHE = re.compile(r"Auto set \(([\d.]+)/([\d.]+)\) GiB for KV cache")


def two_engines(prompter: str, frozen: str, share: str) -> None:
    """The prompter's engine, then the frozen model's, in this process, as sft_pairs starts them; each
    answers once. Prints the KV cache sizes vLLM logs."""
    from alignpro.generation import load_generator
    from alignpro.sampling import Sampling

    options = {"gpu_memory_utilization": float(share), "max_model_len": 512, "enforce_eager": True}
    engines = [load_generator("vllm", path, dtype="float32", vllm_options=options) for path in (prompter, frozen)]
    answers = [engine.chat([[{"role": "user", "content": "Hi"}]], Sampling(max_new_tokens=4))[0][0].text for engine in engines]
    print(json.dumps({"answers": answers}))


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.model
def test_two_engines_of_one_job_start_side_by_side_with_their_shares(tiny_prompter, tiny_frozen):
    """What failed in sft_pairs and star_candidates with both backends vllm: the second engine had a
    negative KV cache budget on vLLM's CPU build ("less than requested memory for kv (-0.42/4.71 GiB)"),
    which counts the first engine's memory against it. Now each gets its share of the machine."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    share = 0.1
    result = subprocess.run(
        [sys.executable, __file__, str(tiny_prompter), str(tiny_frozen), str(share)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "VLLM_LOGGING_LEVEL": "INFO"},  # the KV cache line is vLLM's INFO
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    sizes = [(float(kv), float(total)) for kv, total in KV_CACHE.findall(output)]
    print(sizes)
    assert len(sizes) == 2, output[-5000:]
    for kv, total in sizes:  # the model's weights and activations are small beside the share
        assert share * total * 0.8 < kv <= share * total * 1.01
    assert len(json.loads(result.stdout.strip().splitlines()[-1])["answers"]) == 2


if __name__ == "__main__":
    two_engines(*sys.argv[1:])
