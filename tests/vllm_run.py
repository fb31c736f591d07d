"""Run the vLLM backend on a model and write what it generated as JSON, for test_generation.

vLLM starts engine processes and threads of its own, so it runs in a separate interpreter rather
than inside pytest:  python tests/vllm_run.py MODEL OUT.json
"""

import json
import sys
from dataclasses import asdict

from alignpro.generation import load_generator
from alignpro.sampling import Sampling

# More prompts than one batch, so both a full batch of 32 and a partial one are exercised.
BATCH_SIZE = 32
SAMPLED = Sampling(n=2, temperature=1.0, top_p=0.95, max_new_tokens=24)
GREEDY = Sampling(n=2, temperature=0, max_new_tokens=24)


def prompts() -> list[str]:
    """40 prompts of very different lengths, so batches mix short and long inputs."""
    return [f"Question {i}: " + "tell me more about bread and baking " * (i % 7) for i in range(40)]


def conversations() -> list[list[dict]]:
    return [[{"role": "user", "content": prompt}] for prompt in prompts()]


def main(model: str, out_path: str) -> None:
    generator = load_generator(
        "vllm",
        model,
        dtype="float32",
        batch_size=BATCH_SIZE,
        seed=0,
        vllm_options={"gpu_memory_utilization": 0.2, "max_model_len": 512},
    )
    results = {}
    for name, sampling in [("sampled", SAMPLED), ("greedy", GREEDY)]:
        completions = generator.chat(conversations(), sampling)
        results[name] = [[asdict(completion) for completion in of_prompt] for of_prompt in completions]
    # About 1,300 tokens against the engine's max_model_len of 512.
    too_long = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "tell me about bread " * 300}]]
    results["too_long"] = [[asdict(c) for c in of_prompt] for of_prompt in generator.chat(too_long, GREEDY)]
    with open(out_path, "w") as out:
        json.dump(results, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
