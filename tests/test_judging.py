"""The judge's statistics beyond the raw win rate, against synthetic judges whose behaviour is known:
one that prefers the longer answer and nothing else, one swayed by the slot, and pairs of judges that
agree always or never beyond chance."""

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from alignpro.judge import OrderOutcome, combined_verdict
from alignpro.report import judge_agreement, win_rates
from alignpro.report.plots import win_plot
from alignpro.report.judging import PAIR_KEYS, departs_from_raw
from alignpro.report.simulation import simulated_verdicts, true_lc_win_pct
from alignpro.tables import VERDICTS
from fakes import verdict_record

RAW = {"win": ("A", "B"), "loss": ("B", "A"), "tie": ("TIE", "TIE")}  # (method first, base first) of a consistent verdict


def _frame(rows: list[dict]) -> pl.DataFrame:
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=VERDICTS))


def _row(rates: pl.DataFrame, method: str = "alignpro", judge: str | None = None) -> dict:
    rows = rates.filter(method=method) if judge is None else rates.filter(method=method, judge=judge)
    return rows.row(0, named=True)


def length_loving_judge(seed: int, prompts: int = 400, quality: float = 0.0) -> list[dict]:
    """Two methods whose answers run longer than base's; the judge prefers the longer answer (through the
    same tanh of the standardised difference the GLM uses) plus `quality` on the logit scale."""
    rng = np.random.default_rng(seed)
    rows = []
    for method in ("alignpro", "sft"):
        base = rng.normal(120, 25, prompts).round().clip(5)
        answer = (base + rng.normal(45, 40, prompts)).round().clip(5)
        difference = answer - base
        p_win = 1.0 / (1.0 + np.exp(-(quality + 2.5 * np.tanh(difference / difference.std(ddof=1)))))
        for index in range(prompts):
            verdict = "win" if rng.random() < p_win[index] else "loss"
            first, second = RAW[verdict]
            rows.append(verdict_record(
                prompt_id=f"p{index}", method=method, answer_tokens=int(answer[index]), base_answer_tokens=int(base[index]),
                verdict=verdict, verdict_method_first=first, verdict_base_first=second,
            ))
    return rows


def test_a_judge_that_prefers_length_alone_has_a_length_controlled_win_rate_of_half():
    alignpro = _row(win_rates(_frame(length_loving_judge(seed=1)), n_bootstrap=200))
    assert alignpro["win_pct"] == alignpro["preference_pct"] > 70.0  # the raw rate rewards the longer answers (no ties)
    assert alignpro["preference_ci_low"] > 50.0
    assert alignpro["lc_win_ci_low"] < 50.0 < alignpro["lc_win_ci_high"]
    assert abs(alignpro["lc_win_pct"] - 50.0) < 8.0 and alignpro["lc_win_ci_high"] < alignpro["win_pct"]
    assert alignpro["mean_token_difference"] == pytest.approx(45.0, abs=6.0)


def test_a_better_method_keeps_its_advantage_once_length_is_controlled():
    quality = 1.0  # sigmoid(1) = 73% at equal length
    alignpro = _row(win_rates(_frame(length_loving_judge(seed=2, quality=quality)), n_bootstrap=200))
    assert alignpro["lc_win_ci_low"] > 50.0
    assert alignpro["lc_win_ci_low"] < 100.0 / (1.0 + np.exp(-quality)) < alignpro["lc_win_ci_high"]


def test_length_controlled_win_rate_is_a_dash_with_its_reason_on_too_few_or_separable_pairs():
    few = [  # 8 pairs on 2 prompts gave 34.9 [-19.1, 88.9]
        verdict_record(prompt_id=f"p{i % 2}", sample_index=i // 2, answer_tokens=10 + i, verdict=verdict)
        for i, verdict in enumerate(["win", "loss", "win", "win", "tie", "loss", "win", "win"])
    ]
    separable = [
        verdict_record(prompt_id=f"p{i}", answer_tokens=20 + i, base_answer_tokens=20, verdict=verdict)
        for i, verdict in enumerate(["loss"] + ["win"] * 19)
    ] + [verdict_record(prompt_id=f"p{i}", sample_index=1, answer_tokens=40 + i, verdict="win") for i in range(20)]
    notes = []
    for rows in (few, separable):
        alignpro = _row(win_rates(_frame(rows), n_bootstrap=100))
        assert alignpro["lc_win_pct"] is None and alignpro["lc_win_ci_low"] is None and alignpro["win_pct"] is not None
        notes.append(alignpro["lc_win_note"])
    assert notes[0] == "2 prompts and 8 decided pairs, under the 10 and 20 the fit needs"
    assert notes[1].startswith("the verdicts separate perfectly")


def test_length_controlled_interval_stays_within_0_and_100():
    """20 prompts, one sample each, mostly won with longer answers: the delta method gave 81.5 [62.7, 100.4]."""
    rng = np.random.default_rng(8)
    rows = [
        verdict_record(prompt_id=f"p{i}", answer_tokens=int(60 + rng.integers(0, 40)), base_answer_tokens=50, verdict=verdict)
        for i, verdict in enumerate(["win"] * 16 + ["loss", "tie", "win", "loss"])
    ]
    alignpro = _row(win_rates(_frame(rows), n_bootstrap=300))
    assert 0.0 <= alignpro["lc_win_ci_low"] <= alignpro["lc_win_pct"] <= alignpro["lc_win_ci_high"] <= 100.0


def test_all_ties_have_a_length_controlled_win_rate_of_half():
    rows = [verdict_record(prompt_id=f"p{i}", answer_tokens=10 + i, verdict="tie") for i in range(24)]
    alignpro = _row(win_rates(_frame(rows), n_bootstrap=100))
    assert (alignpro["lc_win_pct"], alignpro["lc_win_ci_low"], alignpro["lc_win_ci_high"]) == (50.0, 50.0, 50.0)
    assert alignpro["lc_win_note"] == "every decided pair is a tie: LC is the raw rate"


def test_a_length_controlled_rate_far_from_the_raw_one_carries_a_warning():
    """AlpacaEval warns when LC moves more than 10 points and a quarter of the room on its side."""
    assert departs_from_raw(72.0, 50.0) and not departs_from_raw(72.0, 55.0)  # 22 > max(10, 18); 17 is not
    assert departs_from_raw(50.0, 62.6) and not departs_from_raw(50.0, 62.4)
    assert departs_from_raw(95.0, 71.0) and not departs_from_raw(95.0, 72.0)  # a quarter of 95 is 23.75
    alignpro = _row(win_rates(_frame(length_loving_judge(seed=1)), n_bootstrap=100))
    assert alignpro["lc_win_note"] == (
        f"LC {alignpro['lc_win_pct']:.1f} is far from the raw {alignpro['preference_pct']:.1f} (AlpacaEval's warning margin): "
        "a sign the GLM fits badly (few prompts, extreme lengths)"
    )
    better = _row(win_rates(_frame(length_loving_judge(seed=2, quality=1.0)), n_bootstrap=100))
    assert better["lc_win_note"] is None


def test_length_controlled_interval_covers_the_truth_when_difficulty_is_estimated():
    """Strong prompt effects shared by three methods, so the difficulty term explains much of each verdict:
    the delta-method interval that treats the estimated difficulties as known covered 36 of these 45
    true rates (80 %); refitting on resamples of prompts covers them as a 95 % interval should."""
    qualities = {"alignpro": 0.5, "sft": -0.3, "star": 0.2}
    covered = []
    for seed in range(15):
        rows = simulated_verdicts(seed, qualities, prompts=30, samples=8, prompt_sd=2.0, length_effect=1.0)
        for rate in win_rates(_frame(rows), n_bootstrap=200, seed=seed).iter_rows(named=True):
            truth = true_lc_win_pct(qualities[rate["method"]], prompt_sd=2.0)
            covered.append(rate["lc_win_ci_low"] <= truth <= rate["lc_win_ci_high"])
    assert len(covered) == 45 and sum(covered) >= 40


def slot_loving_judge(seed: int, pairs: int = 600, first_slot: float = 0.7) -> list[dict]:
    """A judge that reads A (the answer shown first) with probability `first_slot`, else B, in each order
    independently of the answers; the verdicts combine the two readings as the judge stage does."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(pairs):
        first, second = ("A" if rng.random() < first_slot else "B" for _ in range(2))
        verdict, inconsistent = combined_verdict(OrderOutcome(raw=first), OrderOutcome(raw=second))
        rows.append(verdict_record(
            prompt_id=f"p{index}", verdict=verdict, inconsistent=inconsistent, verdict_method_first=first, verdict_base_first=second,
        ))
    return rows


def test_a_judge_swayed_by_the_first_slot_shows_that_rate_and_its_flips():
    alignpro = _row(win_rates(_frame(slot_loving_judge(seed=3)), n_bootstrap=100))
    assert alignpro["decisive_readings"] == 1200 and alignpro["both_decisive"] == 600
    assert alignpro["first_slot_pct"] == pytest.approx(70.0, abs=4.0)
    assert alignpro["flip_pct"] == pytest.approx(100 * (0.7**2 + 0.3**2), abs=5.0)  # the same slot won twice: 58%
    assert alignpro["inconsistent_pct"] == pytest.approx(alignpro["flip_pct"])  # every flip is an inconsistency here


def test_a_judge_blind_to_the_slot_never_flips():
    rows = [
        verdict_record(prompt_id=f"p{i}", verdict=v, verdict_method_first=RAW[v][0], verdict_base_first=RAW[v][1])
        for i, v in enumerate(["win", "loss", "win", "tie"] * 10)
    ]
    alignpro = _row(win_rates(_frame(rows), n_bootstrap=100))
    assert (alignpro["first_slot_pct"], alignpro["flip_pct"], alignpro["both_decisive"]) == (50.0, 0.0, 30)


def _judged_by(judge: str, verdicts: list[str]) -> list[dict]:
    return [verdict_record(prompt_id=f"p{i}", judge=judge, verdict=v) for i, v in enumerate(verdicts)]


def test_two_identical_judges_have_kappa_one():
    verdicts = list(np.random.default_rng(4).choice(["win", "tie", "loss"], size=300))
    agreement = judge_agreement(_frame(_judged_by("a", verdicts) + _judged_by("b", verdicts))).row(0, named=True)
    assert (agreement["judge_a"], agreement["judge_b"], agreement["both_decided"]) == ("a", "b", 300)
    assert agreement["agreement_pct"] == 100.0 and agreement["kappa"] == pytest.approx(1.0)


def test_two_independent_random_judges_have_kappa_near_zero():
    rng = np.random.default_rng(5)
    first, second = (list(rng.choice(["win", "tie", "loss"], size=1000)) for _ in range(2))
    agreement = judge_agreement(_frame(_judged_by("a", first) + _judged_by("b", second))).row(0, named=True)
    assert abs(agreement["kappa"]) < 0.07 and agreement["kappa_ci_low"] < 0.0 < agreement["kappa_ci_high"]
    assert agreement["agreement_pct"] == pytest.approx(100 / 3, abs=4.0)


def test_agreement_is_over_the_pairs_both_judges_decided():
    first = _judged_by("a", ["win", "win", "loss", "not_judged"])
    second = _judged_by("b", ["win", "loss", "invalid", "loss"])
    agreement = judge_agreement(_frame(first + second)).row(0, named=True)
    assert (agreement["both_decided"], agreement["agreement_pct"]) == (2, 50.0)
    constant = judge_agreement(_frame(_judged_by("a", ["win"] * 5) + _judged_by("b", ["win"] * 5))).row(0, named=True)
    assert constant["agreement_pct"] == 100.0 and constant["kappa"] is None  # undefined, not 0 or 1


def test_identical_answers_are_left_out_of_agreement_and_counted():
    """Pairs of identical answers are ties for every judge without a judgment: counted apart, they do not
    inflate agreement (an outside check read 50.7 % and κ 0.153 with them, 29.8 % and κ −0.025 without)."""
    rng = np.random.default_rng(6)
    first, second = (list(rng.choice(["win", "loss"], size=200)) for _ in range(2))
    free = 150  # tied by both, as identical answers are
    records = _judged_by("a", first + ["tie"] * free) + _judged_by("b", second + ["tie"] * free)
    identical = pl.DataFrame([{key: record[key] for key in PAIR_KEYS} for record in records[200:200 + free]])
    counted = judge_agreement(_frame(records)).row(0, named=True)
    honest = judge_agreement(_frame(records), free_ties=identical).row(0, named=True)
    assert (counted["both_decided"], counted["free_ties"]) == (350, 0) and counted["agreement_pct"] > 70.0
    assert (honest["both_decided"], honest["free_ties"]) == (200, free)
    assert honest["agreement_pct"] == pytest.approx(50.0, abs=8.0) and abs(honest["kappa"]) < 0.15


def test_identical_answer_pairs_come_from_the_answers_themselves():
    from alignpro.report import identical_answer_pairs

    rows = [
        {"dataset": "d", "prompt_id": "p0", "method": "base", "prompter": None, "beta": None, "frozen": "f", "sample_index": 0, "response": "same"},
        {"dataset": "d", "prompt_id": "p0", "method": "sft", "prompter": "p", "beta": None, "frozen": "f", "sample_index": 0, "response": "same"},
        {"dataset": "d", "prompt_id": "p0", "method": "alignpro", "prompter": "p", "beta": None, "frozen": "f", "sample_index": 0, "response": "other"},
    ]
    pairs = identical_answer_pairs(pl.DataFrame(rows), "base")
    assert pairs.to_dicts() == [{key: rows[1][key] for key in PAIR_KEYS}]


def test_one_prompt_gives_rates_without_intervals_and_the_plot_draws_them():
    """Resampling one prompt gives that prompt back: 62.5 [62.5, 62.5] said nothing. The rate stays, the
    interval is null, and the win plot draws the bar without an error bar."""
    verdicts = ["win"] * 10 + ["tie"] * 5 + ["loss"] * 5
    rows = [verdict_record(prompt_id="p0", sample_index=i, verdict=v, verdict_method_first=RAW[v][0], verdict_base_first=RAW[v][1])
            for i, v in enumerate(verdicts)]
    rates = win_rates(_frame(rows), n_bootstrap=100)
    alignpro = _row(rates)
    assert (alignpro["n_prompts"], alignpro["win_pct"], alignpro["preference_pct"]) == (1, 50.0, 62.5)
    assert all(alignpro[f"{outcome}_ci_{end}"] is None for outcome in ("win", "tie", "loss", "preference") for end in ("low", "high"))
    assert win_plot(rates).startswith(b"\x89PNG")
