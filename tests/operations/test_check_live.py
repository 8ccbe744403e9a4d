"""The check against a real stack in a real account: creates one from the built template,
runs scripts/check.py on it, and deletes it. Skipped unless MASTODON_AWS_LIVE=1.

    MASTODON_AWS_LIVE=1 MASTODON_LIVE_DOMAIN=check.example.com \\
    MASTODON_LIVE_HOSTED_ZONE=Z0123456789ABC MASTODON_LIVE_ALERT_EMAIL=ops@example.com \\
    MASTODON_LIVE_BUCKET=my-artifact-bucket [MASTODON_LIVE_REGION=eu-central-1] \\
    [MASTODON_LIVE_MAIL_TO=you@example.com] [MASTODON_LIVE_SETTLE_MINUTES=30] \\
        .venv/bin/python -m pytest -n 0 -s tests/operations/test_check_live.py

README.md ("Checking against a real account") says what the account needs. It bills
(about an hour of the stack: a few dollars), takes 30-90 minutes, and needs credentials
that may create and delete the stack. The stack is deleted whatever the outcome; what
the stack keeps by design (the database's final snapshot, the media bucket) is printed
at the end, to be removed by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from scripts import awscli
from scripts.check import parameter_names
from templates.data import DATABASE, MEDIA_BUCKET

REPO = Path(__file__).resolve().parents[2]
LIVE = os.environ.get("MASTODON_AWS_LIVE") == "1"
pytestmark = pytest.mark.skipif(not LIVE, reason="creates a real stack: set MASTODON_AWS_LIVE=1 and the "
                                "MASTODON_LIVE_* variables (see this module's docstring)")
REQUIRED = ("MASTODON_LIVE_DOMAIN", "MASTODON_LIVE_HOSTED_ZONE", "MASTODON_LIVE_ALERT_EMAIL",
            "MASTODON_LIVE_BUCKET")
OPTIONAL = ("MASTODON_LIVE_REGION", "MASTODON_LIVE_MAIL_TO", "MASTODON_LIVE_SETTLE_MINUTES")
# A fresh stack settles after its create: DNS reaches resolvers, SES finds the DKIM records
# (within minutes usually, up to 72 hours by SES's word). The check runs again meanwhile.
SETTLE_MINUTES = 30
RETRY_SECONDS = 300


def _script(name: str, *args: str, timeout: int) -> subprocess.CompletedProcess[str]:
    # A fresh stack has no account, so no access token can be valid: the heartbeat is skipped.
    env = {k: v for k, v in os.environ.items() if k != "MASTODON_ACCESS_TOKEN"}
    return subprocess.run([sys.executable, "-m", f"scripts.{Path(name).stem}", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, check=False, env=env)


def _teardown(stack: str, region: str) -> None:
    """Delete the stack: its database's deletion protection is on once it stands."""
    resources = awscli.run(["cloudformation", "describe-stack-resources", "--stack-name", stack], region)
    kept = []
    for resource in resources.get("StackResources", []):
        physical = resource.get("PhysicalResourceId")
        if resource["LogicalResourceId"] == DATABASE and physical:
            awscli.run(["rds", "modify-db-instance", "--db-instance-identifier", physical,
                        "--no-deletion-protection", "--apply-immediately"], region)
            kept.append(f"the database's final snapshot (of {physical})")
        if resource["LogicalResourceId"] == MEDIA_BUCKET and physical:
            kept.append(f"the media bucket {physical}")
    awscli.run(["cloudformation", "delete-stack", "--stack-name", stack], region)
    awscli.run(["cloudformation", "wait", "stack-delete-complete", "--stack-name", stack], region)
    print(f"{stack} deleted; kept by design, remove by hand: {'; '.join(kept) or 'nothing'}")


@pytest.mark.timeout(4 * 3600)
def test_a_fresh_stack_passes_every_required_check(tmp_path):
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        pytest.fail(f"set {', '.join(missing)} (see this module's docstring)")
    region = os.environ.get("MASTODON_LIVE_REGION", "us-east-1")
    mail_to = os.environ.get("MASTODON_LIVE_MAIL_TO")
    settle = float(os.environ.get("MASTODON_LIVE_SETTLE_MINUTES", SETTLE_MINUTES)) * 60
    stack = f"mastodon-check-{uuid.uuid4().hex[:8]}"
    print(f"creating {stack} in {region}: should this run be killed, delete it by hand", flush=True)
    names = parameter_names()
    parameters = tmp_path / "live.json"
    parameters.write_text(json.dumps([
        {"ParameterKey": names.domain.title, "ParameterValue": os.environ["MASTODON_LIVE_DOMAIN"]},
        {"ParameterKey": names.hosted_zone.title, "ParameterValue": os.environ["MASTODON_LIVE_HOSTED_ZONE"]},
        {"ParameterKey": names.alert_email.title, "ParameterValue": os.environ["MASTODON_LIVE_ALERT_EMAIL"]},
    ]))
    try:
        deployed = _script("deploy.py", "--stack-name", stack, "--parameters", str(parameters),
                           "--s3-bucket", os.environ["MASTODON_LIVE_BUCKET"], "--region", region,
                           "--no-check", timeout=3 * 3600)
        assert deployed.returncode == 0, deployed.stderr[-4000:] + deployed.stdout[-4000:]

        until = time.monotonic() + settle
        while True:
            checked = _script("check.py", "--stack-name", stack, "--region", region, "--json",
                              *(["--mail-to", mail_to] if mail_to else []), timeout=3600)
            document = json.loads(checked.stdout)
            failures = [c for c in document["checks"] if c["status"] == "fail"]
            print(json.dumps(failures, indent=2), flush=True)
            if document["ok"] or time.monotonic() + RETRY_SECONDS > until:
                break
            time.sleep(RETRY_SECONDS)
        assert checked.returncode == 0 and document["ok"], failures
    finally:
        _teardown(stack, region)
