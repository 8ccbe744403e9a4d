"""parameters/*.json fit the built template, as CloudFormation and cfn-lint would judge them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cfnlint.api import ManualArgs, lint

from scripts import parameter_files

FILES = sorted((Path(__file__).resolve().parents[2] / "parameters").glob("*.json"))


def test_there_are_the_example_and_growth_profile_files():
    assert {"production", "staging", "medium", "large"} <= {f.stem for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_parameter_file_fits_the_template(template, path):
    values = parameter_files.load(path, template)  # raises with every problem listed
    required = {n for n, spec in template["Parameters"].items() if "Default" not in spec}
    assert required <= set(values)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_cfn_lint_finds_nothing_with_the_parameter_file(template, path):
    values: dict[str, object] = dict(parameter_files.read(path))
    for name, value in values.items():  # the CLI's "a,b" is the list cfn-lint expects
        if template["Parameters"][name]["Type"] == "CommaDelimitedList":
            values[name] = str(value).split(",")
    matches = lint(json.dumps(template), config=ManualArgs(regions=["us-east-1"], parameters=[values]))
    assert [f"{m.rule.id} {m.message}" for m in matches] == []


@pytest.mark.parametrize(("case", "change", "expected"), [
    ("unknown key", {"DomainNmae": "x.example.com"}, "DomainNmae is not a parameter of the template"),
    ("value not allowed", {"WebInstanceType": "t2.micro"}, "WebInstanceType='t2.micro': not one of"),
    ("pattern", {"DomainName": "Social.Example.com"}, "DomainName='Social.Example.com': a lower-case"),
    ("below minimum", {"DatabaseBackupRetentionDays": "0"},
     "DatabaseBackupRetentionDays='0': below the minimum 1"),
    ("size spelled otherwise", {"WebMaxSize": "02"}, "WebMaxSize='02': not one of 1, 2"),
    ("not a number", {"DatabaseAllocatedStorage": "lots"}, "not a number"),
    ("rule", {"HostedZoneId": ""}, "rule CertificatesWithoutHostedZone"),
])
def test_a_file_cloudformation_would_refuse_is_refused(template, case, change, expected):
    values = {**parameter_files.read(FILES[0]), **change}
    assert any(expected in problem for problem in parameter_files.problems(template, values)), case


def test_a_missing_required_parameter_is_named(template):
    values = {k: v for k, v in parameter_files.read(FILES[0]).items() if k != "AlertEmail"}
    assert "AlertEmail is required (it has no default)" in parameter_files.problems(template, values)


@pytest.mark.parametrize(("text", "expected"), [
    ("{not json", "not JSON"),
    ('{"DomainName": "a.example.com"}', "expected a list"),
    ('[{"ParameterKey": "A", "ParameterValue": 1}]', "string values"),
    ('[{"ParameterKey": "A", "ParameterValue": "1"}, {"ParameterKey": "A", "ParameterValue": "2"}]',
     "A is given twice"),
])
def test_a_file_that_is_not_a_parameter_file_is_refused(tmp_path, text, expected):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(parameter_files.ParameterFileError, match=expected):
        parameter_files.read(path)


@pytest.mark.parametrize(("region", "refused"), [("us-east-1", False), ("eu-central-1", True), (None, False)],
                         ids=["us-east-1", "eu-central-1", "region-unknown"])
def test_rules_that_depend_on_the_region_are_judged_in_that_region_only(template, region, refused):
    # WAF's web ACL can be created only by a stack in us-east-1; an unknown region is left
    # to CloudFormation rather than guessed.
    values = {"DomainName": "social.example.com", "AlertEmail": "a@example.com", "WafEnabled": "true"}
    found = parameter_files.problems(template, values, region)
    assert any("WafInUsEast1" in problem for problem in found) is refused
