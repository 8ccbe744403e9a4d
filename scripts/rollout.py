#!/usr/bin/env python3
"""Show a stack's current or last rollout (Mastodon upgrade), or watch it until it ends.

    python scripts/rollout.py --region eu-central-1 mastodon status
    python scripts/rollout.py --region eu-central-1 mastodon watch

Reads the rollout's state machine (the stack's RolloutStateMachine): the running
execution, else the newest one. From the execution's history it takes the step it is
at and the rollout's state (lambdas/rollout/state.py: the version rolled out, the one
it replaces, the failure); from EC2 the servers of every group and the version each
runs (its version tag), the queue workers' also counted apart; from the rollout-last parameter the result of a
finished one. `status` prints one summary; `watch` prints a line whenever something
changes until the execution ends. Exit status: 0 the rollout succeeded, is running
(status) or none ran yet; 1 it failed, or the stack or its state machine was not found.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lambdas.rollout.names import VERSION_TAG
from scripts import awscli
from scripts.version import version_action
from templates.pipeline import STATE_MACHINE
from templates.versions import DESIRED_VERSION

# After a put-parameter, EventBridge starts the execution within seconds: watch waits this
# long for it before it says that none started.
START_WAIT_SECONDS = 120

# What each state of templates/pipeline.py's definition is doing, for people.
STEPS = {
    "Configure": "starting",
    "Begin": "checking the desired version",
    "Queued": "waiting for an earlier rollout to end",
    "Validate": "checking the tag (the stack's rule, no unconfirmed downgrade) and its images",
    "PreMigrate": "pre-deployment migrations",
    "Web": "upgrading the web servers",
    "Worker": "upgrading the worker",
    "Record": "recording the deployed version",
    "Verify": "checking the fleet",
    "PostMigrate": "post-deployment migrations",
    "FinalCheck": "checking the fleet again",
    "Invalidate": "invalidating CloudFront",
    "InvalidateCheck": "invalidating CloudFront",
    "InvalidateRetry": "invalidating CloudFront",
    "Rollback": "ROLLING BACK",
    "Finish": "finishing (scaling resumed, notification)",
    "Done": "done",
    "Failed": "failed",
}
HISTORY_EVENTS = 100


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=version_action(), help="print the project's version and exit")
    parser.add_argument("--region", help="the stack's region; default: the aws CLI's (AWS_DEFAULT_REGION, "
                        "then the profile's configuration)")
    parser.add_argument("--poll", type=float, default=15.0, help="seconds between looks (watch)")
    parser.add_argument("--start-wait", type=float, default=START_WAIT_SECONDS,
                        help="seconds watch waits for the rollout of desired-version to start")
    parser.add_argument("stack", help="the stack's name")
    parser.add_argument("command", choices=("status", "watch"),
                        help="status: one summary; watch: follow until the rollout ends")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Rollout:
    """What one look at the rollout found."""

    execution: str
    status: str  # the execution's: RUNNING, SUCCEEDED, FAILED, TIMED_OUT, ABORTED
    step: str  # the state machine's state it is at (or ended in)
    started: datetime | None
    stopped: datetime | None
    target: str | None
    previous: str | None
    failure: str | None
    rolling_back: bool
    done: int  # servers on the target version
    total: int  # servers in every group
    queue: tuple[int, int] | None = None  # the queue workers' (on the target, servers); None: no group

    def line(self, now: datetime) -> str:
        end = self.stopped or now
        elapsed = _duration((end - self.started).total_seconds()) if self.started else "?"
        what = f"rollout of {self.target}" if self.target else "rollout"
        if self.previous and self.target and self.previous != self.target:
            what += f" (from {self.previous})"
        base = self.step.removesuffix("Wait").removesuffix("Next")
        doing = STEPS.get(base, base)
        servers = f"{self.done} of {self.total} servers on {self.target}" if self.target else \
            f"{self.total} servers"
        if self.queue is not None:
            servers += f" (queue workers: {self.queue[0]} of {self.queue[1]})" if self.target else \
                f" ({self.queue[1]} queue workers)"
            doing += " and the queue workers" if base == "Worker" else ""
        if self.status == "RUNNING":
            text = f"{what}: {doing}, {servers}, {elapsed} elapsed"
        else:
            result = "FAILED" if self.failed else "succeeded"
            if self.status not in ("SUCCEEDED", "FAILED"):
                result += f" ({self.status.lower().replace('_', ' ')})"
            text = f"{what}: {result} after {elapsed}, {servers}"
        if self.failure:
            text += f"\n  reason: {self.failure}"
        return text

    @property
    def failed(self) -> bool:
        return self.status != "RUNNING" and (self.status != "SUCCEEDED" or bool(self.failure))


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}h" if hours else "") + f"{rest // 60}m{rest % 60:02d}s"


def _time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _details(event: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next((v for k, v in event.items() if k.endswith("EventDetails")), {})
    return found


def read_history(events: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """(the state it is at, the rollout's latest state) from history events, newest first."""
    step: str = ""
    state: dict[str, Any] = {}
    for event in events:
        details = _details(event)
        if not step and event.get("type", "").endswith("StateEntered"):
            step = str(details.get("name", ""))
        if not state:
            for key in ("output", "input"):
                try:
                    candidate = json.loads(details.get(key) or "null")
                except (TypeError, ValueError):
                    continue
                if isinstance(candidate, dict) and "config" in candidate:
                    state = candidate
                    break
        if step and state:
            break
    return step, state


def servers(groups: list[str], target: str | None, region: str | None) -> dict[str, tuple[int, int]]:
    """{group: (servers on the target version, servers)} of the groups: what Auto Scaling holds now."""
    groups = [g for g in groups if g]
    if not groups:
        return {}
    described = awscli.run(["autoscaling", "describe-auto-scaling-groups", "--auto-scaling-group-names",
                            *groups], region)["AutoScalingGroups"]
    members = {i["InstanceId"]: g["AutoScalingGroupName"] for g in described for i in g["Instances"]
               if i.get("LifecycleState") not in ("Terminating", "Terminated", "Terminating:Wait",
                                                  "Terminating:Proceed")}
    counts = {g: (0, 0) for g in groups}
    for group in members.values():
        counts[group] = (counts[group][0], counts[group][1] + 1)
    if not members:
        return counts
    reservations = awscli.run(["ec2", "describe-instances", "--instance-ids", *members],
                              region)["Reservations"]
    for instance in (i for r in reservations for i in r["Instances"]):
        version = next((t["Value"] for t in instance.get("Tags", []) if t["Key"] == VERSION_TAG), None)
        group = members.get(instance["InstanceId"])
        if group and target and version == target:
            counts[group] = (counts[group][0] + 1, counts[group][1])
    return counts


def look(machine: str, region: str | None) -> Rollout | None:
    """The state machine's running rollout, else its newest; None when none has run."""
    listed = awscli.run(["stepfunctions", "list-executions", "--state-machine-arn", machine,
                         "--status-filter", "RUNNING"], region)["executions"]
    if not listed:
        listed = awscli.run(["stepfunctions", "list-executions", "--state-machine-arn", machine], region)[
            "executions"]
    if not listed:
        return None
    newest = max(listed, key=lambda e: str(e.get("startDate", "")))
    execution = awscli.run(["stepfunctions", "describe-execution", "--execution-arn",
                            newest["executionArn"]], region)
    events = awscli.run(["stepfunctions", "get-execution-history", "--execution-arn", newest["executionArn"],
                         "--reverse-order", "--max-items", str(HISTORY_EVENTS)], region)["events"]
    step, state = read_history(events)
    config = state.get("config", {}) if isinstance(state.get("config"), dict) else {}
    failure = state.get("failure")
    if execution["status"] != "RUNNING":
        record = _handled(config.get("handled_parameter"), region)
        if record.get("execution") and str(newest["executionArn"]).endswith(str(record["execution"])):
            failure = (record.get("reason") or failure) if record.get("result") == "failed" else failure
        if execution["status"] != "SUCCEEDED" and not failure:
            cause = execution.get("cause", "")
            failure = f"{execution.get('error', execution['status'])}: {cause}".strip(": ")
    queue_group = config.get("queue_group") or ""
    counts = servers([config.get("web_group", ""), config.get("worker_group", ""), queue_group],
                     state.get("target"), region)
    done, total = sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
    return Rollout(
        execution=str(newest["executionArn"]), status=str(execution["status"]), step=step,
        started=_time(execution.get("startDate")), stopped=_time(execution.get("stopDate")),
        target=state.get("target"), previous=state.get("previous"), failure=failure or None,
        rolling_back=bool(state.get("rolling_back")), done=done, total=total,
        queue=counts.get(queue_group, (0, 0)) if queue_group else None)


def _handled(name: str | None, region: str | None) -> dict[str, Any]:
    if not name:
        return {}
    try:
        value = awscli.run(["ssm", "get-parameter", "--name", name], region)["Parameter"]["Value"]
        record = json.loads(value)
    except (awscli.AwsError, ValueError, KeyError, TypeError):
        return {}
    return record if isinstance(record, dict) else {}


def desired_version(stack: str, region: str | None, where: str) -> str | None:
    """The version the operator asked for (without the downgrade flag), or None if unreadable."""
    try:
        name = awscli.stack_resource(stack, DESIRED_VERSION, region, where)
        value = awscli.run(["ssm", "get-parameter", "--name", name], region)["Parameter"]["Value"]
    except (awscli.AwsError, KeyError, TypeError):
        return None
    return str(value).split()[0] if str(value).split() else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        region, where = awscli.region_in_use(args.region)
        machine = awscli.stack_resource(args.stack, STATE_MACHINE, region, where)
        shown = ""
        started_looking = time.monotonic()
        while True:
            rollout = look(machine, region)
            if args.command == "watch" and (rollout is None or rollout.status != "RUNNING"):
                # Right after a put-parameter the newest execution may still be the last one.
                desired = desired_version(args.stack, region, where)
                if desired and (rollout is None or rollout.target != desired):
                    if time.monotonic() - started_looking < args.start_wait:
                        if shown != desired:
                            print(f"waiting for the rollout of {desired} to start", flush=True)
                            shown = desired
                        time.sleep(args.poll)
                        continue
                    print(f"rollout.py: no rollout of {desired} started within {args.start_wait:g} s: "
                          "see the stack's rollout rule in EventBridge and the parameter's history",
                          file=sys.stderr)
                    return 1
            if rollout is None:
                try:
                    parameter = awscli.stack_resource(args.stack, DESIRED_VERSION, region, where)
                except awscli.AwsError:
                    parameter = "the stack's desired-version parameter"
                print(f"{args.stack}: no rollout has run yet in {region} (put a version in "
                      f"{parameter} to start one)")
                return 0
            text = rollout.line(datetime.now(UTC))
            if args.command == "status":
                print(text)
                print(f"  execution: {rollout.execution}")
                return 1 if rollout.failed else 0
            if text.split(", ")[:2] != shown.split(", ")[:2] or rollout.status != "RUNNING":
                print(text, flush=True)  # a new step or server count, not every tick of the clock
                shown = text
            if rollout.status != "RUNNING":
                return 1 if rollout.failed else 0
            time.sleep(args.poll)
    except awscli.AwsError as error:
        print(f"rollout.py: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
