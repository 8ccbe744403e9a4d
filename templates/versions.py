"""The Mastodon version, kept in two SSM parameters.

`desired-version` is what the operator asks for: the upgrade pipeline watches it, and
the operator is its only writer. Its template value is the build's pinned release on
creation and, on every later update, the value it holds then (reported by the
deployed-version resource), so a stack update never rewrites it behind the operator's
back; a new build's pinned release only decides what new stacks boot. It accepts a
tag of the stack's rule (tag_pattern: a release tag for upstream's images, any OCI tag
for your own), or one followed by " allow-downgrade" to roll back to an older release
on purpose, or to confirm a tag that cannot be ordered against the running one
(lambdas/rollout/plan.py refuses either without it).

`deployed-version` is the last version every process ran, the one new servers boot.
Only the pipeline may move it, once migrations have run: the stack creates it with
the pinned release through Custom::InitialParameter, which never overwrites it.
"""

from __future__ import annotations

from dataclasses import dataclass

from awacs import ssm as awacs_ssm
from awacs.aws import Allow, Statement
from troposphere import AWSObject, GetAtt, If, Ref, Sub, Template, ssm

from lambdas.rollout.names import DOWNGRADE_FLAG
from templates import functions, parameters
from templates.options import CUSTOM_TAG_PATTERN, RELEASE_TAG_PATTERN, STACK_PREFIX, BuildOptions
from templates.parameters import Parameters

DESIRED_VERSION = "DesiredVersionParameter"
DEPLOYED_VERSION = "DeployedVersionParameter"
PARAMETER_PREFIX = STACK_PREFIX


def tag_pattern() -> If:
    """The rule a version must follow: a Mastodon release tag while both images are
    upstream's, any OCI tag otherwise (a fork's or a CI's). Handed to the servers'
    stack.env, the rollout's configuration and the desired-version parameter."""
    return If(parameters.IMAGES_ARE_UPSTREAM, RELEASE_TAG_PATTERN, CUSTOM_TAG_PATTERN)


def desired_pattern(pattern: str = RELEASE_TAG_PATTERN) -> str:
    """The desired-version parameter's AllowedPattern: a tag of `pattern`, perhaps with the downgrade flag."""
    tag = pattern.removeprefix("^").removesuffix("$")
    return f"^({tag})( {DOWNGRADE_FLAG})?$"


@dataclass(frozen=True)
class Versions:
    desired: ssm.Parameter
    deployed: AWSObject  # Custom::InitialParameter: written once; Ref gives its name

    def desired_arn(self) -> Sub:
        return _parameter_arn(self.desired)

    def deployed_arn(self) -> Sub:
        return _parameter_arn(self.deployed)


def _parameter_arn(parameter: ssm.Parameter | AWSObject) -> Sub:
    # Both names start with "/": Ref gives the name, which ends the ARN.
    return Sub("arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter"
               f"${{{parameter.title}}}")


def create_versions(t: Template, options: BuildOptions, p: Parameters, code: str) -> Versions:
    desired_name = Sub(f"{PARAMETER_PREFIX}/desired-version")
    # Whatever else of the desired-version parameter a build changes is handed to the
    # deployed-version resource too: CloudFormation then asks it again, in the same update,
    # for the value desired-version holds, instead of writing back a stale one.
    desired_settings = {
        "AllowedPattern": If(parameters.IMAGES_ARE_UPSTREAM, desired_pattern(),
                             desired_pattern(CUSTOM_TAG_PATTERN)),
        "Description": "Mastodon version to run: overwrite it to upgrade",
    }
    function = functions.inline_function(
        t, "InitialParameterFunction", code,
        [
            Statement(
                Effect=Allow,
                Action=[awacs_ssm.PutParameter, awacs_ssm.DeleteParameter],
                Resource=[Sub("arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter"
                              f"{PARAMETER_PREFIX}/deployed-version")],
            ),
            Statement(
                Effect=Allow,
                Action=[awacs_ssm.GetParameter],
                Resource=[Sub("arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter"
                              f"{PARAMETER_PREFIX}/desired-version")],
            ),
        ],
        Ref(p.log_retention), timeout=30,
        description="Creates an SSM parameter once and never overwrites it.",
    )
    deployed = functions.provided_resource(
        t, "InitialParameter", DEPLOYED_VERSION, function, 120,
        Name=Sub(f"{PARAMETER_PREFIX}/deployed-version"),
        # A new stack's first version: the build's pinned release, or the operator's tag
        # (InitialMastodonVersion, for images of their own); written once, never again.
        Value=If(parameters.HAS_INITIAL_VERSION, Ref(p.initial_version), options.mastodon_version),
        Description="Mastodon version every process last ran; new servers boot it (set by the pipeline)",
        ReportValueOf=desired_name,
        Reporting=desired_settings,
    )
    desired = t.add_resource(ssm.Parameter(
        DESIRED_VERSION,
        Name=desired_name,
        Type="String",
        Value=GetAtt(deployed, "ReportedValue"),
        **desired_settings,
        Tier="Standard",
    ))
    return Versions(desired=desired, deployed=deployed)
