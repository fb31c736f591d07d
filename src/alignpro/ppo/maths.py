"""PPO's arithmetic on tensors, as in TRL's former PPOTrainer (v0.11): masked statistics, log-probs and
entropy from logits, the per-token KL-penalised rewards, GAE advantages and the clipped PPO loss."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is 1 (over all elements, or along `axis`). Mirrors trl.core.masked_mean."""
    if axis is None:
        return (values * mask).sum() / mask.sum()
    return (values * mask).sum(dim=axis) / mask.sum(dim=axis)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` where `mask` is 1, with Bessel's correction by default. Mirrors trl.core.masked_var."""
    centered = values - masked_mean(values, mask)
    variance = masked_mean(centered**2, mask)
    if unbiased:
        count = mask.sum()
        if count <= 1:
            raise ValueError("masked_var needs at least two unmasked values for an unbiased variance")
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(values - mean) / sqrt(var + 1e-8) over the masked elements; with shift_mean=False the mean is
    added back (only the scale changes). Mirrors trl.core.masked_whiten."""
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    return whitened if shift_mean else whitened + mean


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] per position, [B, T, V] x [B, T] -> [B, T].

    Mirrors trl.core.logprobs_from_logits, written as logit - logsumexp so that no second [B, T, V]
    tensor of log-probabilities is materialised."""
    chosen = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return chosen - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position: logsumexp(l) - sum(p * l). Mirrors trl.core.entropy_from_logits."""
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)


# --------------------------------------------------------------------------------------------------
# Rewards, advantages, loss (PPOTrainer.compute_rewards, .compute_advantages, .loss)
# --------------------------------------------------------------------------------------------------


def adjust_scores(
    scores: torch.Tensor,
    ended_with_eos: torch.Tensor,
    *,
    score_clip: float | None = None,
    missing_eos_penalty: float | None = None,
) -> torch.Tensor:
    """The score each rollout is trained on: the reward model's score clipped to +-score_clip (TRL
    v0.11 PPOTrainer.step, "score clipping"), minus missing_eos_penalty where the response did not
    end with EOS (TRL PPOv2Trainer.train, "missing_eos_penalty").

    The clip comes first so that it bounds the reward model's outliers without cancelling the
    penalty; the old trainer had no EOS penalty and PPOv2 no clipping, so neither fixes the order.
    """
    scores = scores.float()
    if score_clip is not None:
        scores = scores.clamp(-score_clip, score_clip)
    if missing_eos_penalty is not None:
        scores = scores - missing_eos_penalty * (~ended_with_eos.bool()).float()
    return scores


def compute_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * (logprob - ref_logprob) on each response token, plus the score
    on the last response token. Mirrors TRL v0.11 PPOTrainer.compute_rewards (kl_penalty="kl").

    scores [B]; logprobs, ref_logprobs, mask [B, T]. Returns (rewards, non_score_rewards, kls), each
    [B, T] and zero outside the mask (TRL zeroed them later, in compute_advantages; same result).
    """
    mask = mask.float()
    kls = (logprobs - ref_logprobs) * mask
    non_score_rewards = -kl_coef * kls
    last = last_token_index(mask)
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards = non_score_rewards.clone()
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards, non_score_rewards, kls


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Column of the last 1 in each row of a [B, T] mask (each row must have one)."""
    if bool((mask.sum(dim=1) == 0).any()):
        raise ValueError("every response needs at least one token")
    columns = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask.bool(), columns, -1).max(dim=1).values


def compute_advantages(
    values: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float,
    lam: float,
    whiten_rewards: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response tokens. Mirrors TRL v0.11
    PPOTrainer.compute_advantages.

        delta_t = r_t + gamma * V_{t+1} - V_t          (V = 0 after the last response token)
        A_t     = delta_t + gamma * lam * A_{t+1}
        returns = A + V;  advantages = masked_whiten(A)

    Values and rewards are zeroed outside the mask first; with whiten_rewards the rewards are
    rescaled (not shifted) by masked_whiten beforehand. Returns (values, advantages, returns), [B, T].
    """
    mask = mask.float()
    values = values * mask
    rewards = rewards * mask
    if whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    length = rewards.shape[1]
    next_advantage = torch.zeros_like(rewards[:, 0])
    reversed_advantages = []
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t < length - 1 else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        reversed_advantages.append(next_advantage)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    returns = advantages + values
    advantages = masked_whiten(advantages, mask).detach()
    return values, advantages, returns


def ppo_loss(
    logprobs: torch.Tensor,
    vpreds: torch.Tensor,
    old_logprobs: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    cliprange: float,
    cliprange_value: float,
    vf_coef: float,
    ratio_threshold: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy loss + vf_coef * clipped value loss for one minibatch. Mirrors TRL v0.11 PPOTrainer.loss.

        ratio       = exp(logprobs - old_logprobs)
        policy_loss = mean(max(-A * ratio, -A * clip(ratio, 1 - cliprange, 1 + cliprange)))
        vclipped    = clip(vpreds, old_values - cliprange_value, old_values + cliprange_value)
        value_loss  = 0.5 * mean(max((vpreds - returns)^2, (vclipped - returns)^2))

    means over the response tokens (mask). Clip fractions are the share of tokens where the clipped
    term is the larger one. When the mean ratio exceeds ratio_threshold the whole loss is multiplied
    by zero (the old trainer's "Skipping batch"; its optimizer step still ran, on zero gradients).

    Returns (loss, stats) with stats policy_loss, value_loss (unscaled by vf_coef), clip_fraction,
    value_clip_fraction, approx_kl (0.5 * mean squared log-ratio), policy_kl, ratio_mean, skipped.
    """
    mask = mask.float()
    vpred_clipped = torch.max(torch.min(vpreds, old_values + cliprange_value), old_values - cliprange_value)
    value_losses = (vpreds - returns) ** 2
    value_losses_clipped = (vpred_clipped - returns) ** 2
    value_loss = 0.5 * masked_mean(torch.max(value_losses, value_losses_clipped), mask)
    value_clip_fraction = masked_mean((value_losses_clipped > value_losses).float(), mask)

    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    policy_losses = -advantages * ratio
    policy_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    policy_loss = masked_mean(torch.max(policy_losses, policy_losses_clipped), mask)
    clip_fraction = masked_mean((policy_losses_clipped > policy_losses).float(), mask)

    ratio_mean = masked_mean(ratio, mask).item()
    skipped = ratio_mean > ratio_threshold
    if skipped:
        log.warning(
            "mean ratio of the minibatch (%.2f) exceeds ratio_threshold %.2f: skipping it", ratio_mean, ratio_threshold
        )
        policy_loss = policy_loss * 0.0
        value_loss = value_loss * 0.0
    loss = policy_loss + vf_coef * value_loss

    stats = {
        "policy_loss": policy_loss.item(),
        "value_loss": value_loss.item(),
        "clip_fraction": clip_fraction.item(),
        "value_clip_fraction": value_clip_fraction.item(),
        "approx_kl": (0.5 * masked_mean(log_ratio.detach() ** 2, mask)).item(),
        "policy_kl": masked_mean(-log_ratio.detach(), mask).item(),
        "ratio_mean": ratio_mean,
        "skipped": float(skipped),
    }
    return loss, stats
