"""The frozen model behind an API, against a real local HTTP server speaking OpenAI chat completions
(tests/openai_stub.py answering as a chat model): answers, cache, faults, resumption, refusals."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sqlite3

import pyarrow as pa
import pytest

from alignpro import stages
from alignpro.frozen_api import APIAnswersMissing, APIGenerator, FrozenAPISettings, answer_key, request_seed
from alignpro.generation import SamplingSettings
from alignpro.model_spec import ModelSpec
from alignpro.sampling import Completion, Sampling
from alignpro.judge import JudgeSettings
from alignpro.tables import TRAINING_METRICS, PROMPTS, RESPONSES, SCORES, VERDICTS, read_table, write_table
from alignpro.training import RewriteReward
from fakes import prompts_table
from openai_stub import JudgeStub, kill_after_requests

KEY_ENV = "ALIGNPRO_TEST_FROZEN_KEY"
SAMPLING = Sampling(n=2, temperature=0.7, top_p=0.9, max_new_tokens=16, seed=5)


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "test-key")
    with JudgeStub(retry_after_s=0.05, hang_s=3.0, answers_chats=True) as server:
        yield server


def api_section(stub, tmp_path, **overrides) -> dict:
    return {
        "model": "served-frozen", "base_url": stub.base_url, "api_key_env": KEY_ENV, "concurrency": 4,
        "backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 1.5, "cache": str(tmp_path / "frozen.sqlite"),
    } | overrides


def generator(stub, tmp_path, **overrides) -> APIGenerator:
    return SamplingSettings().generator(ModelSpec("models.frozen.remote", api=api_section(stub, tmp_path, **overrides)), seed=0)


def chats(questions):
    return [[{"role": "user", "content": question}] for question in questions]


def test_every_sample_is_one_request_with_its_own_seed_and_the_sampling(stub, tmp_path):
    frozen = generator(stub, tmp_path)
    answers = frozen.chat(chats(["Why?", "How?"]), SAMPLING)
    seeds = {
        question: [request_seed(answer_key(frozen.settings, chat, SAMPLING, index, None)) for index in range(2)]
        for question, chat in zip(("Why?", "How?"), chats(["Why?", "How?"]))
    }
    assert [[c.text for c in of_one] for of_one in answers] == [
        [f"An answer to [{q}] (seed {seed}, temperature 0.7, max 16)" for seed in seeds[q]] for q in ("Why?", "How?")
    ]
    assert len({seed for pair in seeds.values() for seed in pair}) == 4
    assert all(c.finish_reason == "stop" and c.num_tokens > 0 for of_one in answers for c in of_one)
    assert stub.requests_for("Why?", "") == stub.requests_for("How?", "") == 2
    reseeded = generator(stub, tmp_path).chat(chats(["Why?"]), dataclasses.replace(SAMPLING, seed=6))
    assert not {c.text for c in reseeded[0]} & {c.text for c in answers[0]}
    unseeded = generator(stub, tmp_path, send_seed=False).chat(chats(["Why?"]), SAMPLING)
    assert {c.text for c in unseeded[0]} == {"An answer to [Why?] (seed None, temperature 0.7, max 16)"}


def test_identical_calls_in_one_request_batch_are_sent_once(stub, tmp_path):
    frozen = generator(stub, tmp_path)
    answers = frozen.chat(chats(["Why?"] * 4), SAMPLING)
    assert stub.requests_for("Why?", "") == 2  # one per sample, not one per copy
    assert [[c.text for c in of_one] for of_one in answers] == [[c.text for c in answers[0]]] * 4
    assert frozen.usage["repeated"] == 6 and "6 repeats of a call asked for once" in frozen.usage_line()


def test_answers_come_from_the_cache_on_a_rerun_and_keys_name_fresh_calls(stub, tmp_path):
    first = generator(stub, tmp_path).chat(chats(["Why?"]), SAMPLING)
    again = generator(stub, tmp_path)
    assert again.chat(chats(["Why?"]), SAMPLING) == first and stub.total_requests == 2
    assert again.usage["cached"] == 2 and again.usage["requests"] == 0
    again.chat(chats(["Why?"]), SAMPLING, keys=["ppo step 2 rollout 0"])  # a later step: fresh answers
    assert stub.total_requests == 4


def test_faults_and_malformed_replies_are_retried_each_with_a_log_line(stub, tmp_path, caplog):
    faults = ["429", "500", "timeout", "drop", "no_choices", "null_content", "not_json", "html"]
    for index, fault in enumerate(faults):
        stub.inject(f"Q{index}", "", fault)
    with caplog.at_level(logging.WARNING, logger="alignpro.api"):
        answers = generator(stub, tmp_path).chat(chats([f"Q{index}" for index in range(len(faults))]), SAMPLING)
    assert all(len(of_one) == 2 for of_one in answers)
    assert all(stub.requests_for(f"Q{index}", "") == 3 for index in range(len(faults)))  # 2 samples + 1 retry
    retries = [record.getMessage() for record in caplog.records if record.name == "alignpro.api"]
    print("\n".join(retries))
    assert len(retries) == len(faults)
    assert all(line.startswith(f"frozen model remote at {stub.base_url}: ") and "; retry 1 of 6 in " in line for line in retries)
    assert sum("RateLimitError" in line for line in retries) == 1 and sum("MalformedReply" in line for line in retries) == 3
    assert any("APIConnectionError: Connection error. (caused by " in line for line in retries)  # the dropped connection


def test_a_url_without_a_scheme_is_not_retried_and_its_cause_is_named(stub, tmp_path):
    no_scheme = stub.base_url.removeprefix("http://")
    with pytest.raises(APIAnswersMissing, match=r"\(first: error: APIConnectionError: Connection error\. \(caused by UnsupportedProtocol: "):
        generator(stub, tmp_path, base_url=no_scheme).chat(chats(["Q0"]), Sampling(n=1, max_new_tokens=16))


def test_a_seeded_server_answers_a_repeated_rewrite_afresh_at_each_step_and_alike_on_a_rerun(stub, tmp_path):
    """y ~ frozen(x'): the same rewrite in two rollouts and at two PPO steps gets four draws, not one
    answer repeated; the same step asked again (a resumed run without the cache) gets the same answers."""
    rollouts = [Completion("<prompt>One rewrite</prompt>", "stop", 5)] * 2

    def answers(step: int, cache: str) -> list[str]:
        scorer = RecordingScorer()
        frozen = generator(stub, tmp_path, cache=str(tmp_path / cache))
        RewriteReward(frozen, scorer, Sampling(max_new_tokens=16), fallback_on_truncation=True, max_length_ratio=8.0)(
            ["x0", "x1"], rollouts, step=step
        )
        [responses] = scorer.seen
        return responses

    first = answers(step=1, cache="run.sqlite")
    later = answers(step=2, cache="run.sqlite")
    assert len(set(first)) == len(set(later)) == 2 and not set(first) & set(later)
    assert answers(step=1, cache="another.sqlite") == first
    assert stub.total_requests == 6


def test_an_outage_raises_after_the_retries_keeping_what_was_answered(stub, tmp_path):
    stub.inject("Q1", "", *["500"] * 3)
    one = Sampling(n=1, max_new_tokens=16)
    with pytest.raises(APIAnswersMissing, match=r"frozen model remote .*: 1 of 2 answers could not be had .*rerun"):
        generator(stub, tmp_path, max_retries=2).chat(chats(["Q0", "Q1"]), one)
    requests = stub.total_requests
    answers = generator(stub, tmp_path, max_retries=2).chat(chats(["Q0", "Q1"]), one)
    assert len(answers) == 2 and stub.total_requests == requests + 1  # only the missing answer is asked for


def test_a_missing_key_and_a_missing_model_are_named(stub, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="config models.frozen.remote.api.model: the API's name for the model is required"):
        SamplingSettings().generator(ModelSpec("models.frozen.remote", api=api_section(stub, tmp_path) | {"model": ""}), seed=0)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(RuntimeError, match=f"frozen model remote's API key is read from \\${KEY_ENV}"):
        generator(stub, tmp_path)
    assert FrozenAPISettings.from_config(api_section(stub, tmp_path), "x").send_seed


def test_the_generate_stage_answers_through_the_api(stub, tmp_path):
    write_table(prompts_table(["Why?", "How?", "When?"]), tmp_path / "test.parquet", PROMPTS)
    stages.generate(
        inputs_path=str(tmp_path / "test.parquet"), out_path=str(tmp_path / "responses.parquet"), dataset="toy",
        method="base", frozen="remote", prompter=None, beta=None,
        model=ModelSpec("models.frozen.remote", api=api_section(stub, tmp_path)),
        params={"backend": "transformers", "n_samples": 2, "max_new_tokens": 16}, seed=1,
    )
    responses = read_table(tmp_path / "responses.parquet", RESPONSES)
    assert responses.num_rows == 6 and stub.total_requests == 6
    answers = responses.column("response").to_pylist()
    assert re.fullmatch(r"An answer to \[Why\?\] \(seed \d+, temperature 1\.0, max 16\)", answers[0]) and len(set(answers)) == 6


class RecordingScorer:
    """Scores 0 and keeps the answers it was given, one list per call."""

    def __init__(self):
        self.seen: list[list[str]] = []

    def score(self, prompts, responses):
        self.seen.append(list(responses))
        return [0.0] * len(responses)


class LengthScorer:
    """r(x, y) = len(y): enough to see which answers a reward was computed from."""

    def score(self, prompts, responses):
        return [float(len(response)) for response in responses]


def test_a_resumed_ppo_step_gets_the_answers_it_had_and_a_later_step_fresh_ones(stub, tmp_path):
    rollouts = [Completion(f"<prompt>Rewrite {index}</prompt>", "stop", 5) for index in range(3)]
    prompts = ["x0", "x1", "x2"]

    def reward(step):
        frozen = generator(stub, tmp_path)
        reward_fn = RewriteReward(frozen, LengthScorer(), Sampling(max_new_tokens=16), fallback_on_truncation=True, max_length_ratio=8.0)
        return reward_fn(prompts, rollouts, step=step)[0], frozen.usage

    first, usage = reward(step=7)
    assert usage["requests"] == 3
    replayed, usage = reward(step=7)  # the step again, as after a resume from its checkpoint
    assert replayed == first and usage == usage | {"requests": 0, "cached": 3}
    _, usage = reward(step=8)
    assert usage["requests"] == 3 and stub.total_requests == 6


@pytest.mark.model
def test_generate_ppo_and_judge_complete_at_a_50_percent_fault_rate(stub, tmp_path, tiny_prompter, tiny_reward, capsys):
    """Half the requests suffer one of the faults (429, 500, timeout, dropped connection, no choices,
    null content, JSON cut short, HTML page): every job still completes with no answer missing."""
    stub.fault_rate = 0.5
    patient = {"max_retries": 12, "timeout_s": 1.0}
    frozen = ModelSpec("models.frozen.remote", api=api_section(stub, tmp_path, **patient))
    local = lambda path: ModelSpec("models.test.local", str(path), dtype="float32")  # noqa: E731
    questions = [f"Question {index}?" for index in range(12)]
    write_table(prompts_table(questions), tmp_path / "prompts.parquet", PROMPTS)
    counts = {}

    def served(job, run):
        before, faults_before = stub.total_requests, sum(stub.served_faults.values())
        run()
        counts[job] = (stub.total_requests - before, sum(stub.served_faults.values()) - faults_before)

    generation = {"backend": "transformers", "n_samples": 2, "max_new_tokens": 16}
    for name, temperature in (("first", 1.0), ("second", 0.5)):  # two systems' answers (the stub's differ by temperature)
        served(f"generate ({name})", lambda: stages.generate(
            inputs_path=str(tmp_path / "prompts.parquet"), out_path=str(tmp_path / f"{name}.parquet"), dataset="toy",
            method="base", frozen="remote", prompter=None, beta=None, model=frozen,
            params=generation | {"temperature": temperature}, seed=0,
        ))
        responses = read_table(tmp_path / f"{name}.parquet", RESPONSES)
        assert responses.num_rows == 24 and all(responses.column("response").to_pylist())
    served("ppo", lambda: stages.train_prompter(
        trainer="ppo", train_path=str(tmp_path / "prompts.parquet"), workdir=str(tmp_path / "ppo"), model=local(tiny_prompter),
        frozen=frozen, reward=local(tiny_reward),
        settings={"steps": 1, "batch_size": 4, "mini_batch_size": 4, "ppo_epochs": 1, "max_new_tokens": 8, "max_prompts": 12},
        rewrite={"backend": "transformers", "max_new_tokens": 8}, generation={"backend": "transformers", "max_new_tokens": 16},
        scoring={"batch_size": 8, "max_length": 256}, seed=0,
    ))
    assert read_table(tmp_path / "ppo/metrics.parquet", TRAINING_METRICS).num_rows == 1

    def scored(name, method):
        rows = [row | {"method": method, "reward": 0.0, "reward_model": "rm"} for row in read_table(tmp_path / f"{name}.parquet", RESPONSES).to_pylist()]
        write_table(pa.Table.from_pylist(rows, schema=SCORES), tmp_path / f"{name}_scores.parquet", SCORES)

    scored("first", "base")
    scored("second", "alignpro")
    judge_api = dataclasses.asdict(JudgeSettings(**{k: v for k, v in frozen.api.items() if k not in ("cache", "send_seed", "model")}))
    settings = {"backend": "api", "samples_per_prompt": None, "api": judge_api | {"cache": str(tmp_path / "judge.sqlite")}}
    served("judge", lambda: stages.judge(
        scores_path=str(tmp_path / "second_scores.parquet"), base_scores_path=str(tmp_path / "first_scores.parquet"),
        out_path=str(tmp_path / "verdicts.parquet"), judge="gpt4", settings=settings,
    ))
    verdicts = read_table(tmp_path / "verdicts.parquet", VERDICTS)
    assert verdicts.num_rows == 24 and "not_judged" not in verdicts.column("verdict").to_pylist()
    invalid = verdicts.column("verdict").to_pylist().count("invalid")
    with capsys.disabled():
        print(f"\n50% fault rate: {dict(stub.served_faults)}; judge verdicts recorded invalid: {invalid}")
        for job, (requests, faults) in counts.items():
            print(f"  {job}: {requests} requests, {faults} of them faulted (retried)")
    assert all(faults > 0 for _, faults in counts.values())


KILLABLE_GENERATE = """
import json, sys
from alignpro import stages
from alignpro.model_spec import ModelSpec
prompts, out, model = sys.argv[1:]
stages.generate(inputs_path=prompts, out_path=out, dataset="toy", method="base", frozen="remote", prompter=None,
                beta=None, model=ModelSpec.from_params(json.loads(model)), params={"backend": "transformers", "n_samples": 2}, seed=0)
"""


def test_a_killed_generate_job_reruns_paying_only_for_the_answers_it_lacked(stub, tmp_path):
    stub.latency_s = 0.1
    write_table(prompts_table([f"Question {index}?" for index in range(20)]), tmp_path / "prompts.parquet", PROMPTS)
    model = ModelSpec("models.frozen.remote", api=api_section(stub, tmp_path, concurrency=2))
    out = tmp_path / "responses.parquet"
    kill_after_requests(stub, KILLABLE_GENERATE, str(tmp_path / "prompts.parquet"), str(out), json.dumps(model.as_params()), requests=16)
    assert not out.exists()
    with sqlite3.connect(tmp_path / "frozen.sqlite") as db:
        answered = db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
    assert 0 < answered < 40
    before = stub.total_requests
    stages.generate(
        inputs_path=str(tmp_path / "prompts.parquet"), out_path=str(out), dataset="toy", method="base", frozen="remote",
        prompter=None, beta=None, model=model, params={"backend": "transformers", "n_samples": 2}, seed=0,
    )
    assert stub.total_requests - before == 40 - answered and read_table(out, RESPONSES).num_rows == 40
    print(f"killed after {before} requests, {answered} answers cached; the rerun sent {stub.total_requests - before}")
