"""Fixtures for the rollout tests: a simulated fleet in moto (see simulation/world.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import tests.lambdas.conftest  # noqa: F401  (sets the Powertools and AWS environment first)
from simulation.world import World


@pytest.fixture
def fleet() -> Iterator[Callable[..., World]]:
    """fleet(web=N, batch=B, ...) -> a World, torn down after the test."""
    worlds: list[World] = []

    def make(**kwargs: Any) -> World:
        world = World(**kwargs).__enter__()
        worlds.append(world)
        return world

    yield make
    for world in worlds:
        world.__exit__(None, None, None)
