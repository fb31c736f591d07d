"""rho_sft: the prompter supervised-fine-tuned on (x, x') pairs before PPO.

The pairs come from best-of-K self-distillation of the base prompter (`best_of_k_pairs`: sample K
rewrites, keep the one whose frozen-model answers the reward model likes best) or from a file or
hub dataset (`read_pairs`). `train_sft` trains on them with TRL's SFTTrainer, with exactly the
conversation the prompter sees at rewrite time as the prompt and `<prompt>x'</prompt>` as the
completion, and saves a plain model that the rewrite stage and PPO load like any checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

import pyarrow as pa
import pyarrow.parquet as pq
from transformers import TrainerCallback

from alignpro.atomic import atomic_directory
from alignpro.datasets import file_suffix, header_columns, normalise_whitespace, read_records
from alignpro.sampling import Sampling
from alignpro.lora import LoraSettings, log_adapters
from alignpro.modeling import checkpoint_dtype, named_dtype
from alignpro.settings import from_section
from alignpro.rewrite import Rewrite, prompter_conversation, sample_rewrites
from alignpro.tables import SFT_PAIRS, prompt_id_of
from alignpro.training import rewrite_rewards

log = logging.getLogger(__name__)

LOGGING_STEPS = 0.05
"""Log the training loss every 5% of the steps (and at the first), however long the run."""


def best_of_k_pairs(
    prompter,
    frozen,
    scorer,
    prompts: pa.Table,
    *,
    k: int,
    prompter_sampling: Sampling,
    frozen_sampling: Sampling,
    fallback_on_truncation: bool,
    max_length_ratio: float,
) -> pa.Table:
    """One SFT pair per prompt: the best of K sampled rewrites, by the mean reward r(x, y) of the
    frozen model's answers y to it, so rho_sft starts PPO from rewrites that already help.

    Each model is called once, on everything at once, so its backend batches as it likes.
    A rewrite the prompter botched falls back to x, which then competes as a candidate.
    """
    originals = prompts.column("prompt").to_pylist()
    if not originals:
        raise ValueError("best-of-K needs at least one training prompt")
    candidates = sample_rewrites(
        prompter,
        originals,
        dataclasses.replace(prompter_sampling, n=k),
        fallback_on_truncation=fallback_on_truncation,
        max_length_ratio=max_length_ratio,
    )
    texts = [[candidate.text for candidate in row] for row in candidates]
    rewards, _ = rewrite_rewards(frozen, scorer, originals, texts, frozen_sampling)
    best = [max(range(len(row)), key=row.__getitem__) for row in rewards]  # max keeps the first of ties
    _log_best_of_k(k, candidates, rewards, best)
    rows = [
        {
            "prompt_id": prompt_id,
            "prompt": prompt,
            "rewrite": row[choice].text,
            "reward": row_rewards[choice],
            "source": f"best-of-{k}",
        }
        for prompt_id, prompt, row, row_rewards, choice in zip(
            prompts.column("prompt_id").to_pylist(), originals, candidates, rewards, best
        )
    ]
    return pa.Table.from_pylist(rows, schema=SFT_PAIRS)


def _log_best_of_k(
    k: int, candidates: list[list[Rewrite]], rewards: list[list[float]], best: list[int]
) -> None:
    """The gain of best-of-K (kept vs all candidates) and how often the kept rewrite is x itself."""
    kept_fallbacks = sum(row[choice].fallback_reason is not None for row, choice in zip(candidates, best))
    all_fallbacks = sum(candidate.fallback_reason is not None for row in candidates for candidate in row)
    mean_best = fmean(row[choice] for row, choice in zip(rewards, best))
    mean_all = fmean(reward for row in rewards for reward in row)
    log.info(
        "best-of-%d on %d prompts: mean reward %.4f kept vs %.4f over all candidates (gain %+.4f); "
        "%d of %d kept rewrites and %d of %d candidates fell back to the original prompt",
        k, len(best), mean_best, mean_all, mean_best - mean_all,
        kept_fallbacks, len(best), all_fallbacks, sum(map(len, candidates)),
    )


def read_pairs(spec: dict) -> pa.Table:
    """(x, x') pairs from a local jsonl/csv/parquet file (`path`) or a hub dataset (`repo`), cleaned
    like the prompt sets, so that a pair's prompt_id matches the same prompt in the datasets stage."""
    kind = spec.get("source") or ("file" if spec.get("path") else "hub")
    if kind == "file":
        return pairs_table(read_local_pairs(spec["path"], spec["prompt_column"], spec["rewrite_column"]), spec["path"])
    if kind == "hub":
        return pairs_table(read_hub_pairs(spec), spec["repo"])
    raise ValueError(f"SFT pairs from source {kind!r} are not read from a file or the hub")


def read_local_pairs(path: str, prompt_column: str, rewrite_column: str) -> list[tuple[object, object]]:
    """(prompt, rewrite) values of every row of a local file."""
    file = Path(path)
    _require_columns(path, header_columns(file), [prompt_column, rewrite_column])
    if file_suffix(file) == ".parquet":
        rows = pq.read_table(file, columns=[prompt_column, rewrite_column]).to_pylist()
    else:
        rows = read_records(file, prompt_column)
    log.info("read %d rows from %s", len(rows), path)
    return [(row.get(prompt_column), row.get(rewrite_column)) for row in rows]


def read_hub_pairs(spec: dict) -> list[tuple[object, object]]:
    """(prompt, rewrite) values of every row of a hub dataset split, at the pinned revision."""
    import datasets  # imported here: it takes seconds, and the file path never needs it

    log.info("loading %s@%s split %s", spec["repo"], spec["revision"], spec["split"])
    rows = datasets.load_dataset(spec["repo"], revision=spec["revision"], split=spec["split"])
    wanted = [spec["prompt_column"], spec["rewrite_column"]]
    _require_columns(f"{spec['repo']}@{spec['revision']}", rows.column_names, wanted)
    return list(zip(rows[spec["prompt_column"]], rows[spec["rewrite_column"]]))


def _require_columns(where: str, columns: list[str], wanted: list[str]) -> None:
    for column in wanted:
        if column not in columns:
            raise ValueError(f"{where}: no column {column!r}; its columns are {columns}")


def pairs_table(raw: list[tuple[object, object]], source: str) -> pa.Table:
    """SFT_PAIRS rows: whitespace normalised, rows with an empty prompt or rewrite dropped, one row
    per prompt_id (the first wins), no reward."""
    rows: dict[str, dict] = {}
    for prompt, rewrite in raw:
        prompt, rewrite = normalise_whitespace(prompt), normalise_whitespace(rewrite)
        if prompt and rewrite:
            prompt_id = prompt_id_of(prompt)
            row = {"prompt_id": prompt_id, "prompt": prompt, "rewrite": rewrite, "reward": None, "source": source}
            rows.setdefault(prompt_id, row)
    log.info("%s: %d pairs from %d rows (empty and duplicate prompts dropped)", source, len(rows), len(raw))
    return pa.Table.from_pylist(list(rows.values()), schema=SFT_PAIRS)


@dataclass(frozen=True)
class SFTSettings:
    """Hyperparameters of the SFT run, from the config's `sft` section (less `pairs`)."""

    learning_rate: float = 2e-5
    epochs: int = 1
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 1024
    lora: LoraSettings = LoraSettings()
    seed: int = 0

    @classmethod
    def from_config(cls, section: dict | None) -> "SFTSettings":
        """From the config's `sft` section (its `pairs` are the sft_pairs stage's)."""
        section = dict(section or {})
        section["lora"] = LoraSettings.from_config(section.get("lora"), "sft.lora")
        return from_section(cls, section, "sft", elsewhere=("pairs",))


def sft_dataset(pairs: pa.Table):
    """A conversational prompt-completion dataset: the prompter's rewrite-time conversation as the
    prompt, the tagged rewrite it should have answered as the completion, so SFTTrainer computes the
    loss on the completion only."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [prompter_conversation(prompt) for prompt in pairs.column("prompt").to_pylist()],
            "completion": [
                [{"role": "assistant", "content": f"<prompt>{rewrite}</prompt>"}]
                for rewrite in pairs.column("rewrite").to_pylist()
            ],
        }
    )


def trl_precision_and_loading(revision: str, trust_remote_code: bool) -> dict:
    """The keys every TRL config of this project shares: float32 weights, computed under bf16 autocast on
    CUDA (mixed precision, as TRL intends, so that small updates are not lost to bf16 rounding) and in
    float32 on the CPU; the model loaded at its revision; no reporting integrations."""
    import torch

    on_gpu = torch.cuda.is_available()
    return {
        "bf16": on_gpu,
        "use_cpu": not on_gpu,
        "model_init_kwargs": {"revision": revision, "dtype": torch.float32},
        "trust_remote_code": trust_remote_code,
        "report_to": "none",
    }


def build_sft_trainer(
    model: str,
    pairs: pa.Table,
    output_dir: str | os.PathLike,
    settings: SFTSettings,
    *,
    revision: str = "main",
    trust_remote_code: bool = False,
):
    """TRL's SFTTrainer for `model` on `pairs`, saving and reporting nothing by itself; its precision
    and loading are `trl_precision_and_loading`'s."""
    from transformers import AutoTokenizer, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(
        output_dir=str(output_dir),
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        max_length=settings.max_length,
        seed=settings.seed,
        **trl_precision_and_loading(revision, trust_remote_code),
        save_strategy="no",
        logging_steps=LOGGING_STEPS,
        logging_first_step=True,
        disable_tqdm=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=sft_dataset(pairs),
        processing_class=tokenizer,
        peft_config=settings.lora.peft_config(),
        callbacks=[LogMetrics()],
    )
    trainer.remove_callback(PrinterCallback)  # LogMetrics reports through logging instead of print
    if settings.lora.enabled:
        log_adapters(trainer.model, model)
    log_truncation(pairs.num_rows, [len(ids) for ids in trainer.train_dataset["input_ids"]], settings.max_length)
    return trainer


def log_truncation(pairs: int, lengths: list[int], max_length: int) -> None:
    """Say how many pairs TRL's preparation cut to `max_length` tokens (their rewrite's end gets no loss)
    or dropped (the prompt alone fills max_length, nothing is left to learn): it does so silently."""
    dropped = pairs - len(lengths)
    cut = sum(length >= max_length for length in lengths)
    if dropped or cut:
        log.warning(
            "sft.max_length=%d: TRL dropped %d of %d pairs (their prompt alone fills max_length) and cut %d more "
            "at max_length tokens (the end of their rewrite gets no loss); raise sft.max_length to keep them whole",
            max_length, dropped, pairs, cut,
        )
    else:
        log.info("sft.max_length=%d: all %d pairs fit whole (longest %d tokens)", max_length, pairs, max(lengths, default=0))


class LogMetrics(TrainerCallback):
    """Training metrics to the `logging` log (the rule's log file) instead of stdout."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        metrics = " ".join(
            f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in logs.items()
        )
        log.info("SFT step %d/%d: %s", state.global_step, state.max_steps, metrics)


def train_sft(
    model: str,
    pairs: pa.Table,
    out_dir: str | os.PathLike,
    settings: SFTSettings,
    *,
    revision: str = "main",
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> Path:
    """Train rho_sft from `model` on `pairs` and save it to `out_dir`, atomically; return out_dir.

    `dtype` is the dtype rho_sft is saved in, "auto" meaning the base checkpoint's own, so that
    it is served exactly like the base prompter. With LoRA the adapters are merged into the
    weights: out_dir is a plain full model either way.
    """
    out_dir = Path(out_dir)
    saved_dtype = resolve_saved_dtype(model, dtype, revision=revision, trust_remote_code=trust_remote_code)
    log.info("SFT of %s on %d pairs: %s", model, pairs.num_rows, settings)
    with atomic_directory(out_dir) as work_dir:
        trainer = build_sft_trainer(
            model, pairs, work_dir, settings, revision=revision, trust_remote_code=trust_remote_code
        )
        trainer.train()
        save_model(trainer, work_dir, saved_dtype)
    log.info("rho_sft saved to %s", out_dir)
    return out_dir


def resolve_saved_dtype(model: str, dtype: str, *, revision: str, trust_remote_code: bool):
    """The torch dtype `dtype` names, resolved before training so that a bad name fails at once."""
    from transformers import AutoConfig

    if dtype == "auto":
        return checkpoint_dtype(AutoConfig.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code))
    return named_dtype(dtype)


def save_model(trainer, out_dir: Path, dtype) -> None:
    """Model (LoRA merged in), generation config and tokenizer with its chat template, in `dtype`."""
    from peft import PeftModel

    model = trainer.model
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    # The Trainer switched the KV cache off for training (TrainingArguments.use_cache=False);
    # rho_sft is for generation.
    model.config.use_cache = True
    model.to(dtype).save_pretrained(out_dir)
    trainer.processing_class.save_pretrained(out_dir)
