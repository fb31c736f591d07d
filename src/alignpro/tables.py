"""The Parquet tables passed between workflow stages: one Arrow schema per stage, written atomically.

Every stage reads the previous stage's table with `read_table`, which checks the schema, and writes
its own with `write_table`, which writes to a temporary file beside the target and renames it, so a
killed job never leaves a half-written table that a rerun would take for finished.
"""

from __future__ import annotations

import hashlib
import os

import pyarrow as pa
import pyarrow.parquet as pq

from alignpro.atomic import atomic_file

PROMPTS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("reference", pa.string(), nullable=True),
        pa.field("category", pa.string(), nullable=True),
    ],
    metadata={
        "doc": "one prompt per row; prompt_id = prompt_id_of(prompt); source = dataset it came from; "
        "reference = the prompt's reference answer from a local file's reference_column, as text (null for "
        "datasets without one); category = its category_column (a bundled set's category), null without one"
    },
)

REWRITES = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("rewrite", pa.string(), nullable=False),
        pa.field("raw_output", pa.string(), nullable=False),
        pa.field("fallback", pa.bool_(), nullable=False),
        pa.field("fallback_reason", pa.string(), nullable=True),
        pa.field("prompter", pa.string(), nullable=False),
    ],
    metadata={
        "doc": "x -> x' per test prompt; rewrite equals prompt when fallback is true, "
        "fallback_reason is one of empty, runaway, truncated"
    },
)

STAR_CANDIDATES = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("candidate_index", pa.int32(), nullable=False),
        pa.field("rewrite", pa.string(), nullable=False),
        pa.field("raw_output", pa.string(), nullable=False),
        pa.field("fallback", pa.bool_(), nullable=False),
        pa.field("fallback_reason", pa.string(), nullable=True),
        pa.field("prompter", pa.string(), nullable=False),
        pa.field("reward_estimate", pa.float64(), nullable=False),
        pa.field("answers", pa.int32(), nullable=False),
    ],
    metadata={
        "doc": "K rewrites x' per test prompt drawn from rho_sft (candidate_index 0..K-1, fallback as in "
        "REWRITES), each with reward_estimate = the mean r(x, y) over `answers` frozen-model answers y "
        "to x', an estimate of R(x, x')"
    },
)

STAR_REWRITES = pa.schema(
    list(REWRITES)
    + [
        pa.field("beta", pa.float64(), nullable=False),
        pa.field("candidate_index", pa.int32(), nullable=False),
        pa.field("candidates", pa.int32(), nullable=False),
        pa.field("reward_estimate", pa.float64(), nullable=False),
        pa.field("kl_estimate", pa.float64(), nullable=False),
        pa.field("effective_sample_size", pa.float64(), nullable=False),
    ],
    metadata={
        "doc": "REWRITES of the closed-form prompter rho* at one beta: per test prompt, the candidate "
        "(candidate_index of `candidates` K) drawn from softmax(reward_estimate / beta), with the "
        "prompt's estimate of KL(rho* || rho_sft) and the effective sample size 1 / sum w^2 of the weights"
    },
)

RESPONSES = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("model_input", pa.string(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("finish_reason", pa.string(), nullable=False),
        pa.field("num_tokens", pa.int32(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("prompter", pa.string(), nullable=True),
        pa.field("beta", pa.float64(), nullable=True),
        pa.field("frozen", pa.string(), nullable=False),
        pa.field("fallback", pa.bool_(), nullable=True),
    ],
    metadata={
        "doc": "one row per (prompt, sample); prompt is the original x, model_input what the frozen "
        "model was given (x for base, x' for alignpro); prompter and fallback (the rewrite fell "
        "back to x) are null for base; beta is the KL coefficient of a beta-sweep PPO prompter "
        "(alignpro) or of rho* (alignpro-star), null for every other system"
    },
)

SCORES = pa.schema(
    list(RESPONSES) + [pa.field("reward", pa.float64(), nullable=False), pa.field("reward_model", pa.string(), nullable=False)],
    metadata={"doc": "the responses table with r(x, y) per row, x the ORIGINAL prompt"},
)

SUMMARY = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("prompter", pa.string(), nullable=False),
        pa.field("frozen", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("beta", pa.float64(), nullable=True),
        pa.field("n_prompts", pa.int64(), nullable=False),
        pa.field("n_samples", pa.int64(), nullable=False),
        pa.field("mean_reward", pa.float64(), nullable=False),
        pa.field("reward_variance", pa.float64(), nullable=True),
        pa.field("mean_tokens", pa.float64(), nullable=False),
        pa.field("ci_low", pa.float64(), nullable=True),
        pa.field("ci_high", pa.float64(), nullable=True),
        pa.field("accuracy", pa.float64(), nullable=True),
        pa.field("accuracy_ci_low", pa.float64(), nullable=True),
        pa.field("accuracy_ci_high", pa.float64(), nullable=True),
        pa.field("fallback_rate", pa.float64(), nullable=True),
        pa.field("kl", pa.float64(), nullable=True),
        pa.field("gap", pa.float64(), nullable=True),
        pa.field("gap_ci_low", pa.float64(), nullable=True),
        pa.field("gap_ci_high", pa.float64(), nullable=True),
    ],
    metadata={
        "doc": "one row per (dataset, prompter, frozen, method, beta); the CI is over per-prompt mean "
        "rewards; base and rlhf rows repeat for every prompter; fallback_rate is null for base; beta "
        "as in RESPONSES. accuracy is the share of sampled answers the dataset's checker accepts against "
        "the prompt's reference, with a t CI over per-prompt mean correctness clipped to [0, 1] (null for "
        "datasets without references). kl is the measured KL to the method's reference: for alignpro PPO's KL to "
        "rho_sft (mean over the last 10% of steps), for alignpro-star the mean per-prompt estimate of "
        "KL(rho* || rho_sft), 0 for sft, for rlhf its PPO KL to the frozen model, null for base. gap is "
        "J(rlhf) - J(method), the mean over prompts of the per-prompt difference of mean rewards, with "
        "a paired percentile bootstrap CI over prompts (null without rlhf). mean_tokens is the mean "
        "answer length in tokens. Win rates against base are WIN_RATES'"
    },
)

JUDGE_USAGE = [
    pa.field("prompt_tokens", pa.int64(), nullable=False),
    pa.field("completion_tokens", pa.int64(), nullable=False),
    pa.field("cost_usd", pa.float64(), nullable=True),
    pa.field("calls", pa.int64(), nullable=False),
    pa.field("retries", pa.int64(), nullable=False),
    pa.field("cached_calls", pa.int64(), nullable=False),
]
"""What a judge job's last run sent: verdict rows and win-rate rows carry it alike."""
LLM_JUDGE, REWARD_JUDGE = "llm", "reward"
"""VERDICTS' judge_kind: an LLM was asked, or the offline judge decided from the reward model's scores."""

VERDICTS = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("prompter", pa.string(), nullable=True),
        pa.field("beta", pa.float64(), nullable=True),
        pa.field("frozen", pa.string(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("judge", pa.string(), nullable=False),
        pa.field("judged_by", pa.string(), nullable=False),
        pa.field("judge_kind", pa.string(), nullable=False),
        pa.field("judge_prompt", pa.string(), nullable=True),
        pa.field("answer_tokens", pa.int32(), nullable=False),
        pa.field("base_answer_tokens", pa.int32(), nullable=False),
        pa.field("verdict", pa.string(), nullable=False),
        pa.field("verdict_method_first", pa.string(), nullable=True),
        pa.field("verdict_base_first", pa.string(), nullable=True),
        pa.field("inconsistent", pa.bool_(), nullable=False),
        pa.field("reason_method_first", pa.string(), nullable=True),
        pa.field("reason_base_first", pa.string(), nullable=True),
        pa.field("not_judged_reason", pa.string(), nullable=True),
        pa.field("p_method_wins", pa.float64(), nullable=True),
        *JUDGE_USAGE,
    ],
    metadata={
        "doc": "one row per pair, from the method's side (beta as in RESPONSES): judge is the judge's name (its key "
        "under the config's judges), judged_by what it is (the API model and prompt, or the offline judge and its "
        "margin), judge_kind is llm or reward (the offline judge, "
        "from the reward model's scores), judge_prompt the LLM judge's prompt id (alignpro.judge_prompts); answer_tokens and base_answer_tokens are the two answers' lengths; verdict is "
        "win/tie/loss/invalid/not_judged; verdict_<order> is the judge's raw A/B/TIE/invalid in that order (null: not judged; A is the "
        "answer shown first); inconsistent: both orders valid but disagreeing (counted a tie); "
        "not_judged_reason is 'budget' or 'error: ...'; p_method_wins only from the offline judge; "
        "tokens, cost, calls, retries and cached_calls describe this run: the tokens and cost of the calls "
        "made now (cost null for a judge without prices), HTTP requests sent, of which retries after "
        "429/5xx/timeout/connection errors or malformed replies, and calls answered from the cache (not costed)"
    },
)

WIN_RATES = pa.schema(
    [
        pa.field("judge", pa.string(), nullable=False),
        pa.field("judged_by", pa.string(), nullable=False),
        pa.field("judge_kind", pa.string(), nullable=False),
        pa.field("judge_prompt", pa.string(), nullable=True),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("prompter", pa.string(), nullable=True),
        pa.field("frozen", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("beta", pa.float64(), nullable=True),
        pa.field("n_pairs", pa.int64(), nullable=False),
        pa.field("n_prompts", pa.int64(), nullable=False),
        pa.field("n_decided", pa.int64(), nullable=False),
        *(
            pa.field(f"{outcome}_{statistic}", pa.float64(), nullable=True)
            for outcome in ("win", "tie", "loss", "preference", "lc_win")
            for statistic in ("pct", "ci_low", "ci_high")
        ),
        pa.field("lc_win_note", pa.string(), nullable=True),
        pa.field("mean_token_difference", pa.float64(), nullable=True),
        pa.field("inconsistent_pct", pa.float64(), nullable=True),
        pa.field("invalid_pct", pa.float64(), nullable=False),
        pa.field("not_judged_pct", pa.float64(), nullable=False),
        pa.field("decisive_readings", pa.int64(), nullable=False),
        pa.field("first_slot_pct", pa.float64(), nullable=True),
        pa.field("both_decisive", pa.int64(), nullable=False),
        pa.field("flip_pct", pa.float64(), nullable=True),
        *JUDGE_USAGE,
    ],
    metadata={
        "doc": "one row per judge job: a judge's verdicts on one (dataset, prompter, frozen, method, beta)'s "
        "answers against base (prompter null for rlhf). win/tie/loss are percentages of the n_decided pairs "
        "with percentile bootstrap CIs over prompts (null under two prompts); preference is win + half the ties, the raw "
        "rate in the units of lc_win, the length-controlled win rate (alignpro.report.judging: AlpacaEval 2's GLM, the "
        "length term set to zero) with its CI from resamples of prompts refitted (on the logit scale), null when it cannot be "
        "fitted; lc_win_note says why it is null, or why it is doubtful (far from the raw rate); mean_token_difference is the method's answers' mean length "
        "less base's over decided pairs; inconsistent_pct is of decided pairs, invalid_pct and not_judged_pct "
        "of all pairs; first_slot_pct is the share of the decisive_readings (A or B, both orders) that chose "
        "the answer shown first, flip_pct the share of the both_decisive pairs whose winner changed with the "
        "order; calls (HTTP requests, retries included), retries, cached_calls, tokens and cost describe the "
        "judge job's last run (cost null without prices)"
    },
)

_CATEGORY = pa.field("category", pa.string(), nullable=False)
CATEGORY_SUMMARY = pa.schema(
    [_CATEGORY, *SUMMARY],
    metadata={"doc": "SUMMARY over one category's test prompts alone: one row per (dataset, category, prompter, frozen, "
              "method, beta) of the categories with at least report.min_category_prompts test prompts"},
)
CATEGORY_WIN_RATES = pa.schema(
    [_CATEGORY, *WIN_RATES],
    metadata={"doc": "WIN_RATES over one category's test prompts alone, for the categories CATEGORY_SUMMARY has"},
)

SFT_PAIRS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("rewrite", pa.string(), nullable=False),
        pa.field("reward", pa.float64(), nullable=True),
        pa.field("source", pa.string(), nullable=False),
    ],
    metadata={
        "doc": "(x, x') pairs the SFT prompter is trained on; reward is the frozen-answer reward of the "
        "kept rewrite for best-of-K self-distillation (null for pairs read from a file); source is "
        "'best-of-K' or the file/hub dataset the pair came from"
    },
)

TRAINING_METRICS = pa.schema(
    [
        pa.field("step", pa.int64(), nullable=False),
        pa.field("reward_mean", pa.float64(), nullable=False),
        pa.field("reward_std", pa.float64(), nullable=True),
        pa.field("score_mean", pa.float64(), nullable=False),
        pa.field("kl", pa.float64(), nullable=False),
        pa.field("kl_coef", pa.float64(), nullable=False),
        pa.field("entropy", pa.float64(), nullable=False),
        pa.field("policy_loss", pa.float64(), nullable=False),
        pa.field("value_loss", pa.float64(), nullable=True),
        pa.field("clip_fraction", pa.float64(), nullable=True),
        pa.field("value_clip_fraction", pa.float64(), nullable=True),
        pa.field("approx_kl", pa.float64(), nullable=True),
        pa.field("response_length", pa.float64(), nullable=False),
        pa.field("missing_eos_fraction", pa.float64(), nullable=False),
        pa.field("time_policy_generation", pa.float64(), nullable=True),
        pa.field("time_reward", pa.float64(), nullable=False),
        pa.field("time_frozen_generation", pa.float64(), nullable=True),
        pa.field("time_scoring", pa.float64(), nullable=True),
        pa.field("time_update", pa.float64(), nullable=True),
        pa.field("time_step", pa.float64(), nullable=False),
        pa.field("frozen_calls", pa.int64(), nullable=True),
    ],
    metadata={
        "doc": "one row per training step of any trainer (alignpro.trainers; rlhf's PPO too): score_mean is "
        "the raw reward r (before KL penalty, clipping or whitening), reward_mean the per-sequence reward "
        "minus beta x kl (reward_std its spread, PPO only), kl the mean per-sequence sum of log(pi/pi_ref) "
        "over response tokens (GRPO: its k3 estimate), entropy the mean per-token policy entropy, clip "
        "fractions over response tokens, value_* and approx_kl PPO's only, times in seconds (time_reward = "
        "frozen generation + scoring; their split null where the reward does not report it; time_update "
        "null where the trainer does not split it from the step), frozen_calls the frozen model's answers "
        "requested from the run's start to the end of this step (null where no frozen model answers)"
    },
)


class SchemaError(ValueError):
    """A table does not have the columns or types its stage promises."""


def prompt_id_of(prompt: str) -> str:
    """A stable id from the prompt text alone, so the same prompt matches across datasets and runs."""
    return hashlib.sha256(prompt.strip().encode("utf-8")).hexdigest()[:16]


def conform(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """Select and cast `table` to `schema`, naming the first missing column or bad null."""
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise SchemaError(f"{name}: missing column(s) {missing}; has {table.column_names}")
    columns = []
    for field in schema:
        column = table.column(field.name)
        if not field.nullable and column.null_count:
            raise SchemaError(f"{name}: column {field.name!r} has {column.null_count} null value(s)")
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise SchemaError(f"{name}: column {field.name!r} is {column.type}, expected {field.type}") from error
    return pa.Table.from_arrays(columns, schema=schema)


def write_table(table: pa.Table, path: str | os.PathLike, schema: pa.Schema) -> None:
    """Write `table` as Parquet with `schema`, atomically (temporary file, then rename)."""
    table = conform(table, schema, str(path))
    with atomic_file(path) as tmp:
        pq.write_table(table, str(tmp))


def read_table(path: str | os.PathLike, schema: pa.Schema) -> pa.Table:
    """Read a stage's Parquet table and check it against the stage's schema."""
    return conform(pq.read_table(path), schema, str(path))
