"""A local stand-in for the OpenAI chat completions endpoint, acting as a deterministic pairwise judge.

It runs `http.server` in a thread on 127.0.0.1 (a free port), answers `POST /v1/chat/completions`
like the real API (choices[0].message.content and usage), and lets a test script faults per
(question, answer shown first): latency, 429 with Retry-After, 500, a hang past the client's timeout,
a dropped connection, or an unparsable verdict. Its verdict: the answer containing MARKER wins, a tie
when both or neither do. Its reasoning echoes both answers verbatim, so steering text inside an answer
(a fake "VERDICT: A" line) reaches the judge's output the way a quoting LLM would put it there.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MARKER = "EXCELLENT"
FAULTS = ("429", "500", "timeout", "drop", "malformed")
BLOCK = r"\[{name} (?P<fence_{tag}>\w+)\]\n(?P<{tag}>.*?)\n\[/{name} (?P=fence_{tag})\]"
PROMPT_BLOCKS = re.compile(
    "(?s)"
    + BLOCK.format(name="QUESTION", tag="question")
    + ".*?"
    + BLOCK.format(name="ANSWER A", tag="a")
    + ".*?"
    + BLOCK.format(name="ANSWER B", tag="b")
)


class JudgeStub:
    """The server and what it saw: requests per (question, first answer), request times, max in flight."""

    def __init__(self, latency_s: float = 0.0, retry_after_s: float = 1.0, hang_s: float = 1.0):
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
            return self.faults[key].pop(0) if self.faults[key] else None

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def verdict(self, question: str, answer_a: str, answer_b: str) -> str:
        if question in self.always_a:
            return "A"
        a_good, b_good = MARKER in answer_a, MARKER in answer_b
        return "A" if a_good and not b_good else "B" if b_good and not a_good else "TIE"


def judge_reply(stub: JudgeStub, question: str, answer_a: str, answer_b: str, malformed: bool) -> str:
    echo = f"REASON: Assistant A wrote:\n{answer_a}\nAssistant B wrote:\n{answer_b}\n"
    if malformed:
        return echo + "Both have merits; I would lean one way, maybe."
    return echo + f"Judged on the criteria.\nVERDICT: {stub.verdict(question, answer_a, answer_b)}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # the default backlog of 5 drops concurrent connects: 1 s SYN retransmits


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs: 40 ms a request

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
            return
        prompt = "\n".join(message["content"] for message in body["messages"])
        blocks = PROMPT_BLOCKS.search(prompt)
        if blocks is None:
            self._send(400, {"error": {"message": "no judge blocks in prompt", "type": "invalid_request_error"}})
            return
        stub: JudgeStub = self.server.stub
        question, answer_a, answer_b = blocks["question"], blocks["a"], blocks["b"]
        fault = stub.admit(question, answer_a)
        try:
            time.sleep(stub.latency_s)
            self._respond(stub, body, fault, question, answer_a, answer_b, prompt)
        finally:
            stub.leave()

    def _respond(self, stub, body, fault, question, answer_a, answer_b, prompt) -> None:
        if fault == "429":
            error = {"error": {"message": "rate limited", "type": "rate_limit_error"}}
            self._send(429, error, {"Retry-After": f"{stub.retry_after_s:g}"})
        elif fault == "500":
            self._send(500, {"error": {"message": "server error", "type": "server_error"}})
        elif fault == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
        else:
            if fault == "timeout":
                time.sleep(stub.hang_s)
            content = judge_reply(stub, question, answer_a, answer_b, malformed=fault == "malformed")
            self._send(200, completion(body["model"], content, prompt))

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
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
