"""One function per workflow stage: paths and plain parameters in, a Parquet table (or model) out.

`workflow/scripts/*.py` translate the `snakemake` object into these calls, so every stage can be
run and tested without Snakemake. Parameters arrive as the dictionaries of the validated config.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

from alignpro import tables

log = logging.getLogger("alignpro")


@contextlib.contextmanager
def logging_to(path: str | os.PathLike | None):
    """Send logging, progress bars and child processes' output to the rule's log file.

    Redirects the stdout/stderr file descriptors, not only the Python objects, so that engine
    worker processes (vLLM spawns some) write there too.
    """
    if path is None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", buffering=1) as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sink, force=True
        )
        try:
            yield
        except BaseException:
            log.exception("stage failed")
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def build_tiny_model(*, role: str, out_dir: str, seed: int) -> None:
    from alignpro.tinymodels import build_tiny_model as build

    path = build(role, out_dir, seed=seed)
    log.info("built tiny %s model in %s", role, path)


def prepare_dataset(*, name: str, spec: dict, seed: int, train_path: str, test_path: str) -> None:
    from alignpro.datasets import prepare_dataset as prepare

    train, test = prepare(name, spec, seed)
    tables.write_table(train, train_path, tables.PROMPTS)
    tables.write_table(test, test_path, tables.PROMPTS)
    log.info("%s: %d train and %d test prompts", name, train.num_rows, test.num_rows)


def _sampling(params: dict, *, seed: int, n: int = 1):
    from alignpro.generation import Sampling

    return Sampling(
        n=n,
        temperature=params["temperature"],
        top_p=params["top_p"],
        max_new_tokens=params["max_new_tokens"],
        seed=seed,
    )


def _generator(model: dict, params: dict, *, seed: int):
    from alignpro.generation import load_generator

    return load_generator(
        params["backend"],
        model["path"],
        revision=model["revision"],
        dtype=model["dtype"],
        trust_remote_code=model["trust_remote_code"],
        batch_size=params["batch_size"],
        seed=seed,
        vllm_options=params.get("vllm"),
    )


def rewrite(*, prompts_path: str, out_path: str, prompter: str, model: dict, params: dict, seed: int) -> None:
    """The rewrite stage: x -> x' for every test prompt with the prompter and the meta-prompt."""
    from alignpro.rewrite import rewrite_prompts

    prompts = tables.read_table(prompts_path, tables.PROMPTS)
    rewrites = rewrite_prompts(
        _generator(model, params, seed=seed),
        prompts,
        sampling=_sampling(params, seed=seed),
        prompter=prompter,
        fallback_on_truncation=params["fallback_on_truncation"],
        max_length_ratio=params["max_length_ratio"],
    )
    tables.write_table(rewrites, out_path, tables.REWRITES)


def generate(
    *,
    inputs_path: str,
    out_path: str,
    dataset: str,
    method: str,
    frozen: str,
    prompter: str | None,
    model: dict,
    params: dict,
    seed: int,
) -> None:
    """The generation stage: the frozen model answers x (base) or x' (alignpro), n samples each.

    `inputs_path` is the test split for base and the prompter's rewrites otherwise.
    """
    from alignpro.generation import generate_responses

    input_column, schema = ("prompt", tables.PROMPTS) if method == "base" else ("rewrite", tables.REWRITES)
    inputs = tables.read_table(inputs_path, schema)
    responses = generate_responses(
        _generator(model, params, seed=seed),
        inputs,
        input_column=input_column,
        sampling=_sampling(params, seed=seed, n=params["n_samples"]),
        dataset=dataset,
        method=method,
        frozen=frozen,
        prompter=prompter,
    )
    tables.write_table(responses, out_path, tables.RESPONSES)


def score(*, responses_path: str, out_path: str, reward_model: str, model: dict, params: dict) -> None:
    """The reward stage: r(x, y) for every sampled response, x the original prompt."""
    from alignpro.reward import RewardScorer, score_responses

    scorer = RewardScorer(
        model["path"],
        revision=model["revision"],
        dtype=model["dtype"],
        trust_remote_code=model["trust_remote_code"],
        batch_size=params["batch_size"],
        max_length=params["max_length"],
    )
    responses = tables.read_table(responses_path, tables.RESPONSES)
    tables.write_table(score_responses(scorer, responses, reward_model=reward_model), out_path, tables.SCORES)


def report(
    *,
    scores_paths: list[str],
    prompters: list[str],
    confidence: float,
    summary_path: str,
    markdown: str,
    html: str,
    mean_plot: str,
    variance_plot: str,
) -> None:
    """The report stage: per (dataset, prompter, frozen, method) reward statistics, tables and plots."""
    from alignpro.report import summarize, write_report

    scores = [tables.read_table(path, tables.SCORES) for path in scores_paths]
    summary = summarize(scores, prompters=prompters, confidence=confidence)
    tables.write_table(summary.to_arrow(), summary_path, tables.SUMMARY)
    write_report(
        summary, markdown=markdown, html=html, mean_plot=mean_plot, variance_plot=variance_plot, confidence=confidence
    )
    log.info("report of %d rows from %d score tables written to %s", summary.height, len(scores), markdown)
