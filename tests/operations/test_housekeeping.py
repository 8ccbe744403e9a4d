"""What users expect of a project: a license that matches its metadata, a changelog,
scripts that say their version and explain every option."""

from __future__ import annotations

import argparse
import configparser
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import costs
from templates.options import MASTODON_VERSION

REPO = Path(__file__).resolve().parents[2]
SETUP = configparser.ConfigParser()
SETUP.read(REPO / "setup.cfg")
VERSION = SETUP.get("metadata", "version")
# Every command-line program of the project: (module, file, arguments that parse).
PROGRAMS = [
    ("build", "build.py", []),
    ("scripts.deploy", "scripts/deploy.py", ["--stack-name", "s", "--parameters", "p.json"]),
    ("scripts.publish", "scripts/publish.py", ["--bucket", "b", "--region", "us-east-1"]),
    ("scripts.tootctl", "scripts/tootctl.py", ["mastodon", "media", "usage"]),
    ("scripts.rollout", "scripts/rollout.py", ["mastodon", "status"]),
    ("scripts.settings", "scripts/settings.py", ["mastodon", "apply"]),
    ("scripts.check", "scripts/check.py", ["--stack-name", "mastodon"]),
]


def test_the_license_file_is_the_license_setup_cfg_declares():
    assert SETUP.get("metadata", "license") == "MIT"
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Permission is hereby granted, free of charge" in text
    assert SETUP.get("metadata", "license_files") == "LICENSE"


def test_the_changelog_has_an_entry_for_the_current_version():
    headings = [line for line in (REPO / "CHANGELOG.md").read_text().splitlines() if line.startswith("## ")]
    assert f"## {VERSION}" in headings


def test_every_program_is_listed_here():
    found = {"build.py"} | {f"scripts/{p.name}" for p in (REPO / "scripts").glob("*.py")
                            if "def main(" in p.read_text()}
    assert found == {file for _, file, _ in PROGRAMS}


@pytest.mark.parametrize(("module", "file", "args"), PROGRAMS, ids=[p[1] for p in PROGRAMS])
def test_every_program_prints_the_version_and_the_pinned_mastodon(module, file, args):
    result = subprocess.run([sys.executable, file, "--version"], cwd=REPO, capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    expected = f"{Path(file).name} {VERSION} (mastodon-aws; pins Mastodon {MASTODON_VERSION})"
    assert result.stdout.strip() == expected


class Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


@pytest.mark.parametrize(("module", "file", "args"), PROGRAMS, ids=[p[1] for p in PROGRAMS])
def test_every_option_of_every_program_has_help_text(monkeypatch, module, file, args):
    def capture(self, *_, **__):
        raise Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Parsed) as parsed:
        importlib.import_module(module).parse_args(args)
    actions = [a for a in parsed.value.parser._actions if not isinstance(a, argparse._HelpAction)]
    assert actions
    assert [a.option_strings or a.dest for a in actions if not a.help] == []


def test_publish_refuses_waf_for_a_region_other_than_us_east_1(tmp_path):
    values = {"DomainName": "social.examples.org", "AlertEmail": "a@examples.org", "WafEnabled": "true",
              "HostedZoneId": "Z04000001ABCDEFGHIJK"}
    path = tmp_path / "waf.json"
    path.write_text(json.dumps([{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]))
    result = subprocess.run([sys.executable, "-m", "scripts.publish", "--bucket", "b-{region}", "--region",
                             "us-east-1", "--region", "eu-central-1", "--parameters", str(path)], cwd=REPO,
                            capture_output=True, text=True, check=False, timeout=120,
                            env={"PATH": "/nonexistent"})  # no aws CLI: nothing may reach AWS
    assert result.returncode == 2
    assert "in eu-central-1:" in result.stderr and "rule WafInUsEast1" in result.stderr


def test_the_spot_total_says_spot(template):
    prices = json.loads((REPO / "pricing" / "us-east-1.json").read_text())
    spot_total = costs.estimate(template, {}, prices, spot=True).lines()[-2]
    on_demand_total = costs.estimate(template, {}, prices).lines()[-1]
    assert spot_total.startswith("total") and "servers on SPOT" in spot_total
    assert on_demand_total.startswith("total") and "SPOT" not in on_demand_total
