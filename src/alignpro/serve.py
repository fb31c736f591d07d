"""`alignpro serve`: a trained prompter in front of a frozen model, as an OpenAI-compatible server.

Clients change only their base URL. For each chat completion request the proxy rewrites the last user
message x into x' with the prompter (the meta-prompt and the extraction of the workflow's rewrite stage,
x itself where the rewrite falls back), forwards the conversation with x' and the request's own sampling
settings to the frozen model's OpenAI-compatible endpoint through the project's API client (retries,
concurrency limit), and returns the frozen model's answer, streamed or not. The rewrite, the original and
why it fell back, if it did, come back in the response's `alignpro` field (with the seconds the rewrite
and the frozen model took, unstreamed), and the `x-alignpro-fallback` header. Errors are OpenAI's shape: 400 for a malformed request, 502 when the frozen model fails after
the retries, 504 when it times out. Each request logs one line with the two parts' seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from alignpro.frozen_api import FrozenAPISettings
from alignpro.rewrite import RewriteSettings, sample_rewrites
from alignpro.settings import from_section

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    """The proxy's settings (a YAML file's keys, or flags): `prompter` is a trained prompter's directory
    (e.g. results/train/<dataset>/<frozen>/<prompter>/ppo/model), `rewrite` its sampling as the workflow's
    `rewrite` section, `frozen` the frozen model's endpoint as a frozen model's `api` section (its key from
    the environment variable it names). `served_model` is the name clients ask for (the frozen model's by
    default); at most `max_concurrency` requests are rewritten or forwarded at once, the rest wait; the
    last `rewrite_cache` prompts' rewrites are kept."""

    prompter: str
    frozen: dict
    rewrite: dict = field(default_factory=dict)
    served_model: str | None = None
    max_concurrency: int = 32
    rewrite_cache: int = 4096
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 8000

    @classmethod
    def from_config(cls, section: dict) -> ServeSettings:
        settings = from_section(cls, section, "serve")
        settings.frozen_settings(), settings.rewrite_settings()  # a bad key fails here, naming it
        return settings

    def frozen_settings(self) -> FrozenAPISettings:
        return FrozenAPISettings.from_config(self.frozen, "serve.frozen")

    def rewrite_settings(self) -> RewriteSettings:
        return RewriteSettings.from_config(self.rewrite)


class Rewriter:
    """x -> (x', why it fell back or None) with the prompter, one call at a time (a local model is not
    shared between threads), the last `size` prompts' rewrites kept."""

    def __init__(self, generator, settings: RewriteSettings, *, seed: int, size: int):
        self.generator = generator
        self.settings = settings
        self.sampling = settings.sampling(seed=seed)
        self.cache: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        self.size = size
        self.lock = asyncio.Lock()

    async def rewrite(self, prompt: str) -> tuple[str, str | None]:
        if prompt in self.cache:
            self.cache.move_to_end(prompt)
            return self.cache[prompt]
        async with self.lock:
            (sample,), = await asyncio.to_thread(
                sample_rewrites, self.generator, [prompt], self.sampling,
                fallback_on_truncation=self.settings.fallback_on_truncation, max_length_ratio=self.settings.max_length_ratio,
            )
        self.cache[prompt] = (sample.text, sample.fallback_reason)
        if len(self.cache) > self.size:
            self.cache.popitem(last=False)
        return self.cache[prompt]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str


class ChatRequest(BaseModel):
    """A chat completion request: what the proxy reads; sampling settings and the rest pass through."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[Message]
    stream: bool = False


def error_body(status: int, message: str, kind: str, param: str | None = None) -> dict:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def build_app(settings: ServeSettings, *, prompter=None, client=None):
    """The FastAPI app. `prompter` (a generator with `.chat`, as the workflow's) and `client` (an
    alignpro.api.ChatClient) are built from the settings unless given."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    from alignpro.api import Budget, ChatClient, StreamRefused
    from alignpro.model_spec import ModelSpec

    frozen = settings.frozen_settings()
    rewriting = settings.rewrite_settings()
    served_model = settings.served_model or frozen.model
    if prompter is None:
        prompter = rewriting.generator(ModelSpec("serve.prompter", settings.prompter), seed=settings.seed)
    rewriter = Rewriter(prompter, rewriting, seed=settings.seed, size=settings.rewrite_cache)
    client = client or ChatClient(frozen, Budget(frozen), who=f"frozen model {frozen.model}")
    admitted = asyncio.Semaphore(settings.max_concurrency)
    app = FastAPI(title="alignpro serve")

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"] if part != "body")
        return JSONResponse(error_body(400, f"{param}: {first['msg']}", "invalid_request_error", param), status_code=400)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served_model, "object": "model", "owned_by": "alignpro"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        users = [index for index, message in enumerate(body.messages) if message.role == "user"]
        if not users:
            return JSONResponse(error_body(400, "messages: no user message to rewrite", "invalid_request_error", "messages"), 400)
        async with admitted:
            started = time.perf_counter()
            original = body.messages[users[-1]].content
            rewrite, fallback = await rewriter.rewrite(original)
            rewritten = time.perf_counter()
            request = body.model_dump(exclude={"model", "stream"})
            request["messages"][users[-1]]["content"] = rewrite
            info = {"original": original, "rewrite": rewrite, "fallback": fallback}
            headers = {"x-alignpro-fallback": fallback or "none"}
            if body.stream:
                return StreamingResponse(_streamed(client, request, info, served_model, StreamRefused), media_type="text/event-stream", headers=headers)
            attempted = await client.forward(request)
            done = time.perf_counter()
        log.info(
            "rewrite %.3f s (fallback: %s), frozen model %.3f s, %s",
            rewritten - started, fallback or "none", done - rewritten, "answered" if attempted.call else attempted.failure,
        )
        if attempted.call is None:
            status = 504 if "timed out" in (attempted.failure or "").lower() else 502
            message = f"the frozen model {frozen.model} at {frozen.base_url} failed after {attempted.requests} request(s): {attempted.failure}"
            return JSONResponse(error_body(status, message, "upstream_error"), status_code=status, headers=headers)
        info["seconds"] = {"rewrite": round(rewritten - started, 4), "frozen_model": round(done - rewritten, 4)}
        answer = attempted.call.model_dump(exclude_none=True) | {"model": served_model, "alignpro": info}
        return JSONResponse(answer, headers=headers)

    return app


async def _streamed(client, request: dict, info: dict, served_model: str, refused):
    """Server-sent events of the frozen model's chunks, the first one carrying the `alignpro` field; an
    upstream failure ends the stream with an OpenAI-style error event."""
    first = True
    try:
        async for chunk in client.stream(request):
            data = chunk.model_dump(exclude_none=True) | {"model": served_model}
            if first:
                data["alignpro"], first = info, False
            yield f"data: {json.dumps(data)}\n\n"
    except refused as error:
        yield f"data: {json.dumps(error_body(502, f'the frozen model failed: {error}', 'upstream_error'))}\n\n"
    yield "data: [DONE]\n\n"
