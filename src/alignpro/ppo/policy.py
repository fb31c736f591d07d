"""The trained policy with its value head, and the rollout batch both are evaluated on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn as nn


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


def response_logits(
    lm: nn.Module, batch: RolloutBatch, *, want_hidden: bool, logits_to_keep: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits predicting each response token, [B, R, V] in float32, and the last hidden state at the
    same positions. Position t of the response is predicted from position t - 1 of the input: the
    old trainer's logits[:, :-1] against input_ids[:, 1:] (TRL v0.11 PPOTrainer.batched_forward_pass)."""
    response_length = batch.response_ids.shape[1]
    kwargs = dict(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        output_hidden_states=want_hidden,
    )
    if logits_to_keep:
        kwargs["logits_to_keep"] = response_length + 1
    output = lm(**kwargs)
    logits = output.logits[:, -(response_length + 1) : -1].float()
    hidden = output.hidden_states[-1][:, -(response_length + 1) : -1] if want_hidden else None
    return logits, hidden


class PolicyWithValueHead(nn.Module):
    """A causal LM and a value head sharing its trunk (AutoModelForCausalLMWithValueHead)."""

    def __init__(self, lm: nn.Module, value_head: ValueHead):
        super().__init__()
        self.lm = lm
        self.value_head = value_head
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        self.logits_to_keep = "logits_to_keep" in _forward_parameters(base)

    def forward(self, batch: RolloutBatch, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, R, V] / temperature, values [B, R]) for the response positions of `batch`."""
        logits, hidden = response_logits(self.lm, batch, want_hidden=True, logits_to_keep=self.logits_to_keep)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            values = self.value_head(hidden.float())
        return tempered(logits, temperature), values


def _forward_parameters(model: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1.0 else logits / temperature
