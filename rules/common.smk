# Config validation and the path/grid helpers every rule file uses.
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from alignpro.datasets import check_prompt_column


validate(config, "../workflow/schemas/config.schema.yaml")

# The role of a tiny model follows from the config section it is declared in.
TINY_ROLES = {"prompters": "prompter", "frozen": "frozen", "reward": "reward"}
PROMPTERS = list(config["models"]["prompters"])
FROZEN = list(config["models"]["frozen"])
REWARD_MODEL = next(iter(config["models"]["reward"]))
DATASETS = list(config["datasets"])
METHODS = config["methods"]


def check_local_datasets():
    """Fail before any job runs when a local dataset file lacks its prompt column."""
    for name, spec in config["datasets"].items():
        if spec["source"] == "local" and spec["path"] != "bundled":
            try:
                check_prompt_column(spec["path"], spec["prompt_column"])
            except (OSError, ValueError) as error:
                raise WorkflowError(f"config datasets.{name}: {error}") from None


check_local_datasets()


def systems():
    """What answers a prompt: `base` (the frozen model alone) or `alignpro/<prompter>`."""
    names = ["base"] if "base" in METHODS else []
    if "alignpro" in METHODS:
        names += [f"alignpro/{prompter}" for prompter in PROMPTERS]
    return names


def parse_system(system):
    """`alignpro/p` -> ("alignpro", "p"); `base` -> ("base", None)."""
    method, _, prompter = system.partition("/")
    return method, prompter or None


def model_dir(kind, name):
    """Where a tiny model is built."""
    return f"results/models/{kind}/{name}"


def model_spec(kind, name):
    """The model as the stage scripts load it: path, revision, dtype, trust_remote_code."""
    spec = config["models"][kind][name]
    if spec.get("tiny"):
        return {"path": model_dir(kind, name), "revision": "main", "dtype": "float32", "trust_remote_code": False}
    return {key: spec[key] for key in ("path", "revision", "dtype", "trust_remote_code")}


def model_input(kind, name):
    """The built model directory as a job input for tiny models; hub/local models load at run time."""
    return [model_dir(kind, name)] if config["models"][kind][name].get("tiny") else []


def dataset_input(wildcards):
    spec = config["datasets"][wildcards.dataset]
    return [spec["path"]] if spec["source"] == "local" and spec["path"] != "bundled" else []


def generation_input(wildcards):
    method, prompter = parse_system(wildcards.system)
    if method == "base":
        prompts = f"results/data/{wildcards.dataset}/test.parquet"
    else:
        prompts = f"results/rewrites/{wildcards.dataset}/{prompter}.parquet"
    return {"prompts": prompts, "model": model_input("frozen", wildcards.frozen)}


def score_files():
    return [
        f"results/scores/{dataset}/{frozen}/{system}.parquet"
        for dataset in DATASETS
        for frozen in FROZEN
        for system in systems()
    ]


def final_outputs():
    return [
        "results/report/summary.parquet",
        "results/report/report.md",
        "results/report/report.html",
    ]


wildcard_constraints:
    dataset="|".join(map(re.escape, DATASETS)),
    prompter="|".join(map(re.escape, PROMPTERS)),
    frozen="|".join(map(re.escape, FROZEN)),
    kind="prompters|frozen|reward",
    system="base|alignpro/[^/]+",
