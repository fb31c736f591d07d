"""What the report says: each section (reward tables, reward and accuracy, suboptimality gap, reward–KL
frontier, win rates, training) described once as blocks that `render` writes as Markdown and as HTML,
and `write_report`, which checks, draws and renders everything before it writes the first file.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import polars as pl

from alignpro.atomic import write_bytes
from alignpro.checkers import CHECKERS
from alignpro.report import plots
from alignpro.report.plots import STEP_PARTS, step_parts
from alignpro.report.render import Block, Heading, Image, Paragraph, Quote, Table, html_page
from alignpro.report.render import markdown as render_markdown
from alignpro.judge_prompts import judge_prompt
from alignpro.systems import label as method_label
from alignpro.report.categories import CategoryBreakdown
from alignpro.report.judging import AGREEMENT_SCHEMA, LC_RESAMPLES, MIN_DECIDED_FOR_LC, MIN_PROMPTS_FOR_LC
from alignpro.tables import JUDGE_USAGE, LLM_JUDGE, TRAINING_METRICS, REWARD_JUDGE, WIN_RATES, conform


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
                method_label(row["method"], row["beta"]),
                f"{row['n_prompts']} / {row['n_samples']}",
                mean,
                *([_accuracy_cell(row)] if with_accuracy else []),
                _format(row["reward_variance"]),
                _format(row["mean_tokens"], "{:.1f}"),
                _format(row["fallback_rate"], "{:.1%}"),
            ]
        )
    return rows


def _table_header(summary: pl.DataFrame) -> list[str]:
    """The reward table's columns, accuracy beside mean reward when some dataset has reference answers."""
    accuracy = ["accuracy [CI]"] if _has_accuracy(summary) else []
    return ["prompter", "frozen", "method", "prompts / samples", "mean reward ± CI", *accuracy, "reward variance", "mean tokens", "fallback rate"]


def _ci_note(confidence: float) -> str:
    """The sentence that tells readers what the interval and the other columns are computed over."""
    return (
        f"± is the half-width of the {confidence:.0%} Student-t confidence interval over per-prompt mean rewards "
        "(the samples of one prompt are correlated, so prompts are the independent units; the interval is "
        "centred on the mean of per-prompt means, which equals the mean reward when every prompt has the "
        "same number of samples). Variance is the sample variance (ddof=1) over all samples. Mean tokens is the "
        "mean answer length. Fallback rate is the share of prompts whose rewrite fell back to the original prompt."
    )



LENGTH_PLOT_NOTE = (
    "Each method's mean reward against its mean answer length in tokens, one panel per dataset, prompter and frozen "
    "model. A prompter that gains reward only by making the frozen model write longer moves right as it moves up: "
    "reward models and LLM judges both tend to prefer longer answers."
)


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
        "each method's measured KL to its own reference: trained prompters (alignpro by PPO, and any other "
        "trainer's) to ρ_sft, the mean over the last 10% of training steps, on training prompts; alignpro-star the "
        "estimate of KL(ρ* ‖ ρ_sft) from its K candidates per prompt (at most log K); rlhf its PPO KL to the frozen "
        "model, a different reference. A trainer's main run has no single β where its KL coefficient adapts (PPO's "
        "ppo section), so its β·KL is not shown."
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
                method_label(row["method"], row["beta"]),
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


FRONTIER_NOTE = (
    "Each prompter's mean reward (error bar: the confidence interval over prompts) against its KL to ρ_sft: the "
    "trained prompters of each trainer's β sweep joined in β order, its main run (a star) of its config section, the closed-form ρ* at "
    "each β joined in β order, and sft at KL 0. Dashed lines mark the mean reward of base, sft and rlhf (rlhf's "
    "KL is to the frozen model, another reference, so it is a line, not a point)."
)


USAGE_HEADER = [
    "judge", "prompter", "frozen", "method", "requests", "retries", "cached calls", "tokens in / out (requests)", "cost of requests (USD)"
]
USAGE_NOTE = (
    "Requests are the calls sent in the judge's last run, retries included; cached calls were answered from the cache "
    "and cost nothing again. Tokens and cost are the requests' alone; a judge without prices shows no cost."
)
BIAS_HEADER = ["judge", "prompter", "frozen", "method", "tokens, method − base", "first slot wins %", "flips % (pairs)"]
AGREEMENT_HEADER = ["judge", "other judge", "pairs both decided", "identical answers left out", "same verdict %", "Cohen's κ [CI]"]
EXAMPLE_CHARACTERS = 1200  # texts longer than this are cut in the report (the tables keep them whole)


def _llm_rates(rates: pl.DataFrame) -> pl.DataFrame:
    """The win-rate rows an LLM judge made: only they have calls, tokens, cost and a position to be swayed by."""
    return rates.filter(pl.col("judge_kind") == LLM_JUDGE)


def _judge_note(rates: pl.DataFrame, confidence: float) -> str:
    """What judged the pairs, on what criteria, and what the percentages are over."""
    parts = ["Each method's answer is compared with base's answer to the same original prompt and sample."]
    llm = _llm_rates(rates).select("judge", "judged_by", "judge_prompt").unique().sort("judge").rows()
    for judge, judged_by, prompt in llm:
        parts.append(
            f"Judge {judge}: {judged_by}, an LLM given the prompt {prompt} ({judge_prompt(prompt).description}), "
            f"asked to weigh {judge_prompt(prompt).criteria}."
        )
    if llm:
        parts.append(
            "Every pair is judged in both orders; a win or loss counts only when both orders agree, otherwise it is a "
            "tie, flagged inconsistent."
        )
    offline = rates.filter(pl.col("judge_kind") == REWARD_JUDGE).select("judge", "judged_by").unique().sort("judge").rows()
    if offline:
        parts.append(
            f"Judge {', '.join(f'{judge} ({judged_by})' for judge, judged_by in offline)}: NOT an LLM judge. "
            "P(method beats base) = sigmoid(r_method − "
            "r_base) from the reward model's scores, a win when it exceeds 0.5 + margin, a loss below 0.5 − margin; "
            "it shares the reward model's biases."
        )
    parts.append(
        f"Decided pairs are those judged win, tie or loss; win, tie and loss are their percentages with {confidence:.0%} "
        "percentile bootstrap intervals over prompts. Win + ½ tie is the judge's mean preference for the method (a tie "
        "counting half), the raw rate that LC win, the length-controlled win rate, is to be compared with: AlpacaEval 2's "
        "logistic GLM of the judge's preference (win 1, tie ½, loss 0) on a method term, tanh of the answers' length "
        "difference over its standard deviation and the prompt's difficulty (the other methods' mean preference on it), "
        "averaged with the length term set to zero. Its interval comes from a bootstrap over prompts that refits the "
        f"GLM on each of up to {LC_RESAMPLES} resamples, difficulty included: the estimate ± t times the bootstrap's "
        "standard error on the logit scale, so it lies within [0, 100]. It is a dash under "
        f"{MIN_PROMPTS_FOR_LC} prompts or {MIN_DECIDED_FOR_LC} decided pairs, or where the verdicts separate perfectly; "
        "† marks an LC rate far from the raw one (by AlpacaEval's warning margin), a sign the GLM fits badly; the notes "
        "under each table say which and why. Intervals are dashes under two prompts. Inconsistent % is of decided pairs; invalid (no "
        "parsable verdict after one retry) and not judged (budget spent or API error) are percentages of all pairs."
    )
    return " ".join(parts)


def _rate_cell(row: dict, outcome: str) -> str:
    """A rate with its interval (none under two prompts); a length-controlled rate with a note is marked †."""
    if row[f"{outcome}_pct"] is None:
        return "–"
    cell = f"{row[f'{outcome}_pct']:.1f}"
    if row[f"{outcome}_ci_low"] is not None:
        cell += f" [{row[f'{outcome}_ci_low']:.1f}, {row[f'{outcome}_ci_high']:.1f}]"
    return cell + ("†" if outcome == "lc_win" and row["lc_win_note"] else "")


def _lc_notes(rates: pl.DataFrame, dataset: str) -> list[Block]:
    """A paragraph with each row's length-controlled note (why LC is a dash, or why it is marked †)."""
    several = rates["judge"].n_unique() > 1
    notes = [
        f"{row['judge'] + ', ' if several else ''}{method_label(row['method'], row['beta'])}"
        f"{', ' + row['prompter'] if row['prompter'] else ''}: {row['lc_win_note']}"
        for row in rates.filter(pl.col("dataset") == dataset, pl.col("lc_win_note").is_not_null()).iter_rows(named=True)
    ]
    return [Paragraph("LC win: " + "; ".join(notes) + ".")] if notes else []


def _judge_header(rates: pl.DataFrame) -> list[str]:
    judge = ["judge"] if rates["judge"].n_unique() > 1 else []
    return [*judge, "prompter", "frozen", "method", "prompts", "pairs", "decided", "win %", "tie %", "loss %", "win + ½ tie %", "LC win %",
            "inconsistent %", "invalid %", "not judged %"]


def _who(row: dict) -> list[str]:
    """A win-rate row's prompter (a dash for rlhf, which has none), frozen model and method."""
    return [row["prompter"] or "–", row["frozen"], method_label(row["method"], row["beta"])]


def _judge_rows(rates: pl.DataFrame, dataset: str) -> list[list[str]]:
    several = rates["judge"].n_unique() > 1
    rows = []
    for row in rates.filter(pl.col("dataset") == dataset).iter_rows(named=True):
        rows.append(
            ([row["judge"]] if several else []) + _who(row) + [str(row["n_prompts"]), str(row["n_pairs"]), str(row["n_decided"])]
            + [_rate_cell(row, outcome) for outcome in ("win", "tie", "loss", "preference", "lc_win")]
            + [_format(row[name], "{:.1f}") for name in ("inconsistent_pct", "invalid_pct", "not_judged_pct")]
        )
    return rows


BIAS_NOTE = (
    "Length and position. Tokens, method − base is the mean difference in answer length over decided pairs: LLM "
    "judges tend to prefer the longer answer, which is what the LC win rate corrects for. First slot wins % is the "
    "share of the judge's decisive readings (A or B, both orders) that chose the answer shown first: 50 for a "
    "judge blind to order. Flips % is the share of pairs decisive in both orders whose winner changed with the "
    "order (the same slot won twice), of the number of such pairs in brackets."
)


def _bias_rows(rates: pl.DataFrame) -> list[list[str]]:
    return [
        [row["judge"], *_who(row), _format(row["mean_token_difference"], "{:+.1f}"), _format(row["first_slot_pct"], "{:.1f}"),
         f"{_format(row['flip_pct'], '{:.1f}')} ({row['both_decisive']})"]
        for row in _llm_rates(rates).iter_rows(named=True)
    ]


def _agreement_note(confidence: float) -> str:
    return (
        "For every two judges, over the pairs both decided, less those whose answers are identical (a tie for every "
        "judge, judged by none): the share with the same verdict (win, tie or loss) and "
        f"Cohen's κ, agreement beyond chance (1: always the same, 0: as by chance), with its {confidence:.0%} normal "
        "interval (a dash: undefined, both judges always giving the one same verdict)."
    )


def _agreement_rows(agreement: pl.DataFrame) -> list[list[str]]:
    rows = []
    for row in agreement.iter_rows(named=True):
        kappa = _format(row["kappa"]) + ("" if row["kappa_ci_low"] is None else f" [{row['kappa_ci_low']:.3f}, {row['kappa_ci_high']:.3f}]")
        rows.append([
            row["judge_a"], row["judge_b"], str(row["both_decided"]), str(row["free_ties"]), _format(row["agreement_pct"], "{:.1f}"), kappa
        ])
    return rows




def _usage_cells(label: list[str], row: dict) -> list[str]:
    return label + [
        str(row["calls"]), str(row["retries"]), str(row["cached_calls"]),
        f"{row['prompt_tokens']} / {row['completion_tokens']}", _format(row["cost_usd"], "{:.4f}"),
    ]


def _usage_rows(rates: pl.DataFrame) -> list[list[str]]:
    """An LLM judge's calls, tokens and cost per judge job, then their total."""
    jobs = _llm_rates(rates)
    rows = [
        _usage_cells([row["judge"], row["prompter"] or "–", row["frozen"], f"{method_label(row['method'], row['beta'])} ({row['dataset']})"], row)
        for row in jobs.iter_rows(named=True)
    ]
    totals = jobs.select(
        pl.when(pl.col(field.name).is_not_null().any()).then(pl.col(field.name).sum()).alias(field.name) for field in JUDGE_USAGE
    ).row(0, named=True)
    return rows + [_usage_cells(["all", "", "", ""], totals)]


def _shorten(text: str) -> str:
    cut = len(text) - EXAMPLE_CHARACTERS
    return text if cut <= 0 else f"{text[:EXAMPLE_CHARACTERS]}… [{cut} more characters]"


def _example_parts(example: dict) -> list[tuple[str, str]]:
    """(label, text) of one example, plain text, in reading order; the rewrite only when there is one."""
    parts = [("prompt x", example["prompt"])]
    if example["model_input"] != example["prompt"]:
        parts.append(("rewrite x'", example["model_input"]))
    method = method_label(example["method"], example["beta"])
    parts += [(f"{method} answer", example["answer"]), ("base answer", example["base_answer"])]
    if example["judge_kind"] == REWARD_JUDGE:  # one decision from the rewards, not two readings
        return parts + [("judge", f"{example['verdict']}: {example['reason_method_first']}")]
    for order, shown in (("method_first", "method's answer shown as A"), ("base_first", "base's answer shown as A")):
        raw = example[f"verdict_{order}"] or "not judged"
        parts.append((f"judge, {shown}", f"{raw}: {example[f'reason_{order}'] or example['not_judged_reason'] or ''}"))
    return parts


def _example_title(example: dict) -> str:
    who = f"{example['prompter']} → {example['frozen']}" if example["prompter"] else example["frozen"]
    flag = ", inconsistent" if example["inconsistent"] else ""
    method = method_label(example["method"], example["beta"])
    return f"{example['dataset']} · {who} · {method} · judge {example['judge']}: {example['verdict']}{flag}"


def _category_note(breakdown: CategoryBreakdown, min_prompts: int, confidence: float) -> str:
    """What the breakdown is over, and which categories are too small to be in it."""
    note = (
        "Mean reward and win rates over each category's test prompts alone, computed as for the whole dataset "
        f"({confidence:.0%} intervals over the category's prompts). A method that helps on one kind of request "
        "and hurts on another shows it here, where the totals average the two away. Per judge: win / tie / loss % "
        "of the decided pairs (their number in brackets), then the length-controlled win rate (a dash under "
        f"{MIN_PROMPTS_FOR_LC} prompts or {MIN_DECIDED_FOR_LC} decided pairs, or where it cannot be fitted)."
    )
    if not breakdown.left_out.is_empty():
        left = ", ".join(f"{row['dataset']}/{row['category']} ({row['n_prompts']})" for row in breakdown.left_out.iter_rows(named=True))
        every = " every category:" if breakdown.summary.is_empty() else ""
        note += (
            f" Left out, with fewer than {min_prompts} test prompts (report.min_category_prompts; a smaller number "
            f"gives wider intervals),{every} {left}."
        )
    return note


def _category_header(breakdown: CategoryBreakdown) -> list[str]:
    judges = sorted(breakdown.win_rates["judge"].unique().to_list()) if not breakdown.win_rates.is_empty() else []
    per_judge = [header for judge in judges for header in (f"win / tie / loss % ({judge})", f"LC win % ({judge})")]
    return ["category", "prompts", "prompter", "frozen", "method", "mean reward ± CI", *per_judge]


def _outcomes_cell(row: dict) -> str:
    if row["win_pct"] is None:
        return "–"
    return f"{row['win_pct']:.1f} / {row['tie_pct']:.1f} / {row['loss_pct']:.1f} ({row['n_decided']})"


def _category_rows(breakdown: CategoryBreakdown, dataset: str) -> list[list[str]]:
    rates = breakdown.win_rates
    judges = sorted(rates["judge"].unique().to_list()) if not rates.is_empty() else []
    rows = []
    for row in breakdown.summary.filter(pl.col("dataset") == dataset).sort("category", maintain_order=True).iter_rows(named=True):
        half = None if row["ci_low"] is None else (row["ci_high"] - row["ci_low"]) / 2.0
        cells = [row["category"], str(row["n_prompts"]), row["prompter"], row["frozen"], method_label(row["method"], row["beta"]),
                 _format(row["mean_reward"]) + ("" if half is None else f" ± {half:.3f}")]
        for judge in judges:
            beta = pl.col("beta").is_null() if row["beta"] is None else pl.col("beta") == row["beta"]
            prompter = pl.col("prompter").is_null() | (pl.col("prompter") == row["prompter"])
            match = rates.filter(
                pl.col("judge") == judge, pl.col("dataset") == dataset, pl.col("category") == row["category"],
                pl.col("frozen") == row["frozen"], pl.col("method") == row["method"], beta, prompter,
            )
            rate = match.row(0, named=True) if match.height else None
            cells += [_outcomes_cell(rate), _rate_cell(rate, "lc_win")] if rate else ["–", "–"]
        rows.append(cells)
    return rows


def _category_blocks(breakdown: CategoryBreakdown, min_prompts: int, confidence: float) -> list[Block]:
    datasets = [] if breakdown.summary.is_empty() else sorted(breakdown.summary["dataset"].unique().to_list())
    header = _category_header(breakdown)
    tables = _per_dataset(datasets, 3, lambda dataset: Table(header, _category_rows(breakdown, dataset)))
    return [Heading(2, "By category"), Paragraph(_category_note(breakdown, min_prompts, confidence)), *tables]


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
        ("frozen-model answers", "–" if last["frozen_calls"] is None else f"{last['frozen_calls']:,}"),
        ("median step time (s)", _format(frame["time_step"].median())),
    ]
    for part in step_parts(frame):
        rows.append((f"… {STEP_PARTS[part][0]} (s)", _format(frame[part].median())))
    return rows


def _relative_link(target: str | os.PathLike, start: Path) -> str:
    """URL-quoted path of `target` relative to `start`, so the Markdown link survives moving the folder."""
    return quote(Path(os.path.relpath(Path(target).resolve(), start.resolve())).as_posix())




def _per_dataset(datasets: list[str], level: int, table) -> list[Block]:
    """A heading and a table per dataset; `table(dataset)` gives its Table."""
    return [block for dataset in datasets for block in (Heading(level, dataset), table(dataset))]


def _reward_blocks(summary: pl.DataFrame, title: str, note: str, mean: Image, variance: Image) -> list[Block]:
    datasets = sorted(summary["dataset"].unique().to_list())
    header = _table_header(summary)
    tables = _per_dataset(datasets, 2, lambda dataset: Table(header, _table_rows(summary, dataset)))
    return [Heading(1, title), Paragraph(note), *tables, Heading(2, "Plots"), mean, variance]


def _accuracy_blocks(plot: Image) -> list[Block]:
    return [Heading(2, "Reward and accuracy"), Paragraph(ACCURACY_PLOT_NOTE), plot]


def _gap_blocks(summary: pl.DataFrame, confidence: float) -> list[Block]:
    tables = _per_dataset(_gap_datasets(summary), 3, lambda dataset: Table(GAP_HEADER, _gap_rows(summary, dataset)))
    return [Heading(2, "Suboptimality gap"), Paragraph(_gap_note(confidence)), *tables]


def _frontier_blocks(plot: Image) -> list[Block]:
    return [Heading(2, "Reward–KL frontier"), Paragraph(FRONTIER_NOTE), plot]


BUDGET_NOTE = (
    "Each trained prompter's reward during training (score_mean, the mean reward of a step's rollouts) against "
    "the frozen-model answers its trainer had asked for by the end of that step: the cost that dominates when "
    "the frozen model is large or behind an API, one axis for every trainer."
)


def _budget_blocks(plot: Image) -> list[Block]:
    return [Heading(2, "Reward against frozen-model answers"), Paragraph(BUDGET_NOTE), plot]


def _judge_blocks(
    rates: pl.DataFrame, agreement: pl.DataFrame, confidence: float, plot: Image, examples: list[dict]
) -> list[Block]:
    datasets = sorted(rates["dataset"].unique().to_list())
    header = _judge_header(rates)
    blocks = [Heading(2, "Win rate against base"), Paragraph(_judge_note(rates, confidence))]
    for dataset in datasets:
        blocks += [Heading(3, dataset), Table(header, _judge_rows(rates, dataset)), *_lc_notes(rates, dataset)]
    blocks.append(plot)
    if not _llm_rates(rates).is_empty():
        blocks += [Heading(3, "Length and position"), Paragraph(BIAS_NOTE), Table(BIAS_HEADER, _bias_rows(rates))]
    if not agreement.is_empty():
        blocks += [Heading(3, "Agreement between judges"), Paragraph(_agreement_note(confidence)),
                   Table(AGREEMENT_HEADER, _agreement_rows(agreement))]
    if not _llm_rates(rates).is_empty():
        blocks += [Heading(3, "Judge usage"), Paragraph(USAGE_NOTE), Table(USAGE_HEADER, _usage_rows(rates))]
    if examples:
        blocks.append(Heading(3, "Examples"))
        for example in examples:
            blocks.append(Heading(4, _example_title(example)))
            blocks += [Quote(label, _shorten(text)) for label, text in _example_parts(example)]
    return blocks


def _training_blocks(runs: dict[str, pl.DataFrame], plot: Image) -> list[Block]:
    blocks = [Heading(2, "Training"), Paragraph(TRAINING_NOTE), plot]
    for label, frame in runs.items():
        blocks += [Heading(3, label), Table(TRAINING_TABLE_HEADER, _training_rows(frame))]
    return blocks


def _training_frames(training: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """Each run's metrics checked against TRAINING_METRICS and sorted by step; a run without steps is an error."""
    runs = {}
    for label, frame in training.items():
        checked = pl.from_arrow(conform(frame.to_arrow(), TRAINING_METRICS, f"training metrics of {label!r}"))
        if checked.is_empty():
            raise ValueError(f"training metrics of {label!r} have no steps")
        runs[label] = checked.sort("step")
    return runs


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
    win_rates: pl.DataFrame | None = None,
    agreement: pl.DataFrame | None = None,
    win_plot: str | os.PathLike | None = None,
    examples: list[dict] = (),
    frontier_plot: str | os.PathLike | None = None,
    budget_plot: str | os.PathLike | None = None,
    length_plot: str | os.PathLike | None = None,
    categories: CategoryBreakdown | None = None,
    min_category_prompts: int = 10,
) -> None:
    """Write the Markdown and self-contained HTML reports, the mean / variance bar plots, training curves
    and win rates.

    `training` maps a run label (e.g. "rlhf tiny-frozen (bundled)") to its TRAINING_METRICS frame. With runs,
    `training_plot` is required: it gets the curves (score_mean, kl, entropy, value_loss per step, and the
    mean step-time split), and both reports get a "Training" section with the plot and a table per run.
    With `win_rates` (WIN_RATES rows), `win_plot` is required: both reports get a "Win rate against base"
    section (a Table-1-style table per dataset with the length-controlled win rate, the plot, the LLM
    judges' length and position diagnostics and usage, `agreement` between judges (`judge_agreement`) when
    there are several, and `examples` from `pick_examples`). `length_plot` gets mean reward against mean
    answer length. With `categories` (`by_category`) shown, both reports get a "By category" section:
    mean reward and win rates per category, and the categories left out below `min_category_prompts`. When some gap is known (rlhf answers), both reports get a "Suboptimality gap"
    table per dataset. When trained prompters or alignpro-star rows have a kl, `frontier_plot` is required: both
    reports get a "Reward–KL frontier" section with it. When training runs counted the frozen model's answers,
    `budget_plot` is required: both reports get a "Reward against frozen-model answers" section. When some dataset has an accuracy (reference answers),
    `accuracy_plot` is required and `checkers` must name each such dataset's checker: the reward tables get an
    accuracy column, the note says which checker each dataset used, and both reports get a "Reward and
    accuracy" section with the plot of one against the other. A given plot path with nothing to draw gets a
    small placeholder PNG, so a workflow's declared output always exists. Everything is checked and rendered
    before the first file is written, and every file is written atomically.
    """
    if summary.is_empty():
        raise ValueError("empty summary: nothing to report")
    runs = _training_frames(training or {})
    if runs and training_plot is None:
        raise ValueError("training runs given without a training_plot path to draw them to")
    rates = win_rates if win_rates is not None else pl.from_arrow(WIN_RATES.empty_table())
    judged = not rates.is_empty()
    if judged and win_plot is None:
        raise ValueError("win rates given without a win_plot path to draw them to")
    frontier = not plots.frontier_points(summary).is_empty()
    if frontier and frontier_plot is None:
        raise ValueError("prompters with a measured kl in the summary without a frontier_plot path to draw them to")
    budget = bool(plots.budget_runs(runs))
    if budget and budget_plot is None:
        raise ValueError("training runs that counted the frozen model's answers without a budget_plot path to draw them to")
    accuracy = _has_accuracy(summary)
    if accuracy and accuracy_plot is None:
        raise ValueError("accuracies in the summary without an accuracy_plot path to draw them to")
    decided = judged and rates["win_pct"].is_not_null().any()
    pngs = {
        mean_plot: plots.bar_plot(summary, "mean_reward", "mean reward", "Mean reward (error bars: CI over prompts)", True),
        variance_plot: plots.bar_plot(summary, "reward_variance", "reward variance", "Reward variance", False),
        accuracy_plot: plots.accuracy_plot(summary) if accuracy else plots.placeholder_plot("No dataset has\nreference answers."),
        training_plot: plots.training_plot(runs) if runs else plots.placeholder_plot("no training runs"),
        win_plot: plots.win_plot(rates) if decided else plots.placeholder_plot("no judged pairs"),
        frontier_plot: plots.frontier_plot(summary) if frontier else plots.placeholder_plot("no prompter KLs"),
        budget_plot: plots.budget_plot(runs) if budget else plots.placeholder_plot("no frozen-model answers counted"),
        length_plot: plots.length_plot(summary),
    }
    markdown_dir = Path(markdown).parent

    def image(alt: str, path: str | os.PathLike) -> Image:
        return Image(alt, _relative_link(path, markdown_dir), pngs[path])

    note = _ci_note(confidence)
    if accuracy:
        note += " " + _accuracy_note(summary, checkers or {}, confidence)
    blocks = _reward_blocks(summary, title, note, image("Mean reward", mean_plot), image("Reward variance", variance_plot))
    if length_plot is not None:
        blocks += [Heading(2, "Reward and answer length"), Paragraph(LENGTH_PLOT_NOTE), image("Mean reward against answer length", length_plot)]
    if accuracy:
        blocks += _accuracy_blocks(image("Mean reward against accuracy", accuracy_plot))
    if _gap_datasets(summary):
        blocks += _gap_blocks(summary, confidence)
    if frontier:
        blocks += _frontier_blocks(image("Reward–KL frontier", frontier_plot))
    if budget:
        blocks += _budget_blocks(image("Training reward against frozen-model answers", budget_plot))
    if judged:
        agreed = agreement if agreement is not None else pl.DataFrame(schema=AGREEMENT_SCHEMA)
        blocks += _judge_blocks(rates, agreed, confidence, image("Win rate against base", win_plot), list(examples))
    if categories is not None and categories.shown:
        blocks += _category_blocks(categories, min_category_prompts, confidence)
    if runs:
        blocks += _training_blocks(runs, image("Training curves", training_plot))
    markdown_text, html_text = render_markdown(blocks), html_page(title, blocks)
    for path, png in pngs.items():
        if path is not None:
            write_bytes(path, png)
    write_bytes(markdown, markdown_text.encode("utf-8"))
    write_bytes(html, html_text.encode("utf-8"))
