"""Fixtures for the instance script tests; the machinery is in instance_harness.py."""

from tests.instance.instance_harness import bootstrap, web_run, worker_run  # noqa: F401  (pytest fixtures)
