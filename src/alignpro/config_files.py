"""Config files as the workflow reads them at start (the main process only: the jobs never import this)."""

from __future__ import annotations

import os

import yaml


def check_unique_keys(path: str | os.PathLike) -> None:
    """A config file in which a key (a judge, a model, a dataset, a setting) appears twice in one mapping
    is refused, naming the file, the key and both lines: yaml's loaders keep the last silently."""
    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: keys beside it override it, by design
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise ValueError(f"{path}: key {key!r} is given twice in one mapping, on lines {seen[key]} and {line}; YAML keeps only the last")
                seen[key] = line
            return super().construct_mapping(node, deep)

    with open(path, encoding="utf-8") as stream:
        yaml.load(stream, Loader=UniqueKeyLoader)
