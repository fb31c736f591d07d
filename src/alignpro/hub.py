"""Hub models fetched once into a cache, so that jobs load them from local disk.

A model given as a hub id at a pinned commit is downloaded by `fetch_model` (the workflow's
`fetch_model` rule, on the submit host) into huggingface_hub's cache layout,
`<cache>/models--org--name/snapshots/<commit>/`; every job then loads that directory
(`snapshot_dir`) and never needs the hub. Files that no loader here reads (the original
checkpoints of Llama repos, GGUF/ONNX/Flax/TF exports, PyTorch `.bin` weights beside
safetensors ones, Mistral's consolidated checkpoint beside the transformers one) are not downloaded. The token comes from the environment (`HF_TOKEN`) or the
saved login, as huggingface_hub does by itself; `HF_ENDPOINT` selects another hub.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

from alignpro.atomic import write_bytes

log = logging.getLogger("alignpro")

_COMMIT = re.compile(r"[0-9a-f]{40}")

# Files that neither transformers nor vLLM reads here: the original checkpoints of Llama-style repos
# (original/consolidated.*.pth, params.json, tokenizer.model), llama.cpp, ONNX, Flax, TensorFlow, Rust,
# TFLite and CoreML exports.
NEVER_READ = [
    "original/*",
    "*.pth",
    "*.gguf",
    "*.onnx",
    "*.onnx_data",
    "*.msgpack",
    "*.h5",
    "*.ot",
    "*.tflite",
    "*.mlmodel",
]
# PyTorch pickles, read only when a repo has no safetensors weights.
PYTORCH_BIN = ["*.bin", "*.bin.index.json"]
# Mistral's own checkpoint format, beside the transformers one (model-*.safetensors with its index)
# in Mistral repos: the loaders here read the latter.
CONSOLIDATED = ["consolidated*.safetensors"]


def is_commit(revision: str | None) -> bool:
    """Whether `revision` is a full commit sha (40 lowercase hex digits), which never moves."""
    return isinstance(revision, str) and _COMMIT.fullmatch(revision) is not None


def cache_root(cache_dir: str | os.PathLike | None) -> str:
    """The cache directory as huggingface_hub uses it: `cache_dir`, or its default (`HF_HUB_CACHE`,
    else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), with `~` expanded, made absolute."""
    from huggingface_hub import constants

    return str(Path(constants.HF_HUB_CACHE if cache_dir is None else cache_dir).expanduser().resolve())


def snapshot_dir(cache_dir: str | os.PathLike | None, repo_id: str, revision: str) -> str:
    """Where huggingface_hub keeps `repo_id` at commit `revision` in `cache_dir` (None: the default cache)."""
    from huggingface_hub.file_download import repo_folder_name

    if not is_commit(revision):
        raise ValueError(f"{repo_id}: revision {revision!r} is not a commit sha; only a commit has a fixed snapshot directory")
    return os.path.join(cache_root(cache_dir), repo_folder_name(repo_id=repo_id, repo_type="model"), "snapshots", revision)


def snapshot_identity(path: str | os.PathLike) -> str | None:
    """`org/name@commit` when `path` is a snapshot directory of a huggingface_hub cache, else None.

    A snapshot's files are content-addressed by the commit, so this names the contents without
    reading them (repo ids never contain `--`, so the folder name maps back to one id)."""
    from huggingface_hub import constants

    path = Path(path)
    folder = path.parent.parent.name
    prefix = "models" + constants.REPO_ID_SEPARATOR
    if path.parent.name != "snapshots" or not is_commit(path.name) or not folder.startswith(prefix):
        return None
    return f"{folder.removeprefix(prefix).replace(constants.REPO_ID_SEPARATOR, '/')}@{path.name}"


def ignore_patterns(files: Iterable[str]) -> list[str]:
    """The patterns of files not to download from a repo holding `files`: those no loader reads, the
    PyTorch `.bin` weights when safetensors weights are there too, and Mistral's consolidated
    checkpoint when the transformers-format one is there too."""
    from huggingface_hub.utils import filter_repo_objects

    kept = list(filter_repo_objects(list(files), ignore_patterns=NEVER_READ))
    patterns = list(NEVER_READ)
    if any(name.endswith(".safetensors") and "/" not in name for name in kept):
        patterns += PYTORCH_BIN
    if any(name in ("model.safetensors", "model.safetensors.index.json") for name in kept):
        patterns += CONSOLIDATED
    return patterns


def _cached_listing(repo_id: str, commit: str, cache: str) -> list[str] | None:
    """The repository's file list at `commit` as an earlier snapshot_download cached it, or None."""
    try:
        from huggingface_hub import get_cached_repo_tree  # huggingface_hub >= 1.26
        from huggingface_hub.errors import CachedRepoTreeNotFoundError
    except ImportError:
        return None
    try:
        return [entry.path for entry in get_cached_repo_tree(repo_id, revision=commit, cache_dir=cache)]
    except CachedRepoTreeNotFoundError:
        return None


def check_remote_code(config_path: str | os.PathLike, *, trust_remote_code: bool, label: str) -> None:
    """Fail when the model's config asks for the repository's own code (`auto_map`) for a model type
    transformers does not know, and its config entry does not say to trust that code.

    A known model type with an `auto_map` (Phi-3.5 has one) loads with transformers' own code."""
    path = Path(config_path)
    if trust_remote_code or not path.is_file():
        return
    config = json.loads(path.read_text())
    if "auto_map" not in config:
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type in CONFIG_MAPPING:
        return
    raise RuntimeError(
        f"{label}: its config.json declares model_type {model_type!r}, which transformers does not know, "
        f"and maps it to code in the repository (auto_map: {sorted(config['auto_map'])}); trust_remote_code is off, "
        "so it cannot be loaded. If you trust that code, set `trust_remote_code: true` in this model's config entry."
    )


def fetch_model(
    repo_id: str,
    revision: str,
    cache_dir: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    marker_path: str | os.PathLike | None = None,
    *,
    label: str | None = None,
    allow_patterns: list[str] | None = None,
) -> dict:
    """Download `repo_id` at `revision` into `cache_dir` (None: huggingface_hub's default cache), only
    the files the loaders read, and check that it loads with `trust_remote_code` as configured.

    A revision that is not a commit is resolved to one first (through the hub's revision endpoint).
    Files already in the cache are not downloaded again: fetching a cached commit again needs no hub
    access (huggingface_hub >= 1.26 caches the file listing; older ones list the files again).
    Returns, and writes atomically to `marker_path`, a record of the fetch: repo, revision, commit,
    snapshot directory, file names and total bytes. `label` names the model in errors (e.g. its
    config key); it defaults to `repo_id`. `allow_patterns` fetches only the files that match (a
    stand-in's small files)."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import OfflineModeIsEnabled, filter_repo_objects

    label = label or repo_id
    cache = cache_root(cache_dir)
    api = HfApi()
    try:
        commit = revision if is_commit(revision) else api.repo_info(repo_id, revision=revision).sha
        files = _cached_listing(repo_id, commit, cache)
        if files is None:
            files = [entry.path for entry in api.list_repo_tree(repo_id, recursive=True, revision=commit) if isinstance(entry, RepoFile)]
        ignore = ignore_patterns(files)
        wanted = sorted(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore))
        skipped = sorted(set(files) - set(wanted))
        log.info(
            "%s: fetching %s@%s into %s: %d files%s",
            label, repo_id, commit, cache, len(wanted), f", skipping {len(skipped)}: {', '.join(skipped)}" if skipped else "",
        )
        # With a commit, a file already in the cache is not asked for again.
        path = snapshot_download(repo_id, revision=commit, cache_dir=cache, allow_patterns=allow_patterns, ignore_patterns=ignore)
    except GatedRepoError as error:
        raise RuntimeError(
            f"{label}: {repo_id} is gated: accept its licence on the hub with your account, then export HF_TOKEN "
            f"(a read token of that account) where the workflow runs ({error})"
        ) from error
    except RepositoryNotFoundError as error:
        raise RuntimeError(
            f"{label}: {repo_id} was not found on the hub, or is private and HF_TOKEN does not grant access ({error})"
        ) from error
    except RevisionNotFoundError as error:
        raise RuntimeError(f"{label}: {repo_id} has no revision {revision!r} on the hub ({error})") from error
    except OfflineModeIsEnabled as error:
        raise RuntimeError(
            f"{label}: HF_HUB_OFFLINE is set and the cache {cache} does not hold {repo_id}@{revision} completely: "
            "fetch it where the hub can be reached"
        ) from error
    expected = snapshot_dir(cache, repo_id, commit)
    if os.path.realpath(path) != os.path.realpath(expected):
        raise RuntimeError(f"{label}: huggingface_hub put {repo_id}@{commit} in {path}, not in {expected}")
    missing = [name for name in wanted if not os.path.isfile(os.path.join(expected, name))]
    if missing:
        raise RuntimeError(f"{label}: {repo_id}@{commit}: files missing from {expected} after the download: {missing}")
    check_remote_code(os.path.join(expected, "config.json"), trust_remote_code=trust_remote_code, label=label)
    record = {
        "repo": repo_id,
        "revision": revision,
        "commit": commit,
        "snapshot": expected,
        "files": wanted,
        "bytes": sum(os.path.getsize(os.path.join(expected, name)) for name in wanted),
        "trust_remote_code": trust_remote_code,
    }
    log.info("%s: %s@%s is in %s (%d files, %.1f MB)", label, repo_id, commit, expected, len(wanted), record["bytes"] / 1e6)
    if marker_path is not None:
        write_bytes(marker_path, (json.dumps(record, indent=2) + "\n").encode())
    return record
