"""checkov, the security scanner auditors run, passes the built template with no failed check.

checkov lives in its own virtual environment (it pins an old boto3): the README's
test command and .ci/run install it as .venv-checkov; CHECKOV may name another
binary. Without it this test fails rather than skips: a security bar that is
silently not measured is no bar.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import ALL_OPTIONS_ON

ROOT = Path(__file__).resolve().parent.parent.parent

# Every check the template skips, by resource type, after review. A new skip must be
# added here on purpose; its reason lives in the resource's Metadata.
REVIEWED_SKIPS = {
    ("CKV_AWS_149", "AWS::SecretsManager::Secret"),  # retained secret outlives a stack-owned key
    ("CKV_AWS_115", "AWS::Lambda::Function"),        # reserved concurrency for custom resources
    ("CKV_AWS_116", "AWS::Lambda::Function"),        # DLQ: invoked synchronously by CloudFormation
    ("CKV_AWS_117", "AWS::Lambda::Function"),        # VPC: calls only public AWS APIs
    ("CKV_AWS_173", "AWS::Lambda::Function"),        # no secret in the environment
    ("CKV_AWS_157", "AWS::RDS::DBInstance"),         # Multi-AZ is a parameter (Fn::If)
    ("CKV_AWS_118", "AWS::RDS::DBInstance"),         # enhanced monitoring costs extra
    ("CKV_AWS_161", "AWS::RDS::DBInstance"),         # Mastodon cannot use IAM database auth
    ("CKV_AWS_16", "AWS::RDS::DBInstance"),          # a read replica inherits the encryption
    ("CKV_AWS_86", "AWS::CloudFront::Distribution"),  # standard logs cost per request
    ("CKV_AWS_91", "AWS::ElasticLoadBalancingV2::LoadBalancer"),  # access logs cost
    ("CKV_AWS_18", "AWS::S3::Bucket"),               # access logs need a second bucket
    ("CKV_AWS_88", "AWS::EC2::LaunchTemplate"),      # public IPv4 instead of a NAT gateway
    ("CKV_AWS_27", "AWS::SQS::Queue"),               # SSE-SQS; deleted keys only, no KMS cost
    ("CKV_AWS_317", "AWS::OpenSearchService::Domain"),  # audit logs cost; one user, behind a SG
    ("CKV_AWS_84", "AWS::OpenSearchService::Domain"),   # slow/error logs cost; metrics and alarms
}


def checkov_binary() -> str:
    candidate = os.environ.get("CHECKOV") or str(ROOT / ".venv-checkov" / "bin" / "checkov")
    if not Path(candidate).is_file():
        pytest.fail(f"checkov not found at {candidate}: run the README's test command, which "
                    "installs it in .venv-checkov, or set CHECKOV to its path")
    return candidate


def run_checkov(paths: list[Path]) -> dict[str, list[dict[str, Any]]]:
    command = [checkov_binary(), "--framework", "cloudformation", "--skip-download", "--compact",
               "-o", "json"]
    for path in paths:
        command += ["-f", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    # Exit status 1 means failed checks; anything else non-zero is checkov failing.
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["parsing_errors"] == 0
    return report["results"]


# checkov drops a resource whose Condition is false for the parameters' defaults: the
# template is scanned again with every option's switch turned on (issue 13), each with a
# setting that reaches its widest branch.
OPTIONS_ON = ALL_OPTIONS_ON
# A resource of each option that checkov must have judged.
OPTION_RESOURCES = [
    "AWS::OpenSearchService::Domain.SearchDomain",
    "AWS::EC2::SecurityGroup.SearchSecurityGroup",
    "AWS::EC2::LaunchTemplate.QueueWorkerLaunchTemplate",
    "AWS::IAM::Policy.QueueMetricsPolicy",
    "AWS::ElastiCache::ReplicationGroup.RailsCache",
    "AWS::RDS::DBInstance.DatabaseReplica",
    "AWS::IAM::Policy.WebServerImagePullPolicy",
    "AWS::IAM::Policy.ServerImagePullPolicy",
    "AWS::IAM::Policy.RolloutEcrImagesPolicy",
    "AWS::Lambda::Function.ImagePushFunction",
]
SCANNED = ("mastodon.json", "weakened.json", "options-on.json")


def _options_on(template: dict[str, Any]) -> dict[str, Any]:
    on = copy.deepcopy(template)
    for name, value in OPTIONS_ON.items():
        on["Parameters"][name]["Default"] = value
    return on


def _weakened(template: dict[str, Any]) -> dict[str, Any]:
    """The template with a log group's encryption removed: checkov must notice."""
    weak = copy.deepcopy(template)
    del weak["Resources"]["WebLogs"]["Properties"]["KmsKeyId"]
    return weak


@pytest.fixture(scope="module")
def results(template: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """checkov over the built template and a weakened copy, in one run (about 5 s)."""
    folder = tmp_path_factory.mktemp("checkov")
    built, weak, on = (folder / name for name in SCANNED)
    built.write_text(json.dumps(template))
    weak.write_text(json.dumps(_weakened(template)))
    on.write_text(json.dumps(_options_on(template)))
    found = run_checkov([built, weak, on])
    return {
        kind: {name: [c for c in found[f"{kind}_checks"] if c["file_path"].endswith(name)]
               for name in SCANNED}
        for kind in ("passed", "failed", "skipped")
    }


@pytest.mark.parametrize("scanned", ["mastodon.json", "options-on.json"])
def test_checkov_finds_no_failed_check(results, scanned):
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}"
              for c in results["failed"][scanned]]
    assert failed == []
    assert len(results["passed"][scanned]) > 100, "checkov evaluated far fewer checks than expected"


def test_checkov_judges_every_option_with_it_on(results):
    judged = {c["resource"] for kind in ("passed", "failed", "skipped")
              for c in results[kind]["options-on.json"]}
    assert set(OPTION_RESOURCES) <= judged


def test_checkov_would_catch_a_weakened_template(results):
    assert [(c["check_id"], c["resource"]) for c in results["failed"]["weakened.json"]] == [
        ("CKV_AWS_158", "AWS::Logs::LogGroup.WebLogs")]


def test_every_skip_is_reviewed_explained_and_still_needed(template, results):
    skipped = {(c["check_id"], c["resource"])
               for name in ("mastodon.json", "options-on.json") for c in results["skipped"][name]}
    declared = set()
    for name, resource in template["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert len(skip.get("comment", "")) > 40, f"{name} skips {skip['id']} without a real reason"
            assert (skip["id"], resource["Type"]) in REVIEWED_SKIPS, f"{name}: unreviewed skip {skip['id']}"
            declared.add((skip["id"], f"{resource['Type']}.{name}"))
    # A skip of a check that no longer fires (or never ran) is noise for reviewers.
    assert declared == skipped


@pytest.mark.parametrize("name", ["Cache", "RailsCache"])
def test_checkov_checks_every_redis_for_encryption_and_auth(results, name):
    # With the options on, the optional cache-only Redis is checked like the main one.
    passed = {c["check_id"] for c in results["passed"]["options-on.json"]
              if c["resource"] == f"AWS::ElastiCache::ReplicationGroup.{name}"}
    # at rest, in transit, in transit with an AUTH token
    assert {"CKV_AWS_29", "CKV_AWS_30", "CKV_AWS_31"} <= passed
