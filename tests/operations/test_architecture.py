"""The architecture picture draws the template's flows legibly, and the README's copy is current."""

from __future__ import annotations

import copy
import io
import struct
import xml.etree.ElementTree as ET
from itertools import combinations

import cairocffi as cairo
import cairosvg
import pytest

from build import DOCS_PICTURE
from scripts import architecture
from scripts.architecture import Label

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def plan(template):
    return architecture.layout(template)


def test_the_committed_picture_is_the_current_templates(template):
    # Fails when a template change was committed without `python build.py --docs`.
    assert DOCS_PICTURE.read_text() == architecture.svg(template), (
        "docs/architecture.svg is stale: run `python build.py --docs`")


def test_the_picture_renders_and_draws_exactly_the_laid_out_labels(template, plan):
    text = architecture.svg(template)
    root = ET.fromstring(text)  # noqa: S314 - our own output
    drawn = sorted((float(t.get("x")), float(t.get("y")), t.text) for t in root.iter(f"{SVG}text"))
    assert drawn == sorted((label.x, label.baseline, label.text) for label in plan.labels)
    png = cairosvg.svg2png(bytestring=text.encode())
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (round(plan.width), round(plan.height))


def _measured_width(label: Label) -> float:
    """The width cairo gives the label, with the font the SVG names first (as cairosvg picks it)."""
    context = cairo.Context(cairo.ImageSurface(cairo.FORMAT_ARGB32, 1, 1))
    family = "DejaVu Sans Mono" if label.style == "mono" else "Helvetica"
    weight = cairo.FONT_WEIGHT_BOLD if label.style == "bold" else cairo.FONT_WEIGHT_NORMAL
    context.select_font_face(family, cairo.FONT_SLANT_NORMAL, weight)
    context.set_font_size(label.size)
    return float(context.text_extents(label.text)[4])  # x_advance


def test_the_layout_reserves_at_least_the_rendered_width_of_every_label(plan):
    too_narrow = [(label.text, round(_measured_width(label)), round(label.width))
                  for label in plan.labels if _measured_width(label) > label.width]
    assert not too_narrow


def test_every_label_sits_inside_its_box_and_the_picture(plan):
    for box in plan.boxes:
        left, top, right, bottom = box.rect
        for label in box.labels:
            x1, y1, x2, y2 = label.box
            assert left < x1 and x2 <= right - 4 and top < y1 and y2 < bottom, (box.key, label.text)
    for label in plan.labels:
        assert 0 < label.box[0] and label.box[2] < plan.width and label.box[3] < plan.height, label.text


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_no_two_labels_and_no_two_boxes_overlap(plan):
    assert not [(a.text, b.text) for a, b in combinations(plan.labels, 2) if _overlap(a.box, b.box)]
    assert not [(a.key, b.key) for a, b in combinations(plan.boxes, 2) if _overlap(a.rect, b.rect)]
    # Headings and notes stay clear of the boxes.
    loose = [label for label in plan.labels if not any(label in box.labels for box in plan.boxes)]
    assert not [(label.text, box.key) for label in loose for box in plan.boxes
                if _overlap(label.box, box.rect)]


def _crosses(start: tuple[float, float], end: tuple[float, float], rect: tuple[float, ...]) -> bool:
    """Whether the segment passes through the rectangle (Liang-Barsky clipping)."""
    (x1, y1), (x2, y2) = start, end
    dx, dy = x2 - x1, y2 - y1
    low, high = 0.0, 1.0
    for p, q in ((-dx, x1 - rect[0]), (dx, rect[2] - x1), (-dy, y1 - rect[1]), (dy, rect[3] - y1)):
        if p == 0:
            if q < 0:
                return False
        elif p < 0:
            low = max(low, q / p)
        else:
            high = min(high, q / p)
        if low > high:
            return False
    return True


def test_the_crossing_check_sees_a_crossing_and_a_miss():
    assert _crosses((0, 5), (20, 5), (5, 0, 10, 10))
    assert not _crosses((0, 20), (20, 20), (5, 0, 10, 10))
    assert not _crosses((0, 0), (4, 20), (5, 0, 10, 10))


def test_no_arrow_crosses_a_label_a_heading_or_another_box(plan):
    for arrow in plan.arrows:
        start, end = arrow.points
        for label in plan.labels:
            assert not _crosses(start, end, label.box), (arrow.source.key, arrow.target.key, label.text)
        for box in plan.boxes:
            if box not in (arrow.source, arrow.target):
                assert not _crosses(start, end, box.rect), (arrow.source.key, arrow.target.key, box.key)


def _flow(plan, heading: str) -> set[tuple[str | None, str | None]]:
    number = next(i for i, label in enumerate(plan.headings) if heading in label.text)  # 0 is the title
    return {(a.source.resource or a.source.key, a.target.resource or a.target.key)
            for a in plan.arrows if a.flow == number}


def test_the_request_path_runs_from_the_viewer_to_puma_and_streaming(plan):
    arrows = _flow(plan, "Request path")
    for hop in (("viewer", "Distribution"), ("Distribution", "LoadBalancerVpcOrigin"),
                ("LoadBalancerVpcOrigin", "LoadBalancer"), ("LoadBalancer", "WebTargetGroup"),
                ("LoadBalancer", "StreamingTargetGroup"), ("WebTargetGroup", "WebAutoScalingGroup"),
                ("StreamingTargetGroup", "WebAutoScalingGroup"), ("WebAutoScalingGroup", "Database"),
                ("WebAutoScalingGroup", "Cache")):
        assert hop in arrows, hop


def test_the_target_groups_show_the_ports_and_paths_the_template_routes(template):
    changed = copy.deepcopy(template)
    changed["Resources"]["StreamingTargetGroup"]["Properties"]["Port"] = 4321
    rule = changed["Resources"]["StreamingListenerRule"]["Properties"]
    paths = next(c for c in rule["Conditions"] if c["Field"] == "path-pattern")["PathPatternConfig"]
    paths["Values"][0] = "/ws"
    details = {b.key: b.labels[1].text for b in architecture.layout(changed).boxes if b.flow == 1}
    assert details["streamtg"] == "/ws → :4321"
    port = template["Resources"]["WebTargetGroup"]["Properties"]["Port"]
    assert details["webtg"] == f"everything else → :{port}"


def test_media_goes_from_cloudfront_to_s3_and_the_worker_uses_the_stores_and_mail(plan):
    assert ("Distribution", "MediaBucket") in _flow(plan, "Media path")
    assert {("WorkerAutoScalingGroup", used) for used in ("Database", "Cache", "MediaBucket", "EmailIdentity")
            } <= _flow(plan, "worker uses")


def test_the_upgrade_flows_from_desired_version_to_the_servers_then_the_invalidation(plan):
    arrows = _flow(plan, "Upgrade")
    assert {("DesiredVersionParameter", "RolloutTrigger"), ("RolloutTrigger", "RolloutStateMachine"),
            ("RolloutStateMachine", "RolloutFunction"), ("RolloutFunction", "run"),
            ("run", "WebAutoScalingGroup"), ("run", "WorkerAutoScalingGroup"),
            ("RolloutStateMachine", "InvalidateFunction"), ("InvalidateFunction", "Distribution")} <= arrows


def test_alarms_and_a_failed_rollout_reach_the_alert_topic_and_the_email(plan):
    arrows = _flow(plan, "Alerts")
    assert {("LoadBalancer5xxAlarm", "AlertTopic"), ("RolloutFailureNotice", "AlertTopic"),
            ("AlertTopic", "email")} <= arrows


def test_every_function_and_rule_belongs_to_a_flow(template):
    resources = template["Resources"]
    kinds = ("AWS::Lambda::Function", "AWS::Events::Rule", "AWS::StepFunctions::StateMachine",
             "AWS::SNS::Topic", "AWS::AutoScaling::AutoScalingGroup")
    flowing = {name for name, r in resources.items() if r["Type"] in kinds}
    missing = flowing - architecture.drawn_resources(template)
    assert not missing, f"add these to a flow in scripts/architecture.py: {sorted(missing)}"


def test_every_arrow_between_two_resources_is_a_reference_in_the_template(template, plan):
    unfounded = [(a.source.resource, a.target.resource) for a in plan.arrows
                 if a.source.resource and a.target.resource
                 and (a.source.key, a.target.key) not in architecture.IMPLIED
                 and not architecture.linked(template, a.source.resource, a.target.resource)]
    assert not unfounded


def test_resources_are_linked_only_through_what_joins_them(template):
    assert architecture.linked(template, "LoadBalancer", "WebTargetGroup")  # listener → rule → group
    assert architecture.linked(template, "WorkerAutoScalingGroup", "MediaBucket")  # launch template
    assert not architecture.linked(template, "WorkerAutoScalingGroup", "WebTargetGroup")
    assert not architecture.linked(template, "RolloutTrigger", "Database")  # not through a shared VPC


def test_a_box_whose_resource_is_gone_is_left_out_with_its_arrows(template):
    changed = copy.deepcopy(template)
    del changed["Resources"]["LoadBalancerVpcOrigin"]
    plan = architecture.layout(changed)
    assert "LoadBalancerVpcOrigin" not in {box.resource for box in plan.boxes}
    assert not [a for a in plan.arrows if "LoadBalancerVpcOrigin" in (a.source.resource, a.target.resource)]
    cairosvg.svg2png(bytestring=architecture.svg(changed).encode(), write_to=io.BytesIO())


def test_every_box_of_the_built_template_takes_part_in_its_flow(plan):
    # A flow whose resources are gone (say, a removed pipeline) must not linger as
    # stray boxes under its heading: each box drawn is joined by an arrow.
    joined = {id(box) for arrow in plan.arrows for box in (arrow.source, arrow.target)}
    assert [f"flow {box.flow}: {box.key}" for box in plan.boxes if id(box) not in joined] == []


def test_what_no_flow_draws_is_counted_so_the_picture_changes_with_the_template(template):
    changed = copy.deepcopy(template)
    changed["Resources"]["ExtraTopic"] = {"Type": "AWS::SNS::Topic", "Properties": {}}
    changed["Resources"]["ExtraQueue"] = {"Type": "AWS::SQS::Queue", "Properties": {}}
    notes = " ".join(label.text for label in architecture.layout(changed).notes)
    assert "1 SNS::Topic" in notes and "1 SQS::Queue" in notes
    assert architecture.svg(changed) != architecture.svg(template)
