"""The report's one seeded bootstrap over prompts, in two steps that every interval shares: which prompts
each resample draws, and the percentile interval of a statistic's values over the resamples."""

from __future__ import annotations

import numpy as np


def resampled_prompts(prompts: int, samples: int, seed: int) -> np.ndarray:
    """`samples` resamples of `prompts` prompt indices drawn with replacement, shaped (samples, prompts)."""
    return np.random.default_rng(seed).integers(0, prompts, size=(samples, prompts))


def percentile_interval(values: np.ndarray, confidence: float) -> np.ndarray:
    """(low, high) percentile interval of `values` (one value, or row of values, per resample) along the
    first axis; resamples where the statistic is undefined (NaN) are left out, NaN when it is in all."""
    if np.isnan(values).all():
        return np.full((2, *values.shape[1:]), np.nan)
    tail = 100.0 * (1.0 - confidence) / 2.0
    return np.nanpercentile(values, [tail, 100.0 - tail], axis=0)
