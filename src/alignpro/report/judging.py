"""What a judge's verdicts say beyond its raw win rate: the win rate with answer length controlled for,
how much the slot an answer is shown in sways the judge, and how far two judges agree.

LLM judges prefer longer answers, and a prompter can make the frozen model write longer without
writing better, so the raw win rate alone cannot tell a better prompter from a wordier one. The
length-controlled win rate follows AlpacaEval 2 (Dubois et al., 2024): a logistic GLM of the judge's
preference for the method's answer,

    logit P(method preferred | pair) = θ + φ · tanh((ℓ_method − ℓ_base) / σ) + ψ · γ_x

with ℓ the answers' lengths in tokens, σ the standard deviation of the group's length differences and
γ_x the prompt's difficulty: the mean preference (win 1, tie ½, loss 0) on prompt x of the *other*
methods the same judge compared with base on the same dataset and frozen model, less ½ (0 where no
other method was judged on x; leaving the method's own verdicts out keeps the term from absorbing its
effect). The length-controlled win rate is the mean over the group's pairs of the fitted preference
with the length term set to zero, 100 · mean sigmoid(θ + ψ · γ_x).

Its interval comes from a bootstrap over prompts that refits the whole pipeline on each resample (σ,
the GLM and the average; the difficulties move with their prompts), so it carries the uncertainty of
the estimated difficulties and of which prompts were drawn: the estimate ± t · se on the logit scale
(`logit_interval`), which stays within [0, 100]. Over 200 simulated runs per setting it covers the
truth 94-98 % of the time, where a delta-method interval that treats γ_x as known covered 78-91 %
(benchmarks/lc_coverage.py). Unlike AlpacaEval 2, which fits each instruction's
difficulty once over many models with an L1-penalised GLM and reuses it, the difficulty here comes
from the methods of the same run, and nothing is penalised: hence the minimums below, a dash with the
reason when they are not met, and a note when LC departs from the raw rate by more than AlpacaEval's
own warning margin.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.special
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.inter_rater import cohens_kappa
from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

from alignpro.report.resampling import resampled_prompts

PREFERENCE = {"win": 1.0, "tie": 0.5, "loss": 0.0}
"""The method's preference from a decided verdict, the GLM's response."""
DECIDED = list(PREFERENCE)
PAIR_KEYS = ["dataset", "prompt_id", "method", "prompter", "beta", "frozen", "sample_index"]
"""What identifies one pair of answers, whichever judge compared them."""
MIN_PROMPTS_FOR_LC = 10
MIN_DECIDED_FOR_LC = 20
"""Below these many prompts or decided pairs the length-controlled rate is a dash: an unpenalised GLM on
fewer says more about the fit than about the judge."""
LC_RESAMPLES = 500
"""At most this many resamples of prompts for LC's interval: each is a GLM fit (1-2 ms here), and on the
embedded default 500 put the interval's ends within 1.2 points (0.4 on average) of 2000's."""
LC_WARNING_POINTS, LC_WARNING_SHARE = 10.0, 0.25
"""AlpacaEval's margin for a length-controlled rate far from the raw one: more than 10 points and more
than a quarter of the room between the raw rate and the bound on that side."""
DECISIVE = ("A", "B")


def with_difficulty(verdicts: pl.DataFrame) -> pl.DataFrame:
    """`verdicts` with `preference` (null unless decided) and `difficulty` γ_x: per judge, dataset and
    frozen model, the mean preference on the prompt of the other methods' decided pairs, less ½ (0 where
    there are none)."""
    frame = verdicts.with_columns(
        preference=pl.col("verdict").replace_strict(PREFERENCE, default=None, return_dtype=pl.Float64),
        system=pl.concat_str(pl.col("method"), pl.col("prompter").fill_null(""), pl.col("beta").cast(pl.String).fill_null(""), separator="\0"),
    )
    scope = ["judge", "dataset", "frozen", "prompt_id"]
    own = ["system", *scope]
    totals = frame.group_by(scope).agg(all_sum=pl.col("preference").sum(), all_n=pl.col("preference").count())
    mine = frame.group_by(own).agg(own_sum=pl.col("preference").sum(), own_n=pl.col("preference").count())
    others = mine.join(totals, on=scope).select(
        *own,
        difficulty=pl.when(pl.col("all_n") > pl.col("own_n"))
        .then((pl.col("all_sum") - pl.col("own_sum")) / (pl.col("all_n") - pl.col("own_n")) - 0.5)
        .otherwise(0.0),
    )
    return frame.join(others, on=own, how="left", maintain_order="left").drop("system")


@dataclass(frozen=True)
class LengthControlled:
    """A length-controlled win rate in percent with its interval, and a note: why the rate is missing,
    or why a reader should look twice at it (null when there is nothing to say)."""

    pct: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    note: str | None = None


def _length_free_preference(
    preference: np.ndarray, difference: np.ndarray, difficulty: np.ndarray, weights: np.ndarray, start: np.ndarray | None = None
) -> tuple[float, np.ndarray | None]:
    """The GLM's mean preference with the length term at zero, in [0, 1], over pairs counted `weights`
    times each (integers: a bootstrap resample), and the GLM's coefficients (`start` for the next fit);
    NaN when it cannot be fitted. Verdicts that are all the same value need no fit: the rate is that
    value whatever the lengths."""
    used = weights > 0
    if np.ptp(preference[used]) == 0:
        return float(preference[used][0]), None
    columns = [np.ones(len(preference))]
    has_length = np.ptp(difference[used]) > 0
    if has_length:
        columns.append(np.tanh(difference / np.sqrt(np.cov(difference, fweights=weights))))
    if np.ptp(difficulty[used]) > 0:
        columns.append(difficulty)
    design = np.column_stack(columns)
    with warnings.catch_warnings(), np.errstate(over="ignore"):
        warnings.simplefilter("error", PerfectSeparationWarning)
        warnings.simplefilter("error", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # exp overflowing on the way to a separated fit
        try:
            model = sm.GLM(preference, design, family=sm.families.Binomial(), freq_weights=weights)
            fit = model.fit(start_params=start if start is not None and len(start) == design.shape[1] else None)
        except (PerfectSeparationWarning, ConvergenceWarning, np.linalg.LinAlgError):
            return float("nan"), None
    without_length = design.copy()
    if has_length:
        without_length[:, 1] = 0.0
    predicted = fit.predict(without_length)
    return (float(np.average(predicted, weights=weights)) if np.isfinite(predicted).all() else float("nan")), fit.params


def logit_interval(rate: float, resampled: np.ndarray, prompts: int, confidence: float) -> tuple[float, float]:
    """(low, high) in percent: rate ± t · se on the logit scale, se the bootstrap's standard error there
    (half the central 68 % range of the resampled rates' logits, which a few extreme refits do not
    inflate) times sqrt(n / (n - 1)), t Student's quantile with n - 1 degrees of freedom, n the prompts.
    Percentiles of the resamples themselves undercover with tens of prompts (91.3-93.5 % for a 95 %
    interval in benchmarks/lc_coverage.py); this covers 94.3-98.3 % at about their width."""
    if np.ptp(resampled) == 0:
        return 100.0 * rate, 100.0 * rate
    tiny = 1e-9
    logits = scipy.special.logit(np.clip(resampled, tiny, 1.0 - tiny))
    below, above = np.percentile(logits, [100.0 * stats.norm.cdf(-1.0), 100.0 * stats.norm.cdf(1.0)])
    half = stats.t.ppf(0.5 + confidence / 2.0, prompts - 1) * (above - below) / 2.0 * np.sqrt(prompts / (prompts - 1))
    centre = scipy.special.logit(np.clip(rate, tiny, 1.0 - tiny))
    return 100.0 * float(scipy.special.expit(centre - half)), 100.0 * float(scipy.special.expit(centre + half))


def departs_from_raw(raw: float, lc: float) -> bool:
    """Whether `lc` lies further from `raw` (both in percent) than AlpacaEval's warning margin."""
    if lc < raw:
        return raw - lc > max(LC_WARNING_POINTS, LC_WARNING_SHARE * raw)
    return lc - raw > max(LC_WARNING_POINTS, LC_WARNING_SHARE * (100.0 - raw))


def length_controlled_win_rate(group: pl.DataFrame, confidence: float, *, n_bootstrap: int, seed: int) -> LengthControlled:
    """The length-controlled win rate of one group's decided rows of `with_difficulty`'s frame (which also
    need `answer_tokens` and `base_answer_tokens`), with its `logit_interval` from `n_bootstrap`
    (at most LC_RESAMPLES) resamples of prompts, each refitted; a dash with the reason under MIN_PROMPTS_FOR_LC prompts or
    MIN_DECIDED_FOR_LC decided pairs, or when the verdicts separate perfectly."""
    decided = group.filter(pl.col("preference").is_not_null()).sort("prompt_id", maintain_order=True)
    prompts = decided["prompt_id"].n_unique()
    if prompts < MIN_PROMPTS_FOR_LC or decided.height < MIN_DECIDED_FOR_LC:
        return LengthControlled(note=f"{prompts} prompts and {decided.height} decided pairs, under the "
                                f"{MIN_PROMPTS_FOR_LC} and {MIN_DECIDED_FOR_LC} the fit needs")
    preference = decided["preference"].to_numpy()
    difference = (decided["answer_tokens"] - decided["base_answer_tokens"]).cast(pl.Float64).to_numpy()
    difficulty = decided["difficulty"].to_numpy()
    rate, start = _length_free_preference(preference, difference, difficulty, np.ones(decided.height, dtype=np.int64))
    if not np.isfinite(rate):
        return LengthControlled(note="the verdicts separate perfectly (on length or difficulty): the GLM has no finite fit")
    # The decided rows' prompt index (0 .. prompts-1, in sorted order): a resample counts each row as
    # often as its prompt was drawn.
    prompt_of_row = decided["prompt_id"].rank("dense").cast(pl.Int64).to_numpy() - 1
    values = np.array([
        _length_free_preference(preference, difference, difficulty, np.bincount(drawn, minlength=prompts)[prompt_of_row], start)[0]
        for drawn in resampled_prompts(prompts, min(n_bootstrap, LC_RESAMPLES), seed)
    ])
    failed = np.isnan(values).mean()
    if failed > 0.05:
        return LengthControlled(pct=100.0 * rate, note=f"no interval: the GLM has no finite fit on {failed:.0%} of the resamples of prompts")
    low, high = logit_interval(rate, values[np.isfinite(values)], prompts, confidence)
    raw = 100.0 * preference.mean()
    note = None
    if np.ptp(preference) == 0:
        note = f"every decided pair is a {decided['verdict'][0]}: LC is the raw rate"
    elif departs_from_raw(raw, 100.0 * rate):
        note = (f"LC {100.0 * rate:.1f} is far from the raw {raw:.1f} (AlpacaEval's warning margin): "
                "a sign the GLM fits badly (few prompts, extreme lengths)")
    return LengthControlled(100.0 * rate, float(low), float(high), note)


def position_bias(group: pl.DataFrame) -> dict:
    """How the slot sways one group's judge, from the raw verdicts of both orders: first_slot_pct is the
    share of decisive readings (A or B) that chose the answer shown first (50 for a judge blind to
    order), flip_pct the share of pairs decisive in both orders whose winner changed with the order
    (the same slot won both times)."""
    first, second = group["verdict_method_first"], group["verdict_base_first"]
    readings = pl.concat([first, second])
    decisive = readings.is_in(DECISIVE)
    both = first.is_in(DECISIVE) & second.is_in(DECISIVE)
    flips = both & (first == second)
    return {
        "decisive_readings": int(decisive.sum()),
        "first_slot_pct": 100.0 * float((readings == "A").sum()) / decisive.sum() if decisive.sum() else None,
        "both_decisive": int(both.sum()),
        "flip_pct": 100.0 * float(flips.sum()) / both.sum() if both.sum() else None,
    }


AGREEMENT_SCHEMA = {
    "judge_a": pl.String, "judge_b": pl.String, "both_decided": pl.Int64, "free_ties": pl.Int64, "agreement_pct": pl.Float64,
    "kappa": pl.Float64, "kappa_ci_low": pl.Float64, "kappa_ci_high": pl.Float64,
}


def identical_answer_pairs(scores: pl.DataFrame, reference: str) -> pl.DataFrame:
    """The pairs (PAIR_KEYS) whose method answer is `reference`'s answer to the same prompt and sample,
    word for word: a tie for every judge without a judgment (an LLM judge makes no call for them)."""
    keys = ["dataset", "prompt_id", "frozen", "sample_index"]
    base = scores.filter(pl.col("method") == reference).select(*keys, base_response=pl.col("response"))
    methods = scores.filter(pl.col("method") != reference)
    return methods.join(base, on=keys).filter(pl.col("response") == pl.col("base_response")).select(PAIR_KEYS)


def judge_agreement(verdicts: pl.DataFrame, confidence: float = 0.95, free_ties: pl.DataFrame | None = None) -> pl.DataFrame:
    """For every two judges, over the pairs both decided (win, tie or loss) less `free_ties` (the pairs
    of identical answers, tied by every judge without judging, which would inflate agreement; counted
    apart): how many, the percentage with the same verdict, and Cohen's kappa (statsmodels) with its
    normal interval, clipped to [-1, 1] (a variance statsmodels returns a hair below 0 counts as 0);
    kappa is null when it is undefined (both judges always gave the same one verdict)."""
    decided = verdicts.filter(pl.col("verdict").is_in(DECIDED)).select(*PAIR_KEYS, "judge", "verdict")
    if free_ties is not None:
        free_ties = free_ties.select(pl.col(key).cast(decided.schema[key]) for key in PAIR_KEYS)
    rows = []
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    for judge_a, judge_b in itertools.combinations(sorted(decided["judge"].unique().to_list()), 2):
        both = decided.filter(judge=judge_a).join(decided.filter(judge=judge_b), on=PAIR_KEYS, nulls_equal=True, suffix="_b")
        joined = both if free_ties is None else both.join(free_ties, on=PAIR_KEYS, how="anti", nulls_equal=True)
        row = {"judge_a": judge_a, "judge_b": judge_b, "both_decided": joined.height, "free_ties": both.height - joined.height}
        if joined.height:
            table = np.zeros((len(DECIDED), len(DECIDED)))
            for a, b in joined.select("verdict", "verdict_b").iter_rows():
                table[DECIDED.index(a), DECIDED.index(b)] += 1
            row["agreement_pct"] = 100.0 * np.trace(table) / joined.height
            with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                kappa = cohens_kappa(table)
            if np.isfinite(kappa.kappa):
                row["kappa"] = float(kappa.kappa)
                if np.isfinite(kappa.var_kappa):
                    half = z * float(np.sqrt(max(kappa.var_kappa, 0.0)))
                    row["kappa_ci_low"], row["kappa_ci_high"] = max(row["kappa"] - half, -1.0), min(row["kappa"] + half, 1.0)
        rows.append(row)
    return pl.DataFrame(rows, schema=AGREEMENT_SCHEMA)
