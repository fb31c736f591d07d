"""Chat generation behind one interface, with a vLLM backend and a transformers backend.

Both the prompter (rewrite stage) and the frozen LLM (generation stage) go through `load_generator`,
whose result has `.chat(conversations, sampling)`: one list of `sampling.n` completions per
conversation, in input order. A frozen model behind an API has the same interface
(alignpro.frozen_api.APIGenerator); `SamplingSettings.generator` picks it for a model spec with
`api`. vLLM is the fast path; transformers' `generate` needs no engine and is the reference the vLLM
path is compared with. vLLM is imported only by its backend, so the
transformers path works where vLLM is not installed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from operator import attrgetter

import pyarrow as pa

from alignpro.memory import device_fraction
from alignpro.model_spec import ModelSpec
from alignpro.modeling import context_length, eos_ids, fit_to_context, inference_dtype, load_tokenizer
from alignpro.progress import progress_bar
from alignpro.sampling import Completion, Sampling
from alignpro.settings import from_section
from alignpro.tables import RESPONSES

BACKENDS = ("vllm", "transformers")


@dataclass(frozen=True)
class SamplingSettings:
    """A sampling section of the config (`rewrite`, `generation`): the backend that generates and how
    it decodes. Its defaults are the schema's `$defs/sampling`."""

    backend: str = "vllm"
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    batch_size: int = 64
    vllm: dict = field(default_factory=dict)

    def sampling(self, *, seed: int, n: int = 1) -> Sampling:
        return Sampling(n=n, temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens, seed=seed)

    def generator(self, model: ModelSpec, *, seed: int, role: str = "frozen model"):
        """`model` loaded with this backend, or, for a model behind an API, its client (`role` names it
        in the client's logs and errors)."""
        if model.api is not None:
            from alignpro.frozen_api import APIGenerator, FrozenAPISettings

            return APIGenerator(FrozenAPISettings.of(model), name=model.name, role=role)
        return load_generator(
            self.backend, model.path, **model.load_options(), batch_size=self.batch_size, seed=seed, vllm_options=self.vllm
        )


@dataclass(frozen=True)
class GenerationSettings(SamplingSettings):
    """The `generation` section: the frozen model's sampling, `n_samples` answers per prompt in evaluation."""

    n_samples: int = 4

    @classmethod
    def from_config(cls, section: dict | None) -> GenerationSettings:
        return from_section(cls, section, "generation")

    @staticmethod
    def for_training(section: dict) -> dict:
        """The section as training stages take it (one answer per rewrite there): without n_samples, so
        changing the evaluation's number of samples retrains nothing."""
        return {key: value for key, value in section.items() if key != "n_samples"}


def load_generator(
    backend: str,
    model: str,
    *,
    revision: str = "main",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    batch_size: int = 64,
    seed: int = 0,
    vllm_options: dict | None = None,
) -> VLLMGenerator | TransformersGenerator:
    """Load `model` (local directory or hub id) for chat generation with `backend`."""
    if backend == "vllm":
        return VLLMGenerator(
            model,
            revision=revision,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            batch_size=batch_size,
            seed=seed,
            vllm_options=vllm_options or {},
        )
    if backend == "transformers":
        return TransformersGenerator(
            model, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code, batch_size=batch_size
        )
    raise ValueError(f"unknown generation backend {backend!r}; expected one of {BACKENDS}")


class VLLMGenerator:
    """vLLM's offline engine, fed `batch_size` conversations per `LLM.chat` call.

    The engine is seeded once at start, never per request: per-request seeds crash vLLM's CPU build
    on large batches ("CPU Generator does not use offset"). So `Sampling.seed` is not used here;
    calls on one engine continue its random stream. Unless the environment says otherwise, the
    engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), vLLM's documented way to
    reproducible offline runs: its scheduling, and so each request's random draws, then no longer
    depend on timing. Seeded runs differ from one another without it.
    """

    def __init__(
        self,
        model: str,
        *,
        revision: str,
        dtype: str,
        trust_remote_code: bool,
        batch_size: int,
        seed: int,
        vllm_options: dict,
    ):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        options = dict(vllm_options)
        if "gpu_memory_utilization" in options:  # the memory plan's share of the device (alignpro.memory)
            options["gpu_memory_utilization"] = device_fraction(options["gpu_memory_utilization"])
        self.llm = LLM(model=model, revision=revision, seed=seed, dtype=dtype, trust_remote_code=trust_remote_code, **options)
        self.model = model
        self.tokenizer = load_tokenizer(model, revision=revision, trust_remote_code=trust_remote_code)
        self.batch_size = batch_size

    def chat(self, conversations: list[list[dict]], sampling: Sampling, keys=None) -> list[list[Completion]]:
        """Prompts that leave less than max_new_tokens of the engine's max_model_len are cut to fit
        first: vLLM refuses a prompt longer than that, failing the whole call. (`keys` name the calls
        for an API generator's cache; a local engine has none.)"""
        from vllm import SamplingParams

        conversations, _ = fit_to_context(
            self.tokenizer,
            conversations,
            context=self.llm.model_config.max_model_len,
            max_new_tokens=sampling.max_new_tokens,
            model=self.model,
        )

        params = SamplingParams(
            n=_sequences_per_prompt(sampling),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
        )
        results = []
        with progress_bar(total=len(conversations), desc="generate (vllm)", unit="prompt") as progress:
            for chunk in _chunks(conversations, self.batch_size):
                for request in self.llm.chat(chunk, params, use_tqdm=False):
                    outputs = sorted(request.outputs, key=attrgetter("index"))
                    results.append(_as_samples([_completion_of(output) for output in outputs], sampling))
                progress.update(len(chunk))
        return results


def _completion_of(output) -> Completion:
    """A vLLM CompletionOutput as a Completion; token_ids include the end-of-sequence token."""
    return Completion(text=output.text, finish_reason=output.finish_reason, num_tokens=len(output.token_ids))


class TransformersGenerator:
    """`model.generate` on left-padded batches of similar length.

    Decodes exactly as vLLM does with explicit SamplingParams (plain greedy, or temperature/top-p
    sampling): transformers' default top-k of 50 and a checkpoint's own top-k or repetition penalty
    are switched off.
    """

    def __init__(self, model: str, *, revision: str, dtype: str, trust_remote_code: bool, batch_size: int):
        import torch
        from transformers import AutoModelForCausalLM

        on_gpu = torch.cuda.is_available()
        self.tokenizer = load_tokenizer(model, revision=revision, trust_remote_code=trust_remote_code, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(
            model,
            revision=revision,
            dtype=inference_dtype(dtype, on_gpu),
            trust_remote_code=trust_remote_code,
            device_map="cuda" if on_gpu else None,
        ).eval()
        self.model_name = model
        self.eos_ids = eos_ids(self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id)
        self.batch_size = batch_size

    def chat(self, conversations: list[list[dict]], sampling: Sampling, keys=None) -> list[list[Completion]]:
        """Batches of similar-length prompts keep padding small; the longest go first, so that running
        out of memory happens in the first batch rather than at the end. Prompts that leave less than
        max_new_tokens of the model's context are cut to fit first.

        Seeded with `sampling.seed` at the start of every call, so a call's output depends only on
        its inputs and the seed.
        """
        import torch

        _, token_ids = fit_to_context(
            self.tokenizer,
            conversations,
            context=context_length(self.model.config),
            max_new_tokens=sampling.max_new_tokens,
            model=self.model_name,
        )
        longest_first = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))
        results: list[list[Completion]] = [[] for _ in token_ids]
        torch.manual_seed(sampling.seed)
        with torch.inference_mode(), progress_bar(total=len(token_ids), desc="generate (transformers)", unit="prompt") as progress:
            for batch in _chunks(longest_first, self.batch_size):
                completions = self._generate([token_ids[i] for i in batch], sampling)
                for i, completions_of_one in zip(batch, completions):
                    results[i] = completions_of_one
                progress.update(len(batch))
        return results

    def _generate(self, token_ids: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        per_prompt = _sequences_per_prompt(sampling)
        inputs = self.tokenizer.pad({"input_ids": token_ids}, return_tensors="pt").to(self.model.device)
        output = self.model.generate(
            **inputs,
            max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=per_prompt,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.tokenizer.pad_token_id,
            **_decoding_options(sampling),
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        completions = [self._completion(tokens) for tokens in new_tokens]
        return [_as_samples(completions[k : k + per_prompt], sampling) for k in range(0, len(completions), per_prompt)]

    def _completion(self, tokens: list[int]) -> Completion:
        """Cut at the first end-of-sequence token (padding follows it); count it, as vLLM does."""
        end = next((i for i, token in enumerate(tokens) if token in self.eos_ids), None)
        if end is None:
            return Completion(self._decode(tokens), "length", len(tokens))
        return Completion(self._decode(tokens[:end]), "stop", end + 1)

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


def _sequences_per_prompt(sampling: Sampling) -> int:
    """Both vLLM and transformers refuse n > 1 with greedy decoding: decode once, repeat it n times."""
    return 1 if sampling.temperature == 0 else sampling.n


def _as_samples(completions: list[Completion], sampling: Sampling) -> list[Completion]:
    return completions * sampling.n if sampling.temperature == 0 else completions


def _chunks(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _decoding_options(sampling: Sampling) -> dict:
    if sampling.temperature == 0:
        return {"do_sample": False, "repetition_penalty": 1.0}
    return {
        "do_sample": True,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": 0,
        "repetition_penalty": 1.0,
    }


def generate_responses(
    generator,
    inputs: pa.Table,
    *,
    input_column: str,
    sampling: Sampling,
    dataset: str,
    method: str,
    frozen: str,
    prompter: str | None,
    beta: float | None = None,
) -> pa.Table:
    """The frozen model's answers to `inputs[input_column]` as a RESPONSES table, one row per sample.

    The model sees a single user turn; `prompt` stays the original x so rewards are r(x, y).
    """
    model_inputs = inputs.column(input_column).to_pylist()
    has_fallback = "fallback" in inputs.column_names
    fallbacks = inputs.column("fallback").to_pylist() if has_fallback else [None] * inputs.num_rows
    answers = generator.chat([[{"role": "user", "content": text}] for text in model_inputs], sampling)
    rows = []
    for prompt_id, prompt, model_input, fallback, completions in zip(
        inputs.column("prompt_id").to_pylist(), inputs.column("prompt").to_pylist(), model_inputs, fallbacks, answers
    ):
        for sample_index, completion in enumerate(completions):
            rows.append(
                {
                    "dataset": dataset,
                    "prompt_id": prompt_id,
                    "prompt": prompt,
                    "model_input": model_input,
                    "sample_index": sample_index,
                    "response": completion.text,
                    "finish_reason": completion.finish_reason,
                    "num_tokens": completion.num_tokens,
                    "method": method,
                    "prompter": prompter,
                    "beta": beta,
                    "frozen": frozen,
                    "fallback": fallback,
                }
            )
    return pa.Table.from_pylist(rows, schema=RESPONSES)
