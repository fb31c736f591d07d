"""Synthetic judge verdicts whose length-controlled win rate is known, to check the report's statistics
against the truth (tests, and the coverage benchmark `benchmarks/lc_coverage.py`).

Each prompt x has an effect u_x ~ N(0, prompt_sd) shared by every method (how good base's answer to it
is), so the methods' verdicts on a prompt are correlated, as in a real run, and the report's difficulty
term has something to estimate. A method m with quality q_m answers longer than base by a normal
shift; the judge prefers the method's answer with probability

    sigmoid(q_m + u_x + length_effect · tanh((ℓ_m − ℓ_base) / length_sd))

or calls a tie with probability `tie_share`. At equal length the method's mean preference is
E_u[tie_share / 2 + (1 − tie_share) · sigmoid(q_m + u)], the length-controlled win rate's truth.
"""

from __future__ import annotations

import numpy as np

from alignpro.tables import VERDICTS

LENGTH_SD = 40.0
BASE_LENGTH, BASE_LENGTH_SD = 120.0, 25.0


def true_lc_win_pct(quality: float, *, prompt_sd: float, tie_share: float = 0.0) -> float:
    """The method's mean preference in percent at equal length, by Gauss-Hermite quadrature over u."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    wins = float(np.sum(weights / (1.0 + np.exp(-(quality + prompt_sd * nodes)))) / np.sum(weights))
    return 100.0 * (tie_share / 2.0 + (1.0 - tie_share) * wins)


def simulated_verdicts(
    seed: int,
    qualities: dict[str, float],
    *,
    prompts: int,
    samples: int,
    prompt_sd: float = 1.0,
    length_effect: float = 2.5,
    length_shift: float = 45.0,
    tie_share: float = 0.0,
) -> list[dict]:
    """VERDICTS rows of one judge on every method of `qualities` (name → q_m) against base, `samples`
    answers per prompt; every method's answers run `length_shift` tokens longer than base's on average."""
    rng = np.random.default_rng(seed)
    effects = rng.normal(0.0, prompt_sd, prompts)
    blank = {field.name: None for field in VERDICTS}
    rows = []
    for method, quality in qualities.items():
        for prompt in range(prompts):
            for sample in range(samples):
                base = max(5, round(rng.normal(BASE_LENGTH, BASE_LENGTH_SD)))
                answer = max(5, round(base + rng.normal(length_shift, LENGTH_SD)))
                logit = quality + effects[prompt] + length_effect * np.tanh((answer - base) / LENGTH_SD)
                if rng.random() < tie_share:
                    verdict, raw = "tie", ("TIE", "TIE")
                else:
                    verdict = "win" if rng.random() < 1.0 / (1.0 + np.exp(-logit)) else "loss"
                    raw = ("A", "B") if verdict == "win" else ("B", "A")
                rows.append(blank | {
                    "dataset": "simulated", "prompt_id": f"p{prompt:04d}", "method": method, "prompter": "prompter",
                    "frozen": "frozen", "sample_index": sample, "judge": "simulated", "judged_by": "a simulated judge",
                    "judge_kind": "llm", "answer_tokens": answer, "base_answer_tokens": base, "verdict": verdict,
                    "verdict_method_first": raw[0], "verdict_base_first": raw[1], "inconsistent": False,
                    "prompt_tokens": 0, "completion_tokens": 0, "calls": 0, "retries": 0, "cached_calls": 0,
                })
    return rows
