"""The rollout's steps, in the order of a rollout; each takes the state and returns it.

  begin     one rollout at a time (older running executions go first); read the
            desired and deployed versions; nothing to do if the change was handled
  validate  the stack's tag rule, no silent downgrade (nor an unconfirmed tag that
            cannot be ordered), both images exist (each asked of its own registry)
  migrate   a one-off `deploy.sh migrate pre|post` on the worker, found again by its
            marker if the step is retried, failed at once if its worker is lost; with
            the pre-deployment migrations, every other serving server pulls the new
            images meanwhile (`deploy.sh pull`), so that a batch is out of service only
            to restart; a failed pull fails the rollout before any server leaves the
            load balancer
  web       one tick over the web group (drain, deploy, rejoin, settle; surge when one
            server serves alone); the first tick holds the scaling of the web group
            and of the queue workers' group; done once every server is back and
            healthy, the last batch's settling window left to verify (it starts then)
  worker    one tick over the worker group, then, once it is done, one over the queue
            workers' group (when the stack has one): done when both are
  record    deployed-version := target: servers launched from now on boot it
  verify    the whole fleet converged on the target and healthy over a settling
            window: before the post-deployment migrations (a failure still rolls
            back; the window runs from the last look, by the web step or the worker
            step beside the worker's restart, at which every web server was back and
            healthy, and it waits for the last batch's own windows) and
            after them (the last look before success is recorded); the CloudFront
            invalidation starts between the first and the migrations
  rollback  deployed-version back, then ticks towards the previous version over
            every server (of every group) that is not verified on it
  finish    scaling resumed, a leftover surge undone, the notice (what was verified),
            the handled record, and whether a newer version waits

Every step is safe to run again with the same input: what it changes is found in AWS
(journals, markers, tags) before it is changed again.
"""

from __future__ import annotations

from lambdas.rollout import aws, fleet, notices
from lambdas.rollout.aws import logger
from lambdas.rollout.names import (
    AGAIN,
    DONE,
    FAILED,
    FINAL,
    GO,
    MIGRATION_TIMEOUT,
    NOOP,
    POST,
    PRE,
    QUEUE_TIMEOUT,
    QUEUED,
    ROLLBACK_TIMEOUT,
    ROLLOUT_TIMEOUT,
    WAIT,
    WEB,
)
from lambdas.rollout.plan import (
    BOOT_POLL,
    COMMAND_DONE,
    COMMAND_RUNNING,
    DEPLOY_TIMEOUT,
    HEALTH_TIMEOUT,
    POLL,
    check_tag,
    downgrade_refusal,
    handled_record,
    parse_desired,
    plan_pulls,
    queue_position,
    read_handled,
    same_handling,
)
from lambdas.rollout.state import Migration, State

QUEUE_POLL = 60  # while an older rollout runs
SEND_LIMIT = 50  # instance ids one SendCommand accepts
FINISH_TRIES = 3  # finish asks again this often before it reports scaling left suspended


def _failed(state: State, reason: str) -> State:
    state.next, state.failure, state.wait = FAILED, reason, 0
    return state


def _waiting(state: State, seconds: int) -> State:
    state.next, state.wait = WAIT, max(int(seconds), 1)
    return state


def begin(state: State) -> State:
    moment = aws.now()
    queued_since = state.queued_since or moment
    ahead = queue_position(aws.running_executions(state.state_machine), state.execution)
    if ahead:
        if moment > queued_since + QUEUE_TIMEOUT:
            return _failed(state, f"an older rollout ({ahead[0]}) has run for more than {QUEUE_TIMEOUT}s")
        logger.info("Another rollout runs; waiting for it", extra={"ahead": ahead})
        state.queued_since, state.next, state.wait = queued_since, QUEUED, QUEUE_POLL
        return state
    config = state.config
    desired_value, desired_version = aws.read_parameter(config.desired_parameter)
    deployed, _ = aws.read_parameter(config.deployed_parameter)
    handled = read_handled(aws.read_parameter(config.handled_parameter)[0])
    target, allowed = parse_desired(desired_value)
    fresh = state.fresh()
    try:
        done_before = int(handled.get("desired_version", 0)) >= desired_version
    except (TypeError, ValueError):
        done_before = False
    # The deployed version put again after a failed rollback repairs what that left.
    repair = fleet.journalled(state) if target == deployed else []
    repushed = (
        repushed_images(state, target)
        if target == deployed and not repair and not done_before and config.roll_repushed
        else {}
    )
    if (target == deployed and not repair and not repushed) or (done_before and target != deployed):
        logger.info("Nothing to roll out", extra={"desired": target, "deployed": deployed})
        fresh.next = NOOP
        return fresh
    fresh.target, fresh.previous, fresh.allow_downgrade = target, deployed, allowed
    fresh.digests = repushed
    fresh.desired_version, fresh.started, fresh.next = desired_version, moment, GO
    return fresh


def repushed_images(state: State, tag: str) -> dict[str, str]:
    """The images `tag` names in ECR now ({image: digest}) when some server does not run them:
    the tag the servers run was pushed again with new images (RollRepushedTags). {} when
    nothing is to roll: a repeated event, or images no registry here reports."""
    wanted = {image: digest for image in state.config.images if (digest := aws.registry_digest(image, tag))}
    stale = fleet.stale_anywhere(state, wanted) if wanted else []
    if stale:
        logger.info("The running tag names new images", extra={"tag": tag, "images": wanted, "stale": stale})
        return wanted
    return {}


def validate(state: State) -> State:
    assert state.target is not None and state.previous is not None
    reason = check_tag(state.target, state.config.tag_pattern) or downgrade_refusal(
        state.target, state.previous, state.allow_downgrade
    )
    for image in state.config.images if reason is None else []:
        reason = reason or aws.image_missing(image, state.target)
    if reason:
        return _failed(state, reason)
    state.next = GO
    return state


def migrate(state: State, phase: str) -> State:
    assert state.target is not None
    label = "pre-deployment" if phase == PRE else "post-deployment"
    group = aws.describe_group(state.config.worker_group, [])
    migration = state.migration if state.migration and state.migration.phase == phase else None
    if migration is None:
        ready = sorted((s for s in group.servers if s.in_service), key=lambda s: -s.launched)
        coming = [s for s in group.servers if not s.gone]
        moment = aws.now()
        waited = state.worker_wait or moment
        if not ready and coming and moment < waited + state.config.boot_grace:  # a worker boots, or EC2 lags
            state.worker_wait = waited
            return _waiting(state, BOOT_POLL)
        if not ready:
            states = ", ".join(f"{s.id} {s.lifecycle}" for s in group.servers) or "none"
            return _failed(
                state,
                f"no worker is in service to run the {label} migrations of {state.target} "
                f"(worker servers: {states})",
            )
        state.worker_wait = None
        comment = aws.marker(state.short_execution, f"migrate {phase} {state.target}")
        # A retried step: the migration may have been sent already; never start a second one.
        found = aws.find_command(comment, state.started or aws.now())
        workers = {s.id for s in group.servers}
        sent_to = [i for i in aws.command_instances(found) if i in workers] if found else []
        if found and sent_to:
            instance, command = sent_to[0], found
        else:
            instance = ready[0].id
            command = aws.send(
                [instance],
                state.config.deploy_script,
                f"migrate {phase} {state.target}",
                MIGRATION_TIMEOUT,
                comment,
            )
        state.migration = Migration(phase, command, instance, aws.now())
        if phase == PRE:
            pull_ahead(state, instance)
        return _waiting(state, POLL)
    worker = next((s for s in group.servers if s.id == migration.instance), None)
    if worker is None or worker.gone:
        lifecycle = worker.lifecycle if worker else "no longer in the group"
        return _failed(
            state,
            f"the worker {migration.instance} running the {label} migrations of "
            f"{state.target} was lost ({lifecycle}); they may have run partly",
        )
    status, reason = aws.command_status(migration.id, migration.instance)
    moment = aws.now()
    running = status in COMMAND_RUNNING and moment < migration.since + MIGRATION_TIMEOUT
    if status not in COMMAND_DONE and not running:
        return _failed(state, f"{label} migrations of {state.target} failed ({status}): {reason}")
    migration.done = status in COMMAND_DONE
    pulling = pull_ahead(state, migration.instance) if phase == PRE else False
    if state.pull_failure and not running:  # reported once the migration has ended, never mid-way
        return _failed(state, state.pull_failure)
    if running:
        return _waiting(state, min(POLL * 6, max(POLL, int((moment - migration.since) / 10))))
    if pulling:
        return _waiting(state, POLL)
    state.next = DONE
    return state


def pull_ahead(state: State, busy: str) -> bool:
    """Every serving server of every group pulls the target's images while it serves (deploy.sh
    pull); whether a pull still runs. `busy`: the worker running the migration, which pulls
    the image itself. Sent pulls are found again by their marker when a step is retried, and
    a server that comes into service meanwhile gets its pull at the next look."""
    config, target, me = state.config, state.target, state.short_execution
    assert target is not None
    web = aws.describe_group(config.web_group, config.target_groups)
    workers = aws.describe_group(config.worker_group, [])
    queue = aws.describe_group(config.queue_group, [], missing_ok=True).servers if config.queue_group else []
    servers = web.servers + [s for s in workers.servers if s.id != busy] + queue
    present = {s.id for s in servers if not s.gone}
    pulls = {iid: (str(sent[0]), float(sent[1])) for iid, sent in state.pulls.items()}
    statuses = {
        iid: aws.command_status(command, iid)
        for iid, (command, _) in pulls.items()
        if iid in present and iid not in state.pulled
    }
    moment = aws.now()
    plan = plan_pulls(
        servers, {s.id for s in web.servers}, pulls, state.pulled, statuses, target=target, moment=moment
    )
    state.pulled += plan.done
    for iid in plan.dropped:
        state.pulls.pop(iid, None)
    state.pull_failure = state.pull_failure or plan.failure
    if not plan.send or state.pull_failure:
        return plan.pending
    comment = aws.marker(me, f"pull {target}")
    for command, ids in aws.find_commands(comment, state.started or moment):  # sent by a lost answer
        for iid in set(ids) & set(plan.send):
            state.pulls[iid] = [command, moment]
    unsent = [i for i in plan.send if i not in state.pulls]

    def send(ids: list[str]) -> None:
        command = aws.send(ids, config.deploy_script, f"pull {target}", DEPLOY_TIMEOUT, comment)
        for iid in ids:
            state.pulls[iid] = [command, moment]

    for start in range(0, len(unsent), SEND_LIMIT):
        fleet.per_server(send, unsent[start : start + SEND_LIMIT], fleet.GOING)
    return plan.pending or any(i in state.pulls for i in plan.send)


def _hold(state: State) -> None:
    """Scaling held while the rollout moves servers (recorded first: see fleet.hold_scaling)."""
    if not state.held:
        processes = fleet.hold_scaling(state)
        logger.info("Scaling held", extra={"processes": processes})
        state.held = True


def web(state: State) -> State:
    """The web group in batches; done once every server runs the target, back and healthy.

    The last batch's settling window is not waited for here: the worker restarts
    meanwhile, and its step goes on ticking the web group (_watch_web), so the last
    batch is finished once settled, a flap or a lost server is seen as in the web step,
    and verify's whole-fleet window runs from the last look at which every web server
    was healthy."""
    _hold(state)
    assert state.target is not None
    result = _watch_web(state)
    if result.failure:
        return _failed(state, result.failure)
    if result.next == DONE or result.plan.back:
        state.next = DONE
        return state
    state.next, state.wait = result.next, result.wait
    return state


def _watch_web(state: State) -> fleet.Tick:
    """One tick over the web group; verify's window starts at a look where every web server
    is back on the target and healthy, and starts again at one where any is not."""
    assert state.target is not None
    result = fleet.tick(state, WEB, state.target, watch_settled=True)
    serving = [s for s in result.group.servers if s.in_service]
    if result.failure is None and (result.next == DONE or result.plan.back) and serving and all(
        s.healthy for s in serving
    ):
        if state.verify_since is None:
            state.verify_since = aws.now()
    else:
        state.verify_since = None
    return result


def worker(state: State) -> State:
    """The worker, then the queue workers: done when both groups are.

    The queue workers wait for the main worker's restart to end, so that some Sidekiq
    process keeps running all along (the main worker alone serves the queues the queue
    workers do not, and they serve its queues while it restarts). The web group is
    ticked too: its last batch settles meanwhile."""
    _hold(state)
    assert state.target is not None
    web_result = _watch_web(state)
    if web_result.failure:
        return _failed(state, web_result.failure)
    for role in fleet.roles(state.config)[1:]:
        result = fleet.tick(state, role, state.target)
        if result.failure:
            return _failed(state, result.failure)
        if result.next != DONE:
            return _waiting(state, min(result.wait, web_result.wait))
    state.next = DONE
    return state


def record(state: State) -> State:
    """deployed-version := target, now that every server runs it: new servers boot it."""
    assert state.target is not None
    deployed, _ = aws.read_parameter(state.config.deployed_parameter)
    if deployed != state.target:
        aws.write_parameter(state.config.deployed_parameter, state.target)
    state.recorded, state.next = True, DONE
    return state


def verify(state: State, phase: str) -> State:
    """Every server on the target (servers launched meanwhile brought to it), every web
    server healthy in every target group, over settle_seconds of consecutive looks."""
    assert state.target is not None
    _hold(state)
    moment = aws.now()
    settling: list[int] = []  # waits of web servers back and healthy, within their own window
    for role in fleet.roles(state.config):
        result = fleet.tick(state, role, state.target)
        if result.failure:
            return _failed(state, result.failure)
        back = role == WEB and result.plan.back  # the last batch settling, or settled at this tick
        if result.next != DONE and not back:  # a server still to bring to the target: the window waits
            state.verify_started = state.verify_since = None
            state.next, state.wait = WAIT, result.wait
            return state
        if back and result.plan.settling:
            settling.append(result.wait)
        if role == WEB:
            serving = [s for s in result.group.servers if s.in_service]
    if state.verify_started is None:
        state.verify_started = moment
    unhealthy = [s for s in serving if not s.healthy]
    if not serving or unhealthy:
        state.verify_since = None
        if moment > state.verify_started + HEALTH_TIMEOUT:
            what = ", ".join(f"{s.id} ({'/'.join(s.health) or 'no target group'})" for s in unhealthy)
            return _failed(
                state,
                f"after the rollout to {state.target}, "
                + (f"web servers are not healthy: {what}" if serving else "no web server is in service"),
            )
        return _waiting(state, POLL)
    if state.verify_since is None:
        state.verify_since = moment
        return _waiting(state, state.config.settle_seconds)
    if moment < state.verify_since + state.config.settle_seconds:
        return _waiting(state, int(state.verify_since + state.config.settle_seconds - moment))
    if settling:
        return _waiting(state, min(settling))
    state.verify_started = state.verify_since = None
    if phase == PRE:
        state.switched = True  # from here on the post-deployment migrations may run: no way back
    # Nothing moves web servers until the final check: scaling works during the migrations.
    if fleet.release_scaling(state) is None:
        state.held = False
    state.next = DONE
    return state


def rollback(state: State) -> State:
    """Back to the previous version: deployed-version first, then every server not verified on it."""
    if state.switched:
        # The post-deployment migrations may have run: old code may not fit the schema.
        state.next = DONE
        return state
    moment = aws.now()
    _hold(state)
    if not state.rolling_back:
        state.failure = state.forward_failure() or "unknown failure"
        state.rolling_back, state.rollback_started = True, moment
        state.flight, state.lost, state.sick = {}, [], {}
        state.verify_started = state.verify_since = None
    assert state.previous is not None and state.rollback_started is not None
    if moment > state.rollback_started + ROLLBACK_TIMEOUT:
        state.other["rollback_error"] = f"it did not finish within {ROLLBACK_TIMEOUT}s"
        state.restored, state.next = False, FAILED
        return state
    deployed, _ = aws.read_parameter(state.config.deployed_parameter)
    if deployed != state.previous:  # new servers must boot the previous version again
        aws.write_parameter(state.config.deployed_parameter, state.previous)
    for role in fleet.roles(state.config):
        result = fleet.tick(state, role, state.previous)
        if result.failure:
            state.other["rollback_error"] = result.failure
            state.restored, state.next = False, FAILED
            return state
        if result.next != DONE:
            state.next, state.wait = WAIT, result.wait
            return state
        if role == WEB:
            unhealthy = [s.id for s in result.group.servers if s.in_service and not s.healthy]
            if unhealthy or not any(s.in_service for s in result.group.servers):
                return _waiting(state, POLL)  # bounded by ROLLBACK_TIMEOUT
    state.restored, state.next = True, DONE
    return state


def finish(state: State) -> State:
    """Resume scaling, undo a surge left over, notify truthfully, record, look for a newer version."""
    config = state.config
    failure = state.forward_failure() if state.target or state.failure or state.other.get("error") else None
    scaling = fleet.release_scaling(state)
    if scaling and state.finish_tries < FINISH_TRIES:  # ask again rather than leave scaling held
        state.finish_tries += 1
        return _waiting(state, 10 * 2 ** (state.finish_tries - 1))
    problems: list[str] = [scaling] if scaling else []
    stray: list[str] = []
    deployed = "unknown"
    digests: dict[str, str] = {}
    try:
        group = aws.describe_group(config.web_group, [])
        undone = fleet.release_surge(group, state.short_execution)
        if undone:
            logger.info("Surge undone", extra={"what": undone})
        stray = fleet.strays(state)
        deployed = aws.read_parameter(config.deployed_parameter)[0]
        digests = fleet.deployed_digests(state, deployed)  # what upgrade on push compares a push with
    except Exception as error:  # the notice must still go out
        logger.exception("Could not tidy up after the rollout")
        problems.append(f"could not check the servers after the rollout ({error})")
    observed = notices.Observed(deployed, "; ".join(problems) or None, stray)
    if failure or (stray and not state.switched):
        subject, message = notices.failure(
            state, failure or f"servers left unsettled: {', '.join(stray)}", observed
        )
        result = "failed"
    else:
        subject, message = notices.success(state, observed)
        result = "succeeded"
    if state.desired_version is None:
        aws.publish(config.topic_arn, subject, message)
        state.next = FAILED  # begin never completed: no version was handled, the last record stands
        return state
    record = handled_record(
        state.desired_version, state.target or "", result, state.execution, failure or "", deployed, digests
    )
    # A retried finish: the notice went out (the servers' images may read otherwise now).
    if not same_handling(aws.read_parameter(config.handled_parameter)[0], record):
        aws.publish(config.topic_arn, subject, message)
        aws.write_parameter(config.handled_parameter, record)
    if result == "failed":
        state.next = FAILED
        return state
    _, desired_version = aws.read_parameter(config.desired_parameter)
    if desired_version > state.desired_version:
        fresh = state.fresh()  # begin starts afresh: nothing of this rollout is the next one's
        fresh.next = AGAIN
        return fresh
    state.next = DONE
    return state


def over_time(state: State) -> str | None:
    """Why the rollout must stop now: it has run longer than ROLLOUT_TIMEOUT."""
    if state.started is not None and aws.now() > state.started + ROLLOUT_TIMEOUT:
        return f"the rollout did not finish within {ROLLOUT_TIMEOUT // 3600} hours"
    return None


PHASED = {"migrate": (PRE, POST), "verify": (PRE, FINAL)}
