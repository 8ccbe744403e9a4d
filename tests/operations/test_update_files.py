"""An update's parameter file is checked as the stack will be: left-out keys keep their values.

`aws cloudformation deploy` keeps the previous value of every key a file leaves out
(UsePreviousValue), as the README says; deploy.py must not refuse such a file for a
missing required key, nor judge the template's Rules on defaults the stack does not use.
"""

from __future__ import annotations

import json

import pytest

from scripts import deploy, parameter_files

REGION = "eu-central-1"


def write(tmp_path, values):
    path = tmp_path / "update.json"
    path.write_text(json.dumps([{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]))
    return path


def test_a_file_that_leaves_out_required_keys_is_checked_with_the_stacks_values(template, tmp_path):
    path = write(tmp_path, {"WebMaxSize": "3"})
    with pytest.raises(parameter_files.ParameterFileError):
        parameter_files.load(path, template, REGION)  # a first create: DomainName is required
    stack = {"DomainName": "social.example.org", "AlertEmail": "admin@example.org",
             "HostedZoneId": "Z0123456789ABCDEFGHIJ"}
    values = parameter_files.load(path, template, REGION, previous=lambda: stack)
    assert values == {"WebMaxSize": "3"}  # only the file's keys are passed on


def test_the_stacks_values_do_not_excuse_what_the_file_itself_breaks(template, tmp_path):
    path = write(tmp_path, {"WebMinSize": "3", "WebMaxSize": "2"})
    stack = {"DomainName": "social.example.org", "AlertEmail": "admin@example.org",
             "HostedZoneId": "Z0123456789ABCDEFGHIJ"}
    with pytest.raises(parameter_files.ParameterFileError, match="WebMinSize"):
        parameter_files.load(path, template, REGION, previous=lambda: stack)


def test_a_file_that_fits_alone_never_asks_for_the_stack(template, tmp_path):
    path = write(tmp_path, {"DomainName": "social.example.org", "AlertEmail": "admin@example.org",
                            "HostedZoneId": "Z0123456789ABCDEFGHIJ"})

    def previous():
        raise AssertionError("no AWS call for a file that fits on its own")

    values = parameter_files.load(path, template, REGION, previous=previous)
    assert values["DomainName"] == "social.example.org"


@pytest.mark.parametrize(("status", "kept"), [
    ("UPDATE_COMPLETE", {"DomainName": "social.example.org"}),
    ("ROLLBACK_COMPLETE", {}),  # a failed first create keeps nothing
    ("REVIEW_IN_PROGRESS", {}),
])
def test_the_values_an_update_keeps(monkeypatch, status, kept):
    answer = {"Stacks": [{"StackStatus": status, "Parameters": [
        {"ParameterKey": "DomainName", "ParameterValue": "social.example.org"},
        {"ParameterKey": "SmtpPassword", "ParameterValue": "****"},  # NoEcho: masked, never used
    ]}]}
    monkeypatch.setattr(deploy.awscli, "run", lambda args, region: answer)
    assert deploy.current_parameters("mastodon", REGION) == kept


def test_no_stack_keeps_nothing(monkeypatch):
    def missing(args, region):
        raise deploy.awscli.AwsError("Stack with id mastodon does not exist")

    monkeypatch.setattr(deploy.awscli, "run", missing)
    assert deploy.current_parameters("mastodon", REGION) == {}


def test_a_deploy_without_boto3_skips_its_check_instead_of_failing(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "boto3" else real(name, *a))
    assert deploy.run_check("mastodon", REGION) == 0
    assert "pip install boto3" in capsys.readouterr().err


def test_the_check_decides_the_deploys_status_when_it_can_run(monkeypatch):
    from scripts import check

    asked = []
    monkeypatch.setattr(check, "main", lambda argv: asked.append(argv) or 1)
    assert deploy.run_check("mastodon", REGION) == 1
    assert asked == [["--stack-name", "mastodon", "--region", REGION]]
