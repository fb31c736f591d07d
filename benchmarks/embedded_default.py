"""Time the README's main command on the embedded default, from nothing: a fresh copy of the workflow,
no results, no cache, exactly `snakemake --cores 8 --resources gpu=1` (the workflow trains its
models first). Records the wall time, the jobs per rule, the seconds of the longest jobs, and the
summary's reward and accuracy per method, so the README's quick-start table and time can be checked
against it.

    python benchmarks/embedded_default.py --repeats 1 --out benchmarks/results/embedded_default_cpu.json

Each run takes minutes, so the default is one run; with more, the figure is the median.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from cpu_contention import add_arguments, runner_from  # noqa: E402  (benchmarks/cpu_contention.py)
from test_workflow import copy_workflow  # noqa: E402  (the copy the workflow tests run in)

COMMAND = ["--cores", "8", "--resources", "gpu=1"]
TIMESTAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$")


def job_seconds(log: str) -> dict[str, list[float]]:
    """Seconds from each job's start to its end, by rule, from Snakemake's own log."""
    started, rule_of, seconds, now, rule = {}, {}, collections.defaultdict(list), None, None
    for line in log.splitlines():
        if match := TIMESTAMP.match(line):
            now = datetime.datetime.strptime(" ".join(match.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif match := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = match.group(1)
        elif (match := re.match(r"^    jobid: (\d+)$", line)) and rule:
            started[match.group(1)], rule_of[match.group(1)], rule = now, rule, None
        elif (match := re.match(r"^Finished jobid: (\d+)", line)) and match.group(1) in started:
            seconds[rule_of[match.group(1)]].append((now - started[match.group(1)]).total_seconds())
    return dict(seconds)


def one_run() -> dict:
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="alignpro-default-") as tmp:
        workdir = copy_workflow(Path(tmp) / "workflow")
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", *COMMAND], cwd=workdir, env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"snakemake failed:\n{result.stderr[-4000:]}")
        jobs = job_seconds(result.stderr + result.stdout)
        summary = pq.read_table(workdir / "results/report/summary.parquet").to_pylist()
    return {
        "seconds": round(seconds, 1),
        "jobs": {rule: len(times) for rule, times in sorted(jobs.items())},
        "longest_job_seconds": {rule: max(times) for rule, times in sorted(jobs.items())},
        "methods": [
            {key: row[key] for key in ("method", "beta", "mean_reward", "ci_low", "ci_high", "accuracy", "kl")}
            for row in summary
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    add_arguments(parser, max_wait=300.0, budget_s=3600.0)
    args = parser.parse_args()
    runner = runner_from(args)
    runs = [runner.run(one_run, repeat=index + 1) for index in range(args.repeats)]
    result = {
        "command": "snakemake " + " ".join(COMMAND),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average_at_start": os.getloadavg()[0]},
        "median_seconds": statistics.median(run["seconds"] for run in runs),
        "runs": runs,
        "attempts": runner.attempts,
        "quiet_runner": runner.settings(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median {result['median_seconds']} s over {len(runs)} run(s); written to {args.out}")


if __name__ == "__main__":
    main()
