"""The level of each test, read off what it reaches, so that new test files need no marks.

tests/conftest.py marks every collected test: `moto` when the test, or a fixture or
helper of ours that it uses, reaches moto; `cli` when it reaches subprocess (it runs
a program: a script, the aws CLI, build.py, an instance script); `lint` when it
reaches cfn-lint or checkov. Each of these is also `slow`, so that
`pytest -m "not slow"` runs the unit tier: in process, no AWS emulation, no linter.
"""

from __future__ import annotations

import types
from typing import Any

import pytest

# marker → the packages that put a test at that level.
LEVELS = {"moto": ("moto",), "cli": ("subprocess",), "lint": ("cfnlint.api", "checkov")}


# Our code that tests call to do their work, followed like the tests' own: the simulated
# fleet (simulation.world builds it in moto) is a helper of the rollout tests.
HELPERS = ("tests.", "simulation.")


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def reaches(function: Any, packages: tuple[str, ...], seen: set[int]) -> bool:
    """Whether the function uses one of the packages, itself or through the tests' own helpers.

    Follows the names its code uses: an import (also one inside the function), a global
    bound to something from the packages, and the functions, classes and modules of
    `tests.*` and `simulation.*` it calls, recursively.
    """
    function = function.fget if isinstance(function, property) else getattr(function, "__func__", function)
    code = getattr(function, "__code__", None)
    if code is None or id(function) in seen:
        return False
    seen.add(id(function))
    scope = getattr(function, "__globals__", {})
    for name in _code_names(code):
        if _within(name, packages):
            return True
        value = scope.get(name)
        if value is None:
            continue
        origin = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
        if not isinstance(origin, str):
            continue
        if _within(origin, packages):
            return True
        if not origin.startswith(HELPERS):
            continue
        if isinstance(value, types.ModuleType):
            members = list(vars(value).values())
        elif isinstance(value, type):
            members = list(vars(value).values())
        else:
            members = [value]
        if any(reaches(member, packages, seen) for member in members if callable(member)
               or isinstance(member, (staticmethod, classmethod, property))):
            return True
    return False


def _functions_behind(item: pytest.Item) -> list[Any]:
    """The test function and the functions of the project's fixtures it uses."""
    functions = [getattr(item, "function", None)]
    fixture_info = getattr(item, "_fixtureinfo", None)
    for definitions in (fixture_info.name2fixturedefs.values() if fixture_info else ()):
        functions += [d.func for d in definitions if getattr(d.func, "__module__", "").startswith("tests.")]
    return [f for f in functions if f is not None]


def mark_levels(items: list[pytest.Item]) -> None:
    """Marks each test with its level, so that a new test file needs no marks by hand.

    `moto`: the test or a fixture or helper of ours it uses reaches moto; `cli`:
    subprocess (it runs a program: a script, the aws CLI, build.py, an instance script,
    a linter); `lint`: cfn-lint or checkov. Each of these is also `slow`, so that
    `pytest -m "not slow"` is the unit tier: in process, no AWS emulation, no linter.
    """
    for item in items:
        functions = _functions_behind(item)
        levels = [mark for mark, packages in LEVELS.items()
                  if any(reaches(f, packages, set()) for f in functions)]
        for mark in levels:
            item.add_marker(mark)
        if levels and item.get_closest_marker("slow") is None:
            item.add_marker("slow")
