"""The frozen model's share of a PPO step when it is an API: answering a step's rollouts at latency L
and concurrency C, against the ideal ceil(answers / C) · L.

Each step is what `RewriteReward` does inside `ppo` (every rollout's rewrite extracted, the frozen
model asked through alignpro.frozen_api with the step's cache keys, the answers scored): the stub
(tests/openai_stub.py, in its own process as a remote API would be) answers each request after L
seconds, and a scorer that costs nothing leaves the frozen-answer time alone. Steps after the first
(warm: the SDK's lazy imports and first connections) give the median.

    python benchmarks/api_frozen_step.py --rollouts 64 --concurrency 16 --latency 0.2 --steps 6 \
        --out benchmarks/results/api_frozen_step.json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from alignpro.frozen_api import APIGenerator, FrozenAPISettings  # noqa: E402
from alignpro.sampling import Completion, Sampling  # noqa: E402
from alignpro.training import RewriteReward  # noqa: E402
from openai_stub import JudgeStub  # noqa: E402

KEY_ENV = "ALIGNPRO_BENCH_FROZEN_KEY"


class FreeScorer:
    """Scores nothing, so a step's time is the frozen model's."""

    def score(self, prompts, responses):
        return [0.0] * len(responses)


def serve_stub(latency: float, connection) -> None:
    with JudgeStub(latency_s=latency, answers_chats=True) as stub:
        connection.send(stub.base_url)
        while connection.recv() != "stop":
            connection.send({"requests": stub.total_requests, "max_in_flight": stub.max_in_flight})


def measure(rollouts: int, concurrency: int, latency: float, steps: int) -> dict:
    os.environ[KEY_ENV] = "bench"
    stub, there = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve_stub, args=(latency, there), daemon=True)
    server.start()
    base_url = stub.recv()
    ideal = math.ceil(rollouts / concurrency) * latency
    prompts = [f"Benchmark prompt {index}: explain topic {index}." for index in range(rollouts)]
    completions = [Completion(f"<prompt>Explain topic {index} step by step.</prompt>", "stop", 12) for index in range(rollouts)]
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = FrozenAPISettings(
            model="bench-frozen", base_url=base_url, api_key_env=KEY_ENV, concurrency=concurrency, cache=f"{tmp}/frozen.sqlite"
        )
        reward = RewriteReward(
            APIGenerator(settings, name="bench"), FreeScorer(), Sampling(max_new_tokens=64),
            fallback_on_truncation=True, max_length_ratio=8.0,
        )
        for step in range(1, steps + 1):
            _, timings = reward(prompts, completions, step=step)
            times.append(timings["time_frozen_generation"])
    stub.send("count")
    counts = stub.recv()
    stub.send("stop")
    server.join(timeout=10)
    warm = statistics.median(times[1:])
    return {
        "rollouts": rollouts,
        "concurrency": concurrency,
        "latency_s": latency,
        "steps": steps,
        "ideal_s": round(ideal, 4),
        "frozen_answer_s_per_step": [round(t, 4) for t in times],
        "median_warm_s": round(warm, 4),
        "fraction_of_ideal": round(ideal / warm, 4),
        "requests_at_server": counts["requests"],
        "max_in_flight_at_server": counts["max_in_flight"],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s) shared, Python {platform.python_version()}",
        "command": " ".join(["python", *sys.argv]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", default="benchmarks/results/api_frozen_step.json")
    args = parser.parse_args()
    results = [measure(args.rollouts, concurrency, args.latency, args.steps) for concurrency in args.concurrency]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
