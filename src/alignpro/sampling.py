"""What every generator takes and gives, whatever answers: a local backend (alignpro.generation) or an
API (alignpro.frozen_api). Its own module, so that neither of those imports the other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    """How to sample: n completions per conversation; temperature 0 means greedy decoding."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0


@dataclass(frozen=True)
class Completion:
    """One sampled answer. finish_reason is "stop" (end of sequence) or "length" (hit max_new_tokens)."""

    text: str
    finish_reason: str
    num_tokens: int
