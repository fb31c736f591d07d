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
from openai_stub import JudgeStub

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


def settings(stub: JudgeStub, **extra) -> ServeSettings:
    frozen = {"base_url": stub.base_url, "model": "served-frozen", "api_key_env": "ALIGNPRO_TEST_KEY", "max_retries": 1,
              "backoff_base_s": 0.01, "backoff_max_s": 0.02, "timeout_s": 5.0}
    return ServeSettings.from_config({"prompter": "unused", "frozen": frozen, "served_model": "aligned", **extra})


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


@pytest.mark.model
def test_alignpro_serve_rewrites_with_a_trained_prompters_directory(frozen, tiny_prompter, tmp_path):
    """The command as a user runs it (`alignpro serve --config`, here `python -m alignpro.cli`), the prompter
    a model directory loaded by the transformers backend: a request is rewritten and answered."""
    import os
    import socket
    import subprocess
    import sys

    import httpx
    import yaml

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "prompter": str(tiny_prompter),
        "rewrite": {"backend": "transformers", "max_new_tokens": 12, "fallback_on_truncation": False, "max_length_ratio": 100.0},
        "frozen": {"base_url": frozen.base_url, "model": "served-frozen", "api_key_env": "ALIGNPRO_TEST_KEY"},
    }))
    command = [sys.executable, "-m", "alignpro.cli", "serve", "--config", str(config), "--port", str(port), "--served-model", "aligned"]
    server = subprocess.Popen(command, env=os.environ | {"HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "alignpro serve did not come up"
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="anything", max_retries=0)
        response = client.chat.completions.create(model="aligned", messages=[{"role": "user", "content": QUESTION}])
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
    info = response.model_extra["alignpro"]
    # the random tiny prompter's rewrite (x itself, should it fall back on another float path) is what was answered
    assert info["original"] == QUESTION and (info["rewrite"] != QUESTION or info["fallback"] is not None)
    assert response.choices[0].message.content.startswith(f"An answer to [{info['rewrite']}]")
    assert "rewrite" in log and "frozen model" in log  # the request's log line with both parts' seconds
