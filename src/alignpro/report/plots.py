"""The report's plots, each drawn from the summary (or the training metrics) to PNG bytes: mean reward
and reward variance bars, reward against accuracy, the reward–KL frontier, win rates against base, and
the training curves. Every plot shows a method in its registry colour (`alignpro.systems.METHODS`);
beta variants of one method are lighter and hatched.
"""

from __future__ import annotations

import io
import math
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.colors import to_hex, to_rgb  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

from alignpro.systems import METHODS, method_rank
from alignpro.systems import label as method_label  # noqa: E402
from alignpro.trainers import TRAINERS

EXTRA_COLOURS = ("#8c564b", "#e377c2", "#17becf", "#bcbd22", "#d62728")  # methods outside the registry
FRONTIER_METHODS = (*(trainer.method for trainer in TRAINERS.values()), "alignpro-star")
OUTCOME_COLOURS = {"win": "#2ca02c", "tie": "#c7c7c7", "loss": "#d62728"}


def method_series(summary: pl.DataFrame) -> pl.DataFrame:
    """The (method, beta) pairs present with their label, in display order: paper order, then beta, null first."""
    pairs = summary.select("method", "beta").unique().sort(method_rank(), "method", "beta")
    return pairs.with_columns(label=pl.Series([method_label(m, b) for m, b in pairs.iter_rows()], dtype=pl.String))


def with_labels(rows: pl.DataFrame) -> pl.DataFrame:
    """`rows` with the label column of `series`, so a plot can pick one (method, beta) by name."""
    return rows.join(method_series(rows), on=["method", "beta"], how="left", nulls_equal=True)


def _method_colours(methods: list[str]) -> dict[str, str]:
    """Fixed colours for known methods, so every plot and run uses the same ones."""
    extras = iter(EXTRA_COLOURS * (1 + len(methods) // len(EXTRA_COLOURS)))
    return {m: METHODS[m].colour if m in METHODS else next(extras) for m in methods}


def _lighter(colour: str, amount: float) -> str:
    """`colour` blended towards white by `amount` (0: unchanged, 1: white)."""
    return to_hex([c + (1.0 - c) * amount for c in to_rgb(colour)])


def series_styles(series: pl.DataFrame) -> dict[str, tuple[str, str | None]]:
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
    """The figure as PNG bytes, grown to hold every legend and label whatever their length (a legend
    below a narrow one-group bar chart is wider than the chart); the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return buffer.getvalue()


def bar_plot(summary: pl.DataFrame, value: str, ylabel: str, title: str, with_ci: bool) -> bytes:
    """PNG bytes of grouped bars: one subplot per dataset, groups = prompter -> frozen, bars = (method, beta)."""
    datasets = sorted(summary["dataset"].unique().to_list())
    series = method_series(summary)
    labels, styles = series["label"].to_list(), series_styles(series)
    labelled = with_labels(summary)
    ncols = min(3, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    max_groups = max(summary.filter(pl.col("dataset") == d).select("prompter", "frozen").n_unique() for d in datasets)
    width = max(4.5, 0.35 * len(labels) * max_groups + 1.5)
    figsize = (width * ncols, 4.2 * nrows + 1.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, layout="constrained")
    for ax, dataset in zip(axes.flat, datasets):
        rows = labelled.filter(pl.col("dataset") == dataset)
        draw_dataset(ax, rows, [label for label in labels if label in rows["label"]], styles, value, with_ci)
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


def draw_dataset(ax, rows: pl.DataFrame, labels: list[str], styles: dict, value: str, with_ci: bool) -> None:
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


def _draw_length(ax, rows: pl.DataFrame, styles: dict[str, tuple[str, str | None]], markers: dict[str, str]) -> None:
    """One (dataset, prompter, frozen) panel: a point per method at (mean answer length, mean reward), the
    reward's CI as an error bar."""
    for row in rows.iter_rows(named=True):
        reward = row["mean_reward"]
        yerr = None if row["ci_low"] is None else [[reward - row["ci_low"]], [row["ci_high"] - reward]]
        ax.errorbar(
            [row["mean_tokens"]], [reward], yerr=yerr, color=styles[row["label"]][0], marker=markers[row["label"]],
            markersize=7, markeredgecolor="black", markeredgewidth=0.5, capsize=3, elinewidth=1, alpha=0.85,
            label=row["label"],
        )
    ax.set_xlabel("mean answer length (tokens)")
    ax.set_ylabel("mean reward")
    ax.margins(x=0.15, y=0.15)
    ax.grid(alpha=0.3)


def _method_panels(summary: pl.DataFrame, shown: pl.DataFrame, draw, title: str) -> bytes:
    """PNG of one panel per (dataset, prompter, frozen) of `shown`, each drawn by `draw(ax, rows, styles,
    markers)` in the methods' colours of the bar plots, with one legend."""
    panels = shown.select("dataset", "prompter", "frozen").unique().sort(pl.all()).rows()
    series = method_series(summary)
    styles = series_styles(series)
    markers = dict(zip(series["label"], ACCURACY_MARKERS * (1 + series.height // len(ACCURACY_MARKERS))))
    labelled = with_labels(shown)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    legend_rows = math.ceil(series.height / (3 * ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(max(7.0, 5.5 * ncols), 4.3 * nrows + 0.3 * legend_rows + 1.0), squeeze=False, layout="constrained"
    )
    legend = {}
    for ax, (dataset, prompter, frozen) in zip(axes.flat, panels):
        draw(ax, labelled.filter(dataset=dataset, prompter=prompter, frozen=frozen), styles, markers)
        ax.set_title(_plot_label(f"{dataset}: {_short_name(prompter)} → {_short_name(frozen)}"), fontsize=10)
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    order = [label for label in method_series(shown)["label"] if label in legend]
    fig.legend(
        [legend[label] for label in order], [_plot_label(label) for label in order], loc="outside lower center",
        ncol=min(len(order), 3 * ncols), frameon=False, title="method",
    )
    fig.suptitle(title, fontsize=12)
    return _png(fig)


def accuracy_plot(summary: pl.DataFrame) -> bytes:
    """PNG of mean reward against accuracy, one panel per (dataset, prompter, frozen) with reference answers."""
    shown = summary.filter(pl.col("accuracy").is_not_null())
    return _method_panels(summary, shown, _draw_accuracy, "Mean reward against accuracy (error bars: CIs over prompts)")


def length_plot(summary: pl.DataFrame) -> bytes:
    """PNG of mean reward against mean answer length, one panel per (dataset, prompter, frozen): a method
    whose reward rises with its length alone may be rewarded for length, not quality."""
    title = "Mean reward against mean answer length (error bars: reward CIs over prompts)"
    return _method_panels(summary, summary, _draw_length, title)


def frontier_points(summary: pl.DataFrame) -> pl.DataFrame:
    """The prompter rows with a measured KL (trained prompters, ρ*): without any there is no frontier to draw."""
    return summary.filter(pl.col("method").is_in(FRONTIER_METHODS), pl.col("kl").is_not_null())


def _draw_points(ax, points: pl.DataFrame, colour: str, marker: str, label: str, notes: list[str], joined: bool) -> list:
    """Points at (kl, mean reward) with the reward CI as a vertical error bar, each with its note at the
    point (returned, to be moved off the points and each other once the panel is laid out)."""
    if points.is_empty():
        return []
    reward = points["mean_reward"]
    below = (reward - points["ci_low"].fill_null(reward)).to_list()
    above = (points["ci_high"].fill_null(reward) - reward).to_list()
    ax.errorbar(
        points["kl"].to_list(), reward.to_list(), yerr=[below, above], color=colour, marker=marker,
        markersize=12 if marker == "*" else 6, linestyle="-" if joined else "none", capsize=3, label=label,
    )
    return [ax.text(x, y, note, fontsize=7, color="#333333") for x, y, note in zip(points["kl"], reward, notes)]


def _place_notes(ax, notes: list) -> None:
    """Move the notes of a laid-out panel off its points and off each other (adjustText), each linked to
    its point by a thin line."""
    from adjustText import adjust_text

    if notes:
        points = [note.get_position() for note in notes]
        adjust_text(
            notes, x=[x for x, _ in points], y=[y for _, y in points], ax=ax, expand=(1.3, 1.6),
            arrowprops={"arrowstyle": "-", "color": "#999999", "linewidth": 0.5},
        )


def _beta_notes(points: pl.DataFrame) -> list[str]:
    return [f"β={beta:g}" for beta in points["beta"]]


def _draw_frontier(ax, rows: pl.DataFrame) -> list:
    """One (dataset, prompter, frozen) panel: reference lines, then the sft points, each trainer's
    prompters (its β sweep joined, its section's own run a star) and ρ*'s; returns the points' notes."""
    for method in ("base", "sft", "rlhf"):
        reference = rows.filter(pl.col("method") == method, pl.col("beta").is_null())
        if reference.height:
            ax.axhline(
                reference["mean_reward"][0], color=METHODS[method].colour, linestyle="--", linewidth=1,
                label=f"{method} mean reward",
            )
    measured = rows.filter(pl.col("kl").is_not_null())
    star = measured.filter(pl.col("method") == "alignpro-star").sort("beta")
    sft = measured.filter(pl.col("method") == "sft")
    notes = _draw_points(ax, sft, METHODS["sft"].colour, "D", "sft (KL 0)", ["sft"] * sft.height, False)
    for trainer in TRAINERS.values():
        sweep = measured.filter(pl.col("method") == trainer.method, pl.col("beta").is_not_null()).sort("beta")
        main = measured.filter(pl.col("method") == trainer.method, pl.col("beta").is_null())
        colour, section = METHODS[trainer.method].colour, f"{trainer.name} section"
        notes += _draw_points(ax, sweep, colour, "o", f"{trainer.method}, β sweep", _beta_notes(sweep), True)
        notes += _draw_points(ax, main, colour, "*", f"{trainer.method}, {section}", [section] * main.height, False)
    notes += _draw_points(ax, star, METHODS["alignpro-star"].colour, "s", "alignpro-star (ρ*)", _beta_notes(star), True)
    ax.set_xlabel("KL to ρ_sft")
    ax.set_ylabel("mean reward")
    ax.margins(x=0.15, y=0.15)
    ax.grid(alpha=0.3)
    return notes


def frontier_plot(summary: pl.DataFrame) -> bytes:
    """PNG of the reward–KL frontier, one panel per (dataset, prompter, frozen) that has prompter KLs."""
    panels = frontier_points(summary).select("dataset", "prompter", "frozen").unique().sort(pl.all()).rows()
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    legend_rows = 4 if ncols == 1 else 2  # reference lines and point families: at most 7 entries
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(max(7.0, 5.5 * ncols), 4.3 * nrows + 0.3 * legend_rows + 0.8), squeeze=False,
        layout="constrained",
    )
    legend, notes = {}, {}
    for ax, (dataset, prompter, frozen) in zip(axes.flat, panels):
        notes[ax] = _draw_frontier(ax, summary.filter(dataset=dataset, prompter=prompter, frozen=frozen))
        ax.set_title(_plot_label(f"{dataset}: {_short_name(prompter)} → {_short_name(frozen)}"), fontsize=10)
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.legend(
        list(legend.values()), list(legend), loc="outside lower center", ncol=math.ceil(len(legend) / legend_rows), frameon=False
    )
    fig.suptitle("Reward–KL frontier (error bars: CI over prompts)", fontsize=12)
    fig.canvas.draw()  # the constrained layout fixes each panel's size, which the notes' placement needs
    for ax, panel_notes in notes.items():
        _place_notes(ax, panel_notes)
    return _png(fig)


def _interval_error(row: dict, outcome: str) -> list[list[float]] | None:
    """errorbar's xerr for a rate's interval; None (no bar) where the interval is null (under two prompts)."""
    if row[f"{outcome}_ci_low"] is None:
        return None
    return [[row[f"{outcome}_pct"] - row[f"{outcome}_ci_low"]], [row[f"{outcome}_ci_high"] - row[f"{outcome}_pct"]]]


def win_plot(rates: pl.DataFrame) -> bytes:
    """PNG of stacked win/tie/loss bars per judged method against base, one panel per (dataset, judge), the
    win CI as an error bar and the length-controlled win rate as a diamond with its CI."""
    decided = rates.filter(pl.col("win_pct").is_not_null())
    panels = decided.select("dataset", "judge").unique().sort(pl.all()).rows()
    heights = [decided.filter(dataset=d, judge=j).height for d, j in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(8.5, sum(0.45 * h + 1.2 for h in heights) + 0.6), squeeze=False,
        height_ratios=[0.45 * h + 1.2 for h in heights], layout="constrained",
    )
    for ax, (dataset, judge) in zip(axes[:, 0], panels):
        rows = decided.filter(dataset=dataset, judge=judge).sort(
            "prompter", "frozen", method_rank(), "method", "beta", nulls_last=[True, True, True, True, False]
        )
        labels = [
            _plot_label(f"{method_label(row['method'], row['beta'])}: ")
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
            ax.errorbar(row["win_pct"], position, xerr=_interval_error(row, "win"), color="black", capsize=3, linewidth=1)
            if row["lc_win_pct"] is not None:
                ax.errorbar(
                    row["lc_win_pct"], position - 0.28, xerr=_interval_error(row, "lc_win"),
                    color="black", marker="D", markersize=5, markerfacecolor="white", capsize=2, linewidth=0.8,
                )
            ax.annotate(
                f"{row['win_pct']:.0f}%", (row["win_ci_high"] if row["win_ci_high"] is not None else row["win_pct"], position),
                xytext=(4, 0), textcoords="offset points",
                va="center", fontsize=8, bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
            )
        ax.axvline(50.0, color="black", linewidth=0.6, linestyle=":")
        ax.set_yticks(y, labels, fontsize=9)
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of decided pairs against base")
        ax.set_title(f"{dataset} · judge {judge}", fontweight="bold")
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=OUTCOME_COLOURS[o], edgecolor="black", linewidth=0.5) for o in OUTCOME_COLOURS]
    handles.append(plt.Line2D([], [], color="black", marker="D", markerfacecolor="white", linestyle="none"))
    fig.legend(handles, [*OUTCOME_COLOURS, "length-controlled win"], loc="outside lower center", ncol=4, frameon=False)
    fig.suptitle("Win rate against base (error bars: CIs)", fontsize=12)
    return _png(fig)


TRAINING_PANELS = (
    ("score_mean", "score_mean: reward model score"),
    ("kl", "kl: KL to the reference policy"),
    ("entropy", "entropy: policy entropy per token"),
    ("value_loss", "value_loss (PPO's value head)"),
)
# Parts of a training step, in bar order: column -> (legend label, colour, hatch).
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


def _has_reward_split(frame: pl.DataFrame) -> bool:
    """Whether every step reports the frozen-generation / scoring split of the reward time."""
    return frame["time_frozen_generation"].null_count() == 0 and frame["time_scoring"].null_count() == 0


def step_parts(frame: pl.DataFrame) -> list[str]:
    """The columns a run's step time is split into: the reward split where known, else time_reward; policy
    generation and update where the trainer times them (TRL's trainers leave the update in `other`)."""
    reward = ["time_frozen_generation", "time_scoring"] if _has_reward_split(frame) else ["time_reward"]
    timed = [part for part in ("time_policy_generation", "time_update") if frame[part].null_count() == 0]
    return [part for part in ("time_policy_generation", *reward, "time_update") if part in timed or part in reward]


def _mean_step_split(frame: pl.DataFrame) -> dict[str, float]:
    """Mean seconds per part; `other` is the rest of time_step (never negative), so parts sum to the mean step."""
    parts = step_parts(frame)
    means = {part: float(frame[part].mean()) for part in parts}
    rest = (pl.col("time_step") - pl.sum_horizontal(parts)).clip(lower_bound=0.0)
    means["other"] = float(frame.select(rest.mean()).item())
    return means


def _plot_label(label: str, width: int | None = None) -> str:
    """A run label for matplotlib: `$` escaped (no mathtext), optionally wrapped."""
    text = label.replace("$", r"\$")
    return "\n".join(textwrap.wrap(text, width)) if width else text


def training_plot(runs: dict[str, pl.DataFrame]) -> bytes:
    """PNG bytes: one panel per metric with one line per run (x = step), and the mean step-time split below.

    The split panel is a subfigure of its own, so its long run labels do not widen the metric panels.
    """
    colours = run_colours(runs)
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
        ax.set_xlabel("step")
        if last - first < 2:  # pad very short runs, or the integer tick locator falls back to fractions
            ax.set_xlim(first - 1, last + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    top.suptitle("training curves", fontsize=13)
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


def run_colours(runs: dict[str, pl.DataFrame]) -> dict[str, str]:
    """Each training run's colour, by its place among the runs, cycling through RUN_COLOURS."""
    return dict(zip(runs, RUN_COLOURS * (1 + len(runs) // len(RUN_COLOURS))))


def budget_runs(runs: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """The training runs that counted the frozen model's answers (the trained prompters'; rlhf's policy is
    the frozen model itself, and has no such count)."""
    return {label: frame for label, frame in runs.items() if frame["frozen_calls"].null_count() == 0}


def budget_plot(runs: dict[str, pl.DataFrame]) -> bytes:
    """PNG of each run's training reward (score_mean per step) against the frozen model's answers it had
    asked for by then: every trainer on one budget axis, in the training curves' colours."""
    colours = run_colours(runs)  # of every run, so each keeps its training curves' colour
    runs = budget_runs(runs)
    fig, ax = plt.subplots(figsize=(9, 4.8 + 0.3 * len(runs)), layout="constrained")
    for label, frame in runs.items():
        ax.plot(
            frame["frozen_calls"], frame["score_mean"], color=colours[label], linewidth=1.6,
            marker="o" if frame.height <= MARKER_MAX_STEPS else None, markersize=3.5, label=_plot_label(label, 60),
        )
    ax.set_xlabel("frozen-model answers asked for since the run's start")
    ax.set_ylabel("training reward (score_mean per step)")
    ax.set_title("Training reward against the frozen model's answers", fontsize=11)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncol=1, frameon=False, title="run")  # one column: long labels fit
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


def placeholder_plot(text: str) -> bytes:
    """A small PNG that says why there is nothing to plot, so a declared plot output still exists."""
    fig = plt.figure(figsize=(4, 1.5))
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=14, color="#555555")
    return _png(fig, dpi=100)

