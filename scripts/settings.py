#!/usr/bin/env python3
"""Apply changed Mastodon settings (templates/settings.py) to a running stack's servers.

    python scripts/settings.py --region eu-central-1 mastodon apply

The servers read the settings at boot and whenever a rollout restarts them, but a rollout
of the version that already runs does nothing. `apply` asks every server in service,
the worker first and then the web servers one at a time, to run `deploy.sh settings`
through SSM Run Command: each reads the settings again, checks them, and only if they
changed restarts its containers with them, waits for them to turn healthy, and puts the
previous settings back when they do not. It stops at the first server that fails (the
others keep the settings they run) and prints why. Exit status: 0 every server runs the
current settings, 1 otherwise.

A web server restarts in place, without leaving the load balancer: with one web server
Mastodon is unavailable for the restart (about a minute). To avoid that, run two or more
web servers while applying, or let the next rollout of a new version apply them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

from scripts import awscli
from scripts.version import version_action
from templates.compute import DEPLOY_SCRIPT, QUEUE_GROUP, WEB_GROUP, WORKER_GROUP
from templates.maintenance import RUN_SHELL_SCRIPT

RUNNING = {"Pending", "InProgress", "Delayed"}
APPLY = "apply"
# A restart waits up to deploy.sh's health timeout (300 s), twice when it puts the previous
# settings back, behind a deploy that may hold the server's lock.
COMMAND_TIMEOUT_SECONDS = 1800
# The worker first: it serves no request, and a setting that breaks Rails shows there; then
# the queue workers, which serve none either.
GROUPS = (WORKER_GROUP, QUEUE_GROUP, WEB_GROUP)
# Groups that exist only while their option is on (QueueWorkers): absent ones are skipped.
OPTIONAL_GROUPS = {QUEUE_GROUP}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=version_action(), help="print the project's version and exit")
    parser.add_argument("--region", help="the stack's region; default: the aws CLI's")
    parser.add_argument("--poll", type=float, default=3.0, help="seconds between status checks")
    parser.add_argument("stack", help="the stack's name")
    parser.add_argument("action", choices=[APPLY], help="apply: every server reads its settings again")
    return parser.parse_args(argv)


def servers(stack: str, region: str | None, where: str) -> list[tuple[str, str]]:
    """(group's logical ID, instance) of every server in service, in the order they are asked."""
    found = []
    for logical_id in GROUPS:
        try:
            group = awscli.stack_resource(stack, logical_id, region, where)
        except awscli.AwsError as error:
            if logical_id in OPTIONAL_GROUPS and f"Resource {logical_id} does not exist" in str(error):
                continue  # the option is off: the stack has no such group
            raise
        answer = awscli.run(["autoscaling", "describe-auto-scaling-groups", "--auto-scaling-group-names",
                             group], region)
        found += sorted((logical_id, i["InstanceId"]) for g in answer["AutoScalingGroups"]
                        for i in g["Instances"] if i["LifecycleState"] == "InService")
    return found


def run_on(instance: str, region: str | None, poll: float) -> dict:
    """Runs `deploy.sh settings` on one server and returns its invocation once it has ended."""
    parameters = {"commands": [shlex.join([DEPLOY_SCRIPT, "settings"])],
                  "executionTimeout": [str(COMMAND_TIMEOUT_SECONDS)]}
    command_id = awscli.run([
        "ssm", "send-command", "--instance-ids", instance, "--document-name", RUN_SHELL_SCRIPT,
        "--comment", "apply Mastodon's other settings", "--parameters", json.dumps(parameters)],
        region)["Command"]["CommandId"]
    while True:
        time.sleep(poll)
        try:
            invocation = awscli.run(["ssm", "get-command-invocation", "--command-id", command_id,
                                     "--instance-id", instance], region)
        except awscli.AwsError as error:
            if "InvocationDoesNotExist" in str(error):
                continue  # not registered yet
            raise
        if invocation["Status"] not in RUNNING:
            return dict(invocation)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        region, where = awscli.region_in_use(args.region)
        targets = servers(args.stack, region, where)
        if not targets:
            print(f"settings.py: no server of {args.stack} is in service", file=sys.stderr)
            return 1
        for done, (group, instance) in enumerate(targets):
            print(f"{instance} ({group}): reading the settings again", file=sys.stderr, flush=True)
            try:
                invocation = run_on(instance, region, args.poll)
            except awscli.AwsError as error:
                if "InvalidInstanceId" in str(error):
                    # Leaving the group meanwhile: its replacement boots with the settings.
                    print(f"  {instance} is no longer reachable ({error}); skipped", file=sys.stderr)
                    continue
                raise
            output = invocation.get("StandardOutputContent", "")
            if invocation["Status"] != "Success":
                reason = last_line(invocation.get("StandardErrorContent", "")) or invocation.get(
                    "StatusDetails", invocation["Status"])
                print(f"settings.py: {instance} ({group}) failed: {reason}", file=sys.stderr)
                left = [i for _, i in targets[done + 1:]]
                if left:
                    print(f"settings.py: not asked: {' '.join(left)}", file=sys.stderr)
                return 1
            print(f"  {last_line(output)}", file=sys.stderr, flush=True)
    except awscli.AwsError as error:
        print(f"settings.py: error: {error}", file=sys.stderr)
        return 1
    print(f"every server of {args.stack} runs the current settings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
