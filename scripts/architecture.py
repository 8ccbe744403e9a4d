"""An SVG picture of a built template: its resources by tier and how traffic flows.

Drawn from the template itself, so it changes when the template does. The top row
follows a request from left to right (viewer → edge → load balancing → servers →
data); an arrow joins two resources when one refers to the other, directly, through
the resources it owns (a launch template, a role) or through a connector between
them (a listener, a bucket policy). The bottom row holds the tiers that serve the
others (network, secrets and identity, mail and DNS, upgrades and operations); each
of their resources names the top-row resources that use it. Minor resources are
counted under their tier instead of drawn.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

# (tier, title, resource type prefixes); top-row tiers first, in the order traffic flows.
TIERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("edge", "Edge", ("AWS::CloudFront::", "AWS::WAFv2::", "AWS::CertificateManager::",
                      "Custom::CloudFrontCertificate")),
    ("balancing", "Load balancing", ("AWS::ElasticLoadBalancingV2::", "Custom::ManagedPrefixList")),
    ("servers", "Servers", ("AWS::AutoScaling::", "AWS::EC2::LaunchTemplate", "AWS::IAM::InstanceProfile",
                            "AWS::CloudFormation::WaitConditionHandle", "AWS::ApplicationAutoScaling::")),
    ("data", "Data", ("AWS::RDS::", "AWS::ElastiCache::", "AWS::S3::", "Custom::DatabaseSettings")),
    ("network", "Network", ("AWS::EC2::", "Custom::AvailabilityZones")),
    ("secrets", "Secrets and identity", ("AWS::SecretsManager::", "AWS::KMS::", "AWS::IAM::", "Custom::")),
    ("mail", "Mail and DNS", ("AWS::SES::", "AWS::Route53::")),
    ("operations", "Upgrades and operations", ("",)),
)
TOP_TIERS = ("edge", "balancing", "servers", "data")

# Drawn as boxes; every other resource is counted under its tier.
MAIN_TYPES = frozenset({
    "AWS::CloudFront::Distribution", "AWS::WAFv2::WebACL",
    "AWS::ElasticLoadBalancingV2::LoadBalancer", "AWS::ElasticLoadBalancingV2::TargetGroup",
    "AWS::AutoScaling::AutoScalingGroup",
    "AWS::RDS::DBInstance", "AWS::ElastiCache::ReplicationGroup", "AWS::S3::Bucket",
    "AWS::EC2::VPC", "AWS::EC2::NatGateway",
    "AWS::SecretsManager::Secret", "AWS::KMS::Key",
    "AWS::SES::EmailIdentity",
    "AWS::SSM::Parameter", "AWS::Events::Rule", "AWS::Scheduler::Schedule",
    "AWS::StepFunctions::StateMachine", "AWS::Lambda::Function", "AWS::SNS::Topic",
})
# Resources that join two others without either referring to the other.
CONNECTOR_TYPES = frozenset({
    "AWS::ElasticLoadBalancingV2::Listener", "AWS::ElasticLoadBalancingV2::ListenerRule",
    "AWS::S3::BucketPolicy", "AWS::WAFv2::WebACLAssociation",
})
# Referring to one of these says nothing about what it refers to in turn.
OPAQUE_TYPES = ("AWS::EC2::SecurityGroup", "AWS::EC2::Subnet", "Custom::")

BOX_W, BOX_H, COL_W, ROW_H = 220, 46, 280, 62
MARGIN, TOP = 30, 120
FONT = "font-family='Helvetica, Arial, sans-serif'"


def tier_of(resource_type: str) -> str:
    for name, _, prefixes in TIERS:
        if resource_type.startswith(prefixes):
            return name
    return "operations"


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else str(value).split(".")[0])
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                found.update(m.split(".")[0] for m in re.findall(r"\$\{([^!}][^}]*)\}", text))
            elif key == "DependsOn":
                continue
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


@dataclass(frozen=True)
class Graph:
    nodes: dict[str, str]  # logical ID → type, main resources only
    tiers: dict[str, list[str]]  # tier → main logical IDs, sorted
    others: dict[str, dict[str, int]]  # tier → minor type → count
    links: set[tuple[str, str]]  # (user, used) between main resources


def graph(template: Mapping[str, Any]) -> Graph:
    resources: dict[str, dict[str, Any]] = template["Resources"]
    direct = {name: {r for r in _refs({k: v for k, v in res.items() if k != "Metadata"}) if r in resources}
              for name, res in resources.items()}
    nodes = {name: r["Type"] for name, r in resources.items() if r["Type"] in MAIN_TYPES}

    def reach(name: str) -> set[str]:
        """Main resources a resource uses, looking through the minor resources it uses.

        A connector looks through other connectors too (a listener rule joins its
        target group to the load balancer of its listener).
        """
        connector = resources[name]["Type"] in CONNECTOR_TYPES
        seen: set[str] = set()
        found: set[str] = set()
        stack = list(direct[name])
        while stack:
            current = stack.pop()
            if current in seen or current == name:
                continue
            seen.add(current)
            if current in nodes:
                found.add(current)
            elif resources[current]["Type"].startswith(OPAQUE_TYPES):
                continue
            elif connector or resources[current]["Type"] not in CONNECTOR_TYPES:
                stack.extend(direct[current])
        return found

    links = {(user, used) for user in nodes for used in reach(user)}
    for name, resource in resources.items():
        if resource["Type"] in CONNECTOR_TYPES:
            joined = sorted(reach(name))
            top = [n for n in joined if tier_of(nodes[n]) in TOP_TIERS]
            links |= {(a, b) for a in top for b in top if a < b}
    tiers: dict[str, list[str]] = {name: [] for name, _, _ in TIERS}
    others: dict[str, dict[str, int]] = {name: {} for name, _, _ in TIERS}
    for name, resource in sorted(resources.items()):
        tier = tier_of(resource["Type"])
        if name in nodes:
            tiers[tier].append(name)
        else:
            short = short_type(resource["Type"])
            others[tier][short] = others[tier].get(short, 0) + 1
    return Graph(nodes=nodes, tiers=tiers, others=others, links=links)


def short_type(resource_type: str) -> str:
    return resource_type.split("::", 1)[1].replace("ElasticLoadBalancingV2", "ELBv2")


def _box(x: float, y: float, title: str, subtitle: str, fill: str) -> list[str]:
    return [
        f"<rect x='{x}' y='{y}' width='{BOX_W}' height='{BOX_H}' rx='6' fill='{fill}' stroke='#445'/>",
        f"<text x='{x + 8}' y='{y + 19}' font-size='13' font-weight='bold' {FONT}>{escape(title)}</text>",
        f"<text x='{x + 8}' y='{y + 36}' font-size='11' fill='#334' {FONT}>{escape(subtitle)}</text>",
    ]


COLOURS = {"edge": "#e8f0fe", "balancing": "#fff4e5", "servers": "#e6f4ea", "data": "#fce8e6",
           "network": "#f1f3f4", "secrets": "#f3e8fd", "mail": "#e0f7fa", "operations": "#fef7e0"}


def svg(template: Mapping[str, Any], title: str = "Mastodon on AWS") -> str:
    """The picture as SVG text (deterministic: the same template gives the same bytes)."""
    g = graph(template)
    titles = {name: label for name, label, _ in TIERS}
    positions: dict[str, tuple[float, float]] = {}
    out: list[str] = []
    x: float
    y: float

    # Top row: viewer, then one column per top tier.
    viewer_x = MARGIN
    out += _box(viewer_x, TOP + 30, "viewer", "browsers, apps, other servers", "#ffffff")
    top_height = 0.0
    for column, tier in enumerate(TOP_TIERS, start=1):
        x = MARGIN + column * COL_W
        out.append(f"<text x='{x}' y='{TOP}' font-size='15' font-weight='bold' {FONT}>{titles[tier]}</text>")
        y = TOP + 30
        for name in g.tiers[tier]:
            positions[name] = (x, y)
            out += _box(x, y, name, short_type(g.nodes[name]), COLOURS[tier])
            y += ROW_H
        y = _minor(out, x, y, g.others[tier])
        top_height = max(top_height, y)

    edges: list[str] = []
    column_of = {name: TOP_TIERS.index(tier_of(kind)) for name, kind in g.nodes.items()
                 if tier_of(kind) in TOP_TIERS}
    distributions = [n for n, kind in g.nodes.items() if kind == "AWS::CloudFront::Distribution"]
    for name in distributions:
        x, y = positions[name]
        edges.append(_arrow(viewer_x + BOX_W, TOP + 30 + BOX_H / 2, x, y + BOX_H / 2, None))
    for a, b in sorted(g.links):
        if a not in column_of or b not in column_of or column_of[a] == column_of[b]:
            continue
        source, target = (a, b) if column_of[a] < column_of[b] else (b, a)
        (x1, y1), (x2, y2) = positions[source], positions[target]
        edges.append(_arrow(x1 + BOX_W, y1 + BOX_H / 2, x2, y2 + BOX_H / 2,
                            TOP - 40 if column_of[target] - column_of[source] > 1 else None))

    # Bottom row: the supporting tiers, each resource captioned with its users.
    bottom = top_height + 50
    users: dict[str, list[str]] = {}
    for user, used in g.links:
        if used in g.nodes and tier_of(g.nodes[used]) not in TOP_TIERS and user != used:
            users.setdefault(used, []).append(user)
    bottom_height = bottom
    for column, tier in enumerate(t for t in titles if t not in TOP_TIERS):
        x = MARGIN + column * (COL_W + 60)
        out.append(f"<text x='{x}' y='{bottom}' font-size='15' font-weight='bold' {FONT}>"
                   f"{titles[tier]}</text>")
        y = bottom + 14
        for name in g.tiers[tier]:
            out += _box(x, y, name, short_type(g.nodes[name]), COLOURS[tier])
            used_by = sorted(u for u in users.get(name, []) if tier_of(g.nodes[u]) in TOP_TIERS)
            y += BOX_H + 4
            if used_by:
                y = _wrapped(out, x, y + 10, "used by " + ", ".join(used_by), 44)
            y += 10
        y = _minor(out, x, y, g.others[tier])
        bottom_height = max(bottom_height, y)

    width = MARGIN * 2 + max(len(TOP_TIERS) + 1, 0) * COL_W
    height = bottom_height + 30
    count = len(template["Resources"])
    header = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height:.0f}' "
        f"viewBox='0 0 {width} {height:.0f}'>",
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='7' "
        "markerHeight='7' orient='auto-start-reverse'><path d='M 0 0 L 10 5 L 0 10 z' fill='#2a5db0'/>"
        "</marker></defs>",
        f"<rect width='{width}' height='{height:.0f}' fill='#ffffff'/>",
        f"<text x='{MARGIN}' y='40' font-size='22' font-weight='bold' {FONT}>{escape(title)}</text>",
        f"<text x='{MARGIN}' y='64' font-size='12' fill='#334' {FONT}>Generated from the built "
        f"template ({count} resources) by scripts/architecture.py. Arrows: traffic and use, left to "
        "right; bottom row: what the tiers above use.</text>",
    ]
    return "\n".join([*header, *edges, *out, "</svg>"]) + "\n"


def _arrow(x1: float, y1: float, x2: float, y2: float, over: float | None) -> str:
    if over is None:
        path = f"M {x1} {y1} C {x1 + 35} {y1}, {x2 - 35} {y2}, {x2} {y2}"
    else:  # skip the columns in between along the top
        path = f"M {x1} {y1} C {x1 + 60} {over}, {x2 - 60} {over}, {x2} {y2}"
    return f"<path d='{path}' fill='none' stroke='#2a5db0' stroke-width='1.6' marker-end='url(#arrow)'/>"


def _wrapped(out: list[str], x: float, y: float, text: str, width: int) -> float:
    line = ""
    for word in text.split(" "):
        if line and len(line) + len(word) + 1 > width:
            out.append(f"<text x='{x + 4}' y='{y}' font-size='10.5' fill='#555' {FONT}>{escape(line)}</text>")
            y += 13
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        out.append(f"<text x='{x + 4}' y='{y}' font-size='10.5' fill='#555' {FONT}>{escape(line)}</text>")
        y += 13
    return y


def _minor(out: list[str], x: float, y: float, counts: Mapping[str, int]) -> float:
    if not counts:
        return y
    text = "and " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    return _wrapped(out, x, y + 12, text, 44)
