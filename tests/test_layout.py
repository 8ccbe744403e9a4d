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


def shadowed_modules(root: Path) -> list[str]:
    """Parameters and assignments named like a module their own file imports."""
    found = []
    for folder in ("templates", "lambdas", "scripts", "simulation", "benchmarks"):
        for path in (root / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            modules = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom):
                    folder_of = root / (node.module or "").replace(".", "/")
                    modules |= {alias.asname or alias.name for alias in node.names
                                if (folder_of / f"{alias.name}.py").exists()}
            for node in ast.walk(tree):
                names: list[tuple[str, int]] = []
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    names = [(a.arg, node.lineno) for a in [*node.args.args, *node.args.kwonlyargs]]
                elif isinstance(node, ast.Assign):
                    names = [(target.id, node.lineno) for target in node.targets
                             if isinstance(target, ast.Name)]
                found += [f"{path.relative_to(root)}:{line}: {name}"
                          for name, line in names if name in modules]
    return found


def test_no_parameter_or_variable_shadows_a_module_its_file_imports():
    assert shadowed_modules(ROOT) == []


def test_the_shadow_check_sees_a_parameter_named_like_an_imported_module(tmp_path):
    package = tmp_path / "templates"
    package.mkdir()
    (package / "edge.py").write_text("")
    (package / "stack.py").write_text("from templates import edge\n\n\ndef build(edge):\n    return edge\n")
    assert shadowed_modules(tmp_path) == ["templates/stack.py:4: edge"]
