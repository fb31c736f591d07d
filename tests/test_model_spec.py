"""The typed model spec (alignpro.model_spec) and the package's import graph."""

import ast
from pathlib import Path

import pytest

from alignpro.model_spec import ModelSpec

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "alignpro"


def test_a_spec_travels_through_params_unchanged():
    local = ModelSpec("models.frozen.llama", "/cache/snapshot", "0" * 40, "bfloat16", True)
    served = ModelSpec("models.frozen.remote", api={"model": "llama-8b", "base_url": "http://gpu:8000/v1"})
    for spec in (local, served):
        assert ModelSpec.from_params(spec.as_params()) == spec
    assert local.name == "llama" and served.name == "remote"
    assert local.load_options() == {"revision": "0" * 40, "dtype": "bfloat16", "trust_remote_code": True}


def test_a_spec_names_what_is_wrong_with_it():
    with pytest.raises(ValueError, match="models.frozen.x: a model spec needs either a path to load or an api to call, not neither"):
        ModelSpec("models.frozen.x")
    with pytest.raises(ValueError, match="not both"):
        ModelSpec("models.frozen.x", "/weights", api={"model": "m"})
    with pytest.raises(ValueError, match=r"unknown keys \['revison'\]"):
        ModelSpec.from_params({"label": "models.reward.rm", "path": "/weights", "revison": "main"})
    with pytest.raises(ValueError, match="has no label"):
        ModelSpec.from_params({"path": "/weights"})


def module_imports() -> dict[str, set[str]]:
    """alignpro module -> the alignpro modules it imports, at its top or inside a function."""
    paths = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in paths.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in paths:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & paths.keys()
                imported |= submodules  # `from package import submodule` needs the submodule
                if len(submodules) < len(node.names):
                    imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names if alias.name in paths)
        graph[name] = imported - {name}
    return graph


def test_the_package_has_no_import_cycle():
    """No two modules need each other (frozen_api and generation once did), counting imports inside
    functions: a module's dependencies can be read, tested and replaced without its dependents."""
    graph = module_imports()

    def cycle_from(start: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        for target in sorted(graph[path[-1]]):
            if target == start:
                return (*path, start)
            if target not in path:
                found = cycle_from(start, (*path, target))
                if found:
                    return found
        return None

    cycles = [cycle for module in sorted(graph) if (cycle := cycle_from(module, (module,)))]
    assert not cycles, " -> ".join(cycles[0])
