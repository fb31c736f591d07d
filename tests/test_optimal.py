"""The rho* resampler on a small discrete problem whose closed form is known exactly, and the workflow's
two stages around it (candidates from scripted models, resampling per beta).

Each prompt has five possible rewrites with given rho_sft probabilities and rewards R(x, x'); the
resampler only sees K draws from rho_sft and their rewards, as the workflow does.
"""

import zlib

import numpy as np
import pyarrow as pa
import pytest

from alignpro.sampling import Sampling
from alignpro.optimal import (
    closed_form,
    effective_sample_size,
    exact_kl,
    kl_estimate,
    resample,
    resample_rewrites,
    resampling_weights,
)
from alignpro.star import candidate_rewrites
from alignpro.tables import STAR_CANDIDATES, STAR_REWRITES, conform
from fakes import EchoFrozen, ScriptedPrompter, ScriptedScorer, prompts_table

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


# ---------------------------------------------------------------------------- the workflow's two stages

# Two prompts, three candidates each; the third of the first is truncated and falls back to x.
X1, X2 = "how do tides work", "name a prime"
CANDIDATE_OUTPUTS = [
    [("<prompt>T1</prompt>", "stop"), ("<prompt>T2</prompt>", "stop"), ("<prompt>cut", "length")],
    [("<prompt>P1</prompt>", "stop"), ("<prompt>P2</prompt>", "stop"), ("<prompt>P3</prompt>", "stop")],
]
ANSWER_REWARDS = {"T1": [1.0, 3.0], "T2": [0.0, 0.0], X1: [-1.0, 0.0], "P1": [0.5, 0.5], "P2": [2.0, 2.0], "P3": [0.0, 1.0]}


@pytest.fixture
def star_candidates():
    prompter, frozen, scorer = ScriptedPrompter(CANDIDATE_OUTPUTS), EchoFrozen(), ScriptedScorer(ANSWER_REWARDS)
    table = candidate_rewrites(
        prompter, frozen, scorer, prompts_table([X1, X2]),
        prompter_name="qwen", k=3, m=2,
        prompter_sampling=Sampling(temperature=0.7, top_p=0.9, max_new_tokens=12, seed=5),
        frozen_sampling=Sampling(n=1, temperature=0.8, max_new_tokens=7, seed=5),
        fallback_on_truncation=True, max_length_ratio=8.0,
    )
    return table, prompter, frozen


def test_candidates_are_drawn_from_rho_sft_itself_and_scored_by_their_mean_answer_reward(star_candidates):
    table, prompter, frozen = star_candidates
    assert conform(table, STAR_CANDIDATES, "candidates").equals(table)
    (_, prompter_sampling), = prompter.calls
    assert (prompter_sampling.n, prompter_sampling.temperature, prompter_sampling.top_p) == (3, 1.0, 1.0)
    (_, frozen_sampling), = frozen.calls
    assert (frozen_sampling.n, frozen_sampling.temperature) == (2, 0.8)
    rows = table.to_pylist()
    assert [(row["rewrite"], row["candidate_index"], row["reward_estimate"]) for row in rows] == [
        ("T1", 0, 2.0), ("T2", 1, 0.0), (X1, 2, -0.5), ("P1", 0, 0.5), ("P2", 1, 2.0), ("P3", 2, 0.5)
    ]
    assert [row["fallback_reason"] for row in rows] == [None, None, "truncated", None, None, None]
    assert {row["answers"] for row in rows} == {2} and {row["prompter"] for row in rows} == {"qwen"}


def candidates_table(rewards_by_prompt: dict[str, list[float]]):
    return pa.Table.from_pylist(
        [
            {"prompt_id": prompt_id, "prompt": f"x {prompt_id}", "candidate_index": index, "rewrite": f"x' {prompt_id} {index}",
             "raw_output": "raw", "fallback": False, "fallback_reason": None, "prompter": "qwen",
             "reward_estimate": reward, "answers": 2}
            for prompt_id, rewards in rewards_by_prompt.items()
            for index, reward in enumerate(rewards)
        ],
        schema=STAR_CANDIDATES,
    )


def test_resampled_rewrites_carry_the_estimates_of_their_prompt(star_candidates):
    table = resample_rewrites(star_candidates[0], beta=0.5, seed=0)
    assert conform(table, STAR_REWRITES, "star rewrites").equals(table)
    assert table.num_rows == 2
    by_prompt = {row["prompt"]: row for row in table.to_pylist()}
    first = by_prompt[X1]
    assert first["beta"] == 0.5 and first["candidates"] == 3
    assert first["kl_estimate"] == pytest.approx(kl_estimate([2.0, 0.0, -0.5], 0.5))
    assert first["effective_sample_size"] == pytest.approx(effective_sample_size([2.0, 0.0, -0.5], 0.5))
    assert first["rewrite"] == ["T1", "T2", X1][first["candidate_index"]]
    assert first["fallback"] == (first["rewrite"] == X1)


def test_resampling_follows_softmax_over_prompts_and_is_seeded():
    rewards = [0.0, 0.4, 1.0, -0.3]
    candidates = candidates_table({f"p{i:04d}": rewards for i in range(4000)})
    picks = np.array(resample_rewrites(candidates, beta=0.5, seed=3).column("candidate_index").to_pylist())
    frequencies = np.bincount(picks, minlength=4) / len(picks)
    expected = resampling_weights(rewards, 0.5)
    assert np.abs(frequencies - expected).max() < 4.5 * np.sqrt(expected * (1 - expected) / len(picks)).max()
    again = resample_rewrites(candidates, beta=0.5, seed=3).column("candidate_index").to_pylist()
    other = resample_rewrites(candidates, beta=0.5, seed=4).column("candidate_index").to_pylist()
    assert again == picks.tolist() and other != again


def test_small_beta_picks_the_best_candidate_and_large_beta_any():
    candidates = candidates_table({"a": [0.1, 0.9, 0.3], "b": [2.0, -1.0, 1.9]})
    greedy = resample_rewrites(candidates, beta=1e-4, seed=0).to_pylist()
    assert [row["candidate_index"] for row in greedy] == [1, 0]
    assert all(row["effective_sample_size"] == pytest.approx(1.0, abs=1e-3) for row in greedy)
    assert greedy[0]["kl_estimate"] == pytest.approx(np.log(3), rel=1e-3)  # rho* on one of 3 draws: log K
    flat = resample_rewrites(candidates, beta=1e4, seed=0).to_pylist()
    assert all(row["effective_sample_size"] == pytest.approx(3.0, rel=1e-3) for row in flat)
    assert all(row["kl_estimate"] == pytest.approx(0.0, abs=1e-6) for row in flat)
