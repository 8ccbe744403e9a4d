"""Small partial-match helpers over a template dict, in the spirit of CDK assertions."""

from __future__ import annotations

import re
from typing import Any

Template = dict[str, Any]


def resources(template: Template, resource_type: str) -> dict[str, dict[str, Any]]:
    """Every resource of a type, by logical ID."""
    return {name: r for name, r in template["Resources"].items() if r["Type"] == resource_type}


def one(template: Template, resource_type: str) -> tuple[str, dict[str, Any]]:
    found = resources(template, resource_type)
    assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
    return next(iter(found.items()))


def props(template: Template, logical_id: str) -> dict[str, Any]:
    return template["Resources"][logical_id].get("Properties", {})


def matches(actual: Any, expected: Any) -> bool:
    """True when `expected` is contained in `actual` (dicts by key, lists by element)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and matches(actual[k], v) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and all(any(matches(a, e) for a in actual) for e in expected)
    return actual == expected


def has_properties(template: Template, resource_type: str, expected: dict[str, Any]) -> list[str]:
    """Logical IDs of resources of the type whose properties contain `expected`."""
    return [name for name, r in resources(template, resource_type).items()
            if matches(r.get("Properties", {}), expected)]


def walk(node: Any, path: str = ""):
    """Yield (path, value) for every scalar in a nested structure."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")
    else:
        yield path, node


def refs(node: Any) -> set[str]:
    """Logical IDs a node refers to by Ref, GetAtt or ${...} in Sub."""
    found: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "Ref" and isinstance(v, str):
                found.add(v)
            elif k == "Fn::GetAtt":
                found.add(v[0] if isinstance(v, list) else v.split(".")[0])
            elif k == "Fn::Sub":
                text = v if isinstance(v, str) else v[0]
                found.update(m.split(".")[0] for m in re.findall(r"\$\{([^!][^}]*)\}", text))
            found |= refs(v)
    elif isinstance(node, list):
        for v in node:
            found |= refs(v)
    return found


def shellchecks() -> list[str]:
    """Every shellcheck at hand: the test extra's (beside this Python) and the system's.

    Their versions differ (Debian's is older and flags things the newer one does not);
    a script must pass both.
    """
    import shutil
    import sys
    from pathlib import Path

    found = [Path(sys.executable).parent / "shellcheck", Path(shutil.which("shellcheck") or "/nonexistent"),
             Path("/usr/bin/shellcheck")]
    unique: list[str] = []
    for path in found:
        if path.exists() and str(path.resolve()) not in {str(Path(u).resolve()) for u in unique}:
            unique.append(str(path))
    return unique


def shellcheck() -> str | None:
    """The first shellcheck at hand (see shellchecks)."""
    found = shellchecks()
    return found[0] if found else None


# Every growth option of issue 13 turned on, each at a setting that reaches its widest
# branch: what the checkov and cfn-lint scans "with all options on" use.
ALL_OPTIONS_ON = {
    "QueueWorkerMinSize": "1", "QueueWorkerMaxSize": "4",
    "SearchEnabled": "true", "SearchInstanceCount": "2",  # zone awareness
    "SeparateCacheNodeType": "cache.t4g.micro", "CacheReplica": "failover",
    "DatabasePooler": "true", "DatabaseReplicaClass": "db.t4g.micro",
    "MastodonSettings": "true",
    "MastodonSettingsSecretArn":
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:mastodon-settings-AbC123",
    # Your own images (issue 15), both in the stack's own ECR registry (the grants'
    # conditions), with upgrade on push.
    "WebImageRepository": "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/mastodon",
    "StreamingImageRepository": "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/mastodon-streaming",
    "UpgradeOnImagePush": "true", "RollRepushedTags": "true", "InitialMastodonVersion": "v4.7.6-glitch",
}
