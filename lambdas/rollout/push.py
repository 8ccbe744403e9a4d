"""Upgrade on push: an image pushed to the stack's ECR repository becomes the desired version.

EventBridge delivers ECR's "ECR Image Action" events (PUSH, SUCCESS) of the web image's
repository and, when it is in ECR too, the streaming image's. A pushed tag that the
stack's tag rule and ImagePushTagPattern accept, once both images have it, is written
into the desired-version parameter: the rollout that parameter starts is the same one an
operator starts, and it keeps refusing what it refuses for an operator. This function
never writes the deployed version and never touches a server.

EventBridge delivers an event at least once, late, or not at all (ECR emits them on a best
effort basis), and the two images' pushes end in any order: a push whose sibling lacks the
tag writes nothing (the sibling's push will), a tag the desired version already names writes
nothing, and a write the rollout has handled already is recognised by the rollout (begin).

Its own module of the rollout package, so that it orders tags and reads the desired
version and the rollout's record exactly as the rollout does (versions.py); the build
assembles it with names.py and versions.py only (lambdas/rollout/__init__.py, ENTRIES).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

from lambdas.rollout.names import DOWNGRADE_FLAG
from lambdas.rollout.versions import order_key, parse_desired, read_handled

logger = Logger()
DIGEST = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)


@dataclass(frozen=True)
class Settings:
    """The stack's facts, from the function's environment (templates/image_push.py)."""

    desired_parameter: str
    deployed_parameter: str
    handled_parameter: str
    web_repository: str  # ECR repository names
    streaming_repository: str  # "" when the streaming image is not in this account's ECR
    web_image: str  # the repositories as the rollout names them (its record's keys)
    streaming_image: str
    tag_rule: str  # the stack's rule for any version (release tags, or the OCI tag rule)
    push_pattern: str  # ImagePushTagPattern: the pushed tags that start a rollout
    roll_repushed: bool

    @staticmethod
    def from_environment(env: dict[str, str] | os._Environ[str] = os.environ) -> Settings:
        return Settings(
            desired_parameter=env["DESIRED_PARAMETER"],
            deployed_parameter=env["DEPLOYED_PARAMETER"],
            handled_parameter=env["HANDLED_PARAMETER"],
            web_repository=env["WEB_REPOSITORY"],
            streaming_repository=env.get("STREAMING_REPOSITORY", ""),
            web_image=env["WEB_IMAGE"],
            streaming_image=env["STREAMING_IMAGE"],
            tag_rule=env["TAG_RULE"],
            push_pattern=env["PUSH_TAG_PATTERN"],
            roll_repushed=env.get("ROLL_REPUSHED_TAGS") == "true",
        )


@dataclass(frozen=True)
class Push:
    repository: str
    tag: str
    digest: str


# ---------------------------------------------------------------- decisions
def read_push(event: Any, settings: Settings) -> Push | str:
    """The push an event reports, or why it is not one this function acts on."""
    detail = event.get("detail") if isinstance(event, dict) else None
    if not isinstance(detail, dict):
        return "not an ECR event"
    if detail.get("action-type") != "PUSH" or detail.get("result") != "SUCCESS":
        return f"not a successful push ({detail.get('action-type')}, {detail.get('result')})"
    repository, tag, digest = (
        detail.get("repository-name"),
        detail.get("image-tag"),
        detail.get("image-digest"),
    )
    if repository not in {settings.web_repository, settings.streaming_repository} - {""}:
        return f"a push to {str(repository)[:300]!r}, not one of this stack's repositories"
    if not isinstance(tag, str) or not tag:
        return "a push without a tag (a platform's manifest of a multi-platform image)"
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        return f"a push of {tag[:130]!r} without a sha256 digest"
    return Push(str(repository), tag, digest)


def tag_refusal(tag: str, settings: Settings) -> str | None:
    """Why a pushed tag starts no rollout, or None."""
    shown = tag[:130]
    if not re.fullmatch(settings.tag_rule, tag, re.ASCII):
        return (
            f"{shown!r} is not a version this stack can run (letters, digits, '_', '.' and '-', "
            "as the stack's version rule says)"
        )
    if long_repeats(settings.push_pattern) > MAX_LONG_REPEATS:
        return (
            f"ImagePushTagPattern {settings.push_pattern!r} has more than {MAX_LONG_REPEATS} long "
            f"repetitions (* + {{n,}} or more than {LONG}), which can take hours to match: "
            "bound them ({1,3})"
        )
    try:
        matches = re.fullmatch(settings.push_pattern, tag, re.ASCII)
    except re.error as error:
        return f"ImagePushTagPattern {settings.push_pattern!r} is not a valid regular expression ({error})"
    if not matches:
        return f"{shown!r} does not match ImagePushTagPattern {settings.push_pattern!r}"
    return None


RELEASE_PREFIX = re.compile(r"v[0-9]+\.[0-9]+\.[0-9]+", re.ASCII)


def release_of(tag: str) -> tuple[int, ...] | None:
    """The release a tag is built on (v4.7.6 of v4.7.6-glitch, as forks tag), or None."""
    match = RELEASE_PREFIX.match(tag)
    return order_key(match.group(0)) if match else None


def desired_value(tag: str, deployed: str) -> str | None:
    """What to write for `tag`, or None: nothing for a tag built on an older release than the
    running one (a fork's maintenance line: the rollout would run its code against a newer
    schema); the tag alone for release tags (the rollout refuses an older one, as for an
    operator); with the confirmation flag only for tags that cannot be ordered at all (the
    push by the operator's CI is the operator's word)."""
    if order_key(tag) is not None and order_key(deployed) is not None:
        return tag
    new, old = release_of(tag), release_of(deployed)
    if new is not None and old is not None and new < old:
        return None
    return f"{tag} {DOWNGRADE_FLAG}"


# More than this many long repetitions (* + {n,} or {n,m} with m over LONG) in
# ImagePushTagPattern can make Python's regular expressions backtrack for hours on a
# 128-character tag (v.*.*.*.*x); the template's grammar refuses nested repetition but
# cannot count. Two keep the worst case near 128^3 steps.
MAX_LONG_REPEATS = 2
LONG = 10
REPEAT = re.compile(r"(?<!\\)[*+]|\{[0-9]+,([0-9]*)\}")


def long_repeats(pattern: str) -> int:
    return sum(
        1 for m in REPEAT.finditer(pattern) if m.group(0) in "*+" or not m.group(1) or int(m.group(1)) > LONG
    )


@dataclass(frozen=True)
class Decision:
    write: str | None  # the value to put into desired-version, or None
    reason: str


def decide(
    push: Push,
    settings: Settings,
    *,
    sibling_has_tag: bool,
    desired: str,
    deployed: str,
    deployed_digests: dict[str, str] | None,
    digests: dict[str, str],
    failed: str | None = None,
) -> Decision:
    """What a push does to the desired version.

    deployed_digests: the rollout's record of the images the servers running the deployed
    version run ({image: digest}), None when it has none for that version. digests: the
    tag's digests in the registry now ({image: digest}, the pushed one included)."""
    refusal = tag_refusal(push.tag, settings)
    if refusal:
        return Decision(None, f"ignored: {refusal}")
    if not sibling_has_tag:
        return Decision(
            None, f"{push.tag} is not in both repositories yet; the other image's push will start the rollout"
        )
    target, _ = parse_desired(desired)
    if push.tag != deployed:
        if target == push.tag:
            return Decision(None, f"the desired version is {push.tag} already (a repeated event)")
        if failed == push.tag:
            # A late or repeated event for a tag whose rollout failed, while the operator may
            # have chosen another version since: not brought back behind their back.
            return Decision(
                None,
                f"{push.tag}'s last rollout failed: a push does not start it again (push a new tag, "
                "or put it into desired-version yourself)",
            )
        value = desired_value(push.tag, deployed)
        if value is None:
            return Decision(
                None,
                f"{push.tag} is built on an older release than {deployed}, which the servers run: not "
                f"rolled (to go back on purpose, put '{push.tag} {DOWNGRADE_FLAG}' into desired-version)",
            )
        return Decision(value, f"pushed {push.tag}; the servers run {deployed}")
    # The tag the servers run, pushed again.
    if deployed_digests is not None and all(deployed_digests.get(i) == d for i, d in digests.items()):
        return Decision(None, f"{push.tag} was pushed with the images the servers run already")
    if target != push.tag:
        return Decision(
            None,
            f"{push.tag}, which the servers run, was pushed again while {target} is "
            "desired: left to that rollout",
        )
    if not settings.roll_repushed:
        return Decision(
            None,
            f"{push.tag}, which the servers run, was pushed again with new images; "
            "RollRepushedTags is false: not rolled (put the tag into desired-version again "
            "to roll it)",
        )
    return Decision(
        push.tag, f"{push.tag}, which the servers run, was pushed again with new images: rolled again"
    )


# ---------------------------------------------------------------- AWS calls
def registry_digest(repository: str, tag: str) -> str | None:
    """The digest `repository` holds for `tag`, or None if it has no such tag."""
    try:
        images = boto3.client("ecr").describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])[
            "imageDetails"
        ]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ImageNotFoundException":
            return None
        raise
    return str(images[0]["imageDigest"]) if images else None


def read_parameter(name: str) -> str:
    return str(boto3.client("ssm").get_parameter(Name=name)["Parameter"]["Value"])


def failed_tag(handled: str) -> str | None:
    """The tag whose rollout the rollout's last record says failed, or None."""
    record = read_handled(handled)
    if record.get("result") != "failed":
        return None
    version = record.get("version")
    return str(version) if version else None


def recorded_digests(handled: str, deployed: str) -> dict[str, str] | None:
    """The images the rollout recorded for the deployed version, or None."""
    record = read_handled(handled)
    digests = record.get("digests")
    if record.get("deployed") != deployed or not isinstance(digests, dict):
        return None
    return {str(k): str(v) for k, v in digests.items()}


# ---------------------------------------------------------------- handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings = Settings.from_environment()
    push = read_push(event, settings)
    if isinstance(push, str):
        logger.info("Push ignored", extra={"reason": push})
        return {"written": None, "reason": push}
    image = {
        settings.web_repository: settings.web_image,
        settings.streaming_repository: settings.streaming_image,
    }
    digests = {image[push.repository]: push.digest}
    sibling = (
        settings.streaming_repository
        if push.repository == settings.web_repository
        else settings.web_repository
    )
    sibling_has_tag = True
    if sibling and tag_refusal(push.tag, settings) is None:
        found = registry_digest(sibling, push.tag)
        sibling_has_tag = found is not None
        if found:
            digests[image[sibling]] = found
    desired = read_parameter(settings.desired_parameter)
    deployed = read_parameter(settings.deployed_parameter)
    handled = read_parameter(settings.handled_parameter)
    decision = decide(
        push,
        settings,
        sibling_has_tag=sibling_has_tag,
        desired=desired,
        deployed=deployed,
        deployed_digests=recorded_digests(handled, deployed) if push.tag == deployed else None,
        digests=digests,
        failed=failed_tag(handled),
    )
    if decision.write is not None:
        boto3.client("ssm").put_parameter(
            Name=settings.desired_parameter, Value=decision.write, Overwrite=True
        )
        logger.info(
            "Desired version written",
            extra={
                "value": decision.write,
                "reason": decision.reason,
                "repository": push.repository,
                "digest": push.digest,
            },
        )
    else:
        logger.info(
            "Nothing written",
            extra={
                "reason": decision.reason,
                "repository": push.repository,
                "tag": push.tag[:130],
                "digest": push.digest,
            },
        )
    return {"written": decision.write, "reason": decision.reason}
