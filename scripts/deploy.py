#!/usr/bin/env python3
"""Deploy the Mastodon stack with `aws cloudformation deploy` and one parameters/ file.

    python scripts/deploy.py --stack-name mastodon --parameters parameters/production.json \\
        --s3-bucket my-artifacts-bucket [--region eu-central-1] [--tag owner=ops]

Builds the template (or takes a pre-built JSON one, --template), checks the
parameter file against it, then runs `aws cloudformation deploy` (creating or
updating the stack through a change set; the template travels through the S3 bucket
because it is above CloudFormation's inline limit, templates.options.INLINE_TEMPLATE_LIMIT),
printing the stack's events until it settles. Then prints the outputs, the instance URL
first; after a failure, the resources that failed and why. Exit status: 0 deployed (or
nothing to change), 1 the deploy failed, 2 bad arguments or parameter file.

A first create can outlast the 60 minutes `aws cloudformation deploy` waits (the
database, CloudFront's VPC origin, certificate validation): when the CLI gives up
while the stack is still in progress, this script keeps watching until it settles,
and only then sets the stack policy.

Every parameter of the file is passed on every run. Keys left out of the file keep
their previous values on an update (`aws cloudformation deploy` sends UsePreviousValue
for them; only parameters new to the template take their defaults): to return a
parameter to its default, write the default in the file.

A stack whose first create failed cannot be updated: in ROLLBACK_COMPLETE it must be
deleted first, in ROLLBACK_FAILED what could not be deleted must be dealt with first;
the script refuses both, saying what to run.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

from scripts import awscli, parameter_files, quick_create  # noqa: E402
from scripts.version import version_action  # noqa: E402
from templates.options import INLINE_TEMPLATE_LIMIT  # noqa: E402

SUCCEEDED = ("CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE")
CAPABILITIES = ("CAPABILITY_IAM", "CAPABILITY_NAMED_IAM")
FIRST_OUTPUT = "InstanceUrl"


def tag(text: str) -> str:
    """A --tag value: KEY=VALUE with a non-empty key (argparse turns the error into exit status 2)."""
    key, equals, _ = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: give KEY=VALUE, e.g. owner=ops")
    return text


def stack_name(text: str) -> str:
    if not quick_create.STACK_NAME.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid stack name: letters, digits and "
                                         "hyphens, starting with a letter, at most 128 characters")
    return text


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=version_action(), help="print the project's version and exit")
    parser.add_argument("--stack-name", required=True, type=stack_name,
                        help="the CloudFormation stack to create or update, e.g. mastodon")
    parser.add_argument("--parameters", type=Path, required=True, metavar="FILE",
                        help="an AWS-CLI parameter file, e.g. parameters/production.json")
    parser.add_argument("--s3-bucket", help=f"bucket the template is uploaded to (needed above "
                        f"{INLINE_TEMPLATE_LIMIT:,} bytes); it must be in the stack's region")
    parser.add_argument("--create-bucket", action="store_true",
                        help="create --s3-bucket in the stack's region when it does not exist")
    parser.add_argument("--s3-prefix", default="mastodon-templates",
                        help="key prefix of the uploaded template")
    parser.add_argument("--region", help="the stack's region; default: the aws CLI's (AWS_DEFAULT_REGION, "
                        "then the profile's configuration)")
    parser.add_argument("--template", type=Path, metavar="JSON",
                        help="deploy this pre-built JSON template instead of building dist/mastodon.json")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", type=tag,
                        help="a stack tag (repeatable); project=mastodon and environment=<file name> "
                        "are always set")
    parser.add_argument("--preview", action="store_true",
                        help="create the change set, show what it would add, modify, replace or remove "
                        "(replaced data in red), and stop without executing it")
    parser.add_argument("--poll", type=float, default=10.0, help="seconds between event polls")
    parser.add_argument("--no-check", action="store_true",
                        help="do not run scripts/check.py on the stack once it is deployed")
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


def stack_status(stack: str, region: str | None) -> str | None:
    """The stack's status, or None when there is no such stack."""
    try:
        answer = awscli.run(["cloudformation", "describe-stacks", "--stack-name", stack], region)
    except awscli.AwsError as error:
        if "does not exist" in str(error):
            return None
        raise
    status: str = answer["Stacks"][0]["StackStatus"]
    return status


def current_parameters(stack: str, region: str | None) -> dict[str, str]:
    """The parameter values of a stack an update would keep; {} when there is none to update."""
    try:
        (described,) = awscli.run(["cloudformation", "describe-stacks", "--stack-name", stack],
                                  region)["Stacks"]
    except (awscli.AwsError, KeyError, ValueError):
        return {}
    if described.get("StackStatus") in ("REVIEW_IN_PROGRESS", "ROLLBACK_COMPLETE", "ROLLBACK_FAILED"):
        return {}  # nothing was created that an update would keep
    return {p["ParameterKey"]: p.get("ParameterValue", "") for p in described.get("Parameters", [])
            if not p.get("ParameterValue", "").startswith("****")}  # NoEcho values are masked


def settling(status: str | None) -> bool:
    """CloudFormation is still working on the stack (a change set under review is not)."""
    return bool(status) and str(status).endswith("_IN_PROGRESS") and status != "REVIEW_IN_PROGRESS"


def wait_until_settled(stack: str, region: str | None, watcher: EventWatcher, poll: float) -> str | None:
    """Follow the events until the stack leaves every *_IN_PROGRESS state; its final status."""
    status = stack_status(stack, region)
    while settling(status):
        time.sleep(poll)
        watcher.poll()
        status = stack_status(stack, region)
    watcher.poll()
    return status


def failed_create_advice(stack: str, status: str | None, region: str | None) -> str | None:
    """What the operator must do before a stack in this state can be deployed, or None."""
    where = f" --region {region}" if region else ""
    if status == "ROLLBACK_COMPLETE":
        return (f"{stack} is in ROLLBACK_COMPLETE: its first create failed and was rolled back "
                "(see its events for the first CREATE_FAILED). CloudFormation cannot update such a "
                "stack. The database and the cache, if they were created, left a final snapshot "
                "(delete it if unwanted); the media bucket and the app secret were removed with the "
                "rollback. Delete the stack, then run deploy.py again:\n"
                f"  aws cloudformation delete-stack --stack-name {stack}{where}\n"
                f"  aws cloudformation wait stack-delete-complete --stack-name {stack}{where}")
    if status == "ROLLBACK_FAILED":
        lines = [f"{stack} is in ROLLBACK_FAILED: its first create failed and the rollback could not "
                 "delete some resources, which still exist (and may bill):"]
        for resource in delete_failures(stack, region):
            lines.append(f"  {resource['LogicalResourceId']} ({resource['ResourceType']}) "
                         f"{resource.get('PhysicalResourceId', '')}: "
                         f"{resource.get('ResourceStatusReason', 'no reason given')}")
            if resource["ResourceType"] == "AWS::RDS::DBInstance" and resource.get("PhysicalResourceId"):
                lines.append("    its deletion protection is on; turn it off first:\n"
                             "    aws rds modify-db-instance --db-instance-identifier "
                             f"{resource['PhysicalResourceId']} --no-deletion-protection "
                             f"--apply-immediately{where}")
        lines.append("Then delete the stack and run deploy.py again (should the deletion end in "
                     "DELETE_FAILED, delete it again with --retain-resources LOGICAL_ID to keep "
                     "what could not be deleted):\n"
                     f"  aws cloudformation delete-stack --stack-name {stack}{where}\n"
                     f"  aws cloudformation wait stack-delete-complete --stack-name {stack}{where}")
        return "\n".join(lines)
    if status == "UPDATE_ROLLBACK_FAILED":
        return (f"{stack} is in UPDATE_ROLLBACK_FAILED: fix what its events name, then\n"
                f"  aws cloudformation continue-update-rollback --stack-name {stack}{where}")
    return None


def delete_failures(stack: str, region: str | None) -> list[dict[str, Any]]:
    """The resources whose latest event is DELETE_FAILED: what the rollback left behind."""
    answer = awscli.run(["cloudformation", "describe-stack-events", "--stack-name", stack], region)
    latest: dict[str, dict[str, Any]] = {}
    for event in answer.get("StackEvents", []):  # newest first
        if event.get("ResourceType") != "AWS::CloudFormation::Stack":
            latest.setdefault(event["LogicalResourceId"], event)
    return [e for e in latest.values() if e["ResourceStatus"] == "DELETE_FAILED"]


def deploy_command(args: argparse.Namespace, template: Path, values: dict[str, str]) -> list[str]:
    tags = {"project": "mastodon", "environment": args.parameters.stem}
    tags.update(dict(tag.split("=", 1) for tag in args.tag))
    command = ["cloudformation", "deploy", "--template-file", str(template),
               "--stack-name", args.stack_name, "--capabilities", *CAPABILITIES,
               "--no-fail-on-empty-changeset",
               # The CLI refuses the flag without a value.
               *(["--parameter-overrides", *(f"{k}={v}" for k, v in values.items())] if values else []),
               "--tags", *(f"{k}={v}" for k, v in tags.items())]
    if args.s3_bucket:
        command += ["--s3-bucket", args.s3_bucket, "--s3-prefix", args.s3_prefix]
    return awscli.command(command, args.region)


def artifact_bucket_problem(bucket: str, region: str, create: bool) -> str | None:
    """Why the template cannot travel through this bucket, or None (after creating it if asked).

    `aws cloudformation deploy` hands CloudFormation the object's URL on the stack region's
    S3 endpoint (awscli's S3Uploader.to_path_style_s3_url), so the bucket must be in that region.
    """
    try:
        located = awscli.run(["s3api", "get-bucket-location", "--bucket", bucket], region) or {}
    except awscli.AwsError as error:
        if "NoSuchBucket" not in str(error) and "does not exist" not in str(error):
            return (f"cannot read the location of bucket {bucket}: {error}. The bucket must be one you "
                    f"own in {region}; --create-bucket makes a new one there")
        if not create:
            return (f"bucket {bucket} does not exist: create it in {region} (the stack's region) with "
                    f"--create-bucket, or aws s3 mb s3://{bucket} --region {region}")
        awscli.run(["s3", "mb", f"s3://{bucket}"], region)
        print(f"Created bucket {bucket} in {region}.", flush=True)
        return None
    # get-bucket-location answers null for us-east-1 and "EU" for the oldest eu-west-1 buckets.
    actual = {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(located.get("LocationConstraint"),
                                                                        located.get("LocationConstraint"))
    if actual != region:
        return (f"bucket {bucket} is in {actual}, the stack in {region}: CloudFormation reads the template "
                f"from the stack's region. Use a bucket in {region} (--create-bucket makes one), or "
                f"--region {actual} to deploy there")
    return None


# Types whose replacement or removal loses data or the keys to it (besides the stack
# policy's PROTECTED_RESOURCES, by logical ID).
DATA_TYPES = ("AWS::RDS::DBInstance", "AWS::ElastiCache::ReplicationGroup", "AWS::S3::Bucket",
              "AWS::SecretsManager::Secret")
RED, RESET = "\033[31m", "\033[0m"
CHANGE_SET_ARN = re.compile(r"--change-set-name (arn:\S+)")


def change_lines(changes: list[dict[str, Any]], color: bool) -> list[str]:
    """One line per resource change of a change set; a data resource that would be replaced
    (or might be: Replacement "Conditional") or removed is marked, and red when color is on."""
    from templates.data import DISPOSABLE
    from templates.stack_policy import PROTECTED_RESOURCES

    lines = []
    for change in changes:
        resource = change.get("ResourceChange", {})
        action, replacement = resource.get("Action", "?"), resource.get("Replacement", "")
        logical, kind = resource.get("LogicalResourceId", "?"), resource.get("ResourceType", "")
        verb = {"Add": "add", "Remove": "REMOVE", "Dynamic": "decided at deploy time"}.get(action, "modify")
        if action == "Modify" and replacement == "True":
            verb = "REPLACE"
        elif action == "Modify" and replacement == "Conditional":
            verb = "modify, may REPLACE"
        data = (logical in PROTECTED_RESOURCES or kind in DATA_TYPES) and logical not in DISPOSABLE
        lost = data and (action == "Remove" or replacement in ("True", "Conditional"))
        line = f"  {'!! ' if lost else '   '}{verb:<22} {logical} ({kind})"
        if lost:
            line += ": DATA — the stack policy refuses this; a replaced or removed resource loses its data"
            line = f"{RED}{line}{RESET}" if color else line
        lines.append(line)
    return lines


def preview(args: argparse.Namespace, template: Path, values: dict[str, str]) -> int:
    """Create the change set without executing it and show what it would change."""
    print(f"Previewing {template} as {args.stack_name} with {args.parameters} (nothing is executed)",
          flush=True)
    result = subprocess.run([*deploy_command(args, template, values), "--no-execute-changeset"],
                            capture_output=True, text=True, check=False)
    if "No changes to deploy" in result.stdout:
        print("No changes to deploy: the stack already matches.")
        return 0
    found = CHANGE_SET_ARN.search(result.stdout)
    if result.returncode != 0 or not found:
        print(f"deploy.py: the change set could not be created: {(result.stderr or result.stdout).strip()}",
              file=sys.stderr)
        return 1
    arn = found.group(1)
    answer = awscli.run(["cloudformation", "describe-change-set", "--change-set-name", arn], args.region)
    changes = answer.get("Changes", [])
    print(f"Change set {arn}: {len(changes)} resource change(s)")
    for line in change_lines(changes, color=sys.stdout.isatty()):
        print(line)
    where = f" --region {args.region}"
    print(f"Not executed. To apply it as previewed: aws cloudformation execute-change-set "
          f"--change-set-name {arn}{where} (or run deploy.py without --preview); to discard it: "
          f"aws cloudformation delete-change-set --change-set-name {arn}{where}"
          + (" (a new stack waits in REVIEW_IN_PROGRESS until then; delete it with delete-stack)"
             if stack_status(args.stack_name, args.region) == "REVIEW_IN_PROGRESS" else ""))
    return 0


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
        args.region, where = awscli.region_in_use(args.region)
    except awscli.AwsError as error:
        print(f"deploy.py: error: {error}", file=sys.stderr)
        return 2
    if not args.region:
        print(f"deploy.py: error: no region to deploy in ({where}): give --region", file=sys.stderr)
        return 2
    try:
        template = args.template or built_template()
        body = json.loads(template.read_text())
        values = parameter_files.load(args.parameters, body, args.region,
                                      previous=lambda: current_parameters(args.stack_name, args.region))
    except (OSError, json.JSONDecodeError, parameter_files.ParameterFileError) as error:
        print(f"deploy.py: error: {error}", file=sys.stderr)
        return 2
    for warning in [*parameter_files.unchecked_rules(body, values, args.region),
                    *parameter_files.example_values(values)]:
        print(f"deploy.py: warning: {warning}", file=sys.stderr)
    if template.stat().st_size > INLINE_TEMPLATE_LIMIT and not args.s3_bucket:
        print(f"deploy.py: error: the template is {template.stat().st_size} bytes, above the "
              f"{INLINE_TEMPLATE_LIMIT} CloudFormation takes inline: give --s3-bucket (a bucket in "
              f"{args.region}; --create-bucket makes it)", file=sys.stderr)
        return 2
    print(f"Region {args.region} (from {where}).", flush=True)
    try:
        if args.s3_bucket:
            problem = artifact_bucket_problem(args.s3_bucket, args.region, args.create_bucket)
            if problem:
                print(f"deploy.py: error: {problem}", file=sys.stderr)
                return 2
        if args.preview:
            return preview(args, template, values)
        advice = failed_create_advice(args.stack_name, stack_status(args.stack_name, args.region),
                                      args.region)
        if advice:
            print(f"deploy.py: {advice}", file=sys.stderr)
            return 1
        watcher = EventWatcher(args.stack_name, args.region)
        print(f"Deploying {template} as {args.stack_name} with {args.parameters}", flush=True)
        process = subprocess.Popen(deploy_command(args, template, values), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        while process.poll() is None:
            time.sleep(args.poll)
            watcher.poll()
        out, err = process.communicate()
        watcher.poll()
        if process.returncode != 0 and settling(stack_status(args.stack_name, args.region)):
            # The CLI stops waiting after 60 minutes; CloudFormation goes on.
            print("aws cloudformation deploy stopped waiting; following the stack until it settles.",
                  flush=True)
            status = wait_until_settled(args.stack_name, args.region, watcher, args.poll)
            if status in SUCCEEDED:
                process.returncode, out = 0, ""
            else:
                err = f"the stack ended in {status}"
        if process.returncode != 0:
            print(f"deploy failed: {(err or out).strip()}", file=sys.stderr)
            if watcher.failures:
                print("failing resources:", file=sys.stderr)
                for event in watcher.failures:
                    print(f"  {event['LogicalResourceId']} ({event.get('ResourceType', '')}): "
                          f"{event['ResourceStatus']}: "
                          f"{event.get('ResourceStatusReason', 'no reason given')}",
                          file=sys.stderr)
            advice = failed_create_advice(args.stack_name, stack_status(args.stack_name, args.region),
                                          args.region)
            if advice:
                print(advice, file=sys.stderr)
            return 1
        if "No changes to deploy" in out:
            print("No changes to deploy: the stack already matches.")
        protect_data(args.stack_name, args.region)
        print_outputs(args.stack_name, args.region)
    except awscli.AwsError as error:
        print(f"deploy.py: error: {error}", file=sys.stderr)
        return 1
    if args.no_check:
        return 0
    return run_check(args.stack_name, args.region)


def run_check(stack: str, region: str | None) -> int:
    """scripts/check.py on the deployed stack: its exit status, 0 only when every required
    check passes. The deploy itself needs only the aws CLI; without boto3 the check is
    skipped with the command to run it, not turned into a failed deploy."""
    import importlib.util

    if importlib.util.find_spec("boto3") is None:
        print("deploy.py: the stack is deployed; its check needs boto3 (pip install boto3, then "
              f"scripts/check.py --stack-name {stack}), so it was skipped", file=sys.stderr)
        return 0
    from scripts import check

    return check.main(["--stack-name", stack, *(["--region", region] if region else [])])


if __name__ == "__main__":
    sys.exit(main())
