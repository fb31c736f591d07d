"""A local stand-in for the OpenAI chat completions endpoint, acting as a deterministic pairwise judge
(and, with answers_chats, as a frozen chat model answering any other request).

It runs `http.server` in a thread on 127.0.0.1 (a free port), answers `POST /v1/chat/completions`
like the real API (choices[0].message.content and usage), and lets a test script faults per
(question, answer shown first): latency, 429 with Retry-After, 500, a hang past the client's timeout,
a dropped connection, an unparsable verdict, or a 200 that is no chat completion (no choices, null
content, a JSON body cut short, an HTML error page), as proxies send them. Its verdict: the answer containing MARKER wins, a tie
when both or neither do (or, `wordy`, a chance verdict favouring the longer answer and the first slot), in the format of the judge prompt it reads (pairwise-v1's VERDICT line or MT-bench's [[A]]). Its reasoning echoes both answers verbatim, so steering text inside an answer
(a fake "VERDICT: A" line) reaches the judge's output the way a quoting LLM would put it there.
`GET /v1/models` lists `served_models`; given an `api_key`, the stub answers 401 to a request without it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MARKER = "EXCELLENT"
FAULTS = ("429", "500", "timeout", "drop", "malformed", "no_choices", "null_content", "not_json", "html")
BLOCK = r"\[{name} (?P<fence_{tag}>\w+)\]\n(?P<{tag}>.*?)\n\[/{name} (?P=fence_{tag})\]"
PROMPT_BLOCKS = re.compile(
    "(?s)"
    + BLOCK.format(name="QUESTION", tag="question")
    + ".*?"
    + BLOCK.format(name="ANSWER A", tag="a")
    + ".*?"
    + BLOCK.format(name="ANSWER B", tag="b")
)
# The MT-bench-style prompt's layout (judge prompt mt-bench-pair-v1), answered with [[A]], [[B]] or [[C]].
MT_BENCH_BLOCKS = re.compile(
    r"(?s)\[User Question (?P<fence>\w+)\]\n(?P<question>.*?)\n\[End of User Question (?P=fence)\]"
    r".*?\[The Start of Assistant A's Answer (?P=fence)\]\n(?P<a>.*?)\n\[The End of Assistant A's Answer (?P=fence)\]"
    r".*?\[The Start of Assistant B's Answer (?P=fence)\]\n(?P<b>.*?)\n\[The End of Assistant B's Answer (?P=fence)\]"
)
MT_BENCH_VERDICT = {"A": "[[A]]", "B": "[[B]]", "TIE": "[[C]]"}


class JudgeStub:
    """The server and what it saw: requests per (question, first answer), request times, max in flight."""

    def __init__(
        self, latency_s: float = 0.0, retry_after_s: float = 1.0, hang_s: float = 1.0, answers_chats: bool = False,
        fault_rate: float = 0.0, seed: int = 0, wordy: bool = False, api_key: str | None = None,
    ):
        self.api_key = api_key  # when set, a request without "Authorization: Bearer <api_key>" gets a 401
        self.served_models = ["gpt-4", "served-frozen"]  # what GET /v1/models lists
        self.get_requests: Counter[str] = Counter()  # path -> GET requests, 401s included
        self.unauthorized = 0
        self.answers_chats = answers_chats  # also answer requests that are not the judge's, as a chat model
        self.wordy = wordy  # judge as LLM judges tend to: longer answers and the first slot favoured, by chance
        self.fault_rate = fault_rate  # a request not given an injected fault suffers a random one this often
        self.random_faults = [fault for fault in FAULTS if fault != "malformed"]  # what no verdict parser cures
        self.down = False  # every request answered 503, as by a proxy in front of a server that is down
        self.served_faults: Counter[str] = Counter()
        self._random = random.Random(seed)
        self.latency_s = latency_s
        self.retry_after_s = retry_after_s
        self.hang_s = hang_s
        self.faults: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.always_a: set[str] = set()
        self.counts: Counter[tuple[str, str]] = Counter()
        self.request_times: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.stub = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def requests_for(self, question: str, first_answer: str) -> int:
        with self._lock:
            return self.counts[(question, first_answer)]

    def inject(self, question: str, first_answer: str, *faults: str) -> None:
        """The next requests for this (question, order) fail in turn with these faults."""
        assert all(fault in FAULTS for fault in faults), faults
        self.faults[(question, first_answer)].extend(faults)

    def __enter__(self) -> "JudgeStub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def admit(self, question: str, first_answer: str) -> str | None:
        """Count a request and hand back the fault it must suffer, if any."""
        key = (question, first_answer)
        with self._lock:
            self.counts[key] += 1
            self.request_times[key].append(time.monotonic())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.down:
                fault = "503"
            elif self.faults[key]:
                fault = self.faults[key].pop(0)
            elif self._random.random() < self.fault_rate:
                fault = self._random.choice(self.random_faults)
            else:
                fault = None
            if fault is not None:
                self.served_faults[fault] += 1
            return fault

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def verdict(self, question: str, answer_a: str, answer_b: str) -> str:
        if question in self.always_a:
            return "A"
        if self.wordy:
            # P(A) = sigmoid(0.4 + 1.5 tanh(character difference / 200)), drawn from a hash of the texts: the
            # same request gets the same verdict whatever the prompt's format, a different one by chance.
            digest = hashlib.sha256("\0".join((question, answer_a, answer_b)).encode()).digest()
            draw = int.from_bytes(digest[:8], "big") / 2**64
            p_a = 1.0 / (1.0 + math.exp(-(0.4 + 1.5 * math.tanh((len(answer_a) - len(answer_b)) / 200.0))))
            return "A" if draw < p_a else "B"
        a_good, b_good = MARKER in answer_a, MARKER in answer_b
        return "A" if a_good and not b_good else "B" if b_good and not a_good else "TIE"


def chat_reply(body: dict) -> str:
    """A frozen model's answer: it names the question, the seed and the sampling, so tests can tell
    which request an answer came from. A prompter's request (x inside the workflow's meta-prompt) gets
    a rewrite of x between <prompt> tags, as a trained prompter served by its own server gives one."""
    question = body["messages"][-1]["content"]
    quoted = ORIGINAL_PROMPT.search(question)
    if quoted:
        return f"<prompt>{stub_rewrite(quoted.group(1))}</prompt>"
    return f"An answer to [{question}] (seed {body.get('seed')}, temperature {body.get('temperature')}, max {body.get('max_tokens')})"


ORIGINAL_PROMPT = re.compile(r"<original_prompt>\n(.*)\n</original_prompt>", re.DOTALL)


def stub_rewrite(prompt: str) -> str:
    return f"Answer clearly and step by step: {prompt}"


def judge_reply(stub: JudgeStub, question: str, answer_a: str, answer_b: str, malformed: bool, mt_bench: bool = False) -> str:
    echo = f"REASON: Assistant A wrote:\n{answer_a}\nAssistant B wrote:\n{answer_b}\n"
    if malformed:
        return echo + "Both have merits; I would lean one way, maybe."
    verdict = stub.verdict(question, answer_a, answer_b)
    if mt_bench:
        return echo + f"Judged on the criteria.\nFinal verdict: {MT_BENCH_VERDICT[verdict]}"
    return echo + f"Judged on the criteria.\nVERDICT: {verdict}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # the default backlog of 5 drops concurrent connects: 1 s SYN retransmits


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs: 40 ms a request

    def log_message(self, *args) -> None:
        pass

    def authorized(self) -> bool:
        """False, after sending a 401 as OpenAI does, when the stub wants a key and the request lacks it."""
        stub: JudgeStub = self.server.stub
        if stub.api_key is None or self.headers.get("Authorization") == f"Bearer {stub.api_key}":
            return True
        with stub._lock:
            stub.unauthorized += 1
        self._send(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}})
        return False

    def do_GET(self) -> None:
        stub: JudgeStub = self.server.stub
        with stub._lock:
            stub.get_requests[self.path] += 1
        if not self.authorized():
            return
        if self.path != "/v1/models":
            self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
            return
        self._send(200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "stub"} for name in stub.served_models]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not self.authorized():
            return
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
            return
        prompt = "\n".join(message["content"] for message in body["messages"])
        blocks = PROMPT_BLOCKS.search(prompt)
        mt_bench = blocks is None and MT_BENCH_BLOCKS.search(prompt) is not None
        blocks = blocks or MT_BENCH_BLOCKS.search(prompt)
        stub: JudgeStub = self.server.stub
        if blocks is None and not stub.answers_chats:
            self._send(400, {"error": {"message": "no judge blocks in prompt", "type": "invalid_request_error"}})
            return
        if blocks is None:  # a frozen model's request: faults are keyed by (user turn, "")
            question = body["messages"][-1]["content"]
            fault = stub.admit(question, "")
            reply = lambda malformed: chat_reply(body)  # noqa: E731
        else:
            question, answer_a, answer_b = blocks["question"], blocks["a"], blocks["b"]
            fault = stub.admit(question, answer_a)
            reply = lambda malformed: judge_reply(stub, question, answer_a, answer_b, malformed, mt_bench)  # noqa: E731
        try:
            time.sleep(stub.latency_s)
            self._respond(stub, body, fault, reply, prompt)
        finally:
            stub.leave()

    def _respond(self, stub, body, fault, reply, prompt) -> None:
        if fault == "429":
            error = {"error": {"message": "rate limited", "type": "rate_limit_error"}}
            self._send(429, error, {"Retry-After": f"{stub.retry_after_s:g}"})
        elif fault == "500":
            self._send(500, {"error": {"message": "server error", "type": "server_error"}})
        elif fault == "503":
            self._send(503, {"error": {"message": "service unavailable", "type": "server_error"}})
        elif fault == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
        elif fault == "no_choices":
            self._send(200, completion(body["model"], "", prompt) | {"choices": []})
        elif fault == "null_content":
            reply = completion(body["model"], "", prompt)
            reply["choices"][0]["message"]["content"] = None
            self._send(200, reply)
        elif fault == "not_json":
            self._send_raw(200, b'{"id": "chatcmpl-stub", "choices": [', "application/json")
        elif fault == "html":
            self._send_raw(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
        else:
            if fault == "timeout":
                time.sleep(stub.hang_s)
            if body.get("stream"):  # server-sent events, a chunk per word, as the API streams
                events = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks(body["model"], reply(fault == "malformed")))
                self._send_raw(200, (events + "data: [DONE]\n\n").encode(), "text/event-stream")
                return
            self._send(200, completion(body["model"], reply(fault == "malformed"), prompt))

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_raw(self, status: int, data: bytes, content_type: str, headers: dict | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def completion(model: str, content: str, prompt: str) -> dict:
    """A chat.completion body with usage counted in words, so token counts are deterministic."""
    prompt_tokens, completion_tokens = len(prompt.split()), len(content.split())
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }


def chunks(model: str, content: str) -> list[dict]:
    """A streamed chat completion: chat.completion.chunk bodies, a word each, then the finish."""
    words = content.split(" ")
    pieces = [word if index == 0 else " " + word for index, word in enumerate(words)]

    def chunk(delta: dict, finish: str | None) -> dict:
        return {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    return [chunk({"role": "assistant", "content": piece}, None) for piece in pieces] + [chunk({}, "stop")]


def kill_after_requests(stub: JudgeStub, script: str, *args: str, requests: int) -> None:
    """Run `python -c script args` and SIGKILL it once the stub has seen `requests` requests: a job
    killed half way (a node lost, a wall time hit)."""
    child = subprocess.Popen([sys.executable, "-c", script, *args], env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.monotonic() + 60
    while stub.total_requests < requests and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL, f"the child ended on its own (exit {child.returncode})"
