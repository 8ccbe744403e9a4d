"""The house tools agree with the code: ruff (lint) everywhere, mypy on every package setup.cfg names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


def test_ruff_finds_nothing():
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing():
    # Files and settings come from setup.cfg's [mypy] section.
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
