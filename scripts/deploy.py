#!/usr/bin/env python3
"""Deploy the Mastodon stack with `aws cloudformation deploy` and one parameters/ file.

    python scripts/deploy.py --stack-name mastodon --parameters parameters/production.json \\
        --s3-bucket my-artifacts-bucket [--region eu-central-1] [--tag owner=ops]

Builds the template (or takes a pre-built JSON one, --template), checks the
parameter file against it, then runs `aws cloudformation deploy` (creating or
updating the stack through a change set; the template travels through the S3 bucket
because it is above CloudFormation's 51,200-byte inline limit), printing the stack's
events until it settles. Then prints the outputs, the instance URL first; after a
failure, the resources that failed and why. Exit status: 0 deployed (or nothing to
change), 1 the deploy failed, 2 bad arguments or parameter file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import awscli, parameter_files  # noqa: E402

INLINE_BODY_LIMIT = 51_200
CAPABILITIES = ("CAPABILITY_IAM", "CAPABILITY_NAMED_IAM")
FIRST_OUTPUT = "InstanceUrl"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack-name", required=True)
    parser.add_argument("--parameters", type=Path, required=True, metavar="FILE",
                        help="an AWS-CLI parameter file, e.g. parameters/production.json")
    parser.add_argument("--s3-bucket", help="bucket the template is uploaded to (needed above 51,200 bytes)")
    parser.add_argument("--s3-prefix", default="mastodon-templates")
    parser.add_argument("--region", help="default: the aws CLI's configured region")
    parser.add_argument("--template", type=Path, metavar="JSON",
                        help="deploy this pre-built JSON template instead of building dist/mastodon.json")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                        help="a stack tag (repeatable); project=mastodon and environment=<file name> "
                        "are always set")
    parser.add_argument("--poll", type=float, default=10.0, help="seconds between event polls")
    return parser.parse_args(argv)


def built_template() -> Path:
    import build
    from templates.options import BuildOptions

    build.build(BuildOptions(), ROOT / "dist")
    return ROOT / "dist" / f"{build.TEMPLATE_NAME}.json"


class EventWatcher:
    """Prints the stack's new events, oldest first, and remembers the failed ones."""

    def __init__(self, stack: str, region: str | None) -> None:
        self.stack, self.region = stack, region
        self.seen: set[str] = set(e["EventId"] for e in self._events())
        self.failures: list[dict[str, Any]] = []

    def _events(self) -> list[dict[str, Any]]:
        try:
            answer = awscli.run(["cloudformation", "describe-stack-events", "--stack-name", self.stack,
                                 "--max-items", "100"], self.region)
        except awscli.AwsError:
            return []  # the stack does not exist yet
        events: list[dict[str, Any]] = answer.get("StackEvents", [])
        return events

    def poll(self) -> None:
        for event in reversed(self._events()):
            if event["EventId"] in self.seen:
                continue
            self.seen.add(event["EventId"])
            reason = event.get("ResourceStatusReason") or ""
            print(f"  {str(event.get('Timestamp', ''))[:19]}  {event['ResourceStatus']:<28} "
                  f"{event['LogicalResourceId']} ({event.get('ResourceType', '')}) {reason}".rstrip(),
                  flush=True)
            if event["ResourceStatus"].endswith("_FAILED"):
                self.failures.append(event)


def deploy_command(args: argparse.Namespace, template: Path, values: dict[str, str]) -> list[str]:
    tags = {"project": "mastodon", "environment": args.parameters.stem}
    tags.update(dict(tag.split("=", 1) for tag in args.tag))
    command = ["cloudformation", "deploy", "--template-file", str(template),
               "--stack-name", args.stack_name, "--capabilities", *CAPABILITIES,
               "--no-fail-on-empty-changeset",
               "--parameter-overrides", *(f"{k}={v}" for k, v in values.items()),
               "--tags", *(f"{k}={v}" for k, v in tags.items())]
    if args.s3_bucket:
        command += ["--s3-bucket", args.s3_bucket, "--s3-prefix", args.s3_prefix]
    return awscli.command(command, args.region)


def protect_data(stack: str, region: str | None) -> None:
    """Set the stack policy that refuses updates replacing or deleting the data (idempotent)."""
    from templates.stack_policy import stack_policy

    awscli.run(["cloudformation", "set-stack-policy", "--stack-name", stack,
                "--stack-policy-body", json.dumps(stack_policy())], region)
    print("Stack policy set: updates may not replace or delete the database, cache, media or secret.")


def print_outputs(stack: str, region: str | None) -> str:
    (described,) = awscli.run(["cloudformation", "describe-stacks", "--stack-name", stack], region)["Stacks"]
    outputs = sorted(described.get("Outputs", []), key=lambda o: (o["OutputKey"] != FIRST_OUTPUT,
                                                                  o["OutputKey"]))
    print(f"{stack}: {described['StackStatus']}")
    for output in outputs:
        print(f"  {output['OutputKey']}: {output['OutputValue']}")
    status: str = described["StackStatus"]
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        template = args.template or built_template()
        body = json.loads(template.read_text())
        values = parameter_files.load(args.parameters, body, args.region)
    except (OSError, json.JSONDecodeError, parameter_files.ParameterFileError) as error:
        print(f"deploy.py: error: {error}", file=sys.stderr)
        return 2
    if template.stat().st_size > INLINE_BODY_LIMIT and not args.s3_bucket:
        print(f"deploy.py: error: the template is {template.stat().st_size} bytes, above the "
              f"{INLINE_BODY_LIMIT} CloudFormation takes inline: give --s3-bucket", file=sys.stderr)
        return 2
    try:
        watcher = EventWatcher(args.stack_name, args.region)
        print(f"Deploying {template} as {args.stack_name} with {args.parameters}", flush=True)
        process = subprocess.Popen(deploy_command(args, template, values), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        while process.poll() is None:
            time.sleep(args.poll)
            watcher.poll()
        out, err = process.communicate()
        watcher.poll()
        if process.returncode != 0:
            print(f"deploy failed: {(err or out).strip()}", file=sys.stderr)
            if watcher.failures:
                print("failing resources:", file=sys.stderr)
                for event in watcher.failures:
                    print(f"  {event['LogicalResourceId']} ({event.get('ResourceType', '')}): "
                          f"{event['ResourceStatus']}: "
                          f"{event.get('ResourceStatusReason', 'no reason given')}",
                          file=sys.stderr)
            return 1
        if "No changes to deploy" in out:
            print("No changes to deploy: the stack already matches.")
        protect_data(args.stack_name, args.region)
        print_outputs(args.stack_name, args.region)
    except awscli.AwsError as error:
        print(f"deploy.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
