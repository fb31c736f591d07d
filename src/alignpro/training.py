"""The rewards the trainers maximise, as callables `(prompts, completions, step) -> (scores, measures)`:
the measures are seconds (`time_frozen_generation`, `time_scoring`) and the frozen model's answers asked
for (`frozen_calls`), where the reward knows them.

For the Align-Pro prompter a completion is a rewrite x': its reward needs the frozen model to answer
x' and the reward model to score the ORIGINAL x with that answer. For the RLHF oracle the completion
is already the answer y, scored as r(x, y).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from statistics import fmean

from alignpro.sampling import Completion, Sampling
from alignpro.rewrite import extract_rewrite


def rewrite_rewards(
    frozen, scorer, prompts: Sequence[str], candidates: Sequence[Sequence[str]], sampling: Sampling, keys=None
) -> tuple[list[list[float]], dict[str, float]]:
    """Per prompt x, each candidate rewrite's reward: the mean of r(x, y) over the frozen model's
    `sampling.n` answers y to it (an estimate of E_y r(x, y)), as in the evaluation.

    One batched call to each model; also returns the seconds spent answering and scoring and the
    frozen model's answers asked for (`frozen_calls`). `keys`, one per candidate, name the frozen
    model's calls for an API model's cache (PPO: step and rollout).
    """
    flat = [(prompt, candidate) for prompt, row in zip(prompts, candidates) for candidate in row]
    conversations = [[{"role": "user", "content": candidate}] for _, candidate in flat]
    started = time.perf_counter()
    answers = frozen.chat(conversations, sampling, keys=keys)
    generated = time.perf_counter()
    pairs = [(prompt, answer.text) for (prompt, _), answers_of_one in zip(flat, answers) for answer in answers_of_one]
    scores = iter(scorer.score([prompt for prompt, _ in pairs], [answer for _, answer in pairs]))
    scored = time.perf_counter()
    means = iter([fmean([next(scores) for _ in answers_of_one]) for answers_of_one in answers])
    rewards = [[next(means) for _ in row] for row in candidates]
    measures = {"time_frozen_generation": generated - started, "time_scoring": scored - generated, "frozen_calls": len(pairs)}
    return rewards, measures


class RewriteReward:
    """r(x, y) with y ~ frozen(x'), x' extracted from the prompter's completion (x on fallback)."""

    def __init__(self, frozen, scorer, sampling: Sampling, *, fallback_on_truncation: bool, max_length_ratio: float):
        self.frozen = frozen
        self.scorer = scorer
        self.sampling = sampling
        self.fallback_on_truncation = fallback_on_truncation
        self.max_length_ratio = max_length_ratio

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[Completion], step: int | None = None
    ) -> tuple[list[float], dict[str, float]]:
        """The rewards of one PPO step's rollouts; with `step`, the frozen model's calls are named by
        step and rollout, so an API model's cache gives a resumed run the answers it had."""
        rewrites = [
            extract_rewrite(
                completion.text,
                prompt,
                completion.finish_reason,
                fallback_on_truncation=self.fallback_on_truncation,
                max_length_ratio=self.max_length_ratio,
            )[0]
            for prompt, completion in zip(prompts, completions)
        ]
        keys = None if step is None else [f"ppo step {step} rollout {index}" for index in range(len(rewrites))]
        rewards, measures = rewrite_rewards(
            self.frozen, self.scorer, prompts, [[rewrite] for rewrite in rewrites], self.sampling, keys=keys
        )
        return [row[0] for row in rewards], measures


class ResponseReward:
    """r(x, y) for the policy's own answer y (the RLHF oracle)."""

    def __init__(self, scorer):
        self.scorer = scorer

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[Completion], step: int | None = None
    ) -> tuple[list[float], dict[str, float]]:
        started = time.perf_counter()
        scores = self.scorer.score(list(prompts), [completion.text for completion in completions])
        return list(scores), {"time_scoring": time.perf_counter() - started}
