"""pyproject.toml declares exactly the third-party packages the code imports."""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Needed without an import: transformers loads GGUF files through accelerate, and `make test` runs
# the suite in two processes through pytest-xdist's `-n`.
INDIRECT_TEST_PACKAGES = {"accelerate", "pytest-xdist"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalise(re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0))


def declared() -> tuple[set[str], dict[str, set[str]]]:
    """`(dependencies, {extra: requirements})` as normalised distribution names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {k: {requirement_name(r) for r in v} for k, v in project.get("optional-dependencies", {}).items()}
    return {requirement_name(r) for r in project["dependencies"]}, extras


def top_level_imports(folder: Path) -> set[str]:
    """First component of every absolute import in the .py files under `folder`."""
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def third_party(names: set[str], local: set[str]) -> set[str]:
    return {n for n in names if n not in sys.stdlib_module_names and n not in local and n != "__future__"}


def distributions(import_names: set[str]) -> dict[str, set[str]]:
    """Import name -> the installed distributions that provide it (the name itself if none is installed)."""
    providers = importlib.metadata.packages_distributions()
    return {n: {normalise(d) for d in providers.get(n, [n])} for n in import_names}


def test_runtime_dependencies_are_exactly_the_package_imports():
    core, extras = declared()
    optional = set().union(*(reqs for extra, reqs in extras.items() if extra != "test"))
    imported = distributions(third_party(top_level_imports(ROOT / "tyrjax"), {"tyrjax"}))
    undeclared = sorted(n for n, dists in imported.items() if not dists & (core | optional))
    assert not undeclared, f"imported by tyrjax but not declared in dependencies or an extra: {undeclared}"
    provided = set().union(*imported.values())
    unused = sorted((core | optional) - provided)
    assert not unused, f"declared in dependencies or a non-test extra but never imported by tyrjax: {unused}"


def test_test_extra_is_exactly_what_the_tests_need_beyond_the_package():
    core, extras = declared()
    tests = ROOT / "tests"
    local = {p.stem for p in tests.rglob("*.py")} | {p.name for p in tests.rglob("*") if p.is_dir()}
    imported = distributions(third_party(top_level_imports(tests), local | {"tyrjax"}))
    everything = core | set().union(*extras.values())
    undeclared = sorted(n for n, dists in imported.items() if not dists & everything)
    assert not undeclared, f"imported by the tests but declared nowhere: {undeclared}"
    unused = sorted(extras["test"] - set().union(*imported.values()) - INDIRECT_TEST_PACKAGES)
    assert not unused, f"in the test extra but never imported by the tests: {unused}"


def test_the_test_command_uses_the_process_plugin_it_declares():
    makefile = (ROOT / "Makefile").read_text()
    test_lines = [line for line in makefile.splitlines() if "-m pytest" in line]
    assert test_lines and all(" -n " in f"{line} " for line in test_lines), test_lines


def test_import_names_map_to_their_distributions():
    mapped = distributions({"yaml", "orbax", "PIL", "jax"})
    assert mapped == {"yaml": {"pyyaml"}, "orbax": {"orbax-checkpoint"}, "PIL": {"pillow"}, "jax": {"jax"}}
