#!/usr/bin/env python3
"""Run tootctl on a stack's worker through SSM Run Command and print what it prints.

    python scripts/tootctl.py mastodon accounts modify alice --role Owner
    python scripts/tootctl.py --region eu-central-1 mastodon media usage

Finds the stack's worker instance (its worker Auto Scaling group), sends
/opt/mastodon-aws/tootctl.sh with the arguments (each shell-quoted) as
AWS-RunShellScript, waits for it and prints its output; the exit status is
tootctl's. Run Command returns at most 24,000 characters of output.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import awscli  # noqa: E402
from templates.compute import WORKER_GROUP  # noqa: E402
from templates.maintenance import RUN_SHELL_SCRIPT, TOOTCTL  # noqa: E402

RUNNING = {"Pending", "InProgress", "Delayed"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", help="default: the aws CLI's configured region")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds tootctl may run")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between status checks")
    parser.add_argument("stack", help="the stack's name")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="tootctl's arguments")
    args = parser.parse_args(argv)
    if args.arguments[:1] == ["--"]:
        args.arguments = args.arguments[1:]
    if not args.arguments:
        parser.error("give tootctl's arguments, e.g. accounts modify alice --role Owner")
    return args


def worker_instance(stack: str, region: str | None) -> str:
    resource = awscli.run(["cloudformation", "describe-stack-resource", "--stack-name", stack,
                           "--logical-resource-id", WORKER_GROUP], region)
    group = resource["StackResourceDetail"]["PhysicalResourceId"]
    groups = awscli.run(["autoscaling", "describe-auto-scaling-groups", "--auto-scaling-group-names", group],
                        region)["AutoScalingGroups"]
    serving = [i["InstanceId"] for g in groups for i in g["Instances"] if i["LifecycleState"] == "InService"]
    if not serving:
        raise awscli.AwsError(f"the worker group {group} has no instance in service")
    return str(serving[0])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        instance = worker_instance(args.stack, args.region)
        line = shlex.join([TOOTCTL, *args.arguments])
        parameters = {"commands": [line], "executionTimeout": [str(args.timeout)]}
        command_id = awscli.run([
            "ssm", "send-command", "--instance-ids", instance, "--document-name", RUN_SHELL_SCRIPT,
            "--comment", f"tootctl {' '.join(args.arguments)}"[:100],
            "--parameters", json.dumps(parameters)], args.region)["Command"]["CommandId"]
        print(f"tootctl on {instance} (command {command_id})", file=sys.stderr, flush=True)
        while True:
            time.sleep(args.poll)
            try:
                invocation = awscli.run(["ssm", "get-command-invocation", "--command-id", command_id,
                                         "--instance-id", instance], args.region)
            except awscli.AwsError as error:
                if "InvocationDoesNotExist" in str(error):
                    continue  # not registered yet
                raise
            if invocation["Status"] not in RUNNING:
                break
    except awscli.AwsError as error:
        print(f"tootctl.py: error: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(invocation.get("StandardOutputContent", ""))
    sys.stderr.write(invocation.get("StandardErrorContent", ""))
    if invocation["Status"] != "Success":
        print(f"tootctl.py: {invocation['Status']} ({invocation.get('StatusDetails', '')})", file=sys.stderr)
    code = int(invocation.get("ResponseCode", -1))
    return code if code >= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
