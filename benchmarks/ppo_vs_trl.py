"""Step time of the project's PPO step beside TRL 1.16's RLOOTrainer and GRPOTrainer doing the same
work on the same model, side by side on the CPU.

The model is benchmarks/ppo_memory.py's: a small Qwen2 with Qwen2.5's real 151,936-token vocabulary,
random weights. The work per step is the same for all three: 16 completions of up to 32 tokens sampled
(top_k 0, top_p 1, temperature 1), a free reward (spaces per character), the reference model's
log-probs for a KL of coefficient 0.05, then one optimisation pass over the 16 completions in one
minibatch (PPO: `ppo_epochs` 1; RLOO and GRPO: `num_iterations` 1; 4 prompts x 4 generations).
PPO also runs its value head, which the others do not have. Each trainer runs in its own process
for `--steps` steps; with `--against REV` the project's PPO at that revision runs beside them (its
source checked out with `git worktree`). Runs alternate (PPO, PPO at REV, RLOO, GRPO, PPO, ...); a run's figure is the median step
time after its first step, and the table gives each trainer's median over its runs.

    python benchmarks/ppo_vs_trl.py --repeats 3 --out benchmarks/results/ppo_vs_trl_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPLETIONS, TOKENS, GENERATIONS, KL = 16, 32, 4, 0.05
TRAINERS = ("ppo", "rloo", "grpo")
BEFORE = "ppo-before"  # the project's PPO at --against, from a git worktree


def prompts() -> list[str]:
    return [json.loads(line)["prompt"] for line in (ROOT / "src/alignpro/data/prompts.jsonl").read_text().splitlines()]


def run_ppo(model: str, steps: int) -> list[float]:
    from alignpro.ppo import PPOConfig, PPOTrainer

    def spaces(prompts, completions, step=None):
        return [c.text.count(" ") / max(len(c.text), 1) for c in completions], {"time_scoring": 0.0}

    settings = dict(batch_size=COMPLETIONS, mini_batch_size=COMPLETIONS, ppo_epochs=1, max_new_tokens=TOKENS, learning_rate=1e-5,
                    init_kl_coef=KL, adaptive_kl=False, top_k=0, top_p=1.0, steps=steps, save_every=steps)
    with tempfile.TemporaryDirectory() as out:
        trainer = PPOTrainer(PPOConfig.from_config(settings), model=model, query_fn=lambda p: [{"role": "user", "content": p}],
                             reward_fn=spaces, output_dir=Path(out))
        trainer.train(prompts())
        return [row["time_step"] for row in trainer.metrics_table().to_pylist()]


def run_trl(kind: str, model: str, steps: int) -> list[float]:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config_class, trainer_class = {"rloo": (RLOOConfig, RLOOTrainer), "grpo": (GRPOConfig, GRPOTrainer)}[kind]
    times: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.started)

    def spaces(completions, **kwargs):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [t.count(" ") / max(len(t), 1) for t in texts]

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts()])
    with tempfile.TemporaryDirectory() as out:
        args = config_class(
            output_dir=out, per_device_train_batch_size=COMPLETIONS, num_generations=GENERATIONS, max_completion_length=TOKENS,
            beta=KL, num_iterations=1, learning_rate=1e-5, temperature=1.0, top_k=0, top_p=1.0, max_steps=steps,
            use_cpu=True, bf16=False, save_strategy="no", report_to=[], logging_steps=1, gradient_checkpointing=False,
        )
        trainer = trainer_class(model=model, reward_funcs=spaces, args=args, train_dataset=data,
                                processing_class=AutoTokenizer.from_pretrained(model), callbacks=[StepTimes()])
        trainer.train()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--against", help="a git revision whose PPO trainer runs beside this tree's")
    parser.add_argument("--one-run", nargs=3, metavar=("TRAINER", "MODEL", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_run:
        import torch

        kind, model, result = args.one_run
        torch.manual_seed(0)
        torch.set_num_threads(2)
        times = run_ppo(model, args.steps) if kind in ("ppo", BEFORE) else run_trl(kind, model, args.steps)
        Path(result).write_text(json.dumps(times))
        return

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ppo_memory import build_model

    kinds = [TRAINERS[0], *([BEFORE] if args.against else []), *TRAINERS[1:]]
    runs: dict[str, list[float]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp))
        before = Path(tmp) / "before"
        if args.against:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.against], check=True, capture_output=True)
        try:
            for _ in range(args.repeats):
                for kind in kinds:
                    result = Path(tmp) / "result.json"
                    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
                    if kind == BEFORE:
                        env["PYTHONPATH"] = str(before / "src")
                    command = [sys.executable, __file__, "--steps", str(args.steps), "--one-run", kind, model, str(result)]
                    subprocess.run(command, check=True, env=env)
                    times = json.loads(result.read_text())
                    runs[kind].append(statistics.median(times[1:] or times))
                    print(kind, [round(t, 2) for t in times], flush=True)
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)

    import torch
    import trl

    medians = {kind: round(statistics.median(values), 3) for kind, values in runs.items()}
    report = {
        "command": " ".join(["python", "benchmarks/ppo_vs_trl.py", *sys.argv[1:]]),
        "against": args.against,
        "machine": f"CPU ({os.cpu_count()} cores, {platform.machine()}), torch {torch.__version__}, trl {trl.__version__}",
        "work": {"completions": COMPLETIONS, "max_tokens": TOKENS, "generations_per_prompt_trl": GENERATIONS, "kl_coef": KL},
        "median_step_s": medians,
        "ratio_ppo_over_rloo": round(medians["ppo"] / medians["rloo"], 3),
        "ratio_ppo_over_grpo": round(medians["ppo"] / medians["grpo"], 3),
        **({"ratio_ppo_before_over_rloo": round(medians[BEFORE] / medians["rloo"], 3)} if args.against else {}),
        "runs_median_step_s": runs,
    }
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
