"""The PPO run's settings (one dataclass, from the config's ppo or rlhf section) and its KL controllers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from alignpro.lora import LoraSettings
from alignpro.settings import from_section


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
