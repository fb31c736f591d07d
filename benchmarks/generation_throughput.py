"""Frozen-model generation throughput: the vLLM backend against the transformers backend, side by
side in one run, on the same random-weight model and the same prompts, through alignpro's own
`load_generator` / `generate_responses` (what the `generate` rule runs).

Shapes (random weights from a config written out below; no hub access needed):
  cpu-40m    Qwen2-shaped, ~40M parameters, head_dim 64 (vLLM's CPU attention needs it), the tiny
             tokenizer's 2,048-token vocabulary, float32 (2 CPU cores: minutes)
  qwen-1.5b  Qwen2.5-1.5B's architecture, bfloat16, CUDA
  llama-8b   Llama-3.1-8B's architecture (the paper's frozen model), bfloat16, CUDA
The GPU shapes use the tiny tokenizer with its vocabulary padded to the model's (151,936 / 128,256
entries that encoding never produces but decoding knows), so the embedding and LM head are
full-size.

Prompts: the 128 bundled prompts (cpu-40m: as they are, 22-61 tokens chat-formatted with their
tag, the embedded default's kind), or lengthened with corpus text to `--prompt-tokens` (GPU shapes:
128). Each repeat gets its own prompt set, tagged from the first token on, the same set for both
backends, and vLLM's prefix cache (on by default, as in the workflow) is emptied before each of its
runs: it would otherwise skip the prefill of every prompt it saw in an earlier run.

Every answer is exactly `--new-tokens` long on both backends (vLLM: ignore_eos; transformers:
min_new_tokens = max_new_tokens, which masks EOS), so both do the same work and tokens/s compare.
The backends' repeats are interleaved (vllm, transformers, vllm, transformers, ...) after one short
warm-up each; the figures are medians. For the GPU shapes the script also prints the
memory-bandwidth floor: every decode step reads all weights once (model bytes / bandwidth), and,
the second floor, the KV cache of the batch too.

    python benchmarks/generation_throughput.py --shape cpu-40m --repeats 3 \\
        --out benchmarks/results/generation_throughput_cpu.json
    # with a GPU:
    python benchmarks/generation_throughput.py --shape llama-8b --repeats 3 \\
        --out benchmarks/results/generation_throughput_llama8b_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in the timed loops

import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
from transformers import GenerationConfig, LlamaConfig, Qwen2Config, Qwen2ForCausalLM  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

from alignpro.generation import generate_responses, load_generator  # noqa: E402
from alignpro.sampling import Sampling  # noqa: E402
from cpu_contention import add_arguments, runner_from  # noqa: E402  (benchmarks/cpu_contention.py)
from alignpro.tinymodels import IM_END, PAD_TOKEN, build_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Architecture fields as in the models' config.json on the hub (Qwen/Qwen2.5-1.5B-Instruct,
# meta-llama/Llama-3.1-8B-Instruct).
QWEN2_5_1_5B = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
LLAMA_3_1_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
CPU_40M = dict(
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=12,
    num_attention_heads=8,  # head_dim 64
    num_key_value_heads=2,
    vocab_size=None,  # the tiny tokenizer's
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)

# Sampling as the config that uses each device: config/config.yaml (CPU) and config/paper.yaml (GPU).
SHAPES = {
    "cpu-40m": dict(arch=(Qwen2Config, Qwen2ForCausalLM, CPU_40M), device="cpu", dtype="float32",
                    batch=128, prompt_tokens=0, new_tokens=64, temperature=1.0, top_p=0.9,
                    gpu_memory_utilization=0.2),
    "qwen-1.5b": dict(arch=(Qwen2Config, Qwen2ForCausalLM, QWEN2_5_1_5B), device="cuda", dtype="bfloat16",
                      batch=256, prompt_tokens=128, new_tokens=256, temperature=1.5, top_p=0.6,
                      gpu_memory_utilization=0.4),
    "llama-8b": dict(arch=(LlamaConfig, LlamaForCausalLM, LLAMA_3_1_8B), device="cuda", dtype="bfloat16",
                     batch=256, prompt_tokens=128, new_tokens=256, temperature=1.5, top_p=0.6,
                     gpu_memory_utilization=0.45),
}


def save_tokenizer(out: Path, vocab_size: int | None) -> int:
    """The tiny tokenizer, its BPE vocabulary padded to `vocab_size` with tokens encoding never
    produces (so any id the model samples decodes). Returns the vocabulary size."""
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out)
    if vocab_size is None:
        return len(tokenizer)
    path = out / "tokenizer.json"
    spec = json.loads(path.read_text())
    vocab = spec["model"]["vocab"]
    taken = set(vocab.values()) | {token["id"] for token in spec["added_tokens"]}
    next_id = max(taken) + 1
    for index in range(next_id, vocab_size):
        vocab[f"<pad{index}>"] = index
    path.write_text(json.dumps(spec))
    return vocab_size


def save_random_model(out: Path, shape: dict, seed: int = 0) -> tuple[str, int]:
    """A random-weight causal LM of the shape's architecture with the tiny tokenizer; returns its
    directory and parameter count."""
    config_class, model_class, fields = shape["arch"]
    fields = dict(fields)
    vocab = save_tokenizer(out, fields.pop("vocab_size"))
    tokenizer = build_tokenizer()
    pad_id, eos_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN), tokenizer.convert_tokens_to_ids(IM_END)
    config = config_class(vocab_size=vocab, bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id, **fields)
    dtype = getattr(torch, shape["dtype"])
    # Initialised straight in the target dtype on the target device (fast for 8B on a GPU), then saved.
    with torch.random.fork_rng(devices=[]), torch.device(shape["device"]):
        torch.manual_seed(seed)
        model = model_class._from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig(bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(out, safe_serialization=True)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return str(out), parameters


def benchmark_prompts(model_dir: str, batch: int, prompt_tokens: int, sets: int) -> list[tuple[pa.Table, list[int]]]:
    """`sets` sets of `batch` prompts: the bundled prompts, each with the set and its index in front,
    and, when `prompt_tokens` > 0, lengthened with corpus text until the chat-formatted input is
    `prompt_tokens` tokens. Returns per set the PROMPTS-shaped table and the formatted lengths.

    No prompt repeats across sets and they differ from their first tokens on, so vLLM's prefix
    cache (on by default, as in the workflow) cannot skip a run's prefill with what an earlier run
    computed: each timed run gets a fresh set, the same set for both backends."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = ROOT / "src/alignpro/data"
    questions = [json.loads(line)["prompt"] for line in (data / "prompts.jsonl").read_text().splitlines() if line.strip()]
    words = data.joinpath("corpus.txt").read_text().split()
    words = words * (1 + 4 * max(prompt_tokens, 1) // len(words))

    def length(text: str) -> int:
        conversation = [{"role": "user", "content": text}]
        formatted = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return len(tokenizer(formatted, add_special_tokens=False)["input_ids"])

    result = []
    for run in range(sets):
        prompts, lengths = [], []
        for i in range(batch):
            head = f"[{run}.{i}] {questions[i % len(questions)]}"
            text, start, extra = head, (i * 37 + run * 11) % (len(words) // 2), 0
            while prompt_tokens and length(text) < prompt_tokens:
                extra += 1
                text = f"{head} " + " ".join(words[start : start + extra])
            while prompt_tokens and length(text) > prompt_tokens and " " in text:
                text = text.rsplit(" ", 1)[0]
            prompts.append(text)
            lengths.append(length(text))
        table = pa.table({"prompt_id": [f"set{run}-{i:04d}" for i in range(batch)], "prompt": prompts})
        result.append((table, lengths))
    return result


def force_exact_length_in_vllm() -> None:
    """vLLM's answers run to max_tokens: `vllm.SamplingParams`, which alignpro's backend looks up at
    every call, gets ignore_eos=True added (what vLLM's own throughput benchmark does)."""
    import vllm

    original = vllm.SamplingParams

    def exact_length(**options):
        return original(ignore_eos=True, **options)

    vllm.SamplingParams = exact_length


def machine_facts() -> dict:
    try:
        import vllm

        vllm_version = vllm.__version__
    except ImportError:
        vllm_version = None
    import transformers

    return {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})",
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "vllm": vllm_version,
        "platform": platform.platform(),
    }


def bandwidth_floor(parameters: int, dtype: str, fields: dict, batch: int, prompt_tokens: int, new_tokens: int,
                    bandwidth: float) -> dict:
    """Lower bounds on the decode time from memory traffic: each of the `new_tokens` decode steps reads
    every weight once; the KV-cache floor adds reading the batch's KV cache at every step."""
    bytes_per_value = torch.finfo(getattr(torch, dtype)).bits // 8
    model_bytes = parameters * bytes_per_value
    head_dim = fields["hidden_size"] // fields["num_attention_heads"]
    kv_per_token = 2 * fields["num_hidden_layers"] * fields["num_key_value_heads"] * head_dim * bytes_per_value
    mean_context = prompt_tokens + (new_tokens - 1) / 2
    kv_bytes_per_step = batch * mean_context * kv_per_token
    weights_s = new_tokens * model_bytes / bandwidth
    with_kv_s = new_tokens * (model_bytes + kv_bytes_per_step) / bandwidth
    tokens = batch * new_tokens
    return {
        "bandwidth_bytes_per_s": bandwidth,
        "model_bytes": model_bytes,
        "weights_only": {"step_ms": round(1e3 * model_bytes / bandwidth, 3), "seconds": round(weights_s, 3),
                         "max_tokens_per_s": round(tokens / weights_s, 1)},
        "weights_and_kv_cache": {"mean_kv_bytes_per_step": round(kv_bytes_per_step), "seconds": round(with_kv_s, 3),
                                 "max_tokens_per_s": round(tokens / with_kv_s, 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="cpu-40m")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per backend, interleaved")
    parser.add_argument("--batch", type=int, help="prompts per run (default: the shape's)")
    parser.add_argument("--prompt-tokens", type=int,
                        help="chat-formatted prompt length; 0: the bundled prompts as they are (default: the shape's)")
    parser.add_argument("--new-tokens", type=int, help="tokens generated per prompt (default: the shape's)")
    parser.add_argument("--warmup-tokens", type=int, default=8, help="new tokens of each backend's warm-up run")
    parser.add_argument("--gpu-memory-utilization", type=float,
                        help="vLLM's share of GPU memory (on CPU: of RAM); the transformers model shares the device")
    parser.add_argument("--bandwidth", type=float, default=3.35e12,
                        help="memory bandwidth in bytes/s for the floor (default: H100 SXM, 3.35e12)")
    parser.add_argument("--backends", default="vllm,transformers", help="comma-separated, in interleaving order")
    add_arguments(parser, max_wait=60.0, budget_s=480.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    shape = SHAPES[args.shape]
    if shape["device"] == "cuda" and not torch.cuda.is_available():
        parser.error(f"--shape {args.shape} needs a CUDA GPU; use --shape cpu-40m here")
    batch = args.batch or shape["batch"]
    prompt_tokens = shape["prompt_tokens"] if args.prompt_tokens is None else args.prompt_tokens
    new_tokens = args.new_tokens or shape["new_tokens"]
    backends = args.backends.split(",")
    memory = args.gpu_memory_utilization or shape["gpu_memory_utilization"]
    facts = machine_facts()
    sampling = Sampling(n=1, temperature=shape["temperature"], top_p=shape["top_p"], max_new_tokens=new_tokens, seed=0)
    warmup = Sampling(n=1, temperature=shape["temperature"], top_p=shape["top_p"], max_new_tokens=args.warmup_tokens, seed=0)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, parameters = save_random_model(Path(tmp) / "model", shape)
        vocab_size = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
        prompt_sets = benchmark_prompts(model_dir, batch, prompt_tokens, sets=1 + args.repeats)
        prompt_lengths = [n for _, lengths in prompt_sets for n in lengths]
        max_model_len = max(prompt_lengths) + new_tokens + 16
        print(f"model: {args.shape}, {parameters / 1e6:.1f}M parameters; {1 + args.repeats} sets of {batch} prompts of "
              f"{min(prompt_lengths)}-{max(prompt_lengths)} tokens; {new_tokens} new tokens each", flush=True)

        generators, load_seconds, threads = {}, {}, {}
        for backend in backends:  # vLLM first: it sizes its KV cache from the memory free at its start
            started = time.perf_counter()
            if backend == "vllm":
                generators[backend] = load_generator(
                    "vllm", model_dir, dtype=shape["dtype"], batch_size=batch, seed=0,
                    vllm_options={"gpu_memory_utilization": memory, "max_model_len": max_model_len},
                )
                force_exact_length_in_vllm()  # after vLLM's own modules have imported the real class
            else:
                generator = load_generator("transformers", model_dir, dtype=shape["dtype"], batch_size=batch)
                # EOS masked until max_new_tokens: every answer is exactly new_tokens long.
                generator.model.generation_config.min_new_tokens = new_tokens
                generators[backend] = generator
            load_seconds[backend] = round(time.perf_counter() - started, 2)
            threads[backend] = torch.get_num_threads()

        def run(backend: str, how: Sampling, prompts: pa.Table) -> tuple[float, int]:
            if backend == "vllm":  # a rerun of a disturbed run must not find its prompts' prefill cached
                generators[backend].llm.reset_prefix_cache()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            started = time.perf_counter()
            responses = generate_responses(
                generators[backend], prompts, input_column="prompt", sampling=how,
                dataset="bench", method="base", frozen=args.shape, prompter=None,
            )
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            counts = responses.column("num_tokens").to_pylist()
            if counts != [how.max_new_tokens] * batch:
                raise RuntimeError(f"{backend}: answers of {min(counts)}-{max(counts)} tokens, not all {how.max_new_tokens}")
            return seconds, sum(counts)

        for backend in backends:
            run(backend, warmup, prompt_sets[0][0])
        times = {backend: [] for backend in backends}
        runner = runner_from(args)
        for repeat in range(args.repeats):
            for backend in backends:
                def call(backend=backend, prompts=prompt_sets[1 + repeat][0]):
                    seconds, tokens = run(backend, sampling, prompts)
                    return {"seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}

                kept = runner.run(call, repeat=repeat + 1, backend=backend)
                times[backend].append(kept["seconds"])

    tokens = batch * new_tokens
    medians = {
        backend: {"seconds": round(statistics.median(times[backend]), 3),
                  "tokens_per_s": round(tokens / statistics.median(times[backend]), 1),
                  "best_run_tokens_per_s": round(tokens / min(times[backend]), 1)}
        for backend in backends
    }
    result = {
        "benchmark": "generation_throughput",
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "shape": args.shape,
        "parameters": parameters,
        "architecture": {"class": shape["arch"][1].__name__, **shape["arch"][2], "vocab_size": vocab_size},
        "dtype": shape["dtype"],
        "batch": batch,
        "prompt_tokens": {"target": prompt_tokens or "the bundled prompts as they are", "min": min(prompt_lengths),
                          "max": max(prompt_lengths), "mean": round(statistics.mean(prompt_lengths), 1),
                          "note": "chat-formatted; a fresh prompt set per run, the same for both backends"},
        "new_tokens": new_tokens,
        "generated_tokens_per_run": tokens,
        "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p},
        "exact_length": "vLLM: SamplingParams(ignore_eos=True); transformers: min_new_tokens = max_new_tokens",
        "vllm_options": {"gpu_memory_utilization": memory, "max_model_len": max_model_len,
                         "VLLM_ENABLE_V1_MULTIPROCESSING": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")},
        "order": "after one warm-up run each (prompt set 0), repeats interleaved: " + ", ".join(backends * 2) + ", ...",
        "repeats": args.repeats,
        "seconds_per_repeat": times,
        "median": medians,
        "ratio_vllm_over_transformers": (
            round(medians["vllm"]["tokens_per_s"] / medians["transformers"]["tokens_per_s"], 3)
            if {"vllm", "transformers"} <= set(backends) else None
        ),
        "ratio_vllm_over_transformers_best_runs": (
            round(medians["vllm"]["best_run_tokens_per_s"] / medians["transformers"]["best_run_tokens_per_s"], 3)
            if {"vllm", "transformers"} <= set(backends) else None
        ),
        "load_seconds": load_seconds,
        "torch_threads_after_load": threads,
        "shared_machine": runner.settings(),
        "attempts": runner.attempts,
        "machine": facts,
    }
    if shape["device"] == "cuda":
        result["bandwidth_floor"] = bandwidth_floor(parameters, shape["dtype"], shape["arch"][2], batch,
                                                    prompt_tokens, new_tokens, args.bandwidth)
        result["peak_gpu_memory_GB_torch_allocator_both_backends"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)
        floor = result["bandwidth_floor"]
        for backend in backends:
            print(f"{backend}: {medians[backend]['tokens_per_s']:.0f} tokens/s "
                  f"(weights-only bandwidth floor {floor['weights_only']['max_tokens_per_s']:.0f} tokens/s, "
                  f"with KV cache {floor['weights_and_kv_cache']['max_tokens_per_s']:.0f} tokens/s, "
                  f"at {args.bandwidth / 1e12:.2f} TB/s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
