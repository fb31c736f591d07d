# Align-Pro: a prompter rewrites each prompt for a frozen model; a reward model scores the answers.
# Stages: models -> datasets -> sft_pairs -> sft -> ppo / rlhf -> rewrite -> generate -> score -> judge -> report.
# See README.md.
import re

from snakemake.utils import min_version

min_version("9.27")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/datasets.smk"
include: "rules/train.smk"
include: "rules/rewrite.smk"
include: "rules/star.smk"
include: "rules/generate.smk"
include: "rules/score.smk"
include: "rules/judge.smk"
include: "rules/report.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
