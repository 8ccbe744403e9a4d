#!/usr/bin/env python3
"""Run tootctl on a stack's worker through SSM Run Command and print what it prints.

    python scripts/tootctl.py mastodon owner alice --email alice@example.com
    python scripts/tootctl.py mastodon accounts modify alice --role Owner
    python scripts/tootctl.py --region eu-central-1 mastodon media usage

Finds the stack's worker instance (its worker Auto Scaling group), sends
tootctl.sh (templates.maintenance.TOOTCTL) with the arguments (each shell-quoted) as
AWS-RunShellScript, waits for it and prints its output; the exit status is
tootctl's. Run Command returns at most 24,000 characters of output.

`owner NAME --email EMAIL` makes the instance's first account on day one, when
registrations are closed and SES is still in its sandbox (no confirmation mail
could arrive): `tootctl accounts create NAME --email EMAIL --confirmed --role
Owner`, then `tootctl accounts approve NAME`. It prints the generated password
once, on standard output. Run Command keeps every command's output in the
account's command history (and the SSM agent a copy on the worker), where anyone
allowed ssm:GetCommandInvocation can read it: sign in and change the password at
once (Preferences > Account), which makes those copies worthless.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time

from scripts import awscli
from scripts.version import version_action
from templates.compute import WORKER_GROUP
from templates.maintenance import RUN_SHELL_SCRIPT, TOOTCTL

RUNNING = {"Pending", "InProgress", "Delayed"}
OWNER = "owner"
OWNER_ROLE = "Owner"
# A local account's username (Mastodon's Account validation): letters, digits, _; at most 30.
USERNAME = re.compile(r"[A-Za-z0-9_]{1,30}")
# tootctl accounts create prints "New password: <hex>" after creating the user.
NEW_PASSWORD = re.compile(r"^New password: (\S+)$", re.MULTILINE)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=f"{OWNER} NAME --email EMAIL: create the Owner account (confirmed, approved) without open "
        "registrations or mail, and print its password once; change it at first sign-in, because "
        "Run Command's history keeps the output.")
    parser.add_argument("--version", action=version_action(), help="print the project's version and exit")
    parser.add_argument("--region", help="the stack's region; default: the aws CLI's (AWS_DEFAULT_REGION, "
                        "then the profile's configuration)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds tootctl may run")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between status checks")
    parser.add_argument("stack", help="the stack's name")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="tootctl's arguments")
    args = parser.parse_args(argv)
    if args.arguments[:1] == ["--"]:
        args.arguments = args.arguments[1:]
    if not args.arguments:
        parser.error("give tootctl's arguments, e.g. accounts modify alice --role Owner")
    args.owner = None
    if args.arguments[0] == OWNER:
        owner = argparse.ArgumentParser(prog=f"{parser.prog} STACK {OWNER}",
                                        description="Create the instance's Owner account")
        owner.add_argument("username", help="letters, digits and _, at most 30; not a name Mastodon "
                           "reserves (admin, owner, root, support, staff...)")
        owner.add_argument("--email", required=True, help="the owner's e-mail address (no mail is sent)")
        args.owner = owner.parse_args(args.arguments[1:])
        if not USERNAME.fullmatch(args.owner.username):
            owner.error(f"{args.owner.username!r} is not a Mastodon username: use letters, digits and _, "
                        "at most 30")
        if "@" not in args.owner.email:
            owner.error(f"{args.owner.email!r} is not an e-mail address")
    return args


def owner_commands(username: str, email: str) -> list[str]:
    """The worker's shell lines: create the confirmed Owner, then approve it (closed registrations
    leave a new account pending). `set -e`: nothing is approved when the creation fails."""
    return [
        "set -eu",
        shlex.join([TOOTCTL, "accounts", "create", username, "--email", email, "--confirmed",
                    "--role", OWNER_ROLE]),
        shlex.join([TOOTCTL, "accounts", "approve", username]),
    ]


def owner_outcome(username: str, stdout: str, stderr: str, code: int) -> tuple[int, str, str]:
    """(exit status, what goes to stdout, what goes to stderr) for the owner command's run.

    The password goes to stdout alone, once; never to stderr, which may be logged.
    """
    found = NEW_PASSWORD.search(stdout)
    if found and code == 0:
        return 0, found.group(1) + "\n", (
            f"Owner account {username} created, confirmed and approved. Its password is on standard "
            "output (shown once): sign in with the e-mail address and that password, then change it "
            "(Preferences > Account); Run Command's history keeps this output.\n")
    if found:
        return code if code > 0 else 1, found.group(1) + "\n", (
            f"{stderr}tootctl.py: the account {username} was created (its password is on standard "
            f"output) but not approved; run: tootctl.py STACK accounts approve {username}\n")
    if "account.username" in stderr and "taken" in stderr:
        hint = (f"an account {username} already exists; to make it the owner: tootctl.py STACK accounts "
                f"modify {username} --role {OWNER_ROLE} --confirm --approve (add --reset-password for "
                "a new password)")
    elif "account.username" in stderr:
        hint = (f"Mastodon refuses the username {username!r}: names it reserves (admin, owner, root, "
                "support, staff and the other blocked usernames of its seeds) cannot be registered; "
                "pick another")
    elif "email" in stderr and "taken" in stderr:
        hint = "another account already uses that e-mail address"
    else:
        hint = f"tootctl failed (exit status {code}) and printed no password"
    return code if code > 0 else 1, "", f"{stderr}tootctl.py: {hint}\n"


# While tootctl runs (a media cleanup can take an hour), say so this often.
WAITING_NOTE_SECONDS = 30.0


def waiting_note(status: str, waited: float, noted: float) -> str | None:
    """A line saying the command still runs, once per WAITING_NOTE_SECONDS of waiting."""
    if waited - noted < WAITING_NOTE_SECONDS:
        return None
    minutes, seconds = divmod(int(waited), 60)
    return f"  still waiting for tootctl ({status}, {minutes}m{seconds:02d}s)"


def worker_instance(stack: str, region: str | None, where: str = "--region") -> str:
    group = awscli.stack_resource(stack, WORKER_GROUP, region, where)
    groups = awscli.run(["autoscaling", "describe-auto-scaling-groups", "--auto-scaling-group-names", group],
                        region)["AutoScalingGroups"]
    serving = [i["InstanceId"] for g in groups for i in g["Instances"] if i["LifecycleState"] == "InService"]
    if not serving:
        raise awscli.AwsError(f"the worker group {group} has no instance in service")
    return str(serving[0])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        args.region, where = awscli.region_in_use(args.region)
        instance = worker_instance(args.stack, args.region, where)
        if args.owner:
            lines = owner_commands(args.owner.username, args.owner.email)
            comment = f"tootctl owner {args.owner.username}"
        else:
            lines = [shlex.join([TOOTCTL, *args.arguments])]
            comment = f"tootctl {' '.join(args.arguments)}"
        parameters = {"commands": lines, "executionTimeout": [str(args.timeout)]}
        command_id = awscli.run([
            "ssm", "send-command", "--instance-ids", instance, "--document-name", RUN_SHELL_SCRIPT,
            "--comment", comment[:100],
            "--parameters", json.dumps(parameters)], args.region)["Command"]["CommandId"]
        print(f"tootctl on {instance} (command {command_id}), waiting for it to end", file=sys.stderr,
              flush=True)
        started, noted, status = time.monotonic(), 0.0, "Pending"
        while True:
            time.sleep(args.poll)
            note = waiting_note(status, time.monotonic() - started, noted)
            if note:
                print(note, file=sys.stderr, flush=True)
                noted = time.monotonic() - started
            try:
                invocation = awscli.run(["ssm", "get-command-invocation", "--command-id", command_id,
                                         "--instance-id", instance], args.region)
            except awscli.AwsError as error:
                if "InvocationDoesNotExist" in str(error):
                    continue  # not registered yet
                raise
            status = invocation["Status"]
            if status not in RUNNING:
                break
    except awscli.AwsError as error:
        print(f"tootctl.py: error: {error}", file=sys.stderr)
        return 1
    code = int(invocation.get("ResponseCode", -1))
    if args.owner:
        code, out, err = owner_outcome(args.owner.username, invocation.get("StandardOutputContent", ""),
                                       invocation.get("StandardErrorContent", ""), code)
        sys.stdout.write(out)
        sys.stderr.write(err)
        return code
    sys.stdout.write(invocation.get("StandardOutputContent", ""))
    sys.stderr.write(invocation.get("StandardErrorContent", ""))
    if invocation["Status"] != "Success":
        print(f"tootctl.py: {invocation['Status']} ({invocation.get('StatusDetails', '')})", file=sys.stderr)
    return code if code >= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
