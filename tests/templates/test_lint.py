"""cfn-lint, AWS's own validator, finds nothing in the built template in any region."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint
from cfnlint.helpers import REGIONS
from cfnlint.schema import PROVIDER_SCHEMA_MANAGER, ResourceNotFoundError

from templates import parameters

# Every commercial region cfn-lint knows (not China, GovCloud, ISO or the European
# Sovereign Cloud, which are other partitions). The template must deploy in each: where
# a service is missing (SES in eu-south-2, ap-southeast-6...), a condition keeps its
# resources out and a rule asks for the alternative.
COMMERCIAL_REGIONS = [r for r in REGIONS
                      if not r.startswith(("cn-", "us-gov-", "us-iso", "eu-isoe", "eusc-"))]
# cfn-lint's time grows faster than linearly with the regions of one call (it solves the
# template's region conditions for all of them together): small batches are far quicker.
BATCH = 5
BATCHES = [COMMERCIAL_REGIONS[i:i + BATCH] for i in range(0, len(COMMERCIAL_REGIONS), BATCH)]


def findings(template: dict[str, Any], regions: list[str]) -> list[str]:
    matches = lint(json.dumps(template), config=ManualArgs(regions=regions))
    return [f"{m.rule.id} {m.message} ({'/'.join(map(str, m.path))})" for m in matches]


def test_every_commercial_region_is_linted():
    assert {"us-east-1", "eu-south-2", "ap-southeast-6", "mx-central-1", "af-south-1"} <= set(
        COMMERCIAL_REGIONS)
    assert sorted(r for batch in BATCHES for r in batch) == sorted(COMMERCIAL_REGIONS)


@pytest.mark.slow
@pytest.mark.parametrize("regions", BATCHES, ids=["+".join(b) for b in BATCHES])
def test_the_template_has_no_error_and_no_warning_in_any_commercial_region(template, regions):
    assert findings(template, regions) == []


def test_ses_is_kept_out_of_exactly_the_regions_that_lack_it():
    # The regions the template treats as lacking SES are those where CloudFormation has
    # no AWS::SES::EmailIdentity, by cfn-lint's regional schemas: neither more nor fewer.
    lacking = set()
    for region in COMMERCIAL_REGIONS:
        try:
            PROVIDER_SCHEMA_MANAGER.get_resource_schema(region, "AWS::SES::EmailIdentity")
        except ResourceNotFoundError:
            lacking.add(region)
    assert lacking and lacking == set(parameters.NO_SES_REGIONS)


def test_where_ses_is_missing_the_template_asks_for_an_external_smtp_server(template):
    rule = template["Rules"]["ExternalSmtpWhereSesIsMissing"]
    description = rule["Assertions"][0]["AssertDescription"]
    assert "cannot create an Amazon SES identity in this region" in description
    assert rule["Assertions"][0]["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "SmtpServer"}, ""]}]}
    mentioned = {e["Fn::Equals"][1] for e in _region_tests(rule["RuleCondition"])}
    assert mentioned == set(parameters.NO_SES_REGIONS)
    # Every SES resource depends on a condition that is false there.
    for name in ("EmailIdentity", "SmtpUser"):
        condition = template["Resources"][name]["Condition"]
        assert {e["Fn::Equals"][1] for e in _region_tests(template["Conditions"][condition])} == mentioned


def _region_tests(node: Any) -> list[dict[str, Any]]:
    """Every {"Fn::Equals": [{"Ref": "AWS::Region"}, region]} inside a condition."""
    if isinstance(node, dict):
        if node.get("Fn::Equals", [None])[0] == {"Ref": "AWS::Region"}:
            return [node]
        return [t for v in node.values() for t in _region_tests(v)]
    if isinstance(node, list):
        return [t for v in node for t in _region_tests(v)]
    return []


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
