"""The report's numbers per category of request: a dataset's prompts carry a category (a local file's
`category_column`, a bundled set's `category`), and a prompter may help on one kind of request and hurt
on another while its overall numbers average the two away.

Each category is summarised as a dataset of its own (alignpro.report.summary's statistics and
alignpro.report.statistics' win rates over its prompts alone); categories with fewer test prompts than
`min_prompts` are left out, and said to be.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from alignpro.report.statistics import win_rates
from alignpro.report.summary import summarize

CATEGORY_KEYS = ["dataset", "category"]


@dataclass(frozen=True)
class CategoryBreakdown:
    """SUMMARY rows and WIN_RATES rows per category (a `category` column beside `dataset`), and the
    categories left out as too small, with their prompt counts."""

    summary: pl.DataFrame
    win_rates: pl.DataFrame
    left_out: pl.DataFrame

    @property
    def shown(self) -> bool:
        """Whether a dataset has categories at all: the section is then in the report, saying which were
        left out and why even when every category is too small."""
        return not (self.summary.is_empty() and self.left_out.is_empty())


def prompt_categories(test_prompts: pl.DataFrame) -> pl.DataFrame:
    """dataset, prompt_id, category of the test prompts that have a category."""
    return test_prompts.filter(pl.col("category").is_not_null()).select("dataset", "prompt_id", "category").unique()


def by_category(
    scores: pl.DataFrame,
    verdicts: pl.DataFrame,
    categories: pl.DataFrame,
    *,
    prompters: list[str],
    min_prompts: int,
    confidence: float,
    bootstrap_samples: int,
    seed: int,
) -> CategoryBreakdown:
    """The breakdown of `scores` and `verdicts` by the `categories` of their prompts (`prompt_categories`)."""
    sizes = categories.group_by(CATEGORY_KEYS).agg(n_prompts=pl.len()).sort(CATEGORY_KEYS)
    summaries, rates = [], []
    for dataset, category, _ in sizes.filter(pl.col("n_prompts") >= min_prompts).iter_rows():
        prompts = categories.filter(dataset=dataset, category=category).select("dataset", "prompt_id")
        mine = scores.join(prompts, on=["dataset", "prompt_id"], how="semi")
        if mine.is_empty():
            continue
        summary = summarize(mine, prompters=prompters, confidence=confidence, bootstrap_samples=bootstrap_samples, seed=seed)
        summaries.append(summary.with_columns(category=pl.lit(category)))
        judged = verdicts.join(prompts, on=["dataset", "prompt_id"], how="semi")
        if not judged.is_empty():
            rate = win_rates(judged, n_bootstrap=bootstrap_samples, seed=seed, confidence=confidence)
            rates.append(rate.with_columns(category=pl.lit(category)))
    return CategoryBreakdown(
        summary=pl.concat(summaries) if summaries else pl.DataFrame(),
        win_rates=pl.concat(rates) if rates else pl.DataFrame(),
        left_out=sizes.filter(pl.col("n_prompts") < min_prompts),
    )
