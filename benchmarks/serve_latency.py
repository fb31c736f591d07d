"""The latency `alignpro serve` adds over calling the frozen model directly, side by side in one run.

The frozen model is the embedded default's, served by vLLM's OpenAI-compatible server; the proxy puts the
trained PPO prompter in front of it (transformers on a CPU, `--rewrite-backend`). Each test prompt is
asked directly and through the proxy, alternating which goes first, one request at a time; every prompt
is new to the proxy (its rewrite cache does not answer). The proxy's own split comes from its response's
`alignpro.seconds` (rewrite, frozen model); the added latency is the proxy's wall time less the direct
call's on the same prompt. Medians and 95th percentiles.

    python benchmarks/serve_latency.py --results results --out benchmarks/results/serve_latency_cpu.json

`--results` is a finished quick start's results directory (the task models and the PPO prompter).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from alignpro.distributed import free_port

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from servers import started  # noqa: E402  (the tests' way to start a server and wait for it)

SAMPLING = {"max_tokens": 16, "temperature": 1.0, "top_p": 0.9, "seed": 0}  # the evaluation's (config.yaml)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summary(values: list[float]) -> dict:
    return {"median_s": round(statistics.median(values), 4), "p95_s": round(percentile(values, 95), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import openai
    import pyarrow.parquet as pq

    results = args.results.resolve()
    prompts = pq.read_table(results / "data/phrasing/test.parquet").column("prompt").to_pylist()[: args.prompts]
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    frozen_port, proxy_port = free_port(), free_port()
    frozen = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(results / "task_models/phrasing/frozen"),
        "--served-model-name", "phrasing-frozen", "--host", "127.0.0.1", "--port", str(frozen_port), "--dtype", "float32",
        "--max-model-len", "512", "--gpu-memory-utilization", "0.2",
    ]
    proxy = [
        str(Path(sys.executable).parent / "alignpro"), "serve", "--port", str(proxy_port), "--served-model", "aligned",
        "--rewrite-backend", "transformers", "--prompter", str(results / "train/phrasing/phrasing-frozen/phrasing-prompter/ppo/model"),
        "--frozen-base-url", f"http://127.0.0.1:{frozen_port}/v1", "--frozen-model", "phrasing-frozen", "--frozen-api-key-env", "SERVE_LATENCY_KEY",
    ]
    with (
        started(frozen, f"http://127.0.0.1:{frozen_port}/v1/models", logs / "serve_latency_vllm.log", timeout_s=300),
        started(proxy, f"http://127.0.0.1:{proxy_port}/health", logs / "serve_latency_proxy.log", timeout_s=300,
                env=os.environ | {"SERVE_LATENCY_KEY": "none", "HF_HUB_OFFLINE": "1"}),
    ):
        direct = openai.OpenAI(base_url=f"http://127.0.0.1:{frozen_port}/v1", api_key="none", max_retries=0)
        through = openai.OpenAI(base_url=f"http://127.0.0.1:{proxy_port}/v1", api_key="none", max_retries=0)
        rows = []
        for index, prompt in enumerate(prompts):
            messages = [{"role": "user", "content": prompt}]
            timed = {}
            order = (("direct", direct, "phrasing-frozen"), ("proxy", through, "aligned"))
            for name, client, model in order if index % 2 == 0 else order[::-1]:
                began = time.perf_counter()
                response = client.chat.completions.create(model=model, messages=messages, **SAMPLING)
                timed[name] = (time.perf_counter() - began, response)
            seconds = timed["proxy"][1].model_extra["alignpro"]["seconds"]
            rows.append({"direct": timed["direct"][0], "proxy": timed["proxy"][0], **seconds})
    report = {
        "command": "python benchmarks/serve_latency.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "prompts": len(rows),
        "direct": summary([row["direct"] for row in rows]),
        "through_the_proxy": summary([row["proxy"] for row in rows]),
        "added": summary([row["proxy"] - row["direct"] for row in rows]),
        "proxy_rewrite": summary([row["rewrite"] for row in rows]),
        "proxy_frozen_model": summary([row["frozen_model"] for row in rows]),
    }
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
