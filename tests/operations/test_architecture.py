"""The architecture picture is drawn from the template, and the README's copy is current."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET

from build import DOCS_PICTURE
from scripts import architecture


def test_the_committed_picture_is_the_current_templates(template):
    # Fails when a template change was committed without `python build.py --docs`.
    assert DOCS_PICTURE.read_text() == architecture.svg(template), (
        "docs/architecture.svg is stale: run `python build.py --docs`")


def test_the_picture_is_valid_svg_with_the_main_resources(template):
    text = architecture.svg(template)
    ET.fromstring(text)  # noqa: S314 - our own output
    for name in ("Distribution", "LoadBalancer", "WebTargetGroup", "StreamingTargetGroup",
                 "WebAutoScalingGroup", "WorkerAutoScalingGroup", "Database", "Cache", "MediaBucket",
                 "AppSecret", "AlertTopic", "DailyCleanupRule"):
        assert f">{name}<" in text, name


def test_traffic_flows_viewer_to_cloudfront_to_the_load_balancer_to_the_servers_to_the_data(template):
    links = {frozenset(link) for link in architecture.graph(template).links}
    for pair in (("Distribution", "LoadBalancer"), ("Distribution", "MediaBucket"),
                 ("LoadBalancer", "WebTargetGroup"), ("LoadBalancer", "StreamingTargetGroup"),
                 ("WebAutoScalingGroup", "WebTargetGroup"), ("WebAutoScalingGroup", "Database"),
                 ("WebAutoScalingGroup", "Cache"), ("WorkerAutoScalingGroup", "Database"),
                 ("WorkerAutoScalingGroup", "MediaBucket")):
        assert frozenset(pair) in links, pair
    assert frozenset(("WorkerAutoScalingGroup", "WebTargetGroup")) not in links


def test_the_picture_changes_when_the_template_does(template):
    changed = copy.deepcopy(template)
    changed["Resources"]["ExtraQueue"] = {"Type": "AWS::SNS::Topic", "Properties": {}}
    assert architecture.svg(changed) != architecture.svg(template)
    assert ">ExtraQueue<" in architecture.svg(changed)
