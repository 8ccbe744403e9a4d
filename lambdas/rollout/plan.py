"""Pure decisions of the rollout: plain data in, plain data out, no AWS call.

`plan_group` decides one tick for one Auto Scaling group from what AWS reports about
its servers (lifecycle, running state, target health, scale-in protection, the
version tag and the journal tag): which servers to take out of the load balancer,
deploy to, put back, declare done, retire, and whether to surge. A server's journal
records what this rollout is doing to it, written before it is done, so that a tick
that is repeated (an answer lost and retried), or that follows a tick which failed
half-way, finds the same facts and plans the same actions once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from lambdas.rollout.names import CUSTOM_TAG_PATTERN, DOWNGRADE_FLAG
from lambdas.rollout.versions import order_key, parse_desired, read_handled

__all__ = ["order_key", "parse_desired", "read_handled"]  # kept here too: read versions as before

HEALTHY, DRAINING, UNUSED = "healthy", "draining", "unused"
IN_LOAD_BALANCER = {HEALTHY, "initial", "unhealthy"}  # registered, taking or about to take requests
IN_SERVICE, STANDBY = "InService", "Standby"
COMMAND_DONE = {"Success"}
COMMAND_RUNNING = {"Pending", "InProgress", "Delayed"}

# Journal steps.
DRAINING_STEP, DEPLOYING, JOINING, RETIRING = "draining", "deploying", "joining", "retiring"

POLL = 5  # seconds between checks of a step whose end cannot be predicted
BOOT_POLL = 15  # while a new server boots
DRAIN_MARGIN = 120  # beyond the deregistration delay, before draining counts as stuck
DEPLOY_TIMEOUT = 1800  # pulls of two images and a restart
HEALTH_TIMEOUT = 600  # the load balancer's checks after rejoining, settling included
# A server still booting is left alone for the groups' health check grace period
# (config.boot_grace, which covers bootstrap's own worst case); the surge server gets
# that plus its deploy and health checks to serve.
# Servers that vanish while running the target and failing their health checks: Auto
# Scaling replaced them as unhealthy (or, once, a spot server went at that moment); a
# second one says the release itself fails, whatever the planner's health timeout.
MAX_LOST = 1
NOTICE_REASON = 1000  # characters of a failure reason kept in a notice or a record


# ---------------------------------------------------------------- tags and versions
def check_tag(tag: object, pattern: str) -> str | None:
    """Why `tag` does not follow the stack's tag rule `pattern` (ASCII, the whole string), or
    None. The reason names the rule that applied: upstream's release tags, or the OCI tag rule
    for a stack whose images are not upstream's."""
    if isinstance(tag, str) and re.fullmatch(pattern, tag, re.ASCII):
        return None
    shown = repr(tag)[:80] if isinstance(tag, str) else type(tag).__name__
    if pattern == CUSTOM_TAG_PATTERN:
        return (
            f"{shown} is not a tag an image can have: the stack's images are not upstream's, so a "
            "version is any tag of the OCI distribution spec's rule, 1 to 128 ASCII letters, digits, "
            "'_', '.' and '-', not starting with '.' or '-'. Registries refuse anything else, '+' "
            "included: a fork tags v4.7.6-glitch, not v4.7.6+glitch; nothing was changed"
        )
    return (  # the release rule (templates/options.RELEASE_TAG_PATTERN)
        f"{shown} is not a Mastodon release tag of 4.3 or later (e.g. v4.7.6, v4.8.0-rc.1): "
        "the stack runs upstream's images, whose versions are release tags; nothing was changed"
    )


def downgrade_refusal(target: str, deployed: str, allowed: bool) -> str | None:
    """Why rolling from `deployed` to `target` needs the operator's explicit word, or None.

    Two release tags are ordered; a tag that is not one (a fork's or a CI's) cannot be
    ordered against another tag, so the operator confirms it like a downgrade. The version
    the servers already run is no downgrade (a repair, or a re-pushed tag)."""
    if allowed or target == deployed:
        return None
    new, old = order_key(target), order_key(deployed)
    if new is not None and old is not None:
        if new >= old:
            return None
        return (
            f"{target} is older than {deployed}, which the servers run: its code may not fit the "
            f"database that {deployed}'s post-deployment migrations changed, so the rollout refused it; "
            f"nothing was changed. To go back on purpose, put '{target} {DOWNGRADE_FLAG}' into the "
            "desired-version parameter"
        )
    return (
        f"{target} and {deployed}, which the servers run, cannot be ordered (only Mastodon release "
        "tags such as v4.7.6 can), so the rollout cannot tell an upgrade from a downgrade, whose code "
        "may not fit the database the newer version's migrations changed; nothing was changed. "
        f"If {target} is what the servers should run, put '{target} {DOWNGRADE_FLAG}' into the "
        "desired-version parameter"
    )


# ---------------------------------------------------------------- what is known of a server
@dataclass(frozen=True)
class Journal:
    """What a rollout does to a server, as its journal tag records it (written first)."""

    execution: str
    step: str
    target: str
    since: float
    command: str = ""
    healthy_at: float | None = None

    def encode(self) -> str:
        healthy = "" if self.healthy_at is None else f"{self.healthy_at:.0f}"
        return "|".join([self.execution, self.step, self.target, f"{self.since:.0f}", self.command, healthy])

    @staticmethod
    def decode(text: str | None) -> Journal | None:
        """The journal in a tag value; an unreadable one is a journal of nobody (None fields)."""
        if text is None:
            return None
        parts = text.split("|")
        try:
            execution, step, target, since, command, healthy = parts
            return Journal(
                execution, step, target, float(since), command, float(healthy) if healthy else None
            )
        except ValueError:
            return Journal("?", "?", "?", 0.0)


@dataclass(frozen=True)
class Server:
    """What AWS reports of one instance of a group."""

    id: str
    lifecycle: str  # Auto Scaling lifecycle state (InService, Pending, Standby, Terminating...)
    running: bool  # EC2 state "running"
    launched: float
    version: str | None  # the version tag
    journal: Journal | None = None
    health: tuple[str, ...] = ()  # its state in each target group (web only)
    protected: bool = False  # from scale-in
    described: bool = True  # False: a member EC2 does not report yet (eventual consistency)
    digests: tuple[str, ...] = ()  # the images it runs (DIGEST_TAG), as its last deploy reported

    @property
    def in_service(self) -> bool:
        return self.lifecycle == IN_SERVICE and self.running

    @property
    def standby(self) -> bool:
        return self.lifecycle == STANDBY and self.running

    @property
    def gone(self) -> bool:
        """Leaving or left the group: nothing to do on it any more."""
        if self.lifecycle.startswith(("Terminat", "Detach")):
            return True
        # A member EC2 does not know yet is a server about to boot, never a lost one.
        return self.described and not self.running and not self.lifecycle.startswith(("Pending", "Warmed"))

    @property
    def healthy(self) -> bool:
        return bool(self.health) and all(h == HEALTHY for h in self.health)

    @property
    def registered(self) -> bool:
        return any(h in IN_LOAD_BALANCER for h in self.health)

    @property
    def drained(self) -> bool:
        return all(h not in IN_LOAD_BALANCER and h != DRAINING for h in self.health)


@dataclass(frozen=True)
class Surge:
    """A surge, as the web group's surge tag records it (written before the sizes change)."""

    execution: str
    desired: int  # the group's desired capacity before the surge
    max_size: int  # its maximum before the surge
    raised: int  # the maximum the surge set (== max_size when none was needed)
    at: float
    retiring: bool = False  # the surplus server is being retired: never raise the size again

    def encode(self) -> str:
        return json.dumps(
            [self.execution, self.desired, self.max_size, self.raised, round(self.at), self.retiring]
        )

    @staticmethod
    def decode(text: str | None) -> Surge | None:
        if not text:
            return None
        try:
            execution, desired, max_size, raised, at, retiring = json.loads(text)
            return Surge(str(execution), int(desired), int(max_size), int(raised), float(at), bool(retiring))
        except (ValueError, TypeError):
            return None


# ---------------------------------------------------------------- one tick of a group
@dataclass
class Plan:
    """What one tick does to a group, then how long to wait before the next tick."""

    drain: list[str] = field(default_factory=list)  # journal, protect, deregister
    deploy: list[str] = field(default_factory=list)  # journal, Run Command, journal the command
    adopt: list[str] = field(default_factory=list)  # a deploy journalled but not known sent
    join: list[str] = field(default_factory=list)  # journal, register
    healthy: dict[str, float | None] = field(default_factory=dict)  # first healthy moment (None: flapped)
    finish: list[str] = field(default_factory=list)  # unprotect, version tag, journal removed
    retire: list[str] = field(default_factory=list)  # journal, protect, deregister (then terminate)
    terminate: list[str] = field(default_factory=list)
    restore: list[str] = field(default_factory=list)  # drained, not yet restarted: back in (register, untag)
    redo_out: list[str] = field(default_factory=list)  # journalled out but still in or unprotected
    redo_in: list[str] = field(default_factory=list)  # journalled joining but not registered
    flight: list[str] = field(default_factory=list)  # running the target, back in, failing health checks
    lost: list[str] = field(default_factory=list)  # of the last tick's flight, those that vanished
    sick: dict[str, float] = field(default_factory=dict)  # settled on the target, failing checks since
    surge: bool = False
    end_surge: bool = False
    failure: str | None = None
    done: bool = False
    # Every server of a balanced group runs the target, back in service and healthy, some
    # perhaps still within their settling window (`settling`) or settled at this tick: the
    # rollout may go on to the worker while a whole-fleet window watches them (steps.verify).
    back: bool = False
    settling: list[str] = field(default_factory=list)
    wait: int = POLL


def plan_group(
    servers: list[Server],
    commands: dict[str, tuple[str, str]],
    *,
    execution: str,
    target: str,
    batch: int,
    balanced: bool,
    desired: int,
    surge: Surge | None,
    moment: float,
    drain_seconds: int,
    settle_seconds: int,
    boot_grace: int,
    last_flight: list[str] | tuple[str, ...] = (),
    stale: set[str] | frozenset[str] = frozenset(),
    sick_since: dict[str, float] | None = None,
) -> Plan:
    """The next actions for one group towards `target`.

    commands: the Run Command status of journalled deploys, {id: (status, reason)}.
    desired: the group's desired capacity (a surge included). `balanced` groups sit
    behind the load balancer: healthy serving capacity never drops below
    max(1, size - batch), at least one server that has settled keeps serving while
    others settle, and a lone server is surged first. last_flight: the servers that
    ran the target and failed health checks at the previous tick. stale: servers that run
    the target's tag but not the images it names now (a tag pushed again): rolled as if
    they ran another version. sick_since: when given (the web step watches its settled
    servers), since when each server settled on the target has failed its health checks,
    as the previous tick found; a release whose settled servers fail for HEALTH_TIMEOUT
    fails like one that flaps while settling.

    Batches overlap: once a batch is back in service and healthy, the next one drains
    while it settles (if a settled server still serves beside it), but is restarted only
    once it has settled; should it flap meanwhile, the next batch, still on the version
    it ran, goes back into service (`restore`) and waits.
    """
    plan = Plan()

    def mine(s: Server) -> bool:
        return s.journal is not None and s.journal.execution == execution and s.journal.target == target

    present = {s.id: s for s in servers if not s.gone}
    plan.lost = [i for i in last_flight if i not in present]  # present and untagged: it finished
    moving: set[str] = set()  # out of service because of this rollout
    settling: set[str] = set()  # back in, healthy, not yet for settle_seconds
    rejoining: set[str] = set()  # back in, not healthy (yet, or again)
    drained: list[str] = []  # out of the load balancer, to restart once nothing settles
    draining: list[str] = []  # journalled out, not restarted: what a flap puts back
    flapped: list[str] = []  # healthy since they rejoined, and now not
    waits: list[float] = []
    for s in present.values():
        if not mine(s):
            continue
        journal = s.journal
        assert journal is not None
        if journal.step in (DRAINING_STEP, RETIRING):
            moving.add(s.id)
            if journal.step == DRAINING_STEP:
                draining.append(s.id)
            if s.registered or not s.protected:
                plan.redo_out.append(s.id)  # the tick that journalled it failed half-way
            if s.drained:
                (drained if journal.step == DRAINING_STEP else plan.terminate).append(s.id)
            elif moment > journal.since + drain_seconds + DRAIN_MARGIN:
                plan.failure = (
                    f"{s.id} did not drain from the load balancer within {drain_seconds + DRAIN_MARGIN}s"
                )
            else:
                waits.append(max(journal.since + drain_seconds - moment, POLL))
        elif journal.step == DEPLOYING:
            moving.add(s.id)
            waits.append(POLL)
            if not journal.command:
                plan.adopt.append(s.id)
                continue
            status, reason = commands.get(s.id, ("Pending", ""))
            if status in COMMAND_DONE:
                (plan.join if balanced and not s.standby else plan.finish).append(s.id)
            elif status not in COMMAND_RUNNING:
                plan.failure = f"deploy.sh {target} failed on {s.id} ({status}): {reason}"
            elif moment > journal.since + DEPLOY_TIMEOUT:
                plan.failure = f"deploy.sh {target} on {s.id} did not finish within {DEPLOY_TIMEOUT}s"
        elif journal.step == JOINING:
            if "unhealthy" in s.health:  # should it vanish now, Auto Scaling replaced it as unhealthy
                plan.flight.append(s.id)
            if s.standby:  # the operator put it aside after its deploy: it runs the target
                plan.finish.append(s.id)
            elif s.healthy:
                if journal.healthy_at is None:
                    plan.healthy[s.id] = moment
                    settling.add(s.id)
                    waits.append(settle_seconds)
                elif moment >= journal.healthy_at + settle_seconds:
                    plan.finish.append(s.id)
                else:
                    settling.add(s.id)
                    waits.append(journal.healthy_at + settle_seconds - moment)
            else:
                moving.add(s.id)
                rejoining.add(s.id)
                waits.append(POLL)
                if journal.healthy_at is not None:
                    plan.healthy[s.id] = None  # healthy, then not: the window starts again
                    flapped.append(s.id)
                if any(h not in IN_LOAD_BALANCER and h != DRAINING for h in s.health):
                    plan.redo_in.append(s.id)  # not in every target group: a registration failed half-way
                if moment > journal.since + HEALTH_TIMEOUT:
                    plan.failure = (
                        f"{s.id} runs {target} but did not stay healthy in every target group for "
                        f"{settle_seconds}s within {HEALTH_TIMEOUT}s of rejoining ({', '.join(s.health)})"
                    )
    # Settled on the target and failing the load balancer's checks: capacity the release
    # itself broke. Never surged for (the surge server would boot into the same failure or
    # only hide it); watched, it fails the release once it has failed for HEALTH_TIMEOUT.
    broken = [
        s
        for s in present.values()
        if s.journal is None
        and s.version == target
        and s.id not in stale  # the tag's old images (a tag pushed again): to roll, not the release's
        and s.in_service
        and "unhealthy" in s.health
    ]
    if sick_since is not None:
        for s in broken:
            since = sick_since.get(s.id, moment)
            plan.sick[s.id] = since
            plan.flight.append(s.id)  # should it vanish, Auto Scaling replaced it as unhealthy
            if moment > since + HEALTH_TIMEOUT and not plan.failure:
                plan.failure = (
                    f"{s.id} runs {target} but did not stay healthy in every target group: it failed "
                    f"its health checks for {HEALTH_TIMEOUT}s after it had settled ({', '.join(s.health)})"
                )
    if plan.failure:
        return plan
    base = max(desired - 1, surge.desired) if surge else desired  # the size without the surge
    floor = max(1, base - batch) if balanced else 0

    def serving_now() -> list[Server]:
        return [s for s in present.values() if s.in_service and s.healthy and s.id not in moving]

    def put_back() -> None:
        # The next batch has not been restarted: it goes back into service on the version it
        # runs, and waits. A server the operator put in Standby stays out of the load balancer.
        plan.restore = [i for i in draining if not present[i].standby]
        plan.redo_out = [i for i in plan.redo_out if i not in plan.restore]
        moving.difference_update(plan.restore)

    if flapped and draining:
        # A settling server flapped while the next batch drained beside it (a release that
        # keeps failing times out as before and is rolled back).
        put_back()
    elif not settling and not rejoining and drained:  # beside a settling batch: restarted once it settled
        if len(serving_now()) >= floor:
            plan.deploy.extend(drained)
        else:
            # Fewer serve than the floor (a server left, or failed, since this batch drained,
            # e.g. the settling one was terminated): restarting it would leave too few.
            put_back()

    finishing = set(plan.finish)
    serving = serving_now()
    stable = [s for s in serving if s.id not in settling]
    pending = [
        s
        for s in present.values()
        if not mine(s) and (s.version != target or s.journal is not None or s.id in stale)
    ]
    on_target = [
        s
        for s in serving
        if (s.version == target and s.journal is None and s.id not in stale) or s.id in finishing
    ]
    # A batch is done once its servers have settled. The next one may drain meanwhile, once
    # every server of this one is back and healthy (its restart waits for the settling: above).
    if balanced and moving:
        room = max(batch - len(moving) - len(settling), 0)
    else:
        room = max(batch - len(moving), 0)

    if surge and balanced and not moving and not settling:
        # Once: with the surplus retired the group is back at its size without the surge,
        # and a second retire (the floor allows it in a group larger than the batch) would
        # take the operator's desired capacity below what it was.
        # (The surge record says when the surplus is being retired: an operator's scale-out
        # meanwhile must not be taken for more surplus.)
        surplus = not surge.retiring and len([s for s in present.values() if s.in_service]) > max(base, 1)
        if surplus and len(on_target) >= max(base, 1) and len(serving) - 1 >= floor:
            # The lone server's replacement has settled: retire the surplus, other versions first.
            others = [
                s
                for s in serving
                if s.id not in finishing and not (s.version == target and s.journal is None)
            ]
            extra = others or sorted(on_target, key=lambda s: s.launched)[:1]
            plan.retire.append(extra[0].id)
            plan.wait = max(drain_seconds, POLL)
            return plan
        surge_timeout = surge_seconds(boot_grace)
        if not on_target and moment > surge.at + surge_timeout:
            plan.failure = (
                f"the surge server did not serve within {surge_timeout}s of raising the web group's "
                "desired capacity (no EC2 capacity for its type, or it failed to boot)"
            )
            return plan

    def ready(s: Server) -> bool:
        # A server still booting is left alone: the load balancer's health (web) or its
        # version tag (worker) says the bootstrap is over; past the grace period it is fair game.
        if not (s.in_service or s.standby):
            return False
        settled = (s.healthy or s.standby) if balanced else s.version is not None
        return settled or s.journal is not None or moment > s.launched + boot_grace

    candidates = [s for s in pending if ready(s)]
    booting = [s for s in pending if not ready(s)]
    # Registered, its first checks still running (a server put back): about to serve, not idle.
    warming = [
        s
        for s in candidates
        if s.in_service
        and s.journal is None
        and "initial" in s.health
        and set(s.health) <= {HEALTHY, "initial"}
    ]
    if balanced:
        idle = [s for s in candidates if not (s.in_service and s.healthy) and s not in warming]
        budget = min(len(serving) - floor, len(stable) - 1)
        busy = sorted((s for s in candidates if s not in idle and s.healthy), key=lambda s: -s.launched)
        chosen = idle[:room]
        take = max(min(room - len(chosen), budget), 0)
        if settling and not moving and take < min(room - len(chosen), len(busy)):
            # Beside a settling batch the next one drains whole or not at all: a part of it
            # would be restarted out of step with the rest, each part settling on its own.
            take = 0
        chosen += busy[:take]
        plan.drain.extend(s.id for s in chosen)
    else:
        budget = 0
        chosen = sorted(candidates, key=lambda s: -s.launched)[:room]
        plan.deploy.extend(s.id for s in chosen)

    if (
        balanced
        and pending
        and not chosen
        and not moving
        and not settling
        and not surge
        and not booting
        and not warming
        and not broken
        and budget <= 0
    ):
        plan.surge = True
        plan.wait = BOOT_POLL
        return plan
    plan.back = (
        balanced and not pending and not moving and not plan.restore and not surge and not plan.terminate
    )
    plan.settling = sorted(settling)
    if not pending and not moving and not settling and not plan.restore:
        if surge:
            plan.end_surge = (
                len([s for s in present.values() if s.in_service]) <= max(base, 0) or not balanced
            )
        plan.done = not surge and not plan.finish and not plan.terminate
        plan.wait = POLL
        return plan
    if (
        plan.deploy
        or plan.join
        or plan.finish
        or plan.terminate
        or plan.adopt
        or plan.redo_in
        or plan.restore
        or plan.healthy
    ):
        plan.wait = POLL
    elif plan.drain or waits:
        plan.wait = max(int(min(waits + ([drain_seconds] if plan.drain else []))), 1)
    elif booting:
        plan.wait = BOOT_POLL
    return plan


def surge_seconds(boot_grace: int) -> int:
    """How long the surge server may take to launch, boot, take the target and serve."""
    return boot_grace + DEPLOY_TIMEOUT // 3 + HEALTH_TIMEOUT


# ---------------------------------------------------------------- pulling ahead
@dataclass
class PullPlan:
    """One look at the pull-ahead: the new images fetched on every serving server while it serves."""

    send: list[str] = field(default_factory=list)  # serving servers the pull has not been sent to
    done: list[str] = field(default_factory=list)  # their pull finished
    dropped: list[str] = field(default_factory=list)  # left the group: nothing to pull there any more
    pending: bool = False  # a pull still runs
    failure: str | None = None


def plan_pulls(
    servers: list[Server],
    balanced: set[str],
    pulls: dict[str, tuple[str, float]],
    pulled: list[str] | tuple[str, ...],
    statuses: dict[str, tuple[str, str]],
    *,
    target: str,
    moment: float,
) -> PullPlan:
    """What the pull-ahead does next.

    servers: both groups' servers (the worker running the migration left out: it pulls
    the image itself). balanced: the ids of web servers. pulls: {server: (command, sent
    at)}; statuses: the Run Command status of those not yet pulled. A serving server
    (web: healthy in every target group; worker: settled on a version) that runs
    another version gets a pull; one still booting is left to its deploy, which pulls
    what it needs. A server that leaves drops out; a pull that fails, or outlasts
    DEPLOY_TIMEOUT, on a server that still serves fails the rollout.
    """
    plan = PullPlan()
    present = {s.id: s for s in servers if not s.gone}
    for iid, (command, sent) in pulls.items():
        if iid in pulled:
            continue
        server = present.get(iid)
        if server is None:
            plan.dropped.append(iid)
            continue
        status, reason = statuses.get(iid, ("Pending", ""))
        if status in COMMAND_DONE:
            plan.done.append(iid)
        elif not server.in_service:
            plan.dropped.append(iid)  # in Standby or leaving: its deploy pulls, should it come back
        elif status not in COMMAND_RUNNING:
            plan.failure = plan.failure or (
                f"pulling the images of {target} ahead failed on {iid} ({status}): {reason}; "
                "no server had left the load balancer"
            )
        elif moment > sent + DEPLOY_TIMEOUT:
            plan.failure = plan.failure or (
                f"pulling the images of {target} ahead on {iid} did not finish within {DEPLOY_TIMEOUT}s "
                f"(command {command}); no server had left the load balancer"
            )
        else:
            plan.pending = True
    for s in present.values():
        serving = s.in_service and (s.healthy if s.id in balanced else s.version is not None)
        if serving and s.id not in pulls and s.version != target:
            plan.send.append(s.id)
    return plan


# ---------------------------------------------------------------- images behind a tag
DIGESTS_LINE = re.compile(r"^image digests:((?: (?:sha256:[0-9a-f]{64}|-))+)[ \t]*$", re.MULTILINE | re.ASCII)


def reported_digests(output: str) -> tuple[str, ...] | None:
    """The digests deploy.sh's last "image digests:" line reports, or None (absent, or one unknown)."""
    found = DIGESTS_LINE.findall(output)
    digests = tuple(found[-1].split()) if found else ()
    return digests if digests and "-" not in digests else None


def stale_servers(
    servers: list[Server], wanted: dict[int, str], images_run: int, since: float, renewed: list[str]
) -> set[str]:
    """Servers of a group that run the tag of a rollout whose images changed (a tag pushed
    again) without running the images it names now: wanted {image index: digest}.
    images_run: how many of the images the group's servers run (web 2, others 1). A server
    this rollout has deployed to (renewed), or launched since it began (it pulled the tag
    after the push), is not stale: a digest it cannot report does not roll it again."""
    stale = set()
    for s in servers:
        if s.id in renewed or s.launched > since or s.gone:
            continue
        for index, digest in wanted.items():
            if index < images_run and (index >= len(s.digests) or s.digests[index] != digest):
                stale.add(s.id)
    return stale


def agreed_digests(servers: list[tuple[Server, int]], version: str, images: list[str]) -> dict[str, str]:
    """{image: digest} that every server settled on `version` reports, for each image some
    server reports; {} when they disagree or none reports (servers: (server, images it runs))."""
    seen: dict[int, set[str]] = {}
    for s, images_run in servers:
        if s.gone or s.journal is not None or s.version != version:
            continue
        for index in range(images_run):
            seen.setdefault(index, set()).add(s.digests[index] if index < len(s.digests) else "")
    if not seen or any(len(values) != 1 or "" in values for values in seen.values()):
        return {}
    return {images[index]: values.pop() for index, values in sorted(seen.items()) if index < len(images)}


# ---------------------------------------------------------------- other decisions
def failure_reason(error: Any) -> str:
    """A short reason from a Step Functions Catch output ({"Error", "Cause"})."""
    if not isinstance(error, dict):
        return str(error)[:NOTICE_REASON]
    cause = error.get("Cause", "")
    try:
        cause = json.loads(cause).get("errorMessage", cause)
    except (TypeError, ValueError, AttributeError):
        pass
    return f"{error.get('Error', 'Error')}: {cause}"[:NOTICE_REASON]


def queue_position(executions: list[dict[str, Any]], mine: str) -> list[str]:
    """Running executions that started before `mine` (they go first)."""
    running = sorted(executions, key=lambda e: (e["startDate"], e["executionArn"]))
    ahead: list[str] = []
    for execution in running:
        if execution["executionArn"] == mine:
            return ahead
        ahead.append(execution["executionArn"])
    return ahead


def handled_record(
    desired_version: int,
    version: str,
    result: str,
    execution: str,
    reason: str,
    deployed: str = "",
    digests: dict[str, str] | None = None,
) -> str:
    """The rollout-last value: valid JSON within SSM's 4,096 characters, whatever it holds.

    deployed, digests: the deployed version after the rollout and the images ({image:
    sha256 digest}) the servers running it reported, when they all agree (upgrade on push
    tells a tag pushed again with new images from the one that runs by them)."""
    reason = reason[:NOTICE_REASON]
    extra: dict[str, Any] = {}
    if deployed and digests:
        kept = {k[:300]: v[:80] for k, v in list(digests.items())[:2]}
        extra = {"deployed": deployed[:200], "digests": kept}
    while True:  # escapes can multiply a reason's length: shorten it until the record fits
        text = json.dumps(
            {
                "desired_version": desired_version,
                "version": version[:200],
                "result": result,
                "execution": execution[-200:],
                "reason": reason,
                **extra,
            }
        )
        if len(text) <= 4096:
            return text
        reason = reason[: len(reason) // 2]


def same_handling(old: str, new: str) -> bool:
    """Whether two rollout-last records tell the same handling (the images recorded aside)."""

    def core(text: str) -> dict[str, Any]:
        return {k: v for k, v in read_handled(text).items() if k not in ("deployed", "digests")}

    return bool(read_handled(old)) and core(old) == core(new)
