"""The frozen model as a black box: an OpenAI-compatible API answering where local weights would, with
the local generators' `.chat(conversations, sampling)`, through alignpro.api's client and cache."""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass

from alignpro.api import APISettings, Budget, CallCache, ChatClient, cache_key
from alignpro.sampling import Completion, Sampling
from alignpro.progress import progress_bar
from alignpro.settings import from_section

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrozenAPISettings(APISettings):
    """A frozen model behind an OpenAI-compatible API (a `models.frozen.<name>.api` entry): where it is,
    what it may cost, where its answers are cached, and whether requests carry a seed (OpenAI's and
    vLLM's servers take one; some providers refuse it)."""

    model: str = ""
    cache: str = "results/cache/frozen.sqlite"
    send_seed: bool = True

    @classmethod
    def from_config(cls, section: dict, name: str) -> FrozenAPISettings:
        settings = from_section(cls, section, name)
        if not settings.model:
            raise ValueError(f"config {name}.model: the API's name for the model is required")
        return settings

    @classmethod
    def of(cls, model) -> FrozenAPISettings:
        """The settings of a model spec's `api` section (alignpro.model_spec.ModelSpec), named after its entry."""
        return cls.from_config(model.api, f"{model.label}.api")


def answer_key(settings: FrozenAPISettings, messages: list[dict], sampling: Sampling, sample_index: int, extra: str | None) -> str:
    """sha256 of everything that determines one sampled answer: the endpoint and model, the messages,
    the sampling, which sample it is, and `extra` (in training, the step and the rollout's position,
    so that a rewrite repeated at a later step gets a fresh answer and a resumed run the same one)."""
    fields = {
        "base_url": settings.base_url,
        "model": settings.model,
        "messages": messages,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "seed": sampling.seed if settings.send_seed else None,
        "sample_index": sample_index,
        "extra": extra,
    }
    return cache_key(fields)


class APIAnswersMissing(RuntimeError):
    """Some answers could not be had after every retry; those that were are in the cache."""


def request_seed(key: str) -> int:
    """The seed a request carries, taken from its whole cache key (the sampling seed, the sample and, in
    training, the step and rollout): a seeded server gives a rewrite repeated at a later step or in
    another rollout a fresh draw, y ~ frozen(x'), and the same call the same one."""
    return int(key[:8], 16) & 0x7FFFFFFF


class APIGenerator:
    """The frozen model behind an API, with the `.chat(conversations, sampling)` of the local generators.

    Each of the `sampling.n` answers to a conversation is one request (n=1, seeded from its cache key
    where the server takes a seed), all sent concurrently up to `concurrency`, each stored in the cache
    the moment it returns; identical calls in one `.chat` are sent once. A call returns every answer or
    raises APIAnswersMissing: a table with answers missing is never written, and a rerun pays only for
    the rest.
    """

    def __init__(self, settings: FrozenAPISettings, *, name: str, role: str = "frozen model"):
        self.settings = settings
        self.name = name
        self.who = f"{role} {name}"  # as logs and errors name it (alignpro serve's prompter can be an API too)
        self.usage = {"requests": 0, "cached": 0, "repeated": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
        # One event loop, client, budget and cache for the generator's life (a job): PPO calls it once
        # a step, and keeping the client keeps its connections open from one step to the next.
        self.loop = asyncio.new_event_loop()
        self.client = ChatClient(settings, Budget(settings), who=self.who)  # fails here without the key
        self.cache = CallCache(settings.cache)
        weakref.finalize(self, _close, self.loop, self.client, self.cache)

    def chat(self, conversations: list[list[dict]], sampling: Sampling, keys: list[str] | None = None) -> list[list[Completion]]:
        """`sampling.n` completions per conversation, in input order; `keys` (one per conversation)
        name the calls in the cache beyond their content (PPO: the step and rollout)."""
        answers = self.loop.run_until_complete(self._chat(conversations, sampling, keys))
        log.info(self.usage_line())
        return answers

    async def _chat(self, conversations, sampling, keys):
        extras = keys or [None] * len(conversations)
        calls = [
            (answer_key(self.settings, messages, sampling, index, extra), messages)
            for messages, extra in zip(conversations, extras)
            for index in range(sampling.n)
        ]
        unique = dict(calls)  # key -> messages, once per key (a key includes the messages)
        self.usage["repeated"] += len(calls) - len(unique)
        failures: list[str] = []
        progress = progress_bar(total=len(unique), desc=f"answering with {self.settings.model}", unit="answer")

        async def answer(key: str, messages: list[dict]) -> Completion | None:
            call = self.cache.get(key)
            if call is None:
                seed = {"seed": request_seed(key)} if self.settings.send_seed else {}
                attempted = await self.client.complete(
                    messages, max_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p, **seed
                )
                self.usage["requests"] += attempted.requests
                call = attempted.call
                if call is None:
                    failures.append(attempted.failure)
                    progress.update()
                    return None
                self.cache.put(key, self.settings.model, call)
                self.usage["prompt_tokens"] += call.prompt_tokens
                self.usage["completion_tokens"] += call.completion_tokens
                self.usage["cost_usd"] += call.cost_usd or 0.0
            else:
                self.usage["cached"] += 1
            progress.update()
            finish_reason = "length" if call.finish_reason == "length" else "stop"
            return Completion(call.content, finish_reason, call.completion_tokens)

        try:
            answered = dict(zip(unique, await asyncio.gather(*(answer(key, messages) for key, messages in unique.items()))))
        finally:
            progress.close()
        answers = [answered[key] for key, _ in calls]
        if failures:
            missing = sum(answer is None for answer in answers)
            raise APIAnswersMissing(
                f"{self.who} ({self.settings.model} at {self.settings.base_url}): {missing} of "
                f"{len(answers)} answers could not be had (first: {failures[0]}). The {len(answers) - missing} "
                f"answered are cached in {self.settings.cache}: rerun to ask for the rest, paying only for them"
            )
        return [answers[start : start + sampling.n] for start in range(0, len(answers), sampling.n)]

    def usage_line(self) -> str:
        """This generator's calls so far: requests sent (retries included), answers from the cache, the
        requests' tokens and cost."""
        usage = self.usage
        cost = f"${usage['cost_usd']:.4f}" if self.settings.priced else "no cost (no prices given)"
        return (
            f"{self.who}: {usage['requests']} requests, {usage['cached']} answers from the cache, "
            f"{usage['repeated']} repeats of a call asked for once, "
            f"{usage['prompt_tokens']} / {usage['completion_tokens']} tokens in / out, {cost}"
        )


def _close(loop: asyncio.AbstractEventLoop, client: ChatClient, cache: CallCache) -> None:
    """Close what an APIGenerator holds, when it is collected or the process ends (one collected while
    an event loop runs in this thread leaves its connections to the process's end)."""
    cache.close()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        if not loop.is_closed():
            loop.run_until_complete(client.close())
            loop.close()
