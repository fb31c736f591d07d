"""Judging throughput against the local OpenAI stub with injected latency.

With every call taking `latency` seconds at the server, `concurrency` calls in flight can at best
finish concurrency / latency calls a second; the figure is how close the judge's client (semaphore,
retry loop, SQLite cache commits, verdict parsing, the openai SDK) gets to that bound. Each pair is
two calls. The stub runs in its own process, as a remote API would. The same pairs are judged twice
into fresh caches: the cold run pays the SDK's one-time lazy imports and model builds, the warm run
(the headline figure, as the PPO benchmark reports steps after the first) does not. Each run also
reports its steady rate at the server, without the first connections and the last wave.

    python benchmarks/judge_throughput.py --pairs 200 --concurrency 16 --latency 0.2 \
        --out benchmarks/results/judge_throughput.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from alignpro.judge import PAIRS, JudgeSettings, judge_pairs  # noqa: E402
from openai_stub import MARKER, JudgeStub  # noqa: E402

KEY_ENV = "ALIGNPRO_BENCH_JUDGE_KEY"


def benchmark_pairs(n: int) -> pa.Table:
    """Distinct prompts, the method's answer winning every other one."""
    rows = [
        dict(dataset="bench", prompt_id=f"p{i}", prompt=f"Benchmark question {i}: explain topic {i} in detail.",
             method="alignpro", prompter="qwen", frozen="llama", sample_index=0,
             answer=f"Answer {i}: {MARKER if i % 2 else 'an ordinary'} explanation with three steps.",
             base_answer=f"Answer {i}: a plain explanation.", answer_tokens=10, base_answer_tokens=6)
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=PAIRS)


def serve_stub(latency: float, connection) -> None:
    """Run the stub in this process; answer each message from the parent with the stub's counts."""
    with JudgeStub(latency_s=latency) as stub:
        connection.send(stub.base_url)
        while connection.recv() != "stop":
            arrivals = sorted(t for times in stub.request_times.values() for t in times)
            connection.send({"arrivals": arrivals, "max_in_flight": stub.max_in_flight})


def steady_rate(arrivals: list[float]) -> float:
    """Requests a second at the server between the 10th and 90th percentile arrivals: the rate once
    connections are open and before the last wave drains."""
    first, last = len(arrivals) // 10, len(arrivals) - 1 - len(arrivals) // 10
    return (last - first) / (arrivals[last] - arrivals[first])


def timed_run(pairs: pa.Table, settings: JudgeSettings, ideal: float, stub, cache: Path) -> dict:
    """Judge `pairs` into a fresh cache; calls and rates as counted at the server."""
    stub.send("count")
    before = len(stub.recv()["arrivals"])
    started = time.perf_counter()
    verdicts = judge_pairs(pairs, settings, cache, name="bench")
    seconds = time.perf_counter() - started
    stub.send("count")
    counts = stub.recv()
    arrivals = counts["arrivals"][before:]
    steady = steady_rate(arrivals)
    return {
        "seconds": round(seconds, 3),
        "calls": len(arrivals),
        "judged_pairs": sum(v in ("win", "tie", "loss") for v in verdicts.column("verdict").to_pylist()),
        "calls_per_s": round(len(arrivals) / seconds, 2),
        "fraction_of_ideal": round(len(arrivals) / seconds / ideal, 4),
        "steady_calls_per_s": round(steady, 2),
        "steady_fraction_of_ideal": round(steady / ideal, 4),
        "max_in_flight_at_server": counts["max_in_flight"],
    }


def measure(pairs: int, concurrency: int, latency: float) -> dict:
    os.environ[KEY_ENV] = "bench"
    stub, there = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve_stub, args=(latency, there), daemon=True)
    server.start()
    settings = JudgeSettings(base_url=stub.recv(), api_key_env=KEY_ENV, concurrency=concurrency, timeout_s=30.0)
    table, ideal = benchmark_pairs(pairs), concurrency / latency
    with tempfile.TemporaryDirectory() as tmp:
        cold = timed_run(table, settings, ideal, stub, Path(tmp) / "cold.sqlite")
        warm = timed_run(table, settings, ideal, stub, Path(tmp) / "warm.sqlite")
    stub.send("stop")
    server.join(timeout=10)
    return {
        "pairs": pairs,
        "concurrency": concurrency,
        "latency_s": latency,
        "ideal_calls_per_s": round(ideal, 2),
        "warm": warm,
        "cold": cold,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s) shared, Python {platform.python_version()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--out", default="benchmarks/results/judge_throughput.json")
    args = parser.parse_args()
    result = measure(args.pairs, args.concurrency, args.latency)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
