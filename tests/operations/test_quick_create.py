"""Quick-create links in AWS's documented form, and publishing the template to S3 (moto)."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest

from scripts import quick_create
from tests.operations.conftest import client, run_script

TEMPLATE_URL = "https://my-templates.s3.eu-central-1.amazonaws.com/mastodon/abc/mastodon.json"


def split(link: str) -> tuple[str, str, dict[str, str]]:
    """(base up to '#', route, query of the fragment) of a console link."""
    parts = urlsplit(link)
    route, _, query = parts.fragment.partition("?")
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{parts.query}", route, dict(parse_qsl(query))


def test_the_link_has_the_documented_form():
    link = quick_create.link("eu-central-1", TEMPLATE_URL, "mastodon", {"DomainName": "social.example.com"})
    base, route, query = split(link)
    assert base == "https://eu-central-1.console.aws.amazon.com/cloudformation/home?region=eu-central-1"
    assert route == "/stacks/quickcreate"
    assert query == {"templateURL": TEMPLATE_URL, "stackName": "mastodon",
                     "param_DomainName": "social.example.com"}


def test_every_value_is_percent_encoded():
    tricky = "a&b=c #d/é"
    link = quick_create.link("us-east-1", TEMPLATE_URL + "?versionId=x&y", "m", {"MailFromAddress": tricky})
    fragment = urlsplit(link).fragment
    assert "&b=c" not in fragment and " " not in fragment and "é" not in fragment
    query = split(link)[2]
    assert query["param_MailFromAddress"] == tricky
    assert query["templateURL"] == TEMPLATE_URL + "?versionId=x&y"


def test_no_echo_parameters_are_left_out():
    template = {"Parameters": {"Secret": {"Type": "String", "NoEcho": True}}}
    assert "Secret" not in quick_create.link("us-east-1", TEMPLATE_URL, "m", {"Secret": "x"}, template)


@pytest.mark.parametrize("name", ["1mastodon", "mast_odon", "m" * 129, ""])
def test_an_invalid_stack_name_is_refused(name):
    with pytest.raises(ValueError, match="stack name"):
        quick_create.link("us-east-1", TEMPLATE_URL, name, {})


def test_publish_uploads_to_each_region_and_prints_a_link_per_region(aws_env, template, tmp_path):
    built = tmp_path / "mastodon.json"
    built.write_text(json.dumps(template))
    client("s3", "eu-central-1").create_bucket(
        Bucket="tpl-eu-central-1", CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})

    result = run_script("publish.py", "--bucket", "tpl-{region}", "--region", "us-east-1", "--region",
                        "eu-central-1", "--create-buckets", "--stack-name", "social",
                        "--parameters", "parameters/production.json", "--template", str(built), env=aws_env)

    assert result.returncode == 0, result.stderr
    links = [line.strip() for line in result.stdout.splitlines() if "/stacks/quickcreate?" in line]
    assert len(links) == 2
    for region, link in zip(("us-east-1", "eu-central-1"), links, strict=True):
        base, _, query = split(link)
        assert base.startswith(f"https://{region}.console.aws.amazon.com/") and base.endswith(region)
        assert query["stackName"] == "social" and query["param_DomainName"] == "social.example.com"
        bucket_host, key = urlsplit(query["templateURL"]).netloc, unquote(urlsplit(query["templateURL"]).path)
        assert bucket_host == f"tpl-{region}.s3.{region}.amazonaws.com"
        body = client("s3", region).get_object(Bucket=f"tpl-{region}", Key=key.lstrip("/"))["Body"].read()
        assert json.loads(body) == template
