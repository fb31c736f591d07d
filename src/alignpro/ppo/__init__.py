"""PPO for the prompter (and the RLHF oracle), following TRL's former step-based PPOTrainer (v0.11).

The paper trained its prompter with TRL's old `PPOTrainer` and the hyperparameters of TRL's
gpt2-sentiment example. TRL has since dropped that trainer, and its successor cannot take a reward
that needs another model to answer first, so this module implements the same algorithm:

1. Rollout: sample `batch_size` prompts, turn each into the policy's chat input with `query_fn`,
   sample a response with `generate` (pure sampling: top_k 0, top_p 1, temperature 1), cut it after
   the first end-of-sequence token, and score it with `reward_fn`.
2. Log-probabilities and values of the response tokens under the policy (and log-probabilities
   under the frozen reference), aligned as the old trainer did: logits at position t score token
   t + 1, the value head reads the last hidden state at the same position. The logits are never
   held for the whole response: the output head runs over chunks of tokens and each chunk is
   reduced to its log-probs (and the logged entropy) at once (`alignpro.ppo.policy`).
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
  positions and the mask are the same, and logits are only computed for real response tokens
  (padding gets log-prob and entropy 0, where the old trainer left values it then masked out).
- Memory: the frozen reference copy of full fine-tuning is held in bfloat16 under CUDA autocast
  (the old trainer kept a float32 copy), and Adam is torch's fused one where torch has it.
- Not implemented (off in the gpt2-sentiment example): score scaling/normalisation, the "abs",
  "mse" and "full" KL penalties, early stopping on the policy KL, learning-rate schedulers.
"""

from alignpro.ppo.config import AdaptiveKLController, FixedKLController, PPOConfig
from alignpro.ppo.maths import (
    adjust_scores,
    compute_advantages,
    compute_rewards,
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    ppo_loss,
)
from alignpro.ppo.policy import (
    PolicyWithValueHead,
    RolloutBatch,
    ValueHead,
    build_rollout_batch,
    response_statistics,
)
from alignpro.ppo.trainer import CheckpointPastSteps, PPOTrainer, PromptSampler, train

__all__ = [
    "AdaptiveKLController",
    "CheckpointPastSteps",
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
    "response_statistics",
    "train",
]
