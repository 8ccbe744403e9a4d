"""An SVG picture of a built template: the flows a newcomer follows through the stack.

Each band is one flow, read from left to right: a request from the viewer to the
data, media from CloudFront to S3, what the worker uses, what every server reads at
boot, an upgrade from the desired-version parameter to the servers and the
invalidation, the alerts, the housekeeping, and the custom resources CloudFormation
runs once. The flows are declared here (`FLOWS`); the boxes and numbers come from
the template: a box whose resource the template lacks is left out with its arrows,
ports, health paths and schedules are read from the resources, and what no flow
draws is counted by type at the bottom, so the picture changes when the template
does. Every arrow between two resources is a reference in the template (a test
checks it; `IMPLIED` lists the few that are not, with the reason).

The geometry is computed before any SVG is written (`layout`): labels sit inside
their boxes, arrows run only through the gaps between columns, so no arrow crosses
a label or a heading; the tests check that on the layout and render the SVG.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any
from xml.sax.saxutils import escape

Template = Mapping[str, Any]
Text = str | Callable[[Template], str]


@dataclass(frozen=True)
class Step:
    """One box: `key` is unique in its flow; `resource` is the logical ID it stands for."""

    key: str
    title: Text
    detail: Text = ""
    resource: str | None = None


@dataclass(frozen=True)
class Flow:
    """Columns of boxes, left to right; arrows join boxes of neighbouring columns.

    Without `edges`, every box of a column points to every box of the next one.
    """

    heading: str
    columns: tuple[tuple[Step, ...], ...]
    edges: tuple[tuple[str, str], ...] | None = None


def _prop(resource: str, name: str) -> Callable[[Template], str]:
    return lambda t: str(t["Resources"][resource]["Properties"][name])


def _route(target_group: str, rule: str | None) -> Callable[[Template], str]:
    """The path a listener rule sends to a target group, and the group's port."""
    def text(t: Template) -> str:
        port = t["Resources"][target_group]["Properties"]["Port"]
        if rule is None or rule not in t["Resources"]:
            return f"everything else → :{port}"
        paths = [c["PathPatternConfig"]["Values"][0] for c in t["Resources"][rule]["Properties"]["Conditions"]
                 if c["Field"] == "path-pattern"]
        return f"{paths[0]} → :{port}"
    return text


def _count(kind: str, what: str) -> Callable[[Template], str]:
    return lambda t: f"{sum(r['Type'] == kind for r in t['Resources'].values())} {what}"


VIEWER = Step("viewer", "viewer", "browser, app, other server")
CLOUDFRONT = Step("cloudfront", "CloudFront", "one domain, HTTPS, WAF", "Distribution")
WEB = Step("web", "web servers", "Puma and streaming", "WebAutoScalingGroup")
WORKER = Step("worker", "worker", "Sidekiq, one server", "WorkerAutoScalingGroup")
DATABASE = Step("database", "PostgreSQL", "RDS", "Database")
CACHE = Step("cache", "Valkey", "ElastiCache, TLS", "Cache")
MEDIA = Step("media", "S3 media bucket", "private", "MediaBucket")
RUN_COMMAND = Step("run", "Run Command", "SSM, on the servers")

FLOWS: tuple[Flow, ...] = (
    Flow("Request path: a page, an API call, a WebSocket", (
        (VIEWER,),
        (CLOUDFRONT,),
        (Step("origin", "VPC origin", "private way into the VPC", "LoadBalancerVpcOrigin"),),
        (Step("alb", "load balancer", "internal, HTTPS only", "LoadBalancer"),),
        (Step("webtg", "web target group", _route("WebTargetGroup", None), "WebTargetGroup"),
         Step("streamtg", "streaming target group", _route("StreamingTargetGroup", "StreamingListenerRule"),
              "StreamingTargetGroup")),
        (Step("puma", "Puma", "on the web servers", "WebAutoScalingGroup"),
         Step("streaming", "streaming server", "on the web servers", "WebAutoScalingGroup")),
        (DATABASE, CACHE),
    ), edges=(("viewer", "cloudfront"), ("cloudfront", "origin"), ("origin", "alb"), ("alb", "webtg"),
              ("alb", "streamtg"), ("webtg", "puma"), ("streamtg", "streaming"), ("puma", "database"),
              ("puma", "cache"), ("streaming", "database"), ("streaming", "cache"))),
    Flow("Media path: uploaded files", (
        (VIEWER,),
        (Step("cloudfront", "CloudFront", "/system/*, cached", "Distribution"),),
        (Step("media", "S3 media bucket", "private, origin access control", "MediaBucket"),),
    )),
    Flow("What the worker uses (the web servers use the same stores)", (
        (WORKER,),
        (DATABASE, CACHE, MEDIA, Step("mail", "SES", "mail to users (SMTP)", "EmailIdentity")),
    )),
    Flow("What every server reads at boot", (
        (WEB, WORKER),
        (Step("secrets", "Secrets Manager", "every secret", "AppSecret"),
         Step("deployed", "deployed-version", "SSM: the version to boot", "DeployedVersionParameter"),
         Step("logs", "CloudWatch Logs", "where the containers log", "WebLogs")),
    )),
    Flow("Upgrade: the operator writes desired-version", (
        (Step("desired", "desired-version", "SSM parameter", "DesiredVersionParameter"),),
        (Step("trigger", "EventBridge rule", "on its change", "RolloutTrigger"),),
        (Step("machine", "Step Functions", "the rollout, step by step", "RolloutStateMachine"),),
        (Step("rollout", "rollout (Lambda)", "migrate, deploy, record", "RolloutFunction"),
         Step("invalidate", "invalidation (Lambda)", "last: clear the cache", "InvalidateFunction")),
        (RUN_COMMAND, Step("cloudfront", "CloudFront", "invalidated", "Distribution")),
        (WEB, WORKER),
    ), edges=(("desired", "trigger"), ("trigger", "machine"), ("machine", "rollout"),
              ("machine", "invalidate"), ("rollout", "run"), ("invalidate", "cloudfront"),
              ("run", "web"), ("run", "worker"))),
    Flow("Alerts", (
        (Step("alarms", "CloudWatch alarms", _count("AWS::CloudWatch::Alarm", "alarms"),
              "LoadBalancer5xxAlarm"),
         Step("failed", "rollout failed", "EventBridge rule", "RolloutFailureNotice"),
         Step("notice", "rollout notice", "Step Functions, at the end", "RolloutStateMachine")),
        (Step("topic", "SNS alert topic", "encrypted", "AlertTopic"),),
        (Step("email", "alert e-mail", "the AlertEmail parameter"),),
    )),
    Flow("Sidekiq queue workers (optional): scaled on the queues' latency", (
        (WORKER,),
        (Step("metrics", "queue metrics", "CloudWatch, every minute"),),
        (Step("latency", "latency alarms", "out > 30 s, in < 5 s", "QueueWorkerLatencyHighAlarm"),),
        (Step("scaling", "step scaling", "a server or two at a time", "QueueWorkerScaleOut"),),
        (Step("queue", "queue workers", "Sidekiq, no scheduler", "QueueWorkerAutoScalingGroup"),),
    )),
    Flow("Upgrade on push (optional): CI pushes both images to ECR", (
        (Step("ci", "your CI", "docker buildx --push"),),
        (Step("ecr", "Amazon ECR", "the two repositories"),),
        (Step("pushrule", "EventBridge rule", "ECR Image Action, PUSH", "ImagePushTrigger"),),
        (Step("push", "push (Lambda)", "both images have the tag?", "ImagePushFunction"),),
        (Step("desired", "desired-version", "then the upgrade above", "DesiredVersionParameter"),),
    )),
    Flow("Daily cleanup of remote media", (
        (Step("daily", "daily cleanup", _prop("DailyCleanupRule", "ScheduleExpression"),
              "DailyCleanupRule"),),
        (Step("run", "Run Command", "tootctl media remove"),),
        (WORKER,),
    )),
    Flow("Stack creation: custom resources CloudFormation runs once", (
        (Step("f1", "secrets (Lambda)", "generates them", "AppSecretsFunction"),
         Step("f2", "certificate (Lambda)", "in us-east-1", "CertificateFunction"),
         Step("f3", "prefix list (Lambda)", "CloudFront's origins", "PrefixListFunction")),
        (Step("r1", "Secrets Manager", "every secret", "AppSecret"),
         Step("r2", "CloudFront", "its certificate", "Distribution"),
         Step("r3", "security group", "admits only CloudFront", "LoadBalancerSecurityGroup")),
        (Step("f4", "zones (Lambda)", "availability zones", "AvailabilityZonesFunction"),
         Step("f5", "database settings", "Lambda", "DatabaseSettingsFunction"),
         Step("f6", "first version (Lambda)", "the parameter's value", "InitialParameterFunction")),
        (Step("r4", "subnets", "in two zones", "PublicSubnetA"),
         Step("r5", "PostgreSQL", "its settings", "Database"),
         Step("r6", "deployed-version", "SSM parameter", "DeployedVersionParameter")),
    ), edges=(("f1", "r1"), ("f2", "r2"), ("f3", "r3"), ("f4", "r4"), ("f5", "r5"), ("f6", "r6"))),
)

# Arrows that are no reference in the template, and why they are true all the same.
IMPLIED = frozenset({
    ("worker", "mail"),  # SMTP credentials of the SES identity's domain, from the secret
    ("web", "logs"), ("worker", "logs"),  # through the instance role and the launch template
})

BOX_W, BOX_H, GAP, ROW_GAP = 192, 50, 40, 12
MARGIN, HEADING_H, FLOW_GAP = 30, 26, 22
TITLE_SIZE, DETAIL_SIZE, ID_SIZE, HEADING_SIZE = 12.0, 10.5, 9.5, 14.0
# Widths of characters in ems, on the generous side of the sans-serif fonts a renderer
# may pick (Helvetica, Arial, DejaVu Sans, the widest); the tests measure the real
# width with cairo and compare.
NARROW, MIDDLE, WIDE = frozenset("il.,:;|!'()[]/ "), frozenset("fjrt*-"), frozenset("mwMW@%")
BOLD_FACTOR, MONO_EM = 1.12, 0.64


def char_em(char: str) -> float:
    if char in NARROW:
        return 0.34
    if char in MIDDLE:
        return 0.45
    if char in WIDE:
        return 1.0
    return 0.78 if char.isupper() else 0.65
FONT = "font-family='Helvetica, Arial, sans-serif'"
MONO = "font-family='DejaVu Sans Mono, monospace'"
COLOURS = ("#e8f0fe", "#fff4e5", "#e6f4ea", "#fce8e6", "#f3e8fd", "#fef7e0", "#e0f7fa", "#f1f3f4")


@dataclass(frozen=True)
class Label:
    text: str
    x: float  # left
    baseline: float
    size: float
    style: str  # bold, normal or mono

    @property
    def width(self) -> float:
        if self.style == "mono":
            return len(self.text) * self.size * MONO_EM
        ems = sum(char_em(c) for c in self.text)
        return ems * self.size * (BOLD_FACTOR if self.style == "bold" else 1.0)

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(left, top, right, bottom), from the ascent and descent of the font."""
        return (self.x, self.baseline - self.size * 0.95,
                self.x + self.width, self.baseline + self.size * 0.3)


@dataclass(frozen=True)
class Box:
    flow: int
    key: str
    resource: str | None
    x: float
    y: float
    labels: tuple[Label, ...]

    @property
    def rect(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.x + BOX_W, self.y + BOX_H)


@dataclass(frozen=True)
class Arrow:
    flow: int
    source: Box
    target: Box

    @property
    def points(self) -> tuple[tuple[float, float], tuple[float, float]]:
        return ((self.source.x + BOX_W, self.source.y + BOX_H / 2),
                (self.target.x, self.target.y + BOX_H / 2))


@dataclass
class Layout:
    width: float = 0
    height: float = 0
    headings: list[Label] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    arrows: list[Arrow] = field(default_factory=list)
    notes: list[Label] = field(default_factory=list)

    @property
    def labels(self) -> list[Label]:
        return [*self.headings, *(label for box in self.boxes for label in box.labels), *self.notes]


def _text(value: Text, template: Template) -> str:
    return value if isinstance(value, str) else value(template)


def drawn_resources(template: Template) -> set[str]:
    resources = template["Resources"]
    return {step.resource for flow in FLOWS for column in flow.columns for step in column
            if step.resource is not None and step.resource in resources}


def layout(template: Template, title: str = "Mastodon on AWS") -> Layout:
    resources = template["Resources"]
    result = Layout()
    result.headings.append(Label(title, MARGIN, 40, 22, "bold"))
    result.notes.append(Label(f"Generated from the built template ({len(resources)} resources) by "
                              "scripts/architecture.py. Each band is one flow, read from left to right; "
                              "white boxes are outside the stack.",
                              MARGIN, 62, 12, "normal"))
    y = 90.0
    widest = 0.0
    for number, flow in enumerate(FLOWS, start=1):
        result.headings.append(Label(f"{number}. {flow.heading}", MARGIN, y + HEADING_SIZE,
                                     HEADING_SIZE, "bold"))
        top = y + HEADING_H
        placed: dict[str, Box] = {}
        columns = [[s for s in column if s.resource is None or s.resource in resources]
                   for column in flow.columns]
        columns = [column for column in columns if column]
        rows = max(len(column) for column in columns)
        for index, column in enumerate(columns):
            x = MARGIN + index * (BOX_W + GAP)
            for row, step in enumerate(column):
                box_y = top + row * (BOX_H + ROW_GAP)
                labels = [Label(_text(step.title, template), x + 8, box_y + 17, TITLE_SIZE, "bold"),
                          Label(_text(step.detail, template), x + 8, box_y + 31, DETAIL_SIZE, "normal")]
                if step.resource:
                    labels.append(Label(step.resource, x + 8, box_y + 44, ID_SIZE, "mono"))
                placed[step.key] = Box(number, step.key, step.resource, x, box_y,
                                       tuple(label for label in labels if label.text))
                widest = max(widest, x + BOX_W)
        result.boxes += placed.values()
        column_of = {step.key: i for i, column in enumerate(columns) for step in column}
        edges = flow.edges if flow.edges is not None else tuple(
            (a.key, b.key) for left, right in pairwise(columns) for a in left for b in right)
        for source, target in edges:
            if source not in placed or target not in placed:
                continue
            if column_of[target] != column_of[source] + 1:
                raise ValueError(f"flow {number}: {source} → {target} skips a column")
            result.arrows.append(Arrow(number, placed[source], placed[target]))
        y = top + rows * (BOX_H + ROW_GAP) - ROW_GAP + FLOW_GAP

    others: dict[str, int] = {}
    drawn = drawn_resources(template)
    for name, resource in resources.items():
        if name not in drawn:
            kind = resource["Type"].split("::", 1)[1]
            others[kind] = others.get(kind, 0) + 1
    result.headings.append(Label("Also in the template, drawn in no flow", MARGIN, y + HEADING_SIZE,
                                 HEADING_SIZE, "bold"))
    y += HEADING_H + 4
    line = ""
    for part in [f"{n} {kind}" for kind, n in sorted(others.items())]:
        longer = f"{line}, {part}" if line else part
        if line and Label(longer + ",", MARGIN, y, 11, "normal").width > widest - MARGIN:
            result.notes.append(Label(line + ",", MARGIN, y, 11, "normal"))
            y += 16
            line = part
        else:
            line = longer
    if line:
        result.notes.append(Label(line, MARGIN, y, 11, "normal"))
        y += 16
    result.width = widest + MARGIN
    result.height = y + 14
    return result


def svg(template: Template, title: str = "Mastodon on AWS") -> str:
    """The picture as SVG text (deterministic: the same template gives the same bytes)."""
    plan = layout(template, title)
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{plan.width:.0f}' height='{plan.height:.0f}' "
        f"viewBox='0 0 {plan.width:.0f} {plan.height:.0f}'>",
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='7' "
        "markerHeight='7' orient='auto-start-reverse'><path d='M 0 0 L 10 5 L 0 10 z' fill='#2a5db0'/>"
        "</marker></defs>",
        f"<rect width='{plan.width:.0f}' height='{plan.height:.0f}' fill='#ffffff'/>",
    ]
    for arrow in plan.arrows:
        (x1, y1), (x2, y2) = arrow.points
        out.append(f"<line x1='{x1:g}' y1='{y1:g}' x2='{x2:g}' y2='{y2:g}' stroke='#2a5db0' "
                   "stroke-width='1.6' marker-end='url(#arrow)'/>")
    for box in plan.boxes:
        fill = COLOURS[(box.flow - 1) % len(COLOURS)] if box.resource else "#ffffff"
        out.append(f"<rect x='{box.x:g}' y='{box.y:g}' width='{BOX_W}' height='{BOX_H}' rx='6' "
                   f"fill='{fill}' stroke='#445'/>")
    for label in plan.labels:
        out.append(_svg_text(label))
    return "\n".join([*out, "</svg>"]) + "\n"


def _svg_text(label: Label) -> str:
    style = {"bold": f"font-weight='bold' {FONT}", "normal": f"fill='#334' {FONT}",
             "mono": f"fill='#667' {MONO}"}[label.style]
    return (f"<text x='{label.x:g}' y='{label.baseline:g}' font-size='{label.size:g}' {style}>"
            f"{escape(label.text)}</text>")


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


# Referring to one of these says nothing about what it refers to in turn.
OPAQUE_TYPES = ("AWS::EC2::SecurityGroup", "AWS::EC2::Subnet", "AWS::EC2::VPC", "AWS::KMS::",
                "AWS::SecretsManager::", "AWS::Logs::", "AWS::IAM::User")
# Resources that join two others without either referring to the other.
CONNECTOR_TYPES = ("AWS::ElasticLoadBalancingV2::Listener", "AWS::ElasticLoadBalancingV2::ListenerRule",
                   "AWS::S3::BucketPolicy", "AWS::WAFv2::WebACLAssociation")


def linked(template: Template, a: str, b: str) -> bool:
    """Whether one resource uses the other, or a connector joins them.

    "Uses" follows references through resources no flow draws (a launch template,
    a role, a custom resource), never through a drawn one, nor through a resource
    many others refer to for their own reasons (a VPC, a subnet, a key, a secret).
    """
    resources = template["Resources"]
    direct = {name: {r for r in _refs({k: v for k, v in res.items() if k != "Metadata"}) if r in resources}
              for name, res in resources.items()}
    drawn = drawn_resources(template)

    def uses(start: str) -> set[str]:
        found: set[str] = set()
        stack = list(direct[start])
        while stack:
            current = stack.pop()
            if current in found or current == start:
                continue
            found.add(current)
            if current not in drawn and not resources[current]["Type"].startswith(OPAQUE_TYPES):
                stack.extend(direct[current])
        return found

    if b in uses(a) or a in uses(b):
        return True
    return any(a in joined and b in joined
               for name, resource in resources.items() if resource["Type"] in CONNECTOR_TYPES
               for joined in [uses(name)])
