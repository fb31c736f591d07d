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
from alignpro.model_spec import ModelSpec
from alignpro.systems import answers_original

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


def train_task_model(*, task: str, role: str, out_dir: str, base_dir: str | None, seed: int) -> None:
    from alignpro.task_models import train_task_model as train

    path = train(task, role, out_dir, base_dir=base_dir, seed=seed)
    log.info("trained the %s model of the %s task in %s", role, task, path)


def fetch_model(
    *, repo: str, revision: str, cache_dir: str | None, trust_remote_code: bool, marker_path: str, label: str
) -> None:
    """The model stage: a hub model at a pinned commit downloaded once into the cache (None: the
    default cache), checked against `trust_remote_code`; `marker_path` records what was fetched."""
    from alignpro.hub import fetch_model as fetch

    fetch(repo, revision, cache_dir, trust_remote_code, marker_path, label=label)


def build_standin(
    *, source: str, revision: str, role: str, seed: int, cache_dir: str | None, trust_remote_code: bool, out_dir: str, label: str
) -> None:
    """The model stage of a rehearsal: the stand-in of the model at `source` (a hub id or a directory)."""
    from alignpro.standins import build_standin as build

    build(source, out_dir, role=role, seed=seed, revision=revision, cache_dir=cache_dir, trust_remote_code=trust_remote_code, label=label)


def prepare_dataset(*, name: str, spec: dict, seed: int, train_path: str, test_path: str) -> None:
    from alignpro.datasets import prepare_dataset as prepare

    train, test = prepare(name, spec, seed)
    tables.write_table(train, train_path, tables.PROMPTS)
    tables.write_table(test, test_path, tables.PROMPTS)
    log.info("%s: %d train and %d test prompts", name, train.num_rows, test.num_rows)


def _generation(section: dict):
    from alignpro.generation import GenerationSettings

    return GenerationSettings.from_config(section)


def _rewriting(section: dict):
    from alignpro.rewrite import RewriteSettings

    return RewriteSettings.from_config(section)


def _generator(model: ModelSpec, settings, *, seed: int):
    if model.api is not None:
        log.info("frozen model %s: %s at %s, through its API", model.name, model.api["model"], model.api["base_url"])
    else:
        log.info("loading %s at revision %s for %s generation (%s)", model.path, model.revision, settings.backend, model.label)
    return settings.generator(model, seed=seed)


def rewrite(*, prompts_path: str, out_path: str, prompter: str, model: ModelSpec, params: dict, seed: int) -> None:
    """The rewrite stage: x -> x' for every test prompt with the prompter and the meta-prompt."""
    from alignpro.rewrite import rewrite_prompts

    settings = _rewriting(params)
    prompts = tables.read_table(prompts_path, tables.PROMPTS)
    rewrites = rewrite_prompts(
        _generator(model, settings, seed=seed),
        prompts,
        sampling=settings.sampling(seed=seed),
        prompter=prompter,
        fallback_on_truncation=settings.fallback_on_truncation,
        max_length_ratio=settings.max_length_ratio,
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
    beta: float | None,
    model: ModelSpec,
    params: dict,
    seed: int,
) -> None:
    """The generation stage: the frozen model (for rlhf its PPO-tuned self) answers x, or a prompter's
    x' (sft, alignpro, alignpro-star), n samples each.

    `inputs_path` is the test split for base and rlhf, and the prompter's rewrites otherwise (rho*'s
    STAR_REWRITES are REWRITES with more columns). `beta` labels beta-sweep and rho* answers.
    """
    from alignpro.generation import generate_responses

    input_column, schema = ("prompt", tables.PROMPTS) if answers_original(method) else ("rewrite", tables.REWRITES)
    inputs = tables.read_table(inputs_path, schema)
    settings = _generation(params)
    responses = generate_responses(
        _generator(model, settings, seed=seed),
        inputs,
        input_column=input_column,
        sampling=settings.sampling(seed=seed, n=settings.n_samples),
        dataset=dataset,
        method=method,
        frozen=frozen,
        prompter=prompter,
        beta=beta,
    )
    tables.write_table(responses, out_path, tables.RESPONSES)


def _scorer(model: ModelSpec, params: dict):
    from alignpro.reward import RewardScorer

    log.info("loading reward model %s at revision %s (%s)", model.path, model.revision, model.label)
    return RewardScorer(model.path, **model.load_options(), batch_size=params["batch_size"], max_length=params["max_length"])


def score(*, responses_path: str, out_path: str, reward_model: str, model: ModelSpec, params: dict) -> None:
    """The reward stage: r(x, y) for every sampled response, x the original prompt."""
    from alignpro.reward import score_responses

    responses = tables.read_table(responses_path, tables.RESPONSES)
    scored = score_responses(_scorer(model, params), responses, reward_model=reward_model)
    tables.write_table(scored, out_path, tables.SCORES)


def _training_prompts(train_path: str, max_prompts: int, section: str):
    """The first `max_prompts` training prompts (the split is already shuffled with the seed); fewer
    are there than the config's `section`.max_prompts asks for is worth a warning, not an error."""
    prompts = tables.read_table(train_path, tables.PROMPTS)
    if len(prompts) < max_prompts:
        log.warning("%s.max_prompts is %d, but %s has only %d training prompts", section, max_prompts, train_path, len(prompts))
    return prompts.slice(0, max_prompts)


def sft_pairs(
    *,
    train_path: str,
    out_path: str,
    pairs: dict,
    prompter: ModelSpec,
    frozen: ModelSpec,
    reward: ModelSpec,
    rewrite: dict,
    generation: dict,
    scoring: dict,
    seed: int,
) -> None:
    """(x, x') pairs for rho_sft: best-of-K self-distillation, or pairs from a file or hub dataset."""
    from alignpro.sft import best_of_k_pairs, read_pairs

    if pairs["source"] == "best_of_k":
        rewriting, answering = _rewriting(rewrite), _generation(generation)
        table = best_of_k_pairs(
            _generator(prompter, rewriting, seed=seed),
            _generator(frozen, answering, seed=seed),
            _scorer(reward, scoring),
            _training_prompts(train_path, pairs["max_prompts"], "sft.pairs"),
            k=pairs["k"],
            prompter_sampling=rewriting.sampling(seed=seed),
            frozen_sampling=answering.sampling(seed=seed, n=pairs["answers_per_rewrite"]),
            fallback_on_truncation=rewriting.fallback_on_truncation,
            max_length_ratio=rewriting.max_length_ratio,
        )
    else:
        table = read_pairs(pairs)
    tables.write_table(table, out_path, tables.SFT_PAIRS)
    log.info("%d SFT pairs written to %s", table.num_rows, out_path)


def sft(*, pairs_path: str, out_dir: str, model: ModelSpec, settings: dict, seed: int) -> None:
    """rho_sft: the prompter fine-tuned on the pairs, saved as a full model."""
    from alignpro.sft import SFTSettings, train_sft

    train_sft(
        model.path,
        tables.read_table(pairs_path, tables.SFT_PAIRS),
        out_dir,
        SFTSettings.from_config({**settings, "seed": seed}),
        **model.load_options(),
    )


def train_prompter(
    *,
    trainer: str,
    train_path: str,
    workdir: str,
    model: ModelSpec,
    frozen: ModelSpec,
    reward: ModelSpec,
    settings: dict,
    rewrite: dict,
    generation: dict,
    scoring: dict,
    seed: int,
    processes: int = 1,
    nodes: int = 1,
) -> None:
    """A prompter trained from rho_sft by `trainer` (alignpro.trainers) with `settings`, its config
    section as one run takes it; each rewrite's reward is r(x, frozen(x')).

    Writes `workdir/model` and `workdir/metrics.parquet`; checkpoints in `workdir/checkpoints`
    survive a killed job, and the rerun resumes from the last one. With `processes` above 1 (a trainer
    that trains in several processes, on as many GPUs) or several `nodes` (of a SLURM allocation) the
    stage runs once per process under torchrun, `processes` on each node (alignpro.distributed).
    """
    from alignpro import distributed
    from alignpro.rewrite import prompter_conversation
    from alignpro.trainers import TRAINERS
    from alignpro.training import RewriteReward

    if (processes > 1 or nodes > 1) and not distributed.launched():
        if not TRAINERS[trainer].multi_process:
            raise ValueError(f"config resources.{trainer}.gpu: {trainer} trains in one process; give its job one GPU")
        arguments = dict(
            trainer=trainer, train_path=train_path, workdir=workdir, model=model, frozen=frozen, reward=reward,
            settings=settings, rewrite=rewrite, generation=generation, scoring=scoring, seed=seed,
        )
        distributed.run_in_processes(
            "alignpro.stages:train_prompter", arguments, workdir, processes=processes, nodes=nodes, resource=f"resources.{trainer}"
        )
        return

    rewriting, answering = _rewriting(rewrite), _generation(generation)
    reward_fn = RewriteReward(
        _generator(frozen, answering, seed=seed),
        _scorer(reward, scoring),
        answering.sampling(seed=seed),
        fallback_on_truncation=rewriting.fallback_on_truncation,
        max_length_ratio=rewriting.max_length_ratio,
    )
    TRAINERS[trainer].train_function()(
        settings,
        trainer,
        model=model,
        prompts=_training_prompts(train_path, settings["max_prompts"], trainer).column("prompt").to_pylist(),
        query_fn=prompter_conversation,
        reward_fn=reward_fn,
        workdir=workdir,
        seed=seed,
    )


def rlhf(*, train_path: str, workdir: str, model: ModelSpec, reward: ModelSpec, ppo: dict, scoring: dict, seed: int) -> None:
    """The RLHF oracle: PPO on the frozen model, rewarded with r(x, y) of its own answers."""
    from alignpro.ppo import train
    from alignpro.training import ResponseReward

    train(
        ppo,
        "rlhf",
        model=model,
        prompts=_training_prompts(train_path, ppo["max_prompts"], "rlhf").column("prompt").to_pylist(),
        query_fn=lambda prompt: [{"role": "user", "content": prompt}],
        reward_fn=ResponseReward(_scorer(reward, scoring)),
        workdir=workdir,
        seed=seed,
    )


def star_candidates(
    *,
    prompts_path: str,
    out_path: str,
    prompter_name: str,
    prompter: ModelSpec,
    frozen: ModelSpec,
    reward: ModelSpec,
    settings: dict,
    rewrite: dict,
    generation: dict,
    scoring: dict,
    seed: int,
) -> None:
    """The candidates of rho*: K rewrites of every test prompt from rho_sft, each with R(x, x')
    estimated from M frozen-model answers (`settings` is the config's alignpro_star section)."""
    from alignpro.star import candidate_rewrites

    rewriting, answering = _rewriting(rewrite), _generation(generation)
    table = candidate_rewrites(
        _generator(prompter, rewriting, seed=seed),
        _generator(frozen, answering, seed=seed),
        _scorer(reward, scoring),
        tables.read_table(prompts_path, tables.PROMPTS),
        prompter_name=prompter_name,
        k=settings["k"],
        m=settings["m"],
        prompter_sampling=rewriting.sampling(seed=seed),
        frozen_sampling=answering.sampling(seed=seed),
        fallback_on_truncation=rewriting.fallback_on_truncation,
        max_length_ratio=rewriting.max_length_ratio,
    )
    tables.write_table(table, out_path, tables.STAR_CANDIDATES)


def star_rewrites(*, candidates_path: str, out_path: str, beta: float, seed: int) -> None:
    """rho* at one beta: per test prompt, one candidate drawn from softmax(R / beta)."""
    from alignpro.optimal import resample_rewrites

    table = resample_rewrites(tables.read_table(candidates_path, tables.STAR_CANDIDATES), beta, seed)
    tables.write_table(table, out_path, tables.STAR_REWRITES)


def judge(*, scores_path: str, base_scores_path: str, out_path: str, judge: str, settings: dict) -> None:
    """The judge stage: each of a method's answers against base's answer to the same prompt and sample.

    `judge` is the judge's name, `settings` its section under the config's `judges`: the offline Bradley-Terry judge decides from the
    rewards; the API judge asks an OpenAI-compatible model in both orders, through a SQLite cache
    (`api.cache`, outside the rule's outputs) so no call is paid for twice.
    """
    from alignpro.judge import JudgeSettings, bradley_terry_pairs, judge_pairs, pairs_from_scores

    pairs = pairs_from_scores(
        tables.read_table(scores_path, tables.SCORES),
        tables.read_table(base_scores_path, tables.SCORES),
        samples_per_prompt=settings["samples_per_prompt"],
    )
    if settings["backend"] == "offline":
        verdicts = bradley_terry_pairs(pairs, margin=settings["margin"], name=judge)
    else:
        verdicts = judge_pairs(pairs, JudgeSettings.from_config(settings["api"], judge), settings["api"]["cache"], name=judge)
        _check_not_judged(verdicts, settings["api"]["cache"])
    tables.write_table(verdicts, out_path, tables.VERDICTS)
    counts = verdicts.group_by("verdict").aggregate([("verdict", "count")]).to_pylist()
    log.info(
        "%d pairs judged by %s (%s): %s; %d requests, %d answered from the cache",
        verdicts.num_rows,
        judge,
        verdicts.column("judged_by")[0] if verdicts.num_rows else settings["backend"],
        ", ".join(f"{row['verdict']} {row['verdict_count']}" for row in counts),
        sum(verdicts.column("calls").to_pylist()),
        sum(verdicts.column("cached_calls").to_pylist()),
    )


def _check_not_judged(verdicts, cache: str) -> None:
    """Pairs the API failed on (after every retry) fail the job, so that a plain rerun retries them and
    pays for them alone (the answered calls are in the cache); pairs the budget left are kept
    `not_judged`, with a warning: the budget is the user's choice."""
    reasons = [reason for reason in verdicts.column("not_judged_reason").to_pylist() if reason is not None]
    failed = [reason for reason in reasons if reason != "budget"]
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {verdicts.num_rows} pairs were not judged, the API failing after every retry "
            f"(first: {failed[0]}). The calls answered so far are cached in {cache}: rerun to judge the rest, "
            "paying only for them"
        )
    if reasons:
        log.warning(
            "%d of %d pairs were not judged: the judge's budget (judges.<name>.api.max_calls / max_cost_usd) is spent; they "
            "stay not_judged in the table. Raise the budget and rerun to judge them, paying only for them",
            len(reasons), verdicts.num_rows,
        )


def _kl_frame(training_runs: list[dict], training: dict, star_runs: list[dict]):
    """Each trained or resampled system's measured KL to its reference, keyed like the summary."""
    import polars as pl

    from alignpro.report import training_kl, star_kl

    keys = ("dataset", "prompter", "frozen", "method", "beta")
    rows = [{key: run[key] for key in keys} | {"kl": training_kl(training[run["label"]])} for run in training_runs]
    rows += [
        {key: run[key] for key in keys} | {"kl": star_kl(pl.from_arrow(tables.read_table(run["path"], tables.STAR_REWRITES)))}
        for run in star_runs
    ]
    schema = {"dataset": pl.String, "prompter": pl.String, "frozen": pl.String, "method": pl.String, "beta": pl.Float64, "kl": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def _test_prompts_frame(test_prompts: dict[str, str]):
    """dataset, prompt_id, reference and category of every dataset's test prompts."""
    import polars as pl

    frames = [
        pl.from_arrow(tables.read_table(path, tables.PROMPTS).select(["prompt_id", "reference", "category"])).with_columns(
            dataset=pl.lit(dataset, pl.String)
        )
        for dataset, path in test_prompts.items()
    ]
    schema = {"dataset": pl.String, "prompt_id": pl.String, "reference": pl.String, "category": pl.String}
    return pl.concat(frames).select(list(schema)) if frames else pl.DataFrame(schema=schema)


def check_samples_per_prompt(table, n_samples: int, path: str) -> None:
    """Every prompt of a scores table has `n_samples` answers (generation.n_samples), else the table was
    made under other settings and is named: stale, not to be averaged beside fresh ones."""
    import polars as pl

    counts = table.group_by("prompt_id").agg(pl.len().alias("answers"))["answers"].unique().sort().to_list()
    if counts != [n_samples]:
        raise tables.SchemaError(
            f"{path}: {', '.join(map(str, counts))} answer(s) per prompt where generation.n_samples is {n_samples}: it "
            f"was made under other settings. Delete it and the responses table it scored, and run snakemake again: "
            "both are made afresh, and what reads them"
        )


def report(
    *,
    scores_paths: list[str],
    verdicts_paths: list[str],
    training_runs: list[dict],
    star_runs: list[dict],
    test_prompts: dict[str, str],
    checkers: dict[str, str],
    prompters: list[str],
    settings: dict,
    n_samples: int,
    seed: int,
    summary_path: str,
    win_rates_path: str,
    categories_path: str,
    category_win_rates_path: str,
    markdown: str,
    html: str,
    mean_plot: str,
    variance_plot: str,
    accuracy_plot: str,
    training_plot: str,
    win_plot: str,
    frontier_plot: str,
    budget_plot: str,
    length_plot: str,
) -> None:
    """The report stage: per (dataset, prompter, frozen, method, beta) reward statistics, win rates
    against base per judge (raw and length-controlled, with the judges' position bias and agreement), the gap to rlhf and the measured KL, as tables and plots with judged examples and
    the training curves, and each method's task accuracy beside its reward where a dataset has
    reference answers, and all of it by category where prompts have one. `training_runs` are the trainers' and rlhf's runs
    (metrics path, label and system keys), `star_runs` rho*'s rewrite tables (path and keys);
    `test_prompts` maps each dataset to its test prompts table (reference answers, categories), `checkers`
    each dataset with reference answers to its checker's name; `settings` is the config's `report` section.
    A scores table without `n_samples` answers to each prompt is stale and named, never mixed in."""
    import polars as pl
    import pyarrow as pa

    from alignpro.report import identical_answer_pairs, judge_agreement, pick_examples, summarize, verdicts_frame, win_rates, write_report
    from alignpro.systems import REFERENCE
    from alignpro.report.categories import by_category, prompt_categories

    score_tables = {path: pl.from_arrow(tables.read_table(path, tables.SCORES)) for path in scores_paths}
    for path, table in score_tables.items():
        check_samples_per_prompt(table, n_samples, path)
    scores = pl.concat(list(score_tables.values()))
    verdicts = verdicts_frame([tables.read_table(path, tables.VERDICTS) for path in verdicts_paths])
    prompts = _test_prompts_frame(test_prompts)
    training = {run["label"]: pl.from_arrow(tables.read_table(run["path"], tables.TRAINING_METRICS)) for run in training_runs}
    summary = summarize(
        scores,
        prompters=prompters,
        confidence=settings["confidence"],
        kl=_kl_frame(training_runs, training, star_runs),
        bootstrap_samples=settings["bootstrap_samples"],
        seed=seed,
        references=prompts.filter(pl.col("dataset").is_in(list(checkers))),
        checkers=checkers,
    )
    rates = win_rates(verdicts, n_bootstrap=settings["bootstrap_samples"], seed=seed, confidence=settings["confidence"])
    tables.write_table(summary.to_arrow(), summary_path, tables.SUMMARY)
    tables.write_table(rates.to_arrow(), win_rates_path, tables.WIN_RATES)
    categories = by_category(
        scores, verdicts, prompt_categories(prompts), prompters=prompters, min_prompts=settings["min_category_prompts"],
        confidence=settings["confidence"], bootstrap_samples=settings["bootstrap_samples"], seed=seed,
    )
    for frame, path, schema in (
        (categories.summary, categories_path, tables.CATEGORY_SUMMARY), (categories.win_rates, category_win_rates_path, tables.CATEGORY_WIN_RATES)
    ):
        rows = frame.to_arrow() if frame.height else pa.Table.from_pylist([], schema=schema)  # no categories: no rows
        tables.write_table(rows, path, schema)
    write_report(
        summary,
        markdown=markdown,
        html=html,
        mean_plot=mean_plot,
        variance_plot=variance_plot,
        accuracy_plot=accuracy_plot,
        checkers=checkers,
        confidence=settings["confidence"],
        training=training,
        training_plot=training_plot,
        win_rates=rates,
        agreement=judge_agreement(verdicts, settings["confidence"], free_ties=identical_answer_pairs(scores, REFERENCE)),
        win_plot=win_plot,
        frontier_plot=frontier_plot,
        budget_plot=budget_plot,
        length_plot=length_plot,
        categories=categories,
        min_category_prompts=settings["min_category_prompts"],
        examples=pick_examples(verdicts, scores, settings["examples"]),
    )
    log.info(
        "report of %d rows from %d score and %d verdict tables written to %s",
        summary.height, len(scores_paths), len(verdicts_paths), markdown,
    )
