"""Rolling upgrade of the Mastodon servers: one short step per invocation.

The rollout state machine (templates/pipeline.py) calls this function with
{"action": ..., "state": {...}} and waits, between calls, for as long as the
returned state's "wait" says; so a rollout may last hours while no invocation
lasts more than a few seconds. Every action returns the whole state, with "next"
telling the state machine where to go. Each action is safe to repeat: it observes
AWS first and acts only on what is not done yet.

Actions, in the order of a rollout:
  begin     one rollout at a time (older running executions go first); read the
            desired and deployed versions; nothing to do if the change was handled
  validate  a well-formed release tag, and both images in the registry
  migrate   a one-off `deploy.sh migrate pre|post` on the worker, then its outcome
  web       one tick of the rolling planner over the web group (drain, deploy,
            rejoin; surge when one instance serves alone)
  worker    the Sidekiq instance, by the same deploy script
  record    the deployed version (new servers boot it), then a last sweep for any
            server launched at the old version meanwhile
  rollback  the web and worker ticks again, towards the previous version, over
            the instances this rollout changed
  finish    Auto Scaling resumed, the notification, the handled mark, and whether
            a newer version waits

While the web group is being rolled, its scaling processes that could terminate or
replace a server on their own (SCALING_PROCESSES) are suspended: a scale-in might
otherwise pick the only serving server while its replacement is not yet serving.
Finish resumes those this rollout suspended, whatever the outcome.

Which version an instance runs is its `mastodon:version` tag, set once the deploy
script succeeded and the instance is healthy again; an untagged instance (a new
boot) is deployed to as well (the script does nothing when it is current).
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

logger = Logger()

RELEASE_TAG = re.compile(r"^v4\.(?:[3-9]|\d{2,})\.\d+(?:-(?:alpha|beta|rc)\.\d+)?$")
VERSION_TAG = "mastodon:version"
DEPLOY_SCRIPT = "/opt/mastodon-aws/deploy.sh"
HEALTHY, DRAINING, UNUSED = "healthy", "draining", "unused"
COMMAND_DONE = {"Success"}
COMMAND_RUNNING = {"Pending", "InProgress", "Delayed"}

POLL = 5  # seconds between checks of a step whose end cannot be predicted
BOOT_POLL = 15  # while a new server boots
QUEUE_POLL = 60  # while an older rollout runs
DRAIN_MARGIN = 120  # beyond the deregistration delay, before draining counts as stuck
DEPLOY_TIMEOUT = 1800  # pulls of two images and a restart
HEALTH_TIMEOUT = 600  # the load balancer's checks after rejoining
MIGRATION_TIMEOUT = 6 * 3600  # long migrations on large databases
BOOT_GRACE = 900  # the groups' health check grace period: a server still booting
SURGE_TIMEOUT = 1800  # for the surge server to boot and serve
INVALID = "invalid"
# Suspended on the web group while a rollout runs (see web() and finish()).
SCALING_PROCESSES = ["AlarmNotification", "ScheduledActions", "AZRebalance"]


def now() -> float:
    """The clock; tests replace it with a simulated one."""
    return time.time()


# ---------------------------------------------------------------- pure decisions
def check_tag(tag: str) -> str | None:
    """Why `tag` is not a Mastodon release tag this stack can run, or None."""
    if not isinstance(tag, str) or not RELEASE_TAG.match(tag):
        return f"{tag!r} is not a Mastodon release tag of 4.3 or later (e.g. v4.7.6); nothing was changed"
    return None


@dataclass(frozen=True)
class Server:
    """What the planner knows of one instance of a group."""

    id: str
    in_service: bool  # Auto Scaling lifecycle InService (not Pending, not Terminating)
    launched: float
    version: str | None  # the mastodon:version tag
    health: tuple[str, ...] = ()  # its state in each target group (web only)

    @property
    def healthy(self) -> bool:
        return bool(self.health) and all(h == HEALTHY for h in self.health)

    @property
    def drained(self) -> bool:
        return all(h not in (HEALTHY, DRAINING, "initial", "unhealthy") for h in self.health)


@dataclass
class Plan:
    """What one tick does: the actions, then how long to wait before the next tick."""

    drain: list[str] = field(default_factory=list)  # deregister, protect from scale-in
    deploy: list[str] = field(default_factory=list)  # run deploy.sh
    join: list[str] = field(default_factory=list)  # register again
    finish: list[str] = field(default_factory=list)  # tag the version, unprotect
    retire: list[str] = field(default_factory=list)  # deregister, to terminate once drained
    terminate: list[str] = field(default_factory=list)  # terminate, decrementing the group
    surge: bool = False
    end_surge: bool = False
    failure: str | None = None
    done: bool = False
    wait: int = POLL


def plan_group(
    servers: list[Server],
    flight: dict[str, dict[str, Any]],
    commands: dict[str, dict[str, str]],
    target: str,
    batch: int,
    desired: int,
    surge: dict[str, Any] | None,
    moment: float,
    drain_seconds: int,
    scope: set[str] | None = None,
    balanced: bool = True,
) -> Plan:
    """The next actions for one group, from plain data.

    servers: the group's instances; flight: instances this rollout is working on,
    {id: {"step": draining|deploying|joining|retiring, "since": t}}; commands: the
    observed Run Command status of deploying instances, {id: {"status", "reason"}};
    desired: the group's desired capacity (a surge included); scope: the only
    instances to touch (a rollback), or None for all. `balanced` groups are behind
    the load balancer: healthy serving capacity never drops below
    max(1, size - batch), and a lone server is surged first.
    """
    plan = Plan()
    by_id = {s.id: s for s in servers}
    in_flight = {i: f for i, f in flight.items() if i in by_id}
    waits: list[float] = []
    for iid, step in in_flight.items():
        server, since = by_id[iid], float(step["since"])
        if step["step"] in ("draining", "retiring"):
            if server.drained:
                (plan.deploy if step["step"] == "draining" else plan.terminate).append(iid)
            elif moment > since + drain_seconds + DRAIN_MARGIN:
                plan.failure = (
                    f"{iid} did not drain from the load balancer within {drain_seconds + DRAIN_MARGIN}s"
                )
            else:
                waits.append(max(since + drain_seconds - moment, POLL))
        elif step["step"] == "deploying":
            command = commands.get(iid, {"status": "Pending", "reason": ""})
            if command["status"] in COMMAND_DONE:
                (plan.join if balanced else plan.finish).append(iid)
            elif command["status"] not in COMMAND_RUNNING:
                plan.failure = (
                    f"deploy.sh {target} failed on {iid} ({command['status']}): {command['reason']}"
                )
            elif moment > since + DEPLOY_TIMEOUT:
                plan.failure = f"deploy.sh {target} on {iid} did not finish within {DEPLOY_TIMEOUT}s"
        elif step["step"] == "joining":
            if server.healthy:
                plan.finish.append(iid)
            elif moment > since + HEALTH_TIMEOUT:
                plan.failure = (
                    f"{iid} runs {target} but did not turn healthy in both target groups "
                    f"within {HEALTH_TIMEOUT}s ({', '.join(server.health)})"
                )
    if plan.failure:
        return plan

    # What serves now and after this tick's moves; what still runs another version.
    moving = set(in_flight) - set(plan.finish) - set(plan.terminate)
    serving = [s for s in servers if s.in_service and s.id not in moving and (s.healthy or not balanced)]
    done_ids = set(plan.finish)
    pending = [
        s
        for s in servers
        if s.id not in in_flight
        and s.id not in done_ids
        and (s.version != target if scope is None else s.id in scope)
    ]
    on_target = [s for s in serving if s.version == target or s.id in done_ids]
    base = desired - (1 if surge else 0)
    floor = max(1, base - batch) if balanced else 0
    room = max(batch - len(moving), 0)

    if surge and not moving:
        # The lone server's replacement serves: retire the surplus one, other versions first.
        if len(on_target) >= max(base, 1) and len(serving) - 1 >= floor:
            extra = [s for s in serving if s.version != target and s.id not in done_ids] or sorted(
                on_target, key=lambda s: s.launched
            )[:1]
            plan.retire.append(extra[0].id)
            plan.wait = max(drain_seconds, POLL)
            return plan
        if not on_target and moment > float(surge["at"]) + SURGE_TIMEOUT:
            plan.failure = f"the surge server did not serve within {SURGE_TIMEOUT}s"
            return plan

    def ready(s: Server) -> bool:
        # A server still booting is left alone: the load balancer's health (web) or its
        # tag (worker) says the bootstrap is over; past the grace period it is fair game.
        settled = s.healthy if balanced else s.version is not None
        return s.in_service and (settled or moment > s.launched + BOOT_GRACE)

    candidates = [s for s in pending if ready(s)]
    booting = [s for s in pending if not ready(s)]
    # Servers that do not serve may go at once; serving ones within the capacity budget.
    idle = [s for s in candidates if balanced and not s.healthy]
    budget = len(serving) - floor
    newest_first = sorted((s for s in candidates if s not in idle), key=lambda s: -s.launched)
    chosen = idle[:room]
    chosen += newest_first[: max(min(room - len(chosen), budget), 0)]
    (plan.drain if balanced else plan.deploy).extend(s.id for s in chosen)

    if balanced and pending and not chosen and not moving and not surge and not booting and budget <= 0:
        plan.surge = True
        plan.wait = BOOT_POLL
        return plan
    if not pending and not moving:
        if surge:
            plan.end_surge = all(s.in_service for s in servers)
        plan.done = not surge and not plan.finish and not plan.terminate
        plan.wait = POLL
        return plan
    steps = {in_flight[i]["step"] for i in moving if i in in_flight}
    if plan.deploy or plan.join or plan.finish or plan.terminate or steps & {"deploying", "joining"}:
        plan.wait = POLL
    elif plan.drain or waits:
        plan.wait = int(min(waits + ([drain_seconds] if plan.drain else [])))
    elif booting:
        plan.wait = BOOT_POLL
    return plan


def failure_reason(error: Any) -> str:
    """A short reason from a Step Functions Catch output ({"Error", "Cause"})."""
    if not isinstance(error, dict):
        return str(error)[:500]
    cause = error.get("Cause", "")
    try:
        cause = json.loads(cause).get("errorMessage", cause)
    except (TypeError, ValueError, AttributeError):
        pass
    return f"{error.get('Error', 'Error')}: {cause}"[:500]


def queue_position(executions: Iterable[dict[str, Any]], mine: str) -> list[str]:
    """Running executions that started before `mine` (they go first)."""
    running = sorted(executions, key=lambda e: (e["startDate"], e["executionArn"]))
    ahead: list[str] = []
    for execution in running:
        if execution["executionArn"] == mine:
            return ahead
        ahead.append(execution["executionArn"])
    return ahead


# ---------------------------------------------------------------- AWS calls (thin)
_clients: dict[str, Any] = {}


def client(name: str) -> Any:
    if name not in _clients:
        _clients[name] = boto3.client(name)
    return _clients[name]


def read_parameter(name: str) -> tuple[str, int]:
    parameter = client("ssm").get_parameter(Name=name)["Parameter"]
    return parameter["Value"], int(parameter["Version"])


def group_servers(group: str, target_groups: list[str]) -> tuple[list[Server], int, int]:
    """(servers, desired capacity, max size) of an Auto Scaling group."""
    (asg,) = client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[group])[
        "AutoScalingGroups"
    ]
    lifecycle = {i["InstanceId"]: i["LifecycleState"] for i in asg["Instances"]}
    servers: list[Server] = []
    if not lifecycle:
        return servers, asg["DesiredCapacity"], asg["MaxSize"]
    health: dict[str, list[str]] = {i: [] for i in lifecycle}
    for arn in target_groups:
        described = client("elbv2").describe_target_health(
            TargetGroupArn=arn, Targets=[{"Id": i} for i in lifecycle]
        )["TargetHealthDescriptions"]
        for d in described:
            if d["Target"]["Id"] in health:
                health[d["Target"]["Id"]].append(d["TargetHealth"]["State"])
    pages = client("ec2").get_paginator("describe_instances").paginate(InstanceIds=list(lifecycle))
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                iid = instance["InstanceId"]
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                servers.append(
                    Server(
                        id=iid,
                        in_service=lifecycle[iid] == "InService" and instance["State"]["Name"] == "running",
                        launched=instance["LaunchTime"].timestamp(),
                        version=tags.get(VERSION_TAG),
                        health=tuple(health[iid]),
                    )
                )
    return servers, asg["DesiredCapacity"], asg["MaxSize"]


def command_status(command_id: str, instance: str) -> dict[str, str]:
    try:
        invocation = client("ssm").get_command_invocation(CommandId=command_id, InstanceId=instance)
    except ClientError as error:
        if error.response["Error"]["Code"] == "InvocationDoesNotExist":
            return {"status": "Pending", "reason": ""}  # not registered yet, just after SendCommand
        raise
    reason = (invocation.get("StandardErrorContent") or invocation.get("StandardOutputContent") or "").strip()
    return {"status": invocation["Status"], "reason": reason[-400:]}


def send(instances: list[str], arguments: str, timeout: int) -> str:
    response = client("ssm").send_command(
        InstanceIds=instances,
        DocumentName="AWS-RunShellScript",
        TimeoutSeconds=600,
        Comment=f"mastodon rollout: {arguments}"[:100],
        Parameters={"commands": [f"{DEPLOY_SCRIPT} {arguments}"], "executionTimeout": [str(timeout)]},
    )
    return str(response["Command"]["CommandId"])


def set_targets(target_groups: list[str], instances: list[str], register: bool) -> None:
    for arn in target_groups:
        targets = [{"Id": i} for i in instances]
        if register:
            client("elbv2").register_targets(TargetGroupArn=arn, Targets=targets)
        else:
            try:
                client("elbv2").deregister_targets(TargetGroupArn=arn, Targets=targets)
            except ClientError as error:  # already out: nothing to drain
                if error.response["Error"]["Code"] != "InvalidTarget":
                    raise


def protect(group: str, instances: list[str], protected: bool) -> None:
    client("autoscaling").set_instance_protection(
        AutoScalingGroupName=group, InstanceIds=instances, ProtectedFromScaleIn=protected
    )


# ---------------------------------------------------------------- actions
def fresh_state(state: dict[str, Any]) -> dict[str, Any]:
    """What a rollout starts from: the execution's configuration, nothing of an earlier rollout."""
    return {k: v for k, v in state.items() if k in ("config", "execution", "state_machine")}


def begin(state: dict[str, Any]) -> dict[str, Any]:
    config = state["config"]
    ahead = queue_position(
        (
            e
            for page in client("stepfunctions")
            .get_paginator("list_executions")
            .paginate(stateMachineArn=state["state_machine"], statusFilter="RUNNING")
            for e in page["executions"]
        ),
        state["execution"],
    )
    if ahead:
        logger.info("Another rollout runs; waiting for it", extra={"ahead": ahead})
        return {**state, "next": "queued", "wait": QUEUE_POLL}
    desired, desired_version = read_parameter(config["desired_parameter"])
    deployed, _ = read_parameter(config["deployed_parameter"])
    handled = json.loads(read_parameter(config["handled_parameter"])[0] or "{}")
    fresh = fresh_state(state)
    if desired == deployed or int(handled.get("desired_version", 0)) >= desired_version:
        logger.info("Nothing to roll out", extra={"desired": desired, "deployed": deployed})
        return {**fresh, "next": "noop"}
    return {
        **fresh,
        "next": "go",
        "target": desired,
        "previous": deployed,
        "desired_version": desired_version,
        "changed": [],
        "web": {},
        "worker": {},
        "started": now(),
    }


OPENER = urllib.request.build_opener()


def image_missing(image: str, tag: str) -> str | None:
    """Why ghcr.io has no `image:tag`, or None; only registry answers, never guesses."""
    host, repository = image.split("/", 1)
    token_url = f"https://{host}/token?scope=repository:{repository}:pull"
    try:
        with OPENER.open(token_url, timeout=10) as response:
            token = json.load(response)["token"]
        request = urllib.request.Request(
            f"https://{host}/v2/{repository}/manifests/{tag}",
            method="HEAD",
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.oci.image.index.v1+json, "
                "application/vnd.docker.distribution.manifest.list.v2+json",
            },
        )
        with OPENER.open(request, timeout=10):
            return None
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return f"{image}:{tag} does not exist in the registry"
        raise RuntimeError(f"the registry answered {error.code} for {image}:{tag}") from error


def validate(state: dict[str, Any]) -> dict[str, Any]:
    reason = check_tag(state["target"])
    for image in state["config"]["images"] if reason is None else []:
        reason = reason or image_missing(image, state["target"])
    if reason:
        return {**state, "next": INVALID, "failure": reason}
    return {**state, "next": "go"}


def worker_instance(state: dict[str, Any]) -> str:
    servers, _, _ = group_servers(state["config"]["worker_group"], [])
    ready = [s for s in servers if s.in_service]
    if not ready:
        raise RuntimeError("no worker instance is in service")
    return max(ready, key=lambda s: s.launched).id


def migrate(state: dict[str, Any]) -> dict[str, Any]:
    phase = state["phase"]
    command = state.get("migration")
    if not command or command.get("phase") != phase:
        instance = worker_instance(state)
        command_id = send([instance], f"migrate {phase} {state['target']}", MIGRATION_TIMEOUT)
        migration = {"phase": phase, "id": command_id, "instance": instance, "since": now()}
        return {**state, "migration": migration, "next": "wait", "wait": POLL}
    status = command_status(command["id"], command["instance"])
    if status["status"] in COMMAND_DONE:
        return {**state, "migration": {**command, "done": True}, "next": "done"}
    if status["status"] in COMMAND_RUNNING and now() < command["since"] + MIGRATION_TIMEOUT:
        return {
            **state,
            "next": "wait",
            "wait": min(POLL * 6, max(POLL, int((now() - command["since"]) / 10))),
        }
    label = "pre-deployment" if phase == "pre" else "post-deployment"
    return {
        **state,
        "next": "failed",
        "failure": f"{label} migrations of {state['target']} failed ({status['status']}): {status['reason']}",
    }


def tick(state: dict[str, Any], role: str, target: str, scope: set[str] | None) -> dict[str, Any]:
    """One step of the rolling planner for `role` (web or worker) towards `target`."""
    config = state["config"]
    balanced = role == "web"
    group = config[f"{role}_group"]
    target_groups = config["target_groups"] if balanced else []
    memory = dict(state.get(role) or {})
    flight: dict[str, dict[str, Any]] = dict(memory.get("flight", {}))
    servers, desired, max_size = group_servers(group, target_groups)
    commands = {i: command_status(f["command"], i) for i, f in flight.items() if f["step"] == "deploying"}
    moment = now()
    plan = plan_group(
        servers,
        flight,
        commands,
        target,
        int(config["batch_size"]) if balanced else 1,
        desired,
        memory.get("surge"),
        moment,
        int(config["drain_seconds"]),
        scope,
        balanced,
    )
    alive = {s.id for s in servers}
    flight = {i: f for i, f in flight.items() if i in alive}
    changed = list(state.get("changed", []))
    if plan.failure:
        logger.warning("Rollout step failed", extra={"reason": plan.failure})
        return {**state, role: {**memory, "flight": flight}, "next": "failed", "failure": plan.failure}
    if plan.finish:
        if scope is not None:
            state = {**state, "restored": [*state.get("restored", []), *plan.finish]}
        client("ec2").create_tags(Resources=plan.finish, Tags=[{"Key": VERSION_TAG, "Value": target}])
        if balanced:
            protect(group, plan.finish, False)
        for iid in plan.finish:
            flight.pop(iid, None)
    if plan.join:
        set_targets(target_groups, plan.join, register=True)
        flight.update({i: {"step": "joining", "since": moment} for i in plan.join})
    if plan.drain or plan.retire:
        protect(group, plan.drain + plan.retire, True)
        set_targets(target_groups, plan.drain + plan.retire, register=False)
        flight.update({i: {"step": "draining", "since": moment} for i in plan.drain})
        flight.update({i: {"step": "retiring", "since": moment} for i in plan.retire})
        changed += [i for i in plan.drain if i not in changed]
    if plan.deploy:
        command_id = send(plan.deploy, f"deploy {target}", DEPLOY_TIMEOUT)
        flight.update({i: {"step": "deploying", "since": moment, "command": command_id} for i in plan.deploy})
        changed += [i for i in plan.deploy if i not in changed]
    for iid in plan.terminate:
        client("autoscaling").terminate_instance_in_auto_scaling_group(
            InstanceId=iid, ShouldDecrementDesiredCapacity=True
        )
        flight.pop(iid, None)
    if plan.surge:
        surge = {"at": moment, "max": max_size}
        if desired + 1 > max_size:
            client("autoscaling").update_auto_scaling_group(AutoScalingGroupName=group, MaxSize=desired + 1)
        client("autoscaling").set_desired_capacity(AutoScalingGroupName=group, DesiredCapacity=desired + 1)
        memory["surge"] = surge
    if plan.end_surge and memory.get("surge"):
        if max_size != memory["surge"]["max"]:
            client("autoscaling").update_auto_scaling_group(
                AutoScalingGroupName=group, MaxSize=max(memory["surge"]["max"], desired)
            )
        memory["surge"] = None
    memory["flight"] = flight
    logger.info("Rollout tick", extra={"role": role, "target": target, "plan": plan.__dict__})
    return {
        **state,
        role: memory,
        "changed": changed,
        "next": "done" if plan.done else "wait",
        "wait": plan.wait,
    }


def hold_scaling(group: str) -> list[str]:
    """Suspends SCALING_PROCESSES on `group`; returns those this call suspended.

    Processes an operator had already suspended are left out, so that finish()
    resumes only what the rollout suspended.
    """
    (asg,) = client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[group])[
        "AutoScalingGroups"
    ]
    already = {p["ProcessName"] for p in asg.get("SuspendedProcesses", [])}
    suspend = [p for p in SCALING_PROCESSES if p not in already]
    if suspend:
        client("autoscaling").suspend_processes(AutoScalingGroupName=group, ScalingProcesses=suspend)
    return suspend


def web(state: dict[str, Any]) -> dict[str, Any]:
    if "suspended" not in state:
        # A step of its own, so that the state records what to resume before any server moves.
        suspended = hold_scaling(state["config"]["web_group"])
        logger.info("Web group scaling suspended", extra={"processes": suspended})
        return {**state, "suspended": suspended, "next": "wait", "wait": 1}
    return tick(state, "web", state["target"], None)


def worker(state: dict[str, Any]) -> dict[str, Any]:
    result = tick(state, "worker", state["target"], None)
    if result["next"] == "done":  # from here on every server runs the target
        result["switched"] = True
    return result


def record(state: dict[str, Any]) -> dict[str, Any]:
    """The deployed version, then a sweep: a server launched meanwhile booted the old one."""
    config = state["config"]
    client("ssm").put_parameter(Name=config["deployed_parameter"], Value=state["target"], Overwrite=True)
    for role, target_groups in (("web", config["target_groups"]), ("worker", [])):
        servers, _, _ = group_servers(config[f"{role}_group"], target_groups)
        if any(s.version != state["target"] for s in servers):
            logger.info("A server runs another version; converging", extra={"role": role})
            return {**state, "next": "converge"}
    return {**state, "next": "done"}


def rollback(state: dict[str, Any]) -> dict[str, Any]:
    """Ticks towards the previous version over the instances this rollout changed."""
    if state.get("switched"):
        # Past the worker step (e.g. a straggler failing in Record's converge pass) the
        # post-deployment migrations may have run: old code may not fit the schema any
        # more, so nothing is rolled back; the notice says what changed and what to do.
        return {**state, "failure": state.get("failure") or failure_reason(state.get("error")),
                "next": "done"}
    if not state.get("rolling_back"):
        reason = state.get("failure") or failure_reason(state.get("error"))
        state = {**state, "failure": reason, "rolling_back": True, "restored": []}
        for role in ("web", "worker"):  # in-flight work is redone, towards the old version
            memory = dict(state.get(role) or {})
            memory["flight"] = {i: f for i, f in memory.get("flight", {}).items() if f["step"] == "retiring"}
            state[role] = memory
    reason = state["failure"]
    for role in ("web", "worker"):
        if role in state.get("rolled_back", []):
            continue
        scope = set(state.get("changed", [])) - set(state.get("restored", []))
        result = tick(state, role, state["previous"], scope)
        if result["next"] == "failed":
            return {
                **state,
                "next": "failed",
                "failure": f"{reason}; the rollback to {state['previous']} "
                f"failed too ({result['failure']}): repair by hand",
            }
        result["failure"] = reason
        if result["next"] != "done":
            return result
        state = {**result, "rolled_back": [*state.get("rolled_back", []), role]}
    return {**state, "next": "done"}


def resume_scaling(state: dict[str, Any]) -> str | None:
    """Resumes the processes web() suspended; why it could not, or None."""
    suspended = state.get("suspended") or []
    if not suspended:
        return None
    group = state["config"]["web_group"]
    try:
        client("autoscaling").resume_processes(AutoScalingGroupName=group, ScalingProcesses=suspended)
    except Exception as error:  # the notice must still go out
        logger.exception("Could not resume the web group's scaling processes")
        return (
            f"the web group's scaling processes {', '.join(suspended)} are still suspended ({error}); "
            f"resume them: aws autoscaling resume-processes --auto-scaling-group-name {group}"
        )
    return None


def failure_notice(state: dict[str, Any], failure: str) -> tuple[str, str]:
    """(subject, message) of a failed rollout: what failed, what changed, what to do."""
    config = state["config"]
    target = state.get("target")
    if not target:  # begin never completed
        return (
            "Mastodon upgrade could not start",
            f"The upgrade rollout could not start: {failure}. Nothing was changed. "
            "Put the desired version again to retry.",
        )
    subject = f"Mastodon upgrade to {target} failed"
    if state.get("rollback_error"):
        return subject, (
            f"The upgrade to {target} failed: {failure}; the rollback to {state.get('previous')} "
            f"failed too ({failure_reason(state['rollback_error'])}): servers may run either "
            "version; repair by hand."
        )
    if state.get("rolling_back"):
        return subject, (
            f"The upgrade to {target} failed: {failure}. The servers run the previous version "
            "again; it stays the boot version."
        )
    if state.get("switched"):
        # After the worker step: every server runs the target; no rollback (the schema).
        deployed, _ = read_parameter(config["deployed_parameter"])
        boot = (
            f"new servers boot it too (deployed-version is {target})."
            if deployed == target
            else f"but new servers still boot {deployed} (deployed-version was not updated): "
            f"put {target} into the deployed-version parameter by hand."
        )
        migration = state.get("migration") or {}
        todo = (
            " The post-deployment migrations ran."
            if migration.get("phase") == "post" and migration.get("done")
            else " Fix the cause, then run them on the worker: "
            f"{DEPLOY_SCRIPT} migrate post {target} (Session Manager or Run Command); putting the "
            "desired version again does not re-run them."
        )
        return f"Mastodon upgrade to {target}: post-deployment step failed", (
            f"Every server was upgraded to {target}, then a later step failed: {failure}. "
            f"Every server runs {target}; {boot} Nothing was rolled back, since the database "
            f"may already carry part of the post-deployment migrations.{todo}"
        )
    return subject, f"The upgrade to {target} failed: {failure}. Nothing was changed."


def finish(state: dict[str, Any]) -> dict[str, Any]:
    """Resume scaling, notify, mark the desired parameter's version handled, look for a newer one.

    A failure is a step's own ("failure") or an error the state machine caught ("error").
    """
    config = state["config"]
    target = state.get("target", "?")
    scaling = resume_scaling(state)
    failure = state.get("failure") or (failure_reason(state["error"]) if state.get("error") else None)
    if failure:
        subject, message = failure_notice(state, failure)
        result = "failed"
    else:
        subject = f"Mastodon upgraded to {target}"
        message = f"Every server runs {target}; new servers boot it. CloudFront was invalidated."
        if state.get("warning"):
            message += f" Warning: {state['warning']}"
        result = "succeeded"
    if scaling:
        message += f" Warning: {scaling}"
    client("sns").publish(TopicArn=config["topic_arn"], Subject=subject[:100], Message=message)
    if "desired_version" not in state:
        # begin never completed: no version was handled, the last record stands.
        return {**state, "next": "failed"}
    client("ssm").put_parameter(
        Name=config["handled_parameter"],
        Overwrite=True,
        Value=json.dumps(
            {
                "desired_version": state["desired_version"],
                "version": target,
                "result": result,
                "execution": state["execution"],
                "reason": failure or "",
            }
        )[:4000],
    )
    if result == "failed":
        return {**state, "next": "failed"}
    _, desired_version = read_parameter(config["desired_parameter"])
    if desired_version > int(state["desired_version"]):
        # Begin starts afresh: nothing of this rollout may be taken for the next one's.
        return {**fresh_state(state), "next": "again"}
    return {**state, "next": "done"}


ACTIONS = {
    "begin": begin,
    "validate": validate,
    "migrate": migrate,
    "web": web,
    "worker": worker,
    "record": record,
    "rollback": rollback,
    "finish": finish,
}


def parse_event(event: Any) -> tuple[str, dict[str, Any]]:
    """(action, state) of a task input; ValueError, before any AWS call, when malformed."""
    if not isinstance(event, dict):
        raise ValueError(f"the task input must be an object, not {type(event).__name__}")
    action, state = event.get("action"), event.get("state")
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {sorted(ACTIONS)}")
    if not isinstance(state, dict):
        raise ValueError("the task input has no 'state' object")
    state = dict(state)
    if action == "migrate":
        if event.get("phase") not in ("pre", "post"):
            raise ValueError(f"migrate needs phase 'pre' or 'post', not {event.get('phase')!r}")
        state["phase"] = event["phase"]
    return action, state


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    action, state = parse_event(event)
    logger.append_keys(action=action, target=state.get("target"))
    return ACTIONS[action](state)
