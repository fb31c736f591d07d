"""`alignpro serve`: a trained prompter in front of a frozen model, as an OpenAI-compatible server.

Clients change only their base URL. For each chat completion request the proxy rewrites the last user
message x into x' with the prompter (the meta-prompt and the extraction of the workflow's rewrite stage,
x itself where the rewrite falls back), then the frozen model answers the conversation with x' and the
request's own sampling settings, streamed or not. Both are model entries as in the workflow's config: the
prompter a directory the workflow wrote (loaded by the vLLM or transformers backend) or a prompter served
by its own OpenAI-compatible server (`api`); the frozen model an OpenAI-compatible endpoint (`api`, through
the project's API client: retries, concurrency limit) or local weights (`path`, generated in this process
by the backend of the `generation` section). The rewrite, the original and why it fell back, if it did,
come back in the response's `alignpro` field (with the seconds the rewrite and the frozen model took,
unstreamed), and the `x-alignpro-fallback` header. Errors are OpenAI's shape: 400 for a malformed
request, 502 when the frozen model fails after the retries, 504 when it times out, 500 when local weights
fail to generate. Each request logs one line with the two parts' seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from alignpro.api import requested_tokens
from alignpro.frozen_api import FrozenAPISettings
from alignpro.generation import GenerationSettings
from alignpro.model_spec import ModelSpec
from alignpro.progress import nested
from alignpro.rewrite import RewriteSettings, sample_rewrites
from alignpro.sampling import Sampling
from alignpro.settings import from_section

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    """The proxy's settings (a YAML file's keys, or flags). `prompter` and `frozen` are model entries as
    the workflow's config writes them: a directory (e.g. results/train/<dataset>/<frozen>/<prompter>/ppo/model)
    or `{path: ..., dtype: ...}` for weights loaded here, `{api: {base_url, model, api_key_env, ...}}` for a
    model behind an OpenAI-compatible server (its key from the environment variable it names). `rewrite` is
    the prompter's sampling as the workflow's `rewrite` section; `generation` the backend and default
    sampling of a frozen model run from local weights (the workflow's `generation` section; a request's own
    settings on top). `served_model` is the name clients ask for (the frozen model's by default); at most
    `max_concurrency` requests are rewritten or answered at once, the rest wait; the last `rewrite_cache`
    prompts' rewrites are kept."""

    prompter: str | dict
    frozen: str | dict
    rewrite: dict = field(default_factory=dict)
    generation: dict = field(default_factory=dict)
    served_model: str | None = None
    max_concurrency: int = 32
    rewrite_cache: int = 4096
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 8000

    @classmethod
    def from_config(cls, section: dict) -> ServeSettings:
        settings = from_section(cls, section, "serve")
        for model in (settings.prompter_spec(), settings.frozen_spec()):  # a bad key fails here, naming it
            if model.api is not None:
                FrozenAPISettings.of(model)
        settings.rewrite_settings(), settings.generation_settings()
        return settings

    def prompter_spec(self) -> ModelSpec:
        return ModelSpec.from_entry("serve.prompter", self.prompter)

    def frozen_spec(self) -> ModelSpec:
        return ModelSpec.from_entry("serve.frozen", self.frozen)

    def rewrite_settings(self) -> RewriteSettings:
        return RewriteSettings.from_config(self.rewrite)

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings.from_config(self.generation)


class Refused(Exception):
    """No answer for the client: the HTTP status, the message and the error type of OpenAI's shape."""

    def __init__(self, status: int, message: str, kind: str = "upstream_error", param: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param

    def body(self) -> dict:
        return error_body(self.status, str(self), self.kind, self.param)


class EndpointModel:
    """The frozen model at an OpenAI-compatible endpoint, through the project's API client (retries,
    concurrency limit): requests pass through as the client sent them, x' in place of x."""

    def __init__(self, settings: FrozenAPISettings):
        from alignpro.api import Budget, ChatClient

        self.settings = settings
        self.name = settings.model
        self.client = ChatClient(settings, Budget(settings), who=f"frozen model {settings.model}")

    def check(self, request: dict) -> None:
        """The endpoint judges the request itself."""

    async def answer(self, request: dict) -> dict:
        attempted = await self.client.forward(request)
        if attempted.call is None:
            status = 504 if "timed out" in (attempted.failure or "").lower() else 502
            where = f"the frozen model {self.settings.model} at {self.settings.base_url}"
            raise Refused(status, f"{where} failed after {attempted.requests} request(s): {attempted.failure}")
        return attempted.call.model_dump(exclude_none=True)

    async def chunks(self, request: dict):
        from alignpro.api import StreamRefused

        try:
            async for chunk in self.client.stream(request):
                yield chunk.model_dump(exclude_none=True)
        except StreamRefused as error:
            raise Refused(502, f"the frozen model failed: {error}") from None


class LocalModel:
    """The frozen model's own weights, generating in this process with a workflow generator (one request
    at a time: a loaded model is not shared between threads). A request's sampling settings (n,
    temperature, top_p, max_tokens or max_completion_tokens, seed) override the `generation` section's;
    other settings are refused with a 400 naming them, as these backends cannot honour them here."""

    SAMPLING = ("n", "temperature", "top_p", "max_tokens", "max_completion_tokens", "seed")

    def __init__(self, generator, settings: GenerationSettings, *, name: str, seed: int):
        self.generator = generator
        self.settings = settings
        self.name = name
        self.seed = seed
        self.lock = asyncio.Lock()

    def check(self, request: dict) -> None:
        unsupported = sorted(set(request) - {"messages", "stream_options", *self.SAMPLING})
        if unsupported:
            raise Refused(
                400, f"{unsupported[0]}: not supported by a frozen model run from local weights (supported: {', '.join(self.SAMPLING)})",
                "invalid_request_error", unsupported[0],
            )

    def sampling(self, request: dict) -> Sampling:
        defaults = self.settings.sampling(seed=self.seed)
        return Sampling(
            n=request.get("n") or 1,
            temperature=defaults.temperature if request.get("temperature") is None else request["temperature"],
            top_p=defaults.top_p if request.get("top_p") is None else request["top_p"],
            max_new_tokens=requested_tokens(request, default=defaults.max_new_tokens),
            seed=defaults.seed if request.get("seed") is None else request["seed"],
        )

    async def answer(self, request: dict) -> dict:
        async with self.lock:
            try:
                with nested():
                    (completions,) = await asyncio.to_thread(self.generator.chat, [request["messages"]], self.sampling(request))
            except Exception as error:
                log.exception("the frozen model %s failed to generate", self.name)
                raise Refused(500, f"the frozen model {self.name} failed to generate: {type(error).__name__}: {error}", "server_error") from error
        choices = [
            {"index": index, "message": {"role": "assistant", "content": completion.text}, "finish_reason": completion.finish_reason}
            for index, completion in enumerate(completions)
        ]
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()), "model": self.name, "choices": choices}

    async def chunks(self, request: dict):
        """The whole answer as one chunk per choice, then the chunk that ends each (the backends return
        whole answers)."""
        answer = await self.answer(request)
        chunk = {key: answer[key] for key in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
        yield chunk | {"choices": [
            {"index": choice["index"], "delta": {"role": "assistant", "content": choice["message"]["content"]}, "finish_reason": None}
            for choice in answer["choices"]
        ]}
        yield chunk | {"choices": [{"index": choice["index"], "delta": {}, "finish_reason": choice["finish_reason"]} for choice in answer["choices"]]}


def frozen_model(settings: ServeSettings) -> EndpointModel | LocalModel:
    """The frozen model the settings name: its endpoint's client, or its weights loaded here."""
    model = settings.frozen_spec()
    if model.api is not None:
        return EndpointModel(FrozenAPISettings.of(model))
    generation = settings.generation_settings()
    generator = generation.generator(model, seed=settings.seed)
    return LocalModel(generator, generation, name=model.path.rstrip("/").rsplit("/", 1)[-1], seed=settings.seed)


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
            with nested():  # no progress bar per request in the server's log
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


def build_app(settings: ServeSettings, *, prompter=None, frozen=None):
    """The FastAPI app. `prompter` (a generator with `.chat`, as the workflow's) and `frozen` (an
    EndpointModel or LocalModel) are built from the settings unless given."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    rewriting = settings.rewrite_settings()
    if prompter is None:
        prompter = rewriting.generator(settings.prompter_spec(), seed=settings.seed, role="the proxy's")
    rewriter = Rewriter(prompter, rewriting, seed=settings.seed, size=settings.rewrite_cache)
    frozen = frozen or frozen_model(settings)
    served_model = settings.served_model or frozen.name
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
        request = body.model_dump(exclude={"model", "stream"})
        try:
            frozen.check(request)
        except Refused as refused:
            return JSONResponse(refused.body(), status_code=refused.status)
        async with admitted:
            started = time.perf_counter()
            original = body.messages[users[-1]].content
            rewrite, fallback = await rewriter.rewrite(original)
            rewritten = time.perf_counter()
            request["messages"][users[-1]]["content"] = rewrite
            info = {"original": original, "rewrite": rewrite, "fallback": fallback}
            headers = {"x-alignpro-fallback": fallback or "none"}
            if body.stream:
                return StreamingResponse(_streamed(frozen, request, info, served_model), media_type="text/event-stream", headers=headers)
            try:
                answer, failure = await frozen.answer(request), None
            except Refused as refused:
                answer, failure = None, refused
            done = time.perf_counter()
        log.info(
            "rewrite %.3f s (fallback: %s), frozen model %.3f s, %s",
            rewritten - started, fallback or "none", done - rewritten, "answered" if failure is None else failure,
        )
        if failure is not None:
            return JSONResponse(failure.body(), status_code=failure.status, headers=headers)
        info["seconds"] = {"rewrite": round(rewritten - started, 4), "frozen_model": round(done - rewritten, 4)}
        return JSONResponse(answer | {"model": served_model, "alignpro": info}, headers=headers)

    return app


async def _streamed(frozen, request: dict, info: dict, served_model: str):
    """Server-sent events of the frozen model's chunks, the first one carrying the `alignpro` field; a
    failure ends the stream with an OpenAI-style error event."""
    first = True
    try:
        async for chunk in frozen.chunks(request):
            data = chunk | {"model": served_model}
            if first:
                data["alignpro"], first = info, False
            yield f"data: {json.dumps(data)}\n\n"
    except Refused as refused:
        yield f"data: {json.dumps(refused.body())}\n\n"
    yield "data: [DONE]\n\n"
