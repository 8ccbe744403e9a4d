"""Applying a plan to a group, each change journalled in AWS before it is made.

One tick: read the group as AWS reports it, plan (plan.py), then act. Every action
writes its intent first (the server's journal tag, the web group's hold or surge
tag) and then makes an idempotent call, so that a tick which fails half-way or is
run twice leaves a state the next tick recognises and completes. What a rollout
suspends or raises is restored from those records, and only where the operator has
not changed it since.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from botocore.exceptions import ClientError

from lambdas.rollout import aws
from lambdas.rollout.aws import Group, logger
from lambdas.rollout.names import (
    DIGEST_TAG,
    HOLD_TAG,
    JOURNAL_TAG,
    QUEUE,
    SURGE_TAG,
    VERSION_TAG,
    WEB,
    WORKER,
)
from lambdas.rollout.plan import (
    DEPLOY_TIMEOUT,
    DEPLOYING,
    DRAINING_STEP,
    JOINING,
    MAX_LOST,
    RETIRING,
    Journal,
    Plan,
    Server,
    Surge,
    agreed_digests,
    plan_group,
    stale_servers,
)
from lambdas.rollout.state import Config, State

# Suspended on the web group while a rollout runs: a scale-in might pick the only
# serving server while its replacement is not yet serving, a rebalance might replace
# one mid-batch. The same on the queue workers' group: a scale-in (its queue latency
# falling) or a rebalance would stop a server mid-deploy. ReplaceUnhealthy is not held:
# old servers that fail during a long rollout must still be replaced; a release whose
# servers Auto Scaling replaces as unhealthy is noticed instead (plan.MAX_LOST) and
# rolled back.
SCALING_PROCESSES = ["AlarmNotification", "ScheduledActions", "AZRebalance"]


def roles(config: Config) -> tuple[str, ...]:
    """The roles whose group the stack has, in the order of a rollout."""
    return (WEB, WORKER, QUEUE) if config.queue_group else (WEB, WORKER)


def group_name(config: Config, role: str) -> str:
    return {WEB: config.web_group, WORKER: config.worker_group, QUEUE: config.queue_group}[role]


def held_groups(config: Config) -> list[str]:
    """The groups whose scaling a rollout holds: those that scale on their own."""
    return [config.web_group] + ([config.queue_group] if config.queue_group else [])


@dataclass
class Tick:
    next: str  # wait, done, failed
    wait: int
    group: Group
    plan: Plan
    failure: str | None = None


def tick(state: State, role: str, target: str, watch_settled: bool = False) -> Tick:
    """One step of the rolling planner for `role` (web, worker or queue) towards `target`.

    The web group is rolled in batches behind the load balancer; the worker (one server,
    the scheduler) in place; the queue workers in place, in batches of the same size as
    the web group's but never all of them at once (batch_of; no load balancer: a server is
    settled once deploy.sh's Sidekiq stability watch passed and it is tagged on the version).
    watch_settled: web servers settled on the target that then fail their health checks are
    timed (state.sick) and fail the release like a flap (the web step and its watch)."""
    config = state.config
    balanced = role == WEB
    name = group_name(config, role)
    target_groups = config.target_groups if balanced else []
    group = aws.describe_group(name, target_groups, missing_ok=role == QUEUE)
    me = state.short_execution
    surge = Surge.decode(group.tags.get(SURGE_TAG))
    surge = surge if surge and surge.execution == me and balanced else None

    def mine(s: Server) -> bool:
        return s.journal is not None and s.journal.execution == me and s.journal.target == target

    commands = {
        s.id: aws.command_status(s.journal.command, s.id)
        for s in group.servers
        if mine(s)
        and s.journal is not None
        and s.journal.step == DEPLOYING
        and s.journal.command
        and not s.gone
    }
    moment = aws.now()
    plan = plan_group(
        group.servers,
        commands,
        execution=me,
        target=target,
        batch=batch_of(role, config.batch_size, group.servers),
        balanced=balanced,
        desired=group.desired,
        surge=surge,
        moment=moment,
        drain_seconds=config.drain_seconds,
        settle_seconds=config.settle_seconds,
        boot_grace=config.boot_grace,
        last_flight=state.flight.get(role, []),
        stale=_stale(state, role, group.servers),
        sick_since=state.sick if watch_settled and balanced else None,
    )
    state.flight[role] = plan.flight
    if watch_settled and balanced:
        state.sick = plan.sick
    state.lost += [i for i in plan.lost if i not in state.lost]
    if len(state.lost) > MAX_LOST and not plan.failure:
        plan.failure = (
            f"{len(state.lost)} servers were terminated while they ran {target} and failed their health "
            f"checks ({', '.join(state.lost)}): Auto Scaling replaces them as unhealthy"
        )
    if plan.failure:
        logger.warning("Rollout step failed", extra={"role": role, "reason": plan.failure})
        return Tick("failed", 0, group, plan, plan.failure)
    if surge and not surge.retiring and not plan.retire and group.desired < surge.desired + 1:
        start_surge(group, me, moment)  # the tick that recorded the surge failed before raising the size
    _apply(state, group, plan, balanced, target, moment)
    logger.info("Rollout tick", extra={"role": role, "target": target, "plan": plan.__dict__})
    return Tick("done" if plan.done else "wait", plan.wait, group, plan)


def images_run(role: str) -> int:
    """How many of config images a server of `role` runs: the web servers both, others Mastodon's."""
    return 2 if role == WEB else 1


def wanted_digests(config: Config, digests: dict[str, str]) -> dict[int, str]:
    """{image index: digest} of the images a tag pushed again names now."""
    return {i: digests[image] for i, image in enumerate(config.images) if image in digests}


def _stale(state: State, role: str, servers: list[Server]) -> set[str]:
    """Servers a rollout of a tag pushed again still has to deploy to (none for any other
    rollout, and none while rolling back: the images a tag named before cannot be pulled
    by it any more)."""
    if not state.digests or state.rolling_back:
        return set()
    since = state.started if state.started is not None else aws.now()
    return stale_servers(
        servers, wanted_digests(state.config, state.digests), images_run(role), since, state.renewed
    )


def stale_anywhere(state: State, digests: dict[str, str]) -> list[str]:
    """Servers of every group that do not run the images `digests` names (begin, for a tag pushed again)."""
    found: list[str] = []
    for role in roles(state.config):
        group = aws.describe_group(group_name(state.config, role), [], missing_ok=role == QUEUE)
        found += sorted(
            stale_servers(
                group.servers, wanted_digests(state.config, digests), images_run(role), aws.now(), []
            )
        )
    return found


def deployed_digests(state: State, version: str) -> dict[str, str]:
    """{image: digest} every server settled on `version` reports running ({} if they disagree)."""
    servers: list[tuple[Server, int]] = []
    for role in roles(state.config):
        group = aws.describe_group(group_name(state.config, role), [], missing_ok=role == QUEUE)
        servers += [(s, images_run(role)) for s in group.servers]
    return agreed_digests(servers, version, state.config.images)


def _record_digests(state: State, ids: list[str], journals: Mapping[str, Journal | None]) -> None:
    """Each finished server's images, as its deploy reported them; an unknown report removes
    the record (the server then counts as running unknown images)."""
    by_value: dict[str, list[str]] = {}
    unknown: list[str] = []
    for iid in ids:
        journal = journals.get(iid)
        digests = aws.command_digests(journal.command, iid) if journal and journal.command else None
        if digests:
            by_value.setdefault(" ".join(digests), []).append(iid)
        else:
            unknown.append(iid)
    def tagger(value: str) -> Callable[[list[str]], None]:
        return lambda batch: aws.tag_servers(batch, {DIGEST_TAG: value})

    for value, servers in by_value.items():
        per_server(tagger(value), servers, GOING)
    if unknown:
        per_server(lambda batch: aws.untag_servers(batch, [DIGEST_TAG]), unknown, GOING)
    if state.digests:
        state.renewed += [i for i in ids if i not in state.renewed]


def batch_of(role: str, batch: int, servers: list[Server]) -> int:
    """How many servers of a group restart at once: the worker one; the queue workers at most
    all but one (with two or more, one keeps running Sidekiq while the others restart)."""
    if role == WORKER:
        return 1
    if role == QUEUE:
        present = len([s for s in servers if not s.gone])
        return max(1, min(batch, present - 1))
    return batch


def _apply(state: State, group: Group, plan: Plan, balanced: bool, target: str, moment: float) -> None:
    config, me = state.config, state.short_execution
    target_groups = config.target_groups if balanced else []
    journals = {s.id: s.journal for s in group.servers if s.journal}
    if plan.redo_out:  # journalled out of service by a tick that failed half-way
        if balanced:
            per_server(lambda ids: aws.protect(group.name, ids, True), plan.redo_out, GOING)
        aws.set_targets(target_groups, plan.redo_out, register=False)
    if plan.redo_in:
        per_server(lambda ids: aws.set_targets(target_groups, ids, register=True), plan.redo_in, GOING)
    if plan.restore:  # before the flap is journalled: a tick that fails half-way finds it again
        per_server(lambda ids: aws.set_targets(target_groups, ids, register=True), plan.restore, GOING)
        per_server(lambda ids: aws.protect(group.name, ids, False), plan.restore, GOING)
        aws.untag_servers(plan.restore, [JOURNAL_TAG])
    for iid, healthy_at in plan.healthy.items():
        old = journals[iid]
        assert old is not None
        aws.journal([iid], Journal(me, JOINING, target, old.since, old.command, healthy_at))
    if plan.finish:
        if balanced:
            per_server(lambda ids: aws.protect(group.name, ids, False), plan.finish, GOING)
        aws.tag_servers(plan.finish, {VERSION_TAG: target})
        _record_digests(state, plan.finish, journals)
        aws.untag_servers(plan.finish, [JOURNAL_TAG])
    if plan.join:
        # The deploy's command stays in the journal: its report of the images is read at the end.
        by_command: dict[str, list[str]] = {}
        for iid in plan.join:
            old_journal = journals.get(iid)
            by_command.setdefault(old_journal.command if old_journal else "", []).append(iid)
        for command, ids in by_command.items():
            aws.journal(ids, Journal(me, JOINING, target, moment, command))
        per_server(lambda ids: aws.set_targets(target_groups, ids, register=True), plan.join, GOING)
    surge = Surge.decode(group.tags.get(SURGE_TAG))
    if plan.retire and surge and surge.execution == me and not surge.retiring:
        retiring = Surge(surge.execution, surge.desired, surge.max_size, surge.raised, surge.at, True)
        aws.tag_group(group.name, SURGE_TAG, retiring.encode())
    for ids, step in ((plan.drain, DRAINING_STEP), (plan.retire, RETIRING)):
        if ids:
            aws.journal(ids, Journal(me, step, target, moment))
            per_server(lambda batch: aws.protect(group.name, batch, True), ids, GOING)
            aws.set_targets(target_groups, ids, register=False)
    comment = aws.marker(me, f"deploy {target}")
    unsent = list(plan.deploy)
    if plan.deploy:
        aws.journal(plan.deploy, Journal(me, DEPLOYING, target, moment))
    for iid in plan.adopt:  # journalled, but was the command sent before the tick failed?
        old = journals[iid]
        assert old is not None
        found = aws.find_command(comment, old.since, iid)
        if found:
            aws.journal([iid], Journal(me, DEPLOYING, target, old.since, found))
        else:
            unsent.append(iid)

    def send(ids: list[str]) -> None:
        command = aws.send(ids, config.deploy_script, f"deploy {target}", DEPLOY_TIMEOUT, comment)
        aws.journal(ids, Journal(me, DEPLOYING, target, moment, command))

    if unsent:
        per_server(send, unsent, GOING)
    for iid in plan.terminate:
        aws.terminate(iid)
    if plan.surge:
        start_surge(group, me, moment)
    if plan.end_surge:
        release_surge(group, me)


# What AWS answers for a server that is shutting down, or left the group since it was read.
GOING = {"InvalidInstanceId", "InvalidTarget", "ValidationError", "InvalidInstanceID.NotFound"}


def per_server(call: Callable[[list[str]], None], ids: list[str], tolerated: set[str]) -> None:
    """call(ids); if AWS refuses it for a server that is going away, once per server, skipping
    those it refuses: their journal stays, and the next tick sees them gone or tries again."""
    try:
        call(ids)
        return
    except ClientError as error:
        if aws.error_code(error) not in tolerated:
            raise
    for iid in ids:
        try:
            call([iid])
        except ClientError as error:
            if aws.error_code(error) not in tolerated:
                raise
            logger.warning(
                "AWS refused a server that may be going away", extra={"server": iid, "error": str(error)}
            )


# ---------------------------------------------------------------- the web group's sizes
def start_surge(group: Group, me: str, moment: float) -> None:
    """One server more than before the surge: recorded first, sizes set absolutely (so once)."""
    record = Surge.decode(group.tags.get(SURGE_TAG))
    if record is None or record.execution != me:
        record = Surge(me, group.desired, group.max_size, max(group.max_size, group.desired + 1), moment)
        aws.tag_group(group.name, SURGE_TAG, record.encode())
    if group.max_size < record.desired + 1:
        aws.set_max_size(group.name, record.desired + 1)
    if group.desired < record.desired + 1:
        aws.client("autoscaling").set_desired_capacity(
            AutoScalingGroupName=group.name, DesiredCapacity=record.desired + 1
        )


def release_surge(group: Group, me: str | None) -> str | None:
    """Undo a surge's sizes where the operator left them; what was done, or None."""
    record = Surge.decode(group.tags.get(SURGE_TAG))
    if record is None or (me is not None and record.execution != me):
        return None
    did = []
    desired = group.desired
    if desired == record.desired + 1 and len([s for s in group.servers if not s.gone]) <= record.desired:
        # The surge server never came (no capacity) or has gone: do not launch it later.
        desired = record.desired
        aws.client("autoscaling").set_desired_capacity(
            AutoScalingGroupName=group.name, DesiredCapacity=desired
        )
        did.append(f"desired capacity back to {desired}")
    if group.max_size == record.raised and record.raised != record.max_size:
        restored = max(record.max_size, desired)
        aws.set_max_size(group.name, restored)
        did.append(f"maximum size back to {restored}")
    aws.untag_group(group.name, SURGE_TAG)
    return ", ".join(did) or None


# ---------------------------------------------------------------- scaling held
def hold_scaling(state: State) -> dict[str, list[str]]:
    """Suspends SCALING_PROCESSES on the web group and the queue workers' group, recording
    first, on each group, which ones it suspends; {group: processes held}.

    Processes an operator had suspended are left out, so that release_scaling resumes
    only the rollout's. A record left by an earlier rollout that could not finish is
    adopted (its processes are resumed at this one's end), and so is its surge.
    """
    return {name: _hold_group(state, name) for name in held_groups(state.config)}


def _hold_group(state: State, name: str) -> list[str]:
    group = aws.describe_group(name, [], missing_ok=name != state.config.web_group)
    if not group.exists:
        return []
    me = state.short_execution
    record = _hold_record(group)
    if record and record[0] == me:
        processes = record[1]
    else:
        adopted = set(record[1]) if record else set()
        processes = sorted(adopted | {p for p in SCALING_PROCESSES if p not in group.suspended})
        aws.tag_group(group.name, HOLD_TAG, json.dumps([me, processes]))
        leftover = Surge.decode(group.tags.get(SURGE_TAG))
        if leftover and leftover.execution != me and name == state.config.web_group:
            release_surge(group, None)
    missing = [p for p in processes if p not in group.suspended]
    if missing:
        aws.suspend(group.name, missing)
    return processes


def release_scaling(state: State) -> str | None:
    """Resumes what this rollout suspended, on every group it held; why it could not, or None."""
    problems = [_release_group(state, name) for name in held_groups(state.config)]
    return "; ".join(p for p in problems if p) or None


def _release_group(state: State, group_name: str) -> str | None:
    web = group_name == state.config.web_group
    what = "web group" if web else "queue workers' group"
    try:
        group = aws.describe_group(group_name, [], missing_ok=not web)
        record = _hold_record(group)
        if not record or record[0] != state.short_execution:
            return None
        if record[1]:
            aws.resume(group_name, record[1])
        aws.untag_group(group_name, HOLD_TAG)
    except Exception as error:  # the notice must still go out
        logger.exception("Could not resume a group's scaling processes", extra={"group": group_name})
        return (
            f"the {what}'s scaling processes may still be suspended ({error}); resume them: "
            f"aws autoscaling resume-processes --auto-scaling-group-name {group_name}"
        )
    return None


def _hold_record(group: Group) -> tuple[str, list[str]] | None:
    try:
        me, processes = json.loads(group.tags.get(HOLD_TAG) or "null") or (None, None)
    except (ValueError, TypeError):
        return None
    if not isinstance(me, str) or not isinstance(processes, list):
        return None
    return me, [str(p) for p in processes]


def journalled(state: State) -> list[str]:
    """Servers a rollout, any rollout, left journalled: out of service, or of unknown version."""
    found: list[str] = []
    for role in roles(state.config):
        group = aws.describe_group(group_name(state.config, role), [], missing_ok=role == QUEUE)
        found += [s.id for s in group.servers if not s.gone and s.journal]
    return found


def strays(state: State) -> list[str]:
    """Servers still journalled by this rollout (out of service, or of unknown version).

    Their scale-in protection, which only this rollout set, is lifted; their journals
    stay, so that the next rollout deploys to them whatever they run.
    """
    found: list[str] = []
    for role in roles(state.config):
        name = group_name(state.config, role)
        group = aws.describe_group(name, state.config.target_groups if role == WEB else [],
                                   missing_ok=role == QUEUE)
        ours = [
            s
            for s in group.servers
            if not s.gone and s.journal and s.journal.execution == state.short_execution
        ]
        protected = [s.id for s in ours if s.protected]
        if protected and role == WEB:
            aws.protect(name, protected, False)
        found += [s.id for s in ours]
    return found
