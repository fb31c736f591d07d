"""Progress bars for long steps, silenced inside a loop that shows its own.

A PPO step answers and scores its rollouts with the same generator and scorer the evaluation stages
use; their per-call bars would print two bars per step into the training log, between PPO's own bar
and its one line per step. `nested()` silences them for the calls made inside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tqdm.auto import tqdm

_NESTED: ContextVar[bool] = ContextVar("alignpro_progress_nested", default=False)


def progress_bar(**options) -> tqdm:
    """A tqdm bar with `options` (total, desc, unit, ...), disabled inside `nested()`."""
    return tqdm(disable=_NESTED.get(), **options)


@contextmanager
def nested() -> Iterator[None]:
    """Silence the progress bars of the calls made inside (the outer loop has its own)."""
    token = _NESTED.set(True)
    try:
        yield
    finally:
        _NESTED.reset(token)
