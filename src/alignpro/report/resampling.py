"""Which prompts each resample of the report's one seeded bootstrap draws: shared by the percentile
intervals (alignpro.report.statistics) and the length-controlled rate's refits (judging), which
statistics imports."""

from __future__ import annotations

import numpy as np


def resampled_prompts(prompts: int, samples: int, seed: int) -> np.ndarray:
    """`samples` resamples of `prompts` prompt indices drawn with replacement, shaped (samples, prompts)."""
    return np.random.default_rng(seed).integers(0, prompts, size=(samples, prompts))
