"""PPO step time of the Align-Pro prompter, split into prompter generation / frozen generation /
scoring / update, with the frozen model answering and the reward model scoring inside each step.

Random-weight models are built from architecture configs (no hub access needed):
  tiny   the embedded default's models (CPU, seconds)
  small  a ~25M prompter, ~60M frozen model and ~25M reward model, Qwen2-shaped (CPU, minutes)
  paper  Qwen2.5-1.5B prompter, Llama-3.1-8B frozen model, Gemma-2B reward model, 128 rollouts x
         128 tokens per step, the TRL example's minibatch (GPU)

    python benchmarks/ppo_step.py --shape small --steps 6 --out benchmarks/results/ppo_step_small_cpu.json

Reports medians over the steps after the first (warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GemmaConfig,
    LlamaConfig,
    Qwen2Config,
)

from alignpro.generation import load_generator  # noqa: E402
from alignpro.sampling import Sampling  # noqa: E402
from alignpro.ppo import PPOConfig, PPOTrainer  # noqa: E402
from alignpro.reward import RewardScorer  # noqa: E402
from alignpro.rewrite import prompter_conversation  # noqa: E402
from alignpro.tinymodels import build_tiny_model, build_tokenizer  # noqa: E402
from alignpro.training import RewriteReward  # noqa: E402

QWEN_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2)
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0)
GEMMA_2B = dict(hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1, head_dim=256)

SHAPES = {
    "small": {
        "vocab": None,
        "prompter": (Qwen2Config, dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=2)),
        "frozen": (Qwen2Config, dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12, num_key_value_heads=4)),
        "reward": (Qwen2Config, dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=2)),
        "ppo": dict(batch_size=16, mini_batch_size=8, ppo_epochs=4, max_new_tokens=32),
        "answer_tokens": 32,
    },
    "paper": {
        "vocab": (151936, 128256, 256000),
        "prompter": (Qwen2Config, dict(QWEN_1_5B, tie_word_embeddings=True)),
        "frozen": (LlamaConfig, LLAMA_8B),
        "reward": (GemmaConfig, GEMMA_2B),
        "ppo": dict(batch_size=128, mini_batch_size=128, ppo_epochs=4, max_new_tokens=128, gradient_checkpointing=True),
        "answer_tokens": 128,
    },
}


def save_random_model(out: Path, config_class, dims: dict, vocab: int | None, classifier: bool) -> str:
    """A random-weight model of the given architecture with the tiny tokenizer, padded to `vocab`."""
    tokenizer = build_tokenizer()
    if vocab is not None:
        tokenizer.add_tokens([f"<pad{i}>" for i in range(vocab - len(tokenizer))])
    config = config_class(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.pad_token_id,
        num_labels=1,
        **dims,
    )
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model_class = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    torch.manual_seed(0)
    model = model_class.from_config(config, dtype=dtype)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def build_models(shape: str, root: Path) -> dict[str, str]:
    if shape == "tiny":
        return {role: str(build_tiny_model(role, root / role)) for role in ("prompter", "frozen", "reward")}
    spec = SHAPES[shape]
    vocabs = spec["vocab"] or (None, None, None)
    return {
        role: save_random_model(root / role, *spec[role], vocab=vocab, classifier=role == "reward")
        for role, vocab in zip(("prompter", "frozen", "reward"), vocabs)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["tiny", *SHAPES], default="small")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    settings = SHAPES.get(args.shape, {"ppo": dict(batch_size=16, mini_batch_size=8, ppo_epochs=4, max_new_tokens=24), "answer_tokens": 24})
    prompts = [json.loads(line)["prompt"] for line in (Path(__file__).parents[1] / "src/alignpro/data/prompts.jsonl").read_text().splitlines()]
    with tempfile.TemporaryDirectory() as tmp:
        models = build_models(args.shape, Path(tmp))
        vllm_options = {"gpu_memory_utilization": 0.3 if torch.cuda.is_available() else 0.2, "max_model_len": 2048}
        frozen = load_generator(args.backend, models["frozen"], batch_size=256, vllm_options=vllm_options)
        reward = RewriteReward(
            frozen,
            RewardScorer(models["reward"], batch_size=64, max_length=1024),
            Sampling(n=1, temperature=1.0, top_p=1.0, max_new_tokens=settings["answer_tokens"]),
            fallback_on_truncation=False,
            max_length_ratio=8.0,
        )
        config = PPOConfig.from_config({**settings["ppo"], "steps": args.steps, "save_every": args.steps, "learning_rate": 1e-5})
        trainer = PPOTrainer(config, model=models["prompter"], query_fn=prompter_conversation, reward_fn=reward, output_dir=Path(tmp) / "ppo")
        started = time.perf_counter()
        trainer.train(prompts)
        wall = time.perf_counter() - started
        metrics = trainer.metrics_table().to_pylist()

    timed = metrics[1:] or metrics
    columns = ["time_step", "time_policy_generation", "time_frozen_generation", "time_scoring", "time_update"]
    result = {
        "shape": args.shape,
        "backend": args.backend,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "rollouts_per_step": config.batch_size,
        "max_new_tokens": config.max_new_tokens,
        "frozen_answer_tokens": settings["answer_tokens"],
        "steps": args.steps,
        "median_seconds": {column: round(statistics.median(row[column] for row in timed), 3) for column in columns},
        "peak_gpu_memory_GB": round(torch.cuda.max_memory_allocated() / 1e9, 1) if torch.cuda.is_available() else None,
        "wall_seconds_including_load": round(wall, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
