"""Summary statistics against hand-computed values, the t quantile, and the written report files."""

import base64
import itertools
import io
import random
import re
import statistics

import matplotlib.image
import matplotlib.pyplot as plt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from alignpro.report import judge_agreement, pick_examples, training_kl, star_kl, summarize, verdicts_frame, win_rates, write_report
from alignpro.report.summary import scores_frame
from alignpro.report.categories import by_category
from alignpro.report import plots
from alignpro.report.plots import draw_dataset, method_series, series_styles, with_labels
from alignpro.report.render import Heading, Paragraph, Quote, Table, html_page, markdown
from alignpro.tables import TRAINING_METRICS, SCORES, SUMMARY, VERDICTS, WIN_RATES, SchemaError, conform
from fakes import LLM_JUDGE, verdict_record

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Rewards per prompt (two samples each) for the hand-made tables.
BASE_REWARDS = {"p1": [1.0, 2.0], "p2": [0.5, -0.5], "p3": [3.0, 4.0], "p4": [-1.0, 0.0]}
ALIGNPRO_REWARDS = {"p1": [2.0, 2.5], "p2": [1.0, 0.0], "p3": [3.5, 4.5], "p4": [0.0, 1.0]}
ALIGNPRO_FALLBACK = {"p1": False, "p2": True, "p3": False, "p4": False}
T_975_DF3 = 3.182  # two-sided 95% t quantile with 3 degrees of freedom, from a printed table


def _rows(rewards: dict, *, method: str, prompter, fallback: dict | None, dataset="hh", frozen="org/frozen-7b", beta=None):
    return [
        dict(
            dataset=dataset,
            prompt_id=prompt_id,
            prompt=f"prompt {prompt_id}",
            model_input=f"input {prompt_id}",
            sample_index=index,
            response=f"response {index}",
            finish_reason="stop",
            num_tokens=3,
            method=method,
            prompter=prompter,
            beta=beta,
            frozen=frozen,
            fallback=None if fallback is None else fallback[prompt_id],
            reward=reward,
            reward_model="rm",
        )
        for prompt_id, values in rewards.items()
        for index, reward in enumerate(values)
    ]


def _scores(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCORES)


@pytest.fixture
def tables():
    base = _scores(_rows(BASE_REWARDS, method="base", prompter=None, fallback=None))
    alignpro = _scores(
        _rows(ALIGNPRO_REWARDS, method="alignpro", prompter="org/prompter-a", fallback=ALIGNPRO_FALLBACK)
    )
    return [base, alignpro]


def _expected(rewards: dict) -> dict:
    """Independent computation with the standard library and a table t quantile."""
    samples = [r for values in rewards.values() for r in values]
    prompt_means = [statistics.mean(values) for values in rewards.values()]
    half_width = T_975_DF3 * statistics.stdev(prompt_means) / len(prompt_means) ** 0.5
    centre = statistics.mean(prompt_means)
    return dict(
        n_prompts=len(rewards),
        n_samples=len(samples),
        mean_reward=statistics.mean(samples),
        reward_variance=statistics.variance(samples),
        ci_low=centre - half_width,
        ci_high=centre + half_width,
    )


def test_summarize_known_numbers(tables):
    summary = summarize(tables, prompters=["org/prompter-a"])
    for method, rewards in (("base", BASE_REWARDS), ("alignpro", ALIGNPRO_REWARDS)):
        [row] = summary.filter(pl.col("method") == method).to_dicts()
        for key, value in _expected(rewards).items():
            tolerance = 1e-3 if key.startswith("ci_") else 1e-12  # the table t quantile has 3 decimals
            assert row[key] == pytest.approx(value, abs=tolerance), (method, key)
    assert summary.filter(pl.col("method") == "alignpro")["fallback_rate"].to_list() == [0.25]
    assert summary.filter(pl.col("method") == "base")["fallback_rate"].to_list() == [None]


SUMMARY_IN_A_FRESH_PROCESS = """
import random, sys
import pyarrow as pa
from alignpro.report import summarize, star_kl
from alignpro.tables import SCORES
rng = random.Random(0)
rows = [
    dict(dataset="hh", prompt_id=f"p{p}", prompt="x", model_input="x", sample_index=s, response="y", finish_reason="stop",
         num_tokens=1, method=method, prompter=None if method == "base" else "q", beta=None, frozen="f",
         fallback=None if method == "base" else False, reward=rng.gauss(0, 1) * 1e3 + rng.random() / 7, reward_model="rm")
    for method in ("base", "sft", "alignpro") for p in range(200) for s in range(2)
]
summary = summarize([pa.Table.from_pylist(rows, schema=SCORES)], prompters=["q"], confidence=0.95)
print(repr(summary.rows()))
"""


def test_summary_is_identical_in_every_process():
    """Polars seeds its hashing anew in each process, so groups come out in a different order each run;
    sums over them must not depend on it, or two runs of the workflow would differ in the last digit."""
    import subprocess
    import sys

    outputs = {
        subprocess.run([sys.executable, "-c", SUMMARY_IN_A_FRESH_PROCESS], capture_output=True, text=True, check=True).stdout
        for _ in range(4)
    }
    assert len(outputs) == 1


def test_summary_fits_schema_and_is_sorted(tables):
    extra = _scores(_rows(BASE_REWARDS, method="zeta", prompter="org/prompter-a", fallback=ALIGNPRO_FALLBACK))
    rlhf = _scores(_rows(BASE_REWARDS, method="rlhf", prompter=None, fallback=None))
    summary = summarize([extra, rlhf, *tables], prompters=["org/prompter-a"])
    assert summary.columns == SUMMARY.names
    conform(summary.to_arrow(), SUMMARY, "summary")
    assert summary["method"].to_list() == ["base", "alignpro", "rlhf", "zeta"]
    assert summarize(pl.concat([pl.from_arrow(t) for t in reversed(tables)]), prompters=["org/prompter-a"]).equals(
        summarize(tables, prompters=["org/prompter-a"])
    )


def test_base_rows_repeat_for_every_prompter(tables):
    other = _scores(_rows(ALIGNPRO_REWARDS, method="alignpro", prompter="org/prompter-b", fallback=ALIGNPRO_FALLBACK))
    summary = summarize([*tables, other], prompters=["org/prompter-a", "org/prompter-b"])
    assert summary.select("prompter", "method").rows() == [
        ("org/prompter-a", "base"),
        ("org/prompter-a", "alignpro"),
        ("org/prompter-b", "base"),
        ("org/prompter-b", "alignpro"),
    ]
    base = summary.filter(pl.col("method") == "base").drop("prompter")
    assert base[0].equals(base[1])
    with pytest.raises(ValueError, match="prompters"):
        summarize(tables, prompters=[])


def test_summarize_nulls_for_too_little_data():
    one_prompt = _scores(_rows({"p1": [1.0, 3.0]}, method="base", prompter=None, fallback=None))
    one_sample = _scores(_rows({"p1": [2.0]}, method="base", prompter=None, fallback=None, dataset="tiny"))
    rows = {r["dataset"]: r for r in summarize([one_prompt, one_sample], prompters=["p"]).to_dicts()}
    assert rows["hh"]["reward_variance"] == pytest.approx(2.0)
    assert rows["hh"]["ci_low"] is None and rows["hh"]["ci_high"] is None
    assert rows["tiny"]["reward_variance"] is None
    assert rows["tiny"]["mean_reward"] == 2.0


def test_summarize_rejects_bad_tables(tables):
    with pytest.raises(ValueError, match="reward"):
        summarize([tables[0].drop_columns(["reward"])], prompters=["p"])


@pytest.fixture
def report(tables, tmp_path):
    evil_method = "<script>alert(1)</script>"
    evil = _scores(_rows(ALIGNPRO_REWARDS, method=evil_method, prompter="org/prompter-a", fallback=ALIGNPRO_FALLBACK))
    web = _scores(_rows(BASE_REWARDS, method="base", prompter=None, fallback=None, dataset="web"))
    summary = summarize([*tables, evil, web], prompters=["org/prompter-a"])
    paths = dict(
        markdown=tmp_path / "report.md",
        html=tmp_path / "report.html",
        mean_plot=tmp_path / "plots" / "mean.png",
        variance_plot=tmp_path / "plots" / "variance.png",
    )
    write_report(summary, **paths, title="Test <report>")
    return summary, paths


def test_plots_are_real_pngs(report):
    _, paths = report
    for key in ("mean_plot", "variance_plot"):
        data = paths[key].read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert len(data) > 20_000


def test_markdown_has_every_number_and_plot_links(report):
    summary, paths = report
    text = paths["markdown"].read_text(encoding="utf-8")
    for row in summary.iter_rows(named=True):
        assert f"{row['mean_reward']:.3f}" in text
        assert f"{row['reward_variance']:.3f}" in text
        assert f"± {(row['ci_high'] - row['ci_low']) / 2:.3f}" in text
    assert "25.0%" in text
    assert "per-prompt mean rewards" in text
    assert "](plots/mean.png)" in text and "](plots/variance.png)" in text
    assert "<script>" not in text
    assert text.count("| base |") == 2


def test_html_is_self_contained_and_escaped(report):
    _, paths = report
    page = paths["html"].read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2
    assert all(base64.b64decode(image).startswith(PNG_SIGNATURE) for image in images)
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "Test &lt;report&gt;" in page
    assert "<link" not in page and "http" not in page


def test_report_leaves_no_temporary_files(report, tmp_path):
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert names == ["plots/mean.png", "plots/variance.png", "report.html", "report.md"]


# ---------------------------------------------------------------------------- training curves

ALIGNPRO_RUN = "alignpro tiny-prompter → tiny-frozen (bundled)"
EVIL_RUN = "rlhf <b>frozen</b> | $x$"
# Per-step values of the multi-step run, by step; the frame is built out of step order on purpose.
RUN_STEPS = [1, 2, 3, 4]
RUN_VALUES = dict(
    score_mean=[0.25, 0.5, 1.125, 1.75],
    kl=[0.01, 0.07, 0.12, 0.3],
    entropy=[2.5, 2.4, 2.2, 2.1],
    value_loss=[1.0, 0.6, 0.4, 0.3],
    time_policy_generation=[1.0, 1.2, 2.6, 1.6],
    time_frozen_generation=[0.4, 0.6, 1.8, 1.0],
    time_scoring=[0.1, 0.2, 0.3, 0.9],
    time_update=[0.3, 0.5, 0.7, 2.1],
    time_step=[2.0, 3.0, 9.0, 4.0],
    frozen_calls=[32, 64, 96, 128],
)  # skewed times: their medians differ from their means


def _metrics(steps: list[int], values: dict, *, split: bool) -> pl.DataFrame:
    rows = []
    for index, step in enumerate(steps):
        row = {name: 0.0 for name in TRAINING_METRICS.names}
        row.update({name: column[index] for name, column in values.items()})
        row["step"] = step
        row["time_reward"] = values["time_frozen_generation"][index] + values["time_scoring"][index]
        if not split:
            row["time_frozen_generation"] = row["time_scoring"] = None
        row["frozen_calls"] = values["frozen_calls"][index] if "frozen_calls" in values else None
        rows.append(row)
    return pl.DataFrame(rows, schema=pl.Schema(TRAINING_METRICS))


def _training_runs() -> dict[str, pl.DataFrame]:
    order = [2, 0, 3, 1]
    shuffled = {name: [column[i] for i in order] for name, column in RUN_VALUES.items()}
    one_step = dict(
        score_mean=[2.0], kl=[0.5], entropy=[1.5], value_loss=[0.2], time_policy_generation=[1.5],
        time_frozen_generation=[2.5], time_scoring=[0.5], time_update=[1.0], time_step=[6.0],
    )
    return {
        ALIGNPRO_RUN: _metrics([RUN_STEPS[i] for i in order], shuffled, split=True),
        EVIL_RUN: _metrics([7], one_step, split=False),
    }


def _small_summary() -> pl.DataFrame:
    base = _scores(_rows(BASE_REWARDS, method="base", prompter=None, fallback=None))
    return summarize([base], prompters=["org/prompter-a"])


def _paths(folder) -> dict:
    return dict(
        markdown=folder / "report.md",
        html=folder / "report.html",
        mean_plot=folder / "plots" / "mean.png",
        variance_plot=folder / "plots" / "variance.png",
        training_plot=folder / "plots" / "training.png",
    )


@pytest.fixture(scope="module")
def training_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("training")
    paths = {**_paths(folder), "budget_plot": folder / "plots" / "budget.png"}
    write_report(_small_summary(), **paths, training=_training_runs())
    return folder, paths


def _image(data: bytes):
    assert data.startswith(PNG_SIGNATURE)
    return matplotlib.image.imread(io.BytesIO(data), format="png")


def _run_tables(markdown: str) -> dict[str, dict[str, str]]:
    """Run heading -> {statistic: value} from the Markdown training section."""
    section = markdown.split("## Training", 1)[1]
    tables = {}
    for block in section.split("\n### ")[1:]:
        heading, *lines = block.splitlines()
        cells = [re.split(r"(?<!\\)\|", line.strip())[1:-1] for line in lines if line.startswith("| ")]
        tables[heading] = {name.strip(): value.strip() for name, value in cells[1:]}
    return tables


def test_training_plot_is_a_real_png(training_report):
    _, paths = training_report
    data = paths["training_plot"].read_bytes()
    image = _image(data)
    assert len(data) > 30_000
    assert image.shape[0] > 500 and image.shape[1] > 1000
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_runs_that_counted_frozen_answers_get_the_budget_plot_and_their_count(training_report):
    from alignpro.report.plots import budget_runs

    _, paths = training_report
    assert list(budget_runs(_training_runs())) == [ALIGNPRO_RUN]  # rlhf's policy is the frozen model: no count
    image = _image(paths["budget_plot"].read_bytes())
    assert image.shape[1] > 800 and image[..., :3].std() > 0.05
    text = paths["markdown"].read_text(encoding="utf-8")
    assert "## Reward against frozen-model answers" in text and "](plots/budget.png)" in text
    tables = _run_tables(text)
    assert tables[ALIGNPRO_RUN]["frozen-model answers"] == "128"
    assert tables["rlhf &lt;b&gt;frozen&lt;/b&gt; \\| $x$"]["frozen-model answers"] == "–"
    with pytest.raises(ValueError, match="budget_plot"):
        write_report(_small_summary(), **_paths(paths["markdown"].parent / "again"), training=_training_runs())


def test_markdown_training_tables_have_the_right_numbers(training_report):
    _, paths = training_report
    text = paths["markdown"].read_text(encoding="utf-8")
    assert "](plots/training.png)" in text
    tables = _run_tables(text)
    assert list(tables) == [ALIGNPRO_RUN, "rlhf &lt;b&gt;frozen&lt;/b&gt; \\| $x$"]
    run = tables[ALIGNPRO_RUN]
    assert run["steps"] == "4"
    assert float(run["score_mean, first step"]) == pytest.approx(RUN_VALUES["score_mean"][0], abs=5e-4)
    assert float(run["score_mean, last step"]) == pytest.approx(RUN_VALUES["score_mean"][-1], abs=5e-4)
    assert float(run["kl, last step"]) == pytest.approx(RUN_VALUES["kl"][-1], abs=5e-4)
    assert float(run["median step time (s)"]) == pytest.approx(statistics.median(RUN_VALUES["time_step"]), abs=5e-4)
    for key, column in (
        ("… policy generation (s)", "time_policy_generation"),
        ("… frozen generation (s)", "time_frozen_generation"),
        ("… scoring (s)", "time_scoring"),
        ("… update (s)", "time_update"),
    ):
        assert float(run[key]) == pytest.approx(statistics.median(RUN_VALUES[column]), abs=5e-4), key
    evil = tables["rlhf &lt;b&gt;frozen&lt;/b&gt; \\| $x$"]
    assert evil["steps"] == "1"
    assert evil["score_mean, first step"] == evil["score_mean, last step"] == "2.000"
    assert evil["median step time (s)"] == "6.000"
    assert evil["… reward (frozen generation + scoring) (s)"] == "3.000"  # no split: one reward part
    assert "… scoring (s)" not in evil
    assert "<b>" not in text


def test_html_embeds_training_plot_and_escapes_run_labels(training_report):
    _, paths = training_report
    page = paths["html"].read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4  # mean, variance, budget, training
    assert base64.b64decode(images[2]) == paths["budget_plot"].read_bytes()
    assert base64.b64decode(images[3]) == paths["training_plot"].read_bytes()
    assert "<h2>Training</h2>" in page
    assert "rlhf &lt;b&gt;frozen&lt;/b&gt; | $x$" in page and "<b>" not in page
    assert "<td>median step time (s)</td><td>3.500</td>" in page
    assert "<link" not in page and "http" not in page


def test_training_report_leaves_no_temporary_files(training_report):
    folder, _ = training_report
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    assert names == ["plots", "plots/budget.png", "plots/mean.png", "plots/training.png", "plots/variance.png", "report.html", "report.md"]


@pytest.mark.parametrize("training", [None, {}])
def test_no_training_runs_writes_placeholder_and_no_section(training, tmp_path):
    paths = _paths(tmp_path)
    write_report(_small_summary(), **paths, training=training)
    placeholder = _image(paths["training_plot"].read_bytes())
    assert placeholder.shape[0] < 300 and placeholder[..., :3].std() > 0.0  # small, with the text on it
    text = paths["markdown"].read_text(encoding="utf-8")
    page = paths["html"].read_text(encoding="utf-8")
    assert "Training" not in text and "training" not in text
    assert "Training" not in page and "training.png" not in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2
    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert names == ["mean.png", "report.html", "report.md", "training.png", "variance.png"]


def test_no_training_runs_and_no_path_writes_no_training_plot(tmp_path):
    paths = _paths(tmp_path)
    del paths["training_plot"]
    write_report(_small_summary(), **paths)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "mean.png", "report.html", "report.md", "variance.png"
    ]


def test_bad_training_input_is_rejected_before_writing(tmp_path):
    paths = _paths(tmp_path)
    runs = _training_runs()
    with pytest.raises(ValueError, match="training_plot"):
        write_report(_small_summary(), **{**paths, "training_plot": None}, training=runs)
    with pytest.raises(SchemaError, match="kl"):
        write_report(_small_summary(), **paths, training={"run": runs[ALIGNPRO_RUN].drop("kl")})
    with pytest.raises(ValueError, match="no steps"):
        write_report(_small_summary(), **paths, training={"run": runs[ALIGNPRO_RUN].clear()})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- win rates against base

# The judge's verdict per prompt for alignpro (sample 0 and 1 alike) and for rlhf.
ALIGNPRO_VERDICTS = {"p1": "win", "p2": "loss", "p3": "win", "p4": "tie"}
RLHF_VERDICTS = {"p1": "win", "p2": "win", "p3": "invalid", "p4": "tie"}
OFFLINE_JUDGE = "offline"


def _verdicts(verdict_of: dict, *, method: str, prompter, judge: str = LLM_JUDGE, beta=None) -> pa.Table:
    offline = judge == OFFLINE_JUDGE
    rows = [
        verdict_record(
            dataset="hh", prompt_id=prompt_id, method=method, prompter=prompter, beta=beta, frozen="org/frozen-7b", sample_index=index,
            judge=judge, judged_by="offline Bradley-Terry (margin 0.05)" if offline else "gpt-4 with prompt pairwise-v1",
            judge_kind="reward" if offline else "llm", judge_prompt=None if offline else "pairwise-v1",
            answer_tokens=3, base_answer_tokens=3, verdict=verdict, verdict_method_first={"win": "A", "loss": "B"}.get(verdict, "TIE"),
            verdict_base_first={"win": "B", "loss": "A"}.get(verdict, "TIE"), inconsistent=prompt_id == "p4",
            reason_method_first=f"reason {prompt_id}/{index} <b>bold</b>", reason_base_first="second look",
            prompt_tokens=100, completion_tokens=20, cost_usd=0.0042, calls=2, retries=index,
        )
        for prompt_id, verdict in verdict_of.items()
        for index in range(2)
    ]
    return pa.Table.from_pylist(rows, schema=VERDICTS)


def _rates(verdicts: list[pa.Table], **options) -> pl.DataFrame:
    return win_rates(verdicts_frame(verdicts), **({"n_bootstrap": 500} | options))


@pytest.fixture
def judged(tables):
    rlhf = _scores(_rows(BASE_REWARDS, method="rlhf", prompter=None, fallback=None))
    verdicts = [
        _verdicts(ALIGNPRO_VERDICTS, method="alignpro", prompter="org/prompter-a"),
        _verdicts(RLHF_VERDICTS, method="rlhf", prompter=None),
    ]
    scores = [*tables, rlhf]
    summary = summarize(scores, prompters=["org/prompter-a", "org/prompter-b"], bootstrap_samples=500)
    return scores, verdicts, summary, _rates(verdicts)


def test_win_rates_are_one_row_per_judge_job(judged):
    _, _, _, rates = judged
    conform(rates.to_arrow(), WIN_RATES, "win rates")
    alignpro = rates.filter(pl.col("method") == "alignpro").row(0, named=True)
    assert (alignpro["win_pct"], alignpro["tie_pct"], alignpro["loss_pct"]) == (50.0, 25.0, 25.0)
    assert alignpro["win_ci_low"] <= 50.0 <= alignpro["win_ci_high"]
    assert (alignpro["n_pairs"], alignpro["n_decided"], alignpro["judge"], alignpro["inconsistent_pct"]) == (8, 8, LLM_JUDGE, 25.0)
    assert (alignpro["judge_kind"], alignpro["judge_prompt"], alignpro["mean_token_difference"]) == ("llm", "pairwise-v1", 0.0)
    assert (alignpro["calls"], alignpro["retries"], alignpro["prompt_tokens"]) == (16, 4, 800)
    assert alignpro["cost_usd"] == pytest.approx(8 * 0.0042)
    rlhf = rates.filter(pl.col("method") == "rlhf")
    assert rlhf.height == 1 and rlhf["prompter"].to_list() == [None]  # one judge job, not one per prompter
    assert rlhf["win_pct"].to_list() == [pytest.approx(200 / 3)] and rlhf["invalid_pct"].to_list() == [25.0]
    assert "base" not in rates["method"].to_list()


def test_summary_has_answer_lengths_and_no_judge_columns(tables):
    summary = summarize(tables, prompters=["org/prompter-a"])
    assert summary.columns == SUMMARY.names and "judge" not in summary.columns
    assert summary["mean_tokens"].to_list() == [3.0] * summary.height


def test_examples_are_one_per_verdict_kind_in_a_fixed_order(judged):
    scores, verdicts, _, _ = judged
    frame = pl.concat([pl.from_arrow(table) for table in verdicts])
    examples = pick_examples(frame, scores, 3)
    assert [(e["method"], e["verdict"], e["prompt_id"], e["sample_index"]) for e in examples] == [
        ("alignpro", "win", "p1", 0), ("alignpro", "loss", "p2", 0), ("alignpro", "tie", "p4", 0),
        ("rlhf", "win", "p1", 0), ("rlhf", "tie", "p4", 0), ("rlhf", "invalid", "p3", 0),
    ]
    first = examples[0]
    assert (first["prompt"], first["model_input"], first["answer"], first["base_answer"]) == (
        "prompt p1", "input p1", "response 0", "response 0"
    )
    assert len(pick_examples(frame, scores, 1)) == 2 and pick_examples(frame, scores, 0) == []


@pytest.fixture
def judged_report(judged, tmp_path):
    scores, verdicts, summary, rates = judged
    paths = {**_paths(tmp_path), "win_plot": tmp_path / "plots" / "win.png", "length_plot": tmp_path / "plots" / "length.png"}
    frame = pl.concat([pl.from_arrow(table) for table in verdicts])
    write_report(summary, **paths, win_rates=rates, examples=pick_examples(frame, scores, 2))
    return rates, paths


def _cell(row: dict, outcome: str) -> str:
    return f"{row[f'{outcome}_pct']:.1f} [{row[f'{outcome}_ci_low']:.1f}, {row[f'{outcome}_ci_high']:.1f}]"


def test_markdown_has_the_win_rate_table_diagnostics_usage_and_examples(judged_report):
    rates, paths = judged_report
    text = paths["markdown"].read_text(encoding="utf-8")
    section = text.split("## Win rate against base", 1)[1]
    alignpro = rates.filter(pl.col("method") == "alignpro").row(0, named=True)
    assert alignpro["lc_win_pct"] is None  # 4 prompts are too few for the GLM: a dash, and the reason under the table
    cells = " | ".join(_cell(alignpro, outcome) for outcome in ("win", "tie", "loss", "preference"))
    assert alignpro["n_prompts"] == 4  # the prompt count beside the pairs: 2 samples each
    assert f"| org/prompter-a | org/frozen-7b | alignpro | 4 | 8 | 8 | {cells} | – |" in section
    assert "LC win: alignpro, org/prompter-a: 4 prompts and 8 decided pairs, under the 10 and 20 the fit needs;" in section
    assert alignpro["preference_pct"] == 62.5  # 4 wins and 2 ties of 8
    assert section.split("### Length", 1)[0].count("| – | org/frozen-7b | rlhf |") == 1  # one judge job, no prompter
    assert "| judge |" not in section.split("###", 1)[0]  # one judge: no judge column in the win-rate table
    assert f"| {LLM_JUDGE} | org/prompter-a | org/frozen-7b | alignpro | +0.0 | 50.0 | 0.0 (6) |" in section  # length, position
    assert f"| {LLM_JUDGE} | – | org/frozen-7b | rlhf (hh) | 16 | 4 | 0 | 800 / 160 | 0.0336 |" in section  # usage
    assert "| all |  |  |  | 32 | 8 | 0 | 1600 / 320 | 0.0672 |" in section
    assert "prompt pairwise-v1" in section and "helpfulness, harmlessness, relevance" in section  # from the prompt file
    assert "both orders" in section and "NOT an LLM judge" not in section and "Agreement between judges" not in section
    assert "](plots/win.png)" in section
    assert f"#### hh · org/prompter-a → org/frozen-7b · alignpro · judge {LLM_JUDGE}: win" in section
    assert f"#### hh · org/frozen-7b · rlhf · judge {LLM_JUDGE}: tie, inconsistent" in section
    assert "> input p1" in section  # the rewrite, shown because it differs from the prompt
    assert "A: reason p1/0 &lt;b&gt;bold&lt;/b&gt;" in section and "<b>" not in section
    assert "| mean tokens |" in text and "](plots/length.png)" in text


def test_html_embeds_the_win_plot_and_escapes_examples(judged_report):
    _, paths = judged_report
    page = paths["html"].read_text(encoding="utf-8")
    assert "<h2>Win rate against base</h2>" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 4  # mean, variance, length, win rate
    assert "reason p1/0 &lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold" not in page
    for plot in ("win_plot", "length_plot"):
        assert _image(paths[plot].read_bytes())[..., :3].std() > 0.05


def test_offline_judge_is_labelled_as_such(tables, tmp_path):
    verdicts = [_verdicts(ALIGNPRO_VERDICTS, method="alignpro", prompter="org/prompter-a", judge=OFFLINE_JUDGE)]
    summary = summarize(tables, prompters=["org/prompter-a"], bootstrap_samples=200)
    paths = {**_paths(tmp_path), "win_plot": tmp_path / "win.png"}
    write_report(summary, **paths, win_rates=_rates(verdicts, n_bootstrap=200))
    text = paths["markdown"].read_text(encoding="utf-8")
    assert "Judge offline (offline Bradley-Terry (margin 0.05)): NOT an LLM judge" in text
    assert "### Examples" not in text and "### Judge usage" not in text and "### Length and position" not in text


def test_two_judges_each_get_their_win_rates_and_their_agreement(tables, tmp_path):
    verdicts = [
        _verdicts(ALIGNPRO_VERDICTS, method="alignpro", prompter="org/prompter-a"),
        _verdicts(ALIGNPRO_VERDICTS, method="alignpro", prompter="org/prompter-a", judge=OFFLINE_JUDGE),
    ]
    rates = _rates(verdicts, n_bootstrap=200)
    assert sorted(rates["judge"].to_list()) == sorted([LLM_JUDGE, OFFLINE_JUDGE])
    agreement = judge_agreement(verdicts_frame(verdicts))
    # κ = 1 with its interval [1, 1]: statsmodels' variance, a hair below 0, counts as 0 (not a null interval)
    assert agreement.rows() == [(LLM_JUDGE, OFFLINE_JUDGE, 8, 0, 100.0, pytest.approx(1.0), pytest.approx(1.0), 1.0)]
    summary = summarize(tables, prompters=["org/prompter-a"], bootstrap_samples=200)
    paths = {**_paths(tmp_path), "win_plot": tmp_path / "win.png"}
    write_report(summary, **paths, win_rates=rates, agreement=agreement)
    section = paths["markdown"].read_text(encoding="utf-8").split("## Win rate against base", 1)[1]
    assert "| judge | prompter |" in section and section.count("| alignpro | 4 | 8 | 8 |") == 2
    assert f"| {LLM_JUDGE} | {OFFLINE_JUDGE} | 8 | 0 | 100.0 | 1.000 [1.000, 1.000] |" in section


def test_the_breakdown_by_category_is_over_each_categorys_prompts_alone(judged):
    scores, verdicts, _, _ = judged
    categories = pl.DataFrame({"dataset": ["hh"] * 4, "prompt_id": ["p1", "p2", "p3", "p4"], "category": ["a", "a", "b", "b"]})
    options = dict(prompters=["org/prompter-a"], confidence=0.95, bootstrap_samples=100, seed=0)
    breakdown = by_category(scores_frame(scores), verdicts_frame(verdicts), categories, min_prompts=2, **options)
    means = {(row["category"], row["method"]): row["mean_reward"] for row in breakdown.summary.iter_rows(named=True)}
    assert means[("a", "base")] == pytest.approx(0.75) and means[("a", "alignpro")] == pytest.approx(1.375)
    assert means[("b", "base")] == pytest.approx(1.5) and means[("b", "alignpro")] == pytest.approx(2.25)
    wins = {(row["category"], row["method"]): row["win_pct"] for row in breakdown.win_rates.iter_rows(named=True)}
    assert wins[("a", "alignpro")] == 50.0 and wins[("b", "alignpro")] == 50.0 and wins[("a", "rlhf")] == 100.0
    assert breakdown.left_out.is_empty()
    small = by_category(scores_frame(scores), verdicts_frame(verdicts), categories, min_prompts=3, **options)
    assert small.summary.is_empty() and small.left_out.rows() == [("hh", "a", 2), ("hh", "b", 2)]
    assert small.shown  # the section stays, to say every category was left out


def test_win_rates_need_a_win_plot_path(judged, tmp_path):
    _, _, summary, rates = judged
    with pytest.raises(ValueError, match="win_plot"):
        write_report(summary, **_paths(tmp_path), win_rates=rates)
    assert not any(tmp_path.rglob("*.md"))


# ---------------------------------------------------------------------------- beta, kl, gap and frontier

PROMPTER = "org/prompter-a"
RLHF_REWARDS = {"p1": [3.0, 2.0], "p2": [1.5, 1.0], "p3": [4.0, 5.0], "p4": [0.5, 0.0]}
SWEEP_SHIFTS = {0.1: 0.5, 0.5: -0.25}  # beta -> reward shift of the fixed-KL PPO prompters against alignpro
STAR_SHIFTS = {0.1: 1.0, 1.0: 0.25}  # beta -> reward shift of rho* against alignpro
KL_SCHEMA = {
    "dataset": pl.String, "prompter": pl.String, "frozen": pl.String, "method": pl.String, "beta": pl.Float64, "kl": pl.Float64
}
MEASURED_KL = [  # (method, prompter, beta, kl)
    ("alignpro", PROMPTER, None, 3.0),
    ("alignpro", PROMPTER, 0.1, 2.0),
    ("alignpro", PROMPTER, 0.5, 0.5),
    ("alignpro-star", PROMPTER, 0.1, 1.5),
    ("alignpro-star", PROMPTER, 1.0, 0.25),
    ("rlhf", None, None, 4.0),
]


def _shifted(rewards: dict, shift: float) -> dict:
    return {prompt_id: [reward + shift for reward in values] for prompt_id, values in rewards.items()}


def _prompter_scores(rewards: dict, method: str, beta=None, **keys) -> pa.Table:
    return _scores(_rows(rewards, method=method, prompter=PROMPTER, fallback=ALIGNPRO_FALLBACK, beta=beta, **keys))


def _frontier_scores() -> list[pa.Table]:
    """Every system of one (dataset, prompter, frozen): base, sft, the main and two fixed-beta PPO prompters,
    rho* at two betas, rlhf."""
    return [
        _scores(_rows(BASE_REWARDS, method="base", prompter=None, fallback=None)),
        _prompter_scores(_shifted(BASE_REWARDS, 0.25), "sft"),
        _prompter_scores(ALIGNPRO_REWARDS, "alignpro"),
        *(_prompter_scores(_shifted(ALIGNPRO_REWARDS, shift), "alignpro", beta) for beta, shift in SWEEP_SHIFTS.items()),
        *(_prompter_scores(_shifted(ALIGNPRO_REWARDS, shift), "alignpro-star", beta) for beta, shift in STAR_SHIFTS.items()),
        _scores(_rows(RLHF_REWARDS, method="rlhf", prompter=None, fallback=None)),
    ]


def _kl_frame(measured=MEASURED_KL, dataset="hh") -> pl.DataFrame:
    rows = [dict(dataset=dataset, prompter=p, frozen="org/frozen-7b", method=m, beta=b, kl=k) for m, p, b, k in measured]
    return pl.DataFrame(rows, schema=KL_SCHEMA)


@pytest.fixture(scope="module")
def frontier_summary() -> pl.DataFrame:
    return summarize(_frontier_scores(), prompters=[PROMPTER], kl=_kl_frame(), bootstrap_samples=500)


def _row(summary: pl.DataFrame, method: str, beta=None, **keys) -> dict:
    beta_is = pl.col("beta").is_null() if beta is None else pl.col("beta") == beta
    [row] = summary.filter(pl.col("method") == method, beta_is, **keys).to_dicts()
    return row


def _paired_gap(rlhf: dict, method: dict) -> float:
    return statistics.mean(statistics.mean(rlhf[p]) - statistics.mean(method[p]) for p in rlhf)


def test_beta_variants_are_rows_of_their_own_sorted_nulls_first(frontier_summary):
    conform(frontier_summary.to_arrow(), SUMMARY, "summary")
    assert frontier_summary.select("method", "beta").rows() == [
        ("base", None), ("sft", None), ("alignpro", None), ("alignpro", 0.1), ("alignpro", 0.5),
        ("alignpro-star", 0.1), ("alignpro-star", 1.0), ("rlhf", None),
    ]
    expected = statistics.mean(r + SWEEP_SHIFTS[0.5] for values in ALIGNPRO_REWARDS.values() for r in values)
    assert _row(frontier_summary, "alignpro", 0.5)["mean_reward"] == pytest.approx(expected)


def test_kl_is_joined_with_rlhf_under_every_prompter_and_sft_zero():
    other = _scores(_rows(ALIGNPRO_REWARDS, method="alignpro", prompter="org/prompter-b", fallback=ALIGNPRO_FALLBACK))
    scores = [*_frontier_scores(), other]
    summary = summarize(scores, prompters=[PROMPTER, "org/prompter-b"], kl=_kl_frame(), bootstrap_samples=50)
    for method, prompter, beta, kl in MEASURED_KL:
        if prompter is not None:
            assert _row(summary, method, beta, prompter=prompter)["kl"] == kl, (method, beta)
    assert summary.filter(method="rlhf")["kl"].to_list() == [4.0, 4.0]  # under both prompters
    assert summary.filter(method="sft")["kl"].to_list() == [0.0]
    assert summary.filter(method="base")["kl"].to_list() == [None, None]
    assert _row(summary, "alignpro", prompter="org/prompter-b")["kl"] is None  # no KL measured for it
    without = summarize(scores, prompters=[PROMPTER, "org/prompter-b"], bootstrap_samples=50)
    assert without.filter(pl.col("kl").is_not_null())["method"].to_list() == ["sft"]
    with pytest.raises(ValueError, match="more than one kl"):
        summarize(scores, prompters=[PROMPTER], kl=pl.concat([_kl_frame(), _kl_frame(MEASURED_KL[1:2])]))


def test_training_kl_is_the_mean_over_the_last_tenth_of_steps():
    def metrics(steps: int) -> pl.DataFrame:
        shuffled = list(range(steps, 0, -1))  # out of step order on purpose
        return pl.DataFrame({"step": shuffled, "kl": [float(step) for step in shuffled]})

    assert training_kl(metrics(20)) == 19.5  # steps 19 and 20
    assert training_kl(metrics(30)) == 29.0  # 28, 29, 30: not 4 steps from 0.1 × 30 = 3.0000000000000004
    assert training_kl(metrics(5)) == 5.0  # at least one step
    assert training_kl(metrics(20), tail_fraction=1.0) == 10.5
    with pytest.raises(ValueError, match="without steps"):
        training_kl(metrics(0))
    with pytest.raises(ValueError, match="tail_fraction"):
        training_kl(metrics(20), tail_fraction=0.0)


def test_star_kl_is_the_mean_over_prompts():
    rewrites = pl.DataFrame({"prompt_id": ["p1", "p2", "p3"], "kl_estimate": [0.2, 0.4, 0.9], "beta": [0.1] * 3})
    assert star_kl(rewrites) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="without prompts"):
        star_kl(rewrites.clear())


def test_gap_is_the_paired_difference_with_a_bootstrap_ci(frontier_summary):
    for method, beta, rewards in (
        ("base", None, BASE_REWARDS),
        ("alignpro", None, ALIGNPRO_REWARDS),
        ("alignpro", 0.1, _shifted(ALIGNPRO_REWARDS, SWEEP_SHIFTS[0.1])),
        ("alignpro-star", 1.0, _shifted(ALIGNPRO_REWARDS, STAR_SHIFTS[1.0])),
    ):
        row = _row(frontier_summary, method, beta)
        assert row["gap"] == pytest.approx(_paired_gap(RLHF_REWARDS, rewards)), (method, beta)
        assert row["gap_ci_low"] <= row["gap"] <= row["gap_ci_high"]
        assert row["gap_ci_low"] < row["gap_ci_high"]
    rlhf = _row(frontier_summary, "rlhf")
    assert (rlhf["gap"], rlhf["gap_ci_low"], rlhf["gap_ci_high"]) == (0.0, 0.0, 0.0)


def _base_and_rlhf(base: dict, rlhf: dict) -> list[pa.Table]:
    return [_scores(_rows(base, method="base", prompter=None, fallback=None)),
            _scores(_rows(rlhf, method="rlhf", prompter=None, fallback=None))]


def test_gap_ci_is_seeded():
    draw = random.Random(0)
    rewards = [{f"p{i}": [draw.gauss(shift, 1.0) for _ in range(2)] for i in range(40)} for shift in (0.0, 1.0)]
    first, again, other = (
        summarize(_base_and_rlhf(*rewards), prompters=[PROMPTER], bootstrap_samples=300, seed=seed).filter(method="base")
        for seed in (3, 3, 4)
    )
    gap_columns = ["gap", "gap_ci_low", "gap_ci_high"]
    assert first.select(gap_columns).equals(again.select(gap_columns))
    assert first["gap"].equals(other["gap"]) and not first["gap_ci_low"].equals(other["gap_ci_low"])


def test_gap_ci_narrows_with_more_prompts():
    copies = 16  # the same per-prompt rewards under 16 × as many prompt ids
    many = [
        {f"{prompt_id}-{copy}": values for copy in range(copies) for prompt_id, values in rewards.items()}
        for rewards in (BASE_REWARDS, RLHF_REWARDS)
    ]
    wide, narrow = (
        _row(summarize(_base_and_rlhf(*pair), prompters=[PROMPTER], bootstrap_samples=300), "base")
        for pair in ((BASE_REWARDS, RLHF_REWARDS), many)
    )
    assert narrow["gap"] == pytest.approx(wide["gap"])
    assert narrow["gap_ci_high"] - narrow["gap_ci_low"] < 0.5 * (wide["gap_ci_high"] - wide["gap_ci_low"])  # ~1/sqrt(16)


def test_gap_is_null_without_rlhf(tables):
    web_rlhf = _scores(_rows(RLHF_REWARDS, method="rlhf", prompter=None, fallback=None, dataset="web"))
    web_base = _scores(_rows(BASE_REWARDS, method="base", prompter=None, fallback=None, dataset="web"))
    summary = summarize([*tables, web_base, web_rlhf], prompters=[PROMPTER], bootstrap_samples=50)
    assert summary.filter(dataset="hh")["gap"].null_count() == 2
    assert summary.filter(dataset="web")["gap"].null_count() == 0


def test_gap_over_unpaired_prompts_is_refused(tables):
    partial = _scores(_rows({p: RLHF_REWARDS[p] for p in ("p1", "p2", "p3")}, method="rlhf", prompter=None, fallback=None))
    with pytest.raises(ValueError, match="prompt p4 has no rlhf answers"):
        summarize([*tables, partial], prompters=[PROMPTER])
    extra = _scores(_rows({**RLHF_REWARDS, "p5": [1.0]}, method="rlhf", prompter=None, fallback=None))
    with pytest.raises(ValueError, match="prompt p5 has no base answers"):
        summarize([*tables, extra], prompters=[PROMPTER])


def test_beta_variants_are_bars_of_their_own(frontier_summary):
    rows = with_labels(frontier_summary)
    series = method_series(frontier_summary)
    styles = series_styles(series)
    assert len(set(styles.values())) == series.height  # no two bars look alike
    fig, ax = plt.subplots()
    draw_dataset(ax, rows, series["label"].to_list(), styles, "mean_reward", True)
    heights = sorted(round(bar.get_height(), 9) for bar in ax.patches)
    plt.close(fig)
    assert heights == sorted(round(value, 9) for value in frontier_summary["mean_reward"])


@pytest.fixture(scope="module")
def frontier_report(frontier_summary, tmp_path_factory):
    folder = tmp_path_factory.mktemp("frontier")
    paths = {**_paths(folder), "frontier_plot": folder / "plots" / "frontier.png"}
    write_report(frontier_summary, **paths)
    return paths


def _section_rows(markdown: str, heading: str) -> list[list[str]]:
    section = markdown.split(heading, 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip().split("|")[1:-1]] for line in section.splitlines() if line.startswith("| ")]


def test_tables_label_methods_with_their_beta(frontier_report):
    text = frontier_report["markdown"].read_text(encoding="utf-8")
    methods = [row[2] for row in _section_rows(text, "## hh")[1:]]
    assert methods == [
        "base", "sft", "alignpro", "alignpro β=0.1", "alignpro β=0.5", "alignpro-star β=0.1", "alignpro-star β=1", "rlhf"
    ]


def test_gap_table_has_the_decomposition_kl_and_beta_kl(frontier_report, frontier_summary):
    text = frontier_report["markdown"].read_text(encoding="utf-8")
    header, *rows = _section_rows(text, "## Suboptimality gap")
    assert header[3:] == ["β", "gap J(rlhf) − J(method) [CI]", "J(base) − J(method)", "KL to reference", "β·KL"]
    cells = {row[2]: row for row in rows}
    assert list(cells) == [
        "base", "sft", "alignpro", "alignpro β=0.1", "alignpro β=0.5", "alignpro-star β=0.1", "alignpro-star β=1", "rlhf"
    ]
    main = _row(frontier_summary, "alignpro")
    assert cells["alignpro"][4] == f"{main['gap']:.3f} [{main['gap_ci_low']:.3f}, {main['gap_ci_high']:.3f}]"
    prompter_part = statistics.mean(statistics.mean(BASE_REWARDS[p]) - statistics.mean(ALIGNPRO_REWARDS[p]) for p in BASE_REWARDS)
    assert float(cells["alignpro"][5]) == pytest.approx(prompter_part, abs=5e-4)
    assert cells["alignpro"][6:] == ["3.000", "–"]  # no single beta for the main PPO run
    assert cells["alignpro-star β=0.1"][3] == "0.1" and cells["alignpro-star β=0.1"][6:] == ["1.500", "0.150"]
    assert cells["base"][5:7] == ["0.000", "–"] and cells["sft"][6] == "0.000"
    assert cells["rlhf"][4] == "0.000 [0.000, 0.000]" and cells["rlhf"][6:] == ["4.000", "–"]
    assert "frozen model's gap" in text and "different reference" in text
    page = frontier_report["html"].read_text(encoding="utf-8")
    assert "<h2>Suboptimality gap</h2>" in page and "<td>alignpro-star β=1</td><td>1</td>" in page


def test_frontier_plot_and_section(frontier_report):
    text = frontier_report["markdown"].read_text(encoding="utf-8")
    assert "## Reward–KL frontier" in text and "](plots/frontier.png)" in text
    page = frontier_report["html"].read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3 and "<h2>Reward–KL frontier</h2>" in page
    assert base64.b64decode(images[2]) == frontier_report["frontier_plot"].read_bytes()
    image = _image(frontier_report["frontier_plot"].read_bytes())
    assert image.shape[0] > 400 and image[..., :3].std() > 0.05


def test_no_rlhf_and_no_kl_means_no_gap_or_frontier_section(report):
    _, paths = report
    for text in (paths["markdown"].read_text(encoding="utf-8"), paths["html"].read_text(encoding="utf-8")):
        assert "Suboptimality gap" not in text and "frontier" not in text


def test_frontier_needs_a_path_and_is_a_placeholder_without_kl(frontier_summary, tmp_path):
    with pytest.raises(ValueError, match="frontier_plot"):
        write_report(frontier_summary, **_paths(tmp_path))
    assert list(tmp_path.iterdir()) == []
    unmeasured = frontier_summary.with_columns(kl=pl.lit(None, pl.Float64))
    paths = {**_paths(tmp_path), "frontier_plot": tmp_path / "frontier.png"}
    write_report(unmeasured, **paths)
    assert _image(paths["frontier_plot"].read_bytes()).shape[0] < 300
    assert "frontier" not in paths["markdown"].read_text(encoding="utf-8")
    assert "## Suboptimality gap" in paths["markdown"].read_text(encoding="utf-8")


def test_judged_beta_variants_keep_their_own_win_rates_and_examples(tmp_path):
    scores = _frontier_scores()
    losing = {p: "loss" for p in ALIGNPRO_VERDICTS}
    verdicts = [
        _verdicts(ALIGNPRO_VERDICTS, method="alignpro", prompter=PROMPTER),
        _verdicts(losing, method="alignpro", prompter=PROMPTER, beta=0.1),
    ]
    summary = summarize(scores, prompters=[PROMPTER], bootstrap_samples=50)
    rates = _rates(verdicts, n_bootstrap=50)
    assert (_row(rates, "alignpro")["win_pct"], _row(rates, "alignpro", 0.1)["loss_pct"]) == (50.0, 100.0)
    assert rates.filter(pl.col("beta") == 0.5).is_empty()
    frame = pl.concat([pl.from_arrow(table) for table in verdicts])
    examples = pick_examples(frame, scores, 1)
    assert [(e["method"], e["beta"], e["verdict"]) for e in examples] == [("alignpro", None, "win"), ("alignpro", 0.1, "loss")]
    paths = {**_paths(tmp_path), "win_plot": tmp_path / "win.png", "frontier_plot": tmp_path / "frontier.png"}
    write_report(summary, **paths, win_rates=rates, examples=examples)
    section = paths["markdown"].read_text(encoding="utf-8").split("## Win rate against base", 1)[1]
    assert f"| org/prompter-a | org/frozen-7b | alignpro β=0.1 | {_row(rates, 'alignpro', 0.1)['n_prompts']} | 8 | 8 | 0.0 [" in section
    assert "| – | org/frozen-7b | alignpro β=0.1 (hh) |" not in section and "| alignpro β=0.1 (hh) |" in section
    assert f"#### hh · org/prompter-a → org/frozen-7b · alignpro β=0.1 · judge {LLM_JUDGE}: loss" in section
    assert "**alignpro β=0.1 answer**" in section


# ---------------------------------------------------------------------------- task accuracy

MATH_REFERENCES = {"p1": "4", "p2": "10", "p3": "1,234", "p4": "7"}
# Two answers per prompt, and whether the numeric checker accepts each against MATH_REFERENCES.
MATH_ANSWERS = {
    "base": {"p1": [("It is 4.", 1), ("5", 0)], "p2": [("10", 1), ("ten", 0)], "p3": [("The answer is 1234.", 1), ("1,234", 1)], "p4": [("8", 0), ("6", 0)]},
    "alignpro": {"p1": [("4", 1), ("4.0", 1)], "p2": [("10", 1), ("9", 0)], "p3": [("1,234", 1), ("12", 0)], "p4": [("7", 1), ("so 7", 1)]},
}


def _math_scores() -> list[pa.Table]:
    """The hand-made rewards on dataset math, with the answers of MATH_ANSWERS as responses."""
    tables = []
    for method, rewards, prompter, fallback in (
        ("base", BASE_REWARDS, None, None), ("alignpro", ALIGNPRO_REWARDS, "org/prompter-a", ALIGNPRO_FALLBACK)
    ):
        rows = _rows(rewards, method=method, prompter=prompter, fallback=fallback, dataset="math")
        for row in rows:
            row["response"] = MATH_ANSWERS[method][row["prompt_id"]][row["sample_index"]][0]
        tables.append(_scores(rows))
    return tables


def _references(answers: dict = MATH_REFERENCES) -> pl.DataFrame:
    return pl.DataFrame({"dataset": "math", "prompt_id": list(answers), "reference": list(answers.values())})


@pytest.fixture
def checked_summary(tables) -> pl.DataFrame:
    """Datasets hh (no reference answers) and math (numeric checker)."""
    return summarize([*tables, *_math_scores()], prompters=["org/prompter-a"], references=_references(), checkers={"math": "numeric"})


def test_accuracy_per_method_matches_a_hand_computation(checked_summary):
    for method, answers in MATH_ANSWERS.items():
        row = _row(checked_summary, method, dataset="math")
        correct = [accepted for samples in answers.values() for _, accepted in samples]
        prompt_means = [statistics.mean(accepted for _, accepted in samples) for samples in answers.values()]
        half_width = T_975_DF3 * statistics.stdev(prompt_means) / len(prompt_means) ** 0.5
        assert row["accuracy"] == pytest.approx(statistics.mean(correct), abs=1e-12), method
        centre = statistics.mean(prompt_means)
        assert row["accuracy_ci_low"] == pytest.approx(max(0.0, centre - half_width), abs=1e-3), method  # clipped to [0, 1]
        assert row["accuracy_ci_high"] == pytest.approx(min(1.0, centre + half_width), abs=1e-3), method
        assert row["accuracy_ci_low"] < row["accuracy"] < row["accuracy_ci_high"]
    assert (_row(checked_summary, "base", dataset="math")["accuracy"], _row(checked_summary, "alignpro", dataset="math")["accuracy"]) == (0.5, 0.75)
    conform(checked_summary.to_arrow(), SUMMARY, "summary")


def test_accuracy_is_null_for_datasets_without_references(checked_summary, tables):
    hh = checked_summary.filter(pl.col("dataset") == "hh")
    for column in ("accuracy", "accuracy_ci_low", "accuracy_ci_high"):
        assert hh[column].null_count() == hh.height
        assert summarize(tables, prompters=["org/prompter-a"])[column].null_count() == 2


def test_scored_prompt_without_reference_is_refused(tables):
    without_p3 = {key: value for key, value in MATH_REFERENCES.items() if key != "p3"}
    with pytest.raises(ValueError, match=r"dataset math: scored prompt p3 has no reference"):
        summarize(_math_scores(), prompters=["org/prompter-a"], references=_references(without_p3), checkers={"math": "numeric"})
    with pytest.raises(ValueError, match=r"prompt p3: .*'ten'"):
        summarize(_math_scores(), prompters=["org/prompter-a"], references=_references({**MATH_REFERENCES, "p3": "ten"}), checkers={"math": "numeric"})
    with pytest.raises(ValueError, match=r"unknown checker.*'math': 'fuzzy'"):
        summarize(_math_scores(), prompters=["org/prompter-a"], references=_references(), checkers={"math": "fuzzy"})


@pytest.fixture
def accuracy_report(checked_summary, tmp_path):
    paths = {**_paths(tmp_path), "accuracy_plot": tmp_path / "plots" / "accuracy.png"}
    write_report(checked_summary, **paths, checkers={"math": "numeric"})
    return paths


def test_markdown_shows_accuracy_beside_mean_reward_and_names_the_checker(accuracy_report, checked_summary):
    text = accuracy_report["markdown"].read_text(encoding="utf-8")
    assert "| mean reward ± CI | accuracy [CI] | reward variance |" in text
    base = _row(checked_summary, "base", dataset="math")
    assert f"| 50.0% [{base['accuracy_ci_low']:.1%}, {base['accuracy_ci_high']:.1%}] |" in text
    hh_table = text.split("## hh", 1)[1].split("## math", 1)[0]
    hh_rows = [line.split(" | ") for line in hh_table.splitlines() if line.startswith("| org/")]
    assert [cells[5] for cells in hh_rows] == ["–", "–"]  # no reference answers: a dash for both methods
    assert "Checkers: math: numeric, the answer's last number" in text
    assert _reward_table_widths(text) == {9}
    assert "## Reward and accuracy" in text and "](plots/accuracy.png)" in text


def test_html_shows_accuracy_and_embeds_its_plot(accuracy_report):
    page = accuracy_report["html"].read_text(encoding="utf-8")
    assert "<th>accuracy [CI]</th>" in page and "<h2>Reward and accuracy</h2>" in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert base64.b64decode(images[2]) == accuracy_report["accuracy_plot"].read_bytes()


def test_accuracy_plot_is_a_png_with_a_panel(accuracy_report):
    image = _image(accuracy_report["accuracy_plot"].read_bytes())
    assert image.shape[0] > 300 and image[..., :3].std() > 0.05


def _reward_table_widths(markdown: str) -> set[int]:
    """The numbers of cells in the lines of the per-dataset reward tables (header, rule and rows)."""
    tables = markdown.split("## Plots", 1)[0]
    return {line.count("|") - 1 for line in tables.splitlines() if line.startswith("|")}


def test_no_references_means_no_accuracy_column_and_a_placeholder_plot(report, tables, tmp_path):
    _, paths = report
    for text in (paths["markdown"].read_text(encoding="utf-8"), paths["html"].read_text(encoding="utf-8")):
        assert "accuracy" not in text.lower()
    assert _reward_table_widths(paths["markdown"].read_text(encoding="utf-8")) == {8}
    paths = {**_paths(tmp_path), "accuracy_plot": tmp_path / "accuracy.png"}
    write_report(summarize(tables, prompters=["org/prompter-a"]), **paths)
    assert _image(paths["accuracy_plot"].read_bytes()).shape[0] < 300


def test_accuracy_needs_a_plot_path_and_the_checker_names(checked_summary, tmp_path):
    with pytest.raises(ValueError, match="accuracy_plot"):
        write_report(checked_summary, **_paths(tmp_path), checkers={"math": "numeric"})
    with pytest.raises(ValueError, match=r"\['math'\] without the name of their checker"):
        write_report(checked_summary, **_paths(tmp_path), accuracy_plot=tmp_path / "accuracy.png")
    assert list(tmp_path.iterdir()) == []


def _report_stage(tmp_path, score_tables: list[pa.Table], n_samples: int, min_category_prompts: int = 3) -> dict:
    """stages.report as the rule calls it, on these score tables and the math dataset's test prompts;
    returns its output paths."""
    from alignpro import stages
    from alignpro import tables as stage_tables

    score_paths = []
    for index, table in enumerate(score_tables):
        score_paths.append(tmp_path / f"scores{index}.parquet")
        stage_tables.write_table(table, score_paths[-1], SCORES)
    prompts = pa.table({
        "prompt_id": list(MATH_REFERENCES), "prompt": [f"prompt {p}" for p in MATH_REFERENCES], "source": ["f"] * 4,
        "reference": list(MATH_REFERENCES.values()), "category": ["sums", "sums", "sums", "other"],
    })
    stage_tables.write_table(prompts, tmp_path / "test.parquet", stage_tables.PROMPTS)
    outputs = {name: tmp_path / "report" / file for name, file in (
        ("summary_path", "summary.parquet"), ("markdown", "report.md"), ("html", "report.html"), ("mean_plot", "mean.png"),
        ("variance_plot", "variance.png"), ("accuracy_plot", "accuracy.png"), ("training_plot", "training.png"),
        ("win_plot", "win.png"), ("frontier_plot", "frontier.png"), ("budget_plot", "budget.png"), ("length_plot", "length.png"), ("win_rates_path", "win_rates.parquet"),
        ("categories_path", "categories.parquet"), ("category_win_rates_path", "category_win_rates.parquet"),
    )}
    stages.report(
        scores_paths=score_paths, verdicts_paths=[], training_runs=[], star_runs=[],
        test_prompts={"math": str(tmp_path / "test.parquet")}, checkers={"math": "numeric"}, prompters=["org/prompter-a"],
        settings={"confidence": 0.95, "bootstrap_samples": 100, "examples": 0, "min_category_prompts": min_category_prompts},
        n_samples=n_samples, seed=0, **outputs,
    )
    return outputs


def test_report_stage_reads_the_reference_tables(tmp_path):
    """stages.report as the rule calls it: score tables and one dataset's test prompts from files."""
    from alignpro import tables as stage_tables

    scores = _math_scores()
    outputs = _report_stage(tmp_path, scores, n_samples=scores[0].num_rows // len(MATH_REFERENCES))
    summary = stage_tables.read_table(outputs["summary_path"], SUMMARY).to_pylist()
    assert sorted((row["method"], row["accuracy"]) for row in summary) == [("alignpro", 0.75), ("base", 0.5)]
    assert outputs["accuracy_plot"].read_bytes().startswith(PNG_SIGNATURE)
    text = outputs["markdown"].read_text(encoding="utf-8")
    by_category = text.split("## By category", 1)[1]
    assert "Left out, with fewer than 3 test prompts (report.min_category_prompts; a smaller number gives wider intervals), math/other (1)." in by_category
    assert "| sums | 3 | org/prompter-a | org/frozen-7b | alignpro |" in by_category and "| other |" not in by_category
    categories = stage_tables.read_table(outputs["categories_path"], stage_tables.CATEGORY_SUMMARY).to_pylist()
    assert {(row["category"], row["method"], row["n_prompts"]) for row in categories} == {("sums", "base", 3), ("sums", "alignpro", 3)}
    assert stage_tables.read_table(outputs["category_win_rates_path"], stage_tables.CATEGORY_WIN_RATES).num_rows == 0  # no verdicts


def test_the_category_section_says_so_when_every_category_is_left_out(tmp_path):
    """Categories all below report.min_category_prompts (MT-bench's 80 questions split 40/40 leave 3-7 a
    category): the section is there with its note, not silently gone."""
    scores = _math_scores()
    outputs = _report_stage(tmp_path, scores, n_samples=scores[0].num_rows // len(MATH_REFERENCES), min_category_prompts=10)
    text = outputs["markdown"].read_text(encoding="utf-8")
    assert "## By category" in text
    section = text.split("## By category", 1)[1]
    assert "Left out, with fewer than 10 test prompts (report.min_category_prompts; a smaller number gives wider intervals), every category: math/other (1), math/sums (3)." in section
    from alignpro import tables as stage_tables

    assert stage_tables.read_table(outputs["categories_path"], stage_tables.CATEGORY_SUMMARY).num_rows == 0


def test_a_scores_table_made_under_other_sampling_settings_is_named_not_mixed_in(tmp_path):
    """After generation.n_samples changed, a scores table still holding the old number of answers per
    prompt (a job that never reran) stops the report, naming the file."""
    from alignpro import tables as stage_tables

    base, alignpro = _math_scores()
    per_prompt = base.num_rows // len(MATH_REFERENCES)
    assert per_prompt > 1
    stale = alignpro.filter(pc.equal(alignpro["sample_index"], 0))
    with pytest.raises(stage_tables.SchemaError, match=rf"scores1\.parquet: 1 answer\(s\) per prompt where generation\.n_samples is {per_prompt}"):
        _report_stage(tmp_path, [base, stale], n_samples=per_prompt)
    assert not (tmp_path / "report").exists()


def test_control_characters_are_shown_escaped_not_written_raw():
    """Model outputs can hold NUL, escape sequences and the like: the report shows them as \\xNN."""
    blocks = [Heading(2, "data\x00set"), Paragraph("note\x07"), Table(["h"], [["cell\x1b[31m"]]), Quote("answer", "a\x00b\nc\td")]
    for text in (markdown(blocks), html_page("title\x0c", blocks)):
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", text)
        assert "data\\x00set" in text and "cell\\x1b[31m" in text and "a\\x00b" in text
    assert "> a\\x00b\n> c\td" in markdown(blocks)  # newlines and tabs stay



# ---------------------------------------------------------------------------- every figure fits its image


def _saved_figures(monkeypatch) -> list[tuple]:
    """Record each figure the report's plots save, with the region of it the PNG holds (in inches) and the
    renderer that laid it out: savefig's own `bbox_inches`, as matplotlib computes it."""
    from matplotlib.figure import Figure

    saved, original = [], Figure.savefig

    def savefig(fig, fname, **kwargs):
        original(fig, fname, **kwargs)
        fig.canvas.draw()  # lay it out again at its own dpi, so that every extent comes from one layout (in inches)
        renderer = fig.canvas.get_renderer()
        if kwargs.get("bbox_inches") == "tight":
            region = fig.get_tightbbox(renderer).padded(kwargs.get("pad_inches", 0.1))
        else:
            region = fig.bbox_inches
        saved.append((fig, region, renderer))

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def _outside_or_overlapping(fig, region, renderer) -> list[str]:
    """What a reader would miss: panels (with their tick labels, titles, legends and annotations), figure
    legends and figure texts reaching past the saved image, by matplotlib's own extents in inches; and
    texts (notes) of one panel printed over each other."""
    from matplotlib.legend import Legend
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    inches = fig.dpi_scale_trans.inverted()
    axis_texts = {  # counted with their panel's extent, which leaves out ticks outside the view
        id(text)
        for ax in fig.axes
        for axis in (ax.xaxis, ax.yaxis)
        for text in [axis.label, axis.offsetText]
        + [label for tick in axis.get_major_ticks() + axis.get_minor_ticks() for label in (tick.label1, tick.label2)]
    }
    shown = [
        *((f"panel {ax.get_title()!r}", ax.get_tightbbox(renderer)) for ax in fig.axes if ax.get_visible()),
        *((f"legend {legend.get_title().get_text()!r}", legend.get_window_extent(renderer)) for legend in fig.findobj(Legend)),
        *(
            (f"text {text.get_text()[:50]!r}", text.get_window_extent(renderer))
            for text in fig.findobj(Text)
            if text.axes is None and id(text) not in axis_texts and text.get_visible() and text.get_text().strip()
        ),
    ]
    problems = []
    for name, extent in shown:
        extent = extent.transformed(inches)
        both = Bbox.union([extent, region])
        if both.width > region.width + 0.02 or both.height > region.height + 0.02:
            problems.append(f"outside the image: {name}")
    for ax in fig.axes:
        notes = [text for text in ax.texts if text.get_visible() and text.get_text().strip()]
        boxes = [note.get_window_extent(renderer) for note in notes]
        for i, j in itertools.combinations(range(len(notes)), 2):
            if boxes[i].overlaps(boxes[j]):
                problems.append(f"notes overlap: {notes[i].get_text()!r} and {notes[j].get_text()!r}")
    return problems


def _long_names(summary: pl.DataFrame) -> pl.DataFrame:
    """The same rows under the long names real runs have."""
    return summary.with_columns(
        prompter=pl.when(pl.col("prompter").is_not_null()).then(pl.lit("an-organisation/Phi-3.5-mini-instruct-prompter-v2")),
        frozen=pl.lit("meta-llama/Llama-3.1-8B-Instruct-with-a-longer-suffix"),
        dataset=pl.lit("a-dataset-with-a-rather-long-name"),
    )


@pytest.mark.parametrize("names", ["short", "long"])
def test_every_figure_keeps_its_legends_and_texts_inside_the_image_and_apart(frontier_summary, monkeypatch, names):
    """Mean reward, variance, answer length, the frontier, the training curves and the budget plot, for
    a run with every method, its beta sweep and rho*, under short and long names."""
    summary = frontier_summary if names == "short" else _long_names(frontier_summary)
    saved = _saved_figures(monkeypatch)
    plots.bar_plot(summary, "mean_reward", "mean reward", "Mean reward", True)
    plots.bar_plot(summary, "reward_variance", "reward variance", "Reward variance", False)
    plots.length_plot(summary)
    plots.frontier_plot(summary)
    plots.training_plot(_training_runs())
    plots.budget_plot(_training_runs())
    assert len(saved) == 6
    problems = {index: _outside_or_overlapping(*figure) for index, figure in enumerate(saved)}
    assert not any(problems.values()), problems


def test_frontier_notes_of_crowded_points_do_not_overlap(monkeypatch):
    """A sweep of six betas and rho* at four, their KLs and rewards close together (as alignpro β=1 and
    alignpro-star β=0.1 near KL 0.9 were): every point's note stays readable."""
    base = {"method": "base", "beta": None, "kl": None, "mean_reward": 0.0}
    points = [{"method": "alignpro", "beta": None, "kl": 0.95, "mean_reward": 0.62}]
    points += [{"method": "alignpro", "beta": beta, "kl": 0.8 + 0.05 * i, "mean_reward": 0.5 + 0.03 * i}
               for i, beta in enumerate((0.05, 0.1, 0.2, 0.5, 1.0, 2.0))]
    points += [{"method": "alignpro-star", "beta": beta, "kl": 0.82 + 0.05 * i, "mean_reward": 0.52 + 0.03 * i}
               for i, beta in enumerate((0.1, 0.3, 1.0, 3.0))]
    rows = [
        {"dataset": "d", "prompter": None if row["method"] == "base" else "p", "frozen": "f", **row,
         "ci_low": None if row["kl"] is None else row["mean_reward"] - 0.1, "ci_high": None if row["kl"] is None else row["mean_reward"] + 0.1}
        for row in [base, *points]
    ]
    summary = pl.DataFrame(rows, schema={"dataset": pl.String, "prompter": pl.String, "frozen": pl.String, "method": pl.String,
                                         "beta": pl.Float64, "kl": pl.Float64, "mean_reward": pl.Float64, "ci_low": pl.Float64,
                                         "ci_high": pl.Float64})
    saved = _saved_figures(monkeypatch)
    plots.frontier_plot(summary)
    (fig, region, renderer), = saved
    assert sum(len([t for t in ax.texts if t.get_text()]) for ax in fig.axes) == 11  # every point keeps its note
    assert _outside_or_overlapping(fig, region, renderer) == []
