"""The report's statistics against known answers: the t interval, the seeded bootstrap, win rates."""

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from alignpro.report.statistics import bootstrap_interval, resample_means, resample_shares, t_interval, win_rates
from alignpro.tables import VERDICTS
from fakes import verdict_record

T_975 = {3: 3.182, 10: 2.228, 30: 2.042}  # two-sided 95% t quantiles from a printed table, by degrees of freedom


@pytest.mark.parametrize("df", sorted(T_975))
def test_t_interval_is_mean_plus_minus_table_t_times_standard_error(df):
    n, sd = df + 1, 2.0
    frame = pl.DataFrame({"n_prompts": [n], "prompt_mean_mean": [1.0], "prompt_sd": [sd]})
    row = t_interval(frame, 0.95).row(0, named=True)
    half_width = T_975[df] * sd / np.sqrt(n)
    assert row["ci_low"] == pytest.approx(1.0 - half_width, abs=1e-3) and row["ci_high"] == pytest.approx(1.0 + half_width, abs=1e-3)


def test_t_interval_needs_two_prompts():
    frame = pl.DataFrame({"n_prompts": [1], "prompt_mean_mean": [1.0], "prompt_sd": [None]}, schema_overrides={"prompt_sd": pl.Float64})
    row = t_interval(frame, 0.95, prefix="accuracy_").row(0, named=True)
    assert row["accuracy_ci_low"] is None and row["accuracy_ci_high"] is None


def test_bootstrap_interval_of_a_mean_is_seeded_and_covers_it():
    values = np.random.default_rng(1).normal(2.0, 1.0, size=200)
    low, high = bootstrap_interval(values, resample_means, samples=2000, confidence=0.95, seed=3)
    again = bootstrap_interval(values, resample_means, samples=2000, confidence=0.95, seed=3)
    assert (low, high) == tuple(again)
    assert low < values.mean() < high
    standard_error = values.std(ddof=1) / np.sqrt(len(values))
    assert high - low == pytest.approx(2 * 1.96 * standard_error, rel=0.15)  # the normal interval's width


def test_bootstrap_interval_of_a_constant_is_that_constant():
    assert bootstrap_interval(np.full(5, 0.25), resample_means, samples=100, confidence=0.9, seed=0).tolist() == [0.25, 0.25]


def test_bootstrap_shares_are_nan_when_nothing_was_decided():
    counts = np.zeros((4, 3))
    interval = bootstrap_interval(counts, resample_shares, samples=50, confidence=0.95, seed=0)
    assert interval.shape == (2, 3) and np.isnan(interval).all()


def test_win_rates_per_method_with_seeded_bootstrap():
    outcomes = {"alignpro": ["win"] * 6 + ["tie"] * 2 + ["loss"] * 2 + ["invalid"], "sft": ["win", "loss", "not_judged", "tie"]}
    rows = []
    for method, verdicts in outcomes.items():
        for index, verdict in enumerate(verdicts):
            rows.append(verdict_record(
                prompt_id=f"p{index}", method=method, verdict=verdict, inconsistent=index == 6,
                prompt_tokens=10, completion_tokens=5, cost_usd=0.001, calls=2,
            ))
    table = pa.Table.from_pylist(rows, schema=VERDICTS)
    rates = win_rates(table, n_bootstrap=500, seed=7)
    assert rates.equals(win_rates(table, n_bootstrap=500, seed=7))
    alignpro = rates.filter(pl.col("method") == "alignpro").row(0, named=True)
    assert (alignpro["win_pct"], alignpro["tie_pct"], alignpro["loss_pct"]) == (60.0, 20.0, 20.0)
    assert alignpro["win_ci_low"] < 60.0 < alignpro["win_ci_high"]
    assert alignpro["inconsistent_pct"] == 10.0 and alignpro["invalid_pct"] == pytest.approx(100 / 11)
    assert (alignpro["n_pairs"], alignpro["n_decided"], alignpro["calls"]) == (11, 10, 22)
    assert alignpro["judge_kind"] == "llm"
    assert alignpro["lc_win_pct"] is None and alignpro["lc_win_note"].startswith("10 prompts and 10 decided pairs, under")
    sft = rates.filter(pl.col("method") == "sft").row(0, named=True)
    assert sft["not_judged_pct"] == 25.0 and sft["win_pct"] == pytest.approx(100 / 3)
