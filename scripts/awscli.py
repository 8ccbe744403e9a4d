"""The real `aws` CLI, run as a subprocess with the caller's credentials and settings.

AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL and the rest reach the CLI unchanged;
tests point AWS_ENDPOINT_URL at a local moto server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


class AwsError(RuntimeError):
    """The aws CLI failed; the message is its own."""


def executable() -> str:
    """`aws` on PATH, or the one installed beside this Python (a virtual environment)."""
    beside = Path(sys.executable).parent / "aws"
    found = shutil.which("aws") or (str(beside) if beside.exists() else None)
    if not found:
        raise AwsError("the aws CLI is not installed: pip install awscli (or see "
                       "https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html)")
    return found


def command(args: list[str], region: str | None = None) -> list[str]:
    return [executable(), *args, *(["--region", region] if region else [])]


def run(args: list[str], region: str | None = None) -> Any:
    """Run one aws command; its JSON output parsed, or its text (`aws s3` prints text), or None."""
    result = subprocess.run([*command(args, region), "--output", "json"], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise AwsError((result.stderr or result.stdout).strip() or f"aws {' '.join(args[:2])} failed")
    if not result.stdout.strip():
        return None
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        return result.stdout


def region_in_use(region: str | None = None) -> tuple[str | None, str]:
    """(the region a command will run in, where that comes from), as the CLI itself resolves it:
    the --region flag, else AWS_DEFAULT_REGION, else the profile's config file (`aws configure
    list`). (None, why) when there is none. AWS_REGION alone is not read by awscli 1.x."""
    if region:
        return region, "--region"
    listed = subprocess.run([executable(), "configure", "list"], capture_output=True, text=True, check=False)
    for line in listed.stdout.splitlines():
        fields = line.split()
        if fields[:1] == ["region"] and len(fields) >= 4 and fields[1] != "<not":
            return fields[1], f"{fields[2]} {fields[3]}" if fields[2] != "None" else fields[3]
    return None, "no --region, no AWS_DEFAULT_REGION, no region in the aws CLI's configuration"


def stack_resource(stack: str, logical_id: str, region: str | None, where: str) -> str:
    """The physical ID of one of a stack's resources; a missing stack is named with the region
    looked in and where that region came from (a stack in another region is the usual cause)."""
    try:
        answer = run(["cloudformation", "describe-stack-resource", "--stack-name", stack,
                      "--logical-resource-id", logical_id], region)
    except AwsError as error:
        if "does not exist" in str(error) and stack in str(error):
            raise AwsError(f"no stack {stack} in {region} (region from {where}); if it is in another "
                           f"region, give --region: {error}") from None
        raise
    return str(answer["StackResourceDetail"]["PhysicalResourceId"])
