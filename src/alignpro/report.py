"""Summarize scored responses per method and write the report (Markdown, HTML, plots).

The numbers mirror the Align-Pro paper's Figures 2 and 3: the mean reward of each method, with a
confidence interval, and the variance of the reward over all sampled responses; with judge verdicts,
its Table 1: each method's win/tie/loss rate against base, with judged examples to read. With RLHF
answers it adds the suboptimality gap J(rlhf) − J(method) the paper bounds, and with measured KLs the
reward–KL frontier of the prompters (the PPO beta sweep and the closed-form rho*). With PPO training
runs (the Align-Pro prompters, the RLHF oracle) the report adds their training curves and a small
table per run. With reference answers (a dataset's `reference_column`) it adds each method's task
accuracy beside its mean reward, and a plot of one against the other: reward over-optimisation is
reward that rises while accuracy does not.

A row is a (method, beta): the main PPO prompter has no beta, beta-sweep prompters and rho* have one,
so every table and plot shows a label that carries it.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import textwrap
from pathlib import Path
from urllib.parse import quote

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402

from matplotlib.colors import to_hex, to_rgb  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

from alignpro.atomic import write_bytes  # noqa: E402
from alignpro.checkers import CHECKERS  # noqa: E402
from alignpro.judge import win_rates  # noqa: E402
from alignpro.tables import PPO_METRICS, SCORES, SUMMARY, VERDICTS, conform  # noqa: E402

METHOD_ORDER = ("base", "sft", "alignpro", "alignpro-star", "rlhf")
METHOD_COLOURS = {
    "base": "#7f7f7f", "sft": "#1f77b4", "alignpro": "#ff7f0e", "alignpro-star": "#9467bd", "rlhf": "#2ca02c"
}
EXTRA_COLOURS = ("#8c564b", "#e377c2", "#17becf", "#bcbd22", "#d62728")
GROUP_KEYS = ["dataset", "prompter", "frozen", "method", "beta"]
NAME_KEYS = ["dataset", "prompter", "frozen", "method"]  # the string columns of GROUP_KEYS
SUMMARY_TYPES = {"string": pl.String, "int64": pl.Int64, "double": pl.Float64}


# ---------------------------------------------------------------------------- Student's t quantile


def _continued_fraction(a: float, b: float, x: float) -> float:
    """Lentz's continued fraction for the regularized incomplete beta (Numerical Recipes, betacf)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 1000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the CDF of a Beta(a, b) variable at x."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(probability: float, df: float) -> float:
    """The exact Student's t quantile (inverse of `t_cdf`, by bisection), with no scipy needed."""
    if not 0.0 < probability < 1.0 or df <= 0:
        raise ValueError(f"need 0 < probability < 1 and df > 0, got {probability}, {df}")
    if probability < 0.5:
        return -t_quantile(1.0 - probability, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < probability:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        if t_cdf(middle, df) < probability:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * high:
            break
    return 0.5 * (low + high)


# ---------------------------------------------------------------------------- summary


def _scores_frame(scores: list[pa.Table] | pl.DataFrame) -> pl.DataFrame:
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


def _confidence_interval(
    stats: pl.DataFrame, confidence: float, mean: str = "prompt_mean_mean", sd: str = "prompt_sd", prefix: str = ""
) -> pl.DataFrame:
    """mean of per-prompt means +- t * standard error as `{prefix}ci_low`/`{prefix}ci_high`, null with
    fewer than two prompts; `mean` and `sd` name the columns of the per-prompt statistic's mean and sd."""
    quantiles = [t_quantile(0.5 + confidence / 2.0, n - 1) if n >= 2 else None for n in stats["n_prompts"]]
    half_width = pl.col("t") * pl.col(sd) / pl.col("n_prompts").sqrt()
    return stats.with_columns(t=pl.Series(quantiles, dtype=pl.Float64)).with_columns(
        (pl.col(mean) - half_width).alias(f"{prefix}ci_low"),
        (pl.col(mean) + half_width).alias(f"{prefix}ci_high"),
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


def _repeat_base_rows(stats: pl.DataFrame, prompters: list[str]) -> pl.DataFrame:
    """Copy rows without a prompter (base, rlhf) under every prompter, completing each group."""
    shared = stats.filter(pl.col("prompter").is_null())
    if shared.height and not prompters:
        raise ValueError("rows without a prompter (e.g. base) need a list of prompters to repeat under")
    every_prompter = pl.DataFrame({"prompter": prompters}, schema={"prompter": pl.String})
    repeated = shared.drop("prompter").join(every_prompter, how="cross")
    return pl.concat([stats.filter(pl.col("prompter").is_not_null()), repeated.select(stats.columns)])


def _method_rank() -> pl.Expr:
    """Position in METHOD_ORDER, unknown methods after; sort by `method` next to order those."""
    positions = list(range(len(METHOD_ORDER)))
    return pl.col("method").replace_strict(
        list(METHOD_ORDER), positions, default=len(METHOD_ORDER), return_dtype=pl.Int64
    )


def _method_label(method: str, beta: float | None) -> str:
    """The name a row is shown under: the method, with its beta when it has one."""
    return method if beta is None else f"{method} β={beta:g}"


JUDGE_COLUMNS = {  # SUMMARY's judge columns, from win_rates' names
    "judge": "judge",
    "n_pairs": "judged_pairs",
    **{f"{o}_{s}": f"{o}_{s}" for o in ("win", "tie", "loss") for s in ("pct", "ci_low", "ci_high")},
    "inconsistent_pct": "inconsistent_pct",
    "invalid_pct": "invalid_pct",
    "not_judged_pct": "not_judged_pct",
    "calls": "judge_requests",
    "retries": "judge_retries",
    "cached_calls": "judge_cached_calls",
    "prompt_tokens": "judge_prompt_tokens",
    "completion_tokens": "judge_completion_tokens",
    "cost_usd": "judge_cost_usd",
}


def verdicts_frame(verdicts: list[pa.Table]) -> pl.DataFrame:
    """All verdict rows, each table checked against the VERDICTS schema."""
    frames = [pl.from_arrow(conform(table, VERDICTS, "verdicts")) for table in verdicts]
    return pl.concat(frames) if frames else pl.from_arrow(VERDICTS.empty_table())


def _judge_stats(verdicts: pl.DataFrame, prompters: list[str], confidence: float, bootstrap_samples: int, seed: int) -> pl.DataFrame:
    """Win rates against base per (dataset, prompter, frozen, method, beta), rlhf's repeated under every prompter."""
    rates = win_rates(verdicts, n_bootstrap=bootstrap_samples, seed=seed, confidence=confidence)
    judges = rates.group_by(GROUP_KEYS).agg(pl.col("judge").n_unique().alias("judges")).filter(pl.col("judges") > 1)
    if judges.height:
        raise ValueError(f"more than one judge for {judges.row(0, named=True)}: report one judge at a time")
    stats = rates.select(*GROUP_KEYS, *(pl.col(old).alias(new) for old, new in JUDGE_COLUMNS.items()))
    return _repeat_base_rows(stats, prompters) if stats.height else stats


def _bootstrap_mean_interval(values: np.ndarray, bootstrap_samples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Seeded percentile CI of the mean of `values`, resampling them with replacement, all resamples at once."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(bootstrap_samples, len(values)))].mean(axis=1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def _paired_gaps(per_prompt: pl.DataFrame, confidence: float, bootstrap_samples: int, seed: int) -> pl.DataFrame:
    """gap = J(rlhf) − J(method) per row of every (dataset, frozen) that has rlhf answers, paired by prompt.

    Pairing removes the prompt-to-prompt spread both systems share, so the CI is of the difference
    itself; a method answered on other prompts than rlhf has no paired gap, so that is an error.
    """
    pair_keys = ["dataset", "frozen", "prompt_id"]
    rlhf = per_prompt.filter(pl.col("method") == "rlhf").select(*pair_keys, rlhf_mean="prompt_mean")
    compared = per_prompt.join(rlhf.select("dataset", "frozen").unique(), on=["dataset", "frozen"]).sort(
        "dataset", "frozen", "prompter", _method_rank(), "method", "beta"
    )
    rows = []
    for keys, group in compared.group_by(GROUP_KEYS, maintain_order=True):  # display order: a stable first error
        row = dict(zip(GROUP_KEYS, keys))
        reference = rlhf.filter(dataset=row["dataset"], frozen=row["frozen"])
        paired = group.join(reference, on=pair_keys, how="full", coalesce=True).sort("prompt_id")
        unpaired = paired.filter(pl.col("prompt_mean").is_null() | pl.col("rlhf_mean").is_null())
        if unpaired.height:
            missing = unpaired.row(0, named=True)
            side = row["method"] if missing["prompt_mean"] is None else "rlhf"
            raise ValueError(
                f"gap of {_method_label(row['method'], row['beta'])} against rlhf on {row['dataset']} / {row['frozen']}: "
                f"prompt {missing['prompt_id']} has no {side} answers, so the gap would not be paired"
            )
        differences = (paired["rlhf_mean"] - paired["prompt_mean"]).to_numpy()
        low, high = _bootstrap_mean_interval(differences, bootstrap_samples, confidence, seed)
        rows.append(row | {"gap": float(differences.mean()), "gap_ci_low": low, "gap_ci_high": high})
    schema = {**per_prompt.select(GROUP_KEYS).schema, "gap": pl.Float64, "gap_ci_low": pl.Float64, "gap_ci_high": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def _with_kl(stats: pl.DataFrame, kl: pl.DataFrame | None, prompters: list[str]) -> pl.DataFrame:
    """`stats` with each row's measured KL to its reference; sft's is 0 by definition (rho_sft is the reference)."""
    if kl is None:
        measured = stats.with_columns(kl=pl.lit(None, pl.Float64))
    else:
        frame = kl.select(pl.col(NAME_KEYS).cast(pl.String), pl.col("beta").cast(pl.Float64), pl.col("kl").cast(pl.Float64))
        repeated = frame.filter(frame.select(GROUP_KEYS).is_duplicated())
        if repeated.height:
            raise ValueError(f"more than one kl for {repeated.row(0, named=True)}")
        measured = stats.join(_repeat_base_rows(frame, prompters), on=GROUP_KEYS, how="left", nulls_equal=True)
    return measured.with_columns(kl=pl.when(pl.col("method") == "sft").then(0.0).otherwise(pl.col("kl")))


def ppo_kl(metrics: pl.DataFrame, tail_fraction: float = 0.1) -> float:
    """The KL of the trained PPO policy to its reference: the mean `kl` over the last ceil(tail_fraction ×
    steps) steps (at least one) of a PPO_METRICS frame. The policy starts at its reference, so a mean over
    all steps would understate the KL of the policy that was evaluated; a few last steps smooth the noise."""
    if metrics.is_empty():
        raise ValueError("PPO metrics without steps have no KL")
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
    verdicts: list[pa.Table] | pl.DataFrame = (),
    bootstrap_samples: int = 2000,
    seed: int = 0,
    kl: pl.DataFrame | None = None,
    references: pl.DataFrame | None = None,
    checkers: dict[str, str] | None = None,
) -> pl.DataFrame:
    """One SUMMARY row per (dataset, prompter, frozen, method, beta), sorted by method then beta (null first).

    mean_reward and reward_variance (ddof=1) are over all samples; the CI is over per-prompt mean
    rewards because samples of one prompt are correlated; fallback_rate is the share of prompts
    whose rewrite fell back to the original prompt (null for methods without a prompter). With
    `verdicts` the judge columns hold each method's win/tie/loss rates against base, with seeded
    bootstrap CIs over prompts (null for base and for methods nobody judged).

    `kl` (columns dataset, prompter (null for rlhf), frozen, method, beta, kl, from `ppo_kl` and
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
    frame = _scores_frame(scores).select(
        pl.col([*NAME_KEYS, "prompt_id", "response"]).cast(pl.String),
        pl.col("beta").cast(pl.Float64),
        pl.col("reward").cast(pl.Float64),
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
    stats = _confidence_interval(sample_stats.join(prompt_stats, on=GROUP_KEYS, nulls_equal=True), confidence)
    stats = _confidence_interval(stats, confidence, "prompt_accuracy_mean", "prompt_accuracy_sd", prefix="accuracy_")
    stats = stats.with_columns(pl.col("accuracy_ci_low", "accuracy_ci_high").clip(0.0, 1.0))  # a share lies in [0, 1]
    gaps = _paired_gaps(per_prompt, confidence, bootstrap_samples, seed)
    stats = stats.join(gaps, on=GROUP_KEYS, how="left", nulls_equal=True)
    stats = _with_kl(_repeat_base_rows(stats, prompters), kl, prompters)
    judged = verdicts if isinstance(verdicts, pl.DataFrame) else verdicts_frame(list(verdicts))
    if judged.height:
        stats = stats.join(
            _judge_stats(judged, prompters, confidence, bootstrap_samples, seed), on=GROUP_KEYS, how="left", nulls_equal=True
        )
    stats = stats.sort(["dataset", "prompter", "frozen", _method_rank(), "method", "beta"])
    return stats.select(
        (pl.col(f.name) if f.name in stats.columns else pl.lit(None)).cast(SUMMARY_TYPES[str(f.type)]).alias(f.name)
        for f in SUMMARY
    )


# ---------------------------------------------------------------------------- report files


def _series(summary: pl.DataFrame) -> pl.DataFrame:
    """The (method, beta) pairs present with their label, in display order: paper order, then beta, null first."""
    pairs = summary.select("method", "beta").unique().sort(_method_rank(), "method", "beta")
    return pairs.with_columns(label=pl.Series([_method_label(m, b) for m, b in pairs.iter_rows()], dtype=pl.String))


def _with_labels(rows: pl.DataFrame) -> pl.DataFrame:
    """`rows` with the label column of `_series`, so a plot can pick one (method, beta) by name."""
    return rows.join(_series(rows), on=["method", "beta"], how="left", nulls_equal=True)


def _method_colours(methods: list[str]) -> dict[str, str]:
    """Fixed colours for known methods, so every plot and run uses the same ones."""
    extras = iter(EXTRA_COLOURS * (1 + len(methods) // len(EXTRA_COLOURS)))
    return {m: METHOD_COLOURS[m] if m in METHOD_COLOURS else next(extras) for m in methods}


def _lighter(colour: str, amount: float) -> str:
    """`colour` blended towards white by `amount` (0: unchanged, 1: white)."""
    return to_hex([c + (1.0 - c) * amount for c in to_rgb(colour)])


def _series_styles(series: pl.DataFrame) -> dict[str, tuple[str, str | None]]:
    """label -> (colour, hatch): the method's colour; a fixed-beta row hatched and lighter the larger its beta,
    so the beta variants of one method stay apart and the legend names each."""
    colours = _method_colours(series["method"].unique(maintain_order=True).to_list())
    styles = {}
    for (method,), rows in series.group_by("method", maintain_order=True):
        with_beta = rows.filter(pl.col("beta").is_not_null())["label"].to_list()
        for label in rows.filter(pl.col("beta").is_null())["label"]:
            styles[label] = (colours[method], None)
        for index, label in enumerate(with_beta):
            styles[label] = (_lighter(colours[method], 0.6 * (index + 1) / (len(with_beta) + 1)), "//")
    return styles


def _short_name(model: str) -> str:
    """`org/name` -> `name`: tick labels stay readable; the tables keep full names."""
    return model.rstrip("/").rsplit("/", 1)[-1]


def _png(fig, dpi: int = 120) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def _bar_plot(summary: pl.DataFrame, value: str, ylabel: str, title: str, with_ci: bool) -> bytes:
    """PNG bytes of grouped bars: one subplot per dataset, groups = prompter -> frozen, bars = (method, beta)."""
    datasets = sorted(summary["dataset"].unique().to_list())
    series = _series(summary)
    labels, styles = series["label"].to_list(), _series_styles(series)
    labelled = _with_labels(summary)
    ncols = min(3, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    max_groups = max(summary.filter(pl.col("dataset") == d).select("prompter", "frozen").n_unique() for d in datasets)
    width = max(4.5, 0.35 * len(labels) * max_groups + 1.5)
    figsize = (width * ncols, 4.2 * nrows + 1.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, layout="constrained")
    for ax, dataset in zip(axes.flat, datasets):
        rows = labelled.filter(pl.col("dataset") == dataset)
        _draw_dataset(ax, rows, [label for label in labels if label in rows["label"]], styles, value, with_ci)
        ax.set_title(dataset, fontweight="bold")
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(datasets) :]:
        ax.set_visible(False)
    handles = [
        plt.Rectangle((0, 0), 1, 1, facecolor=styles[label][0], hatch=styles[label][1], edgecolor="black", linewidth=0.5)
        for label in labels
    ]
    fig.legend(
        handles, [_plot_label(label) for label in labels], loc="outside lower center", ncol=min(len(labels), 5),
        frameon=False, title="method",
    )
    fig.suptitle(title, fontsize=13)
    return _png(fig)


def _draw_dataset(ax, rows: pl.DataFrame, labels: list[str], styles: dict, value: str, with_ci: bool) -> None:
    """Bars of `value` for one dataset (`rows` with a label column), with CI error bars and value labels
    beyond the bar or error bar."""
    pairs = rows.select("prompter", "frozen").unique().sort("prompter", "frozen").rows()
    bar_width = min(0.8 / len(labels), 0.35)
    for slot, label in enumerate(labels):
        for group, (prompter, frozen) in enumerate(pairs):
            match = rows.filter(label=label, prompter=prompter, frozen=frozen)
            if match.is_empty():
                continue
            row = match.row(0, named=True)
            x = group + (slot - (len(labels) - 1) / 2) * bar_width
            if row[value] is None:  # e.g. the variance of a single sample
                ax.annotate("n/a", (x, 0.0), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=7)
                continue
            low = high = row[value]
            error = None
            if with_ci and row["ci_low"] is not None:
                low, high = min(row["ci_low"], low), max(row["ci_high"], high)
                error = [[row[value] - low], [high - row[value]]]
            colour, hatch = styles[label]
            ax.bar(x, row[value], bar_width, yerr=error, capsize=3, color=colour, hatch=hatch, edgecolor="black", lw=0.5)
            above = row[value] >= 0
            ax.annotate(
                f"{row[value]:.2f}",
                (x, high if above else low),
                xytext=(0, 3 if above else -3),
                textcoords="offset points",
                ha="center",
                va="bottom" if above else "top",
                fontsize=7,
            )
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlim(-0.5, len(pairs) - 0.5)
    ax.set_xticks(range(len(pairs)), [f"{_short_name(p)}\n→ {_short_name(f)}" for p, f in pairs], fontsize=9)
    ax.set_xlabel("prompter → frozen model")
    ax.margins(y=0.12)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _format(value: float | None, pattern: str = "{:.3f}") -> str:
    """A table cell; a dash where a statistic is undefined (too few prompts or samples, no prompter)."""
    return "–" if value is None else pattern.format(value)


def _has_accuracy(summary: pl.DataFrame) -> bool:
    """Whether some dataset has reference answers: only then do the reward tables get an accuracy column."""
    return summary["accuracy"].is_not_null().any()


def _accuracy_cell(row: dict) -> str:
    """Accuracy and its CI as percentages; a dash for a dataset without reference answers."""
    if row["accuracy"] is None:
        return "–"
    interval = "" if row["accuracy_ci_low"] is None else f" [{row['accuracy_ci_low']:.1%}, {row['accuracy_ci_high']:.1%}]"
    return f"{row['accuracy']:.1%}{interval}"


def _table_rows(summary: pl.DataFrame, dataset: str) -> list[list[str]]:
    """Display cells for one dataset's table: plain text, escaped by the caller."""
    rows = []
    with_accuracy = _has_accuracy(summary)
    for row in summary.filter(pl.col("dataset") == dataset).iter_rows(named=True):
        half = None if row["ci_low"] is None else (row["ci_high"] - row["ci_low"]) / 2.0
        mean = _format(row["mean_reward"]) + ("" if half is None else f" ± {half:.3f}")
        rows.append(
            [
                row["prompter"],
                row["frozen"],
                _method_label(row["method"], row["beta"]),
                f"{row['n_prompts']} / {row['n_samples']}",
                mean,
                *([_accuracy_cell(row)] if with_accuracy else []),
                _format(row["reward_variance"]),
                _format(row["fallback_rate"], "{:.1%}"),
            ]
        )
    return rows


def _table_header(summary: pl.DataFrame) -> list[str]:
    """The reward table's columns, accuracy beside mean reward when some dataset has reference answers."""
    accuracy = ["accuracy [CI]"] if _has_accuracy(summary) else []
    return ["prompter", "frozen", "method", "prompts / samples", "mean reward ± CI", *accuracy, "reward variance", "fallback rate"]


def _ci_note(confidence: float) -> str:
    """The sentence that tells readers what the interval and the other columns are computed over."""
    return (
        f"± is the half-width of the {confidence:.0%} Student-t confidence interval over per-prompt mean rewards "
        "(the samples of one prompt are correlated, so prompts are the independent units; the interval is "
        "centred on the mean of per-prompt means, which equals the mean reward when every prompt has the "
        "same number of samples). Variance is the sample variance (ddof=1) over all samples. Fallback rate is "
        "the share of prompts whose rewrite fell back to the original prompt."
    )


def _markdown_cell(text: str) -> str:
    """Escape HTML (Markdown renders raw HTML) and pipes (they would split the table cell)."""
    return html.escape(text, quote=False).replace("|", "\\|")


def _markdown_table(header: list[str], rows: list) -> list[str]:
    """A Markdown table, every cell escaped, and the blank line that ends it."""

    def line(cells) -> str:
        return "| " + " | ".join(_markdown_cell(cell) for cell in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *map(line, rows), ""]


def _markdown(
    summary: pl.DataFrame, title: str, note: str, mean_plot: str, variance_plot: str, sections: list[str] = ()
) -> str:
    """The report as Markdown: a table per dataset, then the plots linked by relative path, then `sections`."""
    lines = [f"# {_markdown_cell(title)}", "", note, ""]
    for dataset in sorted(summary["dataset"].unique().to_list()):
        lines += [f"## {_markdown_cell(dataset)}", "", *_markdown_table(_table_header(summary), _table_rows(summary, dataset))]
    lines += ["## Plots", "", f"![Mean reward]({mean_plot})", "", f"![Reward variance]({variance_plot})", ""]
    return "\n".join([*lines, *sections])


HTML_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:80em}"
    "table{border-collapse:collapse;margin-bottom:1.5em}"
    "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
    "th{background:#f0f0f0}img{max-width:100%}"
    "blockquote.example{white-space:pre-wrap;border-left:3px solid #ccc;margin:.3em 0 .8em;padding-left:.8em}"
)


def _html_image(alt: str, png: bytes) -> str:
    """An image paragraph with the PNG inline as a base64 data URI."""
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"></p>'


def _html_table(header: list[str], rows: list) -> list[str]:
    """An HTML table, every cell escaped."""
    esc = html.escape
    cells = ["<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows]
    return ["<table>", "<tr>" + "".join(f"<th>{esc(name)}</th>" for name in header) + "</tr>", *cells, "</table>"]


def _html(
    summary: pl.DataFrame, title: str, note: str, mean_png: bytes, variance_png: bytes, sections: list[str] = ()
) -> str:
    """The same report as one self-contained page: inline style, plots as base64 data URIs, then `sections`."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>',
        f"<style>{HTML_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>{esc(note)}</p>",
    ]
    for dataset in sorted(summary["dataset"].unique().to_list()):
        parts += [f"<h2>{esc(dataset)}</h2>", *_html_table(_table_header(summary), _table_rows(summary, dataset))]
    parts.append("<h2>Plots</h2>")
    parts += [_html_image("Mean reward", mean_png), _html_image("Reward variance", variance_png), *sections]
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------- reward and accuracy

ACCURACY_PLOT_NOTE = (
    "Each method's mean reward against its accuracy on the datasets with reference answers, one panel per "
    "dataset, prompter and frozen model, both with their confidence intervals over prompts. If reward and "
    "true quality move together the points rise to the right; a method with more reward but no more accuracy "
    "is optimising the reward model rather than the task."
)


def _accuracy_note(summary: pl.DataFrame, checkers: dict[str, str], confidence: float) -> str:
    """What the accuracy column is over, and which checker (with what it accepts) each dataset used."""
    datasets = sorted(summary.filter(pl.col("accuracy").is_not_null())["dataset"].unique().to_list())
    unnamed = [dataset for dataset in datasets if dataset not in checkers]
    if unnamed:
        raise ValueError(f"accuracy of dataset(s) {unnamed} without the name of their checker")
    used = "; ".join(f"{dataset}: {checkers[dataset]}, {_checker_description(checkers[dataset])}" for dataset in datasets)
    return (
        "Accuracy is the share of a method's sampled answers that its dataset's checker accepts against the "
        f"prompt's reference answer, with the {confidence:.0%} Student-t interval over per-prompt mean correctness, "
        f"clipped to [0%, 100%] (a dash: the dataset has no reference answers). Checkers: {used}."
    )


def _checker_description(name: str) -> str:
    """What a checker accepts, from the first line of its docstring, as a clause."""
    first = CHECKERS[name].__doc__.splitlines()[0].rstrip(".")
    return first[0].lower() + first[1:]


ACCURACY_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "<", ">")


def _draw_accuracy(ax, rows: pl.DataFrame, styles: dict[str, tuple[str, str | None]], markers: dict[str, str]) -> None:
    """One (dataset, prompter, frozen) panel: a point per method at (mean reward, accuracy) in its colour
    and marker (methods often tie on accuracy, so markers keep coinciding points apart), both CIs as error
    bars."""
    for row in rows.iter_rows(named=True):
        reward, accuracy = row["mean_reward"], row["accuracy"]
        xerr = None if row["ci_low"] is None else [[reward - row["ci_low"]], [row["ci_high"] - reward]]
        yerr = None if row["accuracy_ci_low"] is None else [[accuracy - row["accuracy_ci_low"]], [row["accuracy_ci_high"] - accuracy]]
        ax.errorbar(
            [reward], [accuracy], xerr=xerr, yerr=yerr, color=styles[row["label"]][0], marker=markers[row["label"]],
            markersize=7, markeredgecolor="black", markeredgewidth=0.5, capsize=3, elinewidth=1, alpha=0.85,
            label=row["label"],
        )
    ax.set_xlabel("mean reward")
    ax.set_ylabel("accuracy")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylim(-0.05, 1.05)  # the whole range, so panels compare at a glance
    ax.margins(x=0.15)
    ax.grid(alpha=0.3)


def _accuracy_plot(summary: pl.DataFrame) -> bytes:
    """PNG of mean reward against accuracy, one panel per (dataset, prompter, frozen) with reference answers,
    in the methods' colours of the bar plots."""
    checked = summary.filter(pl.col("accuracy").is_not_null())
    panels = checked.select("dataset", "prompter", "frozen").unique().sort(pl.all()).rows()
    series = _series(summary)
    styles = _series_styles(series)
    markers = dict(zip(series["label"], ACCURACY_MARKERS * (1 + series.height // len(ACCURACY_MARKERS))))
    labelled = _with_labels(checked)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    legend_rows = math.ceil(series.height / (3 * ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(max(7.0, 5.5 * ncols), 4.3 * nrows + 0.3 * legend_rows + 1.0), squeeze=False, layout="constrained"
    )
    legend = {}
    for ax, (dataset, prompter, frozen) in zip(axes.flat, panels):
        _draw_accuracy(ax, labelled.filter(dataset=dataset, prompter=prompter, frozen=frozen), styles, markers)
        ax.set_title(_plot_label(f"{dataset}: {_short_name(prompter)} → {_short_name(frozen)}"), fontsize=10)
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    order = [label for label in _series(checked)["label"] if label in legend]
    fig.legend(
        [legend[label] for label in order], [_plot_label(label) for label in order], loc="outside lower center",
        ncol=min(len(order), 3 * ncols), frameon=False, title="method",
    )
    fig.suptitle("Mean reward against accuracy (error bars: CIs over prompts)", fontsize=12)
    return _png(fig)


def _accuracy_markdown(plot_link: str) -> list[str]:
    return ["## Reward and accuracy", "", ACCURACY_PLOT_NOTE, "", f"![Mean reward against accuracy]({plot_link})", ""]


def _accuracy_html(png: bytes) -> list[str]:
    return [
        "<h2>Reward and accuracy</h2>", f"<p>{html.escape(ACCURACY_PLOT_NOTE)}</p>", _html_image("Mean reward against accuracy", png)
    ]


# ---------------------------------------------------------------------------- suboptimality gap

GAP_HEADER = [
    "prompter", "frozen", "method", "β", "gap J(rlhf) − J(method) [CI]", "J(base) − J(method)", "KL to reference", "β·KL"
]


def _gap_note(confidence: float) -> str:
    """How the gap splits, what each KL is measured against, and how far to trust the numbers."""
    return (
        "The paper splits the suboptimality gap J(rlhf) − J(method) into J(rlhf) − J(base), the frozen model's "
        "gap, the same for every prompter, and J(base) − J(method), the prompter's part, and bounds it with terms "
        "that include β·KL(ρ* ‖ ρ_sft). The gap is the mean over prompts of rlhf's minus the method's per-prompt "
        f"mean reward, paired by prompt, with a {confidence:.0%} percentile bootstrap interval over prompts. KL is "
        "each method's measured KL to its own reference: PPO prompters to ρ_sft, the mean over the last 10% of "
        "training steps, on training prompts; alignpro-star the estimate of KL(ρ* ‖ ρ_sft) from its K candidates "
        "per prompt (at most log K); rlhf its PPO KL to the frozen model, a different reference. The main alignpro "
        "run has no single β (its KL coefficient comes from the ppo section), so its β·KL is not shown."
    )


def _gap_rows(summary: pl.DataFrame, dataset: str) -> list[list[str]]:
    """Display cells of one dataset's gap table; the prompter's part is the gap less base's gap."""
    rows = summary.filter(pl.col("dataset") == dataset, pl.col("gap").is_not_null())
    base_gaps = rows.filter(pl.col("method") == "base").select("prompter", "frozen", base_gap="gap")
    cells = []
    for row in rows.join(base_gaps, on=["prompter", "frozen"], how="left", maintain_order="left").iter_rows(named=True):
        prompter_part = None if row["base_gap"] is None else row["gap"] - row["base_gap"]
        beta_kl = None if row["beta"] is None or row["kl"] is None else row["beta"] * row["kl"]
        cells.append(
            [
                row["prompter"],
                row["frozen"],
                _method_label(row["method"], row["beta"]),
                _format(row["beta"], "{:g}"),
                f"{row['gap']:.3f} [{row['gap_ci_low']:.3f}, {row['gap_ci_high']:.3f}]",
                _format(prompter_part),
                _format(row["kl"]),
                _format(beta_kl),
            ]
        )
    return cells


def _gap_datasets(summary: pl.DataFrame) -> list[str]:
    """Datasets with a gap to show: those with rlhf answers."""
    return sorted(summary.filter(pl.col("gap").is_not_null())["dataset"].unique().to_list())


def _gap_markdown(summary: pl.DataFrame, note: str) -> list[str]:
    lines = ["## Suboptimality gap", "", note, ""]
    for dataset in _gap_datasets(summary):
        lines += [f"### {_markdown_cell(dataset)}", "", *_markdown_table(GAP_HEADER, _gap_rows(summary, dataset))]
    return lines


def _gap_html(summary: pl.DataFrame, note: str) -> list[str]:
    esc = html.escape
    parts = ["<h2>Suboptimality gap</h2>", f"<p>{esc(note)}</p>"]
    for dataset in _gap_datasets(summary):
        parts += [f"<h3>{esc(dataset)}</h3>", *_html_table(GAP_HEADER, _gap_rows(summary, dataset))]
    return parts


# ---------------------------------------------------------------------------- reward–KL frontier

FRONTIER_METHODS = ("alignpro", "alignpro-star")
FRONTIER_NOTE = (
    "Each prompter's mean reward (error bar: the confidence interval over prompts) against its KL to ρ_sft: the "
    "PPO prompters of the β sweep joined in β order, the main PPO run of the ppo section, the closed-form ρ* at "
    "each β joined in β order, and sft at KL 0. Dashed lines mark the mean reward of base, sft and rlhf (rlhf's "
    "KL is to the frozen model, another reference, so it is a line, not a point)."
)


def _frontier_points(summary: pl.DataFrame) -> pl.DataFrame:
    """The prompter rows with a measured KL (PPO prompters, ρ*): without any there is no frontier to draw."""
    return summary.filter(pl.col("method").is_in(FRONTIER_METHODS), pl.col("kl").is_not_null())


def _draw_points(
    ax, points: pl.DataFrame, colour: str, marker: str, label: str, notes: list[str], joined: bool, offset: tuple[int, int]
) -> None:
    """Points at (kl, mean reward) with the reward CI as a vertical error bar, each annotated with its note
    at `offset` points from it (each family its own side, so notes of nearby points do not overlap)."""
    if points.is_empty():
        return
    reward = points["mean_reward"]
    below = (reward - points["ci_low"].fill_null(reward)).to_list()
    above = (points["ci_high"].fill_null(reward) - reward).to_list()
    ax.errorbar(
        points["kl"].to_list(), reward.to_list(), yerr=[below, above], color=colour, marker=marker,
        markersize=12 if marker == "*" else 6, linestyle="-" if joined else "none", capsize=3, label=label,
    )
    for x, y, note in zip(points["kl"], reward, notes):
        ax.annotate(note, (x, y), xytext=offset, textcoords="offset points", fontsize=7, ha="left" if offset[0] >= 0 else "right")


def _beta_notes(points: pl.DataFrame) -> list[str]:
    return [f"β={beta:g}" for beta in points["beta"]]


def _draw_frontier(ax, rows: pl.DataFrame) -> None:
    """One (dataset, prompter, frozen) panel: reference lines, then the sft, PPO and ρ* points."""
    for method in ("base", "sft", "rlhf"):
        reference = rows.filter(pl.col("method") == method, pl.col("beta").is_null())
        if reference.height:
            ax.axhline(
                reference["mean_reward"][0], color=METHOD_COLOURS[method], linestyle="--", linewidth=1,
                label=f"{method} mean reward",
            )
    measured = rows.filter(pl.col("kl").is_not_null())
    sweep = measured.filter(pl.col("method") == "alignpro", pl.col("beta").is_not_null()).sort("beta")
    main = measured.filter(pl.col("method") == "alignpro", pl.col("beta").is_null())
    star = measured.filter(pl.col("method") == "alignpro-star").sort("beta")
    sft = measured.filter(pl.col("method") == "sft")
    _draw_points(ax, sft, METHOD_COLOURS["sft"], "D", "sft (KL 0)", ["sft"] * sft.height, False, (-6, 6))
    _draw_points(ax, sweep, METHOD_COLOURS["alignpro"], "o", "alignpro, β sweep", _beta_notes(sweep), True, (6, 6))
    _draw_points(ax, main, METHOD_COLOURS["alignpro"], "*", "alignpro, ppo section", ["ppo section"] * main.height, False, (6, -12))
    _draw_points(ax, star, METHOD_COLOURS["alignpro-star"], "s", "alignpro-star (ρ*)", _beta_notes(star), True, (6, -12))
    ax.set_xlabel("KL to ρ_sft")
    ax.set_ylabel("mean reward")
    ax.margins(x=0.15, y=0.15)
    ax.grid(alpha=0.3)


def _frontier_plot(summary: pl.DataFrame) -> bytes:
    """PNG of the reward–KL frontier, one panel per (dataset, prompter, frozen) that has prompter KLs."""
    panels = _frontier_points(summary).select("dataset", "prompter", "frozen").unique().sort(pl.all()).rows()
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    legend_rows = 4 if ncols == 1 else 2  # reference lines and point families: at most 7 entries
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(max(7.0, 5.5 * ncols), 4.3 * nrows + 0.3 * legend_rows + 0.8), squeeze=False,
        layout="constrained",
    )
    legend = {}
    for ax, (dataset, prompter, frozen) in zip(axes.flat, panels):
        _draw_frontier(ax, summary.filter(dataset=dataset, prompter=prompter, frozen=frozen))
        ax.set_title(_plot_label(f"{dataset}: {_short_name(prompter)} → {_short_name(frozen)}"), fontsize=10)
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.legend(
        list(legend.values()), list(legend), loc="outside lower center", ncol=math.ceil(len(legend) / legend_rows), frameon=False
    )
    fig.suptitle("Reward–KL frontier (error bars: CI over prompts)", fontsize=12)
    return _png(fig)


def _frontier_markdown(plot_link: str) -> list[str]:
    return ["## Reward–KL frontier", "", FRONTIER_NOTE, "", f"![Reward–KL frontier]({plot_link})", ""]


def _frontier_html(png: bytes) -> list[str]:
    return ["<h2>Reward–KL frontier</h2>", f"<p>{html.escape(FRONTIER_NOTE)}</p>", _html_image("Reward–KL frontier", png)]


# ---------------------------------------------------------------------------- win rates against base

OUTCOME_COLOURS = {"win": "#2ca02c", "tie": "#c7c7c7", "loss": "#d62728"}
JUDGE_HEADER = ["prompter", "frozen", "method", "pairs", "win %", "tie %", "loss %", "inconsistent %", "invalid %", "not judged %"]
USAGE_HEADER = ["prompter", "frozen", "method", "requests", "retries", "cached calls", "tokens in / out", "cost (USD)"]
EXAMPLE_PRIORITY = ("win", "loss", "tie", "invalid", "not_judged")
EXAMPLE_CHARACTERS = 1200  # texts longer than this are cut in the report (the tables keep them whole)


def _judged(summary: pl.DataFrame) -> pl.DataFrame:
    return summary.filter(pl.col("judge").is_not_null())


def _calls_an_api(summary: pl.DataFrame) -> bool:
    """Whether an LLM judge made the verdicts: only then are calls, tokens and cost worth a table."""
    return not _judged(summary).filter(~pl.col("judge").str.starts_with("offline")).is_empty()


def _judge_note(summary: pl.DataFrame, confidence: float) -> str:
    """What judged the pairs, and what the percentages are over."""
    judges = sorted(_judged(summary)["judge"].unique().to_list())
    offline = [judge for judge in judges if judge.startswith("offline")]
    llm = [judge for judge in judges if not judge.startswith("offline")]
    parts = ["Each method's answer is compared with base's answer to the same original prompt and sample."]
    if llm:
        parts.append(
            f"Judge: {', '.join(llm)}, an LLM asked for a reason and a verdict on helpfulness, harmlessness, "
            "relevance, accuracy, depth, creativity and detail. Every pair is judged in both orders; a win or loss "
            "counts only when both orders agree, otherwise it is a tie, flagged inconsistent."
        )
    if offline:
        parts.append(
            f"Judge: {', '.join(offline)}. This is NOT an LLM judge: P(method beats base) = sigmoid(r_method − "
            "r_base) from the reward model's scores, a win when it exceeds 0.5 + margin, a loss below 0.5 − margin; "
            "it shares the reward model's biases."
        )
    parts.append(
        f"Win, tie and loss are percentages of decided pairs with {confidence:.0%} percentile bootstrap intervals "
        "over prompts; inconsistent % is of decided pairs; invalid (no parsable verdict after one retry) and "
        "not judged (budget spent or API error) are percentages of all pairs."
    )
    return " ".join(parts)


def _rate_cell(row: dict, outcome: str) -> str:
    if row[f"{outcome}_pct"] is None:
        return "–"
    return f"{row[f'{outcome}_pct']:.1f} [{row[f'{outcome}_ci_low']:.1f}, {row[f'{outcome}_ci_high']:.1f}]"


def _judge_rows(summary: pl.DataFrame, dataset: str) -> list[list[str]]:
    rows = []
    for row in _judged(summary).filter(pl.col("dataset") == dataset).iter_rows(named=True):
        rows.append(
            [row["prompter"], row["frozen"], _method_label(row["method"], row["beta"]), str(row["judged_pairs"])]
            + [_rate_cell(row, outcome) for outcome in ("win", "tie", "loss")]
            + [_format(row[name], "{:.1f}") for name in ("inconsistent_pct", "invalid_pct", "not_judged_pct")]
        )
    return rows


USAGE_COLUMNS = ("judge_requests", "judge_retries", "judge_cached_calls", "judge_prompt_tokens", "judge_completion_tokens", "judge_cost_usd")


def _usage_cells(label: list[str], row: dict) -> list[str]:
    return label + [
        str(row["judge_requests"]), str(row["judge_retries"]), str(row["judge_cached_calls"]),
        f"{row['judge_prompt_tokens']} / {row['judge_completion_tokens']}", f"{row['judge_cost_usd']:.4f}",
    ]


def _one_row_per_judge_job(rows: pl.DataFrame) -> pl.DataFrame:
    """rlhf has no prompter: the summary repeats its row under every prompter; keep one, prompter null."""
    return rows.with_columns(
        prompter=pl.when(pl.col("method") == "rlhf").then(None).otherwise(pl.col("prompter"))
    ).unique(GROUP_KEYS, maintain_order=True)


def _usage_rows(summary: pl.DataFrame) -> list[list[str]]:
    """Judge calls, tokens and cost per judge job, then their total."""
    jobs = _one_row_per_judge_job(_judged(summary))
    rows = [
        _usage_cells(
            [row["prompter"] or "–", row["frozen"], f"{_method_label(row['method'], row['beta'])} ({row['dataset']})"], row
        )
        for row in jobs.iter_rows(named=True)
    ]
    totals = jobs.select(pl.col(name).sum() for name in USAGE_COLUMNS).row(0, named=True)
    return rows + [_usage_cells(["all", "", ""], totals)]


def _win_plot(summary: pl.DataFrame) -> bytes:
    """PNG of stacked win/tie/loss bars per judged method, one panel per dataset, win CI as an error bar."""
    judged = _judged(summary).filter(pl.col("win_pct").is_not_null())
    datasets = sorted(judged["dataset"].unique().to_list())
    heights = [judged.filter(pl.col("dataset") == d).height for d in datasets]
    fig, axes = plt.subplots(
        len(datasets), 1, figsize=(8.5, sum(0.45 * h + 1.2 for h in heights) + 0.6), squeeze=False,
        height_ratios=[0.45 * h + 1.2 for h in heights], layout="constrained",
    )
    for ax, dataset in zip(axes[:, 0], datasets):
        rows = _one_row_per_judge_job(judged.filter(pl.col("dataset") == dataset)).sort(
            "prompter", "frozen", _method_rank(), "method", "beta", nulls_last=[True, True, True, True, False]
        )
        labels = [
            _plot_label(f"{_method_label(row['method'], row['beta'])}: ")
            + (f"{_short_name(row['prompter'])} → " if row["prompter"] else "") + _short_name(row["frozen"])
            for row in rows.iter_rows(named=True)
        ]
        y = list(range(rows.height))[::-1]
        left = [0.0] * rows.height
        for outcome in ("win", "tie", "loss"):
            widths = rows[f"{outcome}_pct"].to_list()
            ax.barh(y, widths, left=left, color=OUTCOME_COLOURS[outcome], edgecolor="black", linewidth=0.5, label=outcome)
            left = [a + b for a, b in zip(left, widths)]
        for position, row in zip(y, rows.iter_rows(named=True)):
            ax.errorbar(
                row["win_pct"], position, xerr=[[row["win_pct"] - row["win_ci_low"]], [row["win_ci_high"] - row["win_pct"]]],
                color="black", capsize=3, linewidth=1,
            )
            ax.annotate(
                f"{row['win_pct']:.0f}%", (row["win_ci_high"], position), xytext=(4, 0), textcoords="offset points",
                va="center", fontsize=8, bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
            )
        ax.axvline(50.0, color="black", linewidth=0.6, linestyle=":")
        ax.set_yticks(y, labels, fontsize=9)
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of decided pairs against base")
        ax.set_title(dataset, fontweight="bold")
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=OUTCOME_COLOURS[o], edgecolor="black", linewidth=0.5) for o in OUTCOME_COLOURS]
    fig.legend(handles, list(OUTCOME_COLOURS), loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle("Win rate against base (error bar: CI of the win rate)", fontsize=12)
    return _png(fig)


def pick_examples(verdicts: pl.DataFrame, scores: list[pa.Table] | pl.DataFrame, per_method: int) -> list[dict]:
    """Up to `per_method` judged pairs per (dataset, prompter, frozen, method, beta), one per verdict kind in
    the order win, loss, tie, invalid, not judged (first prompt id within a kind): prompt, rewrite, both
    answers, the verdict and the judge's reasons."""
    if per_method == 0 or verdicts.is_empty():
        return []
    frame = _scores_frame(scores)
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
            "dataset", "prompter", "frozen", _method_rank(), "method", "beta", rank, "prompt_id", "sample_index",
            nulls_last=[False, True, False, False, False, False, False, False, False],
        )
        .unique([*GROUP_KEYS, "verdict"], keep="first", maintain_order=True)
        .filter(pl.int_range(pl.len()).over(GROUP_KEYS) < per_method)
    )
    return picked.to_dicts()


def _shorten(text: str) -> str:
    cut = len(text) - EXAMPLE_CHARACTERS
    return text if cut <= 0 else f"{text[:EXAMPLE_CHARACTERS]}… [{cut} more characters]"


def _example_parts(example: dict) -> list[tuple[str, str]]:
    """(label, text) of one example, plain text, in reading order; the rewrite only when there is one."""
    parts = [("prompt x", example["prompt"])]
    if example["model_input"] != example["prompt"]:
        parts.append(("rewrite x'", example["model_input"]))
    method = _method_label(example["method"], example["beta"])
    parts += [(f"{method} answer", example["answer"]), ("base answer", example["base_answer"])]
    if example["judge"].startswith("offline"):  # one decision from the rewards, not two readings
        return parts + [("judge", f"{example['verdict']}: {example['reason_method_first']}")]
    for order, shown in (("method_first", "method's answer shown as A"), ("base_first", "base's answer shown as A")):
        raw = example[f"verdict_{order}"] or "not judged"
        parts.append((f"judge, {shown}", f"{raw}: {example[f'reason_{order}'] or example['not_judged_reason'] or ''}"))
    return parts


def _example_title(example: dict) -> str:
    who = f"{example['prompter']} → {example['frozen']}" if example["prompter"] else example["frozen"]
    flag = ", inconsistent" if example["inconsistent"] else ""
    return f"{example['dataset']} · {who} · {_method_label(example['method'], example['beta'])}: {example['verdict']}{flag}"


def _judge_markdown(summary: pl.DataFrame, note: str, plot_link: str, examples: list[dict]) -> list[str]:
    lines = ["## Win rate against base", "", note, ""]
    for dataset in sorted(_judged(summary)["dataset"].unique().to_list()):
        lines += [f"### {_markdown_cell(dataset)}", "", *_markdown_table(JUDGE_HEADER, _judge_rows(summary, dataset))]
    lines += [f"![Win rate against base]({plot_link})", ""]
    if _calls_an_api(summary):
        lines += ["### Judge usage", "", *_markdown_table(USAGE_HEADER, _usage_rows(summary))]
    if examples:
        lines += ["### Examples", ""]
        for example in examples:
            lines += [f"#### {_markdown_cell(_example_title(example))}", ""]
            for label, text in _example_parts(example):
                quoted = "\n".join(f"> {line}" for line in html.escape(_shorten(text), quote=False).splitlines() or [""])
                lines += [f"**{label}**", "", quoted, ""]
    return lines


def _judge_html(summary: pl.DataFrame, note: str, png: bytes, examples: list[dict]) -> list[str]:
    esc = html.escape
    parts = ["<h2>Win rate against base</h2>", f"<p>{esc(note)}</p>"]
    for dataset in sorted(_judged(summary)["dataset"].unique().to_list()):
        parts += [f"<h3>{esc(dataset)}</h3>", *_html_table(JUDGE_HEADER, _judge_rows(summary, dataset))]
    parts.append(_html_image("Win rate against base", png))
    if _calls_an_api(summary):
        parts += ["<h3>Judge usage</h3>", *_html_table(USAGE_HEADER, _usage_rows(summary))]
    if examples:
        parts.append("<h3>Examples</h3>")
        for example in examples:
            parts.append(f"<h4>{esc(_example_title(example))}</h4>")
            for label, text in _example_parts(example):
                parts.append(f'<p><b>{esc(label)}</b></p><blockquote class="example">{esc(_shorten(text))}</blockquote>')
    return parts


# ---------------------------------------------------------------------------- training curves

TRAINING_PANELS = (
    ("score_mean", "score_mean: reward model score"),
    ("kl", "kl: KL to the reference policy"),
    ("entropy", "entropy: policy entropy per token"),
    ("value_loss", "value_loss"),
)
# Parts of a PPO step, in bar order: column -> (legend label, colour, hatch).
STEP_PARTS = {
    "time_policy_generation": ("policy generation", "#4c72b0", None),
    "time_frozen_generation": ("frozen generation", "#dd8452", None),
    "time_scoring": ("scoring", "#c44e52", None),
    "time_reward": ("reward (frozen generation + scoring)", "#e6a06b", "//"),
    "time_update": ("update", "#55a868", None),
    "other": ("other", "#c7c7c7", None),
}
RUN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
MARKER_MAX_STEPS = 30  # draw markers on runs this short, so one- or few-step runs stay visible


def _training_frames(training: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """Each run's metrics checked against PPO_METRICS and sorted by step; a run without steps is an error."""
    runs = {}
    for label, frame in training.items():
        checked = pl.from_arrow(conform(frame.to_arrow(), PPO_METRICS, f"training metrics of {label!r}"))
        if checked.is_empty():
            raise ValueError(f"training metrics of {label!r} have no steps")
        runs[label] = checked.sort("step")
    return runs


def _has_reward_split(frame: pl.DataFrame) -> bool:
    """Whether every step reports the frozen-generation / scoring split of the reward time."""
    return frame["time_frozen_generation"].null_count() == 0 and frame["time_scoring"].null_count() == 0


def _step_parts(frame: pl.DataFrame) -> list[str]:
    """The columns a run's step time is split into: the reward split where known, else time_reward."""
    reward = ["time_frozen_generation", "time_scoring"] if _has_reward_split(frame) else ["time_reward"]
    return ["time_policy_generation", *reward, "time_update"]


def _mean_step_split(frame: pl.DataFrame) -> dict[str, float]:
    """Mean seconds per part; `other` is the rest of time_step (never negative), so parts sum to the mean step."""
    parts = _step_parts(frame)
    means = {part: float(frame[part].mean()) for part in parts}
    rest = (pl.col("time_step") - pl.sum_horizontal(parts)).clip(lower_bound=0.0)
    means["other"] = float(frame.select(rest.mean()).item())
    return means


def _plot_label(label: str, width: int | None = None) -> str:
    """A run label for matplotlib: `$` escaped (no mathtext), optionally wrapped."""
    text = label.replace("$", r"\$")
    return "\n".join(textwrap.wrap(text, width)) if width else text


def _training_plot(runs: dict[str, pl.DataFrame]) -> bytes:
    """PNG bytes: one panel per metric with one line per run (x = step), and the mean step-time split below.

    The split panel is a subfigure of its own, so its long run labels do not widen the metric panels.
    """
    colours = dict(zip(runs, RUN_COLOURS * (1 + len(runs) // len(RUN_COLOURS))))
    markers = {label: "o" if frame.height <= MARKER_MAX_STEPS else None for label, frame in runs.items()}
    split_height = 1.2 + 0.55 * len(runs)
    legend_height = 0.5 + 0.25 * math.ceil(len(runs) / 2)
    fig = plt.figure(figsize=(16, 4.2 + split_height + legend_height), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[4.2, split_height + legend_height])
    first = min(frame["step"].min() for frame in runs.values())
    last = max(frame["step"].max() for frame in runs.values())
    for ax, (column, title) in zip(top.subplots(1, len(TRAINING_PANELS)), TRAINING_PANELS):
        for label, frame in runs.items():
            single = frame.height == 1
            ax.plot(
                frame["step"],
                frame[column],
                color=colours[label],
                marker=markers[label],
                markersize=7 if single else 3.5,
                linewidth=1.6,
                zorder=3 if single else 2,
            )
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("PPO step")
        if last - first < 2:  # pad very short runs, or the integer tick locator falls back to fractions
            ax.set_xlim(first - 1, last + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    top.suptitle("PPO training curves", fontsize=13)
    _draw_step_split(bottom.subplots(), runs, colours)
    handles = [plt.Line2D([], [], color=colours[label], marker=markers[label], linewidth=1.6) for label in runs]
    bottom.legend(
        handles,
        [_plot_label(label) for label in runs],
        loc="outside lower center",
        ncol=min(2, len(runs)),
        frameon=False,
        title="run",
    )
    return _png(fig, dpi=100)


def _draw_step_split(ax, runs: dict[str, pl.DataFrame], colours: dict[str, str]) -> None:
    """A stacked horizontal bar per run of its mean step time by part, the total at the bar's end."""
    used = []
    labels = list(runs)
    for row, label in enumerate(labels):
        left = 0.0
        for part, seconds in _mean_step_split(runs[label]).items():
            if part == "other" and seconds <= 0.0:
                continue
            name, colour, hatch = STEP_PARTS[part]
            ax.barh(row, seconds, left=left, height=0.6, color=colour, hatch=hatch, edgecolor="white", linewidth=0.8)
            left += seconds
            used.append(part)
        ax.annotate(f"{left:.2f} s", (left, row), xytext=(4, 0), textcoords="offset points", va="center", fontsize=9)
    ax.set_yticks(range(len(labels)), [_plot_label(label, 48) for label in labels], fontsize=9)
    for tick, label in zip(ax.get_yticklabels(), labels):
        tick.set_color(colours[label])
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first run on top
    ax.set_xlabel("seconds")
    ax.set_title("step time split (mean seconds per step)", fontsize=11)
    ax.margins(x=0.12)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    parts = [part for part in STEP_PARTS if part in used]
    handles = [
        plt.Rectangle((0, 0), 1, 1, facecolor=STEP_PARTS[p][1], hatch=STEP_PARTS[p][2], edgecolor="white") for p in parts
    ]
    ax.legend(handles, [STEP_PARTS[p][0] for p in parts], loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8,
              frameon=False)


def _placeholder_plot(text: str) -> bytes:
    """A small PNG that says why there is nothing to plot, so a declared plot output still exists."""
    fig = plt.figure(figsize=(4, 1.5))
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=14, color="#555555")
    return _png(fig, dpi=100)


TRAINING_NOTE = (
    "score_mean is the reward model's raw score of the sampled responses (before the KL penalty); kl is the "
    "mean per-sequence KL of the policy to its reference. Step times are medians over steps in seconds, each "
    "part's median on its own, so the parts need not add up to the total; the plot shows means, where they do "
    "(other: time in a step outside the listed parts)."
)


TRAINING_TABLE_HEADER = ["statistic", "value"]


def _training_rows(frame: pl.DataFrame) -> list[tuple[str, str]]:
    """(statistic, value) display cells of one run's table: plain text, escaped by the caller."""
    first, last = frame.row(0, named=True), frame.row(-1, named=True)
    rows = [
        ("steps", str(frame.height)),
        ("score_mean, first step", _format(first["score_mean"])),
        ("score_mean, last step", _format(last["score_mean"])),
        ("kl, last step", _format(last["kl"])),
        ("median step time (s)", _format(frame["time_step"].median())),
    ]
    for part in _step_parts(frame):
        rows.append((f"… {STEP_PARTS[part][0]} (s)", _format(frame[part].median())))
    return rows


def _training_markdown(runs: dict[str, pl.DataFrame], plot_link: str) -> list[str]:
    """The Markdown training section: the plot link, then a small table per run."""
    lines = ["## Training", "", TRAINING_NOTE, "", f"![PPO training curves]({plot_link})", ""]
    for label, frame in runs.items():
        lines += [f"### {_markdown_cell(label)}", "", *_markdown_table(TRAINING_TABLE_HEADER, _training_rows(frame))]
    return lines


def _training_html(runs: dict[str, pl.DataFrame], png: bytes) -> list[str]:
    """The HTML training section: the plot embedded, then a small table per run."""
    esc = html.escape
    parts = ["<h2>Training</h2>", f"<p>{esc(TRAINING_NOTE)}</p>", _html_image("PPO training curves", png)]
    for label, frame in runs.items():
        parts += [f"<h3>{esc(label)}</h3>", *_html_table(TRAINING_TABLE_HEADER, _training_rows(frame))]
    return parts


def _relative_link(target: str | os.PathLike, start: Path) -> str:
    """URL-quoted path of `target` relative to `start`, so the Markdown link survives moving the folder."""
    return quote(Path(os.path.relpath(Path(target).resolve(), start.resolve())).as_posix())


def write_report(
    summary: pl.DataFrame,
    *,
    markdown: str | os.PathLike,
    html: str | os.PathLike,
    mean_plot: str | os.PathLike,
    variance_plot: str | os.PathLike,
    accuracy_plot: str | os.PathLike | None = None,
    checkers: dict[str, str] | None = None,
    title: str = "Align-Pro evaluation",
    confidence: float = 0.95,
    training: dict[str, pl.DataFrame] | None = None,
    training_plot: str | os.PathLike | None = None,
    win_plot: str | os.PathLike | None = None,
    examples: list[dict] = (),
    frontier_plot: str | os.PathLike | None = None,
) -> None:
    """Write the Markdown and self-contained HTML reports, the mean / variance bar plots, training curves
    and win rates.

    `training` maps a run label (e.g. "rlhf tiny-frozen (bundled)") to its PPO_METRICS frame. With runs,
    `training_plot` is required: it gets the curves (score_mean, kl, entropy, value_loss per step, and the
    mean step-time split), and both reports get a "Training" section with the plot and a table per run.
    When the summary has judge columns filled, `win_plot` is required: both reports get a "Win rate against
    base" section (a Table-1-style table per dataset, the plot, the judge's usage and cost, and `examples`
    from `pick_examples`). When some gap is known (rlhf answers), both reports get a "Suboptimality gap"
    table per dataset. When alignpro or alignpro-star rows have a kl, `frontier_plot` is required: both
    reports get a "Reward–KL frontier" section with it. When some dataset has an accuracy (reference answers),
    `accuracy_plot` is required and `checkers` must name each such dataset's checker: the reward tables get an
    accuracy column, the note says which checker each dataset used, and both reports get a "Reward and
    accuracy" section with the plot of one against the other. A given plot path with nothing to draw gets a
    small placeholder PNG, so a workflow's declared output always exists. Everything is checked and rendered before the first file is
    written, and every file is written atomically.
    """
    if summary.is_empty():
        raise ValueError("empty summary: nothing to report")
    runs = _training_frames(training or {})
    if runs and training_plot is None:
        raise ValueError("training runs given without a training_plot path to draw them to")
    judged = not _judged(summary).is_empty()
    if judged and win_plot is None:
        raise ValueError("judged methods in the summary without a win_plot path to draw them to")
    frontier = not _frontier_points(summary).is_empty()
    if frontier and frontier_plot is None:
        raise ValueError("prompters with a measured kl in the summary without a frontier_plot path to draw them to")
    accuracy = _has_accuracy(summary)
    if accuracy and accuracy_plot is None:
        raise ValueError("accuracies in the summary without an accuracy_plot path to draw them to")
    mean_png = _bar_plot(summary, "mean_reward", "mean reward", "Mean reward (error bars: CI over prompts)", True)
    variance_png = _bar_plot(summary, "reward_variance", "reward variance", "Reward variance", False)
    training_png = _training_plot(runs) if runs else _placeholder_plot("no training runs")
    decided = judged and _judged(summary)["win_pct"].is_not_null().any()
    win_png = _win_plot(summary) if decided else _placeholder_plot("no judged pairs")
    frontier_png = _frontier_plot(summary) if frontier else _placeholder_plot("no prompter KLs")
    accuracy_png = _accuracy_plot(summary) if accuracy else _placeholder_plot("No dataset has\nreference answers.")
    note = _ci_note(confidence)
    if accuracy:
        note += " " + _accuracy_note(summary, checkers or {}, confidence)
    markdown_dir = Path(markdown).parent
    links = _relative_link(mean_plot, markdown_dir), _relative_link(variance_plot, markdown_dir)
    markdown_sections, html_sections = [], []
    if accuracy:
        markdown_sections += _accuracy_markdown(_relative_link(accuracy_plot, markdown_dir))
        html_sections += _accuracy_html(accuracy_png)
    if _gap_datasets(summary):
        gap_note = _gap_note(confidence)
        markdown_sections += _gap_markdown(summary, gap_note)
        html_sections += _gap_html(summary, gap_note)
    if frontier:
        markdown_sections += _frontier_markdown(_relative_link(frontier_plot, markdown_dir))
        html_sections += _frontier_html(frontier_png)
    if judged:
        judge_note = _judge_note(summary, confidence)
        markdown_sections += _judge_markdown(summary, judge_note, _relative_link(win_plot, markdown_dir), list(examples))
        html_sections += _judge_html(summary, judge_note, win_png, list(examples))
    if runs:
        markdown_sections += _training_markdown(runs, _relative_link(training_plot, markdown_dir))
        html_sections += _training_html(runs, training_png)
    markdown_text = _markdown(summary, title, note, *links, markdown_sections)
    html_text = _html(summary, title, note, mean_png, variance_png, html_sections)
    write_bytes(mean_plot, mean_png)
    write_bytes(variance_plot, variance_png)
    if accuracy_plot is not None:
        write_bytes(accuracy_plot, accuracy_png)
    if training_plot is not None:
        write_bytes(training_plot, training_png)
    if win_plot is not None:
        write_bytes(win_plot, win_png)
    if frontier_plot is not None:
        write_bytes(frontier_plot, frontier_png)
    write_bytes(markdown, markdown_text.encode("utf-8"))
    write_bytes(html, html_text.encode("utf-8"))
