"""Wall time of the test tiers, one after the other, in this checkout or another (`--tree`, e.g. a
`git worktree` of an older commit, to compare before and after on the same machine):

    python benchmarks/test_tiers.py --label after --out benchmarks/results/test_tiers.json
    python benchmarks/test_tiers.py --tree /tmp/before --label before --out benchmarks/results/test_tiers.json

Each tier is `python -m pytest -q` with the tier's marker expression (`pyproject.toml` names the
markers), its package imported from the tree's `src/`; `--tiers "full, xdist"` adds the whole suite on
every core (pytest-xdist, `-n auto --dist loadgroup`). The result file keeps one entry per label:
each tier's pytest summary line, wall seconds, and CPU seconds of pytest and everything it started
(the CPU share shows how much of the two cores the suite leaves idle).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

TIERS = {"unit": ["-m", "unit"], "not slow": ["-m", "not slow"], "full": []}  # run unless --tiers says otherwise
ON_REQUEST = {"full, xdist": ["-n", "auto", "--dist", "loadgroup"]}
ALL_TIERS = TIERS | ON_REQUEST


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_tier(tree: Path, tier: str) -> dict:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ALL_TIERS[tier]]
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    cpu, started = children_cpu_seconds(), time.perf_counter()
    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    seconds, cpu = time.perf_counter() - started, children_cpu_seconds() - cpu
    summary = [line for line in result.stdout.splitlines() if " in " in line and ("passed" in line or "failed" in line)]
    return {
        "tier": tier,
        "command": " ".join(["python", *command[1:]]),
        "returncode": result.returncode,
        "summary": summary[-1].strip("= ") if summary else result.stdout[-2000:],
        "wall_s": round(seconds, 1),
        "cpu_s": round(cpu, 1),
        "cpu_share_of_cores": round(cpu / seconds / os.cpu_count(), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--label", required=True)
    parser.add_argument("--tiers", nargs="+", choices=list(ALL_TIERS), default=list(TIERS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.tree, capture_output=True, text=True).stdout.strip()
    runs = []
    for tier in args.tiers:
        runs.append(run_tier(args.tree.resolve(), tier))
        print(json.dumps(runs[-1]), flush=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results[args.label] = {
        "commit": commit,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "tiers": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
