"""A simulated Mastodon fleet in moto, and a small Step Functions interpreter to roll it.

`World` builds the stack's moving parts in moto (web, worker and queue workers' Auto
Scaling groups, both target groups, the version parameters, the alert topic, a CloudFront
distribution, the rollout state machine) and gives moto a clock and a sense of
time that it lacks: draining takes the deregistration delay, a deploy or a
migration takes its duration, a target turns healthy some seconds after it
registers, a new server boots at the deployed version. Faults are injected here.

`World.roll()` executes the real state machine definition (templates/pipeline.py)
state by state, calling the real Lambda handlers for its tasks and advancing the
simulated clock at its Wait states, while recording healthy web capacity after
every step and every AWS API call the functions make.
"""

from __future__ import annotations

import datetime
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
import moto.elbv2.models as elbv2_models
import moto.ssm.models as ssm_models
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends
from moto.sns.models import sns_backends
from moto.stepfunctions.models import stepfunctions_backends

from lambdas import invalidate
from lambdas.rollout import aws as rollout_aws
from lambdas.rollout import handler as rollout_handler
from lambdas.rollout import names
from lambdas.rollout.plan import Surge
from simulation.context import LambdaContext
from templates import pipeline
from templates.options import RELEASE_TAG_PATTERN

REGION = "us-east-1"
OLD, NEW, NEWER = "v4.6.2", "v4.7.6", "v4.7.7"
DESIRED = "/mastodon/test/desired-version"
DEPLOYED = "/mastodon/test/deployed-version"
HANDLED = "/mastodon/test/rollout-last"
IMAGES = ["ghcr.io/mastodon/mastodon", "ghcr.io/mastodon/mastodon-streaming"]
# A fork's images in the stack's own ECR registry (moto's), and a tag of its own.
ECR_IMAGES = [
    f"{DEFAULT_ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com/forks/mastodon",
    f"{DEFAULT_ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com/forks/mastodon-streaming",
]
FORK = "v4.7.6-glitch"
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
QUEUE_MAX = 6  # the queue workers' group's maximum size
# Clients outlive each mock (moto intercepts every botocore client while active).
_COUNTED: dict[str, Any] = {}
_OWN: dict[str, Any] = {}
_ACTIVE: list[World] = []


@dataclass
class Timing:
    """How long the real world takes: the unavoidable waits of a rollout."""

    drain: int = 30  # the target groups' deregistration delay
    pull: int = 70  # pull a release's images (deploy.sh pull, or a deploy or migration that must pull)
    restart: int = 20  # a web server's restart to local health, its images on disk
    health: int = 20  # the load balancer's healthy threshold after registering
    boot: int = 240  # a new server, from launch to healthy
    pre: int = 120
    post: int = 60
    worker: int = 60  # the worker's restart and stability watch, its image on disk
    invalidation: int = 60
    settle: int = 30  # the rollout's settling window (the load balancer's unhealthy detection)




class Registry:
    """An HTTP opener that answers like ghcr.io for the images it holds: a HEAD without a
    token gets 401 and the challenge; the token service hands out an anonymous token."""

    CHALLENGE = 'Bearer realm="https://ghcr.io/token",service="ghcr.io"'

    def __init__(self, tags: dict[str, set[str]]) -> None:
        self.tags = tags
        self.requests: list[str] = []

    def open(self, request: Any, timeout: float = 0) -> Any:
        import io
        import urllib.error
        import urllib.request

        url = request if isinstance(request, str) else request.full_url
        self.requests.append(url)
        if url.startswith("https://ghcr.io/token?"):
            return io.BytesIO(json.dumps({"token": "anonymous"}).encode())
        match = re.search(r"^https://ghcr.io/v2/(.+)/manifests/(.+)$", url)
        assert match and isinstance(request, urllib.request.Request) and request.get_method() == "HEAD"
        if request.headers.get("Authorization") != "Bearer anonymous":
            challenge = {"WWW-Authenticate": self.CHALLENGE}
            raise urllib.error.HTTPError(url, 401, "Unauthorized", challenge, None)  # type: ignore[arg-type]
        repository, tag = match.groups()
        if tag not in self.tags.get(repository, set()):
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)  # type: ignore[arg-type]
        return io.BytesIO(b"")


@dataclass
class Result:
    status: str
    output: dict[str, Any]
    states: list[str]
    duration: float


@dataclass
class World:
    web: int = 2
    batch: int = 1
    # The queue workers' group (templates: the queue option): its size, 0 for an empty
    # group; None (the default, as the option is off by default): the stack has none
    # (the rollout's config says queue_group "").
    queue: int | None = None
    timing: Timing = field(default_factory=Timing)
    clock: float = START
    versions: dict[str, str] = field(default_factory=dict)  # what each server really runs
    unhealthy: set[tuple[str, str]] = field(default_factory=set)  # (instance, version) that never serves
    command_faults: list[Callable[[str, str], str | None]] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    pulled: set[tuple[str, str]] = field(default_factory=set)  # (instance, version) whose images it holds
    slow_pulls: dict[str, int] = field(default_factory=dict)  # a server's pulls take this much longer
    capacity: list[tuple[float, int, int]] = field(default_factory=list)  # (time, healthy, size measured)
    hooks: list[Callable[[World, str, int], None]] = field(default_factory=list)
    # Faults of the world, beyond the planned path (TESTING.md, "What AWS may do"):
    # an answer lost after the function ran (Step Functions retries the same input),
    lose_answer: Callable[[str, int], bool] = lambda state, count: False
    # an API call that fails (operation name, its count so far, its parameters) -> the error, or None,
    api_faults: list[Callable[[str, int, dict[str, Any]], Exception | None]] = field(default_factory=list)
    # a release that serves, then fails: (version, seconds after registering it turns unhealthy),
    sick_after: dict[str, int] = field(default_factory=dict)
    # Auto Scaling's ELB health check: replace a server unhealthy this long (None: off),
    replace_unhealthy_after: int | None = None
    # no EC2 capacity for new web servers.
    no_capacity: bool = False
    # the web group's launch hook (templates/compute.LAUNCH_HOOK): a booting server is no target.
    launch_hook: bool = True
    # checks run after every step of the state machine (the invariants)
    after_step: list[Callable[[World, str], None]] = field(default_factory=list)
    unhealthy_targets: list[tuple[float, int]] = field(default_factory=list)  # (time, count)
    lost_answers: int = 0
    retries: int = 0
    cloudfront_throttles: int = 0
    registry: Registry = field(
        default_factory=lambda: Registry(
            {"mastodon/mastodon": {OLD, NEW, NEWER}, "mastodon/mastodon-streaming": {OLD, NEW, NEWER}}
        )
    )
    # The stack's images (IMAGES, or ECR_IMAGES: repositories in moto's ECR holding OLD, NEW,
    # NEWER and FORK), its tag rule (the config's tag_pattern), and RollRepushedTags: a deploy
    # reports the digests its tag names in ECR, and the servers start recorded on OLD's
    # (push() pushes a tag again).
    images: list[str] = field(default_factory=lambda: list(IMAGES))
    tag_pattern: str = RELEASE_TAG_PATTERN
    roll_repushed: bool = False

    # ------------------------------------------------------------ set-up
    def __enter__(self) -> World:
        self._mock = mock_aws(
            config={"stepfunctions": {"execute_state_machine": False}, "lambda": {"use_docker": False}}
        )
        self._mock.start()
        self._patches: list[tuple[Any, str, Any]] = []
        self._seen: dict[str, float] = {}
        self._served = 0  # the size the minimum is measured against (record_capacity)
        self._registered: dict[tuple[str, str], float] = {}
        self._ever_registered: set[tuple[str, str]] = set()
        self._deregistered: dict[tuple[str, str], float] = {}
        self._commands: dict[str, dict[str, Any]] = {}
        self._unhealthy_since: dict[str, float] = {}
        self._tagged_at_boot: set[str] = set()
        self.replaced: list[str] = []
        _ACTIVE.append(self)
        self._outcomes: dict[tuple[str, str], dict[str, Any]] = {}
        self._levels: list[tuple[Any, Any]] = []
        try:
            self._install_time()
            self._build()
        except BaseException:  # a world that could not be built leaves no mock behind for the next test
            self.__exit__(None, None, None)
            raise
        self._levels = [(m.logger, m.logger.log_level) for m in (rollout_aws, invalidate)]
        for logger, _ in self._levels:  # the tick log would dominate the run time
            logger.setLevel("WARNING")
        return self

    def __exit__(self, *args: object) -> None:
        _ACTIVE.remove(self)
        for logger, level in self._levels:
            logger.setLevel(level)
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)
        rollout_aws._clients.clear()
        invalidate._clients.clear()
        self._mock.stop()

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self._patches.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def _install_time(self) -> None:
        world = self
        register, deregister = elbv2_models.FakeTargetGroup.register, elbv2_models.FakeTargetGroup.deregister

        def on_register(tg: Any, targets: list[dict[str, Any]]) -> None:
            register(tg, targets)
            for target in targets:  # registering a registered target changes nothing
                world._registered.setdefault((tg.arn, target["Id"]), world.clock)
                world._ever_registered.add((tg.arn, target["Id"]))
                world._deregistered.pop((tg.arn, target["Id"]), None)

        def on_deregister(tg: Any, targets: list[dict[str, Any]]) -> None:
            deregister(tg, targets)
            for target in targets:
                world._deregistered[(tg.arn, target["Id"])] = world.clock
                world._registered.pop((tg.arn, target["Id"]), None)

        def health_for(tg: Any, target: dict[str, Any], ec2_backend: Any) -> Any:
            return elbv2_models.FakeHealthStatus(
                target["Id"], tg.port, tg.health_check_port, world.health(tg.arn, target["Id"]), None, None
            )

        command_init = ssm_models.Command.__init__

        def on_command(command: Any, *args: Any, **kwargs: Any) -> None:
            # moto adds every instance of the region to the ids asked for (its targets
            # filter is empty): the servers the command reaches are those asked for.
            asked = list(kwargs.get("instance_ids") or [])
            command_init(command, *args, **kwargs)
            if asked:  # as AWS lists it (ListCommands)
                command.instance_ids = list(asked)
            world._commands[command.command_id] = {
                "sent": world.clock,
                "line": command.parameters["commands"][0],
                "instances": asked or list(command.instance_ids),
            }

        def get_invocation(command: Any, instance_id: str, plugin_name: str | None) -> dict[str, Any]:
            return world.invocation(command.command_id, instance_id)

        import moto.autoscaling.models as autoscaling_models

        def attach_new_only(backend: Any, group_name: str) -> None:
            # moto re-registers every instance of the group on each capacity change, which
            # would undo a rollout's deregistration; AWS registers only the new instances,
            # and a server the web group's launch hook holds (Pending:Wait) only once its
            # bootstrap lets the launch go on (world._finish_launches).
            group = backend.autoscaling_groups[group_name]
            world.observe()
            for s in group.instance_states:
                held = world.launch_hook and bool(group.target_group_arns)
                if held and s.lifecycle_state == "InService" and world.booting(s.instance.id):
                    s.lifecycle_state = "Pending:Wait"
            for arn in group.target_group_arns:
                fresh = [
                    {"Id": s.instance.id}
                    for s in group.instance_states
                    if (arn, s.instance.id) not in world._ever_registered and s.lifecycle_state == "InService"
                ]
                if fresh:
                    backend.elbv2_backend.register_targets(arn, fresh)

        def active_instances(group: Any) -> list[Any]:
            # Auto Scaling counts a launching server (Pending, Pending:Wait) toward the
            # desired capacity; moto counts only InService ones, and would launch more.
            counted = ("InService", "Pending")
            return [s for s in group.instance_states if s.lifecycle_state.startswith(counted)]

        self._patch(autoscaling_models.FakeAutoScalingGroup, "active_instances", active_instances)
        self._patch(autoscaling_models.AutoScalingBackend, "update_attached_target_groups", attach_new_only)
        replace = autoscaling_models.FakeAutoScalingGroup.replace_autoscaling_group_instances

        def launch_if_capacity(group: Any, count_needed: int, propagated_tags: Any) -> None:
            if world.no_capacity and group.name == "web":
                return  # InsufficientInstanceCapacity: nothing launches
            replace(group, count_needed, propagated_tags)

        self._patch(autoscaling_models.FakeAutoScalingGroup, "replace_autoscaling_group_instances",
                    launch_if_capacity)
        self._patch(elbv2_models.FakeTargetGroup, "register", on_register)
        self._patch(elbv2_models.FakeTargetGroup, "deregister", on_deregister)
        self._patch(elbv2_models.FakeTargetGroup, "health_for", health_for)
        self._patch(ssm_models.Command, "__init__", on_command)
        self._patch(ssm_models.Command, "get_invocation", get_invocation)
        self._patch(rollout_aws, "now", lambda: world.clock)
        self._patch(invalidate, "now", lambda: world.clock)
        self._patch(rollout_aws, "OPENER", self.registry)

    def _client(self, name: str) -> Any:
        """The functions' client, counting its calls (made once: creating clients is slow)."""
        if name not in _COUNTED:
            made = boto3.client(name, region_name=REGION)
            def before_call(model: Any, params: dict[str, Any], **_: Any) -> None:
                world = _ACTIVE[-1]
                world.calls.update([model.name])
                for fault in world.api_faults:
                    error = fault(model.name, world.calls[model.name], params)
                    if error is not None:
                        raise error

            made.meta.events.register("before-call", before_call)
            _COUNTED[name] = made
        return _COUNTED[name]

    def _build(self) -> None:
        ec2 = self.aws("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        image = "ami-12c6146b"  # one of moto's stock images, the one tests/moto_images.json keeps
        ec2.create_launch_template(
            LaunchTemplateName="servers", LaunchTemplateData={"ImageId": image, "InstanceType": "t4g.small"}
        )
        elb = self.aws("elbv2")
        self.target_groups = [
            elb.create_target_group(Name=name, Protocol="HTTP", Port=port, VpcId=vpc, TargetType="instance")[
                "TargetGroups"
            ][0]["TargetGroupArn"]
            for name, port in (("web", 3000), ("streaming", 4000))
        ]
        ssm = self.aws("ssm")
        for name, value in ((DESIRED, OLD), (DEPLOYED, OLD), (HANDLED, "{}")):
            ssm.put_parameter(Name=name, Value=value, Type="String")
        autoscaling = self.aws("autoscaling")
        groups = [("web", self.web, self.target_groups), ("worker", 1, [])]
        groups += [("queue", self.queue, [])] if self.queue is not None else []
        for group, size, tgs in groups:
            autoscaling.create_auto_scaling_group(
                AutoScalingGroupName=group,
                MinSize=size,
                MaxSize={"web": max(size, 2), "worker": 1}.get(group, QUEUE_MAX),
                DesiredCapacity=size,
                VPCZoneIdentifier=subnet,
                TargetGroupARNs=tgs,
                LaunchTemplate={"LaunchTemplateName": "servers", "Version": "$Latest"},
            )
        self.topic = self.aws("sns").create_topic(Name="alerts")["TopicArn"]
        self.distribution = self.aws("cloudfront").create_distribution(
            DistributionConfig={
                "CallerReference": "mastodon",
                "Comment": "",
                "Enabled": True,
                "Origins": {
                    "Quantity": 1,
                    "Items": [
                        {
                            "Id": "alb",
                            "DomainName": "alb.example.com",
                            "CustomOriginConfig": {
                                "HTTPPort": 80,
                                "HTTPSPort": 443,
                                "OriginProtocolPolicy": "https-only",
                            },
                        }
                    ],
                },
                "DefaultCacheBehavior": {
                    "TargetOriginId": "alb",
                    "ViewerProtocolPolicy": "redirect-to-https",
                },
            }
        )["Distribution"]["Id"]
        config = {
            "web_group": "web",
            "worker_group": "worker",
            "queue_group": "queue" if self.queue is not None else "",
            "target_groups": self.target_groups,
            "desired_parameter": DESIRED,
            "deployed_parameter": DEPLOYED,
            "handled_parameter": HANDLED,
            "batch_size": str(self.batch),
            "drain_seconds": self.timing.drain,
            "settle_seconds": self.timing.settle,
            "boot_grace": 900,
            "topic_arn": self.topic,
            "distribution_id": self.distribution,
            "images": self.images,
            "tag_pattern": self.tag_pattern,
            "deploy_script": "/opt/mastodon-aws/deploy.sh",
            "roll_repushed": "true" if self.roll_repushed else "false",
        }
        self._ecr = [i for i in self.images if rollout_aws.ecr_repository(i)]
        for image in self._ecr:
            self.aws("ecr").create_repository(repositoryName=image.split("/", 1)[1])
            self.registry.tags[image.split("/", 1)[1]] = {OLD, NEW, NEWER, FORK}
            for version in (OLD, NEW, NEWER, FORK):
                self.push(version, "first", [image])
        self.definition = pipeline.definition(config, "rollout", "invalidate")
        sfn = self.aws("stepfunctions")
        self.state_machine = sfn.create_state_machine(
            name="rollout",
            definition=json.dumps(self.definition),
            roleArn="arn:aws:iam::123456789012:role/rollout",
        )["stateMachineArn"]
        for name in ("ssm", "autoscaling", "elbv2", "ec2", "sns", "stepfunctions", "ecr"):
            rollout_aws._clients[name] = self._client(name)
        invalidate._clients["cloudfront"] = self._client("cloudfront")
        self._throttling_cloudfront()
        self.observe()
        self.clock += 300  # the fleet has served for a while when the rollout starts
        for iid in self.servers():
            self.versions[iid] = OLD
        self.tag(self.servers(), OLD)
        if self._ecr:
            for iid in self.servers():
                self.aws("ec2").create_tags(Resources=[iid], Tags=[
                    {"Key": names.DIGEST_TAG, "Value": " ".join(self.digests_of(iid, OLD))}])

    def push(self, version: str, content: str, images: list[str] | None = None) -> None:
        """CI pushes `version` of the ECR images (all of them unless told) with `content`."""
        import hashlib

        for image in images or self._ecr:
            name = image.split("/", 1)[1]
            layer = {"digest": "sha256:" + hashlib.sha256(f"{name}:{version}:{content}".encode()).hexdigest(),
                     "size": 1, "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip"}
            manifest = {"schemaVersion": 2, "layers": [layer],
                        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                        "config": {**layer, "mediaType": "application/vnd.docker.container.image.v1+json"}}
            self.aws("ecr").put_image(repositoryName=name, imageManifest=json.dumps(manifest),
                                      imageTag=version)

    def digest(self, image: str, version: str) -> str:
        """The digest ECR holds for `image:version` now."""
        found = self.aws("ecr").describe_images(repositoryName=image.split("/", 1)[1],
                                                imageIds=[{"imageTag": version}])["imageDetails"]
        return str(found[0]["imageDigest"])

    def digests_of(self, iid: str, version: str) -> list[str]:
        """What deploy.sh reports on `iid` for `version`: the digests its tag names now."""
        images = self.images if iid in self.instances("web") else self.images[:1]
        return [self.digest(i, version) if i in self._ecr else "-" for i in images]

    def _throttling_cloudfront(self) -> None:
        from botocore.exceptions import ClientError

        self.invalidations = 0
        self._invalidated: dict[str, float] = {}
        self._references: dict[str, Any] = {}
        cloudfront = invalidate._clients["cloudfront"]
        if getattr(cloudfront, "throttling", False):
            return
        create = cloudfront.create_invalidation

        def create_invalidation(**kwargs: Any) -> Any:
            world = _ACTIVE[-1]
            if world.cloudfront_throttles > 0:
                world.cloudfront_throttles -= 1
                world.calls.update(["CreateInvalidation"])
                raise ClientError(
                    {"Error": {"Code": "TooManyInvalidationsInProgress", "Message": "slow down"}},
                    "CreateInvalidation",
                )
            # CloudFront answers a second request with the same caller reference (and the same
            # paths) with the invalidation the first one made; moto would make another.
            reference = kwargs["InvalidationBatch"]["CallerReference"]
            if reference in world._references:
                return world._references[reference]
            response = create(**kwargs)
            world.invalidations += 1
            world._invalidated[response["Invalidation"]["Id"]] = world.clock
            world._references[reference] = response
            return response

        get = cloudfront.get_invalidation

        def get_invalidation(**kwargs: Any) -> Any:
            # CloudFront takes a while; moto completes at once (and says COMPLETED, not Completed).
            world = _ACTIVE[-1]
            response = get(**kwargs)
            created = world._invalidated.setdefault(kwargs["Id"], world.clock)
            if world.clock < created + world.timing.invalidation:
                response["Invalidation"]["Status"] = "InProgress"
            return response

        cloudfront.create_invalidation = create_invalidation
        cloudfront.get_invalidation = get_invalidation
        cloudfront.throttling = True

    # ------------------------------------------------------------ the simulated physics
    def observe(self) -> None:
        """New instances appear at the current simulated time and boot the deployed version."""
        parameter = ssm_models.ssm_backends[DEFAULT_ACCOUNT_ID][REGION].get_parameter(DEPLOYED)
        assert parameter is not None, "the world is built with its deployed-version parameter"
        deployed = parameter.value
        for reservation in ec2_backends[DEFAULT_ACCOUNT_ID][REGION].reservations.values():
            for instance in reservation.instances:
                if instance.id not in self._seen:
                    self._seen[instance.id] = self.clock
                    # moto renders launch_time as given; its annotation says datetime.
                    instance.launch_time = datetime.datetime.fromtimestamp(  # type: ignore[assignment]
                        self.clock, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
                    self.versions.setdefault(instance.id, deployed)
                    self.pulled.add((instance.id, deployed))  # bootstrap pulled what it runs

    def _bootstrap_tags(self) -> None:
        """A server that finished booting tags itself with the version it booted (bootstrap.sh)."""
        done = [
            iid for iid, seen in self._seen.items()
            if iid not in self._tagged_at_boot and seen != START and self.clock >= seen + self.timing.boot
            and iid in self.versions
        ]
        for iid in done:
            self._tagged_at_boot.add(iid)
            if iid in self.servers():
                self.tag([iid], self.versions[iid])

    def _finish_launches(self) -> None:
        """A booted web server completes the launch hook: in service, then registered (bootstrap.sh)."""
        import moto.autoscaling.models as autoscaling_models

        backend = autoscaling_models.autoscaling_backends[DEFAULT_ACCOUNT_ID][REGION]
        for group in backend.autoscaling_groups.values():
            for s in group.instance_states:
                if s.lifecycle_state == "Pending:Wait" and not self.booting(s.instance.id):
                    s.lifecycle_state = "InService"
                    for arn in group.target_group_arns:
                        if (arn, s.instance.id) not in self._ever_registered:
                            backend.elbv2_backend.register_targets(arn, [{"Id": s.instance.id}])

    def booting(self, iid: str) -> bool:
        return self.clock < self._seen.get(iid, START) + self.timing.boot and self._seen.get(iid) != START

    def health(self, tg: str, iid: str) -> str:
        if (tg, iid) in self._registered:
            since = self._registered[(tg, iid)]
            if self.clock < since + self.timing.health:
                return "initial"
            if self.booting(iid):  # a target that does not answer yet fails its checks
                return "unhealthy"
            version = self.versions.get(iid, "")
            if (iid, version) in self.unhealthy:
                return "unhealthy"
            sick = self.sick_after.get(version)
            if sick is not None and self.clock >= since + self.timing.health + sick:
                return "unhealthy"
            return "healthy"
        if (tg, iid) in self._deregistered and self.clock < self._deregistered[(tg, iid)] + self.timing.drain:
            return "draining"
        return "unused"

    def invocation(self, command_id: str, iid: str) -> dict[str, Any]:
        command = self._commands[command_id]
        if iid not in command["instances"]:
            raise ssm_models.RESTError("InvocationDoesNotExist", "no such invocation")
        words = command["line"].split()
        mode, version = words[1], words[-1]
        durations = command.setdefault("durations", {})
        if iid not in durations:  # fixed when the server starts it: a pull it lacks comes first
            pulling = 0 if (iid, version) in self.pulled else self.timing.pull + self.slow_pulls.get(iid, 0)
            durations[iid] = pulling + {
                "pull": 0,
                "deploy": self.timing.restart if iid in self.instances("web") else self.timing.worker,
                "migrate": self.timing.pre if "pre" in words else self.timing.post,
            }[mode]
        duration = durations[iid]
        base = {
            "CommandId": command_id,
            "InstanceId": iid,
            "DocumentName": "AWS-RunShellScript",
            "PluginName": "aws:runShellScript",
            "StandardOutputContent": "",
            "StandardErrorContent": "",
        }
        if self.clock < command["sent"] + duration:
            return {**base, "Status": "InProgress", "StatusDetails": "InProgress", "ResponseCode": -1}
        key = (command_id, iid)
        if key not in self._outcomes:
            reason = next((r for fault in self.command_faults if (r := fault(iid, command["line"]))), None)
            if reason:
                self._outcomes[key] = {
                    "Status": "Failed",
                    "StatusDetails": "Failed",
                    "ResponseCode": 1,
                    "StandardErrorContent": reason,
                }
            else:
                if mode == "deploy":
                    self.versions[iid] = version
                self.pulled.add((iid, version))
                report = ""
                if mode == "deploy" and self._ecr:
                    report = "\nimage digests: " + " ".join(self.digests_of(iid, version))
                self._outcomes[key] = {
                    "Status": "Success",
                    "StatusDetails": "Success",
                    "ResponseCode": 0,
                    "StandardOutputContent": f"{mode} {version}{report}",
                }
        return {**base, **self._outcomes[key]}

    def advance(self, seconds: float) -> None:
        step = 5.0
        while seconds > 0:  # the world moves on in small steps while the state machine waits
            self.clock += min(step, seconds)
            seconds -= step
            self._auto_scaling_health()
        self.record_capacity()

    def _auto_scaling_health(self) -> None:
        """Auto Scaling's ELB health check: an unhealthy server is terminated and replaced."""
        if self.replace_unhealthy_after is None:
            return
        for iid in self.instances("web"):
            states = [self.health(tg, iid) for tg in self.target_groups]
            if "unhealthy" in states:
                first = self._unhealthy_since.setdefault(iid, self.clock)
                if self.clock >= first + self.replace_unhealthy_after:
                    self.replaced.append(iid)
                    self.terminate(iid)
            else:
                self._unhealthy_since.pop(iid, None)

    # ------------------------------------------------------------ what others do meanwhile
    def terminate(self, iid: str, decrement: bool = False) -> None:
        """EC2 reclaims a spot server, or Auto Scaling replaces one: it leaves the group."""
        for tg in self.target_groups:
            self._registered.pop((tg, iid), None)
        self.aws("autoscaling").terminate_instance_in_auto_scaling_group(
            InstanceId=iid, ShouldDecrementDesiredCapacity=decrement)

    def standby(self, iid: str) -> None:
        """An operator puts a server in Standby: Auto Scaling deregisters it (and launches a replacement)."""
        self.aws("autoscaling").enter_standby(
            AutoScalingGroupName=self.group_of(iid), InstanceIds=[iid], ShouldDecrementDesiredCapacity=False)
        for tg in self.target_groups if self.group_of(iid) == "web" else []:
            self.aws("elbv2").deregister_targets(TargetGroupArn=tg, Targets=[{"Id": iid}])

    def group_of(self, iid: str) -> str:
        return next((g for g in ("web", "worker", "queue") if iid in self.instances(g)), "web")

    def journals(self) -> dict[str, str]:
        """Every journal tag left on a server (read off moto's state: see _asg)."""
        ec2 = ec2_backends[DEFAULT_ACCOUNT_ID][REGION]
        found = {}
        for reservation in ec2.reservations.values():
            for instance in reservation.instances:
                if instance.state in ("terminated", "shutting-down"):
                    continue
                journal = ec2.tags.get(instance.id, {}).get(names.JOURNAL_TAG)
                if journal is not None:
                    found[instance.id] = journal
        return found

    def record_capacity(self) -> None:
        self.observe()
        self._finish_launches()
        self._bootstrap_tags()
        group = self._asg("web")
        assert group is not None, "the world is built with its web group"
        in_service = [s.instance.id for s in group.instance_states if s.lifecycle_state == "InService"]
        healthy = [i for i in in_service if all(self.health(tg, i) == "healthy" for tg in self.target_groups)]
        # What the unhealthy-target alarms count: every registered target reading unhealthy.
        self.unhealthy_targets.append((self.clock, sum(
            self.health(tg, iid) == "unhealthy" for tg, iid in self._registered)))
        # The size the minimum is measured against: the group's desired capacity without the
        # rollout's surge, so that a server that leaves (terminated, replaced) does not lower
        # the bar; a scale-out raises it only once its server has booted (the most servers
        # seen booted and in service, never above the desired capacity).
        surge = Surge.decode(next((t["Value"] for t in group.tags if t["Key"] == names.SURGE_TAG), None))
        desired = surge.desired if surge else group.desired_capacity
        settled = len([i for i in in_service if not self.booting(i)])
        self._served = min(max(self._served, settled), desired)
        self.capacity.append((self.clock, len(healthy), self._served))

    # ------------------------------------------------------------ looking at the world
    def group(self, name: str) -> dict[str, Any]:
        (group,) = self.aws("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
            "AutoScalingGroups"
        ]
        return group

    def aws(self, name: str) -> Any:
        """A client of the harness's own (its calls are not counted)."""
        if name not in _OWN:
            _OWN[name] = boto3.client(name, region_name=REGION)
        return _OWN[name]

    def _asg(self, name: str) -> Any:
        """moto's own record of a group, or None.

        The harness observes the world after every step and every tick of its clock; through
        the API each look costs a request that moto serializes and botocore parses again,
        which made up a third of a rollout test's time. What the rollout itself reads still
        goes through the API (its clients, counted in `calls`); `group()` too, for tests."""
        import moto.autoscaling.models as autoscaling_models

        backend = autoscaling_models.autoscaling_backends[DEFAULT_ACCOUNT_ID][REGION]
        return backend.autoscaling_groups.get(name)

    def instances(self, name: str) -> list[str]:
        if name == "queue" and self.queue is None:
            return []
        group = self._asg(name)  # a deleted group has no instances, as DescribeAutoScalingGroups says
        return [s.instance.id for s in group.instance_states] if group is not None else []

    def servers(self) -> list[str]:
        """Every server of every group (the queue workers' included)."""
        return self.instances("web") + self.instances("worker") + self.instances("queue")

    def tag(self, instances: list[str], version: str) -> None:
        self.aws("ec2").create_tags(
            Resources=instances, Tags=[{"Key": names.VERSION_TAG, "Value": version}]
        )

    def parameter(self, name: str) -> str:
        return self.aws("ssm").get_parameter(Name=name)["Parameter"]["Value"]

    def set_desired(self, version: str) -> None:
        self.aws("ssm").put_parameter(Name=DESIRED, Value=version, Type="String", Overwrite=True)

    def notifications(self) -> list[tuple[str, str]]:
        topic = sns_backends[DEFAULT_ACCOUNT_ID][REGION].topics[self.topic]
        return [(subject or "", message) for _, message, subject, *_ in topic.sent_notifications]

    def in_target_groups(self, iid: str) -> bool:
        return all((tg, iid) in self._registered for tg in self.target_groups)

    def min_capacity_margin(self) -> int:
        """Smallest (healthy web servers - required minimum) seen at any step."""
        return min(healthy - max(1, size - self.batch) for _, healthy, size in self.capacity)

    def commands_sent(self) -> list[str]:
        return [c["line"] for c in self._commands.values()]

    def deregistered(self) -> list[str]:
        """Servers taken out of a target group so far."""
        return sorted({iid for _, iid in self._deregistered})

    def commands(self, words: str) -> list[dict[str, Any]]:
        """The Run Commands whose line holds `words`: line, instances, sent, durations (per server)."""
        return [c for c in self._commands.values() if words in c["line"]]

    # ------------------------------------------------------------ the state machine
    def start_execution(self) -> str:
        """What EventBridge does on a parameter change: start an execution (moto keeps it RUNNING)."""
        sfn = self.aws("stepfunctions")
        return str(sfn.start_execution(stateMachineArn=self.state_machine, input="{}")["executionArn"])

    def end_execution(self, arn: str, status: str) -> None:
        backend = stepfunctions_backends[DEFAULT_ACCOUNT_ID][REGION]
        backend.describe_execution(arn).status = status

    def roll(self, execution: str | None = None, max_steps: int = 20_000) -> Result:
        """Runs one execution of the definition to its end; returns its status and output."""
        execution = execution or self.start_execution()
        handlers = {"rollout": rollout_handler.lambda_handler, "invalidate": invalidate.lambda_handler}
        context = {"Execution": {"Id": execution}, "StateMachine": {"Id": self.state_machine}}
        states, name = self.definition["States"], self.definition["StartAt"]
        data: dict[str, Any] = {}
        visited: list[str] = []
        started = self.clock
        counts: Counter[str] = Counter()
        for _ in range(max_steps):
            visited.append(name)
            counts[name] += 1
            for hook in self.hooks:
                hook(self, name, counts[name])
            state = states[name]
            kind = state["Type"]
            if kind == "Pass":
                data = resolve(state.get("Parameters", {}), data, context) if "Parameters" in state else data
            elif kind == "Task":
                self._current, self._counts = name, counts
                task = name
                data, name = self._task(state, handlers, data, context)
                self.record_capacity()
                for check in self.after_step:
                    check(self, task)
                continue
            elif kind == "Choice":
                name = choose(state, data)
                continue
            elif kind == "Wait":
                self.advance(data[state["SecondsPath"][2:]] if "SecondsPath" in state else state["Seconds"])
            elif kind in ("Succeed", "Fail"):
                status = "SUCCEEDED" if kind == "Succeed" else "FAILED"
                self.end_execution(execution, status)
                return Result(status, data, visited, self.clock - started)
            name = state["Next"]
        raise AssertionError(f"the rollout did not end within {max_steps} states: {visited[-20:]}")

    def _task(
        self, state: dict[str, Any], handlers: dict[str, Any], data: dict[str, Any], context: dict[str, Any]
    ) -> tuple[dict[str, Any], str]:
        """A Task as Step Functions runs it: Retry on a matching error (the same input again),
        then Catch; a lost answer is a Lambda.SdkClientException after the function ran."""
        event = resolve(state["Parameters"], data, context)
        name = self._current
        attempts: Counter[int] = Counter()
        while True:
            try:
                result = handlers[state["Resource"]](event, LambdaContext())
                if not sum(attempts.values()) and self.lose_answer(name, self._counts[name]):
                    self.lost_answers += 1
                    raise LostAnswer("the answer was lost after the function ran")
                json.dumps(result)  # what a task returns must be JSON
                return result, state["Next"]
            except Exception as error:
                kind = "Lambda.SdkClientException" if isinstance(error, LostAnswer) else type(error).__name__
                for index, policy in enumerate(state.get("Retry", [])):
                    if kind in policy["ErrorEquals"] and attempts[index] < policy["MaxAttempts"]:
                        attempts[index] += 1
                        self.retries += 1
                        backoff = policy.get("BackoffRate", 2) ** (attempts[index] - 1)
                        self.advance(policy["IntervalSeconds"] * backoff)
                        break
                else:
                    for catch in state.get("Catch", []):
                        if "States.ALL" in catch["ErrorEquals"] or kind in catch["ErrorEquals"]:
                            caught = {"Error": kind, "Cause": json.dumps({"errorMessage": str(error)})}
                            return {**data, catch["ResultPath"][2:]: caught}, catch["Next"]
                    raise


class LostAnswer(Exception):
    """What Step Functions sees when a function's answer does not reach it."""


def resolve(template: Any, data: dict[str, Any], context: dict[str, Any]) -> Any:
    """Parameters with "key.$" paths, as Step Functions resolves them ($ and $$ paths only)."""
    if isinstance(template, dict):
        out = {}
        for key, value in template.items():
            if key.endswith(".$"):
                root, path = (context, value[3:]) if value.startswith("$$.") else (data, value[2:])
                for part in filter(None, path.split(".")):
                    root = root[part]
                out[key[:-2]] = root
            else:
                out[key] = resolve(value, data, context)
        return out
    return template


def choose(state: dict[str, Any], data: dict[str, Any]) -> str:
    for choice in state["Choices"]:
        if data.get(choice["Variable"][2:]) == choice["StringEquals"]:
            return str(choice["Next"])
    return str(state["Default"])
