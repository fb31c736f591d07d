"""How often the report's length-controlled win-rate interval covers the truth, on simulated judges of
known behaviour (`alignpro.report.simulation`), beside the delta-method interval the report used before
(which treats the estimated prompt difficulties as known).

    python benchmarks/lc_coverage.py --datasets 200 --out benchmarks/results/lc_coverage.json

Each setting simulates `--datasets` runs: several methods judged against base on the same prompts, so
the difficulty term is estimated from the other methods' verdicts as in a real run. Each run goes
through `alignpro.report.win_rates` as the report calls it; an interval covers when it contains the
method's true rate at equal length. Coverage is pooled over the methods of every run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import statsmodels.api as sm
from scipy import stats

from alignpro.report import win_rates
from alignpro.report.judging import with_difficulty
from alignpro.report.simulation import simulated_verdicts, true_lc_win_pct
from alignpro.tables import VERDICTS

SETTINGS = {
    "length-only judge (truth 50)": dict(qualities={"alignpro": 0.0, "sft": 0.0, "star": 0.0}, prompts=60, samples=2),
    "one better method": dict(qualities={"alignpro": 1.0, "sft": 0.0, "star": -0.5}, prompts=60, samples=2),
    "ties and few samples": dict(qualities={"alignpro": 0.5, "sft": 0.0, "star": 0.3}, prompts=40, samples=1, tie_share=0.2),
    "many samples per prompt": dict(qualities={"alignpro": 0.5, "sft": -0.3, "star": 0.2}, prompts=30, samples=8),
    "strong prompt effects (the test's)": dict(qualities={"alignpro": 0.5, "sft": -0.3, "star": 0.2}, prompts=30, samples=8, prompt_sd=2.0, length_effect=1.0),
}
CONFIDENCE = 0.95


def delta_method_interval(group: pl.DataFrame) -> tuple[float, float]:
    """The earlier report's interval: the same GLM's average prediction, delta method, clustered by prompt."""
    decided = group.filter(pl.col("preference").is_not_null())
    difference = (decided["answer_tokens"] - decided["base_answer_tokens"]).cast(pl.Float64).to_numpy()
    design = np.column_stack([np.ones(decided.height), np.tanh(difference / difference.std(ddof=1)), decided["difficulty"].to_numpy()])
    prompts = decided["prompt_id"].cast(pl.Categorical).to_physical().to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sm.GLM(decided["preference"].to_numpy(), design, family=sm.families.Binomial()).fit(cov_type="cluster", cov_kwds={"groups": prompts})
    without_length = design.copy()
    without_length[:, 1] = 0.0
    (low, high), = fit.get_prediction(exog=without_length, average=True, which="mean").conf_int(alpha=1.0 - CONFIDENCE)
    return 100.0 * low, 100.0 * high


def one_dataset(setting: str, seed: int, n_bootstrap: int) -> list[dict]:
    """Each method's truth, LC rate and both intervals on one simulated run."""
    options = SETTINGS[setting]
    frame = pl.from_arrow(pa.Table.from_pylist(simulated_verdicts(seed, **options), schema=VERDICTS))
    rates = win_rates(frame, n_bootstrap=n_bootstrap, seed=seed, confidence=CONFIDENCE)
    difficulty = with_difficulty(frame)
    rows = []
    for rate in rates.iter_rows(named=True):
        quality = options["qualities"][rate["method"]]
        truth = true_lc_win_pct(quality, prompt_sd=options.get("prompt_sd", 1.0), tie_share=options.get("tie_share", 0.0))
        delta_low, delta_high = delta_method_interval(difficulty.filter(method=rate["method"]))
        rows.append({
            "setting": setting, "seed": seed, "method": rate["method"], "truth": truth, "raw": rate["preference_pct"],
            "lc": rate["lc_win_pct"], "low": rate["lc_win_ci_low"], "high": rate["lc_win_ci_high"],
            "delta_low": delta_low, "delta_high": delta_high, "note": rate["lc_win_note"],
        })
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    frame = pl.DataFrame(rows)
    covered = (pl.col("low") <= pl.col("truth")) & (pl.col("truth") <= pl.col("high"))
    delta_covered = (pl.col("delta_low") <= pl.col("truth")) & (pl.col("truth") <= pl.col("delta_high"))
    return (
        frame.group_by("setting", maintain_order=True)
        .agg(
            intervals=pl.len(),
            defined=pl.col("low").is_not_null().sum(),
            coverage_pct=100.0 * covered.mean(),
            delta_coverage_pct=100.0 * delta_covered.mean(),
            mean_width=(pl.col("high") - pl.col("low")).mean(),
            delta_mean_width=(pl.col("delta_high") - pl.col("delta_low")).mean(),
            bias=(pl.col("lc") - pl.col("truth")).mean(),
            outside_0_100=((pl.col("delta_low") < 0) | (pl.col("delta_high") > 100)).sum(),
        )
        .to_dicts()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=200)
    parser.add_argument("--bootstrap", type=int, default=500, help="resamples of prompts per interval (the report uses at most 500)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    jobs = [(setting, seed, args.bootstrap) for setting in SETTINGS for seed in range(args.datasets)]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = [row for result in pool.map(one_dataset, *zip(*jobs)) for row in result]
    table = summarise(rows)
    n = 3 * args.datasets
    low, high = (stats.binom.ppf(q, n, CONFIDENCE) / n for q in (0.025, 0.975))
    result = {
        "command": f"python benchmarks/lc_coverage.py --datasets {args.datasets} --bootstrap {args.bootstrap} --out {args.out}",
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "seconds": round(time.perf_counter() - started, 1),
        "settings": {name: {key: value for key, value in options.items()} for name, options in SETTINGS.items()},
        "coverage": table,
        "note": f"a true 95% interval's coverage over {n} intervals reads {100 * low:.1f}-{100 * high:.1f}% "
                "(binomial, 95% of the time)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in table:
        print(f"{row['setting']:32s} LC {row['coverage_pct']:5.1f}% (width {row['mean_width']:.1f}), "
              f"delta method {row['delta_coverage_pct']:5.1f}% (width {row['delta_mean_width']:.1f}), bias {row['bias']:+.2f}, "
              f"defined {row['defined']}/{row['intervals']}")
    print(result["note"], f"; {result['seconds']} s")


if __name__ == "__main__":
    main()
