"""Small models trained on the phrasing task (`alignpro.phrasing_task`): the embedded default's frozen
model, reward model and prompter.

They are trained by the workflow's model stage, seeded, on a CPU in a minute or two, each until its
held-out targets hold (`TrainingPlan`: cycles of a cosine schedule, checked at each cycle's end,
failing with the figures after the last), and saved with `save_pretrained` like any hub checkpoint,
so every later stage loads them with exactly the code that loads the paper's models: the frozen
model and the prompter are Qwen2 chat LMs with a ChatML template, the reward model a Qwen2 sequence
classifier with one label that `RewardScorer` scores.

As real models descend from a pretrained LM, the three descend from one `base` LM trained on the
task's correct answers (it learns the task's language and how to copy words, the slow part to learn
from scratch); each is then fine-tuned on its own data from `alignpro.phrasing_task`:
- `frozen` on answers that misread vague phrasings (`MISREAD_RATE`);
- `reward` (the base's layers under a new score head) on graded answers;
- `prompter` on paraphrases, in the rewrite stage's meta-prompt conversation.
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
)

from alignpro import phrasing_task as task
from alignpro.atomic import atomic_directory
from alignpro.progress import progress_bar
from alignpro.reward import encode_conversation
from alignpro.rewrite import extract_rewrite, prompter_conversation
from alignpro.task_plans import PLANS, ROLES, TASKS, TRAINING_CARD, TrainingPlan
from alignpro.tinymodels import IM_END, PAD_TOKEN, train_tokenizer

log = logging.getLogger(__name__)

HEAD_DIM = 64  # vLLM's attention kernels support a fixed set of head sizes; 64 is one
HIDDEN_SIZE = 128
INTERMEDIATE_SIZE = 256
LAYERS = 2
VOCAB_SIZE = 600
MAX_LENGTH = 512


class TargetsMissed(RuntimeError):
    """A role's held-out targets still failed after its last training cycle."""


def tokenizer_texts() -> list[str]:
    """Every kind of text the task models read or write: prompts, answers (right and wrong), and the
    prompter's meta-prompt conversation with a tagged rewrite."""
    rng = random.Random(0)
    texts = []
    for _ in range(2000):
        instance = task.random_instance(rng)
        texts += [instance.prompt, instance.reference, task.graded_answer(instance, rng)[0]]
    for _ in range(20):
        instance = task.random_instance(rng)
        texts.append(prompter_conversation(instance.prompt)[0]["content"])
        texts.append(f"<prompt>{task.paraphrase(instance, rng).prompt}</prompt>")
    return texts + ["user", "assistant", "system"]


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    return train_tokenizer(tokenizer_texts(), VOCAB_SIZE).backend_tokenizer.to_str()


def task_tokenizer() -> PreTrainedTokenizerFast:
    """The byte-level BPE all task models share, learnt from `tokenizer_texts` (a fresh copy)."""
    from tokenizers import Tokenizer

    from alignpro.tinymodels import chat_tokenizer

    return chat_tokenizer(Tokenizer.from_str(_tokenizer_json()))


def base_config(tokenizer) -> Qwen2Config:
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HIDDEN_SIZE // HEAD_DIM,
        num_key_value_heads=HIDDEN_SIZE // HEAD_DIM,
        max_position_embeddings=MAX_LENGTH,
        tie_word_embeddings=True,
        bos_token_id=pad_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=pad_id,
        dtype="float32",
    )


# --------------------------------------------------------------------------------------------------
# Training examples
# --------------------------------------------------------------------------------------------------

PLACEHOLDER = "\x00"


@functools.lru_cache(maxsize=8)
def _chat_format(tokenizer, kind: str) -> tuple[tuple[int, ...], str]:
    """The chat template rendered around a placeholder, split into the token ids of the part before
    the prompt (the same for every example) and the text after it: examples are then formatted by
    string substitution, and the shared part is encoded once, not once per example.

    `kind` "prompter" is the rewrite meta-prompt around the prompt, anything else a plain user turn.
    """
    if kind == "prompter":
        conversation = prompter_conversation(PLACEHOLDER)
    else:
        conversation = [{"role": "user", "content": PLACEHOLDER}]
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    before, after = text.split(PLACEHOLDER)
    return tuple(tokenizer(before, add_special_tokens=False)["input_ids"]), after


@dataclass
class ChatBatch:
    """LM training examples that share a first part (`prefix`, token ids): per example the rest of
    the input ids and their labels (-100 where no loss is taken)."""

    prefix: tuple[int, ...]
    input_ids: list[list[int]]
    labels: list[list[int]]


def chat_batch(tokenizer, kind: str, pairs: list[tuple[str, str]]) -> ChatBatch:
    """(prompt, answer) pairs in the chat format generation later sees, the loss on the answer and its
    closing end-of-turn only; one tokenizer call for the whole batch."""
    prefix, after = _chat_format(tokenizer, kind)
    end = tokenizer.convert_tokens_to_ids(IM_END)
    encoded = tokenizer(
        [prompt + after for prompt, _ in pairs] + [answer for _, answer in pairs], add_special_tokens=False
    )["input_ids"]
    prompts, answers = encoded[: len(pairs)], encoded[len(pairs) :]
    return ChatBatch(
        prefix,
        [p + a + [end] for p, a in zip(prompts, answers)],
        [[-100] * len(p) + a + [end] for p, a in zip(prompts, answers)],
    )


def base_batch(tokenizer, rng: random.Random, size: int) -> ChatBatch:
    instances = [task.random_instance(rng) for _ in range(size)]
    return chat_batch(tokenizer, "answer", [(i.prompt, i.reference) for i in instances])


def frozen_batch(tokenizer, rng: random.Random, size: int) -> ChatBatch:
    instances = [task.random_instance(rng) for _ in range(size)]
    return chat_batch(tokenizer, "answer", [(i.prompt, task.frozen_answer(i, rng)) for i in instances])


def prompter_batch(tokenizer, rng: random.Random, size: int) -> ChatBatch:
    instances = [task.random_instance(rng) for _ in range(size)]
    pairs = [(i.prompt, f"<prompt>{task.paraphrase(i, rng).prompt}</prompt>") for i in instances]
    return chat_batch(tokenizer, "prompter", pairs)


def reward_batch(tokenizer, rng: random.Random, size: int) -> list[tuple[list[int], float]]:
    """(token ids as `RewardScorer` encodes the pair, grade) examples."""
    examples = []
    for _ in range(size):
        instance = task.random_instance(rng)
        answer, grade = task.graded_answer(instance, rng)
        examples.append((encode_conversation(tokenizer, instance.prompt, answer, MAX_LENGTH), grade))
    return examples


def pad(sequences: list[list[int]], value: int) -> torch.Tensor:
    width = max(map(len, sequences))
    return torch.tensor([list(sequence) + [value] * (width - len(sequence)) for sequence in sequences])


def lm_loss(model, tokenizer, batch: ChatBatch) -> torch.Tensor:
    """Next-token loss on the labelled tokens. The shared prefix runs once, as a batch of one, and its
    keys and values are repeated for every example: the rewrite meta-prompt is most of a prompter
    example, so this makes its training several times cheaper, with the same loss."""
    prefix = model(input_ids=torch.tensor([batch.prefix]), use_cache=True).past_key_values
    prefix.batch_repeat_interleave(len(batch.input_ids))
    attention = torch.cat(
        [
            torch.ones(len(batch.input_ids), len(batch.prefix), dtype=torch.long),
            pad([[1] * len(ids) for ids in batch.input_ids], 0),
        ],
        dim=1,
    )
    logits = model(input_ids=pad(batch.input_ids, tokenizer.pad_token_id), attention_mask=attention, past_key_values=prefix).logits
    labels = pad(batch.labels, -100)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def reward_loss(model, tokenizer, examples: list[tuple[list[int], float]]) -> torch.Tensor:
    """Binary cross-entropy of the score (a logit) against each answer's grade."""
    ids, grades = zip(*examples)
    scores = model(input_ids=pad(ids, tokenizer.pad_token_id), attention_mask=pad([[1] * len(s) for s in ids], 0)).logits[:, 0]
    return F.binary_cross_entropy_with_logits(scores, torch.tensor(grades, dtype=scores.dtype))


@dataclass
class Check:
    """The held-out figures after `step` training steps (the end of a cycle) and the targets they missed."""

    step: int
    loss: float
    metrics: dict[str, float]
    missed: list[str]


def train_until_targets(
    model, plan: TrainingPlan, next_batch: Callable[[], object], loss_fn: Callable, evaluate: Callable, desc: str
) -> tuple[list[float], list[Check]]:
    """Train `model` by `plan` until its targets hold at a cycle's end; the loss of every step and
    every check. `evaluate(model)` gives the held-out figures; it runs under a fixed torch seed of its
    own, so checks neither perturb training nor differ between calls. Raises `TargetsMissed`, naming
    the figures of every check, when the last cycle ends with a target missed."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, plan.learning_rate_factor)
    losses: list[float] = []
    checks: list[Check] = []
    with progress_bar(total=plan.cycle_steps, desc=desc, unit="step") as progress:
        for cycle in range(plan.max_cycles):
            model.train()
            for _ in range(plan.cycle_steps):
                loss = loss_fn(model, next_batch())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                progress.update(1)
            model.eval()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                metrics = evaluate(model)
            recent = losses[-20:]
            check = Check(len(losses), round(sum(recent) / len(recent), 4), metrics, [str(t) for t in plan.targets if not t.met(metrics)])
            checks.append(check)
            log.info(
                "%s cycle %d/%d, step %d: loss %.4f, %s; %s",
                desc, cycle + 1, plan.max_cycles, check.step, check.loss, json.dumps(metrics),
                f"missed {'; '.join(check.missed)}" if check.missed else "targets met",
            )
            if not check.missed:
                return losses, checks
            if cycle + 1 < plan.max_cycles:
                progress.total += plan.cycle_steps
                progress.refresh()
    figures = "; ".join(f"step {c.step}: loss {c.loss}, {json.dumps(c.metrics)}" for c in checks)
    raise TargetsMissed(f"{desc}: after {len(losses)} steps ({plan.max_cycles} cycles) still missed {'; '.join(checks[-1].missed)} (held-out figures by check: {figures})")


# --------------------------------------------------------------------------------------------------
# Evaluation on fresh instances (recorded in the training card)
# --------------------------------------------------------------------------------------------------


@torch.inference_mode()
def chat(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, sample: bool) -> list[str]:
    """Answers decoded greedily, or sampled at temperature 1 with top_p 0.9 (the embedded default's
    generation settings)."""
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    inputs = tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True)
    tokenizer.padding_side = "right"
    options = {"do_sample": True, "temperature": 1.0, "top_p": 0.9, "top_k": 0} if sample else {"do_sample": False}
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **options)
    return tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def _accuracy(instances: list[task.Instance], answers: list[str]) -> dict[str, float]:
    right = Counter()
    total = Counter()
    for instance, answer in zip(instances, answers):
        kind = "clear" if instance.is_clear else "vague"
        total[kind] += 1
        right[kind] += answer.strip() == instance.reference
    return {f"sampled_accuracy_{kind}": round(right[kind] / total[kind], 3) for kind in sorted(total)}


def balanced_instances(rng: random.Random, per_kind: int) -> list[task.Instance]:
    """`per_kind` clear and `per_kind` vague instances: a clear-prompt accuracy read off one prompt
    in five of a random set would be too noisy to train to."""
    kinds: dict[bool, list[task.Instance]] = {True: [], False: []}
    while min(map(len, kinds.values())) < per_kind:
        instance = task.random_instance(rng)
        if len(kinds[instance.is_clear]) < per_kind:
            kinds[instance.is_clear].append(instance)
    return kinds[True] + kinds[False]


def evaluate_answers(model, tokenizer, rng: random.Random, per_kind: int) -> dict[str, float]:
    instances = balanced_instances(rng, per_kind)
    answers = chat(model, tokenizer, [[{"role": "user", "content": i.prompt}] for i in instances], 16, sample=True)
    return _accuracy(instances, answers)


def evaluate_prompter(model, tokenizer, rng: random.Random, n: int) -> dict[str, float]:
    """Of sampled rewrites: how many are a phrasing of the same operation with the same words, and how
    many of those the clear phrasing."""
    instances = [task.random_instance(rng) for _ in range(n)]
    outputs = chat(model, tokenizer, [prompter_conversation(i.prompt) for i in instances], 40, sample=True)
    kept = clear = 0
    for output, instance in zip(outputs, instances):
        rewrite, _ = extract_rewrite(output, instance.prompt, "stop", fallback_on_truncation=False, max_length_ratio=8.0)
        phrasings = {instance.rephrased(p).prompt: p for p in range(len(task.OPERATIONS[instance.operation].phrasings))}
        if rewrite in phrasings:
            kept += 1
            clear += phrasings[rewrite] == 0
    return {"sampled_rewrites_keeping_task": round(kept / n, 3), "sampled_rewrites_clear": round(clear / n, 3)}


@torch.inference_mode()
def evaluate_reward(model, tokenizer, rng: random.Random, n: int) -> dict[str, float]:
    """How often the reference outscores a wrong answer to the same prompt: the misread operation's
    answer, and the right operation on corrupted words."""
    wins = Counter()
    for _ in range(n):
        instance = task.random_instance(rng)
        operation = task.OPERATIONS[instance.operation]
        misread = task.OPERATIONS[operation.misread_as].answer(instance.words)
        wrong_words = instance.reference
        while wrong_words == instance.reference:
            wrong_words = operation.answer(task.corrupted(instance.words, rng))
        ids = [encode_conversation(tokenizer, instance.prompt, y, MAX_LENGTH) for y in (instance.reference, misread, wrong_words)]
        scores = model(input_ids=pad(ids, tokenizer.pad_token_id), attention_mask=pad([[1] * len(s) for s in ids], 0)).logits[:, 0]
        wins["misread"] += bool(scores[0] > scores[1])
        wins["wrong_words"] += bool(scores[0] > scores[2])
    return {f"pairwise_accuracy_vs_{kind}": round(count / n, 3) for kind, count in sorted(wins.items())}


# --------------------------------------------------------------------------------------------------
# The model stage
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    make_batch: Callable[[PreTrainedTokenizerFast, random.Random, int], object]
    loss: Callable
    evaluate: Callable


ROLE_TRAINING = {
    "base": Role(base_batch, lm_loss, evaluate_answers),
    "frozen": Role(frozen_batch, lm_loss, evaluate_answers),
    "reward": Role(reward_batch, reward_loss, evaluate_reward),
    "prompter": Role(prompter_batch, lm_loss, evaluate_prompter),
}


def initial_model(role: str, tokenizer, base_dir):
    """A fresh LM for `base`; the base's weights for the others (the reward model's score head new)."""
    if role == "base":
        return Qwen2ForCausalLM(base_config(tokenizer))
    if base_dir is None:
        raise ValueError(f"the {role} task model is fine-tuned from the base model: give base_dir")
    if role == "reward":
        model = Qwen2ForSequenceClassification.from_pretrained(base_dir, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
        return model
    return Qwen2ForCausalLM.from_pretrained(base_dir, dtype=torch.float32)


def train_task_model(task_name: str, role: str, out_dir, *, base_dir=None, seed: int = 0) -> pathlib.Path:
    """Train the `role` model of `task_name` with `seed` (from `base_dir` unless role is base) and
    save it, its tokenizer and its training card into `out_dir`, atomically."""
    if task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}; expected one of {TASKS}")
    if role not in ROLES:
        raise ValueError(f"unknown task model role {role!r}; expected one of {ROLES}")
    training = ROLE_TRAINING[role]
    plan = PLANS[role]
    tokenizer = task_tokenizer()
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * len(ROLES) + ROLES.index(role))
        model = initial_model(role, tokenizer, base_dir)
        data = random.Random(f"{task_name}-{role}-{seed}")
        losses, checks = train_until_targets(
            model,
            plan,
            lambda: training.make_batch(tokenizer, data, plan.batch_size),
            lambda m, b: training.loss(m, tokenizer, b),
            lambda m: training.evaluate(m, tokenizer, random.Random(f"{task_name}-{role}-{seed}-evaluation"), plan.held_out),
            f"train {role}",
        )
    seconds = time.perf_counter() - started
    float_path = torch.backends.cpu.get_cpu_capability().lower()
    log.info(
        "%s model trained in %.0f s, %d steps, on torch's %s float path: %s",
        role, seconds, len(losses), float_path, json.dumps(checks[-1].metrics),
    )
    if role != "reward":
        config = model.config
        model.generation_config = GenerationConfig(
            bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
        )
    card = {
        "task": task_name,
        "role": role,
        "seed": seed,
        "cpu_capability": float_path,
        **asdict(plan),
        "targets": [str(target) for target in plan.targets],
        "steps": len(losses),
        "seconds": round(seconds, 1),
        "final_loss": checks[-1].loss,
        **checks[-1].metrics,
        "checks": [{"step": check.step, "loss": check.loss, **check.metrics} for check in checks],
    }
    out = pathlib.Path(out_dir)
    with atomic_directory(out) as work:
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        (work / TRAINING_CARD).write_text(json.dumps(card, indent=2) + "\n")
    return out


def train_all_roles(task_name: str, root, *, seed: int = 0) -> dict[str, dict]:
    """Train every role of `task_name` into `root/<role>` in order, as the workflow's model stage
    does, and return their training cards by role (for checks and benchmarks across float paths)."""
    root = pathlib.Path(root)
    cards = {}
    for role in ROLES:
        train_task_model(task_name, role, root / role, base_dir=None if role == "base" else root / "base", seed=seed)
        cards[role] = json.loads((root / role / TRAINING_CARD).read_text())
    return cards


def main(argv: list[str] | None = None) -> None:
    """`python -m alignpro.task_models TASK ROOT [--seed N]`: train every role into ROOT and print one
    JSON line with torch's CPU float path and the training cards (what ATEN_CPU_CAPABILITY forced)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m alignpro.task_models", description=main.__doc__)
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("root", type=pathlib.Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cards = train_all_roles(args.task, args.root, seed=args.seed)
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "cards": cards}))


if __name__ == "__main__":
    main()
