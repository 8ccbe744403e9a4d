"""Upgrade on push: ECR's push events, delivered to the function, against moto's ECR and SSM.

The events have the shape AWS documents for a completed push ("ECR Image Action",
https://docs.aws.amazon.com/AmazonECR/latest/userguide/ecr-eventbridge.html). EventBridge
delivers each at least once and in no particular order; ECR emits them on a best effort
basis. What the function writes is the desired-version parameter only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lambdas.rollout import push
from lambdas.rollout.names import DOWNGRADE_FLAG
from lambdas.rollout.plan import handled_record
from simulation.context import LambdaContext
from templates.options import (
    CUSTOM_TAG_PATTERN,
    IMAGE_PUSH_TAG_PATTERN_DEFAULT,
    IMAGE_PUSH_TAG_PATTERN_RULE,
    RELEASE_TAG_PATTERN,
)
from templates.versions import desired_pattern

HOST = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
WEB, STREAMING = "fork/mastodon", "fork/mastodon-streaming"
DESIRED, DEPLOYED, HANDLED = (
    "/mastodon/s/desired-version",
    "/mastodon/s/deployed-version",
    "/mastodon/s/rollout-last",
)
ENV = {
    "DESIRED_PARAMETER": DESIRED,
    "DEPLOYED_PARAMETER": DEPLOYED,
    "HANDLED_PARAMETER": HANDLED,
    "WEB_REPOSITORY": WEB,
    "STREAMING_REPOSITORY": STREAMING,
    "WEB_IMAGE": f"{HOST}/{WEB}",
    "STREAMING_IMAGE": f"{HOST}/{STREAMING}",
    "TAG_RULE": CUSTOM_TAG_PATTERN,
    "PUSH_TAG_PATTERN": IMAGE_PUSH_TAG_PATTERN_DEFAULT,
    "ROLL_REPUSHED_TAGS": "false",
}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        ecr = boto3.client("ecr")
        for name in (WEB, STREAMING):
            ecr.create_repository(repositoryName=name)
        ssm = boto3.client("ssm")
        ssm.put_parameter(
            Name=DESIRED, Value="v4.7.6", Type="String", AllowedPattern=desired_pattern(CUSTOM_TAG_PATTERN)
        )
        ssm.put_parameter(Name=DEPLOYED, Value="v4.7.6", Type="String")
        ssm.put_parameter(Name=HANDLED, Value="{}", Type="String")
        yield ssm


def manifest(content: str) -> str:
    # moto derives an image's digest from its layers' digests.
    layer = {
        "digest": "sha256:" + hashlib.sha256(content.encode()).hexdigest(),
        "size": 1,
        "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {**layer, "mediaType": "application/vnd.docker.container.image.v1+json"},
            "layers": [layer],
        }
    )


def push_image(repository: str, tag: str, content: str = "one") -> dict[str, Any]:
    """Push to moto's ECR; the event ECR would send for it."""
    image = boto3.client("ecr").put_image(
        repositoryName=repository, imageManifest=manifest(content + repository), imageTag=tag
    )["image"]
    return event(repository, tag, image["imageId"]["imageDigest"])


def event(repository: str, tag: str | None, digest: str, action: str = "PUSH") -> dict[str, Any]:
    detail = {
        "result": "SUCCESS",
        "repository-name": repository,
        "image-digest": digest,
        "action-type": action,
    }
    if tag is not None:
        detail["image-tag"] = tag
    return {
        "version": "0",
        "id": "13cde686-328b-6117-af20-0e5566167482",
        "detail-type": "ECR Image Action",
        "source": "aws.ecr",
        "account": "123456789012",
        "time": "2026-12-01T01:54:34Z",
        "region": "us-east-1",
        "resources": [],
        "detail": detail,
    }


def deliver(e: dict[str, Any]) -> dict[str, Any]:
    return push.lambda_handler(e, LambdaContext())  # type: ignore[arg-type]


def desired(ssm: Any) -> tuple[str, int]:
    p = ssm.get_parameter(Name=DESIRED)["Parameter"]
    return p["Value"], p["Version"]


def record_deployed(ssm: Any, version: str, digests: dict[str, str]) -> None:
    ssm.put_parameter(
        Name=HANDLED,
        Overwrite=True,
        Value=handled_record(1, version, "succeeded", "x", "", deployed=version, digests=digests),
    )


# ---------------------------------------------------------------- a fork's release
def test_a_forks_release_pushed_to_both_repositories_becomes_the_desired_version(aws):
    deliver(push_image(WEB, "v4.8.0-glitch"))
    assert desired(aws) == ("v4.7.6", 1), "the streaming image lacks the tag: nothing yet"
    answer = deliver(push_image(STREAMING, "v4.8.0-glitch"))
    # v4.8.0-glitch cannot be ordered against v4.7.6 (not a release tag): the push confirms it.
    assert desired(aws) == (f"v4.8.0-glitch {DOWNGRADE_FLAG}", 2)
    assert answer["written"] == f"v4.8.0-glitch {DOWNGRADE_FLAG}"


def test_a_newer_release_tag_is_written_without_the_confirmation(aws):
    deliver(push_image(STREAMING, "v4.7.7"))
    deliver(push_image(WEB, "v4.7.7"))
    assert desired(aws) == ("v4.7.7", 2)


def test_an_older_release_tag_is_written_without_the_confirmation_so_the_rollout_refuses_it(aws):
    deliver(push_image(STREAMING, "v4.6.0"))
    deliver(push_image(WEB, "v4.6.0"))
    assert desired(aws) == ("v4.6.0", 2)


def test_the_same_push_delivered_twice_writes_once(aws):
    push_image(STREAMING, "v4.7.7")
    e = push_image(WEB, "v4.7.7")
    deliver(e)
    answer = deliver(e)
    assert desired(aws) == ("v4.7.7", 2)
    assert answer["written"] is None and "already" in answer["reason"]


def test_both_pushes_delivered_in_either_order_and_twice_write_once(aws):
    web, streaming = push_image(WEB, "v4.7.7"), push_image(STREAMING, "v4.7.7")
    for e in (streaming, web, web, streaming):
        deliver(e)
    assert desired(aws) == ("v4.7.7", 2)


def test_a_pushed_unconfirmed_tag_delivered_again_is_recognised_under_its_flag(aws, monkeypatch):
    monkeypatch.setenv("PUSH_TAG_PATTERN", "[0-9]{4}-[0-9]{2}-[0-9]{2}")
    push_image(STREAMING, "2026-12-01")
    e = push_image(WEB, "2026-12-01")
    aws.put_parameter(Name=DEPLOYED, Value="v4.7.6", Overwrite=True)
    deliver(e)
    deliver(e)
    assert desired(aws) == (f"2026-12-01 {DOWNGRADE_FLAG}", 2)


@pytest.mark.parametrize("tag", ["latest", "main", "sha-0123abc", "v4.7"])
def test_a_tag_outside_the_push_pattern_is_ignored(aws, tag, capture_logs):
    logs = capture_logs(push)
    push_image(STREAMING, tag)
    answer = deliver(push_image(WEB, tag))
    assert desired(aws) == ("v4.7.6", 1)
    assert "ImagePushTagPattern" in answer["reason"]
    assert "Nothing written" in logs.getvalue() or "ignored" in logs.getvalue()


def test_a_tag_the_stacks_version_rule_refuses_is_ignored_even_if_the_pattern_takes_it(aws, monkeypatch):
    monkeypatch.setenv("PUSH_TAG_PATTERN", ".*")
    monkeypatch.setenv("TAG_RULE", RELEASE_TAG_PATTERN)  # upstream's rule
    push_image(STREAMING, "nightly")
    answer = deliver(push_image(WEB, "nightly"))
    assert desired(aws) == ("v4.7.6", 1)
    assert "not a version this stack can run" in answer["reason"]


def test_a_missing_streaming_image_writes_nothing_and_says_why(aws, capture_logs):
    logs = capture_logs(push)
    answer = deliver(push_image(WEB, "v4.7.7"))
    assert desired(aws) == ("v4.7.6", 1)
    assert "not in both repositories" in answer["reason"]
    assert "not in both repositories" in logs.getvalue()


def test_with_the_streaming_image_elsewhere_a_web_push_alone_writes(aws, monkeypatch):
    monkeypatch.setenv("STREAMING_REPOSITORY", "")
    monkeypatch.setenv("STREAMING_IMAGE", "ghcr.io/fork/mastodon-streaming")
    deliver(push_image(WEB, "v4.7.7"))
    assert desired(aws) == ("v4.7.7", 2)


@pytest.mark.parametrize(
    "e, why",
    [
        (event(WEB, None, "sha256:" + "a" * 64), "without a tag"),
        (event("other/repository", "v4.7.7", "sha256:" + "a" * 64), "not one of this stack's"),
        (event(WEB, "v4.7.7", "sha256:" + "a" * 64, action="DELETE"), "not a successful push"),
        (event(WEB, "v4.7.7", "md5:x"), "without a sha256 digest"),
        ({"detail": "nonsense"}, "not an ECR event"),
    ],
)
def test_events_that_are_not_a_push_of_ours_are_ignored(aws, e, why):
    answer = deliver(e)
    assert why in answer["reason"]
    assert desired(aws) == ("v4.7.6", 1)


def test_a_pattern_that_does_not_compile_ignores_pushes_and_says_so(aws, monkeypatch):
    monkeypatch.setenv("PUSH_TAG_PATTERN", "v[0-9")
    push_image(STREAMING, "v4.7.7")
    answer = deliver(push_image(WEB, "v4.7.7"))
    assert "not a valid regular expression" in answer["reason"]
    assert desired(aws) == ("v4.7.6", 1)


def test_a_push_while_another_version_is_desired_replaces_the_request(aws):
    aws.put_parameter(Name=DESIRED, Value="v4.7.7", Overwrite=True)
    push_image(STREAMING, "v4.7.8")
    deliver(push_image(WEB, "v4.7.8"))
    assert desired(aws) == ("v4.7.8", 3)


# ---------------------------------------------------------------- a tag pushed again
def repushed(ssm: Any) -> dict[str, Any]:
    """v4.7.6 runs with recorded digests; then both images are pushed again with new content."""
    first = {
        f"{HOST}/{r}": push_image(r, "v4.7.6", "old")["detail"]["image-digest"] for r in (WEB, STREAMING)
    }
    record_deployed(ssm, "v4.7.6", first)
    push_image(STREAMING, "v4.7.6", "new")
    return push_image(WEB, "v4.7.6", "new")


def test_a_repushed_running_tag_is_only_logged_without_the_opt_in(aws, capture_logs):
    logs = capture_logs(push)
    answer = deliver(repushed(aws))
    assert desired(aws) == ("v4.7.6", 1)
    assert "RollRepushedTags is false" in answer["reason"] and "RollRepushedTags" in logs.getvalue()


def test_a_repushed_running_tag_is_written_again_with_the_opt_in(aws, monkeypatch):
    monkeypatch.setenv("ROLL_REPUSHED_TAGS", "true")
    answer = deliver(repushed(aws))
    assert desired(aws) == ("v4.7.6", 2), "the same value, a new version: the same pipeline starts"
    assert answer["written"] == "v4.7.6"


def test_the_push_of_the_running_images_delivered_late_writes_nothing(aws, monkeypatch):
    # ECR refuses a push of the same image under the same tag (ImageAlreadyExists): the event
    # of the running images arrives again only as a late duplicate, after the rollout recorded them.
    monkeypatch.setenv("ROLL_REPUSHED_TAGS", "true")
    pushed = {r: push_image(r, "v4.7.6", "old") for r in (WEB, STREAMING)}
    record_deployed(aws, "v4.7.6", {f"{HOST}/{r}": e["detail"]["image-digest"] for r, e in pushed.items()})
    answer = deliver(pushed[WEB])
    assert desired(aws) == ("v4.7.6", 1)
    assert "the images the servers run already" in answer["reason"]


def test_a_repush_recorded_for_another_version_counts_as_new(aws, monkeypatch):
    monkeypatch.setenv("ROLL_REPUSHED_TAGS", "true")
    e = repushed(aws)
    record_deployed(aws, "v4.7.5", {f"{HOST}/{WEB}": e["detail"]["image-digest"]})
    deliver(e)
    assert desired(aws) == ("v4.7.6", 2)


def test_a_repush_of_the_running_tag_leaves_another_desired_version_alone(aws, monkeypatch):
    monkeypatch.setenv("ROLL_REPUSHED_TAGS", "true")
    e = repushed(aws)
    aws.put_parameter(Name=DESIRED, Value="v4.7.7", Overwrite=True)
    answer = deliver(e)
    assert desired(aws) == ("v4.7.7", 2)
    assert "left to that rollout" in answer["reason"]


# ---------------------------------------------------------------- ImagePushTagPattern
@pytest.mark.parametrize(
    "pattern",
    [
        IMAGE_PUSH_TAG_PATTERN_DEFAULT,
        r"v[0-9]+\.[0-9]+\.[0-9]+-glitch",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}",
        "main-[0-9a-f]{7,40}",
        "release-.*",
        "(v|release-)[0-9.]+",
    ],
)
def test_the_tag_pattern_parameter_takes_useful_expressions_and_each_compiles(pattern):
    assert re.fullmatch(IMAGE_PUSH_TAG_PATTERN_RULE, pattern)
    re.compile(pattern)


@pytest.mark.parametrize(
    "pattern, why",
    [
        ("(a+)+", "nested repetition: catastrophic backtracking"),
        ("(a|b)*", "a repeated group"),
        ("(", "unbalanced"),
        ("v[0-9", "unclosed class"),
        (".*;rm -rf", "characters no tag holds"),
        ("^v1$", "anchors: the tag matches whole anyway"),
        ("(?=x)x", "look-around"),
        ("x" * 101, "too long"),
        ("", "empty"),
    ],
)
def test_the_tag_pattern_parameter_refuses_bad_expressions(pattern, why):
    assert not re.fullmatch(IMAGE_PUSH_TAG_PATTERN_RULE, pattern), why


@pytest.mark.parametrize(
    "tag, matches",
    [
        ("v4.7.6", True),
        ("v4.7.6-glitch", True),
        ("v4.8.0-rc.1", True),
        ("v4.7", False),
        ("latest", False),
        ("4.7.6", False),
        ("v4.7.6+glitch", False),
    ],
)
def test_the_default_pattern_takes_release_looking_tags(tag, matches):
    assert bool(re.fullmatch(IMAGE_PUSH_TAG_PATTERN_DEFAULT, tag)) is matches


# ---------------------------------------------------------------- review findings
def test_a_fork_tag_built_on_an_older_release_is_not_written():
    """The CI of a maintenance line pushes v4.6.9-glitch while v4.7.6-glitch runs: the flag
    would switch the downgrade guard off, so nothing is written."""
    from lambdas.rollout.push import desired_value

    assert desired_value("v4.6.9-glitch", "v4.7.6-glitch") is None
    assert desired_value("v4.7.7-glitch", "v4.7.6-glitch") == "v4.7.7-glitch allow-downgrade"
    assert desired_value("2026-12-01", "v4.7.6-glitch") == "2026-12-01 allow-downgrade"
    assert desired_value("v4.7.5", "v4.7.6") == "v4.7.5"  # the rollout refuses it, as for an operator


@pytest.mark.parametrize(
    "pattern", [r"v.*.*.*.*.*.*.*.*-final", r"v[0-9]+[0-9]+[0-9]+x", "a{1,99}b{1,99}c{1,99}"]
)
def test_a_pattern_that_could_backtrack_for_hours_starts_nothing(pattern):
    import time

    from lambdas.rollout.push import Settings, tag_refusal
    from templates.options import CUSTOM_TAG_PATTERN

    settings = Settings("/d", "/p", "/h", "fork/mastodon", "fork/mastodon-streaming", "w", "s",
                        CUSTOM_TAG_PATTERN, pattern, False)
    started = time.process_time()
    reason = tag_refusal("v" + "1" * 127, settings)
    assert reason is not None and "long" in reason
    assert time.process_time() - started < 1.0


def test_the_default_pattern_takes_releases_and_a_forks_suffix_not_architecture_tags():
    import re

    from templates.options import IMAGE_PUSH_TAG_PATTERN_DEFAULT as DEFAULT

    for tag in ("v4.7.6", "v4.7.6-glitch", "v4.8.0-rc.1", "v4.8.0-rc.1-glitch"):
        assert re.fullmatch(DEFAULT, tag), tag
    for tag in ("v4.7.6-arm64", "v4.7.6-amd64", "latest", "v4.7"):
        assert not re.fullmatch(DEFAULT, tag), tag


def test_a_late_event_for_a_tag_whose_rollout_failed_does_not_bring_it_back():
    """v4.8.0-glitch failed and was rolled back; the operator has put v4.7.7-glitch since.
    A retried or late delivery of v4.8.0-glitch's push writes nothing."""
    from lambdas.rollout.push import Push, Settings, decide
    from templates.options import CUSTOM_TAG_PATTERN, IMAGE_PUSH_TAG_PATTERN_DEFAULT

    settings = Settings("/d", "/p", "/h", "fork/mastodon", "fork/mastodon-streaming", "w", "s",
                        CUSTOM_TAG_PATTERN, IMAGE_PUSH_TAG_PATTERN_DEFAULT, False)
    pushed = Push("fork/mastodon", "v4.8.0-glitch", "sha256:" + "a" * 64)
    common = {"sibling_has_tag": True, "desired": "v4.7.7-glitch allow-downgrade",
              "deployed": "v4.7.6-glitch", "deployed_digests": None, "digests": {"w": pushed.digest}}
    late = decide(pushed, settings, failed="v4.8.0-glitch", **common)
    assert late.write is None and "failed" in late.reason
    assert decide(pushed, settings, failed=None, **common).write == "v4.8.0-glitch allow-downgrade"


def test_the_push_events_are_news_for_minutes_not_a_day(template):
    from templates.image_push import PUSH_EVENT_MAX_AGE

    resources = template["Resources"]
    (target,) = resources["ImagePushTrigger"]["Properties"]["Targets"]
    assert target["RetryPolicy"]["MaximumEventAgeInSeconds"] == PUSH_EVENT_MAX_AGE <= 600
    config = resources["ImagePushInvokeConfig"]["Properties"]
    assert config["MaximumEventAgeInSeconds"] == PUSH_EVENT_MAX_AGE
    assert resources["ImagePushInvokeConfig"]["Condition"] == "UpgradesOnImagePush"
