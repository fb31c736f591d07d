"""Score (prompt, response) pairs with a sequence-classification reward model, r(x, y).

The reward is always taken on the ORIGINAL prompt x, never on the rewrite x' the frozen model
saw: Align-Pro is judged by how well the answer serves what the user actually asked.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from alignpro.modeling import context_length, inference_dtype, load_tokenizer
from alignpro.progress import progress_bar
from alignpro.tables import RESPONSES, SCORES, conform

log = logging.getLogger(__name__)


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of plain text when asked for special tokens."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def encode_conversation(tokenizer, prompt: str, response: str, max_length: int) -> list[int]:
    """Token ids of the chat-formatted (prompt, response), with exactly one BOS where one belongs.

    The chat template's text is tokenized without special tokens, since templates such as Gemma's
    already start with BOS and the tokenizer would add a second one, which shifts reward scores.
    BOS is prepended only when the tokenizer would add it and the template did not.
    Truncation keeps the start (the prompt and the beginning of the response).
    """
    conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    prefix = []
    if adds_bos(tokenizer) and not text.startswith(tokenizer.bos_token):
        prefix = [tokenizer.bos_token_id]
    body = tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length - len(prefix))
    return prefix + list(body["input_ids"])


class RewardScorer:
    """A reward model loaded once, scoring batches of (x, y) pairs."""

    def __init__(
        self,
        model: str,
        *,
        revision: str = "main",
        dtype: str | torch.dtype = "auto",
        trust_remote_code: bool = False,
        batch_size: int = 16,
        max_length: int = 2048,
    ):
        config = AutoConfig.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code)
        if config.num_labels != 1:
            raise ValueError(
                f"reward model {model!r} has num_labels={config.num_labels}; a scalar reward model needs num_labels=1"
            )
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        context = context_length(config)
        if context is not None and max_length > context:
            log.warning(
                "%s: reward.max_length=%d is past its context of %d tokens; (x, y) pairs are cut at %d tokens",
                model, max_length, context, context,
            )
            max_length = context
        self.max_length = max_length
        self.tokenizer = load_tokenizer(model, revision=revision, trust_remote_code=trust_remote_code, padding_side="right")
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model,
            revision=revision,
            dtype=inference_dtype(dtype, on_gpu=self.device.type == "cuda"),
            trust_remote_code=trust_remote_code,
        )
        # The classifier reads the score at the last token that is not pad_token_id; without it,
        # padded rows would be scored at a pad position.
        self.model.config.get_text_config().pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()

    def encode(self, prompt: str, response: str) -> list[int]:
        """Token ids the reward model sees for one pair."""
        return encode_conversation(self.tokenizer, prompt, response, self.max_length)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """r(x, y) for each pair, in input order; pairs are batched by length to waste little padding."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        encoded = [self.encode(x, y) for x, y in zip(prompts, responses)]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        scores = [0.0] * len(encoded)
        with progress_bar(total=len(encoded), desc="reward", unit="pair") as progress:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                for index, value in zip(batch, self._score_batch([encoded[i] for i in batch])):
                    scores[index] = value
                progress.update(len(batch))
        return scores

    @torch.inference_mode()
    def _score_batch(self, sequences: list[list[int]]) -> list[float]:
        """Scalar head output for right-padded sequences."""
        padded = self.tokenizer.pad({"input_ids": sequences}, padding=True, return_tensors="pt").to(self.device)
        logits = self.model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        return logits[:, 0].float().tolist()


def score_responses(scorer: RewardScorer, responses: pa.Table, *, reward_model: str) -> pa.Table:
    """The responses table plus r(x, y) on the original prompt x, as a SCORES table."""
    responses = conform(responses, RESPONSES, "responses")
    rewards = scorer.score(responses.column("prompt").to_pylist(), responses.column("response").to_pylist())
    scored = responses.append_column("reward", pa.array(rewards, pa.float64()))
    scored = scored.append_column("reward_model", pa.array([reward_model] * len(rewards), pa.string()))
    return conform(scored, SCORES, "scores")
