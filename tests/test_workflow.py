"""The workflow as a user runs it: snakemake in a fresh copy of the project, on the tiny models.

Snakemake runs in a subprocess (its Python API does not apply profiles and changes the cwd).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from alignpro import tables
from openai_stub import JudgeStub

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
WORKFLOW_FILES = ["Snakefile", "rules", "workflow", "config", "profiles", "envs"]
BETAS = {"beta0.1": 0.1, "beta1": 1.0}  # config.yaml's beta_sweep, as tagged in paths
REWRITTEN = [  # systems whose frozen model answers a prompter's rewrite
    "sft/tiny-prompter",
    "alignpro/tiny-prompter",
    *(f"alignpro/tiny-prompter/{tag}" for tag in BETAS),
    *(f"alignpro-star/tiny-prompter/{tag}" for tag in BETAS),
]
SYSTEMS = ["base", "rlhf", *REWRITTEN]
JUDGED = SYSTEMS[1:]  # every system is judged against base


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name)
        else:
            shutil.copy2(source, dest / name)
    return dest


def run_snakemake(workdir: Path, *args: str, check: bool = True, cache: Path | None = None) -> subprocess.CompletedProcess:
    """snakemake in `workdir`; with `cache`, eligible rules use it as the between-workflow cache."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if cache is not None:
        env["SNAKEMAKE_OUTPUT_CACHE"] = str(cache)
        args = (*args, "--cache")
    result = subprocess.run(
        [*SNAKEMAKE, "--cores", "2", "--resources", "gpu=1", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if check and result.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted(workdir.glob("logs/**/*.log")))
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}\n{logs}")
    return result


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Jobs per rule that a dry run plans (empty when there is nothing to do)."""
    result = run_snakemake(workdir, "--dry-run", *args)
    output = result.stdout + result.stderr
    if "Nothing to be done" in output:
        return {}
    stats = output.split("Job stats:", 1)[1]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", stats, flags=re.MULTILINE))
    counts.pop("total", None)
    return {rule: int(count) for rule, count in counts.items()}


def planned_resources(workdir: Path, *args: str) -> dict[str, list[set[str]]]:
    """Rule -> the resource requests (e.g. {"gpu=1", "mem_mb=3000", ...}) of each job a dry run plans."""
    output = run_snakemake(workdir, "--dry-run", *args).stdout
    requests: dict[str, list[set[str]]] = {}
    for rule, request in re.findall(r"^rule (\w+):$.*?^    resources: (.*?)$", output, flags=re.MULTILINE | re.DOTALL):
        requests.setdefault(rule, []).append(set(request.split(", ")))
    return requests


def derive_config(base: Path, name: str, **sections: dict) -> Path:
    """A copy of the config file `base`, with keys of some top-level sections changed."""
    config = yaml.safe_load(base.read_text())
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = base.parent / name
    path.write_text(yaml.safe_dump(config))
    return path


def small_config(workdir: Path) -> Path:
    """The embedded default with fewer prompts, so the end-to-end test stays in CI's budget."""
    bundled = yaml.safe_load((workdir / "config/config.yaml").read_text())["datasets"]["bundled"]
    return derive_config(workdir / "config/config.yaml", "small.yaml", datasets={"bundled": {**bundled, "test_size": 12}})


@pytest.fixture(scope="module")
def output_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("snakemake-cache")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, output_cache):
    """The embedded default (fewer prompts) run to completion in a fresh copy of the project."""
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    config = small_config(workdir)
    run_snakemake(workdir, "--configfile", str(config), cache=output_cache)
    return workdir, config


@pytest.fixture(scope="module")
def first_scores(finished_run):
    """The score tables of the first run, before other tests change its config."""
    workdir, _ = finished_run
    return {path.relative_to(workdir): path.read_bytes() for path in workdir.glob("results/scores/**/*.parquet")}


@pytest.mark.slow
def test_every_stage_table_is_complete(finished_run, first_scores):
    workdir, config_path = finished_run
    config = yaml.safe_load(config_path.read_text())
    n_samples = config["generation"]["n_samples"]
    test = tables.read_table(workdir / "results/data/bundled/test.parquet", tables.PROMPTS)
    train = tables.read_table(workdir / "results/data/bundled/train.parquet", tables.PROMPTS)
    prompt_ids = set(test.column("prompt_id").to_pylist())
    assert len(prompt_ids) == test.num_rows == 12
    assert not prompt_ids & set(train.column("prompt_id").to_pylist())

    for system in REWRITTEN:
        rewrites = tables.read_table(workdir / f"results/rewrites/bundled/tiny-frozen/{system}.parquet", tables.REWRITES)
        assert set(rewrites.column("prompt_id").to_pylist()) == prompt_ids
        assert rewrites.num_rows == len(prompt_ids)
        responses = tables.read_table(workdir / f"results/responses/bundled/tiny-frozen/{system}.parquet", tables.RESPONSES)
        rewrite_of = dict(zip(rewrites.column("prompt_id").to_pylist(), rewrites.column("rewrite").to_pylist()))
        given = zip(responses.column("prompt_id").to_pylist(), responses.column("model_input").to_pylist())
        assert all(rewrite_of[prompt_id] == model_input for prompt_id, model_input in given)
        assert set(responses.column("beta").to_pylist()) == {BETAS.get(system.rsplit("/", 1)[-1])}

    k, m = config["alignpro_star"]["k"], config["alignpro_star"]["m"]
    candidates = tables.read_table(workdir / "results/star/bundled/tiny-frozen/tiny-prompter/candidates.parquet", tables.STAR_CANDIDATES)
    assert candidates.num_rows == k * len(prompt_ids) and set(candidates.column("answers").to_pylist()) == {m}
    candidate = {(row["prompt_id"], row["candidate_index"]): row for row in candidates.to_pylist()}
    for tag, beta in BETAS.items():
        star = tables.read_table(workdir / f"results/rewrites/bundled/tiny-frozen/alignpro-star/tiny-prompter/{tag}.parquet", tables.STAR_REWRITES)
        for row in star.to_pylist():
            picked = candidate[row["prompt_id"], row["candidate_index"]]
            assert (row["beta"], row["candidates"], row["rewrite"]) == (beta, k, picked["rewrite"])
            assert 0.0 <= row["kl_estimate"] <= math.log(k) + 1e-9 and 1.0 <= row["effective_sample_size"] <= k + 1e-9

    for system in SYSTEMS:
        responses = tables.read_table(workdir / f"results/responses/bundled/tiny-frozen/{system}.parquet", tables.RESPONSES)
        scores = tables.read_table(workdir / f"results/scores/bundled/tiny-frozen/{system}.parquet", tables.SCORES)
        per_prompt = responses.group_by("prompt_id").aggregate([("sample_index", "count")]).to_pylist()
        assert {row["prompt_id"] for row in per_prompt} == prompt_ids
        assert all(row["sample_index_count"] == n_samples for row in per_prompt)
        assert scores.num_rows == responses.num_rows == len(prompt_ids) * n_samples
        assert all(isinstance(reward, float) for reward in scores.column("reward").to_pylist())
    assert {str(path) for path in first_scores} == {f"results/scores/bundled/tiny-frozen/{system}.parquet" for system in SYSTEMS}

    for system in JUDGED:
        verdicts = tables.read_table(workdir / f"results/judgments/bundled/tiny-frozen/{system}.parquet", tables.VERDICTS)
        assert verdicts.num_rows == len(prompt_ids) * n_samples
        assert set(verdicts.column("verdict").to_pylist()) <= {"win", "tie", "loss"}
        assert set(verdicts.column("judge").to_pylist()) == {"offline Bradley-Terry (margin 0.05)"}


@pytest.mark.slow
def test_training_stages_write_models_and_metrics(finished_run):
    workdir, config_path = finished_run
    config = yaml.safe_load(config_path.read_text())
    train = workdir / "results/train/bundled/tiny-frozen"
    pairs = tables.read_table(train / "tiny-prompter/sft_pairs.parquet", tables.SFT_PAIRS)
    assert pairs.num_rows == config["sft"]["pairs"]["max_prompts"]
    assert set(pairs.column("source").to_pylist()) == {f"best-of-{config['sft']['pairs']['k']}"}
    for run, section in [("tiny-prompter/ppo", "ppo"), *((f"tiny-prompter/ppo-{tag}", "ppo") for tag in BETAS), ("rlhf", "rlhf")]:
        metrics = tables.read_table(train / run / "metrics.parquet", tables.PPO_METRICS)
        assert metrics.column("step").to_pylist() == list(range(1, config[section]["steps"] + 1))
        assert (train / run / "model" / "config.json").exists()
    log = (workdir / "logs/ppo/bundled/tiny-frozen/tiny-prompter/ppo.log").read_text()
    assert f"step {config['ppo']['steps']}/{config['ppo']['steps']}" in log and "ppo: 100%" in log
    assert "generate (transformers)" not in log and "reward: " not in log  # no bars of the calls inside a step
    for tag, beta in BETAS.items():  # the sweep's KL coefficient stays at its beta
        metrics = tables.read_table(train / f"tiny-prompter/ppo-{tag}/metrics.parquet", tables.PPO_METRICS)
        assert set(metrics.column("kl_coef").to_pylist()) == {beta}
    for model in [train / "tiny-prompter/sft", train / "tiny-prompter/ppo/model", train / "rlhf/model"]:
        assert (model / "model.safetensors").exists() and (model / "tokenizer.json").exists()
    assert not list(train.glob("**/adapter_model.safetensors"))


@pytest.mark.slow
def test_report_has_numbers_for_each_method(finished_run):
    workdir, _ = finished_run
    summary = tables.read_table(workdir / "results/report/summary.parquet", tables.SUMMARY).to_pylist()
    assert sorted((row["method"], row["beta"] or 0.0) for row in summary) == [
        ("alignpro", 0.0), ("alignpro", 0.1), ("alignpro", 1.0), ("alignpro-star", 0.1), ("alignpro-star", 1.0),
        ("base", 0.0), ("rlhf", 0.0), ("sft", 0.0),
    ]
    for row in summary:
        assert row["n_prompts"] == 12
        assert row["ci_low"] <= row["mean_reward"] <= row["ci_high"]
        assert row["gap_ci_low"] <= row["gap"] <= row["gap_ci_high"]
        assert (row["kl"] is None) == (row["method"] == "base")
    markdown = (workdir / "results/report/report.md").read_text()
    by_label = {row["method"] if row["beta"] is None else f"{row['method']} β={row['beta']:g}": row for row in summary}
    for label, row in by_label.items():
        assert f"{row['mean_reward']:.3f}" in markdown
        if row["method"] == "base":
            assert row["judge"] is None
        else:
            assert row["judged_pairs"] == 24 and row["win_pct"] + row["tie_pct"] + row["loss_pct"] == pytest.approx(100.0)
            assert f"| {label} | 24 | {row['win_pct']:.1f} [" in markdown
        assert f"| {label} | " + ("–" if row["beta"] is None else f"{row['beta']:g}") + f" | {row['gap']:.3f} [" in markdown
    assert by_label["sft"]["kl"] == 0.0 and by_label["rlhf"]["gap"] == 0.0
    rlhf_gap = by_label["rlhf"]["mean_reward"] - by_label["alignpro-star β=1"]["mean_reward"]
    assert by_label["alignpro-star β=1"]["gap"] == pytest.approx(rlhf_gap, abs=1e-9)  # equal samples per prompt
    star = tables.read_table(workdir / "results/rewrites/bundled/tiny-frozen/alignpro-star/tiny-prompter/beta0.1.parquet", tables.STAR_REWRITES)
    assert by_label["alignpro-star β=0.1"]["kl"] == pytest.approx(sum(star.column("kl_estimate").to_pylist()) / star.num_rows)
    assert "## Win rate against base" in markdown and "NOT an LLM judge" in markdown
    assert "## Suboptimality gap" in markdown and "## Reward–KL frontier" in markdown
    assert markdown.count("\n#### bundled · ") >= 7  # judged examples, at least one per judged system
    for plot in ["mean_reward.png", "reward_variance.png", "training_curves.png", "win_rates.png", "frontier.png"]:
        assert (workdir / "results/report" / plot).read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_snakemake_report_holds_the_plots(finished_run):
    workdir, config = finished_run
    run_snakemake(workdir, "--configfile", str(config), "--report", "snakemake_report.zip")
    with zipfile.ZipFile(workdir / "snakemake_report.zip") as report:
        names = "\n".join(report.namelist())
    for plot in ["mean_reward.png", "reward_variance.png", "training_curves.png", "win_rates.png", "frontier.png", "report.html"]:
        assert plot in names


@pytest.mark.slow
def test_rerun_plans_nothing_and_generation_change_reruns_downstream_only(finished_run):
    workdir, config = finished_run
    assert planned_jobs(workdir, "--configfile", str(config)) == {}

    more_samples = derive_config(config, "more_samples.yaml", generation={"n_samples": 3})
    assert planned_jobs(workdir, "--configfile", str(more_samples)) == {"all": 1, "generate": 8, "score": 8, "judge": 7, "report": 1}

    # a new beta: one more PPO prompter, and rho* resampled from the candidates already drawn
    with_beta = yaml.safe_load(config.read_text())
    with_beta["beta_sweep"] = [*BETAS.values(), 0.5]
    (config.parent / "more_betas.yaml").write_text(yaml.safe_dump(with_beta))
    assert planned_jobs(workdir, "--configfile", str(config.parent / "more_betas.yaml")) == {
        "all": 1, "ppo": 1, "rewrite": 1, "star_rewrites": 1, "generate": 2, "score": 2, "judge": 2, "report": 1
    }


@pytest.mark.slow
def test_api_judge_runs_through_an_openai_compatible_server(finished_run, monkeypatch):
    """Switching to the API judge reruns only judge and report; every pair is asked in both orders at a
    real HTTP server; forcing the judge again pays for nothing (its SQLite cache answers)."""
    workdir, config = finished_run
    monkeypatch.setenv("ALIGNPRO_TEST_JUDGE_KEY", "test-key")
    with JudgeStub() as stub:
        api = {"base_url": stub.base_url, "api_key_env": "ALIGNPRO_TEST_JUDGE_KEY", "concurrency": 4}
        with_api = derive_config(config, "api_judge.yaml", judge={"backend": "api", "samples_per_prompt": 1, "api": api})
        assert planned_jobs(workdir, "--configfile", str(with_api)) == {"all": 1, "judge": 7, "report": 1}
        run_snakemake(workdir, "--configfile", str(with_api))
        requests = 0
        for system in JUDGED:
            verdicts = tables.read_table(workdir / f"results/judgments/bundled/tiny-frozen/{system}.parquet", tables.VERDICTS)
            assert verdicts.num_rows == 12 and set(verdicts.column("sample_index").to_pylist()) == {0}
            assert set(verdicts.column("judge").to_pylist()) == {"gpt-4 pairwise-v1"}
            # both orders, each asked or answered by the cache (systems with the same answers share calls,
            # also between judge jobs running at once), or none for an answer identical to base's (a tie);
            # no faults injected, so no retries
            rows = verdicts.select(["calls", "cached_calls", "retries", "reason_method_first"]).to_pylist()
            for row in rows:
                identical = row["reason_method_first"].startswith("identical answers")
                assert row["calls"] + row["cached_calls"] == (0 if identical else 2) and row["retries"] == 0
            sent = verdicts.column("calls").to_pylist()
            requests += sum(sent)
        assert requests > 0 and stub.total_requests == requests
        markdown = (workdir / "results/report/report.md").read_text()
        assert "Judge: gpt-4 pairwise-v1, an LLM" in markdown and "**judge, base's answer shown as A**" in markdown
        assert planned_jobs(workdir, "--configfile", str(with_api)) == {}
        run_snakemake(workdir, "--configfile", str(with_api), "--forcerun", "judge")
        assert stub.total_requests == requests


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_backend_runs_generation_end_to_end(finished_run):
    """Switching the frozen model to vLLM reruns what uses it (generation, and the prompter's training,
    whose reward needs the frozen model's answers), and vLLM really answers."""
    workdir, config = finished_run
    with_vllm = derive_config(
        config, "vllm.yaml", generation={"backend": "vllm", "vllm": {"gpu_memory_utilization": 0.2, "max_model_len": 512}}
    )
    retrained = {"sft_pairs": 1, "sft": 1, "ppo": 3, "rewrite": 4, "star_candidates": 1, "star_rewrites": 2}
    evaluated = {"generate": 8, "score": 8, "judge": 7, "report": 1}
    assert planned_jobs(workdir, "--configfile", str(with_vllm)) == {"all": 1, **evaluated, **retrained}
    run_snakemake(workdir, "--configfile", str(with_vllm))
    log = (workdir / "logs/generate/bundled/tiny-frozen/base.log").read_text()
    assert "vllm" in log.lower()
    responses = pq.read_table(workdir / "results/responses/bundled/tiny-frozen/base.parquet")
    assert responses.num_rows == 12 * yaml.safe_load(with_vllm.read_text())["generation"]["n_samples"]
    assert "vllm" in (workdir / "logs/ppo/bundled/tiny-frozen/tiny-prompter/ppo.log").read_text().lower()
    assert planned_jobs(workdir, "--configfile", str(with_vllm)) == {}


@pytest.mark.slow
def test_another_workflow_reuses_cached_outputs(finished_run, first_scores, output_cache, tmp_path):
    """Models, data, trained prompters, responses and scores come from the between-workflow cache."""
    _, config = finished_run
    other = copy_workflow(tmp_path / "other")
    result = run_snakemake(other, "--configfile", str(config), cache=output_cache)
    from_cache = set(re.findall(r"Symlinking output file (\S+) from cache", result.stdout + result.stderr))
    assert {
        "results/data/bundled/test.parquet",
        "results/responses/bundled/tiny-frozen/base.parquet",
        "results/responses/bundled/tiny-frozen/alignpro/tiny-prompter.parquet",
        "results/scores/bundled/tiny-frozen/base.parquet",
        "results/scores/bundled/tiny-frozen/alignpro/tiny-prompter.parquet",
        "results/models/frozen/tiny-frozen/model.safetensors",
        "results/train/bundled/tiny-frozen/tiny-prompter/sft_pairs.parquet",
        "results/train/bundled/tiny-frozen/tiny-prompter/ppo/metrics.parquet",
        "results/train/bundled/tiny-frozen/tiny-prompter/ppo-beta0.1/metrics.parquet",
        "results/star/bundled/tiny-frozen/tiny-prompter/candidates.parquet",
        "results/train/bundled/tiny-frozen/rlhf/model/model.safetensors",
    } <= from_cache
    ran = {log.relative_to(other / "logs").parts[0] for log in other.glob("logs/**/*.log") if log.stat().st_size}
    assert ran == {"rewrite", "star_rewrites", "judge", "report"}
    assert len(first_scores) == len(SYSTEMS)
    for path, content in first_scores.items():
        assert (other / path).read_bytes() == content
    assert planned_jobs(other, "--configfile", str(config)) == {}


def test_lint_is_clean():
    result = subprocess.run([*SNAKEMAKE, "--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def dry_run_error(tmp_path: Path, config: dict) -> str:
    workdir = copy_workflow(tmp_path / "workflow")
    (workdir / "config" / "bad.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir, "--dry-run", "--configfile", "config/bad.yaml", "--replace-workflow-config", check=False)
    assert result.returncode != 0
    assert not (workdir / "results").exists()
    return result.stdout + result.stderr


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


def test_unknown_config_key_is_named(tmp_path):
    config = default_config()
    config["generation"]["temprature"] = 0.5
    assert "temprature" in dry_run_error(tmp_path, config)


def test_wrong_config_type_is_named(tmp_path):
    config = default_config()
    config["generation"]["n_samples"] = "four"
    message = dry_run_error(tmp_path, config)
    assert "n_samples" in message and "'four' is not of type 'integer'" in message


def test_alignpro_star_without_betas_is_named(tmp_path):
    config = default_config()
    config["beta_sweep"] = []
    assert "beta_sweep is empty" in dry_run_error(tmp_path, config)


def test_dataset_file_without_prompt_column_is_named(tmp_path):
    data = tmp_path / "my_prompts.csv"
    data.write_text("question,answer\nwhat is 2+2?,4\n")
    config = default_config()
    config["datasets"] = {"mine": {"source": "local", "path": str(data), "prompt_column": "prompt"}}
    message = dry_run_error(tmp_path, config)
    assert "my_prompts.csv" in message and "'prompt'" in message and "datasets.mine" in message


def test_paper_config_plans_the_whole_grid(tmp_path):
    """3 datasets x 2 prompters x 2 frozen models x 3 betas: 18 answering systems per (dataset, frozen)
    (base, rlhf, and per prompter sft, alignpro, and alignpro and alignpro-star at every beta), 17 judged
    against base; GPU jobs carry the config's memory and wall time."""
    workdir = copy_workflow(tmp_path / "workflow")
    args = ("--configfile", "config/paper.yaml", "--replace-workflow-config")
    planned = planned_jobs(workdir, *args)
    assert planned == {
        "fetch_model": 5,
        "dataset": 3,
        "sft_pairs": 12,
        "sft": 12,
        "ppo": 12 * 4,  # the main run and one per beta
        "star_candidates": 12,
        "star_rewrites": 12 * 3,
        "rlhf": 6,
        "rewrite": 12 * 5,  # sft, alignpro and the three sweep prompters
        "generate": 6 * 18,
        "score": 6 * 18,
        "judge": 6 * 17,
        "report": 1,
        "all": 1,
    }
    paper = yaml.safe_load((workdir / "config/paper.yaml").read_text())
    requests = planned_resources(workdir, *args)
    for rule, resources in paper["resources"].items():
        assert len(requests[rule]) == planned[rule], rule
        expected = {"gpu=1", f"mem_mb={resources['mem_mb']}", f"runtime={resources['runtime']}"}
        assert all(expected <= request for request in requests[rule]), (rule, requests[rule][0])


def test_gpu_requests_follow_vllm_tensor_parallel_size(tmp_path):
    workdir = copy_workflow(tmp_path / "workflow")
    config = derive_config(
        workdir / "config/config.yaml", "tp2.yaml", generation={"backend": "vllm", "vllm": {"tensor_parallel_size": 2}}
    )
    # a global --resources gpu=1 would scale the requests down to it, as on a one-GPU machine
    requests = planned_resources(workdir, "--configfile", str(config), "--resources", "gpu=8")
    gpus = {rule: {item for request in jobs for item in request if item.startswith("gpu=")} for rule, jobs in requests.items()}
    assert gpus["generate"] == gpus["ppo"] == gpus["sft_pairs"] == gpus["star_candidates"] == {"gpu=2"}  # the frozen model answers through vLLM
    assert gpus["rewrite"] == gpus["sft"] == gpus["rlhf"] == gpus["score"] == {"gpu=1"}
    assert not gpus["dataset"] and not gpus["judge"] and not gpus["report"] and not gpus["star_rewrites"]
