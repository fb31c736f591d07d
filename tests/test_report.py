"""Summary statistics against hand-computed values, the t quantile, and the written report files."""

import base64
import re
import statistics

import polars as pl
import pyarrow as pa
import pytest

from alignpro.report import summarize, t_quantile, write_report
from alignpro.tables import SCORES, SUMMARY, conform

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Rewards per prompt (two samples each) for the hand-made tables.
BASE_REWARDS = {"p1": [1.0, 2.0], "p2": [0.5, -0.5], "p3": [3.0, 4.0], "p4": [-1.0, 0.0]}
ALIGNPRO_REWARDS = {"p1": [2.0, 2.5], "p2": [1.0, 0.0], "p3": [3.5, 4.5], "p4": [0.0, 1.0]}
ALIGNPRO_FALLBACK = {"p1": False, "p2": True, "p3": False, "p4": False}
T_975_DF3 = 3.182  # two-sided 95% t quantile with 3 degrees of freedom, from a printed table


def _rows(rewards: dict, *, method: str, prompter, fallback: dict | None, dataset="hh", frozen="org/frozen-7b"):
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


@pytest.mark.parametrize(
    ("probability", "df", "table_value"),
    [
        (0.975, 1, 12.706),
        (0.975, 2, 4.303),
        (0.975, 3, 3.182),
        (0.975, 10, 2.228),
        (0.975, 30, 2.042),
        (0.975, 10**6, 1.960),
        (0.995, 5, 4.032),
        (0.95, 20, 1.725),
        (0.025, 10, -2.228),
    ],
)
def test_t_quantile_matches_table(probability, df, table_value):
    assert t_quantile(probability, df) == pytest.approx(table_value, abs=6e-4)


def test_t_quantile_rejects_bad_arguments():
    with pytest.raises(ValueError):
        t_quantile(1.0, 5)
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)


def test_summarize_known_numbers(tables):
    summary = summarize(tables, prompters=["org/prompter-a"])
    for method, rewards in (("base", BASE_REWARDS), ("alignpro", ALIGNPRO_REWARDS)):
        [row] = summary.filter(pl.col("method") == method).to_dicts()
        for key, value in _expected(rewards).items():
            tolerance = 1e-3 if key.startswith("ci_") else 1e-12  # the table t quantile has 3 decimals
            assert row[key] == pytest.approx(value, abs=tolerance), (method, key)
    assert summary.filter(pl.col("method") == "alignpro")["fallback_rate"].to_list() == [0.25]
    assert summary.filter(pl.col("method") == "base")["fallback_rate"].to_list() == [None]


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
