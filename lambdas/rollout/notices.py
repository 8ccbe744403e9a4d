"""What the operator is told when a rollout ends: only what was verified.

Pure functions over the final state and what finish() observed; each notice says
what failed, what changed, what the servers run now, and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from lambdas.rollout.names import DOWNGRADE_FLAG, POST
from lambdas.rollout.plan import failure_reason
from lambdas.rollout.state import State


@dataclass(frozen=True)
class Observed:
    """Facts finish() read from AWS for the notice."""

    deployed: str  # deployed-version now
    scaling: str | None  # why the held scaling processes could not be resumed, or None
    stray: list[str]  # servers still journalled by this rollout (out of service, unknown version)


def success(state: State, observed: Observed) -> tuple[str, str]:
    target = state.target
    message = f"Every server runs {target}; new servers boot it (deployed-version is {observed.deployed})."
    if state.digests:
        message += f" {target} had been pushed again: every server restarted with its new images."
    invalidation = state.other.get("invalidation") or {}
    if invalidation.get("done"):
        message += " CloudFront was invalidated."
    warning = state.other.get("warning")
    if warning:
        message += f" Warning: {warning if isinstance(warning, str) else failure_reason(warning)}"
    return f"Mastodon upgraded to {target}", message + _scaling(observed)


def failure(state: State, reason: str, observed: Observed) -> tuple[str, str]:
    target = state.target
    if not target:  # begin never completed
        return "Mastodon upgrade could not start", (
            f"The upgrade rollout could not start: {reason}. Nothing was changed. "
            "Put the desired version again to retry." + _scaling(observed)
        )
    subject = f"Mastodon upgrade to {target} failed"
    rollback_error = state.other.get("rollback_error")
    if state.switched:
        return _after_switch(state, reason, observed)
    if state.digests and (state.rolling_back or rollback_error):
        # A tag pushed again names only its new images: no way back to the ones it replaced.
        return subject, (
            f"The rollout of {target}, pushed again with new images, failed: {reason}. The images the "
            f"tag named before cannot be pulled by it any more, so some servers may run them and others "
            f"the new ones. Push images that work under a new tag (or again under {target}) to repair."
            + _scaling(observed)
        )
    if rollback_error or (state.rolling_back and not state.restored):
        why = (
            failure_reason(rollback_error) if rollback_error else "it did not end with every server restored"
        )
        stray = (
            f" Servers still out of service or of unknown version: {', '.join(observed.stray)}."
            if observed.stray
            else ""
        )
        return subject, (
            f"The upgrade to {target} failed: {reason}; the rollback to {state.previous} failed too ({why}). "
            f"Servers may run either version; deployed-version is {observed.deployed}.{stray} "
            f"Repair by hand: put {state.previous} again into the desired-version parameter "
            f"(add ' {DOWNGRADE_FLAG}' after it if it is older than a version a server ran, "
            "or either is not a release tag)." + _scaling(observed)
        )
    if state.rolling_back:
        return subject, (
            f"The upgrade to {target} failed: {reason}. Every server runs the previous version, "
            f"{state.previous}, "
            f"again (checked "
            f"after the rollback: each server's version tag, each web server healthy); deployed-version is "
            f"{observed.deployed}, the version new servers boot." + _scaling(observed)
        )
    return subject, f"The upgrade to {target} failed: {reason}. Nothing was changed." + _scaling(observed)


def _after_switch(state: State, reason: str, observed: Observed) -> tuple[str, str]:
    target = state.target
    boot = (
        f"new servers boot it too (deployed-version is {target})."
        if observed.deployed == target
        else f"but new servers boot {observed.deployed} (deployed-version): put {target} into the "
        "deployed-version parameter by hand."
    )
    migration = state.migration
    todo = (
        " The post-deployment migrations ran."
        if migration and migration.phase == POST and migration.done
        else " The post-deployment migrations may have run partly or not at all: fix the cause, then run "
        f"them on the worker: {state.config.deploy_script} migrate post {target} (Session Manager or "
        "Run Command); putting the desired version again does not re-run them."
    )
    stray = f" Servers still out of service: {', '.join(observed.stray)}." if observed.stray else ""
    return f"Mastodon upgrade to {target}: post-deployment step failed", (
        f"Every server was upgraded to {target}, then a later step failed: {reason}. Every server runs "
        f"{target}; {boot} Nothing was "
        f"rolled back, since the database may already carry part of the post-deployment migrations."
        f"{todo}{stray}" + _scaling(observed)
    )


def _scaling(observed: Observed) -> str:
    return f" Warning: {observed.scaling}" if observed.scaling else ""
