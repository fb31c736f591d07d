"""The β-sweep PPO prompter of a finished embedded-default run, trained again under several seeds: per
seed, the test split's reward gain over base and exact-match accuracy, as the report computes them.

    .venv/bin/python benchmarks/ppo_seeds.py results --seeds 0 1 2 3 4 5 --out benchmarks/results/ppo_seeds.json
    ATEN_CPU_CAPABILITY=default .venv/bin/python benchmarks/ppo_seeds.py RUN/results ...   # that run's float path

One run of the workflow shows one seed; whether PPO at a small β reliably raises accuracy, or only
did so for the seed the demo happens to use, takes several. RUN is a finished run of the embedded
default (its task models, rho_sft, data and base scores are read, nothing in it is written). Each
seed trains a prompter as rule ppo's `ppo-beta<b>` job does (the config's ppo section, KL coefficient
fixed at `--beta`, `--set key=value` changes a setting), then rewrites the test prompts, has the
frozen model answer and scores, as the rewrite, generate and score rules do (the evaluation seed is
the config's, as in the workflow). `--pythonpath` runs it against another checkout's package (a
worktree of an older commit: a before/after comparison on the same models and machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATASET, FROZEN, PROMPTER = "phrasing", "phrasing-frozen", "phrasing-prompter"  # config.yaml's names


def model(section: str, path: Path):
    """A model the finished run built or trained, as config.yaml's entry `section` names it."""
    from alignpro.model_spec import ModelSpec

    return ModelSpec(f"models.{section}", str(path), dtype="float32")


def one_seed(results: Path, config: dict, ppo: dict, seed: int, work: Path) -> dict:
    """Train the prompter with `seed`, answer and score the test split; the figures of that seed."""
    import polars as pl

    from alignpro import stages, tables
    from alignpro.generation import GenerationSettings
    from alignpro.report import summarize

    frozen, reward = model(f"frozen.{FROZEN}", results / f"task_models/{DATASET}/frozen"), model("reward.phrasing-reward", results / f"task_models/{DATASET}/reward")
    test = results / f"data/{DATASET}/test.parquet"
    stages.train_prompter(
        trainer="ppo",
        train_path=str(results / f"data/{DATASET}/train.parquet"),
        workdir=str(work),
        model=model(f"prompters.{PROMPTER}", results / f"train/{DATASET}/{FROZEN}/{PROMPTER}/sft"),
        frozen=frozen,
        reward=reward,
        settings=ppo,
        rewrite=config["rewrite"],
        generation=GenerationSettings.for_training(config["generation"]),
        scoring=config["reward"],
        seed=seed,
    )
    stages.rewrite(
        prompts_path=str(test), out_path=str(work / "rewrites.parquet"), prompter=PROMPTER,
        model=model(f"prompters.{PROMPTER}", work / "model"), params=config["rewrite"], seed=config["seed"],
    )
    stages.generate(
        inputs_path=str(work / "rewrites.parquet"), out_path=str(work / "responses.parquet"), dataset=DATASET,
        method="alignpro", frozen=FROZEN, prompter=PROMPTER, beta=ppo["init_kl_coef"], model=frozen,
        params=config["generation"], seed=config["seed"],
    )
    stages.score(
        responses_path=str(work / "responses.parquet"), out_path=str(work / "scores.parquet"),
        reward_model="phrasing-reward", model=reward, params=config["reward"],
    )
    # accuracy and mean reward as the report computes them, base's from the run's own scores
    table = summarize(
        [tables.read_table(path, tables.SCORES) for path in (results / f"scores/{DATASET}/{FROZEN}/base.parquet", work / "scores.parquet")],
        prompters=[PROMPTER],
        references=stages._test_prompts_frame({DATASET: str(test)}),
        checkers={DATASET: config["datasets"][DATASET]["checker"]},
    )
    base, trained = (table.row(by_predicate=pl.col("method") == method, named=True) for method in ("base", "alignpro"))
    metrics = pl.read_parquet(work / "metrics.parquet")
    return {
        "seed": seed,
        "reward_gain": round(trained["mean_reward"] - base["mean_reward"], 3),
        "accuracy": round(trained["accuracy"], 3),
        "base_accuracy": round(base["accuracy"], 3),
        "kl_last_10_steps": round(metrics["kl"].tail(10).mean(), 2),
        "score_last_10_steps": round(metrics["score_mean"].tail(10).mean(), 2),
    }


def summary(values: list[float]) -> dict:
    """Mean with a 95% t-interval, and the minimum."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": round(mean, 3), "min": round(min(values), 3)}
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
    return {"mean": round(mean, 3), "ci95": [round(low, 3), round(high, 3)], "min": round(min(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a finished run's results directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="ppo settings to change (YAML values)")
    parser.add_argument("--config", type=Path, default=ROOT / "config/config.yaml")
    parser.add_argument("--pythonpath", type=Path, help="a checkout's src/ to import alignpro from instead")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.pythonpath and os.environ.get("PYTHONPATH") != str(args.pythonpath):
        env = dict(os.environ, PYTHONPATH=str(args.pythonpath))
        sys.exit(subprocess.call([sys.executable, *sys.argv], env=env))

    import torch

    import alignpro

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = yaml.safe_load(args.config.read_text())
    changes = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    ppo = {**config["ppo"], "init_kl_coef": args.beta, "adaptive_kl": False, **changes}
    runs = []
    with tempfile.TemporaryDirectory(prefix="alignpro-ppo-seeds-") as scratch:
        for seed in args.seeds:
            runs.append(one_seed(args.results.resolve(), config, ppo, seed, Path(scratch) / f"seed{seed}"))
            print(json.dumps(runs[-1]), flush=True)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "package": str(Path(alignpro.__file__).parent),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "float_path": torch.backends.cpu.get_cpu_capability().lower(),
        "beta": args.beta,
        "changed_settings": changes,
        "runs": runs,
        "accuracy": summary([run["accuracy"] for run in runs]),
        "reward_gain": summary([run["reward_gain"] for run in runs]),
        "seeds_below_base_accuracy": sum(run["accuracy"] <= run["base_accuracy"] for run in runs),
    }
    print(json.dumps({key: result[key] for key in ("float_path", "accuracy", "reward_gain", "seeds_below_base_accuracy")}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
