"""Summarize scored responses per method and write the report (Markdown, HTML, two bar plots).

The numbers mirror the Align-Pro paper's Figures 2 and 3: the mean reward of each method, with a
confidence interval, and the variance of the reward over all sampled responses. With PPO training
runs (the Align-Pro prompters, the RLHF oracle) the report adds their training curves and a small
table per run.
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
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402

from matplotlib.ticker import MaxNLocator  # noqa: E402

from alignpro.atomic import write_bytes  # noqa: E402
from alignpro.tables import PPO_METRICS, SCORES, SUMMARY, conform  # noqa: E402

METHOD_ORDER = ("base", "sft", "alignpro", "rlhf")
METHOD_COLOURS = {"base": "#7f7f7f", "sft": "#1f77b4", "alignpro": "#ff7f0e", "rlhf": "#2ca02c"}
EXTRA_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#d62728")
GROUP_KEYS = ["dataset", "prompter", "frozen", "method"]
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
    """Mean reward and fallback flag per prompt: the independent units the CI is computed over."""
    return frame.group_by([*GROUP_KEYS, "prompt_id"]).agg(
        prompt_mean=pl.col("reward").mean(),
        fallback=pl.col("fallback").cast(pl.Float64).max(),
    )


def _confidence_interval(stats: pl.DataFrame, confidence: float) -> pl.DataFrame:
    """mean of per-prompt means +- t * standard error, null with fewer than two prompts."""
    quantiles = [t_quantile(0.5 + confidence / 2.0, n - 1) if n >= 2 else None for n in stats["n_prompts"]]
    half_width = pl.col("t") * pl.col("prompt_sd") / pl.col("n_prompts").sqrt()
    return stats.with_columns(t=pl.Series(quantiles, dtype=pl.Float64)).with_columns(
        ci_low=pl.col("prompt_mean_mean") - half_width,
        ci_high=pl.col("prompt_mean_mean") + half_width,
    )


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


def summarize(scores: list[pa.Table] | pl.DataFrame, *, prompters: list[str], confidence: float = 0.95) -> pl.DataFrame:
    """One SUMMARY row per (dataset, prompter, frozen, method).

    mean_reward and reward_variance (ddof=1) are over all samples; the CI is over per-prompt mean
    rewards because samples of one prompt are correlated; fallback_rate is the share of prompts
    whose rewrite fell back to the original prompt (null for methods without a prompter).
    """
    frame = _scores_frame(scores).select(
        pl.col([*GROUP_KEYS, "prompt_id"]).cast(pl.String),
        pl.col("reward").cast(pl.Float64),
        pl.col("fallback").cast(pl.Boolean),
    )
    sample_stats = frame.group_by(GROUP_KEYS).agg(
        n_samples=pl.len(),
        mean_reward=pl.col("reward").mean(),
        reward_variance=pl.when(pl.len() >= 2).then(pl.col("reward").var(ddof=1)),
    )
    prompt_stats = _per_prompt(frame).group_by(GROUP_KEYS).agg(
        n_prompts=pl.len(),
        prompt_mean_mean=pl.col("prompt_mean").mean(),
        prompt_sd=pl.col("prompt_mean").std(ddof=1),
        fallback_rate=pl.col("fallback").mean(),
    )
    stats = _confidence_interval(sample_stats.join(prompt_stats, on=GROUP_KEYS, nulls_equal=True), confidence)
    stats = _repeat_base_rows(stats, prompters)
    stats = stats.sort(["dataset", "prompter", "frozen", _method_rank(), "method"])
    return stats.select(pl.col(f.name).cast(SUMMARY_TYPES[str(f.type)]) for f in SUMMARY)


# ---------------------------------------------------------------------------- report files


def _ordered_methods(summary: pl.DataFrame) -> list[str]:
    """Methods present, in the fixed paper order, unknown ones last and alphabetical."""
    return summary.select("method").unique().sort(_method_rank(), "method")["method"].to_list()


def _method_colours(methods: list[str]) -> dict[str, str]:
    """Fixed colours for known methods, so every plot and run uses the same ones."""
    extras = iter(EXTRA_COLOURS * (1 + len(methods) // len(EXTRA_COLOURS)))
    return {m: METHOD_COLOURS[m] if m in METHOD_COLOURS else next(extras) for m in methods}


def _short_name(model: str) -> str:
    """`org/name` -> `name`: tick labels stay readable; the tables keep full names."""
    return model.rstrip("/").rsplit("/", 1)[-1]


def _bar_plot(summary: pl.DataFrame, value: str, ylabel: str, title: str, with_ci: bool) -> bytes:
    """PNG bytes of grouped bars: one subplot per dataset, groups = prompter -> frozen, bars = methods."""
    datasets = sorted(summary["dataset"].unique().to_list())
    methods = _ordered_methods(summary)
    colours = _method_colours(methods)
    ncols = min(3, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    max_groups = max(summary.filter(pl.col("dataset") == d).select("prompter", "frozen").n_unique() for d in datasets)
    width = max(4.5, 0.35 * len(methods) * max_groups + 1.5)
    figsize = (width * ncols, 4.2 * nrows + 1.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, layout="constrained")
    for ax, dataset in zip(axes.flat, datasets):
        rows = summary.filter(pl.col("dataset") == dataset)
        _draw_dataset(ax, rows, [m for m in methods if m in rows["method"]], colours, value, with_ci)
        ax.set_title(dataset, fontweight="bold")
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(datasets) :]:
        ax.set_visible(False)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=colours[m], edgecolor="black", linewidth=0.5) for m in methods]
    fig.legend(handles, methods, loc="outside lower center", ncol=len(methods), frameon=False, title="method")
    fig.suptitle(title, fontsize=13)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def _draw_dataset(ax, rows: pl.DataFrame, methods: list[str], colours: dict, value: str, with_ci: bool) -> None:
    """Bars of `value` for one dataset, with CI error bars and value labels beyond the bar or error bar."""
    pairs = rows.select("prompter", "frozen").unique().sort("prompter", "frozen").rows()
    bar_width = min(0.8 / len(methods), 0.35)
    for slot, method in enumerate(methods):
        for group, (prompter, frozen) in enumerate(pairs):
            match = rows.filter(method=method, prompter=prompter, frozen=frozen)
            if match.is_empty():
                continue
            row = match.row(0, named=True)
            x = group + (slot - (len(methods) - 1) / 2) * bar_width
            if row[value] is None:  # e.g. the variance of a single sample
                ax.annotate("n/a", (x, 0.0), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=7)
                continue
            low = high = row[value]
            error = None
            if with_ci and row["ci_low"] is not None:
                low, high = min(row["ci_low"], low), max(row["ci_high"], high)
                error = [[row[value] - low], [high - row[value]]]
            ax.bar(x, row[value], bar_width, yerr=error, capsize=3, color=colours[method], edgecolor="black", lw=0.5)
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


def _table_rows(summary: pl.DataFrame, dataset: str) -> list[list[str]]:
    """Display cells for one dataset's table: plain text, escaped by the caller."""
    rows = []
    for row in summary.filter(pl.col("dataset") == dataset).iter_rows(named=True):
        half = None if row["ci_low"] is None else (row["ci_high"] - row["ci_low"]) / 2.0
        mean = _format(row["mean_reward"]) + ("" if half is None else f" ± {half:.3f}")
        rows.append(
            [
                row["prompter"],
                row["frozen"],
                row["method"],
                f"{row['n_prompts']} / {row['n_samples']}",
                mean,
                _format(row["reward_variance"]),
                _format(row["fallback_rate"], "{:.1%}"),
            ]
        )
    return rows


TABLE_HEADER = [
    "prompter", "frozen", "method", "prompts / samples", "mean reward ± CI", "reward variance", "fallback rate"
]


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


def _markdown(
    summary: pl.DataFrame, title: str, note: str, mean_plot: str, variance_plot: str, training: list[str] = ()
) -> str:
    """The report as Markdown: a table per dataset, then the plots linked by relative path, then `training`."""
    lines = [f"# {_markdown_cell(title)}", "", note, ""]
    for dataset in sorted(summary["dataset"].unique().to_list()):
        lines += [f"## {_markdown_cell(dataset)}", "", "| " + " | ".join(TABLE_HEADER) + " |"]
        lines.append("|" + "---|" * len(TABLE_HEADER))
        lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in _table_rows(summary, dataset)]
        lines.append("")
    lines += ["## Plots", "", f"![Mean reward]({mean_plot})", "", f"![Reward variance]({variance_plot})", ""]
    return "\n".join([*lines, *training])


HTML_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:80em}"
    "table{border-collapse:collapse;margin-bottom:1.5em}"
    "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
    "th{background:#f0f0f0}img{max-width:100%}"
)


def _html_image(alt: str, png: bytes) -> str:
    """An image paragraph with the PNG inline as a base64 data URI."""
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"></p>'


def _html(
    summary: pl.DataFrame, title: str, note: str, mean_png: bytes, variance_png: bytes, training: list[str] = ()
) -> str:
    """The same report as one self-contained page: inline style, plots as base64 data URIs, then `training`."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>',
        f"<style>{HTML_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>{esc(note)}</p>",
    ]
    for dataset in sorted(summary["dataset"].unique().to_list()):
        header = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in TABLE_HEADER) + "</tr>"
        rows = ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in _table_rows(summary, dataset)]
        parts += [f"<h2>{esc(dataset)}</h2>", "<table>", header, *rows, "</table>"]
    parts.append("<h2>Plots</h2>")
    parts += [_html_image("Mean reward", mean_png), _html_image("Reward variance", variance_png), *training]
    parts.append("</body></html>")
    return "\n".join(parts)


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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


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


def _no_training_plot() -> bytes:
    """A small PNG that says there were no training runs, so a declared plot output still exists."""
    fig = plt.figure(figsize=(4, 1.5))
    fig.text(0.5, 0.5, "no training runs", ha="center", va="center", fontsize=14, color="#555555")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


TRAINING_NOTE = (
    "score_mean is the reward model's raw score of the sampled responses (before the KL penalty); kl is the "
    "mean per-sequence KL of the policy to its reference. Step times are medians over steps in seconds, each "
    "part's median on its own, so the parts need not add up to the total; the plot shows means, where they do "
    "(other: time in a step outside the listed parts)."
)


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
        lines += [f"### {_markdown_cell(label)}", "", "| statistic | value |", "|---|---|"]
        lines += [f"| {_markdown_cell(name)} | {_markdown_cell(value)} |" for name, value in _training_rows(frame)]
        lines.append("")
    return lines


def _training_html(runs: dict[str, pl.DataFrame], png: bytes) -> list[str]:
    """The HTML training section: the plot embedded, then a small table per run."""
    esc = html.escape
    parts = ["<h2>Training</h2>", f"<p>{esc(TRAINING_NOTE)}</p>", _html_image("PPO training curves", png)]
    for label, frame in runs.items():
        rows = [f"<tr><td>{esc(name)}</td><td>{esc(value)}</td></tr>" for name, value in _training_rows(frame)]
        parts += [f"<h3>{esc(label)}</h3>", "<table>", "<tr><th>statistic</th><th>value</th></tr>", *rows, "</table>"]
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
    title: str = "Align-Pro evaluation",
    confidence: float = 0.95,
    training: dict[str, pl.DataFrame] | None = None,
    training_plot: str | os.PathLike | None = None,
) -> None:
    """Write the Markdown and self-contained HTML reports, the mean / variance bar plots and training curves.

    `training` maps a run label (e.g. "rlhf tiny-frozen (bundled)") to its PPO_METRICS frame. With runs,
    `training_plot` is required: it gets the curves (score_mean, kl, entropy, value_loss per step, and the
    mean step-time split), and both reports get a "Training" section with the plot and a table per run.
    With no runs (None or {}) neither report mentions training; a given `training_plot` then gets a small
    "no training runs" placeholder PNG, so a workflow's declared output always exists. Everything is
    checked and rendered before the first file is written, and every file is written atomically.
    """
    if summary.is_empty():
        raise ValueError("empty summary: nothing to report")
    runs = _training_frames(training or {})
    if runs and training_plot is None:
        raise ValueError("training runs given without a training_plot path to draw them to")
    mean_png = _bar_plot(summary, "mean_reward", "mean reward", "Mean reward (error bars: CI over prompts)", True)
    variance_png = _bar_plot(summary, "reward_variance", "reward variance", "Reward variance", False)
    training_png = _training_plot(runs) if runs else _no_training_plot()
    note = _ci_note(confidence)
    markdown_dir = Path(markdown).parent
    links = _relative_link(mean_plot, markdown_dir), _relative_link(variance_plot, markdown_dir)
    training_markdown = _training_markdown(runs, _relative_link(training_plot, markdown_dir)) if runs else []
    training_html = _training_html(runs, training_png) if runs else []
    markdown_text = _markdown(summary, title, note, *links, training_markdown)
    html_text = _html(summary, title, note, mean_png, variance_png, training_html)
    write_bytes(mean_plot, mean_png)
    write_bytes(variance_plot, variance_png)
    if training_plot is not None:
        write_bytes(training_plot, training_png)
    write_bytes(markdown, markdown_text.encode("utf-8"))
    write_bytes(html, html_text.encode("utf-8"))
