"""A tag pushed again (upgrade on push, RollRepushedTags): the whole rollout against moto
with the images in ECR. Every server's images are recorded as its deploy reports them;
a tag the servers run, pushed again with new images and put into desired-version again,
rolls every server only with the opt-in, and once."""

from __future__ import annotations

import json

import pytest

from lambdas.rollout import plan
from lambdas.rollout.names import DIGEST_TAG
from lambdas.rollout.plan import (
    Journal,
    Server,
    agreed_digests,
    reported_digests,
    same_handling,
    stale_servers,
)
from simulation.world import DEPLOYED, HANDLED, NEW, OLD, World
from tests.pipeline.test_rollout import QUICK

HOST = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
ECR = [f"{HOST}/fork/mastodon", f"{HOST}/fork/mastodon-streaming"]
A, B, C = ("sha256:" + c * 64 for c in "abc")


def recorded(world: World) -> dict[str, str]:
    tags = world.aws("ec2").describe_tags(Filters=[{"Name": "key", "Values": [DIGEST_TAG]}])["Tags"]
    return {t["ResourceId"]: t["Value"] for t in tags}


def wanted(world: World, version: str) -> dict[str, str]:
    return {iid: " ".join(world.digests_of(iid, version)) for iid in world.servers()}


def deploys(world: World, version: str) -> list[str]:
    return [iid for c in world.commands(f"deploy {version}") for iid in c["instances"]]


def test_a_rollout_records_each_servers_images_and_the_deployed_ones(fleet):
    world = fleet(web=2, timing=QUICK, images=ECR)
    world.set_desired(NEW)
    assert world.roll().status == "SUCCEEDED"
    assert recorded(world) == wanted(world, NEW)
    record = json.loads(world.parameter(HANDLED))
    assert record["deployed"] == NEW
    assert record["digests"] == {image: world.digest(image, NEW) for image in ECR}


def test_a_repushed_running_tag_rolls_every_server_with_the_opt_in_and_once(fleet):
    world = fleet(web=3, timing=QUICK, images=ECR, roll_repushed=True)
    servers = set(world.servers())
    world.push(OLD, "fixed")  # CI pushes the running tag again, with new images
    world.set_desired(OLD)  # what the push function writes: the same value, a new version
    result = world.roll()
    assert result.status == "SUCCEEDED", result.output.get("failure")
    assert set(deploys(world, OLD)) == servers, "every server pulls and restarts"
    assert recorded(world) == wanted(world, OLD)
    assert world.parameter(DEPLOYED) == OLD
    assert json.loads(world.parameter(HANDLED))["digests"] == {
        image: world.digest(image, OLD) for image in ECR
    }
    assert world.invalidations == 1, "CloudFront is invalidated after the rollout, as after any"
    assert world.min_capacity_margin() >= 0
    assert "pushed again" in world.notifications()[-1][1]
    # The push event delivered again: desired-version written again, nothing rolls.
    sent = len(world.commands_sent())
    world.set_desired(OLD)
    assert world.roll().status == "SUCCEEDED"
    assert len(world.commands_sent()) == sent
    assert world.invalidations == 1


def test_a_repushed_running_tag_does_not_roll_without_the_opt_in(fleet):
    world = fleet(web=2, timing=QUICK, images=ECR)
    before = recorded(world)
    world.push(OLD, "fixed")
    world.set_desired(OLD)
    assert world.roll().status == "SUCCEEDED"
    assert world.commands_sent() == [] and recorded(world) == before


def test_rewriting_the_running_tag_without_new_images_rolls_nothing(fleet):
    world = fleet(web=2, timing=QUICK, images=ECR, roll_repushed=True)
    world.set_desired(OLD)
    assert world.roll().status == "SUCCEEDED"
    assert world.commands_sent() == []


def test_a_failed_rollout_of_a_repushed_tag_says_that_the_old_images_are_gone(fleet):
    world = fleet(web=2, timing=QUICK, images=ECR, roll_repushed=True)
    world.push(OLD, "broken")
    world.command_faults.append(lambda iid, line: "unhealthy" if f"deploy {OLD}" in line else None)
    world.set_desired(OLD)
    assert world.roll().status == "FAILED"
    subject, message = world.notifications()[-1]
    assert "failed" in subject and "cannot be pulled by it any more" in message


# ---------------------------------------------------------------- the pure parts
@pytest.mark.parametrize(
    "output, expected",
    [
        (f"deployed v1 on web (was v0)\nimage digests: {A} {B}\n", (A, B)),
        (f"image digests: {A}", (A,)),
        (f"image digests: {A} -", None),
        ("deployed v1 on web (unchanged)", None),
        (f"image digests: {A}\nimage digests: {B}", (B,)),
        (f"image digests: {A}; reboot", None),
    ],
)
def test_the_digests_a_deploy_reports(output, expected):
    assert reported_digests(output) == expected


def server(
    iid: str,
    digests: tuple[str, ...],
    version: str = "v1",
    launched: float = 0.0,
    journal: Journal | None = None,
) -> Server:
    return Server(iid, "InService", True, launched, version, journal=journal, digests=digests)


def test_stale_servers_are_those_without_the_images_the_tag_names_now():
    servers = [
        server("a", (A, B)),
        server("b", (C, B)),
        server("c", (A,)),
        server("d", ()),
        server("e", (C, C), launched=100.0),
        server("f", (C, C)),
    ]
    assert stale_servers(servers, {0: A, 1: B}, 2, since=50.0, renewed=["f"]) == {"b", "c", "d"}
    assert stale_servers([server("w", (A,))], {0: A, 1: C}, 1, since=50.0, renewed=[]) == set()


def test_the_deployed_images_are_those_every_settled_server_agrees_on():
    images = ["web", "streaming"]
    settled = [(server("a", (A, B)), 2), (server("b", (A, B)), 2), (server("w", (A,)), 1)]
    assert agreed_digests(settled, "v1", images) == {"web": A, "streaming": B}
    assert agreed_digests([*settled, (server("x", (C,)), 1)], "v1", images) == {}
    assert agreed_digests([*settled, (server("y", ()), 1)], "v1", images) == {}
    others = [
        (server("o", (C,), version="v0"), 1),
        (server("j", (C,), journal=Journal("e", "x", "v1", 0)), 1),
    ]
    assert agreed_digests([*settled, *others], "v1", images) == {"web": A, "streaming": B}


def test_a_retried_finish_knows_its_record_whatever_the_images_read_now():
    first = plan.handled_record(3, "v1", "succeeded", "arn", "", "v1", {"web": A})
    assert same_handling(first, plan.handled_record(3, "v1", "succeeded", "arn", "", "v1", {"web": B}))
    assert not same_handling(first, plan.handled_record(4, "v1", "succeeded", "arn", ""))
    assert not same_handling("{}", plan.handled_record(3, "v1", "succeeded", "arn", ""))


def test_the_state_keeps_a_repushed_tags_images_and_drops_malformed_ones():
    from lambdas.rollout.state import Config, State

    config = {
        "web_group": "web",
        "worker_group": "worker",
        "target_groups": [],
        "desired_parameter": "d",
        "deployed_parameter": "p",
        "handled_parameter": "h",
        "batch_size": 1,
        "drain_seconds": 1,
        "settle_seconds": 1,
        "boot_grace": 1,
        "topic_arn": "t",
        "distribution_id": "x",
        "images": ECR,
        "tag_pattern": ".*",
        "deploy_script": "/d.sh",
    }
    assert Config.parse(config).roll_repushed is False, "an execution from before the option"
    assert Config.parse({**config, "roll_repushed": "true"}).roll_repushed is True
    base = {"config": config, "execution": "arn:e", "state_machine": "arn:m"}
    kept = State.parse({**base, "digests": {ECR[0]: A}, "renewed": ["i-1"]})
    assert kept.digests == {ECR[0]: A} and kept.renewed == ["i-1"]
    dropped = State.parse({**base, "digests": ["nonsense"], "renewed": "i-1"})
    assert dropped.digests == {} and dropped.renewed == []
    assert State.parse(kept.to_dict()).digests == kept.digests
