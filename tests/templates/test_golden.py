"""The built template is the reviewed snapshot: every change to it shows up as a diff.

The snapshot, tests/golden/mastodon.yaml, is what `python build.py` writes with the
default options. After a change that is meant to alter the template, refresh it with
`python build.py --golden` and review `git diff tests/golden/` with the change.
Tests elsewhere check properties, relations and behaviour; literal values of the
template are held here.
"""

from __future__ import annotations

import difflib

import pytest

import build
from templates.options import BuildOptions


def test_the_built_template_is_the_reviewed_snapshot(tmp_path):
    build.build(BuildOptions(), tmp_path)
    built = (tmp_path / f"{build.TEMPLATE_NAME}.yaml").read_text().splitlines()
    golden = build.GOLDEN_TEMPLATE.read_text().splitlines()
    diff = list(difflib.unified_diff(golden, built, "tests/golden/mastodon.yaml", "built", lineterm="", n=2))
    assert not diff, ("the template changed: if that is meant, run `python build.py --golden` and review "
                      "`git diff tests/golden/`\n" + "\n".join(diff[:80]))


def test_golden_writes_the_snapshot_and_refuses_a_non_default_build(tmp_path, monkeypatch):
    target = tmp_path / "golden" / "mastodon.yaml"
    monkeypatch.setattr(build, "GOLDEN_TEMPLATE", target)
    assert build.main(["--golden", "--output-dir", str(tmp_path / "dist")]) == 0
    assert target.read_text() == (tmp_path / "dist" / f"{build.TEMPLATE_NAME}.yaml").read_text()
    with pytest.raises(SystemExit) as refused:
        build.main(["--golden", "--mastodon-version", "v4.7.0", "--output-dir", str(tmp_path / "other")])
    assert refused.value.code == 2
