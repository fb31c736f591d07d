"""Time Snakemake's dry run and a real no-op rerun of the whole paper DAG
(`--configfile config/paper.yaml --replace-workflow-config`), in a fresh copy of the workflow.

A real no-op needs every output to exist and be up to date. The script asks Snakemake for the jobs
of the DAG (rules, outputs with their directory() flag, logs, benchmark files: nothing about the
rules is written here, so new rules such as `judge` or a model `fetch` are picked up as they come),
creates each output empty (directories as directories), then runs `snakemake --touch --forceall`:
that sets the outputs' times in DAG order and records every job's metadata (params, code, input,
software env) as a finished run does (without --forceall, --touch records it only for the jobs it
would rerun). It then checks that the dry run has "Nothing to be done" and that the
metadata is really consulted: a dry run with a changed `seed` must plan jobs again.

Then, interleaved (dry run, rerun, dry run, rerun, ...), `--repeats` times after one warm-up each:
    snakemake -n                  --cores 8 --resources gpu=1 --configfile config/paper.yaml --replace-workflow-config
    snakemake                     --cores 8 --resources gpu=1 --configfile config/paper.yaml --replace-workflow-config
Both must print "Nothing to be done". The figures are medians. `snakemake --version` is timed the
same way, as the floor that starting the interpreter and importing Snakemake sets.

    python benchmarks/noop_rerun.py --repeats 5 --out benchmarks/results/noop_rerun_paper.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shlex
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

# Run in the workflow copy: the jobs of the DAG as JSON. Uses Snakemake's Python API to build the
# DAG as a dry run does (the CLI prints no directory() flags); written for Snakemake 9.
LIST_JOBS = r"""
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.enums import Quietness
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

configfile, = sys.argv[1:]
with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    workflow_api = api.workflow(
        resource_settings=ResourceSettings(cores=8, resources={"gpu": 1}),
        config_settings=ConfigSettings(configfiles=[Path(configfile)], replace_workflow_config=True),
        snakefile=Path("Snakefile"),
        workdir=Path.cwd(),
    )
    workflow_api.dag(DAGSettings())
    workflow = workflow_api._workflow
    workflow._prepare_dag(forceall=False, ignore_incomplete=True, lock_warn_only=True)
    workflow._build_dag()
    jobs = [
        {
            "rule": job.rule.name,
            "output": [[str(f), bool(f.is_directory)] for f in job.output],
            "log": [str(f) for f in job.log],
            "benchmark": str(job.benchmark) if job.benchmark else None,
        }
        for job in workflow.dag.jobs
    ]
print("JOBS" + json.dumps(jobs))
"""

NOTHING = "Nothing to be done"


def snakemake_command() -> list[str]:
    script = Path(sys.executable).parent / "snakemake"
    return [str(script)] if script.exists() else [sys.executable, "-m", "snakemake"]


def run(workdir: Path, command: list[str]) -> tuple[float, str, int]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    started = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - started, done.stdout + done.stderr, done.returncode


def list_jobs(workdir: Path, configfile: str) -> list[dict]:
    seconds, output, code = run(workdir, [sys.executable, "-c", LIST_JOBS, configfile])
    if code != 0 or "JOBS" not in output:
        raise SystemExit(f"listing the DAG's jobs failed:\n{output[-4000:]}")
    return json.loads(output.split("JOBS", 1)[1].strip().splitlines()[0])


def create_outputs(workdir: Path, jobs: list[dict]) -> dict:
    """Every output, log and benchmark file of every job, empty; directory() outputs as directories."""
    counts = collections.Counter()
    for job in jobs:
        for path, is_directory in job["output"]:
            target = workdir / path
            if is_directory:
                target.mkdir(parents=True, exist_ok=True)
                counts["directories"] += 1
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
                counts["files"] += 1
        for path in job["log"] + ([job["benchmark"]] if job["benchmark"] else []):
            (workdir / path).parent.mkdir(parents=True, exist_ok=True)
            (workdir / path).touch()
            counts["logs_and_benchmarks"] += 1
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", default="config/paper.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cores", default="8")
    parser.add_argument("--workdir", type=Path, help="where to copy the workflow (default: a temporary directory)")
    add_arguments(parser, max_wait=20.0, budget_s=240.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    load_at_start = [round(x, 2) for x in os.getloadavg()]

    with tempfile.TemporaryDirectory() as tmp:
        workdir = copy_workflow(args.workdir or Path(tmp) / "workflow")
        common = ["--cores", args.cores, "--resources", "gpu=1", "--configfile", args.configfile, "--replace-workflow-config"]
        snakemake = snakemake_command()

        started = time.perf_counter()
        jobs = list_jobs(workdir, args.configfile)
        created = create_outputs(workdir, jobs)
        # --forceall: without it --touch runs (and records metadata for) only the jobs it would rerun.
        seconds, output, code = run(workdir, [*snakemake, "--touch", "--forceall", *common])
        if code != 0:
            raise SystemExit(f"snakemake --touch failed:\n{output[-4000:]}")
        setup_seconds = time.perf_counter() - started
        _, output, _ = run(workdir, [*snakemake, "-n", *common])
        if NOTHING not in output or "missing provenance" in output:
            raise SystemExit(f"after --touch the dry run plans jobs or lacks metadata:\n{output[-4000:]}")
        _, output, _ = run(workdir, [*snakemake, "-n", *common, "--config", "seed=1"])
        replanned = 0 if NOTHING in output else int(output.split("Job stats:", 1)[1].split("total", 1)[1].split()[0])
        if not replanned:
            raise SystemExit("a changed seed plans nothing: the touched run recorded no params metadata")

        commands = {
            "version": [*snakemake, "--version"],
            "dry_run": [*snakemake, "-n", *common],
            "noop_rerun": [*snakemake, *common],
        }
        times = {name: [] for name in commands}
        def call(command: list[str]) -> dict:
            seconds, output, code = run(workdir, command)
            if code != 0 or (command != commands["version"] and NOTHING not in output):
                raise SystemExit(f"{shlex.join(command)} did not find everything up to date:\n{output[-4000:]}")
            return {"seconds": round(seconds, 3)}

        warmup = {name: call(command)["seconds"] for name, command in commands.items()}  # file system caches
        runner = runner_from(args)
        for repeat in range(args.repeats):
            for name, command in commands.items():
                times[name].append(runner.run(lambda: call(command), repeat=repeat + 1, command=name)["seconds"])

    import snakemake as snakemake_package

    result = {
        "benchmark": "noop_rerun",
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "configfile": args.configfile,
        "timed_commands": {name: shlex.join(["snakemake", *command[len(snakemake):]]) for name, command in commands.items()},
        "jobs": len(jobs),
        "jobs_per_rule": dict(collections.Counter(job["rule"] for job in jobs)),
        "created": created,
        "setup_seconds_list_create_touch": round(setup_seconds, 1),
        "jobs_planned_after_changing_seed": replanned,
        "order": "one warm-up round, then rounds of: " + ", ".join(commands),
        "repeats": args.repeats,
        "warmup_seconds": warmup,
        "seconds_per_repeat": times,
        "median_seconds": {name: round(statistics.median(values), 3) for name, values in times.items()},
        "best_run_seconds": {name: min(values) for name, values in times.items()},
        "shared_machine": runner.settings(),
        "attempts": runner.attempts,
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_average_at_start": load_at_start,
            "python": platform.python_version(),
            "snakemake": snakemake_package.__version__,
            "platform": platform.platform(),
            "filesystem_of_copy": "temporary directory" if args.workdir is None else str(args.workdir),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
