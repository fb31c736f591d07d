"""The candidates of the closed-form prompter rho* (see `alignpro.optimal`): K rewrites per test prompt
drawn from rho_sft, each with R(x, x') estimated from M frozen-model answers. The GPU half of rho*:
the models run here once per prompter, and every beta is resampled from this table on CPU.
"""

from __future__ import annotations

import dataclasses
import logging
from statistics import fmean

import pyarrow as pa

from alignpro.sampling import Sampling
from alignpro.rewrite import sample_rewrites
from alignpro.tables import STAR_CANDIDATES
from alignpro.training import rewrite_rewards

log = logging.getLogger(__name__)


def candidate_rewrites(
    prompter,
    frozen,
    scorer,
    prompts: pa.Table,
    *,
    prompter_name: str,
    k: int,
    m: int,
    prompter_sampling: Sampling,
    frozen_sampling: Sampling,
    fallback_on_truncation: bool,
    max_length_ratio: float,
) -> pa.Table:
    """STAR_CANDIDATES: K rewrites per prompt drawn from rho_sft and R(x, x') estimated from M answers each.

    The prompter samples at temperature 1 and top_p 1 whatever `prompter_sampling` says: the closed
    form reweights rho_sft itself, and a truncated distribution would be a different reference. Each
    model is called once on everything, as in best-of-K, and a botched rewrite falls back to x.
    """
    originals = prompts.column("prompt").to_pylist()
    candidates = sample_rewrites(
        prompter,
        originals,
        dataclasses.replace(prompter_sampling, n=k, temperature=1.0, top_p=1.0),
        fallback_on_truncation=fallback_on_truncation,
        max_length_ratio=max_length_ratio,
    )
    texts = [[candidate.text for candidate in row] for row in candidates]
    rewards, _ = rewrite_rewards(frozen, scorer, originals, texts, dataclasses.replace(frozen_sampling, n=m))
    rows = [
        {
            "prompt_id": prompt_id,
            "prompt": prompt,
            "candidate_index": index,
            "rewrite": candidate.text,
            "raw_output": candidate.completion.text,
            "fallback": candidate.fallback_reason is not None,
            "fallback_reason": candidate.fallback_reason,
            "prompter": prompter_name,
            "reward_estimate": reward,
            "answers": m,
        }
        for prompt_id, prompt, row, row_rewards in zip(prompts.column("prompt_id").to_pylist(), originals, candidates, rewards)
        for index, (candidate, reward) in enumerate(zip(row, row_rewards))
    ]
    log.info(
        "%d candidates for %d prompts (%d answers each): mean R %.4f, mean best-of-%d R %.4f",
        len(rows), len(originals), m, fmean(r for row in rewards for r in row), k, fmean(max(row) for row in rewards),
    )
    return pa.Table.from_pylist(rows, schema=STAR_CANDIDATES)
