"""The PPO trainer: rollouts, rewards and updates per step, checkpoints to resume from, the saved model
and the metrics table (one TRAINING_METRICS row per step)."""

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
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import torch

from alignpro.atomic import atomic_directory
from alignpro.sampling import Completion
from alignpro.lora import log_adapters
from alignpro.modeling import checkpoint_dtype, context_length, eos_ids, fit_to_context, load_tokenizer, named_dtype
from alignpro.ppo.config import PPOConfig
from alignpro.ppo.maths import (
    adjust_scores,
    compute_advantages,
    compute_rewards,
    masked_mean,
    ppo_loss,
)
from alignpro.ppo.policy import (
    PolicyWithValueHead,
    RolloutBatch,
    ValueHead,
    build_rollout_batch,
    disable_dropout,
    response_statistics,
)
from alignpro.progress import nested, progress_bar
from alignpro.tables import TRAINING_METRICS, read_table, write_table

log = logging.getLogger(__name__)

# reward_fn(prompts, completions, step=step) -> (scores, timings), as TRL hands its reward functions
# the trainer's state: the step names an API frozen model's calls in its cache.
RewardFn = Callable[..., tuple[list[float], dict[str, float]]]

CHECKPOINTS = "checkpoints"
MODEL = "model"
METRICS = "metrics.parquet"


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
    `time_scoring` where it knows them) and the frozen model's answers it asked for (`frozen_calls`). With LoRA enabled only the adapters and the value head are
    trained and the reference is the same model with its adapters disabled; otherwise all weights
    are trained and the reference is a frozen copy.

    dtype "auto" keeps float32 weights (float32 on CPU, bfloat16 autocast on CUDA); another dtype
    loads and trains the weights in it. The final model is saved in the checkpoint's own dtype.
    The frozen reference copy is held in the compute dtype (bfloat16 under autocast: it is only
    ever run under autocast, so float32 weights would only double its memory). Adam is torch's
    fused implementation where torch has one for the parameters' device and dtype.
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
        self.context = context_length(model_config)
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
            log_adapters(lm, self.model_name)
            self.reference = None
        else:
            lm = base
            reference_dtype = torch.bfloat16 if self.autocast else load_dtype
            self.reference = copy.deepcopy(base).to(reference_dtype).eval().requires_grad_(False)
        hidden_size = base.config.get_text_config().hidden_size
        self.policy = PolicyWithValueHead(lm, ValueHead(hidden_size)).to(self.device)
        self.policy.value_head.float()
        disable_dropout(self.policy)
        self.optimizer = adam([p for p in self.policy.parameters() if p.requires_grad], config.learning_rate)
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
        _, queries = fit_to_context(
            self.tokenizer,
            [self.query_fn(prompt) for prompt in prompts],
            context=self.context,
            max_new_tokens=config.max_new_tokens,
            model=self.model_name,
        )
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
        write_table(self.metrics_table(), self.output_dir / METRICS, TRAINING_METRICS)
        shutil.rmtree(self.output_dir / CHECKPOINTS, ignore_errors=True)
        log.info("PPO model written to %s", model_path)
        return model_path

    def step(self, step: int, prompts: list[str], queries: list[list[int]]) -> dict:
        """One PPO step on these prompts (already encoded as `queries`): rollout, reward, update.
        Returns its TRAINING_METRICS row. Mirrors TRL v0.11 PPOTrainer.generate + .step."""
        config = self.config
        started = time.perf_counter()
        responses, ended = self.generate(queries)
        time_policy_generation = time.perf_counter() - started

        completions = [self._completion(response, end) for response, end in zip(responses, ended)]
        reward_started = time.perf_counter()
        raw_scores, info = self.reward_fn(prompts, completions, step=step)
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
            "frozen_calls": self._frozen_calls(info.get("frozen_calls")),
        }

    def _frozen_calls(self, this_step: int | None) -> int | None:
        """The frozen model's answers from the run's start to this step, where the reward reports them."""
        if this_step is None:
            return None
        before = self.metrics[-1]["frozen_calls"] if self.metrics else 0
        return (before or 0) + int(this_step)

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
                        logprobs, vpreds, _ = self.policy(batch.select(index), config.temperature)
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
                    del vpreds, logprobs, loss
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
        PPOTrainer.batched_forward_pass). All [B, R], float32. The entropy, a logged metric, is
        computed here only, without gradients, by the same chunked head as the log-probs."""
        self.policy.eval()
        temperature = self.config.temperature
        logprobs, values, ref_logprobs, entropy = [], [], [], []
        for start in range(0, len(batch), self.config.mini_batch_size):
            chunk = batch.select(slice(start, start + self.config.mini_batch_size))
            with self._autocast():
                chunk_logprobs, chunk_values, chunk_entropy = self.policy(chunk, temperature, entropy=True)
                logprobs.append(chunk_logprobs)
                values.append(chunk_values.float())
                entropy.append(chunk_entropy)
                with self._reference() as reference:
                    ref_logprobs.append(response_statistics(reference, chunk, temperature)[0])
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
            write_table(self.metrics_table(), tmp / METRICS, TRAINING_METRICS)
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
        # optimizer's moments there and Adam's step counts where torch wants them (the CPU, or the
        # parameters' device for fused Adam).
        self._load_trainable_weights(torch.load(checkpoint / "policy.pt", map_location="cpu"))
        self.policy.value_head.load_state_dict(torch.load(checkpoint / "value_head.pt", map_location="cpu"))
        self.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location="cpu"))
        restore_rng_states(torch.load(checkpoint / "rng.pt", weights_only=False))
        self.kl_controller.value = float(state["kl_coef"])
        sampler.epoch, sampler.position = state["sampler"]["epoch"], state["sampler"]["position"]
        self.metrics = read_table(checkpoint / METRICS, TRAINING_METRICS).to_pylist()
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
        return pa.Table.from_pylist(self.metrics, schema=TRAINING_METRICS)

    # ---------------------------------------------------------------- helpers

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


def train(
    section: dict, name: str, *, model, prompts: Sequence[str], query_fn: Callable[[str], list[dict]], reward_fn: RewardFn,
    workdir: str | os.PathLike, seed: int,
) -> None:
    """PPO as configured by the config's section `name` (ppo, a sweep run's, or rlhf): the registry's
    trainer function (`alignpro.trainers`). `model` is the policy's ModelSpec; checkpoints in
    `workdir/checkpoints` survive a killed job, and a rerun resumes from the last one."""
    trainer = PPOTrainer(
        PPOConfig.from_config({**section, "seed": seed}, name),
        model=model.path,
        query_fn=query_fn,
        reward_fn=reward_fn,
        output_dir=workdir,
        **model.load_options(),
    )
    try:
        trainer.train(prompts)
    except CheckpointPastSteps as error:
        raise ValueError(f"config {name}.steps: {error}") from None


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


def adam(parameters: list[torch.nn.Parameter], learning_rate: float) -> torch.optim.Adam:
    """torch's fused Adam (one kernel updating every parameter) where torch has it for all the
    parameters' devices and dtypes (floating point on CUDA or the CPU, torch >= 2.4), else its default."""
    fused = all(p.is_floating_point() and p.device.type in ("cuda", "cpu") for p in parameters)
    return torch.optim.Adam(parameters, lr=learning_rate, fused=fused or None)


def _optional_float(value) -> float | None:
    return None if value is None else float(value)
