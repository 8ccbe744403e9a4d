"""Reading versions: the desired-version value, the order of release tags, the handled record.

Apart from plan.py so that the push function (push.py) is assembled with these alone;
plan.py imports them, and the rollout reads versions through it as before.
"""

from __future__ import annotations

import json
import re
from typing import Any

from lambdas.rollout.names import DOWNGRADE_FLAG


def parse_desired(value: str) -> tuple[str, bool]:
    """(tag, downgrade allowed) of the desired-version value: "v4.7.6" or "v4.7.5 allow-downgrade"."""
    words = value.split(" ")
    if len(words) == 2 and words[1] == DOWNGRADE_FLAG:
        return words[0], True
    return value, False


def order_key(tag: str) -> tuple[int, ...] | None:
    """A sort key for a release tag (a pre-release before its release), or None."""
    match = re.fullmatch(r"v([0-9]+)\.([0-9]+)\.([0-9]+)(?:-(alpha|beta|rc)\.([0-9]+))?", tag, re.ASCII)
    if not match:
        return None
    major, minor, patch, pre, number = match.groups()
    rank = {"alpha": 0, "beta": 1, "rc": 2, None: 3}[pre]
    return int(major), int(minor), int(patch), rank, int(number or 0)


def read_handled(text: str) -> dict[str, Any]:
    """The rollout-last record; an unreadable one counts as none (nothing handled)."""
    try:
        record = json.loads(text or "{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}
