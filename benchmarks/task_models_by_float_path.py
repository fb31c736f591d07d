"""Train the phrasing task's four models under each of torch's CPU float paths and record what each
role reached: the steps it needed, its held-out figures and its targets (the README's task-model
table quotes them).

    python benchmarks/task_models_by_float_path.py --out benchmarks/results/task_models_by_float_path.json

`ATEN_CPU_CAPABILITY` forces the kernels torch dispatches to (`default` is no SIMD); each path trains
in its own process, since torch reads the variable once at start. A path the CPU lacks falls back
to the best one it has, so the recorded `capability` is what torch reports, not what was asked.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alignpro.task_plans import FLOAT_PATHS


def train_on_path(path: str, seed: int) -> dict:
    """Every role trained under float path `path` in a child process: its cards and wall time."""
    import os

    with tempfile.TemporaryDirectory(prefix="alignpro-task-models-") as root:
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "alignpro.task_models", "phrasing", root, "--seed", str(seed)],
            env=dict(os.environ, ATEN_CPU_CAPABILITY=path),
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        return {"asked": path, "failed": result.stderr[-3000:], "seconds": round(seconds, 1)}
    return {"asked": path, **json.loads(result.stdout.splitlines()[-1]), "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", nargs="+", default=list(FLOAT_PATHS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import torch
    import transformers

    runs = []
    for path in args.paths:
        runs.append(train_on_path(path, args.seed))
        print(json.dumps(runs[-1])[:2000], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": " ".join(["python", *sys.argv]),
                "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "transformers": transformers.__version__},
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
