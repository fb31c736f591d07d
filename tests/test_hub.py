"""Hub models: fetched once into the configured cache from a local server that answers like the Hub.

huggingface_hub reads HF_ENDPOINT when it is imported, so every fetch runs in a subprocess (or a
snakemake job) with HF_ENDPOINT pointing at `hub_stub.HubStub`, as a user's run would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from alignpro import hub
from hub_stub import HubStub
from test_workflow import SNAKEMAKE, copy_workflow

TOKEN = "hf_stub_token"
# What a saved tiny model holds, all of which the loaders read.
WANTED = {"chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
# Never downloaded: Llama's original checkpoint, and PyTorch weights beside safetensors ones.
DECOYS = {"original/consolidated.00.pth": b"\x80pth" * 4096, "original/params.json": b"{}", "pytorch_model.bin": b"\x80bin" * 4096}
CUSTOM_CONFIG = {
    "model_type": "acme-moe",
    "architectures": ["AcmeMoeForCausalLM"],
    "auto_map": {"AutoConfig": "configuration_acme.AcmeConfig", "AutoModelForCausalLM": "modeling_acme.AcmeMoeForCausalLM"},
}


@pytest.fixture(scope="module")
def stub(tiny_frozen):
    """Three repositories: a real tiny chat model with decoys, a model that needs its own code, a gated one.
    The tree listing comes in pages of 3, so pagination is followed."""
    with HubStub(page_size=3, token=TOKEN) as server:
        server.commits = {
            "acme/tiny-chat": server.add_repo("acme/tiny-chat", {**HubStub.directory_files(tiny_frozen), **DECOYS}),
            "acme/custom-code": server.add_repo("acme/custom-code", {
                "config.json": json.dumps(CUSTOM_CONFIG).encode(),
                "configuration_acme.py": b"# the repository's own code\n",
                "modeling_acme.py": b"# the repository's own code\n",
                "model.safetensors": b"\0" * 64,
            }),
            "acme/gated-chat": server.add_repo(
                "acme/gated-chat", {"config.json": b'{"model_type": "qwen2"}', "model.safetensors": b"\1" * 256}, gated=True
            ),
        }
        yield server


def hub_env(stub: HubStub, home: Path, **extra: str) -> dict:
    """The environment of a user whose HF_ENDPOINT is the stub: online, no saved token, no proxy."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE")}
    env.update(
        HF_ENDPOINT=stub.url,
        HF_HOME=str(home),  # no token saved by `hf auth login` is read
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra)
    return env


def fetch(stub, tmp_path, repo, revision, cache_dir, *, trust=False, marker=None, check=True, **env) -> subprocess.CompletedProcess:
    """alignpro.hub.fetch_model in a fresh interpreter, as the fetch_model job runs it; the record on stdout."""
    code = (
        "import json, sys\n"
        "from alignpro.hub import fetch_model\n"
        "repo, revision, cache, trust, marker = sys.argv[1:]\n"
        "record = fetch_model(repo, revision, cache or None, trust == '1', marker or None, label='models.frozen.test')\n"
        "print(json.dumps(record))\n"
    )
    args = [repo, revision, str(cache_dir or ""), "1" if trust else "0", str(marker or "")]
    result = subprocess.run(
        [sys.executable, "-c", code, *args], env=hub_env(stub, tmp_path / "home", **env), capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        pytest.fail(f"fetch of {repo}@{revision} failed:\n{result.stderr[-5000:]}")
    return result


def record_of(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- paths and rules, no server ---------------------------------------------------------------


def test_is_commit():
    assert hub.is_commit("0123456789abcdef0123456789abcdef01234567")
    for revision in ["main", "v1.0", "0123456789abcdef", "0123456789ABCDEF0123456789ABCDEF01234567", None, "refs/pr/1"]:
        assert not hub.is_commit(revision)


def test_snapshot_dir_is_huggingface_hubs_layout(tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    path = hub.snapshot_dir(tmp_path / "cache", "meta-llama/Llama-3.1-8B-Instruct", commit)
    assert path == str(tmp_path / "cache" / "models--meta-llama--Llama-3.1-8B-Instruct" / "snapshots" / commit)
    monkeypatch.chdir(tmp_path)
    assert hub.snapshot_dir("rel", "org/name", commit) == str(tmp_path / "rel" / "models--org--name" / "snapshots" / commit)
    from huggingface_hub import constants

    assert hub.snapshot_dir(None, "org/name", commit).startswith(str(Path(constants.HF_HUB_CACHE).resolve()))
    assert hub.snapshot_identity(path) == f"meta-llama/Llama-3.1-8B-Instruct@{commit}"
    assert hub.snapshot_identity(tmp_path) is None
    with pytest.raises(ValueError, match="not a commit"):
        hub.snapshot_dir(tmp_path, "org/name", "main")


def test_ignored_files_depend_on_the_repo():
    llama = ["config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json", "original/consolidated.00.pth",
             "original/tokenizer.model", "pytorch_model.bin", "flax_model.msgpack", "tf_model.h5", "model.gguf", "tokenizer.json"]
    from huggingface_hub.utils import filter_repo_objects

    kept = set(filter_repo_objects(llama, ignore_patterns=hub.ignore_patterns(llama)))
    assert kept == {"config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json"}
    mistral = ["config.json", "consolidated.safetensors", "model-00001-of-00003.safetensors", "model.safetensors.index.json",
               "params.json", "tokenizer.model.v3", "tokenizer.json"]
    kept = set(filter_repo_objects(mistral, ignore_patterns=hub.ignore_patterns(mistral)))
    assert kept == set(mistral) - {"consolidated.safetensors"}
    only_consolidated = ["params.json", "consolidated.safetensors"]
    assert set(filter_repo_objects(only_consolidated, ignore_patterns=hub.ignore_patterns(only_consolidated))) == set(only_consolidated)
    bin_only = ["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json", "original/weights.safetensors"]
    assert set(filter_repo_objects(bin_only, ignore_patterns=hub.ignore_patterns(bin_only))) == set(bin_only[:3])


def test_remote_code_check(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CUSTOM_CONFIG))
    with pytest.raises(RuntimeError) as error:
        hub.check_remote_code(config, trust_remote_code=False, label="models.frozen.acme")
    assert "models.frozen.acme" in str(error.value) and "`trust_remote_code: true`" in str(error.value)
    hub.check_remote_code(config, trust_remote_code=True, label="models.frozen.acme")
    # Phi-3.5 ships an auto_map for a type transformers knows: it loads without the repository's code.
    config.write_text(json.dumps({"model_type": "phi3", "auto_map": {"AutoConfig": "configuration_phi3.Phi3Config"}}))
    hub.check_remote_code(config, trust_remote_code=False, label="models.prompters.phi")
    config.write_text(json.dumps({"model_type": "acme-moe"}))  # no auto_map: transformers' own error, at load time
    hub.check_remote_code(config, trust_remote_code=False, label="models.prompters.x")


@pytest.mark.model
def test_ppo_fingerprint_names_a_snapshot_without_reading_it(tmp_path):
    from alignpro.ppo.trainer import _model_fingerprint

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = Path(hub.snapshot_dir(tmp_path, "org/name", commit))
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"weights")
    assert _model_fingerprint(str(snapshot), commit) == _model_fingerprint("org/name", commit) == f"org/name@{commit}"
    plain = tmp_path / "local-model"
    plain.mkdir()
    (plain / "model.safetensors").write_bytes(b"weights")
    assert len(_model_fingerprint(str(plain), "main")) == 64  # a local directory: its contents' hash


# --- fetching from the stub hub --------------------------------------------------------------


@pytest.mark.model
def test_fetch_downloads_what_loaders_read_once(stub, tmp_path):
    repo, commit = "acme/tiny-chat", stub.commits["acme/tiny-chat"]
    cache, marker = tmp_path / "cache", tmp_path / "results/hub/frozen/tiny.json"
    stub.clear()
    record = record_of(fetch(stub, tmp_path, repo, commit, cache, marker=marker))

    snapshot = Path(hub.snapshot_dir(cache, repo, commit))
    assert record["snapshot"] == str(snapshot) and record["commit"] == commit
    assert {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()} == WANTED == set(record["files"])
    assert record["bytes"] == sum((snapshot / name).stat().st_size for name in WANTED)
    assert json.loads(marker.read_text()) == record
    for decoy in DECOYS:
        assert not stub.asked_for(decoy.rsplit("/", 1)[-1]), f"{decoy} was asked for"
    downloaded = stub.downloads()
    assert len(downloaded) == len(WANTED) == len(set(downloaded))  # each wanted file exactly once
    assert sum(r.host == "cdn" for r in stub.requests) == 1  # model.safetensors, the one LFS file, from the "CDN"
    assert any(r.query.get("cursor") for r in stub.requests if "/tree/" in r.path)  # the listing's pages were followed
    assert not [r for r in stub.requests if "/revision/" in r.path]  # a commit needs no resolving

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(snapshot)
    assert AutoTokenizer.from_pretrained(snapshot).apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert model.config.model_type == "qwen2"

    stub.clear()
    again = record_of(fetch(stub, tmp_path, repo, commit, cache, marker=marker))
    assert again == record
    assert stub.downloads() == [] and not [r for r in stub.requests if r.method == "HEAD"]
    import huggingface_hub

    if hasattr(huggingface_hub, "get_cached_repo_tree"):  # the listing is cached too: no hub access at all
        assert stub.requests == []
        assert record_of(fetch(stub, tmp_path, repo, commit, cache, HF_HUB_OFFLINE="1")) == record


@pytest.mark.model
def test_unknown_architecture_needs_trust_remote_code(stub, tmp_path):
    repo, commit = "acme/custom-code", stub.commits["acme/custom-code"]
    marker = tmp_path / "marker.json"
    failed = fetch(stub, tmp_path, repo, commit, tmp_path / "cache", marker=marker, check=False)
    assert failed.returncode != 0
    assert "models.frozen.test" in failed.stderr and "`trust_remote_code: true`" in failed.stderr and "acme-moe" in failed.stderr
    assert not marker.exists()
    record = record_of(fetch(stub, tmp_path, repo, commit, tmp_path / "cache", trust=True, marker=marker))
    assert {"configuration_acme.py", "modeling_acme.py"} <= set(record["files"]) and record["trust_remote_code"] is True


@pytest.mark.model
def test_branch_is_resolved_through_the_revision_endpoint_into_the_default_cache(stub, tmp_path):
    """revision main: asked once for its commit; cache_dir null: huggingface_hub's default, which HF_HUB_CACHE moves."""
    stub.clear()
    default_cache = tmp_path / "hf-default"
    record = record_of(fetch(stub, tmp_path, "acme/tiny-chat", "main", None, HF_HUB_CACHE=str(default_cache)))
    assert record["revision"] == "main" and record["commit"] == stub.commits["acme/tiny-chat"]
    assert record["snapshot"] == hub.snapshot_dir(default_cache, "acme/tiny-chat", record["commit"])
    assert [r.path for r in stub.requests if "/revision/" in r.path] == ["/api/models/acme/tiny-chat/revision/main"]
    assert set(record["files"]) == WANTED
    failed = fetch(stub, tmp_path, "acme/tiny-chat", "no-such-branch", tmp_path / "cache", check=False)
    assert failed.returncode != 0 and "models.frozen.test: acme/tiny-chat has no revision 'no-such-branch'" in failed.stderr


@pytest.mark.model
def test_gated_model_needs_hf_token_which_never_leaves_the_hub(stub, tmp_path):
    repo, commit = "acme/gated-chat", stub.commits["acme/gated-chat"]
    failed = fetch(stub, tmp_path, repo, commit, tmp_path / "cache", check=False)
    assert failed.returncode != 0 and "gated" in failed.stderr and "HF_TOKEN" in failed.stderr
    stub.clear()
    record = record_of(fetch(stub, tmp_path, repo, commit, tmp_path / "cache", HF_TOKEN=TOKEN))
    assert set(record["files"]) == {"config.json", "model.safetensors"}
    hub_requests = [r for r in stub.requests if r.host == "hub"]
    cdn_requests = [r for r in stub.requests if r.host == "cdn"]
    assert hub_requests and all(r.authorization == f"Bearer {TOKEN}" for r in hub_requests)
    assert cdn_requests and all(r.authorization is None for r in cdn_requests)


# --- the workflow ------------------------------------------------------------------------------


def snakemake(workdir: Path, env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """snakemake in `workdir` with `env`; targets go first in `args` (list flags swallow what follows)."""
    result = subprocess.run(
        [*SNAKEMAKE, *args, "--cores", "2", "--resources", "gpu=1"], cwd=workdir, env=env, capture_output=True, text=True, timeout=900
    )
    if check and result.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted(workdir.glob("logs/**/*.log")))
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}\n{logs}")
    return result


def hub_config(workdir: Path, models: dict, methods: list[str], cache_dir: Path | None) -> Path:
    config = yaml.safe_load((workdir / "config/tiny.yaml").read_text())
    config["models"] = {**models, "cache_dir": None if cache_dir is None else str(cache_dir)}
    config["methods"] = methods
    config["datasets"]["bundled"]["test_size"] = 6
    path = workdir / "config/hub.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.workflow
def test_workflow_fetches_pinned_hub_models_only(stub, tmp_path, tiny_prompter):
    """A dry run: a fetch job for the pinned hub model, none for a local directory, a warning for an
    unpinned hub model."""
    workdir = copy_workflow(tmp_path / "workflow")
    models = {
        "prompters": {"local-prompter": {"path": str(tiny_prompter)}},
        "frozen": {"hub-frozen": {"path": "acme/tiny-chat", "revision": stub.commits["acme/tiny-chat"]}},
        "reward": {"hub-reward": {"path": "acme/reward", "revision": "main"}},
    }
    config = hub_config(workdir, models, ["base", "sft"], tmp_path / "cache")
    result = snakemake(workdir, hub_env(stub, tmp_path / "home"), "--dry-run", "--configfile", str(config), "--replace-workflow-config")
    output = result.stdout + result.stderr
    assert "rule fetch_model:" in output and "results/hub/frozen/hub-frozen.json" in output
    assert "results/hub/prompters" not in output and "results/hub/reward" not in output
    assert "models.reward.hub-reward" in output and "Pin revision to a 40-character commit" in output
    assert "models.frozen.hub-frozen:" not in output


@pytest.mark.model
@pytest.mark.slow
def test_generate_loads_the_fetched_snapshot(stub, tmp_path):
    """fetch_model downloads the pinned frozen model once on the submit host; generate then answers from
    the snapshot in the cache without a single request to the hub; a rerun plans nothing; a snapshot
    deleted from the cache is reported at start."""
    workdir = copy_workflow(tmp_path / "workflow")
    repo, commit = "acme/tiny-chat", stub.commits["acme/tiny-chat"]
    cache = tmp_path / "shared-cache"
    models = {
        "prompters": {"tiny-prompter": {"tiny": True}},
        "frozen": {"hub-frozen": {"path": repo, "revision": commit}},
        "reward": {"tiny-reward": {"tiny": True}},
    }
    config = hub_config(workdir, models, ["base"], cache)
    env = hub_env(stub, tmp_path / "home")
    target = "results/responses/bundled/hub-frozen/base.parquet"
    args = ("--configfile", str(config), "--replace-workflow-config")

    stub.clear()
    snakemake(workdir, env, "--until", "fetch_model", *args)
    marker = json.loads((workdir / "results/hub/frozen/hub-frozen.json").read_text())
    snapshot = hub.snapshot_dir(cache, repo, commit)
    assert marker["snapshot"] == snapshot and set(marker["files"]) == WANTED
    assert len(stub.downloads()) == len(WANTED)
    assert "fetching acme/tiny-chat@" in (workdir / "logs/fetch_model/frozen/hub-frozen.log").read_text()

    stub.clear()
    snakemake(workdir, env, target, *args)
    assert stub.requests == [], "a job asked the hub"
    assert f"loading {snapshot} at revision {commit}" in (workdir / "logs/generate/bundled/hub-frozen/base.log").read_text()
    responses = pq.read_table(workdir / target)
    assert responses.num_rows == 6 * 2 and set(responses.column("frozen").to_pylist()) == {"hub-frozen"}

    rerun = snakemake(workdir, env, target, "--dry-run", *args)
    assert "Nothing to be done" in rerun.stdout + rerun.stderr

    shutil.rmtree(snapshot)  # the cache was cleaned: said at start, before jobs fail on it
    lost = snakemake(workdir, env, target, "--dry-run", *args)
    assert f"models.frozen.hub-frozen: {repo}@{commit} was fetched" in lost.stdout + lost.stderr
