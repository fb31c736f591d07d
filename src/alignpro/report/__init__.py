"""Summarize scored responses per method and write the report (Markdown, HTML, plots).

The numbers mirror the Align-Pro paper's Figures 2 and 3: the mean reward of each method, with a
confidence interval, and the variance of the reward over all sampled responses; with judge verdicts,
its Table 1: each method's win/tie/loss rate against base, length-controlled beside it, with judged
examples to read. With RLHF
answers it adds the suboptimality gap J(rlhf) − J(method) the paper bounds, and with measured KLs the
reward–KL frontier of the prompters (the PPO beta sweep and the closed-form rho*). With PPO training
runs (the Align-Pro prompters, the RLHF oracle) the report adds their training curves and a small
table per run. With reference answers (a dataset's `reference_column`) it adds each method's task
accuracy beside its mean reward, and a plot of one against the other: reward over-optimisation is
reward that rises while accuracy does not.

By role: `summary` (the numbers), `statistics` (intervals, the bootstrap, win rates), `resampling` (the
bootstrap's draws), `simulation` (synthetic judges of known truth), `judging` (the
length-controlled win rate, position bias, agreement between judges), `plots` (the figures), `render` (Markdown and HTML from one description) and `sections` (what each section says,
and `write_report`).
"""

from alignpro.report.judging import identical_answer_pairs, judge_agreement
from alignpro.report.sections import write_report
from alignpro.report.statistics import win_rates
from alignpro.report.summary import pick_examples, training_kl, star_kl, summarize, verdicts_frame

__all__ = ["identical_answer_pairs", "judge_agreement", "pick_examples", "training_kl", "star_kl", "summarize", "verdicts_frame", "win_rates", "write_report"]
