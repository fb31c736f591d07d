"""One client for every OpenAI-compatible chat API the workflow calls: the judge, and a frozen model
reachable only as a black box.

No server fault ends a job: 429s, 5xx, timeouts and dropped connections are retried with backoff
(Retry-After honoured), and so is a reply that is malformed in any way (an HTML page where JSON was
due, no choices, no message, null content), because proxies and overloaded servers send all of
these with a 200. What still fails after the retries comes back as an `Attempted` with its failure
named, for the caller to record. Every completed call is stored in a `CallCache` (SQLite) the moment
it returns, so a killed job resumes without paying twice. A `Budget` caps requests and estimated
spend; with no prices given nothing is costed. The judge (alignpro.judge) and the frozen model's
API generator (alignpro.frozen_api) are built on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

log = logging.getLogger(__name__)

# Faults worth another try: rate limits, server errors, timeouts and dropped connections (the
# SDK's APITimeoutError is an APIConnectionError)...
RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError)
# ... but not a connection error caused by the URL itself: no retry can mend it.
BAD_URL = (httpx.UnsupportedProtocol, httpx.InvalidURL)


def describe(error: BaseException) -> str:
    """The error with the chain of causes the SDK keeps (its "Connection error." hides whether the
    connection was refused, the name did not resolve or the URL was bad)."""
    text, last, cause = f"{type(error).__name__}: {error}", None, error.__cause__
    while cause is not None:
        part = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
        if part != last:  # httpx re-raises httpcore's error under the same name and text
            text += f" (caused by {part})"
        last, cause = part, cause.__cause__
    return text


def retryable(error: BaseException) -> bool:
    return isinstance(error, (*RETRYABLE, MalformedReply, openai.APIResponseValidationError, json.JSONDecodeError)) and not isinstance(
        error.__cause__, BAD_URL
    )


class MalformedReply(Exception):
    """A 200 whose body is not a usable chat completion."""


@dataclass(frozen=True)
class APISettings:
    """How to reach an OpenAI-compatible chat endpoint and how much it may cost. Prices are USD per
    1,000 tokens; None (the default) costs nothing, and then `max_cost_usd` cannot be used."""

    model: str = "gpt-4"
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    concurrency: int = 8
    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 120.0
    max_calls: int | None = None
    max_cost_usd: float | None = None
    price_input_per_1k: float | None = None
    price_output_per_1k: float | None = None

    def __post_init__(self):
        if self.max_cost_usd is not None and not self.priced:
            raise ValueError(
                f"max_cost_usd={self.max_cost_usd} needs price_input_per_1k and price_output_per_1k: without "
                f"prices the spend on {self.model} is not known"
            )

    @property
    def priced(self) -> bool:
        return self.price_input_per_1k is not None and self.price_output_per_1k is not None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if not self.priced:
            return None
        return (prompt_tokens * self.price_input_per_1k + completion_tokens * self.price_output_per_1k) / 1000.0


@dataclass(frozen=True)
class CompletedCall:
    """One answered call, as stored in the cache."""

    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None


@dataclass
class Attempted:
    """What one logical call came to: the completion (None if refused or failed; `forward`'s: the SDK's
    response), the requests sent, and, without a completion, why ("budget", or the last error)."""

    call: CompletedCall | object | None
    requests: int
    failure: str | None = None


class CallCache:
    """Completed calls in SQLite (WAL), one row each, committed the moment the call returns.

    Rows of the judge's earlier `calls` table (the same keys) are carried over when the file is opened.
    """

    def __init__(self, path: str | os.PathLike):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # jobs running at once share one file; alignpro serve uses a cache from its worker threads, one at a time
        self.db = sqlite3.connect(path, timeout=60.0, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, model TEXT NOT NULL, content TEXT NOT NULL, "
            "finish_reason TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, "
            "cost_usd REAL, created REAL NOT NULL DEFAULT (julianday('now')))"
        )
        tables = {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "calls" in tables:
            self.db.execute(
                "INSERT OR IGNORE INTO completions (key, model, content, finish_reason, prompt_tokens, completion_tokens, "
                "cost_usd, created) SELECT key, model, content, 'stop', prompt_tokens, completion_tokens, cost_usd, created "
                "FROM calls"
            )
            self.db.execute("DROP TABLE calls")
        self.db.commit()

    def get(self, key: str) -> CompletedCall | None:
        row = self.db.execute(
            "SELECT content, finish_reason, prompt_tokens, completion_tokens, cost_usd FROM completions WHERE key = ?", (key,)
        ).fetchone()
        return CompletedCall(*row) if row else None

    def put(self, key: str, model: str, call: CompletedCall) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO completions (key, model, content, finish_reason, prompt_tokens, completion_tokens, cost_usd) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, model, call.content, call.finish_reason, call.prompt_tokens, call.completion_tokens, call.cost_usd),
        )
        self.db.commit()

    def close(self) -> None:
        self.db.close()


class Budget:
    """Hard caps on requests and spend: a request starts only if its worst-case cost still fits.

    Each started request reserves its estimated cost (input estimated at 3 characters a token,
    output at max_tokens) until it returns; then the reservation is replaced by its real cost.
    The first refusal exhausts the budget, so no call starts after it, even if a reservation frees.
    """

    def __init__(self, settings: APISettings):
        self.settings = settings
        self.started = 0
        self.committed_usd = 0.0
        self.exhausted = False

    def estimate(self, messages: list[dict], max_tokens: int) -> float:
        characters = sum(len(message["content"]) for message in messages)
        return self.settings.cost(math.ceil(characters / 3), max_tokens) or 0.0

    def try_start(self, estimate: float) -> bool:
        over_calls = self.settings.max_calls is not None and self.started >= self.settings.max_calls
        over_cost = self.settings.max_cost_usd is not None and self.committed_usd + estimate > self.settings.max_cost_usd
        self.exhausted = self.exhausted or over_calls or over_cost
        if self.exhausted:
            return False
        self.started += 1
        self.committed_usd += estimate
        return True

    def finish(self, estimate: float, actual: float | None) -> None:
        self.committed_usd += (actual or 0.0) - estimate


def cache_key(fields: dict) -> str:
    """sha256 of the JSON of everything that determines a call's answer: a CallCache key."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).hexdigest()


def retry_after_seconds(error: Exception) -> float | None:
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def api_key(settings: APISettings, who: str) -> str:
    """The key from the environment variable the settings name; a missing or empty one is an error naming it."""
    key = os.environ.get(settings.api_key_env)
    if not key:
        raise RuntimeError(f"{who}'s API key is read from ${settings.api_key_env}, which is not set")
    return key


class ChatClient:
    """Chat completions with a concurrency limit, the budget, and our own retries (the SDK's are off)."""

    def __init__(self, settings: APISettings, budget: Budget, *, who: str):
        self.settings = settings
        self.who = who
        self.budget = budget
        self.semaphore = asyncio.Semaphore(settings.concurrency)
        self.openai = openai.AsyncOpenAI(
            base_url=settings.base_url, api_key=api_key(settings, who), max_retries=0, timeout=settings.timeout_s
        )

    async def close(self) -> None:
        await self.openai.close()

    def retry_delay(self, retry: int, error: Exception) -> float:
        """Retry-After when the server sent one, else exponential backoff with full jitter."""
        retry_after = retry_after_seconds(error)
        if retry_after is not None:
            return min(retry_after, self.settings.max_retry_after_s)
        return random.uniform(0.0, min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2**retry))

    async def complete(self, messages: list[dict], *, max_tokens: int, **sampling) -> Attempted:
        """One logical call (`sampling`: temperature, top_p, seed, ... as the API names them), retried on
        429/5xx/timeouts/connection errors and malformed replies; none starts once the budget is spent."""

        async def call() -> tuple[CompletedCall, float | None]:
            response = await self.openai.chat.completions.create(
                model=self.settings.model, messages=messages, max_tokens=max_tokens, **sampling
            )
            completed = self.completed_call(response, messages)
            return completed, completed.cost_usd

        return await self._retried(call, self.budget.estimate(messages, max_tokens))

    async def forward(self, request: dict) -> Attempted:
        """A client's chat completion request as it sent it (its messages, sampling and other fields),
        to this endpoint's model, retried as `complete`: the Attempted's `call` is the SDK's response."""
        messages = request["messages"]

        async def call():
            response = await self.openai.chat.completions.create(**{**request, "model": self.settings.model, "stream": False})
            return response, self.completed_call(response, messages).cost_usd  # a reply without content is retried

        return await self._retried(call, self.budget.estimate(messages, requested_tokens(request)))

    async def stream(self, request: dict):
        """A client's request streamed: the SDK's chunks as they come. Opening the stream is retried as
        `complete`; a stream that breaks once chunks have gone out is not (the client has them)."""
        attempted = await self._retried(
            lambda: self._opened({**request, "model": self.settings.model, "stream": True}),
            self.budget.estimate(request["messages"], requested_tokens(request)),
        )
        if attempted.call is None:
            raise StreamRefused(attempted.failure)
        async with attempted.call as chunks:
            async for chunk in chunks:
                yield chunk

    async def _opened(self, request: dict):
        return await self.openai.chat.completions.create(**request), None

    async def _retried(self, call, estimate: float) -> Attempted:
        """`call()` -> (result, cost) retried on the faults worth another try, within the concurrency limit
        and the budget; the result, the requests sent, and why there is none."""
        last_error: Exception | None = None
        for retry in range(self.settings.max_retries + 1):
            async with self.semaphore:
                if not self.budget.try_start(estimate):
                    return Attempted(None, retry, "budget")
                try:
                    result, cost = await call()
                except (openai.APIError, MalformedReply, json.JSONDecodeError) as error:
                    self.budget.finish(estimate, 0.0)
                    if not retryable(error):
                        return Attempted(None, retry + 1, f"error: {describe(error)}")
                    last_error = error
                else:
                    self.budget.finish(estimate, cost)
                    return Attempted(result, retry + 1)
            if retry < self.settings.max_retries:
                delay = self.retry_delay(retry, last_error)
                log.warning(
                    "%s at %s: %s; retry %d of %d in %.1f s",
                    self.who, self.settings.base_url, describe(last_error), retry + 1, self.settings.max_retries, delay,
                )
                await asyncio.sleep(delay)
        return Attempted(None, self.settings.max_retries + 1, f"error: {describe(last_error)}")

    def completed_call(self, response, messages: list[dict]) -> CompletedCall:
        """Content, finish reason, usage and cost; usage is estimated at 4 characters a token if the
        server sent none. A reply with no choice, message or content is MalformedReply."""
        choices = getattr(response, "choices", None)
        if not choices:
            raise MalformedReply(f"a reply with no choices: {str(response)[:200]!r}")
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        if not isinstance(content, str):
            raise MalformedReply(f"a reply whose first choice has no text content: {str(choices[0])[:200]!r}")
        usage = getattr(response, "usage", None)
        if usage is None or usage.prompt_tokens is None or usage.completion_tokens is None:
            prompt_tokens = math.ceil(sum(len(message["content"]) for message in messages) / 4)
            completion_tokens = math.ceil(len(content) / 4)
        else:
            prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
        finish_reason = choices[0].finish_reason or "stop"
        return CompletedCall(content, finish_reason, prompt_tokens, completion_tokens, self.settings.cost(prompt_tokens, completion_tokens))


def requested_tokens(request: dict, default: int = 1024) -> int:
    """The answer length a client's chat request allows (max_completion_tokens, else max_tokens), `default`
    when it sets none (1,024 for the budget's estimate)."""
    return request.get("max_completion_tokens") or request.get("max_tokens") or default


class StreamRefused(RuntimeError):
    """A stream that could not be opened after the retries; the message says why."""


class EndpointUnusable(RuntimeError):
    """An endpoint that no retry can make answer: a refused key, a wrong URL, no server there."""


def probe_endpoint(settings: APISettings, who: str) -> list[str]:
    """One authenticated request to the endpoint of an API config section's settings (its model list), made before
    any job calls it, so a wrong key, URL or host stops the run naming `who`, the key's variable and
    the cause, instead of every job failing after its local work. Returns the models it serves; a
    model it does not list is only warned about (some providers list aliases differently)."""
    try:
        key = api_key(settings, who)
    except RuntimeError as error:
        raise EndpointUnusable(str(error)) from None
    client = openai.OpenAI(base_url=settings.base_url, api_key=key, max_retries=2, timeout=min(settings.timeout_s, 30.0))
    try:
        served = [model.id for model in client.models.list()]
    except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
        raise EndpointUnusable(f"{who}: {settings.base_url} refuses the key in ${settings.api_key_env}: {describe(error)}") from None
    except openai.NotFoundError as error:
        raise EndpointUnusable(
            f"{who}: {settings.base_url}/models is not found: base_url must be the API's root (OpenAI-compatible servers "
            f"end it in /v1): {describe(error)}"
        ) from None
    except openai.APIError as error:
        raise EndpointUnusable(f"{who}: {settings.base_url} cannot be reached: {describe(error)}") from None
    finally:
        client.close()
    if settings.model not in served:
        log.warning("%s: %s does not list the model %r among the %d it serves", who, settings.base_url, settings.model, len(served))
    return served
