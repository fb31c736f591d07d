"""The trained policy with its value head, the rollout batch both are evaluated on, and the response
tokens' log-probabilities, computed without ever holding the whole response's logits.

Why chunked: the old trainer took log-probs from the model's full `[batch, tokens, vocab]` logits in
float32, plus a softmax of them for the entropy. At the paper's shape (vocab 151,936, minibatch 128,
a few hundred response tokens) that is ~10 GB of bf16 logits, 20 GB in float32 and ~40 GB of
temporaries, more than the model, its gradients and Adam's state together. Here the decoder trunk
gives its final (post-norm) hidden states, and the output head is applied to `CHUNK_TOKENS` real
response tokens at a time: each chunk's logits are cast to float32, reduced to the taken token's
log-prob (and, in the no-grad rollout pass, the entropy) and dropped. In a pass with gradients each
chunk runs under `torch.utils.checkpoint`, so backward recomputes the chunk's logits instead of
keeping them. The numbers are those of the full logits (`logprobs_from_logits` and
`entropy_from_logits` applied chunk by chunk); padding positions get 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from alignpro.ppo.maths import entropy_from_logits, logprobs_from_logits

# Response tokens per output-head chunk. At a 151,936-token vocabulary a chunk's float32 logits are
# 0.62 GB and its backward (bf16 logits, their float32 copy, the softmax gradient) about 2.5 GB at
# its peak: below what the trunk's activations take at the paper's shape, while each chunk's
# [1024 x hidden] @ [hidden x vocab] product is still large enough to keep a GPU busy.
CHUNK_TOKENS = 1024


class ValueHead(nn.Module):
    """A scalar value per position: dropout, then a linear layer on the last hidden state, in float32.
    Mirrors trl.models.modeling_value_head.ValueHead (summary_dropout_prob 0.1), but starts at zero.

    TRL keeps nn.Linear's random init. Its values then bias every advantage of the first steps by an
    amount that depends on the position, not on the reward. In the embedded default, one such step
    pushed down the prompter's near-certain first token ("<" of its "<prompt>" tag, log-prob -0.005 ->
    -5.0 in two optimizer steps), and the policy collapsed into rewrites that drop the task's words.
    A zero head makes the first advantages the discounted returns; it learns from there."""

    def __init__(self, hidden_size: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(hidden_states).to(self.summary.weight.dtype)
        return self.summary(hidden).squeeze(-1)


def disable_dropout(module: nn.Module) -> None:
    """Set every nn.Dropout's probability to 0 (PPOv2's disable_dropout_in_model); see the module doc."""
    for child in module.modules():
        if isinstance(child, nn.Dropout):
            child.p = 0.0


@dataclass
class RolloutBatch:
    """Queries left-padded and responses right-padded into one [B, Q + R] layout.

    response_ids/response_mask are [B, R]: the response tokens (EOS included when there is one) and
    1 where a token is real. Position ids count real tokens only, so padding changes nothing.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor

    def select(self, index) -> "RolloutBatch":
        return RolloutBatch(*(getattr(self, f.name)[index] for f in fields(self)))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def build_rollout_batch(
    queries: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int, device="cpu"
) -> RolloutBatch:
    """The [left-padded query | right-padded response] tensors for forward passes (TRL v0.11
    PPOTrainer.prepare_model_inputs + the response masks of batched_forward_pass)."""
    query_length = max(len(q) for q in queries)
    response_length = max(len(r) for r in responses)
    size = len(queries)
    input_ids = torch.full((size, query_length + response_length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, (query, response) in enumerate(zip(queries, responses)):
        start = query_length - len(query)
        input_ids[row, start:query_length] = torch.tensor(list(query), dtype=torch.long)
        input_ids[row, query_length : query_length + len(response)] = torch.tensor(list(response), dtype=torch.long)
        attention_mask[row, start : query_length + len(response)] = 1
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    batch = RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        response_ids=input_ids[:, query_length:].clone(),
        response_mask=attention_mask[:, query_length:].float(),
    )
    return RolloutBatch(*(getattr(batch, f.name).to(device) for f in fields(batch)))


# --------------------------------------------------------------------------------------------------
# Log-probs of the response tokens from the trunk's hidden states and the output head, chunked
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputHead:
    """A causal LM's output layer and what its forward does to the logits after it: Gemma-2's
    `final_logit_softcapping` (cap * tanh(logits / cap)), else nothing."""

    linear: nn.Module
    softcap: float | None = None

    def logits(self, hidden: torch.Tensor, temperature: float) -> torch.Tensor:
        """The float32 logits for these hidden states, divided by the sampling temperature."""
        logits = self.linear(hidden).float()
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits if temperature == 1.0 else logits / temperature

    def statistics(
        self, hidden: torch.Tensor, labels: torch.Tensor, temperature: float, entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log softmax(logits)[label] and, with `entropy`, the entropy, for [N, H] states and [N] labels."""
        logits = self.logits(hidden, temperature)
        return logprobs_from_logits(logits, labels), entropy_from_logits(logits) if entropy else None


def decoder_and_head(lm: nn.Module) -> tuple[nn.Module, OutputHead]:
    """The decoder trunk (its output's last_hidden_state is after the final norm) and the output head
    of a transformers causal LM, PEFT-wrapped or not (LoRA layers sit inside both)."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    linear = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or decoder is base or linear is None:
        raise ValueError(
            f"{type(base).__name__} does not expose a decoder trunk and an output head (get_decoder, "
            "get_output_embeddings), which PPO's chunked log-probs are computed from"
        )
    return decoder, OutputHead(linear, getattr(base.config.get_text_config(), "final_logit_softcapping", None))


def check_output_head(lm: nn.Module) -> None:
    """Refuse a model whose logits are not `decoder_and_head`'s head applied to its decoder's last hidden
    state (Cohere's logit_scale, Granite's logits_scaling, remote code doing more): PPO's log-probs would
    then not be those of the distribution generate samples from. One forward of four tokens."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    decoder, head = decoder_and_head(lm)
    ids = torch.arange(1, 5, device=next(base.parameters()).device)[None] % base.config.get_text_config().vocab_size
    training = base.training
    base.eval()  # no dropout: both forwards must see the same weights
    try:
        with torch.no_grad():
            expected = base(input_ids=ids, use_cache=False).logits.float()
            actual = head.logits(decoder(input_ids=ids, use_cache=False).last_hidden_state, 1.0)
    finally:
        base.train(training)
    # the same ops in the same dtype, but for the softcap, which the head takes in float32
    if not torch.allclose(actual, expected, rtol=1e-2, atol=1e-2 * (1.0 + expected.abs().max().item())):
        raise ValueError(
            f"{type(base).__name__}'s logits are not its output head applied to its decoder's last hidden "
            "state (a logit scale or another transform after the head?): PPO computes the response "
            "log-probs from those two and supports heads that are a linear layer, softcapped or not "
            "(Qwen2, Llama, Mistral, Phi-3, Gemma-2 and the like)"
        )


def response_hidden_states(decoder: nn.Module, batch: RolloutBatch) -> torch.Tensor:
    """The decoder's last hidden state at the positions predicting the response tokens, [B, R, H].
    Position t of the response is predicted from position t - 1 of the input: the old trainer's
    logits[:, :-1] against input_ids[:, 1:] (TRL v0.11 PPOTrainer.batched_forward_pass)."""
    output = decoder(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    response_length = batch.response_ids.shape[1]
    return output.last_hidden_state[:, -(response_length + 1) : -1]


def response_statistics(
    lm: nn.Module,
    batch: RolloutBatch,
    temperature: float = 1.0,
    *,
    entropy: bool = False,
    chunk_tokens: int = CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(log-probs, entropies or None, hidden states) of the response tokens of `batch` under `lm`.

    Log-probs and entropies are [B, R] float32, of the logits divided by `temperature`, and 0 at
    padding; the hidden states are `response_hidden_states`' [B, R, H]. The head runs over the real
    tokens `chunk_tokens` at a time, checkpointed when gradients are on (see the module doc).
    """
    decoder, head = decoder_and_head(lm)
    hidden = response_hidden_states(decoder, batch)
    mask = batch.response_mask.bool()
    states, labels = hidden[mask], batch.response_ids[mask]
    logprobs, entropies = [], []
    for start in range(0, labels.shape[0], chunk_tokens):
        chunk = (states[start : start + chunk_tokens], labels[start : start + chunk_tokens], temperature, entropy)
        if torch.is_grad_enabled():
            chunk_logprobs, chunk_entropy = checkpoint(head.statistics, *chunk, use_reentrant=False)
        else:
            chunk_logprobs, chunk_entropy = head.statistics(*chunk)
        logprobs.append(chunk_logprobs)
        entropies.append(chunk_entropy)

    def unpack(values: list[torch.Tensor]) -> torch.Tensor:
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_scatter(mask, torch.cat(values))

    return unpack(logprobs), unpack(entropies) if entropy else None, hidden


class PolicyWithValueHead(nn.Module):
    """A causal LM and a value head sharing its trunk (AutoModelForCausalLMWithValueHead)."""

    def __init__(self, lm: nn.Module, value_head: ValueHead):
        super().__init__()
        check_output_head(lm)
        self.lm = lm
        self.value_head = value_head

    def forward(
        self, batch: RolloutBatch, temperature: float = 1.0, *, entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(log-probs, values, entropies or None), each [B, R], for the response tokens of `batch`;
        see response_statistics. The value head reads the same hidden states as the output head."""
        logprobs, entropies, hidden = response_statistics(self.lm, batch, temperature, entropy=entropy)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            values = self.value_head(hidden.float())
        return logprobs, values, entropies
