"""The report's statistics: Student-t intervals over prompts, one seeded percentile bootstrap, and the
judge's win rates against base.

Prompts are the independent units everywhere: the samples of one prompt are correlated, so intervals
are over per-prompt values, and a bootstrap resamples prompts (all of a prompt's samples move together).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl
import pyarrow as pa
from scipy import stats

from alignpro.report.judging import length_controlled_win_rate, position_bias, with_difficulty
from alignpro.report.resampling import resampled_prompts
from alignpro.tables import JUDGE_USAGE, VERDICTS, WIN_RATES, conform

OUTCOMES = ("win", "tie", "loss")
# One summary row: a (method, beta) of one prompter and frozen model on one dataset.
GROUP_KEYS = ["dataset", "prompter", "frozen", "method", "beta"]
# A win rate's groups: one judge's verdicts on one such row's answers against base.
WIN_RATE_KEYS = ["judge", *GROUP_KEYS]


def t_interval(
    frame: pl.DataFrame, confidence: float, mean: str = "prompt_mean_mean", sd: str = "prompt_sd", prefix: str = ""
) -> pl.DataFrame:
    """mean of per-prompt means +- t * standard error as `{prefix}ci_low`/`{prefix}ci_high` (Student's t
    with n_prompts - 1 degrees of freedom), null with fewer than two prompts; `mean` and `sd` name the
    columns of the per-prompt statistic's mean and sd."""
    quantiles = [float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) if n >= 2 else None for n in frame["n_prompts"]]
    half_width = pl.col("t") * pl.col(sd) / pl.col("n_prompts").sqrt()
    return frame.with_columns(t=pl.Series(quantiles, dtype=pl.Float64)).with_columns(
        (pl.col(mean) - half_width).alias(f"{prefix}ci_low"),
        (pl.col(mean) + half_width).alias(f"{prefix}ci_high"),
    )


def bootstrap_interval(
    rows: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], *, samples: int, confidence: float, seed: int
) -> np.ndarray:
    """Seeded percentile interval (low, high) of `statistic` over `samples` resamples of `rows` (prompts
    along the first axis) drawn with replacement, all at once: `statistic` maps the resamples, shaped
    (samples, prompts, ...), to one value (or row of values) per resample. Resamples where the statistic
    is undefined (NaN) are left out; NaN when it is undefined in all."""
    values = statistic(rows[resampled_prompts(len(rows), samples, seed)])
    if np.isnan(values).all():
        return np.full((2, *values.shape[1:]), np.nan)
    tail = 100.0 * (1.0 - confidence) / 2.0
    return np.nanpercentile(values, [tail, 100.0 - tail], axis=0)


def resample_means(resamples: np.ndarray) -> np.ndarray:
    """The mean of each resample (`bootstrap_interval`'s statistic for a mean over prompts)."""
    return resamples.mean(axis=1)


def resample_shares(resamples: np.ndarray) -> np.ndarray:
    """Each resample's outcome percentages from per-prompt outcome counts (NaN where nothing was decided)."""
    totals = resamples.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * totals / totals.sum(axis=1, keepdims=True)


def resample_preferences(resamples: np.ndarray) -> np.ndarray:
    """Each resample's mean preference in percent from per-prompt (win, tie, loss) counts: a tie counts
    half, as in the length-controlled rate, so the two compare (NaN where nothing was decided)."""
    totals = resamples.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * (totals[:, 0] + 0.5 * totals[:, 1]) / totals.sum(axis=1)


def _win_rate_row(group: pl.DataFrame, n_bootstrap: int, seed: int, confidence: float) -> dict:
    """One WIN_RATES row's numbers from one group of `with_difficulty`'s frame."""
    per_prompt = (
        group.group_by("prompt_id")
        .agg([(pl.col("verdict") == outcome).sum().alias(outcome) for outcome in OUTCOMES])
        .sort("prompt_id")  # a fixed row order, so the seeded resampling is reproducible
    )
    counts = per_prompt.select(*OUTCOMES).to_numpy().astype(float)
    decided = counts.sum()
    # One prompt's resamples are that prompt again: its interval would have zero width and say nothing.
    intervals = decided and per_prompt.height >= 2
    low, high = bootstrap_interval(counts, resample_shares, samples=n_bootstrap, confidence=confidence, seed=seed)
    row = {"n_pairs": group.height, "n_prompts": per_prompt.height, "n_decided": int(decided)}
    for index, outcome in enumerate(OUTCOMES):
        row[f"{outcome}_pct"] = 100.0 * counts[:, index].sum() / decided if decided else None
        row[f"{outcome}_ci_low"], row[f"{outcome}_ci_high"] = (float(low[index]), float(high[index])) if intervals else (None, None)
    low, high = bootstrap_interval(counts, resample_preferences, samples=n_bootstrap, confidence=confidence, seed=seed)
    row["preference_pct"] = 100.0 * (counts[:, 0].sum() + 0.5 * counts[:, 1].sum()) / decided if decided else None
    row["preference_ci_low"], row["preference_ci_high"] = (float(low), float(high)) if intervals else (None, None)
    lc = length_controlled_win_rate(group, confidence, n_bootstrap=n_bootstrap, seed=seed)
    row |= {"lc_win_pct": lc.pct, "lc_win_ci_low": lc.ci_low, "lc_win_ci_high": lc.ci_high, "lc_win_note": lc.note}
    decided_rows = group.filter(pl.col("preference").is_not_null())
    row["mean_token_difference"] = (
        (decided_rows["answer_tokens"] - decided_rows["base_answer_tokens"]).cast(pl.Float64).mean() if decided else None
    )
    row["inconsistent_pct"] = 100.0 * group["inconsistent"].sum() / decided if decided else None
    row["invalid_pct"] = 100.0 * (group["verdict"] == "invalid").sum() / group.height
    row["not_judged_pct"] = 100.0 * (group["verdict"] == "not_judged").sum() / group.height
    for field in JUDGE_USAGE:  # cost is null for a judge without prices, not 0
        row[field.name] = None if field.nullable and group[field.name].null_count() == group.height else group[field.name].sum()
    return row | position_bias(group)


def win_rates(verdicts: pa.Table | pl.DataFrame, *, n_bootstrap: int = 2000, seed: int = 0, confidence: float = 0.95) -> pl.DataFrame:
    """WIN_RATES: each method's win/tie/loss percentages against base per (judge, dataset, prompter, frozen,
    method, beta), its length-controlled win rate and the judge's position bias (alignpro.report.judging).

    Percentages are over decided pairs (win, tie or loss); their CIs are percentile bootstraps over
    prompts, seeded so a rerun prints the same numbers, null with fewer than two prompts. inconsistent_pct is over decided pairs,
    invalid_pct and not_judged_pct over all pairs.
    """
    frame = verdicts if isinstance(verdicts, pl.DataFrame) else pl.from_arrow(conform(verdicts, VERDICTS, "verdicts"))
    frame = with_difficulty(frame)
    rows = [
        dict(zip(WIN_RATE_KEYS, keys)) | {name: group[name][0] for name in ("judged_by", "judge_kind", "judge_prompt")} | _win_rate_row(group, n_bootstrap, seed, confidence)
        for keys, group in frame.group_by(WIN_RATE_KEYS, maintain_order=True)
    ]
    rates = pl.from_arrow(pa.Table.from_pylist(rows, schema=WIN_RATES)) if rows else pl.from_arrow(WIN_RATES.empty_table())
    return rates.sort(WIN_RATE_KEYS, nulls_last=True)
