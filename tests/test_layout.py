"""Where code lives: the simulated fleet is shared by tests and benchmarks, shipped nowhere."""

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
