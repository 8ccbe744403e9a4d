"""The template with every growth option on (issue 13) lints clean in four regions, as
the default template (every option off) does in all of them (test_lint.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint

from scripts import parameter_files
from tests.support import ALL_OPTIONS_ON

REGIONS = ["us-east-1", "eu-central-1", "ap-southeast-2", "sa-east-1"]
REQUIRED = {"DomainName": "social.examples.org", "HostedZoneId": "Z04000001ABCDEFGHIJK",
            "AlertEmail": "ops@examples.org"}


def _values(template: dict[str, Any]) -> dict[str, object]:
    values: dict[str, object] = {**REQUIRED, **ALL_OPTIONS_ON}
    for name, value in values.items():  # the CLI's "a,b" is the list cfn-lint expects
        if template["Parameters"][name]["Type"] == "CommaDelimitedList":
            values[name] = str(value).split(",")
    return values


def test_every_option_is_a_parameter_and_passes_the_templates_own_checks(template):
    given = {k: str(v) for k, v in {**REQUIRED, **ALL_OPTIONS_ON}.items()}
    assert parameter_files.problems(template, given, "us-east-1") == []


@pytest.mark.slow
@pytest.mark.parametrize("region", REGIONS)
def test_cfn_lint_finds_nothing_with_every_option_on(template, region):
    matches = lint(json.dumps(template), config=ManualArgs(regions=[region], parameters=[_values(template)]))
    assert [f"{m.rule.id} {m.message}" for m in matches] == []
