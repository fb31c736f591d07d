"""One model as a job reaches it: weights to load (a directory or a hub id at a revision, with its
dtype and trust settings) or, for a frozen model, an OpenAI-compatible API.

rules/common.smk builds it once per config entry (tiny, task and stand-in models at the directory the
workflow builds them in, pinned hub models at their snapshot in the cache); it travels to the job as a
plain dict in the rule's params, which Snakemake compares to decide reruns, and the stage gets it
back with `from_params`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    label: str  # the config entry, models.<section>.<name>: named in logs and errors
    path: str | None = None  # directory or hub id of the weights; None for an API model
    revision: str = "main"
    dtype: str = "auto"
    trust_remote_code: bool = False
    api: dict | None = None  # the entry's `api` section: answers come from there, not from `path`

    def __post_init__(self):
        if (self.path is None) == (self.api is None):
            raise ValueError(f"{self.label}: a model spec needs either a path to load or an api to call, not {'both' if self.path else 'neither'}")

    @property
    def name(self) -> str:
        """The entry's name, as results and caches are keyed."""
        return self.label.rsplit(".", 1)[-1]

    def load_options(self) -> dict:
        """What from_pretrained (and vLLM) take besides the path."""
        return {"revision": self.revision, "dtype": self.dtype, "trust_remote_code": self.trust_remote_code}

    def as_params(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_entry(cls, label: str, entry: str | dict) -> ModelSpec:
        """A model entry written outside the workflow's config (alignpro serve's `prompter`, `frozen`): a
        directory or hub id, or a mapping of this class's fields (`path` with its load options, or `api`)."""
        return cls.from_params({"label": label, **({"path": entry} if isinstance(entry, str) else entry)})

    @classmethod
    def from_params(cls, params) -> ModelSpec:
        """From a rule's params (a Snakemake Namedlist or dict), naming what is missing or unknown."""
        values = dict(params)
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown or "label" not in values:
            raise ValueError(f"model spec {values}: unknown keys {unknown}" if unknown else f"model spec {values} has no label")
        return cls(**values)
