"""What the task models are trained to and for how long: the roles, each role's `TrainingPlan` and its
held-out `Target`s (`alignpro.task_models` trains them).

Free of torch, so that the workflow can read it when it plans: the model stage's jobs key (params,
between-workflow cache) on their role's plan, and a changed plan retrains the models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TASKS = ("phrasing",)
"""The bundled tasks models can be trained on (a model entry's `task`)."""

ROLES = ("base", "frozen", "reward", "prompter")
"""`base` first: the other three are fine-tuned from it."""

TRAINING_CARD = "task_training.json"
"""What a task model was trained on and how well it did, saved beside its weights."""

# torch's CPU kernel paths, as ATEN_CPU_CAPABILITY names them (`default` is no SIMD): the same seed
# rounds differently on each, and every role must reach its targets on all of them
FLOAT_PATHS = ("default", "avx2", "avx512")


@dataclass(frozen=True)
class Target:
    """A figure of the held-out evaluation that a trained role must reach: `metric` between `low` and
    `high`, inclusive."""

    metric: str
    low: float = -math.inf
    high: float = math.inf

    def met(self, metrics: dict[str, float]) -> bool:
        return self.low <= metrics[self.metric] <= self.high

    def __str__(self) -> str:
        bounds = [f"≥ {self.low:g}"] * (self.low > -math.inf) + [f"≤ {self.high:g}"] * (self.high < math.inf)
        return f"{self.metric} {' and '.join(bounds)}"


@dataclass(frozen=True)
class TrainingPlan:
    """How one role is trained: AdamW in cycles of `cycle_steps` batches, each a linear warm-up and a
    cosine decay from a peak half the previous cycle's, until the held-out `targets` hold at the end of
    a cycle (where the learning rate is lowest), for at most `max_cycles`. Each check evaluates
    `held_out` fresh instances (per kind of prompt, for the answering roles).

    A fixed step count left the models' quality to the CPU's float path (the same seed trained the
    frozen model to 77% or 92% on clear prompts depending on torch's SIMD kernels); a measured target
    makes every path train until the model does its part."""

    cycle_steps: int
    max_cycles: int
    batch_size: int
    learning_rate: float
    targets: tuple[Target, ...]
    held_out: int = 300

    def learning_rate_factor(self, step: int) -> float:
        """The multiplier of `learning_rate` at (0-based) `step`."""
        cycle, within = divmod(step, self.cycle_steps)
        warmup = max(1, self.cycle_steps // 20)
        return 0.5**cycle * min(1.0, (within + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * within / self.cycle_steps))


PLANS = {
    "base": TrainingPlan(
        cycle_steps=500, max_cycles=3, batch_size=64, learning_rate=2e-3, held_out=200,
        targets=(Target("sampled_accuracy_clear", low=0.97), Target("sampled_accuracy_vague", low=0.97)),
    ),
    "frozen": TrainingPlan(
        cycle_steps=150, max_cycles=6, batch_size=64, learning_rate=1e-3, held_out=200,
        targets=(Target("sampled_accuracy_clear", low=0.9), Target("sampled_accuracy_vague", high=0.5)),
    ),
    "reward": TrainingPlan(
        cycle_steps=300, max_cycles=4, batch_size=64, learning_rate=2e-3,
        targets=(Target("pairwise_accuracy_vs_misread", low=0.9), Target("pairwise_accuracy_vs_wrong_words", low=0.6)),
    ),
    "prompter": TrainingPlan(
        cycle_steps=900, max_cycles=3, batch_size=16, learning_rate=1e-3,
        targets=(Target("sampled_rewrites_keeping_task", low=0.8), Target("sampled_rewrites_clear", low=0.05, high=0.35)),
    ),
}
