"""The report's numbers: one SUMMARY row per (dataset, prompter, frozen, method, beta) from the scored
answers, measured KLs and reference answers, and the judged examples to read beside them (the win
rates are alignpro.report.statistics').

A row is a (method, beta): a trainer's main prompter has no beta, beta-sweep prompters and rho* have one.
Rows without a prompter (base, rlhf) are repeated under every prompter, so each (prompter, frozen)
group is complete.
"""

from __future__ import annotations

import math

import polars as pl
import pyarrow as pa

from alignpro.checkers import CHECKERS
from alignpro.report.statistics import GROUP_KEYS, bootstrap_interval, resample_means, t_interval
from alignpro.systems import label as method_label
from alignpro.systems import METHODS, ORACLE, method_rank
from alignpro.tables import SCORES, SUMMARY, VERDICTS, conform

NAME_KEYS = ["dataset", "prompter", "frozen", "method"]  # the string columns of GROUP_KEYS
SUMMARY_TYPES = {"string": pl.String, "int64": pl.Int64, "double": pl.Float64}
EXAMPLE_PRIORITY = ("win", "loss", "tie", "invalid", "not_judged")


def scores_frame(scores: list[pa.Table] | pl.DataFrame) -> pl.DataFrame:
    """One polars frame of all score rows, each input table checked against the SCORES schema."""
    if isinstance(scores, pl.DataFrame):
        return scores
    if not scores:
        raise ValueError("no score tables to summarize")
    return pl.concat([pl.from_arrow(conform(table, SCORES, "scores")) for table in scores])


def _per_prompt(frame: pl.DataFrame) -> pl.DataFrame:
    """Mean reward, mean correctness and fallback flag per prompt: the independent units the CIs are
    computed over."""
    return frame.group_by([*GROUP_KEYS, "prompt_id"], maintain_order=True).agg(
        prompt_mean=pl.col("reward").mean(),
        prompt_accuracy=pl.col("correct").mean(),
        fallback=pl.col("fallback").cast(pl.Float64).max(),
    )


def _with_correctness(frame: pl.DataFrame, references: pl.DataFrame | None, checkers: dict[str, str]) -> pl.DataFrame:
    """`frame` with `correct` per answer: 1.0 when its dataset's checker accepts the response against the
    prompt's reference, 0.0 when not, null for datasets without a checker. A checked dataset's scored
    prompt without a reference is an error naming it: accuracy over a subset would not be the method's."""
    unknown = {dataset: name for dataset, name in checkers.items() if name not in CHECKERS}
    if unknown:
        raise ValueError(f"unknown checker(s) {unknown}; the checkers are {list(CHECKERS)}")
    if not checkers:
        return frame.with_columns(correct=pl.lit(None, pl.Float64))
    if references is None:
        raise ValueError(f"checkers for {list(checkers)} without the reference answers to check against")
    answers = references.select(pl.col("dataset", "prompt_id", "reference").cast(pl.String))
    joined = frame.join(answers, on=["dataset", "prompt_id"], how="left", validate="m:1")
    correct = []
    for dataset, prompt_id, response, reference in joined.select("dataset", "prompt_id", "response", "reference").iter_rows():
        if dataset not in checkers:
            correct.append(None)
            continue
        if reference is None:
            raise ValueError(f"dataset {dataset}: scored prompt {prompt_id} has no reference answer in its test prompts")
        try:
            correct.append(float(CHECKERS[checkers[dataset]](response, reference)))
        except ValueError as error:
            raise ValueError(f"dataset {dataset}, prompt {prompt_id}: {error}") from None
    return joined.drop("reference").with_columns(correct=pl.Series(correct, dtype=pl.Float64))


def repeat_base_rows(stats: pl.DataFrame, prompters: list[str]) -> pl.DataFrame:
    """Copy rows without a prompter (base, rlhf) under every prompter, completing each group."""
    shared = stats.filter(pl.col("prompter").is_null())
    if shared.height and not prompters:
        raise ValueError("rows without a prompter (e.g. base) need a list of prompters to repeat under")
    every_prompter = pl.DataFrame({"prompter": prompters}, schema={"prompter": pl.String})
    repeated = shared.drop("prompter").join(every_prompter, how="cross")
    return pl.concat([stats.filter(pl.col("prompter").is_not_null()), repeated.select(stats.columns)])


def verdicts_frame(verdicts: list[pa.Table]) -> pl.DataFrame:
    """All verdict rows, each table checked against the VERDICTS schema."""
    frames = [pl.from_arrow(conform(table, VERDICTS, "verdicts")) for table in verdicts]
    return pl.concat(frames) if frames else pl.from_arrow(VERDICTS.empty_table())


def _paired_gaps(per_prompt: pl.DataFrame, confidence: float, bootstrap_samples: int, seed: int) -> pl.DataFrame:
    """gap = J(rlhf) − J(method) per row of every (dataset, frozen) that has rlhf answers, paired by prompt.

    Pairing removes the prompt-to-prompt spread both systems share, so the CI is of the difference
    itself; a method answered on other prompts than rlhf has no paired gap, so that is an error.
    """
    pair_keys = ["dataset", "frozen", "prompt_id"]
    rlhf = per_prompt.filter(pl.col("method") == ORACLE).select(*pair_keys, rlhf_mean="prompt_mean")
    compared = per_prompt.join(rlhf.select("dataset", "frozen").unique(), on=["dataset", "frozen"]).sort(
        "dataset", "frozen", "prompter", method_rank(), "method", "beta"
    )
    rows = []
    for keys, group in compared.group_by(GROUP_KEYS, maintain_order=True):  # display order: a stable first error
        row = dict(zip(GROUP_KEYS, keys))
        reference = rlhf.filter(dataset=row["dataset"], frozen=row["frozen"])
        paired = group.join(reference, on=pair_keys, how="full", coalesce=True).sort("prompt_id")
        unpaired = paired.filter(pl.col("prompt_mean").is_null() | pl.col("rlhf_mean").is_null())
        if unpaired.height:
            missing = unpaired.row(0, named=True)
            side = row["method"] if missing["prompt_mean"] is None else ORACLE
            raise ValueError(
                f"gap of {method_label(row['method'], row['beta'])} against {ORACLE} on {row['dataset']} / {row['frozen']}: "
                f"prompt {missing['prompt_id']} has no {side} answers, so the gap would not be paired"
            )
        differences = (paired["rlhf_mean"] - paired["prompt_mean"]).to_numpy()
        low, high = bootstrap_interval(differences, resample_means, samples=bootstrap_samples, confidence=confidence, seed=seed)
        rows.append(row | {"gap": float(differences.mean()), "gap_ci_low": low, "gap_ci_high": high})
    schema = {**per_prompt.select(GROUP_KEYS).schema, "gap": pl.Float64, "gap_ci_low": pl.Float64, "gap_ci_high": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def _with_kl(stats: pl.DataFrame, kl: pl.DataFrame | None, prompters: list[str]) -> pl.DataFrame:
    """`stats` with each row's measured KL to its reference; 0 by definition for a method that is its own
    reference (sft: rho_sft)."""
    if kl is None:
        measured = stats.with_columns(kl=pl.lit(None, pl.Float64))
    else:
        frame = kl.select(pl.col(NAME_KEYS).cast(pl.String), pl.col("beta").cast(pl.Float64), pl.col("kl").cast(pl.Float64))
        repeated = frame.filter(frame.select(GROUP_KEYS).is_duplicated())
        if repeated.height:
            raise ValueError(f"more than one kl for {repeated.row(0, named=True)}")
        measured = stats.join(repeat_base_rows(frame, prompters), on=GROUP_KEYS, how="left", nulls_equal=True)
    own_reference = [method.name for method in METHODS.values() if method.kl == "zero"]
    return measured.with_columns(kl=pl.when(pl.col("method").is_in(own_reference)).then(0.0).otherwise(pl.col("kl")))


def training_kl(metrics: pl.DataFrame, tail_fraction: float = 0.1) -> float:
    """The KL of a trained policy to its reference: the mean `kl` over the last ceil(tail_fraction ×
    steps) steps (at least one) of a TRAINING_METRICS frame. The policy starts at its reference, so a mean over
    all steps would understate the KL of the policy that was evaluated; a few last steps smooth the noise."""
    if metrics.is_empty():
        raise ValueError("training metrics without steps have no KL")
    if not 0.0 < tail_fraction <= 1.0:
        raise ValueError(f"need 0 < tail_fraction <= 1, got {tail_fraction}")
    steps = max(1, math.ceil(tail_fraction * metrics.height - 1e-9))  # 0.1 × 30 is 3.0000000000000004
    return float(metrics.sort("step")["kl"].tail(steps).mean())


def star_kl(star_rewrites: pl.DataFrame) -> float:
    """rho*'s KL to rho_sft: the mean over prompts of a STAR_REWRITES frame's per-prompt `kl_estimate`."""
    if star_rewrites.is_empty():
        raise ValueError("rho* rewrites without prompts have no KL")
    per_prompt = star_rewrites.group_by("prompt_id", maintain_order=True).agg(pl.col("kl_estimate").first())
    return float(per_prompt["kl_estimate"].mean())


def summarize(
    scores: list[pa.Table] | pl.DataFrame,
    *,
    prompters: list[str],
    confidence: float = 0.95,
    bootstrap_samples: int = 2000,
    seed: int = 0,
    kl: pl.DataFrame | None = None,
    references: pl.DataFrame | None = None,
    checkers: dict[str, str] | None = None,
) -> pl.DataFrame:
    """One SUMMARY row per (dataset, prompter, frozen, method, beta), sorted by method then beta (null first).

    mean_reward and reward_variance (ddof=1) are over all samples; the CI is over per-prompt mean
    rewards because samples of one prompt are correlated; fallback_rate is the share of prompts
    whose rewrite fell back to the original prompt (null for methods without a prompter); mean_tokens
    is the mean answer length in tokens. Win rates are `win_rates`' (alignpro.report.statistics).

    `kl` (columns dataset, prompter (null for rlhf), frozen, method, beta, kl, from `training_kl` and
    `star_kl`) fills the kl column, rlhf's under every prompter; sft's kl is 0, base's null.

    gap is the suboptimality gap J(rlhf) − J(method) where the (dataset, frozen) has rlhf answers
    (null elsewhere): the mean over prompts of rlhf's minus the method's per-prompt mean reward, with
    a seeded percentile bootstrap CI over prompts; rlhf's own gap is exactly 0. Both must have answered
    the same prompts (ValueError naming the first unpaired one).

    `checkers` (dataset -> name in `alignpro.checkers.CHECKERS`) and `references` (columns dataset,
    prompt_id, reference: the datasets' test prompts) fill accuracy, the share of a method's sampled
    answers the checker accepts against the prompt's reference, with a t CI over per-prompt mean
    correctness like the reward's, clipped to [0, 1]; null for datasets without a checker.
    """
    frame = scores_frame(scores).select(
        pl.col([*NAME_KEYS, "prompt_id", "response"]).cast(pl.String),
        pl.col("beta").cast(pl.Float64),
        pl.col("reward").cast(pl.Float64),
        pl.col("num_tokens").cast(pl.Float64),
        pl.col("fallback").cast(pl.Boolean),
    )
    frame = _with_correctness(frame, references, checkers or {})
    per_prompt = _per_prompt(frame)
    # maintain_order: the groups' order, and so the order floats are summed in, follows the input's, not
    # polars' hashing (seeded anew in every process): two runs then give the same last digits.
    sample_stats = frame.group_by(GROUP_KEYS, maintain_order=True).agg(
        n_samples=pl.len(),
        mean_reward=pl.col("reward").mean(),
        reward_variance=pl.when(pl.len() >= 2).then(pl.col("reward").var(ddof=1)),
        mean_tokens=pl.col("num_tokens").mean(),
        accuracy=pl.col("correct").mean(),
    )
    prompt_stats = per_prompt.group_by(GROUP_KEYS, maintain_order=True).agg(
        n_prompts=pl.len(),
        prompt_mean_mean=pl.col("prompt_mean").mean(),
        prompt_sd=pl.col("prompt_mean").std(ddof=1),
        prompt_accuracy_mean=pl.col("prompt_accuracy").mean(),
        prompt_accuracy_sd=pl.col("prompt_accuracy").std(ddof=1),
        fallback_rate=pl.col("fallback").mean(),
    )
    stats = t_interval(sample_stats.join(prompt_stats, on=GROUP_KEYS, nulls_equal=True), confidence)
    stats = t_interval(stats, confidence, "prompt_accuracy_mean", "prompt_accuracy_sd", prefix="accuracy_")
    stats = stats.with_columns(pl.col("accuracy_ci_low", "accuracy_ci_high").clip(0.0, 1.0))  # a share lies in [0, 1]
    gaps = _paired_gaps(per_prompt, confidence, bootstrap_samples, seed)
    stats = stats.join(gaps, on=GROUP_KEYS, how="left", nulls_equal=True)
    stats = _with_kl(repeat_base_rows(stats, prompters), kl, prompters)
    stats = stats.sort(["dataset", "prompter", "frozen", method_rank(), "method", "beta"])
    return stats.select(
        (pl.col(f.name) if f.name in stats.columns else pl.lit(None)).cast(SUMMARY_TYPES[str(f.type)]).alias(f.name)
        for f in SUMMARY
    )


def pick_examples(verdicts: pl.DataFrame, scores: list[pa.Table] | pl.DataFrame, per_method: int) -> list[dict]:
    """Up to `per_method` judged pairs per judge and (dataset, prompter, frozen, method, beta), one per verdict kind in
    the order win, loss, tie, invalid, not judged (first prompt id within a kind): prompt, rewrite, both
    answers, the verdict and the judge's reasons."""
    if per_method == 0 or verdicts.is_empty():
        return []
    frame = scores_frame(scores)
    keys = ["dataset", "prompt_id", "frozen", "sample_index"]
    answers = frame.filter(pl.col("method") != "base").select(
        *keys, "method", "prompter", "beta", "prompt", "model_input", answer=pl.col("response")
    )
    base = frame.filter(pl.col("method") == "base").select(*keys, base_answer=pl.col("response"))
    rank = pl.col("verdict").replace_strict(list(EXAMPLE_PRIORITY), list(range(len(EXAMPLE_PRIORITY))), return_dtype=pl.Int64)
    picked = (
        verdicts.join(answers, on=[*keys, "method", "prompter", "beta"], nulls_equal=True)
        .join(base, on=keys)
        .sort(
            "dataset", "prompter", "frozen", method_rank(), "method", "beta", "judge", rank, "prompt_id", "sample_index",
            nulls_last=[False, True, False, False, False, False, False, False, False, False],
        )
        .unique(["judge", *GROUP_KEYS, "verdict"], keep="first", maintain_order=True)
        .filter(pl.int_range(pl.len()).over(["judge", *GROUP_KEYS]) < per_method)
    )
    return picked.to_dicts()
