"""PPO for the prompter (and the RLHF oracle), following TRL's former step-based PPOTrainer (v0.11).

The paper trained its prompter with TRL's old `PPOTrainer` and the hyperparameters of TRL's
gpt2-sentiment example. TRL has since dropped that trainer, and its successor cannot take a reward
that needs another model to answer first, so this module implements the same algorithm:

1. Rollout: sample `batch_size` prompts, turn each into the policy's chat input with `query_fn`,
   sample a response with `generate` (pure sampling: top_k 0, top_p 1, temperature 1), cut it after
   the first end-of-sequence token, and score it with `reward_fn`.
2. Log-probabilities and values of the response tokens under the policy (and log-probabilities
   under the frozen reference), aligned as the old trainer did: logits at position t score token
   t + 1, the value head reads the last hidden state at the same position.
3. Per-token rewards: -beta * (log pi - log pi_ref) on every response token, plus the score on the
   last one (`compute_rewards`); GAE over the response tokens (`compute_advantages`).
4. `ppo_epochs` passes over shuffled minibatches with the clipped policy loss and clipped value loss
   (`ppo_loss`); then the adaptive KL controller updates beta (`AdaptiveKLController`).

Each function's docstring names the TRL v0.11 function it mirrors. No TRL code is used: TRL 1.x
does not have it, and the maths is short enough to state here.

Differences from TRL v0.11, all deliberate:
- PPOv2's `missing_eos_penalty` is added (subtracted from the score of responses without EOS).
- Dropout is switched off in the policy and value head (PPOv2's `disable_dropout`). The old
  trainer ran every forward pass, the training ones included, after `model.eval()`, so its dropout
  was never active either; switching it off instead of using eval mode lets gradient checkpointing
  (which transformers only applies in train mode) work. LoRA dropout is therefore unused here too.
- The response log-probabilities are taken from logits divided by the sampling temperature (as
  PPOv2 does), so that they are those of the distribution actually sampled from; with the default
  temperature of 1 this changes nothing.
- Queries are left-padded and responses right-padded into one [query | response] layout with
  explicit position ids, instead of the old per-row start/end masks; the response tokens, their
  positions and the mask are the same, and logits are only computed for response positions.
- Not implemented (off in the gpt2-sentiment example): score scaling/normalisation, the "abs",
  "mse" and "full" KL penalties, early stopping on the policy KL, learning-rate schedulers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import torch
import torch.nn as nn

from alignpro.atomic import atomic_directory
from alignpro.generation import Completion
from alignpro.lora import LoraSettings
from alignpro.modeling import checkpoint_dtype, eos_ids, load_tokenizer, named_dtype
from alignpro.settings import from_section
from alignpro.progress import nested, progress_bar
from alignpro.tables import PPO_METRICS, read_table, write_table

log = logging.getLogger(__name__)

RewardFn = Callable[[list[str], list[Completion]], tuple[list[float], dict[str, float]]]

CHECKPOINTS = "checkpoints"
MODEL = "model"
METRICS = "metrics.parquet"


# --------------------------------------------------------------------------------------------------
# Masked statistics (trl.core)
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# KL controllers (trl.trainer.utils)
# --------------------------------------------------------------------------------------------------


class AdaptiveKLController:
    """beta <- beta * (1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon), after each step,
    with n_steps the number of rollouts in it (Ziegler et al. 2019). Mirrors
    trl.trainer.utils.AdaptiveKLController."""

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        self.value = float(init_kl_coef)
        self.target = target
        self.horizon = horizon

    def update(self, current: float, n_steps: int) -> None:
        proportional_error = float(np.clip(current / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + proportional_error * n_steps / self.horizon


class FixedKLController:
    """A constant beta. Mirrors trl.trainer.utils.FixedKLController."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current: float, n_steps: int) -> None:
        pass


# --------------------------------------------------------------------------------------------------
# Value head and the policy (trl.models.modeling_value_head)
# --------------------------------------------------------------------------------------------------


class ValueHead(nn.Module):
    """A scalar value per position: dropout, then a linear layer on the last hidden state, in float32.
    Mirrors trl.models.modeling_value_head.ValueHead (summary_dropout_prob 0.1, default random init)."""

    def __init__(self, hidden_size: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.summary = nn.Linear(hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(hidden_states).to(self.summary.weight.dtype)
        return self.summary(hidden).squeeze(-1)


def disable_dropout(module: nn.Module) -> None:
    """Set every nn.Dropout's probability to 0 (PPOv2's disable_dropout_in_model); see the module doc."""
    for child in module.modules():
        if isinstance(child, nn.Dropout):
            child.p = 0.0


@dataclass
class RolloutBatch:
    """Queries left-padded and responses right-padded into one [B, Q + R] layout.

    response_ids/response_mask are [B, R]: the response tokens (EOS included when there is one) and
    1 where a token is real. Position ids count real tokens only, so padding changes nothing.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor

    def select(self, index) -> "RolloutBatch":
        return RolloutBatch(*(getattr(self, f.name)[index] for f in fields(self)))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def build_rollout_batch(
    queries: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int, device="cpu"
) -> RolloutBatch:
    """The [left-padded query | right-padded response] tensors for forward passes (TRL v0.11
    PPOTrainer.prepare_model_inputs + the response masks of batched_forward_pass)."""
    query_length = max(len(q) for q in queries)
    response_length = max(len(r) for r in responses)
    size = len(queries)
    input_ids = torch.full((size, query_length + response_length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, (query, response) in enumerate(zip(queries, responses)):
        start = query_length - len(query)
        input_ids[row, start:query_length] = torch.tensor(list(query), dtype=torch.long)
        input_ids[row, query_length : query_length + len(response)] = torch.tensor(list(response), dtype=torch.long)
        attention_mask[row, start : query_length + len(response)] = 1
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    batch = RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        response_ids=input_ids[:, query_length:].clone(),
        response_mask=attention_mask[:, query_length:].float(),
    )
    return RolloutBatch(*(getattr(batch, f.name).to(device) for f in fields(batch)))


def response_logits(
    lm: nn.Module, batch: RolloutBatch, *, want_hidden: bool, logits_to_keep: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits predicting each response token, [B, R, V] in float32, and the last hidden state at the
    same positions. Position t of the response is predicted from position t - 1 of the input: the
    old trainer's logits[:, :-1] against input_ids[:, 1:] (TRL v0.11 PPOTrainer.batched_forward_pass)."""
    response_length = batch.response_ids.shape[1]
    kwargs = dict(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        output_hidden_states=want_hidden,
    )
    if logits_to_keep:
        kwargs["logits_to_keep"] = response_length + 1
    output = lm(**kwargs)
    logits = output.logits[:, -(response_length + 1) : -1].float()
    hidden = output.hidden_states[-1][:, -(response_length + 1) : -1] if want_hidden else None
    return logits, hidden


class PolicyWithValueHead(nn.Module):
    """A causal LM and a value head sharing its trunk (AutoModelForCausalLMWithValueHead)."""

    def __init__(self, lm: nn.Module, value_head: ValueHead):
        super().__init__()
        self.lm = lm
        self.value_head = value_head
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        self.logits_to_keep = "logits_to_keep" in _forward_parameters(base)

    def forward(self, batch: RolloutBatch, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, R, V] / temperature, values [B, R]) for the response positions of `batch`."""
        logits, hidden = response_logits(self.lm, batch, want_hidden=True, logits_to_keep=self.logits_to_keep)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            values = self.value_head(hidden.float())
        return _tempered(logits, temperature), values


def _forward_parameters(model: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1.0 else logits / temperature


# --------------------------------------------------------------------------------------------------
# Prompt sampling
# --------------------------------------------------------------------------------------------------


class PromptSampler:
    """Batches of prompt indices: epochs of seeded shuffles, a batch continuing into the next epoch.

    Its state is (epoch, position), so a resumed run draws the same batches; the shuffle of epoch e
    depends only on (seed, e), not on any global random state.
    """

    def __init__(self, num_prompts: int, seed: int, epoch: int = 0, position: int = 0):
        if num_prompts < 1:
            raise ValueError("PPO needs at least one training prompt")
        self.num_prompts = num_prompts
        self.seed = seed
        self.epoch = epoch
        self.position = position

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_prompts)

    def next_batch(self, size: int) -> list[int]:
        batch: list[int] = []
        while len(batch) < size:
            order = self.order(self.epoch)
            take = order[self.position : self.position + size - len(batch)]
            batch.extend(int(i) for i in take)
            self.position += len(take)
            if self.position == self.num_prompts:
                self.epoch, self.position = self.epoch + 1, 0
        return batch

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class PPOConfig:
    """PPO settings; defaults are TRL's gpt2-sentiment example's (the paper's).

    `target_kl` and `kl_horizon` are the old PPOConfig's `target` and `horizon` (the adaptive KL
    controller's), not its early-stopping `target_kl`. `steps` counts PPO steps (batches of
    `batch_size` rollouts). Each optimizer step takes mini_batch_size * gradient_accumulation_steps
    rollouts (the old `backward_batch_size`); minibatches are also the forward-pass chunks.
    Beyond the old trainer's settings: missing_eos_penalty (PPOv2's), the policy's sampling
    (max_new_tokens, temperature, top_p, top_k; the example sampled with top_k 0, top_p 1),
    generation_batch_size (rollouts per `generate` call; None = the whole batch), save_every and lora.
    """

    steps: int = 100
    learning_rate: float = 1.41e-5
    batch_size: int = 128
    mini_batch_size: int = 128
    gradient_accumulation_steps: int = 1
    ppo_epochs: int = 4
    init_kl_coef: float = 0.2
    adaptive_kl: bool = True
    target_kl: float = 6.0
    kl_horizon: float = 10000
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    whiten_rewards: bool = False
    score_clip: float | None = None
    ratio_threshold: float = 10.0
    missing_eos_penalty: float | None = None
    max_grad_norm: float | None = None
    save_every: int = 10
    seed: int = 0
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    generation_batch_size: int | None = None
    gradient_checkpointing: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self):
        backward = self.mini_batch_size * self.gradient_accumulation_steps
        if self.batch_size % backward:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of "
                f"mini_batch_size * gradient_accumulation_steps ({backward})"
            )
        positive = ("steps", "batch_size", "mini_batch_size", "gradient_accumulation_steps", "ppo_epochs")
        for name in positive + ("save_every", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @classmethod
    def from_config(cls, section: dict | None, name: str = "ppo") -> "PPOConfig":
        """From the config's section `name` (ppo or rlhf: same key names; `lora` is a LoraSettings
        section; `max_prompts` is the stage's, not the trainer's)."""
        section = dict(section or {})
        if "lora" in section and not isinstance(section["lora"], LoraSettings):
            section["lora"] = LoraSettings.from_config(section["lora"], f"{name}.lora")
        return from_section(cls, section, name, elsewhere=("max_prompts",))

    def kl_controller(self) -> AdaptiveKLController | FixedKLController:
        if self.adaptive_kl:
            return AdaptiveKLController(self.init_kl_coef, self.target_kl, self.kl_horizon)
        return FixedKLController(self.init_kl_coef)


# --------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices), as trl.core.set_seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class PPOTrainer:
    """PPO of a causal LM `model` against `reward_fn`, checkpointed and resumable in `output_dir`.

    query_fn(x) is the chat conversation the policy answers for prompt x; reward_fn(prompts,
    completions) returns one score per rollout and a dict of timings (`time_frozen_generation`,
    `time_scoring` where it knows them). With LoRA enabled only the adapters and the value head are
    trained and the reference is the same model with its adapters disabled; otherwise all weights
    are trained and the reference is a frozen copy.

    dtype "auto" keeps float32 weights (float32 on CPU, bfloat16 autocast on CUDA); another dtype
    loads and trains the weights in it. The final model is saved in the checkpoint's own dtype.
    """

    def __init__(
        self,
        config: PPOConfig,
        *,
        model: str,
        query_fn: Callable[[str], list[dict]],
        reward_fn: RewardFn,
        output_dir: str | os.PathLike,
        revision: str = "main",
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ):
        from transformers import AutoConfig, AutoModelForCausalLM

        self.config = config
        self.model_name = str(model)
        self.revision = revision
        self.dtype = dtype
        self.query_fn = query_fn
        self.reward_fn = reward_fn
        self.output_dir = Path(output_dir)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        set_seed(config.seed)

        self.tokenizer = load_tokenizer(model, revision=revision, trust_remote_code=trust_remote_code)
        model_config = AutoConfig.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code)
        load_dtype = torch.float32 if dtype == "auto" else named_dtype(dtype)
        self.save_dtype = checkpoint_dtype(model_config) if dtype == "auto" else load_dtype
        self.autocast = self.device.type == "cuda" and load_dtype == torch.float32
        base = AutoModelForCausalLM.from_pretrained(
            model, revision=revision, dtype=load_dtype, trust_remote_code=trust_remote_code
        ).to(self.device)
        self.eos_ids = eos_ids(base.generation_config.eos_token_id, self.tokenizer.eos_token_id)
        if config.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        peft_config = config.lora.peft_config()
        if peft_config is not None:
            from peft import get_peft_model

            lm = get_peft_model(base, peft_config)
            self.reference = None
        else:
            lm = base
            self.reference = copy.deepcopy(base).eval().requires_grad_(False)
        hidden_size = base.config.get_text_config().hidden_size
        self.policy = PolicyWithValueHead(lm, ValueHead(hidden_size)).to(self.device)
        self.policy.value_head.float()
        disable_dropout(self.policy)
        self.optimizer = torch.optim.Adam(
            [p for p in self.policy.parameters() if p.requires_grad], lr=config.learning_rate
        )
        self.kl_controller = config.kl_controller()
        self.metrics: list[dict] = []
        self._trained = False

    @property
    def uses_lora(self) -> bool:
        return self.reference is None

    # ---------------------------------------------------------------- training loop

    def train(self, prompts: Sequence[str]) -> Path:
        """Run the remaining PPO steps (resuming from `output_dir/checkpoints` when its fingerprint
        matches), then write `output_dir/model` and `output_dir/metrics.parquet`; return the model path."""
        if self._trained:
            raise RuntimeError("a PPOTrainer trains once; make a new one to train again")
        self._trained = True
        prompts = list(prompts)
        config = self.config
        queries = [self._encode_query(prompt) for prompt in prompts]
        fingerprint = self.fingerprint(queries)
        sampler = PromptSampler(len(prompts), config.seed)
        start = self._resume(fingerprint, sampler)

        with progress_bar(total=config.steps, initial=start, desc="ppo", unit="step") as progress:
            for step in range(start + 1, config.steps + 1):
                batch = sampler.next_batch(config.batch_size)
                with nested():  # the frozen model's and the scorer's bars inside a step would drown the step lines
                    row = self.step(step, [prompts[i] for i in batch], [queries[i] for i in batch])
                self.metrics.append(row)
                log.info(
                    "step %d/%d reward=%.4f score=%.4f kl=%.4f kl_coef=%.4f entropy=%.3f length=%.1f time=%.2fs",
                    step, config.steps, row["reward_mean"], row["score_mean"], row["kl"], row["kl_coef"],
                    row["entropy"], row["response_length"], row["time_step"],
                )
                if step % config.save_every == 0 or step == config.steps:
                    self.save_checkpoint(step, sampler, fingerprint)
                progress.update(1)

        model_path = self.save_model()
        write_table(self.metrics_table(), self.output_dir / METRICS, PPO_METRICS)
        shutil.rmtree(self.output_dir / CHECKPOINTS, ignore_errors=True)
        log.info("PPO model written to %s", model_path)
        return model_path

    def step(self, step: int, prompts: list[str], queries: list[list[int]]) -> dict:
        """One PPO step on these prompts (already encoded as `queries`): rollout, reward, update.
        Returns its PPO_METRICS row. Mirrors TRL v0.11 PPOTrainer.generate + .step."""
        config = self.config
        started = time.perf_counter()
        responses, ended = self.generate(queries)
        time_policy_generation = time.perf_counter() - started

        completions = [self._completion(response, end) for response, end in zip(responses, ended)]
        reward_started = time.perf_counter()
        raw_scores, info = self.reward_fn(prompts, completions)
        info = info or {}
        time_reward = time.perf_counter() - reward_started
        if len(raw_scores) != len(prompts):
            raise ValueError(f"reward_fn returned {len(raw_scores)} scores for {len(prompts)} rollouts")

        update_started = time.perf_counter()
        batch = build_rollout_batch(queries, responses, self.tokenizer.pad_token_id, self.device)
        raw = torch.tensor([float(s) for s in raw_scores], dtype=torch.float32, device=self.device)
        ended_tensor = torch.tensor(ended, dtype=torch.bool, device=self.device)
        scores = adjust_scores(
            raw, ended_tensor, score_clip=config.score_clip, missing_eos_penalty=config.missing_eos_penalty
        )
        stats = self.update(batch, scores)
        time_update = time.perf_counter() - update_started

        return {
            "step": step,
            "reward_mean": stats["reward_mean"],
            "reward_std": stats["reward_std"],
            "score_mean": float(raw.mean().item()),
            "kl": stats["kl"],
            "kl_coef": stats["kl_coef"],
            "entropy": stats["entropy"],
            "policy_loss": stats["policy_loss"],
            "value_loss": stats["value_loss"],
            "clip_fraction": stats["clip_fraction"],
            "value_clip_fraction": stats["value_clip_fraction"],
            "approx_kl": stats["approx_kl"],
            "response_length": float(np.mean([len(r) for r in responses])),
            "missing_eos_fraction": float(np.mean([not e for e in ended])),
            "time_policy_generation": time_policy_generation,
            "time_reward": time_reward,
            "time_frozen_generation": _optional_float(info.get("time_frozen_generation")),
            "time_scoring": _optional_float(info.get("time_scoring")),
            "time_update": time_update,
            "time_step": time.perf_counter() - started,
        }

    def update(self, batch: RolloutBatch, scores: torch.Tensor) -> dict[str, float]:
        """The optimisation part of TRL v0.11 PPOTrainer.step: old log-probs/values and reference
        log-probs, per-token rewards, GAE, then ppo_epochs over shuffled minibatches, then the KL
        controller update. Returns step statistics."""
        config = self.config
        kl_coef = self.kl_controller.value
        old_logprobs, old_values, ref_logprobs, entropy = self.rollout_statistics(batch)
        mask = batch.response_mask
        rewards, _, kls = compute_rewards(scores, old_logprobs, ref_logprobs, mask, kl_coef)
        old_values, advantages, returns = compute_advantages(
            old_values, rewards, mask, gamma=config.gamma, lam=config.lam, whiten_rewards=config.whiten_rewards
        )

        size = len(batch)
        backward_size = config.mini_batch_size * config.gradient_accumulation_steps
        minibatch_stats = []
        self.policy.train()
        for _ in range(config.ppo_epochs):
            order = torch.from_numpy(np.random.permutation(size)).to(self.device)
            for backward_start in range(0, size, backward_size):
                backward_indices = order[backward_start : backward_start + backward_size]
                for mini_start in range(0, backward_size, config.mini_batch_size):
                    index = backward_indices[mini_start : mini_start + config.mini_batch_size]
                    with self._autocast():
                        logits, vpreds = self.policy(batch.select(index), config.temperature)
                    logprobs = logprobs_from_logits(logits, batch.response_ids[index])
                    loss, stats = ppo_loss(
                        logprobs,
                        vpreds,
                        old_logprobs[index],
                        old_values[index],
                        advantages[index],
                        returns[index],
                        mask[index],
                        cliprange=config.cliprange,
                        cliprange_value=config.cliprange_value,
                        vf_coef=config.vf_coef,
                        ratio_threshold=config.ratio_threshold,
                    )
                    (loss / config.gradient_accumulation_steps).backward()
                    minibatch_stats.append(stats)
                    del logits, vpreds, logprobs, loss
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in self.policy.parameters() if p.requires_grad], config.max_grad_norm
                    )
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        self.policy.eval()

        sequence_kl = kls.sum(dim=1)
        mean_kl = float(sequence_kl.mean().item())
        if mean_kl < -1.0:
            log.warning("KL divergence is negative (%.2f): check the sampling settings", mean_kl)
        sequence_rewards = rewards.sum(dim=1)
        self.kl_controller.update(mean_kl, size)
        averaged = {key: float(np.mean([s[key] for s in minibatch_stats])) for key in minibatch_stats[0]}
        return {
            **averaged,
            "kl": mean_kl,
            "kl_coef": kl_coef,
            "entropy": float(masked_mean(entropy, mask).item()),
            "reward_mean": float(sequence_rewards.mean().item()),
            "reward_std": float(sequence_rewards.std().item()) if size > 1 else 0.0,
        }

    @torch.no_grad()
    def rollout_statistics(self, batch: RolloutBatch) -> tuple[torch.Tensor, ...]:
        """Log-probs, values and per-token entropy under the policy, and log-probs under the
        reference, of the response tokens, in chunks of mini_batch_size (TRL v0.11
        PPOTrainer.batched_forward_pass). All [B, R], float32."""
        self.policy.eval()
        logprobs, values, ref_logprobs, entropy = [], [], [], []
        for start in range(0, len(batch), self.config.mini_batch_size):
            chunk = batch.select(slice(start, start + self.config.mini_batch_size))
            with self._autocast():
                logits, chunk_values = self.policy(chunk, self.config.temperature)
                logprobs.append(logprobs_from_logits(logits, chunk.response_ids))
                entropy.append(entropy_from_logits(logits))
                values.append(chunk_values.float())
                del logits
                with self._reference() as reference:
                    ref_logits, _ = response_logits(
                        reference, chunk, want_hidden=False, logits_to_keep=self.policy.logits_to_keep
                    )
                ref_logits = _tempered(ref_logits, self.config.temperature)
                ref_logprobs.append(logprobs_from_logits(ref_logits, chunk.response_ids))
                del ref_logits
        return torch.cat(logprobs), torch.cat(values), torch.cat(ref_logprobs), torch.cat(entropy)

    @torch.no_grad()
    def generate(self, queries: list[list[int]]) -> tuple[list[list[int]], list[bool]]:
        """Sample one response per query: left-padded batches, pure sampling (top_k 0), each response
        cut after its first EOS (TRL v0.11 PPOTrainer._generate_batched). Returns the response
        token lists (EOS included) and whether each ended with EOS."""
        config = self.config
        self.policy.eval()
        chunk_size = config.generation_batch_size or config.batch_size
        responses, ended = [], []
        pad_id = self.tokenizer.pad_token_id
        for start in range(0, len(queries), chunk_size):
            chunk = queries[start : start + chunk_size]
            length = max(len(q) for q in chunk)
            input_ids = torch.tensor([[pad_id] * (length - len(q)) + list(q) for q in chunk], device=self.device)
            attention_mask = torch.tensor([[0] * (length - len(q)) + [1] * len(q) for q in chunk], device=self.device)
            with self._autocast():
                output = self.policy.lm.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    do_sample=True,
                    temperature=config.temperature,
                    top_p=config.top_p,
                    top_k=config.top_k,
                    repetition_penalty=1.0,
                    max_new_tokens=config.max_new_tokens,
                    eos_token_id=sorted(self.eos_ids),
                    pad_token_id=pad_id,
                    use_cache=True,
                )
            for tokens in output[:, length:].tolist():
                end = next((i for i, token in enumerate(tokens) if token in self.eos_ids), None)
                responses.append(tokens if end is None else tokens[: end + 1])
                ended.append(end is not None)
        return responses, ended

    # ---------------------------------------------------------------- checkpoints

    def fingerprint(self, queries: list[list[int]]) -> str:
        """Hash of the config (less steps and save_every), the model (its files' contents for a local
        directory, else id@revision), the dtype and the encoded queries, so a checkpoint is only
        resumed by the run that wrote it."""
        settings = {k: v for k, v in asdict(self.config).items() if k not in ("steps", "save_every")}
        digest = hashlib.sha256()
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
        digest.update(f"{self.dtype}\0{self.revision}\0".encode())
        digest.update(_model_fingerprint(self.model_name, self.revision).encode())
        digest.update(json.dumps(queries).encode())
        return digest.hexdigest()

    def save_checkpoint(self, step: int, sampler: PromptSampler, fingerprint: str) -> Path:
        """Write output_dir/checkpoints/step-XXXXXX atomically (temporary directory, then rename) and
        delete the older ones. Holds the trainable weights (the adapters only with LoRA), the value
        head, the optimizer, the RNG states, beta, the sampler position and the metrics so far."""
        root = self.output_dir / CHECKPOINTS
        final = root / f"step-{step:06d}"
        with atomic_directory(final) as tmp:
            torch.save(self._trainable_weights(), tmp / "policy.pt")
            torch.save(self.policy.value_head.state_dict(), tmp / "value_head.pt")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(rng_states(), tmp / "rng.pt")
            write_table(self.metrics_table(), tmp / METRICS, PPO_METRICS)
            state = {
                "step": step,
                "kl_coef": self.kl_controller.value,
                "sampler": sampler.state(),
                "fingerprint": fingerprint,
            }
            (tmp / "state.json").write_text(json.dumps(state, indent=1))
        for old in root.iterdir():
            if old == final:
                continue
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        return final

    def _resume(self, fingerprint: str, sampler: PromptSampler) -> int:
        """Load the latest complete checkpoint when its fingerprint matches; return its step (else 0)."""
        checkpoint = latest_checkpoint(self.output_dir / CHECKPOINTS)
        if checkpoint is None:
            return 0
        state = json.loads((checkpoint / "state.json").read_text())
        if state["fingerprint"] != fingerprint:
            log.warning(
                "checkpoint %s was written by a different config, model or prompt set: starting from step 0", checkpoint
            )
            return 0
        if state["step"] > self.config.steps:
            raise CheckpointPastSteps(
                f"steps is {self.config.steps}, but {checkpoint} holds a run already at step {state['step']}, which "
                "would be saved as the shorter run: raise steps to at least that, or delete the checkpoint's directory "
                "to train a fresh run"
            )
        # Loaded on the CPU: load_state_dict copies weights to their parameters' device, and moves the
        # optimizer's moments there while keeping Adam's step counts on the CPU, where torch wants them.
        self._load_trainable_weights(torch.load(checkpoint / "policy.pt", map_location="cpu"))
        self.policy.value_head.load_state_dict(torch.load(checkpoint / "value_head.pt", map_location="cpu"))
        self.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location="cpu"))
        restore_rng_states(torch.load(checkpoint / "rng.pt", weights_only=False))
        self.kl_controller.value = float(state["kl_coef"])
        sampler.epoch, sampler.position = state["sampler"]["epoch"], state["sampler"]["position"]
        self.metrics = read_table(checkpoint / METRICS, PPO_METRICS).to_pylist()
        log.info("resuming from step %d (%s)", state["step"], checkpoint)
        return int(state["step"])

    def _trainable_weights(self) -> dict[str, torch.Tensor]:
        if self.uses_lora:
            from peft import get_peft_model_state_dict

            return get_peft_model_state_dict(self.policy.lm)
        return self.policy.lm.state_dict()

    def _load_trainable_weights(self, weights: dict[str, torch.Tensor]) -> None:
        if self.uses_lora:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.policy.lm, weights)
            if getattr(result, "unexpected_keys", None):
                raise RuntimeError(f"checkpoint has unexpected adapter weights {result.unexpected_keys[:5]}")
        else:
            self.policy.lm.load_state_dict(weights)

    # ---------------------------------------------------------------- outputs

    def save_model(self) -> Path:
        """The trained policy without its value head as a plain transformers model (adapters merged),
        with tokenizer and generation config, written atomically to output_dir/model."""
        target = self.output_dir / MODEL
        lm = self.policy.lm
        if self.uses_lora:
            model = copy.deepcopy(lm).merge_and_unload()
        elif lm.dtype != self.save_dtype:
            model = copy.deepcopy(lm)
        else:
            model = lm
        model = model.to(self.save_dtype)
        if getattr(model, "is_gradient_checkpointing", False):
            model.gradient_checkpointing_disable()
        model.config.use_cache = True
        with atomic_directory(target) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
        return target

    def metrics_table(self) -> pa.Table:
        return pa.Table.from_pylist(self.metrics, schema=PPO_METRICS)

    # ---------------------------------------------------------------- helpers

    def _encode_query(self, prompt: str) -> list[int]:
        text = self.tokenizer.apply_chat_template(self.query_fn(prompt), tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _completion(self, response: list[int], ended: bool) -> Completion:
        """As the project's generators report it: text without EOS, num_tokens with it."""
        tokens = response[:-1] if ended else response
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Completion(text, "stop" if ended else "length", len(response))

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else nullcontext()

    @contextmanager
    def _reference(self):
        """The reference policy: the model with its adapters disabled under LoRA, else the frozen copy."""
        if self.uses_lora:
            with self.policy.lm.disable_adapter():
                yield self.policy.lm
        else:
            yield self.reference


class CheckpointPastSteps(ValueError):
    """A checkpoint to resume from is further along than the configured number of steps."""


def latest_checkpoint(root: Path) -> Path | None:
    """The highest-step complete checkpoint (renamed into place, so it has state.json), or None."""
    if not root.is_dir():
        return None
    candidates = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())
    return candidates[-1] if candidates else None


def _model_fingerprint(model: str, revision: str) -> str:
    from alignpro.hub import snapshot_identity

    path = Path(model)
    if not path.is_dir():
        return f"{model}@{revision}"
    snapshot = snapshot_identity(path)
    if snapshot is not None:  # a fetched hub model: the commit names its files, no need to read gigabytes
        return snapshot
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "PPOConfig",
    "PPOTrainer",
    "PolicyWithValueHead",
    "PromptSampler",
    "RolloutBatch",
    "ValueHead",
    "adjust_scores",
    "build_rollout_batch",
    "compute_advantages",
    "compute_rewards",
    "entropy_from_logits",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "ppo_loss",
]
