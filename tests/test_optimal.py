"""The rho* resampler on a small discrete problem whose closed form is known exactly.

Each prompt has five possible rewrites with given rho_sft probabilities and rewards R(x, x'); the
resampler only sees K draws from rho_sft and their rewards, as the workflow does.
"""

import zlib

import numpy as np
import pytest

from alignpro.optimal import (
    closed_form,
    effective_sample_size,
    exact_kl,
    kl_estimate,
    resample,
    resampling_weights,
)

# prompt -> (rho_sft probabilities, rewards) over five rewrites
PROBLEMS = {
    "skewed reference": ([0.5, 0.2, 0.15, 0.1, 0.05], [0.0, 0.5, 1.0, 1.5, 2.0]),
    "flat reference": ([0.2] * 5, [1.0, -1.0, 0.3, 0.3, 2.5]),
    "best rewrite is rare": ([0.6, 0.3, 0.07, 0.02, 0.01], [-0.5, 0.0, 0.2, 0.4, 3.0]),
}
BETAS = [0.25, 1.0, 4.0]


def empirical_optimal(reference, rewards, beta, *, k: int, repeats: int, seed: int) -> np.ndarray:
    """How often each rewrite is the one picked: draw K from rho_sft, resample one, `repeats` times."""
    rng = np.random.default_rng(seed)
    rewards = np.asarray(rewards)
    counts = np.zeros(len(reference))
    for _ in range(repeats):
        drawn = rng.choice(len(reference), size=k, p=reference)
        counts[drawn[resample(rewards[drawn], beta, rng)]] += 1
    return counts / repeats


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("name", PROBLEMS)
def test_resampled_rewrites_follow_the_closed_form(name, beta):
    reference, rewards = PROBLEMS[name]
    repeats = 3000
    seed = zlib.crc32(f"{name} {beta}".encode())
    empirical = empirical_optimal(reference, rewards, beta, k=1000, repeats=repeats, seed=seed)
    expected = closed_form(reference, rewards, beta)
    standard_error = np.sqrt(expected * (1 - expected) / repeats)
    # 4.5 standard errors (about 1 in 150,000 per cell by chance) plus the self-normalised
    # estimator's finite-K bias, under 0.01 at K = 1000 here (a rewrite of probability 0.01
    # is missing from all K draws with probability 0.99^1000 = 4e-5)
    assert np.all(np.abs(empirical - expected) <= 4.5 * standard_error + 0.01), (empirical, expected)


def test_the_closed_form_tilts_the_reference_towards_reward():
    reference, rewards = PROBLEMS["skewed reference"]
    assert np.allclose(closed_form(reference, rewards, 1e6), reference)  # beta -> infinity: rho_sft
    assert np.argmax(closed_form(reference, rewards, 0.01)) == int(np.argmax(rewards))  # beta -> 0: the best rewrite
    tilted = closed_form(reference, rewards, 1.0)
    manual = np.array(reference) * np.exp(rewards)
    assert np.allclose(tilted, manual / manual.sum())


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("name", PROBLEMS)
def test_kl_estimate_matches_the_exact_kl(name, beta):
    """The mean of 40 estimates from K = 20,000 draws each is the exact KL within 4 standard errors
    of that mean plus 1% (the estimator's bias, O(1/K))."""
    reference, rewards = PROBLEMS[name]
    rng = np.random.default_rng(zlib.crc32(f"kl {name} {beta}".encode()))
    estimates = [kl_estimate(np.asarray(rewards)[rng.choice(len(reference), size=20_000, p=reference)], beta) for _ in range(40)]
    exact = exact_kl(reference, rewards, beta)
    standard_error = np.std(estimates, ddof=1) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - exact) <= 4 * standard_error + 0.01 * exact, (np.mean(estimates), exact)


def test_kl_estimate_is_the_exact_kl_against_the_drawn_frequencies():
    reference, rewards = PROBLEMS["skewed reference"]
    drawn = np.random.default_rng(3).choice(5, size=500, p=reference)
    frequencies = np.bincount(drawn, minlength=5) / 500
    assert kl_estimate(np.asarray(rewards)[drawn], 0.5) == pytest.approx(exact_kl(frequencies, rewards, 0.5), rel=1e-9)


def test_exact_kl_by_hand():
    reference, rewards, beta = [0.5, 0.5], [0.0, np.log(3.0)], 1.0  # rho* = (1/4, 3/4)
    assert np.allclose(closed_form(reference, rewards, beta), [0.25, 0.75])
    assert exact_kl(reference, rewards, beta) == pytest.approx(0.25 * np.log(0.5) + 0.75 * np.log(1.5))


def test_weights_and_effective_sample_size():
    rewards = [0.0, 1.0, 2.0]
    assert np.allclose(resampling_weights(rewards, 1.0), np.exp(rewards) / np.exp(rewards).sum())
    assert effective_sample_size(rewards, 1e6) == pytest.approx(3.0)
    assert effective_sample_size(rewards, 1e-3) == pytest.approx(1.0)
    assert kl_estimate([0.3] * 4, 0.5) == pytest.approx(0.0, abs=1e-12)  # equal rewards: rho* = rho_sft
    assert np.isfinite(kl_estimate([1000.0, 0.0], 0.01))  # no overflow at extreme R / beta


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_bad_beta_is_refused(beta):
    with pytest.raises(ValueError, match="beta"):
        resampling_weights([1.0, 2.0], beta)
