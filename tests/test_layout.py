"""Where code lives: the simulated fleet is shared by tests and benchmarks, shipped nowhere;
the scripts import as ordinary modules."""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(folder: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
    return found


def test_benchmarks_do_not_import_the_test_suite():
    assert not {m for m in imported_modules("benchmarks") if m.split(".")[0] == "tests"}


def test_the_simulation_does_not_import_the_test_suite():
    assert not {m for m in imported_modules("simulation") if m.split(".")[0] == "tests"}


def test_no_lambda_code_imports_the_simulation():
    assert not {m for m in imported_modules("lambdas") if m.split(".")[0] in ("simulation", "benchmarks")}


def test_the_package_ships_neither_the_simulation_nor_the_benchmarks():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    packages = {p.strip() for p in config["options"]["packages"].replace("\n", ",").split(",") if p.strip()}
    assert {"templates", "lambdas"} <= packages
    assert not packages & {"simulation", "benchmarks", "tests"}


def test_no_shipped_module_edits_the_import_path():
    # The scripts run from an installed checkout (`pip install -e .`) or as modules
    # (`python -m scripts.deploy`): neither needs sys.path rewritten at import time.
    edits = []
    for folder in ("templates", "lambdas", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Attribute) and node.attr == "path"
                        and isinstance(node.value, ast.Name) and node.value.id == "sys"):
                    edits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not edits


def test_every_operator_script_imports_as_a_module():
    import importlib

    for path in sorted((ROOT / "scripts").glob("*.py")):
        if path.stem != "__init__":
            assert importlib.import_module(f"scripts.{path.stem}").__name__ == f"scripts.{path.stem}"
