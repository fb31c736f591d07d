"""PPO on a tiny model in a process of its own, for the kill-and-resume test in test_ppo.py.

The reward is the number of spaces per completion token (see test_ppo.spaces_reward); `--delay`
makes each step sleep so that the test can kill the run between checkpoints. One torch thread,
so that two runs compute exactly the same floats.
"""

import argparse
import logging
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def spaces_reward(prompts, completions, step=None):
    """Spaces per completion token: PPO can raise it on a tiny model whose word-initial tokens share
    an embedding direction (test_ppo.prompter_with_word_direction)."""
    return [c.text.count(" ") / max(c.num_tokens, 1) for c in completions], {"time_scoring": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--save-every", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--lora", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    from alignpro.ppo import PPOConfig, PPOTrainer

    def reward_fn(prompts, completions, step=None):
        time.sleep(args.delay)
        return spaces_reward(prompts, completions)

    config = PPOConfig.from_config(
        {
            "steps": args.steps,
            "save_every": args.save_every,
            "seed": args.seed,
            "batch_size": 8,
            "mini_batch_size": 4,
            "ppo_epochs": 2,
            "learning_rate": 1e-3,
            "max_new_tokens": 6,
            "lora": {"enabled": args.lora, "r": 4, "alpha": 8},
        }
    )
    trainer = PPOTrainer(
        config,
        model=args.model,
        query_fn=lambda prompt: [{"role": "user", "content": prompt}],
        reward_fn=reward_fn,
        output_dir=args.out,
    )
    trainer.train([f"Say something about subject {i}." for i in range(12)])


if __name__ == "__main__":
    main()
