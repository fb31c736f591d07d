"""Run the vLLM backend once on a model and write what it generated as JSON; used by test_generation.

vLLM spawns engine processes, so it runs here, in a separate interpreter, rather than in pytest's:
    python tests/vllm_run.py MODEL OUT.json
"""

import json
import sys
import time
from dataclasses import asdict

from alignpro.generation import Sampling, load_generator

NUM_PROMPTS = 32
SAMPLING = Sampling(n=2, temperature=1.0, top_p=0.95, max_new_tokens=24, seed=0)


def prompts() -> list[str]:
    """Prompts of very different lengths, so the batch mixes short and long inputs."""
    return [f"Question {i}: " + "tell me more about bread and baking " * (i % 7) for i in range(NUM_PROMPTS)]


def main(model: str, out_path: str) -> None:
    started = time.monotonic()
    generator = load_generator(
        "vllm",
        model,
        dtype="float32",
        batch_size=32,
        seed=0,
        vllm_options={"gpu_memory_utilization": 0.2, "max_model_len": 512},
    )
    loaded = time.monotonic()
    sampled = generator.chat([[{"role": "user", "content": p}] for p in prompts()], SAMPLING)
    greedy = generator.chat([[{"role": "user", "content": p}] for p in prompts()[:4]], Sampling(n=2, temperature=0, max_new_tokens=24))
    result = {
        "max_new_tokens": SAMPLING.max_new_tokens,
        "sampled": [[asdict(c) for c in completions] for completions in sampled],
        "greedy": [[asdict(c) for c in completions] for completions in greedy],
        "load_s": loaded - started,
        "generate_s": time.monotonic() - loaded,
    }
    with open(out_path, "w") as out:
        json.dump(result, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
