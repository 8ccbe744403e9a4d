"""Fixtures shared by every test: the built template, as the build writes it."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# moto's EC2 loads some 1,300 stock machine images into every region's backend it makes,
# and again at each reset (every mock's end): 0.2 s of CPU of each simulated fleet's set-up
# and tear-down (0.04 s with one image), some 250 times a run.
# The tests launch from one image (simulation/world.py, tests/operations) or take the first
# that Amazon owns; this file names that one alone. Read when moto's EC2 is first imported.
os.environ.setdefault("MOTO_AMIS_PATH", str(ROOT / "tests" / "moto_images.json"))

import build  # noqa: E402
from templates.options import BuildOptions  # noqa: E402
from templates.stack import build_template  # noqa: E402
from tests.levels import mark_levels  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_levels(items)  # moto, cli, lint, and slow for each: see tests/levels.py


@pytest.fixture(scope="session", autouse=True)
def direct_python3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`python3` for the programs the tests run: the interpreter below this one, not a shim.

    The instance scripts call python3 several times a run, and the tests run them hundreds
    of times. Where python3 is a version manager's shim (pyenv's runs a dozen bash scripts
    before Python), each call cost half a second on a loaded machine. This is the python3
    the tests' virtual environment was made from (.ci/run: `python3 -m venv`), without the
    environment's packages, as on a server."""
    folder = tmp_path_factory.mktemp("python3")
    (folder / "python3").symlink_to(Path(getattr(sys, "_base_executable", sys.executable)))
    before = os.environ["PATH"]
    os.environ["PATH"] = f"{folder}{os.pathsep}{before}"
    yield
    os.environ["PATH"] = before


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    """The default template as a plain dict (what CloudFormation receives)."""
    built = build_template(BuildOptions(), build.load_assets())
    return json.loads(built.to_json())


@pytest.fixture(scope="session")
def template_json(template: dict[str, Any]) -> str:
    return json.dumps(template)
