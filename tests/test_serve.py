"""`alignpro serve`: the openai client against the proxy (uvicorn on loopback), the frozen model an
OpenAI-compatible stub that answers chats and streams: the rewrite reaches the frozen model, the answer
and the rewrite come back, streaming works, and a malformed request, a frozen model that is down (and
back up) and 32 requests at once each get an answer or an OpenAI-style error."""

import concurrent.futures
import contextlib
import threading
import time

import openai
import pytest

from fakes import ScriptedPrompter
from openai_stub import JudgeStub, stub_rewrite
from servers import started

from alignpro.distributed import free_port
from alignpro.serve import ServeSettings, build_app

QUESTION = "hw do i boil egg"
REWRITE = "How do I boil an egg? Give the steps and the minutes for soft and hard yolks."


@contextlib.contextmanager
def proxy(app):
    """The app served by uvicorn on a free loopback port; its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the proxy did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def endpoint(stub: JudgeStub, model: str = "served-frozen", **extra) -> dict:
    """The stub as a model entry's `api` section."""
    return {"base_url": stub.base_url, "model": model, "api_key_env": "ALIGNPRO_TEST_KEY", "max_retries": 1,
            "backoff_base_s": 0.01, "backoff_max_s": 0.02, "timeout_s": 5.0, **extra}


def settings(stub: JudgeStub, **extra) -> ServeSettings:
    return ServeSettings.from_config({"prompter": "unused", "frozen": {"api": endpoint(stub)}, "served_model": "aligned", **extra})


@pytest.fixture
def frozen(monkeypatch):
    monkeypatch.setenv("ALIGNPRO_TEST_KEY", "sk-test")
    with JudgeStub(answers_chats=True) as stub:
        yield stub


def scripted(text: str, finish: str = "stop", prompts: int = 64) -> ScriptedPrompter:
    return ScriptedPrompter([[(text, finish)]] * prompts)


@pytest.mark.unit
def test_the_frozen_model_answers_the_rewrite_and_the_client_sees_both(frozen):
    prompter = scripted(f"<prompt>{REWRITE}</prompt>")
    with proxy(build_app(settings(frozen), prompter=prompter)) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="anything", max_retries=0)
        response = client.chat.completions.create(
            model="aligned", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": QUESTION}],
            temperature=0.3, max_tokens=77, seed=5,
        )
        assert [model.id for model in client.models.list()] == ["aligned"]
    answer = response.choices[0].message.content
    assert answer == f"An answer to [{REWRITE}] (seed 5, temperature 0.3, max 77)"  # x' and the request's sampling went through
    assert response.model == "aligned"
    info = response.model_extra["alignpro"]
    assert {key: info[key] for key in ("original", "rewrite", "fallback")} == {"original": QUESTION, "rewrite": REWRITE, "fallback": None}
    assert set(info["seconds"]) == {"rewrite", "frozen_model"} and all(seconds >= 0 for seconds in info["seconds"].values())
    (conversation,), _ = prompter.calls[0]
    assert QUESTION in conversation[-1]["content"]  # the prompter saw x inside the meta-prompt


@pytest.mark.unit
def test_a_failed_rewrite_keeps_the_original_prompt_and_says_why(frozen):
    with proxy(build_app(settings(frozen), prompter=scripted(""))) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="anything", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="aligned", messages=[{"role": "user", "content": QUESTION}])
    response = raw.parse()
    assert response.choices[0].message.content.startswith(f"An answer to [{QUESTION}]")
    assert response.model_extra["alignpro"]["fallback"] == "empty" and raw.headers["x-alignpro-fallback"] == "empty"


@pytest.mark.unit
def test_a_streamed_answer_arrives_in_chunks_with_the_rewrite_first(frozen):
    with proxy(build_app(settings(frozen), prompter=scripted(f"<prompt>{REWRITE}</prompt>"))) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="anything", max_retries=0)
        stream = client.chat.completions.create(model="aligned", messages=[{"role": "user", "content": QUESTION}], stream=True)
        chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text.startswith(f"An answer to [{REWRITE}]") and len(chunks) > 5
    assert chunks[0].model_extra["alignpro"]["rewrite"] == REWRITE and chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.unit
def test_malformed_requests_get_openai_style_400s(frozen):
    with proxy(build_app(settings(frozen), prompter=scripted(f"<prompt>{REWRITE}</prompt>"))) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="anything", max_retries=0)
        with pytest.raises(openai.BadRequestError) as missing:
            client.chat.completions.create(model="aligned", messages=None)
        with pytest.raises(openai.BadRequestError) as no_user:
            client.chat.completions.create(model="aligned", messages=[{"role": "system", "content": "hi"}])
    assert missing.value.body["type"] == "invalid_request_error" and "messages" in missing.value.body["message"]
    assert no_user.value.body["message"] == "messages: no user message to rewrite"
    assert frozen.total_requests == 0  # nothing malformed was forwarded


@pytest.mark.unit
def test_a_frozen_model_that_is_down_gets_a_502_naming_it_and_the_proxy_answers_once_it_is_back(frozen):
    with proxy(build_app(settings(frozen), prompter=scripted(f"<prompt>{REWRITE}</prompt>"))) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="anything", max_retries=0)
        frozen.down = True
        with pytest.raises(openai.APIStatusError) as down:
            client.chat.completions.create(model="aligned", messages=[{"role": "user", "content": QUESTION}])
        frozen.down = False
        back = client.chat.completions.create(model="aligned", messages=[{"role": "user", "content": QUESTION}])
    assert down.value.status_code == 502
    assert "served-frozen" in down.value.body["message"] and "503" in down.value.body["message"]
    assert back.choices[0].message.content.startswith(f"An answer to [{REWRITE}]")


@pytest.mark.unit
def test_32_requests_at_once_each_get_their_own_answer_within_the_concurrency_limit(frozen):
    frozen.latency_s = 0.05
    prompter = scripted(f"<prompt>{REWRITE}</prompt>")
    with proxy(build_app(settings(frozen, max_concurrency=8), prompter=prompter)) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="anything", max_retries=0, timeout=60)

        def ask(i):
            return client.chat.completions.create(model="aligned", messages=[{"role": "user", "content": f"question {i}"}])

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(ask, range(32)))
        seconds = time.monotonic() - started
    assert [answer.model_extra["alignpro"]["original"] for answer in answers] == [f"question {i}" for i in range(32)]
    assert all(answer.choices[0].message.content.startswith(f"An answer to [{REWRITE}]") for answer in answers)
    assert 1 < frozen.max_in_flight <= 8 and seconds < 30  # answered side by side, never more than the limit


@pytest.mark.unit
def test_a_prompter_served_by_its_own_server_rewrites_through_the_api_client(frozen, tmp_path):
    """The prompter behind an OpenAI-compatible server (here the stub, which rewrites a meta-prompt's x
    between tags): its rewrite, extracted as the workflow extracts, is what the frozen model answers;
    a prompt asked again is rewritten from the proxy's cache."""
    prompter = {"api": endpoint(frozen, "served-prompter", cache=str(tmp_path / "prompter.sqlite"))}
    serve = ServeSettings.from_config({"prompter": prompter, "frozen": {"api": endpoint(frozen)}, "rewrite": {"temperature": 0.7}})
    with proxy(build_app(serve)) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="anything", max_retries=0)
        first, again = (client.chat.completions.create(model="served-frozen", messages=[{"role": "user", "content": QUESTION}]) for _ in range(2))
    rewrite = stub_rewrite(QUESTION)
    assert first.model_extra["alignpro"]["rewrite"] == rewrite and first.model_extra["alignpro"]["fallback"] is None
    assert first.choices[0].message.content.startswith(f"An answer to [{rewrite}]")
    assert again.choices[0].message.content == first.choices[0].message.content
    prompter_requests = [question for (question, _), count in frozen.counts.items() if "<original_prompt>" in question for _ in range(count)]
    assert len(prompter_requests) == 1 and QUESTION in prompter_requests[0]  # the meta-prompt around x, sent once
    assert frozen.counts[(rewrite, "")] == 2  # the frozen model answered x' twice


@pytest.mark.model
def test_a_frozen_model_from_local_weights_answers_the_rewrite(tiny_frozen):
    """The frozen model's weights run in the proxy (transformers backend): greedy, its answer through the
    proxy is its answer to x' called directly; streamed, the same text; n answers; a setting the backend
    cannot honour is a 400 naming it."""
    from alignpro.generation import load_generator
    from alignpro.sampling import Sampling

    serve = ServeSettings.from_config({
        "prompter": "unused", "frozen": {"path": str(tiny_frozen), "dtype": "float32"}, "generation": {"backend": "transformers", "max_new_tokens": 8},
    })
    request = {"model": "frozen", "messages": [{"role": "user", "content": QUESTION}], "temperature": 0.0, "max_tokens": 6}
    with proxy(build_app(serve, prompter=scripted(f"<prompt>{REWRITE}</prompt>"))) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="anything", max_retries=0)
        answer = client.chat.completions.create(**request)
        streamed = list(client.chat.completions.create(**request, stream=True))
        several = client.chat.completions.create(**request | {"n": 2, "temperature": 1.0, "seed": 3})
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(**request, stop=["\n"])
        assert [model.id for model in client.models.list()] == [tiny_frozen.name]
    direct = load_generator("transformers", str(tiny_frozen), dtype="float32").chat(
        [[{"role": "user", "content": REWRITE}]], Sampling(temperature=0.0, max_new_tokens=6)
    )[0][0]
    assert answer.choices[0].message.content == direct.text and answer.choices[0].finish_reason == direct.finish_reason
    assert answer.model_extra["alignpro"]["rewrite"] == REWRITE
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed) == direct.text
    assert streamed[0].model_extra["alignpro"]["rewrite"] == REWRITE and streamed[-1].choices[0].finish_reason == direct.finish_reason
    assert len(several.choices) == 2
    assert refused.value.body["param"] == "stop" and "local weights" in refused.value.body["message"]


@pytest.mark.model
def test_alignpro_serve_rewrites_with_a_trained_prompters_directory(frozen, tiny_prompter, tmp_path):
    """The command as a user runs it (`alignpro serve --config`, here `python -m alignpro.cli`), the prompter
    a model directory loaded by the transformers backend: a request is rewritten and answered."""
    import os
    import sys

    import yaml

    port = free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "prompter": str(tiny_prompter),
        "rewrite": {"backend": "transformers", "max_new_tokens": 12, "fallback_on_truncation": False, "max_length_ratio": 100.0},
        "frozen": {"api": {"base_url": frozen.base_url, "model": "served-frozen", "api_key_env": "ALIGNPRO_TEST_KEY"}},
    }))
    command = [sys.executable, "-m", "alignpro.cli", "serve", "--config", str(config), "--port", str(port), "--served-model", "aligned"]
    with started(command, f"http://127.0.0.1:{port}/health", tmp_path / "serve.log", timeout_s=120, env=os.environ | {"HF_HUB_OFFLINE": "1"}):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="anything", max_retries=0)
        response = client.chat.completions.create(model="aligned", messages=[{"role": "user", "content": QUESTION}])
    log = (tmp_path / "serve.log").read_text()
    info = response.model_extra["alignpro"]
    # the random tiny prompter's rewrite (x itself, should it fall back on another float path) is what was answered
    assert info["original"] == QUESTION and (info["rewrite"] != QUESTION or info["fallback"] is not None)
    assert response.choices[0].message.content.startswith(f"An answer to [{info['rewrite']}]")
    assert "rewrite" in log and "frozen model" in log  # the request's log line with both parts' seconds



@pytest.mark.unit
def test_the_commands_flags_write_model_entries_and_name_what_is_missing(tmp_path):
    import yaml

    from alignpro.cli import main, parser, serve_settings

    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"prompter": "results/ppo/model", "frozen": "weights/frozen", "served_model": "aligned"}))
    served = serve_settings(parser().parse_args(["serve", "--config", str(config), "--generation-backend", "transformers", "--port", "8009"]))
    assert (served.prompter, served.frozen, served.generation, served.port) == ("results/ppo/model", "weights/frozen", {"backend": "transformers"}, 8009)
    remote = serve_settings(parser().parse_args([
        "serve", "--prompter-base-url", "http://127.0.0.1:8002/v1", "--prompter-model", "trained", "--frozen-path", "weights/frozen",
    ]))
    assert remote.prompter_spec().api == {"base_url": "http://127.0.0.1:8002/v1", "model": "trained"} and remote.frozen_spec().path == "weights/frozen"
    with pytest.raises(SystemExit, match="serve.prompter: a model spec needs either a path to load or an api to call, not both"):
        serve_settings(parser().parse_args(["serve", "--config", str(config), "--prompter-base-url", "http://127.0.0.1:8002/v1"]))
    with pytest.raises(SystemExit, match="give the frozen model: --frozen-base-url and --frozen-model .* or --frozen-path"):
        main(["serve", "--prompter", "results/ppo/model"])
