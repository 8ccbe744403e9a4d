"""The rollout function's entry point: a task input in, the next state out.

The state machine (templates/pipeline.py) calls it with {"action", "state"} (and
"phase" for migrate and verify) and waits between calls for as long as the answer's
"wait" says; "next" tells it where to go. A malformed input fails here, with its
reason, before any AWS call.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.rollout import steps
from lambdas.rollout.aws import logger
from lambdas.rollout.names import (
    BEGIN,
    FAILED,
    FINISH,
    MIGRATE,
    RECORD,
    ROLLBACK,
    VALIDATE,
    VERIFY,
    WEB,
    WORKER,
)
from lambdas.rollout.state import State

ACTIONS = {
    BEGIN: steps.begin,
    VALIDATE: steps.validate,
    MIGRATE: steps.migrate,
    WEB: steps.web,
    WORKER: steps.worker,
    RECORD: steps.record,
    VERIFY: steps.verify,
    ROLLBACK: steps.rollback,
    FINISH: steps.finish,
}
# Steps of a rollout under way, stopped once it has run too long.
BOUNDED = {VALIDATE, MIGRATE, WEB, WORKER, RECORD, VERIFY}


def parse_event(event: Any) -> tuple[str, str | None, State]:
    """(action, phase, state) of a task input; ValueError when malformed."""
    if not isinstance(event, dict):
        raise ValueError(f"the task input must be an object, not {type(event).__name__}")
    action, raw = event.get("action"), event.get("state")
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {sorted(ACTIONS)}")
    if not isinstance(raw, dict):
        raise ValueError("the task input has no 'state' object")
    phase = event.get("phase")
    if action in steps.PHASED and phase not in steps.PHASED[action]:
        raise ValueError(
            f"{action} needs phase {' or '.join(map(repr, steps.PHASED[action]))}, not {phase!r}"
        )
    state = State.parse(raw)
    if action not in (BEGIN, FINISH) and state.target is None:
        raise ValueError(f"{action} needs a state with a target version (from begin)")
    return action, phase, state


def run(action: str, phase: str | None, state: State) -> State:
    if action in BOUNDED and not state.switched:  # past the switch, each step has its own bound
        late = steps.over_time(state)
        if late:
            state.next, state.failure, state.wait = FAILED, late, 0
            return state
    if phase is not None:
        return ACTIONS[action](state, phase)  # type: ignore[operator]
    return ACTIONS[action](state)  # type: ignore[operator]


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    action, phase, state = parse_event(event)
    logger.append_keys(action=action, phase=phase, target=state.target)
    return run(action, phase, state).to_dict()
