"""cfn-lint, AWS's own validator, finds nothing in the built template in any region."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint

# Regions on three continents, including ones that lack some instance types.
REGIONS = ["us-east-1", "eu-central-1", "ap-northeast-1", "sa-east-1"]
# The one commercial region cfn-lint knows where CloudFront has no VPC origins: the
# internet-facing load balancer's branch. SES does not exist there (an external SMTP
# server is the only way to mail), which cfn-lint reports whatever the condition says.
FALLBACK_REGION = "ap-southeast-6"
FALLBACK_KNOWN = {"E3006 Resource type 'AWS::SES::EmailIdentity' does not exist in 'ap-southeast-6' "
                  "(Resources/EmailIdentity/Type)"}


def findings(template: dict[str, Any], regions: list[str]) -> list[str]:
    matches = lint(json.dumps(template), config=ManualArgs(regions=regions))
    return [f"{m.rule.id} {m.message} ({'/'.join(map(str, m.path))})" for m in matches]


def test_the_template_has_no_error_and_no_warning_in_any_region(template):
    assert findings(template, REGIONS) == []


def test_the_region_without_vpc_origins_has_nothing_new(template):
    assert set(findings(template, [FALLBACK_REGION])) <= FALLBACK_KNOWN


def test_the_linter_would_catch_a_broken_property(template):
    broken = copy.deepcopy(template)
    broken["Resources"]["Database"]["Properties"]["StorageEncryptd"] = True
    assert any(f.startswith("E3002") for f in findings(broken, ["us-east-1"]))


def test_every_suppressed_lint_check_carries_its_reason(template):
    for name, resource in template["Resources"].items():
        metadata = resource.get("Metadata", {})
        ignored = metadata.get("cfn-lint", {}).get("config", {}).get("ignore_checks", [])
        reasons = metadata.get("cfn-lint-reasons", {})
        for check in ignored:
            assert len(reasons.get(check, "")) > 30, f"{name} ignores {check} without a reason"


@pytest.mark.parametrize("kind", ["checkov"])
def test_every_checkov_skip_carries_its_reason(template, kind):
    for name, resource in template["Resources"].items():
        for skip in resource.get("Metadata", {}).get(kind, {}).get("skip", []):
            assert skip["id"].startswith("CKV"), name
            assert len(skip.get("comment", "")) > 30, f"{name} skips {skip['id']} without a reason"


def test_the_database_version_is_still_checked_where_its_deprecation_warning_is_ignored(template):
    # W3691 is ignored on the database (a bare major is in cfn-lint's deprecated list);
    # a version RDS does not know must still fail E3691.
    unknown = copy.deepcopy(template)
    unknown["Resources"]["Database"]["Properties"]["EngineVersion"] = "99"
    assert any(f.startswith("E3691") for f in findings(unknown, ["us-east-1"]))
