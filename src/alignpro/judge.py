"""Pairwise verdicts on a method's answers against base's, by an LLM or offline by reward (the win
rates over them are alignpro.report.statistics').

The paper's headline metric: a GPT-4 judge compares the method's answer (A) with base's answer (B)
to the same original prompt x. Here each pair is judged twice, method first and base first, and a
win or loss counts only when both orders agree (otherwise a tie, flagged inconsistent), so the
judge's position bias cannot make a method look better. The calls go through alignpro.api's client
(retries, budgets, malformed replies survived) and its cache, keyed by everything that determines the
judge's answer, so a rerun or a run killed half way never pays twice. The prompt is data
(alignpro.judge_prompts, chosen by `judges.<name>.api.prompt`). Budgets on calls and on estimated spend stop
new calls; pairs left over are kept as "not_judged", never dropped. Machines with no API use
`bradley_terry_pairs`, which decides from the reward scores alone and says so in its `judged_by` and
`judge_kind` columns.
"""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
from tqdm.auto import tqdm

from alignpro.api import APISettings, Budget, CallCache, ChatClient, CompletedCall, cache_key
from alignpro.judge_prompts import DEFAULT_PROMPT, JudgePrompt, judge_prompt, reason_of
from alignpro.settings import from_section
from alignpro.tables import JUDGE_USAGE, LLM_JUDGE, REWARD_JUDGE, SCORES, VERDICTS, SchemaError, conform

PAIRS = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("prompter", pa.string(), nullable=True),
        pa.field("beta", pa.float64(), nullable=True),
        pa.field("frozen", pa.string(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("base_answer", pa.string(), nullable=False),
        pa.field("answer_tokens", pa.int32(), nullable=False),
        pa.field("base_answer_tokens", pa.int32(), nullable=False),
    ],
    metadata={"doc": "one row per (method answer, base answer) to the same original prompt and sample index, with their lengths in tokens"},
)

SCORED_PAIRS = pa.schema(
    list(PAIRS) + [pa.field("reward", pa.float64(), nullable=False), pa.field("base_reward", pa.float64(), nullable=False)],
    metadata={"doc": "PAIRS with r(x, answer) and r(x, base_answer), for the offline Bradley-Terry judge"},
)

# What describes a run rather than its verdicts: the requests sent now and their tokens and cost.
RUN_USAGE = tuple(field.name for field in JUDGE_USAGE)
JUDGMENT_COLUMNS = [name for name in VERDICTS.names if name not in RUN_USAGE]
"""The columns a run's outcome is compared on: the same whether the calls were made now or cached."""

ORDERS = ("method_first", "base_first")
OUTCOME_OF = {  # the method's outcome from the judge's raw verdict in each order
    "method_first": {"A": "win", "B": "loss", "TIE": "tie"},
    "base_first": {"A": "loss", "B": "win", "TIE": "tie"},
}
@dataclass(frozen=True)
class JudgeSettings(APISettings):
    """The API judge: where and how to reach it (APISettings), its prompt and how it decodes."""

    prompt: str = DEFAULT_PROMPT
    temperature: float = 0.0
    max_tokens: int = 256

    @classmethod
    def from_config(cls, api: dict, judge: str) -> "JudgeSettings":
        """From the `api` section of the judge named `judge` (its `cache` path is not a setting of the calls)."""
        return from_section(cls, api, f"judges.{judge}.api", elsewhere=("cache",))

    def identity(self, name: str) -> dict:
        """The VERDICTS columns that say which judge this is: `name` is its key under `judges`."""
        return {"judge": name, "judged_by": f"{self.model} with prompt {self.prompt}", "judge_kind": LLM_JUDGE, "judge_prompt": self.prompt}

    @property
    def judge_prompt(self) -> JudgePrompt:
        return judge_prompt(self.prompt)


# ---------------------------------------------------------------------------- cache keys


def call_key(settings: JudgeSettings, question: str, answer_a: str, answer_b: str, order: str, attempt: int) -> str:
    """sha256 of everything that determines the judge's answer to one call."""
    fields = {
        "model": settings.model,
        "prompt_version": settings.prompt,
        "prompt_text": settings.judge_prompt.text,
        "question": question,
        "answer_a": answer_a,
        "answer_b": answer_b,
        "order": order,
        "attempt": attempt,
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
    }
    return cache_key(fields)


# ---------------------------------------------------------------------------- judging pairs


@dataclass
class OrderOutcome:
    """One order's raw verdict (A/B/TIE/invalid, None if not judged) with its calls' accounting:
    tokens and cost of the calls made now (cached ones are counted in cached_calls alone)."""

    raw: str | None = None
    reason: str | None = None
    not_judged_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    retries: int = 0
    cached_calls: int = 0

    def count(self, call: CompletedCall) -> None:
        self.prompt_tokens += call.prompt_tokens
        self.completion_tokens += call.completion_tokens
        self.cost_usd += call.cost_usd or 0.0


@dataclass
class JudgingRun:
    settings: JudgeSettings
    cache: CallCache
    client: ChatClient
    identity: dict  # the verdict rows' judge columns

    async def judge_order(self, question: str, answer_a: str, answer_b: str, order: str) -> OrderOutcome:
        """Judge one order; an unparsable verdict is asked again once (with a format reminder), then invalid."""
        outcome = OrderOutcome()
        for attempt in range(2):
            call = await self.cached_or_called(question, answer_a, answer_b, order, attempt, outcome)
            if call is None:
                return outcome
            verdict = self.settings.judge_prompt.parse(call.content)
            if verdict is not None:
                outcome.raw, outcome.reason = verdict, reason_of(call.content)
                return outcome
        outcome.raw, outcome.reason = "invalid", call.content
        return outcome

    async def cached_or_called(self, question, answer_a, answer_b, order, attempt, outcome) -> CompletedCall | None:
        key = call_key(self.settings, question, answer_a, answer_b, order, attempt)
        call = self.cache.get(key)
        if call is not None:
            outcome.cached_calls += 1
            return call
        attempted = await self.client.complete(
            self.settings.judge_prompt.messages(question, answer_a, answer_b, remind=attempt > 0),
            max_tokens=self.settings.max_tokens,
            temperature=self.settings.temperature,
        )
        outcome.calls += attempted.requests
        outcome.retries += max(attempted.requests - 1, 0)
        if attempted.call is None:
            outcome.not_judged_reason = attempted.failure
            return None
        self.cache.put(key, self.settings.model, attempted.call)
        outcome.count(attempted.call)
        return attempted.call

    async def judge_pair(self, pair: dict) -> dict:
        question, answer, base = pair["prompt"], pair["answer"], pair["base_answer"]
        if answer == base:
            return identical_answers_row(pair, self.identity, priced=self.settings.priced)
        method_first, base_first = await asyncio.gather(
            self.judge_order(question, answer, base, "method_first"),
            self.judge_order(question, base, answer, "base_first"),
        )
        return verdict_row(pair, self.identity, method_first, base_first, priced=self.settings.priced)


def combined_verdict(method_first: OrderOutcome, base_first: OrderOutcome) -> tuple[str, bool]:
    """The method's verdict and the inconsistency flag: a win or loss needs both orders to agree."""
    raws = (method_first.raw, base_first.raw)
    if None in raws:
        return "not_judged", False
    if "invalid" in raws:
        return "invalid", False
    first, second = OUTCOME_OF["method_first"][raws[0]], OUTCOME_OF["base_first"][raws[1]]
    return (first, False) if first == second else ("tie", True)


PAIR_COLUMNS = ("dataset", "prompt_id", "method", "prompter", "beta", "frozen", "sample_index", "answer_tokens", "base_answer_tokens")
"""What a verdict row copies from its pair."""


def verdict_row(pair: dict, judge: dict, method_first: OrderOutcome, base_first: OrderOutcome, priced: bool = True) -> dict:
    """A VERDICTS row; `judge` holds its judge, judge_kind and judge_prompt columns; cost_usd is null for a
    judge with no prices."""
    verdict, inconsistent = combined_verdict(method_first, base_first)
    both = (method_first, base_first)
    row = {
        **{name: pair[name] for name in PAIR_COLUMNS},
        **judge,
        "verdict": verdict,
        "verdict_method_first": method_first.raw,
        "verdict_base_first": base_first.raw,
        "inconsistent": inconsistent,
        "reason_method_first": method_first.reason,
        "reason_base_first": base_first.reason,
        "not_judged_reason": method_first.not_judged_reason or base_first.not_judged_reason,
        "p_method_wins": None,
        **{name: sum(getattr(outcome, name) for outcome in both) for name in RUN_USAGE},
    }
    return row if priced else row | {"cost_usd": None}


def identical_answers_row(pair: dict, judge: dict, priced: bool) -> dict:
    """Identical answers are a tie in either order; no call is paid for them (cost 0, or null, as every
    row of a judge without prices)."""
    same = OrderOutcome(raw="TIE", reason="identical answers: a tie without a call")
    return verdict_row(pair, judge, same, same, priced=priced)


async def _judge_all(pairs: list[dict], settings: JudgeSettings, cache_path, name: str) -> list[dict]:
    cache = CallCache(cache_path)
    client = ChatClient(settings, Budget(settings), who="the judge")
    progress = tqdm(total=len(pairs), desc=f"judging with {settings.model}", unit="pair", mininterval=5.0)

    async def judged(pair: dict) -> dict:
        row = await run.judge_pair(pair)
        progress.update()
        return row

    try:
        run = JudgingRun(settings, cache, client, settings.identity(name))
        return await asyncio.gather(*(judged(pair) for pair in pairs))
    finally:
        progress.close()
        await client.close()
        cache.close()


def judge_pairs(pairs: pa.Table, settings: JudgeSettings, cache_path: str | os.PathLike, *, name: str) -> pa.Table:
    """One VERDICTS row per pair, in the pairs' order, judged in both orders through the cache, by the
    judge `name` (its key under `judges`)."""
    rows = conform(pairs, PAIRS, "judge pairs").to_pylist()
    return pa.Table.from_pylist(asyncio.run(_judge_all(rows, settings, cache_path, name)), schema=VERDICTS)


# ---------------------------------------------------------------------------- offline judge


def bradley_terry_pairs(pairs: pa.Table, margin: float = 0.05, *, name: str) -> pa.Table:
    """The offline judge: P(method beats base) = sigmoid(r_method - r_base) under Bradley-Terry.

    A win needs P > 0.5 + margin, a loss P < 0.5 - margin, else a tie. The default margin 0.05 makes
    reward gaps under logit(0.55) = 0.20 ties, so noise-level reward differences are not counted as wins.
    """
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin must be in [0, 0.5), got {margin}")
    judge = {"judge": name, "judged_by": f"offline Bradley-Terry (margin {margin:g})", "judge_kind": REWARD_JUDGE, "judge_prompt": None}
    rows = []
    for pair in conform(pairs, SCORED_PAIRS, "Bradley-Terry pairs").to_pylist():
        probability = 1.0 / (1.0 + math.exp(pair["base_reward"] - pair["reward"]))
        raw = "A" if probability > 0.5 + margin else "B" if probability < 0.5 - margin else "TIE"
        reason = f"offline judge: P(method beats base) = {probability:.3f} from rewards {pair['reward']:.4g} vs {pair['base_reward']:.4g}"
        method_first = OrderOutcome(raw=raw, reason=reason)
        base_first = OrderOutcome(raw={"A": "B", "B": "A", "TIE": "TIE"}[raw], reason=reason)
        rows.append(verdict_row(pair, judge, method_first, base_first) | {"p_method_wins": probability})
    return pa.Table.from_pylist(rows, schema=VERDICTS)


def pairs_from_scores(method_scores: pa.Table, base_scores: pa.Table, samples_per_prompt: int | None = None) -> pa.Table:
    """SCORED_PAIRS: each method answer beside base's answer to the same prompt, frozen model and sample.

    With `samples_per_prompt`, only samples 0..k-1 of each prompt are paired (to bound a paid judge's
    cost). A method answer without a base answer to pair it with is an error naming the row.
    """
    keys = ["dataset", "prompt_id", "frozen", "sample_index"]
    methods = pl.from_arrow(conform(method_scores, SCORES, "method scores"))
    if samples_per_prompt is not None:
        methods = methods.filter(pl.col("sample_index") < samples_per_prompt)
    base = pl.from_arrow(conform(base_scores, SCORES, "base scores")).select(
        *keys, base_answer=pl.col("response"), base_reward=pl.col("reward"), base_answer_tokens=pl.col("num_tokens")
    )
    unpaired = methods.join(base, on=keys, how="anti")
    if unpaired.height:
        row = unpaired.row(0, named=True)
        raise SchemaError(
            f"{unpaired.height} {row['method']} answer(s) have no base answer to be judged against, e.g. "
            + ", ".join(f"{key}={row[key]!r}" for key in keys)
        )
    joined = methods.join(base, on=keys, how="inner").rename({"response": "answer", "num_tokens": "answer_tokens"})
    return conform(joined.to_arrow(), SCORED_PAIRS, "pairs from scores")
