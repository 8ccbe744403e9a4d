"""The Mastodon version, kept in two SSM parameters.

`desired-version` is what the operator asks for: the upgrade pipeline watches it. It
is an ordinary AWS::SSM::Parameter, so a new build that pins another release and is
deployed also asks for an upgrade, through the same pipeline.

`deployed-version` is the last version every process ran, the one new servers boot.
Only the pipeline may move it, once migrations have run: the stack creates it with
the pinned release through Custom::InitialParameter, which never overwrites it.
"""

from __future__ import annotations

from dataclasses import dataclass

from awacs import ssm as awacs_ssm
from awacs.aws import Allow, Statement
from troposphere import AWSObject, GetAtt, Ref, Sub, Template, ssm

from templates import functions
from templates.options import RELEASE_TAG_PATTERN, BuildOptions
from templates.parameters import Parameters

DESIRED_VERSION = "DesiredVersionParameter"
DEPLOYED_VERSION = "DeployedVersionParameter"
PARAMETER_PREFIX = "/mastodon/${AWS::StackName}"


class InitialParameter(AWSObject):
    """An SSM parameter written once; Ref gives its name."""

    resource_type = "Custom::InitialParameter"
    props = {
        "ServiceToken": (str, True),
        "ServiceTimeout": (int, False),
        "Name": (str, True),
        "Value": (str, True),
        "Description": (str, False),
    }


@dataclass(frozen=True)
class Versions:
    desired: ssm.Parameter
    deployed: InitialParameter


def create_versions(t: Template, options: BuildOptions, p: Parameters, code: str) -> Versions:
    desired = t.add_resource(ssm.Parameter(
        DESIRED_VERSION,
        Name=Sub(f"{PARAMETER_PREFIX}/desired-version"),
        Type="String",
        Value=options.mastodon_version,
        AllowedPattern=RELEASE_TAG_PATTERN,
        Description="Mastodon version to run: overwrite it to upgrade",
        Tier="Standard",
    ))
    function = functions.inline_function(
        t, "InitialParameterFunction", code,
        [Statement(
            Effect=Allow,
            Action=[awacs_ssm.PutParameter, awacs_ssm.DeleteParameter],
            Resource=[Sub("arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter"
                          f"{PARAMETER_PREFIX}/deployed-version")],
        )],
        Ref(p.log_retention), timeout=30,
        description="Creates an SSM parameter once and never overwrites it.",
    )
    deployed = t.add_resource(InitialParameter(
        DEPLOYED_VERSION,
        ServiceToken=GetAtt(function, "Arn"),
        ServiceTimeout=120,
        Name=Sub(f"{PARAMETER_PREFIX}/deployed-version"),
        Value=options.mastodon_version,
        Description="Mastodon version every process last ran; new servers boot it (set by the pipeline)",
    ))
    return Versions(desired=desired, deployed=deployed)
