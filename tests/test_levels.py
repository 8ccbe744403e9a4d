"""Every test carries the level of what it reaches, so `pytest -m "not slow"` stays the unit tier."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from simulation.world import World
from tests.levels import LEVELS, reaches


def _runs_a_program() -> None:
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def _imports_moto_inside() -> None:
    from moto import mock_aws  # noqa: F401


class _Helper:
    def start(self) -> None:
        _imports_moto_inside()


def _through_a_helper() -> None:
    _Helper().start()


def _pure() -> int:
    return len([1, 2])


def _builds_a_fleet() -> None:
    World(web=1).__enter__()


# Looked up by name so that this module's own tests do not reach them (and get marked).
SAMPLES: dict[str, Any] = {"program": _runs_a_program, "moto": _imports_moto_inside,
                           "helper": _through_a_helper, "pure": _pure, "fleet": _builds_a_fleet}


def _levels(sample: str) -> set[str]:
    return {mark for mark, packages in LEVELS.items() if reaches(SAMPLES[sample], packages, set())}


def test_a_function_that_runs_a_program_is_at_the_cli_level():
    assert _levels("program") == {"cli"}


def test_an_import_inside_a_function_and_one_through_our_helpers_are_both_seen():
    assert _levels("moto") == {"moto"}
    assert _levels("helper") == {"moto"}


def test_the_simulated_fleet_is_followed_like_our_test_helpers():
    # simulation.world builds the fleet in moto: a test that makes one is a moto test.
    assert _levels("fleet") == {"moto"}


def test_a_pure_function_has_no_level():
    assert _levels("pure") == set()


def test_this_test_is_marked_because_it_runs_a_program(request):
    _runs_a_program()
    assert request.node.get_closest_marker("cli") and request.node.get_closest_marker("slow")
    assert request.node.get_closest_marker("moto") is None


def test_a_test_that_reaches_nothing_stays_in_the_unit_tier(request):
    assert request.node.get_closest_marker("slow") is None
