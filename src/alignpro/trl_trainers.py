"""TRL's maintained RL trainers, GRPO and RLOO, as prompter trainers (`alignpro.trainers`).

Both take reward functions as callables, so the prompter's reward goes in unchanged: `TRLReward` hands
TRL's completions (the rewrites x') and the dataset's `original` column (x) to the stage's reward
(`alignpro.training.RewriteReward`: the frozen model answers x', the reward model scores x with the
answer). Each prompt is the prompter's chat input (`query_fn`); TRL samples `num_generations`
completions of it. The KL is to rho_sft: both trainers start from rho_sft and take their reference from
the same weights. RLOO puts beta·KL (k1, summed over the completion) into the reward, as Align-Pro's
objective does; GRPO adds beta·KL (k3 per token) to its loss, and scales advantages by the group's std.

Checkpoints are TRL's (`workdir/checkpoints/checkpoint-<step>`, every `save_every` steps); a killed
job's rerun resumes from the last one as TRL does (`resume_from_checkpoint`), and a finished run
deletes them, as PPO's does. The metrics table is built from TRL's
own log history (saved with each checkpoint), under the names every trainer shares
(`alignpro.tables.TRAINING_METRICS`).

On several GPUs the job trains in one process per GPU (alignpro.distributed starts them under torchrun,
as `accelerate launch` does); each process samples and rewards `prompts_per_step` prompts a step, TRL
gathers the groups' rewards, and the main process writes the model and metrics. DeepSpeed or FSDP go in
`args` (TRL's `deepspeed`, `fsdp` keys).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from alignpro.atomic import atomic_directory
from alignpro.lora import LoraSettings, log_adapters
from alignpro.sampling import Completion
from alignpro.settings import from_section
from alignpro.tables import TRAINING_METRICS, write_table

log = logging.getLogger(__name__)

CHECKPOINTS, METRICS = "checkpoints", "metrics.parquet"


@dataclass(frozen=True)
class TRLSettings:
    """A grpo or rloo section, in PPO's terms where PPO has the setting, and `args` for any other key of
    TRL's config, by TRL's name (e.g. `loss_type`, `lr_scheduler_type`, `use_vllm`, `deepspeed`).

    A step is one round of rollouts, as PPO's: `num_generations` completions of each of
    `prompts_per_step` prompts, then `epochs` passes over them (TRL's `num_iterations`) in `mini_batches`
    optimizer steps each (TRL's `steps_per_generation`). `beta` is the KL coefficient to rho_sft (TRL's
    GRPO default of 0 would drop the KL term, and with it Align-Pro's objective)."""

    steps: int = 100
    learning_rate: float = 1e-6
    prompts_per_step: int = 8
    num_generations: int = 4
    mini_batches: int = 1
    epochs: int = 1
    beta: float = 0.05
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    save_every: int = 10
    gradient_checkpointing: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)
    args: dict = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "prompts_per_step", "mini_batches", "epochs", "save_every", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be at least 2 (the group baseline needs siblings), got {self.num_generations}")
        if self.rollouts % self.mini_batches:
            raise ValueError(
                f"prompts_per_step x num_generations ({self.rollouts}) must be a multiple of mini_batches ({self.mini_batches})"
            )
        if taken := sorted(set(self.args) & SET_BY_THE_SECTION):
            raise ValueError(f"args.{taken[0]}: set by the section's own keys (they set {sorted(SET_BY_THE_SECTION)}); drop it from args")

    @property
    def rollouts(self) -> int:
        """Completions sampled per step."""
        return self.prompts_per_step * self.num_generations

    @property
    def optimizer_steps_per_step(self) -> int:
        return self.mini_batches * self.epochs

    @classmethod
    def from_config(cls, section: dict | None, name: str) -> "TRLSettings":
        """From the config's section `name` (grpo or rloo); `max_prompts` is the stage's. A bad key or
        value names its place in the config."""
        section = dict(section or {})
        if "lora" in section and not isinstance(section["lora"], LoraSettings):
            section["lora"] = LoraSettings.from_config(section["lora"], f"{name}.lora")
        try:
            return from_section(cls, section, name, elsewhere=("max_prompts",))
        except ValueError as error:
            message = str(error)
            raise ValueError(message if message.startswith("config ") else f"config {name}: {message}") from None


# TRL config keys the section's own keys set (or that would change what a step is): not for `args`.
SET_BY_THE_SECTION = {
    "output_dir", "max_steps", "learning_rate", "per_device_train_batch_size", "num_generations", "steps_per_generation",
    "generation_batch_size", "num_iterations", "gradient_accumulation_steps", "beta", "max_completion_length",
    "temperature", "top_p", "top_k", "gradient_checkpointing", "seed", "save_steps", "logging_steps",
}


class TRLReward:
    """A TRL reward function: `reward_fn` (prompts, completions, step) -> (scores, measures) on the
    original prompts x (the dataset's `original` column) and the completions as `Completion`s ("stop"
    when they end in an end-of-sequence token, "length" when cut at `max_new_tokens`), its measures
    (seconds, the frozen model's answers) logged as TRL metrics of the step. The reward learns the step
    (the round of rollouts, from 1) to name an API frozen model's calls by, as PPO's does."""

    __name__ = "align_pro_reward"  # TRL names a reward's metrics after it

    def __init__(self, reward_fn: Callable, eos_ids: frozenset[int], max_new_tokens: int, optimizer_steps_per_step: int = 1):
        self.reward_fn = reward_fn
        self.eos_ids = eos_ids
        self.max_new_tokens = max_new_tokens
        self.optimizer_steps_per_step = optimizer_steps_per_step

    def __call__(self, prompts, completions, completion_ids, original, trainer_state, log_metric, **kwargs) -> list[float]:
        texts = [completion[-1]["content"] if isinstance(completion, list) else completion for completion in completions]
        finished = [
            Completion(text, "length" if len(ids) >= self.max_new_tokens and ids[-1] not in self.eos_ids else "stop", len(ids))
            for text, ids in zip(texts, completion_ids)
        ]
        step = trainer_state.global_step // self.optimizer_steps_per_step + 1  # the round, numbered as the metrics' steps
        scores, measures = self.reward_fn(list(original), finished, step=step)
        for name, value in measures.items():
            log_metric(name, float(value))
        return [float(score) for score in scores]


def _timed_generation(trainer_class):
    """`trainer_class` whose policy generation is timed into its metrics (`time_policy_generation`)."""

    class Timed(trainer_class):
        def _generate(self, prompts: list):
            started = time.perf_counter()
            generated = super()._generate(prompts)
            self._metrics["train" if self.model.training else "eval"]["time_policy_generation"].append(time.perf_counter() - started)
            return generated

    Timed.__name__ = Timed.__qualname__ = trainer_class.__name__
    return Timed


def trl_classes(kind: str):
    """TRL's (config class, trainer class) of `kind` (grpo or rloo), the trainer's generation timed."""
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config_class, trainer_class = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[kind]
    return config_class, _timed_generation(trainer_class)


def trl_config(kind: str, settings: TRLSettings, output_dir: str | os.PathLike, load_options: dict):
    """TRL's config of `kind` for these settings: a step's rollouts generated at once (`steps_per_generation`
    = mini_batches), reused for `epochs` passes (`num_iterations`), metrics logged every optimizer step,
    checkpoints every `save_every` steps; bf16 mixed precision on a GPU, float32 on the CPU."""
    from alignpro.sft import trl_precision_and_loading

    config_class, _ = trl_classes(kind)
    try:
        return config_class(
            output_dir=str(output_dir),
            max_steps=settings.steps * settings.optimizer_steps_per_step,
            learning_rate=settings.learning_rate,
            per_device_train_batch_size=settings.rollouts // settings.mini_batches,
            steps_per_generation=settings.mini_batches,
            num_iterations=settings.epochs,
            num_generations=settings.num_generations,
            beta=settings.beta,
            max_completion_length=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            gradient_checkpointing=settings.gradient_checkpointing,
            seed=settings.seed,
            **trl_precision_and_loading(load_options["revision"], load_options["trust_remote_code"]),
            save_strategy="steps",
            save_steps=settings.save_every * settings.optimizer_steps_per_step,
            logging_steps=1,
            **settings.args,
        )
    except TypeError as error:  # an `args` key TRL's config does not have
        raise ValueError(f"config {kind}.args: {error}") from None


def train_dataset(prompts: Sequence[str], query_fn: Callable[[str], list[dict]]):
    """The prompter's chat inputs as TRL's conversational prompts, each with its original prompt x."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [query_fn(prompt) for prompt in prompts], "original": list(prompts)})


def metrics_table(log_history: list[dict], beta: float, processes: int = 1) -> pa.Table:
    """TRAINING_METRICS rows from TRL's training logs, one per step (a round of rollouts and the optimizer
    steps on them, as PPO's): TRL logs the rollouts' figures (reward, kl, lengths, the reward's measures)
    with the round's first optimizer step, and loss, entropy, clipping and seconds with every one; a row
    takes the former, the mean of the round's losses, entropies and clip fractions, and the sum of its
    seconds. TRL logs `kl` per completion token; the table's `kl` is per completion (times the mean
    completion length: RLOO's k1 sums to exactly that, GRPO's k3 is its estimate), as PPO's, so the
    frontier compares like with like. TRL averages a reward's logged values over its `processes`, so a
    step's frozen-model answers are that mean times the processes."""
    rounds: list[list[dict]] = []
    for entry in log_history:
        if "step_time" not in entry:  # the run's closing summary, or an evaluation
            continue
        if "reward" in entry or not rounds:
            rounds.append([])
        rounds[-1].append(entry)
    rows, calls = [], 0
    for number, entries in enumerate(rounds, start=1):
        first = entries[0]

        def mean(key):
            values = [entry[key] for entry in entries if key in entry]
            return sum(values) / len(values) if values else None

        length = first["completions/mean_length"]
        kl = first.get("kl", 0.0) * length
        calls += round(first.get("frozen_calls", 0.0) * processes)
        frozen, scoring = first.get("time_frozen_generation"), first.get("time_scoring")
        rows.append(
            {
                "step": number,
                "reward_mean": first["reward"] - beta * kl,
                "reward_std": None,
                "score_mean": first["reward"],
                "kl": kl,
                "kl_coef": beta,
                "entropy": mean("entropy"),
                "policy_loss": mean("loss"),
                "value_loss": None,
                "clip_fraction": mean("clip_ratio/region_mean"),
                "value_clip_fraction": None,
                "approx_kl": None,
                "response_length": length,
                "missing_eos_fraction": first["completions/clipped_ratio"],
                "time_policy_generation": first.get("time_policy_generation"),
                "time_reward": (frozen or 0.0) + (scoring or 0.0),
                "time_frozen_generation": frozen,
                "time_scoring": scoring,
                "time_update": None,
                "time_step": sum(entry["step_time"] for entry in entries),
                "frozen_calls": calls if "frozen_calls" in first else None,
            }
        )
    return pa.Table.from_pylist(rows, schema=TRAINING_METRICS)


def _eos_ids(path: str, options: dict, tokenizer) -> frozenset[int]:
    """The end-of-sequence ids the prompter's generation stops at (its generation config's, else the
    tokenizer's), as TRL's generation uses them."""
    from transformers import GenerationConfig

    from alignpro.modeling import eos_ids

    try:
        generation = GenerationConfig.from_pretrained(path, revision=options["revision"], trust_remote_code=options["trust_remote_code"])
    except OSError:  # no generation_config.json
        return eos_ids(None, tokenizer.eos_token_id)
    return eos_ids(generation.eos_token_id, tokenizer.eos_token_id)


def train(
    section: dict, name: str, *, model, prompts: Sequence[str], query_fn: Callable[[str], list[dict]], reward_fn,
    workdir: str | os.PathLike, seed: int,
) -> None:
    """TRL's GRPO or RLOO (`name`) from rho_sft (`model`, a ModelSpec), as configured by the config's
    section `name`: the registry's trainer function (`alignpro.trainers`)."""
    from transformers import AutoTokenizer, PrinterCallback
    from transformers.trainer_utils import get_last_checkpoint

    from alignpro.sft import LogMetrics, resolve_saved_dtype, save_model

    settings = TRLSettings.from_config({**section, "seed": seed}, name)
    workdir = Path(workdir)
    options = model.load_options()
    config = trl_config(name, settings, workdir / CHECKPOINTS, options)
    tokenizer = AutoTokenizer.from_pretrained(model.path, revision=options["revision"], trust_remote_code=options["trust_remote_code"])
    _, trainer_class = trl_classes(name)
    trainer = trainer_class(
        model=model.path,
        reward_funcs=[
            TRLReward(reward_fn, _eos_ids(model.path, options, tokenizer), settings.max_new_tokens, settings.optimizer_steps_per_step)
        ],
        args=config,
        train_dataset=train_dataset(prompts, query_fn),
        processing_class=tokenizer,
        peft_config=settings.lora.peft_config(),
        callbacks=[LogMetrics()],
    )
    trainer.remove_callback(PrinterCallback)
    if settings.lora.enabled:
        log_adapters(trainer.model, model.path)
    resume = get_last_checkpoint(str(workdir / CHECKPOINTS)) if (workdir / CHECKPOINTS).is_dir() else None
    if resume is not None:
        log.info("%s resumes from %s", name, resume)
    trainer.train(resume_from_checkpoint=resume)
    if not trainer.accelerator.is_main_process:  # the main process writes what all of them trained
        return
    saved_dtype = resolve_saved_dtype(model.path, options["dtype"], revision=options["revision"], trust_remote_code=options["trust_remote_code"])
    with atomic_directory(workdir / "model") as tmp:
        save_model(trainer, tmp, saved_dtype)
    metrics = metrics_table(trainer.state.log_history, settings.beta, trainer.accelerator.num_processes)
    write_table(metrics, workdir / METRICS, TRAINING_METRICS)
    shutil.rmtree(workdir / CHECKPOINTS, ignore_errors=True)  # as PPO's: a finished run needs none
    log.info("%s prompter written to %s", name, workdir / "model")
