# Config validation and the path/grid helpers every rule file uses.
import os
import re
from types import SimpleNamespace

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

from alignpro import api, hub, memory
from alignpro.frozen_api import FrozenAPISettings
from alignpro.generation import GenerationSettings
from alignpro.judge import JudgeSettings
from alignpro.judge_prompts import judge_prompt
from alignpro.model_spec import ModelSpec
from alignpro.config_files import check_unique_keys
from alignpro.systems import ORACLE, REFERENCE, System, grid, system_pattern, systems, training_runs
from alignpro.trainers import TRAINERS
from alignpro.task_plans import PLANS as TASK_PLANS, ROLES as TASK_ROLES
from alignpro.datasets import category_column, check_local_file, is_bundled


for configfile in workflow.configfiles:
    try:
        check_unique_keys(configfile)
    except ValueError as error:
        raise WorkflowError(f"config file {error}") from None
if "judge" in config:  # the one-judge section of earlier versions: say where it went, not only "unknown key"
    raise WorkflowError(
        "config judge: the judge section is now judges, judges by name; move it under a name, e.g. "
        "judges: {gpt4: {backend: api, api: {...}}} (the name is the verdicts' judge column)"
    )
for section, job, engine in (("rewrite", "rewrite", "prompter_engine"), ("generation", "generate", "frozen_engine")):
    if "gpu_memory_utilization" in (config.get(section) or {}).get("vllm", {}):  # where earlier versions had it
        raise WorkflowError(
            f"config {section}.vllm.gpu_memory_utilization: an engine's share of the device is set per job in "
            f"gpu_memory (e.g. gpu_memory.{job}.{engine}), so that the engines and models of one job fit together"
        )
validate(config, "../workflow/schemas/config.schema.yaml")
try:
    memory.check_plan(config["gpu_memory"])
except ValueError as error:
    raise WorkflowError(str(error)) from None

# The role of a tiny or task model follows from the config section it is declared in.
TINY_ROLES = {"prompters": "prompter", "frozen": "frozen", "reward": "reward"}
PROMPTERS = list(config["models"]["prompters"])
FROZEN = list(config["models"]["frozen"])
REWARD_MODEL = next(iter(config["models"]["reward"]))
DATASETS = list(config["datasets"])
METHODS = config["methods"]
# The frozen model's sampling inside training (see GenerationSettings.for_training).
TRAINING_GENERATION = GenerationSettings.for_training(config["generation"])


def check_local_datasets():
    """Fail before any job runs when a local dataset file lacks its prompt, reference or category column
    or has fewer rows than test_size, or a hub dataset names one (its adapter reads prompts only)."""
    for name, spec in config["datasets"].items():
        if spec["source"] != "local":
            for key, what in (("reference_column", "reference answers"), ("category_column", "categories")):
                if key in spec:
                    raise WorkflowError(
                        f"config datasets.{name}.{key}: {what} are read from local files only, and this dataset's "
                        f"source is {spec['source']!r}; drop the key, or export the dataset to a jsonl, csv or "
                        "parquet file and use source: local"
                    )
        else:
            try:
                check_local_file(
                    spec["path"], spec["prompt_column"], spec.get("reference_column"), spec["test_size"], category_column(spec)
                )
            except (OSError, ValueError) as error:
                raise WorkflowError(f"config datasets.{name}: {error}") from None


check_local_datasets()
# The checker of every dataset with reference answers: the report scores those datasets' answers.
REFERENCE_CHECKERS = {name: spec["checker"] for name, spec in config["datasets"].items() if "reference_column" in spec}


def beta_tags():
    """beta_sweep's values by the tag that names them in paths (`0.2` in `beta0.2`), each tag unique."""
    tags = {}
    for beta in config["beta_sweep"]:
        tag = f"{beta:g}"
        if tag in tags:
            raise WorkflowError(f"config beta_sweep: {tags[tag]} and {beta} both print as {tag}; make them differ in 6 digits")
        tags[tag] = float(beta)
    return tags


BETAS = beta_tags()
if "alignpro-star" in METHODS and not BETAS:
    raise WorkflowError("config methods has alignpro-star, but beta_sweep is empty: give rho* at least one beta")


# Wildcard patterns of the systems (alignpro.systems): all of them, those judged against base, and
# those whose rewrites come from a trained prompter's rewrite job.
SYSTEM_PATTERN = system_pattern()
JUDGED_SYSTEM_PATTERN = system_pattern(lambda method: method.name != REFERENCE)
PROMPTER_SYSTEM_PATTERN = system_pattern(lambda method: method.rewrites == "prompter")


# Every system of the config (alignpro.systems), and every (dataset, frozen, system) cell evaluated.
SYSTEMS = systems(METHODS, PROMPTERS, list(BETAS))
GRID = grid(DATASETS, FROZEN, SYSTEMS)


def system_of(wildcards):
    """The System a job's `system` wildcard names."""
    return System.parse(wildcards.system)


def beta_of(system):
    """The beta of a system, as configured (its tag only prints it)."""
    return None if system.beta_tag is None else BETAS[system.beta_tag]


def engine_sampling(section, job, engine):
    """A sampling section (rewrite, generation) as `job`'s `engine` starts with it: with the vllm backend,
    its engine takes its share of the device in the memory plan (gpu_memory)."""
    return memory.with_engine_share(section, config["gpu_memory"], job, engine)


def trainer_of_run(run):
    """The trainer (alignpro.trainers) whose run directory `run` is (`ppo`, `ppo-beta0.1`)."""
    return next(trainer for trainer in TRAINERS.values() if re.fullmatch(trainer.run_pattern(), run))


def run_settings(wildcards):
    """A trainer's config section as one of its runs trains with it: a sweep run fixes the KL coefficient
    at its beta."""
    trainer = trainer_of_run(wildcards.run)
    tag = trainer.beta_tag(wildcards.run)
    return trainer.settings(config[trainer.name], None if tag is None else BETAS[tag])


def model_dir(kind, name):
    """Where a tiny model is built."""
    return f"results/models/{kind}/{name}"


def standin_dir(kind, name):
    """Where the stand-in of a model is built."""
    return f"results/standins/{kind}/{name}"


def task_model_dir(task, role):
    """Where the workflow trains the `role` model of a bundled task (`base` is the others' origin)."""
    return f"results/task_models/{task}/{role}"


# The cache hub models are fetched into (models.cache_dir, else huggingface_hub's default), absolute.
HUB_CACHE = hub.cache_root(config["models"]["cache_dir"])


def model_source(kind, name, weights=False):
    """`tiny` (built here with random weights), `task` (trained here on a bundled task), `standin` (a
    stand-in of the model at `path`, built here), `local` (an existing directory), `pinned` (a hub id at a commit: fetched once into HUB_CACHE by the fetch_model
    job), `hub` (a hub id at a branch or tag: each job resolves and loads it itself) or `api` (a frozen
    model behind an API). With `weights`, an API model's is that of the local weights its `path`
    names (what rlhf trains)."""
    spec = config["models"][kind][name]
    if "api" in spec and not weights:
        return "api"
    if spec.get("tiny"):
        return "tiny"
    if "task" in spec:
        return "task"
    if spec.get("standin"):
        return "standin"
    if os.path.isdir(spec["path"]):
        return "local"
    return "pinned" if hub.is_commit(spec["revision"]) else "hub"


def built_model_dir(kind, name):
    """The directory the workflow builds (tiny, standin) or trains (task) model `name` of section `kind` in."""
    spec = config["models"][kind][name]
    if spec.get("standin"):
        return standin_dir(kind, name)
    return model_dir(kind, name) if spec.get("tiny") else task_model_dir(spec["task"], TINY_ROLES[kind])


def hub_entry(wildcards):
    """The config entry of the model that a fetch_model job fetches."""
    return config["models"][wildcards.kind][wildcards.name]


def fetch_marker(kind, name):
    """What the fetch_model job writes for a pinned hub model (the snapshot itself is in HUB_CACHE)."""
    return f"results/hub/{kind}/{name}.json"


def model_spec(kind, name, weights=False):
    """The model as the stage scripts load it (alignpro.model_spec.ModelSpec, as params): the weights'
    directory or hub id with revision, dtype and trust_remote_code, or an API model's `api` settings.
    A pinned hub model is loaded from its snapshot directory in the cache, so jobs need no hub access.
    `weights` as in model_source."""
    spec = config["models"][kind][name]
    source = model_source(kind, name, weights)
    label = f"models.{kind}.{name}"
    if source == "api":
        model = ModelSpec(label, api=spec["api"])
    elif source in ("tiny", "task"):
        model = ModelSpec(label, built_model_dir(kind, name), dtype="float32")
    elif source == "standin":
        model = ModelSpec(label, built_model_dir(kind, name), dtype=spec["dtype"], trust_remote_code=spec["trust_remote_code"])
    else:
        path = hub.snapshot_dir(HUB_CACHE, spec["path"], spec["revision"]) if source == "pinned" else spec["path"]
        model = ModelSpec(label, path, spec["revision"], spec["dtype"], spec["trust_remote_code"])
    return model.as_params()


def trained_spec(kind, name, path):
    """A model the workflow trained from model `name`: its directory, loaded like its origin."""
    return {**model_spec(kind, name, weights=True), "path": path, "revision": "main"}


def model_input(kind, name, weights=False):
    """What a job that loads the model waits for: the built directory of a tiny model, the fetch record
    of a pinned hub model; nothing for local directories, unpinned hub models and API models."""
    source = model_source(kind, name, weights)
    if source in ("tiny", "task", "standin"):
        return [built_model_dir(kind, name)]
    if source == "pinned":
        return [fetch_marker(kind, name)]
    return []


def check_api_models():
    """Only a frozen model can be an API; rlhf trains the frozen model, so it needs local weights."""
    for kind in ("prompters", "reward"):
        for name, spec in config["models"][kind].items():
            if "api" in spec:
                raise WorkflowError(
                    f"config models.{kind}.{name}.api: only a frozen model can be called through an API; the "
                    f"{TINY_ROLES[kind]} needs local weights"
                )
    for name, spec in config["models"]["frozen"].items():
        if "api" in spec and "rlhf" in METHODS and "path" not in spec:
            raise WorkflowError(
                f"config models.frozen.{name}: methods has rlhf, which PPO-tunes the frozen model's weights, but "
                f"{name} is an API model ({spec['api']['model']}); give its local weights as `path` (and revision) "
                "beside `api`, or drop rlhf from methods"
            )


check_api_models()


def check_hub_models():
    """Say at start which hub models are not fetched ahead, and which fetched ones left the cache."""
    for kind in TINY_ROLES:
        for name, spec in config["models"][kind].items():
            if "api" in spec and "path" not in spec:
                continue
            source = model_source(kind, name, weights=True)
            if source == "hub":
                logger.warning(
                    f"config models.{kind}.{name}: revision {spec['revision']!r} of {spec['path']} is not a commit, so it "
                    "is not fetched ahead: every job that loads it resolves it on the hub (compute nodes need the "
                    "internet, and a moved branch changes the results). Pin revision to a 40-character commit sha to "
                    f"fetch it once into {HUB_CACHE}."
                )
            elif source == "pinned" and os.path.isfile(fetch_marker(kind, name)):
                snapshot = model_spec(kind, name, weights=True)["path"]
                if not os.path.isfile(os.path.join(snapshot, "config.json")):
                    logger.warning(
                        f"config models.{kind}.{name}: {spec['path']}@{spec['revision']} was fetched "
                        f"({fetch_marker(kind, name)}) but is no longer in {snapshot}: jobs loading it will fail. "
                        f"Restore it with `hf download {spec['path']} --revision {spec['revision']} --cache-dir "
                        f"{HUB_CACHE}`, or delete {fetch_marker(kind, name)} to fetch it again (this reruns the jobs "
                        "that use it)."
                    )


check_hub_models()


def train_dir(wildcards):
    """Training outputs of one (dataset, frozen, prompter)."""
    return f"results/train/{wildcards.dataset}/{wildcards.frozen}/{wildcards.prompter}"


def trained_model(wildcards):
    """The model directory a system answers (rlhf) or rewrites (sft, alignpro, its sweep) with."""
    system = system_of(wildcards)
    trained = f"results/train/{wildcards.dataset}/{wildcards.frozen}"
    if system.training_run is None:  # sft: rho_sft itself
        return f"{trained}/{system.prompter}/sft"
    return f"{trained}/{system.training_run}/model"


def dataset_settings(wildcards):
    """The dataset's config entry as its dataset job uses it: without checker, which only the report
    reads, so changing a checker reruns the report alone."""
    return {key: value for key, value in config["datasets"][wildcards.dataset].items() if key != "checker"}


def test_prompt_tables():
    """The test prompts of every dataset, in DATASETS order: the report reads their reference answers and
    categories."""
    return [f"results/data/{dataset}/test.parquet" for dataset in DATASETS]


def dataset_input(wildcards):
    spec = config["datasets"][wildcards.dataset]
    return [spec["path"]] if spec["source"] == "local" and not is_bundled(spec["path"]) else []


def generation_input(wildcards):
    """The prompts a system's frozen model answers (x, or its rewrites x'), and the model it loads."""
    system = system_of(wildcards)
    prompts = (
        f"results/data/{wildcards.dataset}/test.parquet"
        if system.kind.rewrites is None
        else f"results/rewrites/{wildcards.dataset}/{wildcards.frozen}/{wildcards.system}.parquet"
    )
    trained = system.kind.answered_by == "trained"
    return {"prompts": prompts, "model": trained_model(wildcards) if trained else model_input("frozen", wildcards.frozen)}


def generation_model(wildcards):
    if system_of(wildcards).kind.answered_by == "trained":
        return trained_spec("frozen", wildcards.frozen, trained_model(wildcards))
    return model_spec("frozen", wildcards.frozen)


def system_keys(cell):
    """The summary's keys of a cell's rows."""
    system = cell.system
    return {"dataset": cell.dataset, "frozen": cell.frozen, "prompter": system.prompter, "method": system.method, "beta": beta_of(system)}


def training_run_files():
    """Every training run the report plots and takes the KL of: its metrics path, a label, and its
    system's keys."""
    return [
        {"path": f"results/train/{cell.dataset}/{cell.frozen}/{cell.system.training_run}/metrics.parquet", "label": cell.label}
        | system_keys(cell)
        for cell in training_runs(GRID)
    ]


def star_runs():
    """Every rho* rewrite table the report takes the KL estimates of, with its system's keys."""
    return [
        {"path": f"results/rewrites/{cell.path}.parquet"} | system_keys(cell) for cell in GRID if cell.system.kind.kl == "rho*"
    ]


def without_path(runs):
    """The keys of runs, for a rule's params (the paths are its inputs)."""
    return [{key: value for key, value in run.items() if key != "path"} for run in runs]


def check_nodes():
    """Only a trainer that trains in one process per GPU spans nodes (alignpro.distributed): `nodes` on
    another rule's jobs would be asked of the cluster and go unused."""
    spanning = [trainer.name for trainer in TRAINERS.values() if trainer.multi_process]
    for name, requests in config["resources"].items():
        if requests["nodes"] > 1 and name not in spanning:
            raise ValueError(
                f"config resources.{name}.nodes: {name}'s jobs run in one process on one node; only {' and '.join(spanning)} "
                f"span nodes. Set it to 1"
            )


check_nodes()


def across_nodes(nodes):
    """The resources of a job spanning several nodes (none for one). SLURM's executor plugin runs an
    `mpi` job's script on the allocation's first node rather than inside a one-task step, so the stage's
    own srun reaches every node: one task per node (torchrun), no task per GPU."""
    return {} if nodes == 1 else {"nodes": nodes, "mpi": "srun", "tasks": nodes, "tasks_per_gpu": 0}


def gpus(rule, *sampling_sections):
    """GPUs one job of `rule` takes: its `resources` entry's `gpu`, or more where it generates with
    vLLM (the largest tensor_parallel_size among the sampling sections it generates with). A job that
    generates with vLLM always takes at least one, so that engines, which size themselves to a share of
    the device's memory, do not run side by side."""
    return max(
        [config["resources"][rule]["gpu"]]
        + [config[section]["vllm"]["tensor_parallel_size"] for section in sampling_sections if config[section]["backend"] == "vllm"]
    )


def generation_gpus(wildcards):
    """GPUs of a generate job: none when an API model answers (the job only sends requests)."""
    if system_of(wildcards).kind.answered_by == "frozen" and model_source("frozen", wildcards.frozen) == "api":
        return 0
    return gpus("generate", "generation")


JUDGES = config["judges"]
JUDGE_PATTERN = "|".join(re.escape(name) for name in JUDGES)


def judge_settings(name):
    """Judge `name` as its judge jobs use it: only the chosen backend's settings, so changing a setting
    of the other backend reruns nothing; an API judge's with its prompt file's digest, so editing the
    file reruns its jobs (its cache still answers the calls whose text did not change)."""
    judge = JUDGES[name]
    if judge["backend"] == "offline":
        return {key: judge[key] for key in ("backend", "margin", "samples_per_prompt")}
    settings = {key: judge[key] for key in ("backend", "samples_per_prompt", "api")}
    return settings | {"prompt_sha256": judge_prompt(judge["api"]["prompt"]).sha256}


def api_sections():
    """Config key -> (section, the settings its stage builds from it), for every endpoint the workflow may
    call: frozen models and judges behind an API."""
    frozen = {
        f"models.frozen.{name}.api": (spec["api"], FrozenAPISettings.from_config(spec["api"], f"models.frozen.{name}.api"))
        for name, spec in config["models"]["frozen"].items()
        if "api" in spec
    }
    judges = {
        f"judges.{name}.api": (judge["api"], JudgeSettings.from_config(judge["api"], name))
        for name, judge in JUDGES.items()
        if judge["backend"] == "api"
    }
    return frozen | judges


def check_api_sections():
    """An API's key is read from the environment at run time: say at planning that it is unset (the run
    itself stops in check_api_endpoints). An unknown judge prompt stops the run, naming those there are."""
    for key, (_, settings) in api_sections().items():
        if not os.environ.get(settings.api_key_env):
            logger.warning(
                f"config {key}: ${settings.api_key_env} is not set; a run that calls {settings.base_url} stops "
                "at start until it holds the key"
            )
    for name, judge in JUDGES.items():
        if judge["backend"] == "api":
            try:
                judge_prompt(judge["api"]["prompt"])
            except ValueError as error:
                raise WorkflowError(f"config judges.{name}.api.prompt: {error}") from None


check_api_sections()


def api_sections_of(jobs):
    """The settings of the API sections that the params of `jobs` carry (a frozen model's spec, a judge's
    settings), by config key."""
    sections, found = api_sections(), {}

    def walk(value):
        if isinstance(value, dict):
            found.update((key, settings) for key, (section, settings) in sections.items() if value == section)
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    for job in jobs:
        walk(list(job.params))
    return found


def check_api_endpoints(jobs):
    """Before the first job (the onstart handler: not in a dry run, not when nothing is to be done): each
    endpoint these jobs will call answers one authenticated request, else the run stops naming the
    config key, the key's variable and the cause, before any local work is spent."""
    for key, settings in api_sections_of(jobs).items():
        try:
            api.probe_endpoint(settings, f"config {key}")
        except api.EndpointUnusable as error:
            raise WorkflowError(f"{error}; no job was started") from None


def verdict_files():
    """One verdict table per judge and judged system: every method but base, compared with base."""
    if REFERENCE not in METHODS:
        return []
    return [f"results/judgments/{judge}/{cell.path}.parquet" for judge in JUDGES for cell in GRID if cell.system.method != REFERENCE]


def judge_resources(wildcards):
    """An API judge's job takes one unit of openai_api (the profiles cap how many run at once)."""
    return int(JUDGES[wildcards.judge]["backend"] == "api")


def score_files():
    return [f"results/scores/{cell.path}.parquet" for cell in GRID]


def final_outputs():
    """What the default target asks for: the report, and every file a job of the grid writes on the way (see
    stage_outputs)."""
    files = ["summary.parquet", "win_rates.parquet", "categories.parquet", "category_win_rates.parquet", "report.md", "report.html"]
    return [f"results/report/{name}" for name in files] + stage_outputs()


def outputs_of(rule, **wildcards):
    """`rule`'s output paths for these wildcards, from the rule's own output patterns (a path is written
    once, in its rule)."""
    return [str(pattern).format(**wildcards) for pattern in getattr(rules, rule).output]


def stage_outputs():
    """Every model, table and trained model the grid's jobs write. Snakemake removes a failed job's
    output; were that file only an input of jobs whose outputs exist, a plain rerun would take it for
    a deleted temporary file, never make it again and keep what a params or code change had made
    stale downstream. As a target it is made again, and then everything that reads it."""
    outputs = [path for kind in TINY_ROLES for name in config["models"][kind] for path in model_input(kind, name)]
    if ORACLE in METHODS:  # the frozen model's own weights, which rlhf trains
        outputs += [path for name in FROZEN for path in model_input("frozen", name, weights=True)]
    outputs += [path for dataset in DATASETS for path in outputs_of("dataset", dataset=dataset)]
    for cell in GRID:
        wildcards = SimpleNamespace(dataset=cell.dataset, frozen=cell.frozen, system=cell.system.path, prompter=cell.system.prompter)
        kind = cell.system.kind
        if cell.system.prompter is not None:
            outputs += outputs_of("sft_pairs", **vars(wildcards)) + outputs_of("sft", **vars(wildcards))
        if kind.rewrites == "prompter" or kind.answered_by == "trained":
            outputs.append(trained_model(wildcards))
        if kind.rewrites == "rho*":
            outputs += outputs_of("star_candidates", **vars(wildcards))
        if kind.rewrites is not None:
            outputs += outputs_of("rewrite", **vars(wildcards))  # its pattern names every system's rewrites, rho*'s too
        outputs += outputs_of("generate", **vars(wildcards))
    return list(dict.fromkeys(outputs + score_files() + verdict_files() + [run["path"] for run in training_run_files() + star_runs()]))


wildcard_constraints:
    dataset="|".join(map(re.escape, DATASETS)),
    prompter="|".join(map(re.escape, PROMPTERS)),
    frozen="|".join(map(re.escape, FROZEN)),
    kind="prompters|frozen|reward",
    system=SYSTEM_PATTERN,
    beta="[^/]+",
    task="[a-z_]+",  # the schema's model `task` enum names them
    role="|".join(TASK_ROLES),
