# Align-Pro: a prompter rewrites each prompt for a frozen model; a reward model scores the answers.
# Stages: models -> datasets -> sft_pairs -> sft -> ppo / rlhf -> rewrite -> generate -> score -> judge -> report.
# See README.md.
import os

from snakemake.utils import min_version, update_config

min_version("9.27")


configfile: "config/config.yaml"


# Snakemake 9.27 does not pass --replace-workflow-config on to the jobs it spawns (a cluster job
# reruns this file with --configfiles only), so a job would merge the user's config into
# config/config.yaml, which the main process discarded. The main process leaves the flag in the
# environment, which sbatch hands on to the job, and the job discards config/config.yaml too.
REPLACE_CONFIG_VARIABLE = "ALIGNPRO_REPLACE_WORKFLOW_CONFIG"
if workflow.config_settings.replace_workflow_config:
    os.environ[REPLACE_CONFIG_VARIABLE] = "1"
elif os.environ.get(REPLACE_CONFIG_VARIABLE) == "1" and workflow.config_settings.overwrite_config:
    config.clear()
    update_config(config, workflow.config_settings.overwrite_config)


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


onstart:
    check_api_endpoints(workflow.dag.needrun_jobs())


rule all:
    input:
        final_outputs(),
    default_target: True
