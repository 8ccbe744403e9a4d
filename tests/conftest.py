"""Fixtures shared by every test: the built template, as the build writes it."""

from __future__ import annotations

import json
import os
import sys
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


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    """The default template as a plain dict (what CloudFormation receives)."""
    built = build_template(BuildOptions(), build.load_assets())
    return json.loads(built.to_json())


@pytest.fixture(scope="session")
def template_json(template: dict[str, Any]) -> str:
    return json.dumps(template)
