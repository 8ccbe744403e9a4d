"""The Mastodon version, kept in two SSM parameters.

`desired-version` is what the operator asks for (the upgrade pipeline watches it);
`deployed-version` is the last version every process ran successfully, and the one
new instances boot at. Both start at the version pinned in the build.
"""

from __future__ import annotations

from dataclasses import dataclass

from troposphere import Sub, Template, ssm

from templates.options import RELEASE_TAG_PATTERN, BuildOptions

DESIRED_VERSION = "DesiredVersionParameter"
DEPLOYED_VERSION = "DeployedVersionParameter"
PARAMETER_PREFIX = "/mastodon/${AWS::StackName}"


@dataclass(frozen=True)
class Versions:
    desired: ssm.Parameter
    deployed: ssm.Parameter


def create_versions(t: Template, options: BuildOptions) -> Versions:
    def parameter(title: str, name: str, description: str) -> ssm.Parameter:
        return t.add_resource(ssm.Parameter(
            title,
            Name=Sub(f"{PARAMETER_PREFIX}/{name}"),
            Type="String",
            Value=options.mastodon_version,
            AllowedPattern=RELEASE_TAG_PATTERN,
            Description=description,
            Tier="Standard",
        ))

    return Versions(
        desired=parameter(DESIRED_VERSION, "desired-version",
                          "Mastodon version to run: overwrite it to upgrade"),
        deployed=parameter(DEPLOYED_VERSION, "deployed-version",
                           "Mastodon version every process last ran; new instances boot it"),
    )
