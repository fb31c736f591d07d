"""The closed-form optimal prompter rho*, sampled by self-normalised importance resampling.

The paper's optimum of E[r(x, y)] - beta * KL(rho || rho_sft) over prompters is
rho*(x'|x) = rho_sft(x'|x) exp(R(x, x') / beta) / Z(x), with R(x, x') = E_{y ~ frozen(.|x')} r(x, y).
Given K rewrites x'_1..x'_K drawn from rho_sft and estimates R_k, drawing index k with probability
softmax(R / beta)_k samples rho* as K grows (self-normalised importance resampling: the draws already
carry rho_sft, the weights add exp(R / beta)). The same weights estimate

    KL(rho* || rho_sft) = E_{rho*}[R / beta] - log E_{rho_sft}[exp(R / beta)]
                        ~ sum_k w_k R_k / beta - log mean_k exp(R_k / beta).

The workflow runs this in two stages: `alignpro.star.candidate_rewrites` (GPU: K rewrites per test
prompt and their R estimates, once per prompter) and `resample_rewrites` here (CPU: one table per
beta, cheap, so a new beta costs no model call).
"""

from __future__ import annotations

import logging
from statistics import fmean

import numpy as np
import pyarrow as pa
import polars as pl

from alignpro.tables import STAR_CANDIDATES, STAR_REWRITES, conform

log = logging.getLogger(__name__)


def _scaled(rewards, beta: float) -> np.ndarray:
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    values = np.asarray(rewards, dtype=np.float64) / beta
    if values.ndim != 1 or values.size == 0:
        raise ValueError("rewards must be a non-empty 1-d sequence")
    return values


def resampling_weights(rewards, beta: float) -> np.ndarray:
    """softmax(R / beta): the probability of resampling each of the K candidate rewrites."""
    scaled = _scaled(rewards, beta)
    weights = np.exp(scaled - scaled.max())
    return weights / weights.sum()


def kl_estimate(rewards, beta: float) -> float:
    """KL(rho* || rho_sft) estimated from K draws of rho_sft: sum_k w_k R_k / beta - log mean_k exp(R_k / beta)."""
    scaled = _scaled(rewards, beta)
    weights = resampling_weights(rewards, beta)
    top = scaled.max()
    log_mean_exp = top + np.log(np.mean(np.exp(scaled - top)))
    return float(np.dot(weights, scaled) - log_mean_exp)


def effective_sample_size(rewards, beta: float) -> float:
    """1 / sum w_k^2: how many of the K candidates the resampling really draws from (K when beta is large)."""
    weights = resampling_weights(rewards, beta)
    return float(1.0 / np.sum(weights**2))


def resample(rewards, beta: float, rng: np.random.Generator) -> int:
    """The index of the candidate rewrite rho* picks, drawn from softmax(R / beta)."""
    weights = resampling_weights(rewards, beta)
    return int(rng.choice(len(weights), p=weights))


def closed_form(reference, rewards, beta: float) -> np.ndarray:
    """rho* over a finite set of rewrites: reference (rho_sft's probabilities) times exp(R / beta), normalised."""
    reference = np.asarray(reference, dtype=np.float64)
    scaled = _scaled(rewards, beta)
    if reference.shape != scaled.shape or (reference < 0).any() or not np.isclose(reference.sum(), 1.0):
        raise ValueError("reference must be a probability vector with one entry per reward")
    unnormalised = reference * np.exp(scaled - scaled.max())
    return unnormalised / unnormalised.sum()


def exact_kl(reference, rewards, beta: float) -> float:
    """KL(rho* || rho_sft) over a finite set of rewrites, for checking `kl_estimate`."""
    optimal = closed_form(reference, rewards, beta)
    reference = np.asarray(reference, dtype=np.float64)
    support = optimal > 0
    return float(np.sum(optimal[support] * np.log(optimal[support] / reference[support])))


def resample_rewrites(candidates: pa.Table, beta: float, seed: int) -> pa.Table:
    """STAR_REWRITES: per prompt, the candidate rho* picks at `beta`, with its KL and ESS estimates.

    The generator is seeded with `seed` alone, so every beta uses the same uniform draw per prompt:
    the frontier's points then differ by beta, not by resampling noise (common random numbers).
    """
    frame = pl.from_arrow(conform(candidates, STAR_CANDIDATES, "star candidates")).sort("prompt_id", "candidate_index")
    rng = np.random.default_rng(seed)
    rows = []
    for group in frame.partition_by("prompt_id", maintain_order=True):
        rewards = group["reward_estimate"].to_numpy()
        chosen = group.row(resample(rewards, beta, rng), named=True)
        rows.append(
            {
                **{name: chosen[name] for name in STAR_CANDIDATES.names if name in STAR_REWRITES.names},
                "beta": beta,
                "candidates": group.height,
                "kl_estimate": kl_estimate(rewards, beta),
                "effective_sample_size": effective_sample_size(rewards, beta),
            }
        )
    table = pa.Table.from_pylist(rows, schema=STAR_REWRITES)
    log.info(
        "rho* at beta %g on %d prompts: mean KL estimate %.4f (at most log K), mean effective sample size %.2f of %d",
        beta, table.num_rows, fmean(table.column("kl_estimate").to_pylist()),
        fmean(table.column("effective_sample_size").to_pylist()), max(table.column("candidates").to_pylist()),
    )
    return table
