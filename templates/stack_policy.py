"""The stack policy that guards the stack's data against replacement and deletion.

A stack policy is not part of a template: it is set on the stack once, at creation
(`aws cloudformation create-stack --stack-policy-body file://dist/policy/stack-policy.json`)
or afterwards (`aws cloudformation set-stack-policy`). With it, an update that would
replace or remove the database, the cache, the media bucket or the app secret fails
before it touches them, whatever the template says. An operator who truly means it
passes a temporary `--stack-policy-during-update-body` for that one update.

The template's own guards stay in place without it: DeletionPolicy and
UpdateReplacePolicy (Snapshot or Retain) on every stateful resource, and deletion
protection on the database (parameter DatabaseDeletionProtection).
"""

from __future__ import annotations

from typing import Any

from templates.data import CACHE, DATABASE, MEDIA_BUCKET
from templates.secrets import APP_SECRET

# Resources whose replacement or deletion loses users' data or the keys to it.
# Never rename their logical IDs: a new logical ID is a new resource.
PROTECTED_RESOURCES = (DATABASE, CACHE, MEDIA_BUCKET, APP_SECRET)


def stack_policy() -> dict[str, Any]:
    return {"Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "Update:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "Action": ["Update:Replace", "Update:Delete"],
         "Resource": [f"LogicalResourceId/{name}" for name in PROTECTED_RESOURCES]},
    ]}
