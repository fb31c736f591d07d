"""Reward scoring throughput of `alignpro.reward.RewardScorer` (what the `score` rule runs) on answers
of realistic, long-tailed lengths against answers of one equal length with the same total tokens,
and, on the long-tailed answers, its length-sorted batching against batches in input order.

The reward model is the embedded default's: `alignpro.tinymodels.build_tiny_model("reward")`.
Answer lengths are drawn from a log-normal like real chat answers (median `--median-tokens`, clipped
to 20-1500 tokens, seeded); the prompts are the bundled ones. Three ways of scoring, each timed on
the same pairs with `batch_size` pairs per forward pass:
  varied, sorted      RewardScorer.score on the long-tailed answers (it sorts pairs by length)
  varied, input order the same pairs and the same `_score_batch`, batched in input order: what
                      RewardScorer would cost without its sort (it has no option to turn it off)
  equal, sorted       RewardScorer.score on answers that all have the mean length (no padding at all)
Each way runs once to warm up, then `--repeats` times, the ways interleaved; the figures are
medians. Token counts are those the reward model sees (chat template included); "padded tokens" is
what the batches feed the model, padding included.

    python benchmarks/reward_throughput.py --pairs 256 --repeats 5 \\
        --out benchmarks/results/reward_throughput_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in the timed loops

import torch  # noqa: E402
import transformers  # noqa: E402

from alignpro.reward import RewardScorer  # noqa: E402
from alignpro.tinymodels import build_tiny_model  # noqa: E402
from cpu_contention import add_arguments, runner_from  # noqa: E402  (benchmarks/cpu_contention.py)

ROOT = Path(__file__).resolve().parents[1]
MIN_TOKENS, MAX_TOKENS = 20, 1500


def answer_lengths(pairs: int, median: float, sigma: float, seed: int) -> list[int]:
    """Long-tailed answer lengths in tokens: log-normal around `median`, clipped to 20-1500."""
    rng = random.Random(seed)
    return [min(MAX_TOKENS, max(MIN_TOKENS, round(rng.lognormvariate(0.0, sigma) * median))) for _ in range(pairs)]


def answer_texts(tokenizer, lengths: list[int]) -> list[str]:
    """Texts of (about) the given token lengths: windows of the bundled corpus, decoded."""
    corpus = (ROOT / "src/alignpro/data/corpus.txt").read_text()
    ids = tokenizer(corpus, add_special_tokens=False)["input_ids"]
    while len(ids) < 2 * MAX_TOKENS:
        ids = ids + ids
    texts = []
    for i, length in enumerate(lengths):
        start = (i * 101) % (len(ids) - length)
        texts.append(tokenizer.decode(ids[start : start + length]).strip())
    return texts


def bundled_prompts(pairs: int) -> list[str]:
    lines = (ROOT / "src/alignpro/data/prompts.jsonl").read_text().splitlines()
    questions = [json.loads(line)["prompt"] for line in lines if line.strip()]
    return [questions[i % len(questions)] for i in range(pairs)]


def score_in_input_order(scorer: RewardScorer, prompts: list[str], responses: list[str]) -> list[float]:
    """RewardScorer.score without its length sort: the same encoding and the same batches' forward
    pass, the batches taken in input order."""
    encoded = [scorer.encode(x, y) for x, y in zip(prompts, responses)]
    scores = []
    for start in range(0, len(encoded), scorer.batch_size):
        scores += scorer._score_batch(encoded[start : start + scorer.batch_size])
    return scores


def padded_tokens(lengths: list[int], batch_size: int, sort: bool) -> int:
    """Tokens the model is fed, padding included, when batches are padded to their longest."""
    order = sorted(lengths) if sort else lengths
    return sum(max(order[i : i + batch_size]) * len(order[i : i + batch_size]) for i in range(0, len(order), batch_size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--median-tokens", type=float, default=250.0, help="median answer length in tokens")
    parser.add_argument("--sigma", type=float, default=0.9, help="log-normal shape: larger, longer tail")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per forward pass (both configs use 32)")
    parser.add_argument("--max-length", type=int, default=2048, help="truncation length (config/paper.yaml: 2048)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    add_arguments(parser, max_wait=30.0, budget_s=360.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    load_at_start = [round(x, 2) for x in os.getloadavg()]

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model("reward", Path(tmp) / "reward")
        scorer = RewardScorer(str(model), batch_size=args.batch_size, max_length=args.max_length)
        prompts = bundled_prompts(args.pairs)
        varied = answer_texts(scorer.tokenizer, answer_lengths(args.pairs, args.median_tokens, args.sigma, args.seed))
        varied_lengths = [len(scorer.encode(x, y)) for x, y in zip(prompts, varied)]
        prompt_lengths = [len(scorer.encode(x, "")) for x in prompts]
        # Equal answers: every answer the mean answer length, so the total matches the varied set's.
        answer_tokens = [total - empty for total, empty in zip(varied_lengths, prompt_lengths)]
        mean_answer = round(statistics.mean(answer_tokens))
        equal = answer_texts(scorer.tokenizer, [mean_answer] * args.pairs)
        equal_lengths = [len(scorer.encode(x, y)) for x, y in zip(prompts, equal)]

        ways = {
            "varied_sorted": (lambda: scorer.score(prompts, varied), varied_lengths, True),
            "varied_input_order": (lambda: score_in_input_order(scorer, prompts, varied), varied_lengths, False),
            "equal_sorted": (lambda: scorer.score(prompts, equal), equal_lengths, True),
        }
        # The two varied ways must give the same rewards: only the batching differs.
        sorted_scores, unsorted_scores = ways["varied_sorted"][0](), ways["varied_input_order"][0]()
        worst = max(abs(a - b) for a, b in zip(sorted_scores, unsorted_scores))
        ways["equal_sorted"][0]()  # warm-up of the third way
        encode_seconds = []
        times = {name: [] for name in ways}
        runner = runner_from(args)
        for repeat in range(args.repeats):
            for name, (run, _, _) in ways.items():
                def call(run=run):
                    started = time.perf_counter()
                    run()
                    return {"seconds": round(time.perf_counter() - started, 3)}

                times[name].append(runner.run(call, repeat=repeat + 1, way=name)["seconds"])
            started = time.perf_counter()
            for x, y in zip(prompts, varied):
                scorer.encode(x, y)
            encode_seconds.append(time.perf_counter() - started)

    result = {
        "benchmark": "reward_throughput",
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "reward_model": "alignpro.tinymodels reward (Qwen2ForSequenceClassification, hidden 128, 2 layers, float32)",
        "pairs": args.pairs,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "answer_length_distribution": f"log-normal, median {args.median_tokens}, sigma {args.sigma}, clipped to {MIN_TOKENS}-{MAX_TOKENS}, seed {args.seed}",
        "max_abs_difference_sorted_vs_input_order": worst,
        "median_seconds_tokenization_only_varied": round(statistics.median(encode_seconds), 3),
        "order": "one warm-up run each, then repeats interleaved: " + ", ".join(ways) + ", ...",
        "repeats": args.repeats,
        "seconds_per_repeat": times,
        "ways": {},
        "shared_machine": runner.settings(),
        "attempts": runner.attempts,
        "machine": {
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})",
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": load_at_start,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    for name, (_, lengths, sort) in ways.items():
        seconds = statistics.median(times[name])
        padded = padded_tokens(lengths, args.batch_size, sort)
        result["ways"][name] = {
            "tokens": sum(lengths),
            "tokens_min_median_max": [min(lengths), round(statistics.median(lengths)), max(lengths)],
            "padded_tokens": padded,
            "padding_share": round(1 - sum(lengths) / padded, 4),
            "median_seconds": round(seconds, 3),
            "pairs_per_s": round(args.pairs / seconds, 1),
            "tokens_per_s": round(sum(lengths) / seconds, 1),
            "best_run_pairs_per_s": round(args.pairs / min(times[name]), 1),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
