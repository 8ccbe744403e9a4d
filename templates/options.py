"""Build-time options: what shapes the template, as opposed to deploy-time parameters.

One template serves every environment; what an operator tunes per environment is a
CloudFormation parameter (see `parameters`). What is chosen here is fixed in the
template the build writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Defined with the rollout, which names the rule it applies; the template uses them too.
from lambdas.rollout.names import CUSTOM_TAG_PATTERN as CUSTOM_TAG_PATTERN
from lambdas.rollout.names import ECR_HOST_PATTERN as ECR_HOST_PATTERN

# The one place the Mastodon release is pinned: new stacks boot this version.
MASTODON_VERSION = "v4.7.6"

MASTODON_IMAGE = "ghcr.io/mastodon/mastodon"
STREAMING_IMAGE = "ghcr.io/mastodon/mastodon-streaming"
# PgBouncer for the optional pooler (DatabasePooler): CloudNativePG's image (a CNCF
# project; Debian with the PostgreSQL project's pgbouncer package, amd64 and arm64),
# on the registry the servers already pull Mastodon from. Amazon Linux 2023's own
# repositories carry no pgbouncer. Pinned to one release; its entrypoint runs
# pgbouncer on /etc/pgbouncer/pgbouncer.ini.
PGBOUNCER_IMAGE = "ghcr.io/cloudnative-pg/pgbouncer:1.25.2"
PGBOUNCER_PORT = 6432

# A Mastodon release tag: v4.3.0, v4.5.2, v4.6.0-rc.1, v5.0.0 (no "latest", no branches).
# The streaming server has its own image since 4.3, which this stack relies on. The one
# definition of the rule: SSM's AllowedPattern (Java), the rollout (Python, re.ASCII,
# fullmatch) and the instance scripts (bash ERE, from stack.env) all receive this text,
# so it uses only what the three share: plain groups, [0-9], anchors. Bounded digits
# keep every accepted tag short (at most 24 characters).
RELEASE_TAG_PATTERN = (
    "^v(4[.](3|4|5|6|7|8|9|[1-9][0-9]{1,2})|([5-9]|[1-9][0-9]{1,2})[.][0-9]{1,3})[.][0-9]{1,3}"
    "(-(alpha|beta|rc)[.][0-9]{1,3})?$"
)
RELEASE_TAG = re.compile(RELEASE_TAG_PATTERN, re.ASCII)

# Where an image comes from (WebImageRepository, StreamingImageRepository): a public
# registry the servers pull from anonymously, or an Amazon ECR repository (in the
# stack's own account and region, which the template's rules check). A repository is
# lowercase path components (the OCI distribution spec's name grammar), no tag, no
# digest, at most 255 characters with its host.
PUBLIC_REGISTRIES = ("ghcr.io", "docker.io", "quay.io")
IMAGE_REPOSITORY_PATTERN = (
    "^(?=.{1,255}$)(ghcr[.]io|docker[.]io|quay[.]io|" + ECR_HOST_PATTERN + ")"
    "(/[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*)+$"
)

# A tag of a repository that is not upstream's: CUSTOM_TAG_PATTERN (lambdas/rollout/names.py,
# imported above), the OCI distribution spec's tag grammar.

# Upgrade on push (ImagePushTagPattern): pushed tags that start a rollout. The pattern is
# a subset of regular expressions that CloudFormation's AllowedPattern can check whole:
# characters a tag may hold, "." (any character), [classes] of them, and one level of
# (alternatives) that may be optional; ?, *, +, {n,m} only after a character or a class,
# so no nested repetition; the function also refuses more than two long repetitions
# (push.MAX_LONG_REPEATS), which would backtrack for hours on a long tag.
_PUSH_ATOM = r"([A-Za-z0-9_-]|\\[.dw-]|[.]|\[\^?[A-Za-z0-9_.\\-]+\])([?*+]|\{[0-9]{1,3}(,[0-9]{0,3})?\})?"
IMAGE_PUSH_TAG_PATTERN_RULE = (
    "^(?=.{1,100}$)(" + _PUSH_ATOM + "|\\((" + _PUSH_ATOM + ")*(\\|(" + _PUSH_ATOM + ")*)*\\)[?]?)+$"
)
# Releases, release candidates and a fork's lowercase suffix (v4.7.6, v4.8.0-rc.1,
# v4.7.6-glitch), not per-architecture tags (v4.7.6-arm64), which multi-architecture
# builds push before their manifest list; bounded repetitions only (push.MAX_LONG_REPEATS).
IMAGE_PUSH_TAG_PATTERN_DEFAULT = r"v[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(-rc\.[0-9]{1,3})?(-[a-z]{1,40})?"

# The path every name the stack gives lives under, as a Sub template: its SSM
# parameters, its log groups (servers, functions, the rollout) and its IAM users.
STACK_PREFIX = "/mastodon/${AWS::StackName}"

# CloudFormation's quota on a template body passed inline (Service Quotas,
# CloudFormation); larger templates travel through S3.
INLINE_TEMPLATE_LIMIT = 51_200


class OptionsError(ValueError):
    """A build option has a value the template cannot be built with."""


@dataclass(frozen=True)
class BuildOptions:
    """Choices made when the template is built, validated on construction."""

    mastodon_version: str = MASTODON_VERSION
    description: str = "Mastodon on AWS: CloudFront, ALB, EC2, RDS PostgreSQL, ElastiCache, S3, SES"

    def __post_init__(self) -> None:
        if not RELEASE_TAG.fullmatch(self.mastodon_version):
            raise OptionsError(
                f"mastodon version {self.mastodon_version!r} is not a Mastodon release tag "
                "of 4.3 or later (expected e.g. v4.5.2: the streaming image this stack "
                "runs exists from 4.3 on)"
            )
        if not 0 < len(self.description) <= 1024:
            raise OptionsError("description must be 1 to 1024 characters (CloudFormation's limit)")
