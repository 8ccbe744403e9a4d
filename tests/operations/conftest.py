"""A moto server on localhost that the real `aws` CLI (run by the scripts) talks to."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # "localhost", not the address: moto reads a template's S3 URL by that name.
    yield f"http://localhost:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for the CLI and for boto3 in the test: moto, fake credentials, no profile."""
    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_PAGER": "",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}


def client(service: str, region: str = REGION):  # type: ignore[no-untyped-def]
    return boto3.client(service, region_name=region)


def run_script(name: str, *args: str, env: dict[str, str],
               timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"scripts.{Path(name).stem}", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False)


def launch_template_and_subnet(vpc_cidr: str, subnet_cidr: str) -> tuple[dict, str]:
    """In moto: a launch template resource (for a stack's body) with an image moto knows, and
    the id of a subnet of a new VPC for its groups."""
    image_id = client("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    vpc = client("ec2").create_vpc(CidrBlock=vpc_cidr)["Vpc"]["VpcId"]
    subnet = client("ec2").create_subnet(VpcId=vpc, CidrBlock=subnet_cidr)["Subnet"]["SubnetId"]
    template = {"Type": "AWS::EC2::LaunchTemplate", "Properties": {
        "LaunchTemplateData": {"ImageId": image_id, "InstanceType": "t4g.small"}}}
    return template, subnet
