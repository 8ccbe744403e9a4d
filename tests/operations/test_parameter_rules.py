"""Every Rule of the built template is judged by the parameter-file check, or said not to be.

deploy.py and build.py --parameters promise that a file CloudFormation would refuse
stops before AWS. A Rule built from a function the checker cannot evaluate used to pass
silently (Fn::Contains in WebMinSizeAtMostMaxSize): each Rule is broken here by a file,
and a function the checker does not know makes the Rule "not checked", never "holds".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts import parameter_files
from scripts.template_values import RULE_FUNCTIONS, Evaluator, Unevaluable

REPO = Path(__file__).resolve().parents[2]
PRODUCTION = parameter_files.read(REPO / "parameters" / "production.json")
SECRET = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:smtp-AbCdEf"
WEB_ACL = "arn:aws:wafv2:us-east-1:123456789012:global/webacl/mastodon/0123abcd-0123-0123-0123-0123456789ab"

# Rule -> (a change to the production file that breaks it, the stack's region).
BREAKERS: dict[str, tuple[dict[str, str], str]] = {
    "CertificatesWithoutHostedZone": ({"HostedZoneId": ""}, "eu-central-1"),
    "ExternalSmtpNeedsLogin": ({"SmtpServer": "smtp.example.net"}, "eu-central-1"),
    "ExternalSmtpWhereSesIsMissing": ({}, "eu-south-2"),
    "WafInUsEast1": ({"WafEnabled": "true"}, "eu-central-1"),
    "WebMinSizeAtMostMaxSize": ({"WebMinSize": "3", "WebMaxSize": "2"}, "eu-central-1"),
    "QueueWorkerMinSizeAtMostMaxSize": ({"QueueWorkerMinSize": "2", "QueueWorkerMaxSize": "1"},
                                        "eu-central-1"),
    "MainWorkerRunsTheScheduler": ({"QueueWorkerMaxSize": "2", "MainWorkerQueues": "mailers"},
                                   "eu-central-1"),
    "EveryQueueRunsSomewhere": ({"MainWorkerQueues": "scheduler,mailers"}, "eu-central-1"),
    "FleetFitsTheDatabase": ({"DatabaseInstanceClass": "db.t4g.micro", "WebMaxSize": "10",
                              "QueueWorkerMaxSize": "5"}, "eu-central-1"),
    "ReadReplicaAtLeastTheDatabase": ({"DatabaseReplicaClass": "db.t4g.micro"}, "eu-central-1"),
    "SearchVolumeFitsT3Small": ({"SearchEnabled": "true", "SearchVolumeSize": "200"}, "eu-central-1"),
    "SearchVolumeFitsT3Medium": ({"SearchEnabled": "true", "SearchInstanceType": "t3.medium.search",
                                  "SearchVolumeSize": "500"}, "eu-central-1"),
    "UpgradeOnImagePushNeedsEcr": ({"UpgradeOnImagePush": "true"}, "eu-central-1"),
    # Your own images with no first version named (the pinned upstream tag need not be there),
    "OwnImagesNameTheirFirstVersion": ({"WebImageRepository": "ghcr.io/glitch-soc/mastodon"}, "eu-central-1"),
    # and upstream's images with a first version a rule cannot tell from a release.
    "UpstreamImagesStartAtThePinnedRelease": ({"InitialMastodonVersion": "latest"}, "eu-central-1"),
}


def functions_in(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {k for k in node if k == "Ref" or k.startswith("Fn::")}
        return found.union(*(functions_in(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(functions_in(v) for v in node))
    return set()


def test_every_rule_of_the_template_has_a_file_that_breaks_it(template):
    assert set(BREAKERS) == set(template["Rules"]), "a new Rule needs its breaking file here"


@pytest.mark.parametrize("rule", sorted(BREAKERS))
def test_a_file_that_breaks_a_rule_is_refused_naming_the_rule(template, rule):
    change, region = BREAKERS[rule]
    found = parameter_files.problems(template, {**PRODUCTION, **change}, region)
    assert any(problem.startswith(f"rule {rule}:") for problem in found), found
    assert parameter_files.unchecked_rules(template, {**PRODUCTION, **change}, region) == []


def test_the_production_file_keeps_every_rule_in_its_region(template):
    assert parameter_files.problems(template, PRODUCTION, "eu-central-1") == []
    assert parameter_files.unchecked_rules(template, PRODUCTION, "eu-central-1") == []


@pytest.mark.parametrize(("change", "region"), [
    ({"WebMinSize": "2", "WebMaxSize": "2"}, "eu-central-1"),
    ({"WebMinSize": "1", "WebMaxSize": "10"}, "eu-central-1"),
    ({"SmtpServer": "smtp.example.net", "SmtpLogin": "u", "SmtpPasswordSecretArn": SECRET}, "eu-south-2"),
    ({"WafEnabled": "true"}, "us-east-1"),
    ({"WafWebAclArn": WEB_ACL}, "eu-central-1"),
], ids=["equal sizes", "widest sizes", "smtp where ses is missing", "waf in us-east-1", "existing acl"])
def test_files_that_keep_every_rule_pass(template, change, region):
    assert parameter_files.problems(template, {**PRODUCTION, **change}, region) == []


@pytest.mark.parametrize(("minimum", "maximum"), [(m, n) for m in range(1, 11) for n in range(1, 11)])
def test_the_size_rule_refuses_exactly_a_minimum_above_the_maximum(template, minimum, maximum):
    values = {**PRODUCTION, "WebMinSize": str(minimum), "WebMaxSize": str(maximum)}
    found = parameter_files.problems(template, values, "us-east-1")
    refused = any("WebMinSizeAtMostMaxSize" in p for p in found)
    assert refused is (minimum > maximum)


def test_the_checker_evaluates_every_function_the_rules_use(template):
    used = functions_in(template["Rules"])
    assert used <= RULE_FUNCTIONS, f"teach scripts/template_values.py {sorted(used - RULE_FUNCTIONS)}"


@pytest.mark.parametrize(("expression", "expected"), [
    ({"Fn::Contains": [["a", "b"], "b"]}, True),
    ({"Fn::Contains": [["a", "b"], "c"]}, False),
    ({"Fn::Contains": [["1", "2"], {"Ref": "Size"}]}, True),
    ({"Fn::EachMemberEquals": [{"Ref": "List"}, "x"]}, False),
    ({"Fn::EachMemberEquals": [["x", "x"], "x"]}, True),
    ({"Fn::EachMemberIn": [{"Ref": "List"}, ["x", "y", "z"]]}, True),
    ({"Fn::EachMemberIn": [{"Ref": "List"}, ["x"]]}, False),
])
def test_the_rule_functions_mean_what_cloudformation_says(expression, expected):
    evaluator = Evaluator({}, {"Size": "2", "List": "x,y"}, strict=True)
    assert evaluator.value(expression) is expected


def test_a_rule_the_checker_cannot_evaluate_is_reported_unchecked_not_passed():
    template = {"Parameters": {"Subnet": {"Type": "AWS::EC2::Subnet::Id"}}, "Rules": {"SubnetInVpc": {
        "Assertions": [{"Assert": {"Fn::EachMemberEquals": [
            {"Fn::ValueOfAll": ["AWS::EC2::Subnet::Id", "VpcId"]}, "vpc-1"]}}]}}}
    values = {"Subnet": "subnet-1"}
    assert parameter_files.problems(template, values, "us-east-1") == []
    (unchecked,) = parameter_files.unchecked_rules(template, values, "us-east-1")
    assert "SubnetInVpc not checked here" in unchecked and "Fn::ValueOfAll" in unchecked
    with pytest.raises(Unevaluable):
        Evaluator(template, values, strict=True).value({"Fn::ValueOf": ["Subnet", "VpcId"]})


def test_a_rule_on_the_region_is_unchecked_until_the_region_is_known(template):
    unchecked = parameter_files.unchecked_rules(template, PRODUCTION)
    assert any("ExternalSmtpWhereSesIsMissing" in u and "AWS::Region" in u for u in unchecked)
    assert parameter_files.unchecked_rules(template, PRODUCTION, "eu-central-1") == []


def test_build_refuses_to_price_a_file_whose_minimum_exceeds_its_maximum(tmp_path):
    path = tmp_path / "impossible.json"
    values = {**PRODUCTION, "WebMinSize": "3", "WebMaxSize": "2"}
    path.write_text(json.dumps([{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]))
    result = subprocess.run([sys.executable, "build.py", "--output-dir", str(tmp_path / "dist"),
                             "--parameters", str(path)], cwd=REPO, capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 2, result.stdout
    assert "WebMinSizeAtMostMaxSize" in result.stderr and "total" not in result.stdout


@pytest.mark.parametrize("name", ["production", "staging", "medium", "large"])
def test_the_unedited_example_files_are_named_as_such(name):
    warnings = parameter_files.example_values(parameter_files.read(REPO / "parameters" / f"{name}.json"))
    assert any(w.startswith("DomainName=") for w in warnings)
    assert any(w.startswith("HostedZoneId=") for w in warnings)
    assert any(w.startswith("AlertEmail=") for w in warnings)


def test_an_edited_file_draws_no_example_warning():
    values = {**PRODUCTION, "DomainName": "social.examples.org", "HostedZoneId": "Z04000001ABCDEFGHIJK",
              "AlertEmail": "ops@social.examples.org"}
    assert parameter_files.example_values(values) == []


def test_a_zone_id_pasted_with_its_route53_prefix_says_to_drop_it(template):
    found = parameter_files.problems(template, {**PRODUCTION, "HostedZoneId": "/hostedzone/Z04000001ABCDEF"})
    assert any("drop the /hostedzone/ prefix" in p and p.endswith(": Z04000001ABCDEF") for p in found)
