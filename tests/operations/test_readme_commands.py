"""The README's commands run as written: they exist in the installed aws CLI (awscli 1.x,
from the test extra) with the options given, the project's scripts accept them, every
command names the same region, and the figures it states are the estimate's.

A newcomer copies commands: `aws logs tail` (AWS CLI v2 only) failed, and commands
without --region quietly worked in another region than the stack's.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from awscli.clidriver import create_clidriver

from scripts import costs, parameter_files

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
REGION = "eu-central-1"
SCRIPTS = {"build.py": "build", "scripts/deploy.py": "scripts.deploy",
           "scripts/publish.py": "scripts.publish", "scripts/tootctl.py": "scripts.tootctl",
           "scripts/rollout.py": "scripts.rollout", "scripts/settings.py": "scripts.settings"}
# Scripts that work without a region (the build) or take several (publishing).
NO_REGION = {"build.py", "scripts/publish.py"}


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def commands(block: str) -> list[list[str]]:
    """The block's commands as argument lists: continuation lines joined, quotes respected."""
    found, pending = [], ""
    for line in block.replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            tokens = shlex.split(pending, comments=True)
        except ValueError:  # a quoted argument goes on over the next line
            continue
        pending = ""
        if tokens[:1] == ["sudo"]:
            tokens = tokens[1:]
        if tokens:
            found.append(tokens)
    assert not pending, f"unclosed quote in {block!r}"
    return found


def inline_aws_commands(text: str) -> list[list[str]]:
    return [shlex.split(" ".join(span.split())) for span in re.findall(r"`(aws [^`]+)`", text)]


def all_commands() -> list[list[str]]:
    return [c for block in code_blocks(README) for c in commands(block)] + inline_aws_commands(README)


AWS = [c for c in all_commands() if c[0] == "aws"]
SCRIPT_RUNS = [c for c in all_commands() for s in SCRIPTS if any(t.endswith(s) for t in c[:2])]


def label(command: list[str]) -> str:
    return " ".join(command[:3])[:60]


def test_the_readme_has_the_commands_this_test_reads():
    assert len(AWS) >= 15 and len(SCRIPT_RUNS) >= 8
    assert any(c[:3] == ["aws", "ssm", "put-parameter"] for c in AWS)


_DRIVER = create_clidriver()


def subcommands(command: Any) -> dict[str, Any]:
    if hasattr(command, "_get_command_table"):
        table: dict[str, Any] = command._get_command_table()
        return table
    return dict(getattr(command, "subcommand_table", {}) or {})


@pytest.mark.parametrize("command", AWS, ids=label)
def test_every_aws_command_exists_in_the_installed_cli_with_its_options(command):
    table = _DRIVER._get_command_table()
    assert command[1] in table, f"aws {command[1]}: no such service in this CLI"
    node, rest, path = table[command[1]], command[2:], ["aws", command[1]]
    while rest and not rest[0].startswith("-") and rest[0] in subcommands(node):
        node, path, rest = subcommands(node)[rest[0]], [*path, rest[0]], rest[1:]
    assert len(path) >= 3 and path[-1] != "wait", \
        f"{' '.join(command)}: no such command in the installed aws CLI"
    known = set(node.arg_table) | set(_DRIVER._get_argument_table())
    options = {token[2:].split("=")[0] for token in rest if token.startswith("--")}
    assert options <= known, f"{' '.join(path)} has no option {sorted(options - known)}"


class Refused(Exception):
    pass


@pytest.mark.parametrize("command", SCRIPT_RUNS, ids=label)
def test_every_script_command_is_accepted_by_the_script(command, monkeypatch):
    index = next(i for i, t in enumerate(command) for s in SCRIPTS if t.endswith(s))
    module = importlib.import_module(next(m for s, m in SCRIPTS.items() if command[index].endswith(s)))

    def refuse(self, message):
        raise Refused(message)

    monkeypatch.setattr(argparse.ArgumentParser, "error", refuse)
    module.parse_args(command[index + 1:])


@pytest.mark.parametrize("command", [c for c in [*AWS, *SCRIPT_RUNS]
                                     if not any(t.endswith(s) for t in c[:2] for s in NO_REGION)
                                     and any(t.startswith("--") for t in c)], ids=label)
def test_every_command_names_the_same_region(command):
    assert [command[i + 1] for i, t in enumerate(command) if t == "--region"] == [REGION]


def test_a_session_manager_command_says_what_to_install():
    assert any(c[:3] == ["aws", "ssm", "start-session"] for c in AWS)
    assert "Session Manager plugin" in README
    assert "session-manager-working-with-install-plugin" in README


def estimate(template: dict[str, Any], path: Path) -> costs.Estimate:
    prices = json.loads((REPO / "pricing" / "us-east-1.json").read_text())
    return costs.estimate(template, parameter_files.load(path, template, prices["region"]), prices)


@pytest.mark.parametrize("name", ["production", "staging", "medium", "large"])
def test_the_readme_states_what_each_example_file_costs(template, name):
    total = estimate(template, REPO / "parameters" / f"{name}.json").total
    stated = re.search(rf"`parameters/{name}\.json`[^*`]*\*\*\$([0-9.]+)/month\*\*", README)
    assert stated, f"the README states no cost for parameters/{name}.json"
    assert float(stated.group(1)) == total, f"README says ${stated.group(1)}, the estimate ${total}"


def test_the_readme_says_which_region_and_prices_the_estimate_is_for():
    prices = json.loads((REPO / "pricing" / "us-east-1.json").read_text())
    costs_section = README.split("## Costs", 1)[1].split("\n## ", 1)[0]
    assert f"**{prices['region']}**" in costs_section and f"**{prices['as_of']}**" in costs_section
    assert f"Only {prices['region']} is priced" in costs_section
