"""The rollout's state: what the state machine hands from one step to the next.

One typed value instead of a dict rebuilt in every step. It is only a cache of
progress: what a step changes in AWS is journalled in AWS first (tags on the servers
and the web group, markers on Run Command invocations), so a step that is retried
with an older state finds its own work there. Keys this function does not own (the
invalidation's, the state machine's Catch results) are kept as they came.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lambdas.rollout.names import POST, PRE
from lambdas.rollout.plan import failure_reason


@dataclass(frozen=True)
class Config:
    """The stack's facts, the same for every step of an execution (templates/pipeline.py)."""

    web_group: str
    worker_group: str
    target_groups: list[str]
    desired_parameter: str
    deployed_parameter: str
    handled_parameter: str
    batch_size: int
    drain_seconds: int
    settle_seconds: int
    boot_grace: int
    topic_arn: str
    distribution_id: str
    images: list[str]
    tag_pattern: str
    deploy_script: str
    # The queue workers' group; "" when the option is off. A default, so that an execution
    # started before the stack gained the field goes on without it.
    queue_group: str = ""
    # RollRepushedTags: a tag the servers run, pushed again with new images and put into
    # desired-version again, is rolled as a new version (upgrade on push).
    roll_repushed: bool = False

    @staticmethod
    def parse(raw: Any) -> Config:
        if not isinstance(raw, dict):
            raise ValueError("the state has no 'config' object")
        try:
            values = {
                f.name: raw[f.name] if f.default is dataclasses.MISSING else raw.get(f.name, f.default)
                for f in dataclasses.fields(Config)
            }
            for name in ("batch_size", "drain_seconds", "settle_seconds", "boot_grace"):
                values[name] = int(values[name])
        except KeyError as missing:
            raise ValueError(f"the state's config lacks {missing}") from None
        except (TypeError, ValueError):
            raise ValueError("the state's config has a size that is not a whole number") from None
        values["roll_repushed"] = str(values["roll_repushed"]).lower() == "true"
        if not isinstance(values["queue_group"], str):
            raise ValueError("the state's config has a queue_group that is not a name")
        if not 1 <= values["batch_size"] <= 50:
            raise ValueError(f"batch_size must be 1 to 50, not {values['batch_size']}")
        return Config(**values)


@dataclass
class Migration:
    phase: str
    id: str
    instance: str
    since: float
    done: bool = False


@dataclass
class State:
    config: Config
    execution: str
    state_machine: str
    next: str = ""
    wait: int = 0
    target: str | None = None  # the version being rolled out
    previous: str | None = None  # deployed-version when the rollout began
    desired_version: int | None = None  # the desired-version parameter's version handled
    allow_downgrade: bool = False
    started: float | None = None
    queued_since: float | None = None
    migration: Migration | None = None
    # The pull-ahead (with the pre-deployment migrations): {server: [command, sent at]},
    # the servers whose pull finished, and a pull's failure, reported once the migration ends.
    pulls: dict[str, list[Any]] = field(default_factory=dict)
    pulled: list[str] = field(default_factory=list)
    pull_failure: str | None = None
    flight: dict[str, list[str]] = field(default_factory=dict)  # per group: on the target, failing checks
    lost: list[str] = field(default_factory=list)  # servers that vanished while failing on the target
    # Web servers settled on the target that fail their health checks during the web step:
    # {server: since when} (a failure of the release once HEALTH_TIMEOUT has passed).
    sick: dict[str, float] = field(default_factory=dict)
    recorded: bool = False  # deployed-version was set to the target
    switched: bool = False  # the post-deployment migrations may have started: no way back
    verify_since: float | None = None
    verify_started: float | None = None
    rolling_back: bool = False
    rollback_started: float | None = None
    restored: bool | None = None  # after a rollback: verified on the previous version
    failure: str | None = None
    held: bool = False  # the web and queue groups' scaling is held (their hold tags are the record)
    worker_wait: float | None = None  # since when migrate has waited for a worker in service
    finish_tries: int = 0  # finish's attempts to resume scaling
    # A tag pushed again: the images it names now ({image: digest}), and the servers this
    # rollout has deployed them to. Empty for any other rollout.
    digests: dict[str, str] = field(default_factory=dict)
    renewed: list[str] = field(default_factory=list)
    other: dict[str, Any] = field(default_factory=dict)  # keys of others, passed through

    @staticmethod
    def parse(raw: dict[str, Any]) -> State:
        config = Config.parse(raw.get("config"))
        execution, machine = raw.get("execution"), raw.get("state_machine")
        if not isinstance(execution, str) or not isinstance(machine, str):
            raise ValueError("the state lacks the execution and state machine ARNs")
        values = {k: v for k, v in raw.items() if k in OWN - {"config", "migration"}}
        migration = raw.get("migration")
        if isinstance(migration, dict) and migration.get("phase") in (PRE, POST):
            values["migration"] = Migration(
                **{k: migration[k] for k in ("phase", "id", "instance", "since")},
                done=bool(migration.get("done")),
            )
        values["wait"] = int(values.get("wait") or 0)
        digests, renewed = values.get("digests"), values.get("renewed")
        if digests is not None:
            ok = isinstance(digests, dict) and all(isinstance(v, str) for v in digests.values())
            values["digests"] = {str(k): v for k, v in digests.items()} if ok else {}
        if renewed is not None:
            values["renewed"] = [str(i) for i in renewed] if isinstance(renewed, list) else []
        return State(config=config, other={k: v for k, v in raw.items() if k not in OWN}, **values)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "other"}
        data["config"] = dataclasses.asdict(self.config)
        data["migration"] = dataclasses.asdict(self.migration) if self.migration else None
        return {**self.other, **data}

    @property
    def short_execution(self) -> str:
        """The execution's name: unique per state machine, short enough for a tag."""
        return self.execution.rsplit(":", 1)[-1][-80:]

    def fresh(self) -> State:
        """What a rollout starts from: the execution's facts, nothing of an earlier rollout."""
        return State(config=self.config, execution=self.execution, state_machine=self.state_machine)

    def forward_failure(self) -> str | None:
        """The failure being handled: a step's own, or an error the state machine caught."""
        if self.failure:
            return self.failure
        error = self.other.get("error")
        return failure_reason(error) if error else None


# The keys this function owns; any other key of the state is passed through as it came.
OWN = {f.name for f in dataclasses.fields(State)} - {"other"}
