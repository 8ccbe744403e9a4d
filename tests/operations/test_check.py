"""scripts/check.py against local fakes: CloudFront and Mastodon on loopback (check_fakes.py),
the stack's resources in moto. Every check passes on the healthy fakes and fails, with a
cause and a next step, when the fake it reads misbehaves."""

from __future__ import annotations

import datetime
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import moto.elbv2.models as elbv2_models
import pytest
from moto import mock_aws
from moto.cloudformation.models import cloudformation_backends
from moto.core import DEFAULT_ACCOUNT_ID

from lambdas.rollout.names import VERSION_TAG
from lambdas.rollout.plan import handled_record
from scripts import check
from scripts.deploy import FIRST_OUTPUT
from templates import (
    alarms,
    compute,
    data,
    edge,
    load_balancing,
    maintenance,
    operations,
    pipeline,
    sidekiq,
    versions,
)
from tests.operations.check_fakes import (
    DOMAIN,
    S3_HOST,
    STDERR_KEPT,
    Authority,
    Behaviour,
    Edge,
    Fixed,
    Worker,
    closed_port,
    port_of,
    ruby_crash,
)

REGION = "us-east-1"
STACK = "mastodon"
VERSION = "v4.7.6"
BUCKET = "mastodon-media-bucket"
SECRET = "secret-value"
ROOT = Path(__file__).resolve().parents[2]
UPGRADE = "WebSocket upgrade request reaches the streaming server"


class _Ok:
    status_code = 200


def _policy(name: str, behaviour: str, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    """An origin request policy as GetOriginRequestPolicy returns it."""
    listed = {"Quantity": len(headers), "Items": list(headers)} if headers else {"Quantity": 0}
    return {
        "Name": name,
        "HeadersConfig": {"HeaderBehavior": behaviour, "Headers": listed},
        "CookiesConfig": {"CookieBehavior": "all"},
        "QueryStringsConfig": {"QueryStringBehavior": "all"},
    }


@dataclass
class World:
    """The stack in moto, the fakes on loopback, and what the check asked of them."""

    session: Any
    authority: Authority
    resources: dict[str, str]
    behaviour: Behaviour = field(default_factory=Behaviour)
    load_balancer_status: int | None = None  # None: nothing answers at its address
    bucket_status: int = 403
    ssm_online: set[str] | None = None
    ses_identity: dict[str, Any] = field(
        default_factory=lambda: {"VerifiedForSendingStatus": True, "DkimAttributes": {"Status": "SUCCESS"}}
    )
    ses_account: dict[str, Any] = field(
        default_factory=lambda: {"ProductionAccessEnabled": True, "SendingEnabled": True}
    )
    # What GetOriginRequestPolicy answers (moto lacks it), by ID: AWS's managed AllViewer.
    origin_request_policies: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {edge.ALL_VIEWER: _policy("Managed-AllViewer", "allViewer")}
    )
    commands: list[dict[str, Any]] = field(default_factory=list)
    cancelled: list[dict[str, Any]] = field(default_factory=list)  # CancelCommand's parameters
    worker: Worker = field(default_factory=Worker)
    invocations: dict[str, dict[str, str]] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    options: check.Options = field(
        default_factory=lambda: check.Options(
            media_wait=2, poll=0.05, heartbeat_wait=1.0, s3_host=lambda bucket, region: S3_HOST
        )
    )

    def client(self, name: str) -> Any:
        return self.session.client(name)

    def instances(self, logical_id: str) -> list[str]:
        (group,) = self.client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[self.resources[logical_id]]
        )["AutoScalingGroups"]
        return [i["InstanceId"] for i in group["Instances"]]

    def network(self) -> check.Network:
        edge_server = Edge(self.authority, self.behaviour, self.client("s3"), BUCKET)
        self.edges.append(edge_server)
        balancer = self.client("elbv2").describe_load_balancers(
            LoadBalancerArns=[self.resources[load_balancing.LOAD_BALANCER]]
        )["LoadBalancers"][0]
        balancer_port = (
            closed_port()
            if self.load_balancer_status is None
            else Fixed(self.authority, "internal.example", self.load_balancer_status).port
        )
        routes = {
            (DOMAIN, 443): ("127.0.0.1", port_of(edge_server.https)),
            (DOMAIN, 80): ("127.0.0.1", port_of(edge_server.http)),
            (balancer["DNSName"], 443): ("127.0.0.1", balancer_port),
            (S3_HOST, 443): ("127.0.0.1", Fixed(self.authority, S3_HOST, self.bucket_status).port),
        }
        return check.Network(timeout=2.0, cafile=str(self.authority.cafile), routes=routes)

    def run(
        self, groups: tuple[str, ...] = check.GROUPS, net: check.Network | None = None
    ) -> list[check.Result]:
        return check.check(self.session, STACK, net or self.network(), self.options, groups)


def _short_circuit(world: World) -> None:
    """Answers for the calls moto lacks, from the world's fields (botocore's before-call hook)."""

    def sent(request: dict[str, Any]) -> dict[str, Any]:
        """The call's parameters: botocore hands over the serialized request (JSON protocols)."""
        body = request.get("body") or b"{}"
        return dict(json.loads(body if isinstance(body, str) else body.decode()))

    def answer(body: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[..., Any]:
        def handler(params: dict[str, Any], **_: Any) -> Any:
            return _Ok(), body(sent(params))

        return handler

    def instance_information(params: dict[str, Any]) -> dict[str, Any]:
        wanted = params["Filters"][0]["Values"]
        online = set(wanted) if world.ssm_online is None else world.ssm_online
        return {
            "InstanceInformationList": [
                {"InstanceId": i, "PingStatus": "Online", "AgentVersion": "3.3"}
                for i in wanted
                if i in online
            ]
        }

    def send_command(params: dict[str, Any]) -> None:
        world.commands.append(params)

    def command_sent(parsed: dict[str, Any], **_: Any) -> None:
        """moto took the command: the fake worker runs it, GetCommandInvocation reports it."""
        lines = world.commands[-1]["Parameters"]["commands"]
        world.invocations[parsed["Command"]["CommandId"]] = world.worker.run(
            lines, check.RESULT_MARK, check.MAIL_TO_ENV
        )

    def invocation(params: dict[str, Any]) -> dict[str, Any]:
        return {"CommandId": params["CommandId"], **world.invocations[params["CommandId"]]}

    def cancel(params: dict[str, Any]) -> dict[str, Any]:
        world.cancelled.append(params)
        world.invocations[params["CommandId"]] = {
            "Status": "Cancelled", "StandardOutputContent": "", "StandardErrorContent": ""
        }
        return {}

    def origin_request_policy(params: dict[str, Any], **_: Any) -> Any:
        """GetOriginRequestPolicy (a REST call: its ID is in the URL)."""
        policy_id = params["url_path"].rstrip("/").split("/")[-1]
        if policy_id not in world.origin_request_policies:
            raise RuntimeError(f"NoSuchOriginRequestPolicy: {policy_id}")
        return _Ok(), {
            "OriginRequestPolicy": {
                "Id": policy_id,
                "LastModifiedTime": datetime.datetime.now(datetime.UTC),
                "OriginRequestPolicyConfig": world.origin_request_policies[policy_id],
            },
            "ETag": "E1",
        }

    events = world.session.events
    events.register("before-call.cloudfront.GetOriginRequestPolicy", origin_request_policy)
    events.register("before-call.ssm.DescribeInstanceInformation", answer(instance_information))
    events.register("before-call.sesv2.GetEmailIdentity", answer(lambda _: world.ses_identity))
    events.register("before-call.sesv2.GetAccount", answer(lambda _: world.ses_account))
    events.register("before-call.ssm.SendCommand", lambda params, **_: send_command(sent(params)))
    events.register("after-call.ssm.SendCommand", command_sent)
    events.register("before-call.ssm.GetCommandInvocation", answer(invocation))
    # moto has no CancelCommand: the fake worker's command stops (Cancelled, as SSM reports).
    events.register("before-call.ssm.CancelCommand", answer(cancel))


TEMPLATE = {
    "Parameters": {"DomainName": {"Type": "String"}, "SmtpServer": {"Type": "String", "Default": ""}},
    "Resources": {operations.ALERT_TOPIC: {"Type": "AWS::SNS::Topic"}},
    "Outputs": {FIRST_OUTPUT: {"Value": {"Fn::Join": ["", ["https://", {"Ref": "DomainName"}, "/"]]}}},
}


def _build(session: Any) -> dict[str, str]:
    """The stack's resources that the check reads, by their logical IDs."""
    names = check.parameter_names()
    template = json.loads(
        json.dumps(TEMPLATE)
        .replace("DomainName", names.domain.title)
        .replace("SmtpServer", names.smtp_server.title)
    )
    c = session.client
    c("cloudformation").create_stack(
        StackName=STACK,
        TemplateBody=json.dumps(template),
        Parameters=[{"ParameterKey": names.domain.title, "ParameterValue": DOMAIN}],
    )
    resources = check.stack_resources(session, STACK)
    ssm = c("ssm")
    for logical_id, name, value in (
        (versions.DESIRED_VERSION, "desired-version", VERSION),
        (versions.DEPLOYED_VERSION, "deployed-version", VERSION),
        (pipeline.ROLLOUT_STATE, "rollout-last", "{}"),
    ):
        resources[logical_id] = f"/mastodon/{STACK}/{name}"
        ssm.put_parameter(Name=resources[logical_id], Value=value, Type="String")
    resources[pipeline.STATE_MACHINE] = c("stepfunctions").create_state_machine(
        name="rollout",
        roleArn="arn:aws:iam::123456789012:role/rollout",
        definition=json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}),
    )["stateMachineArn"]
    for name in ("web-5xx", "database-cpu"):
        c("cloudwatch").put_metric_alarm(
            AlarmName=name,
            MetricName="m",
            Namespace="n",
            Statistic="Average",
            Period=60,
            EvaluationPeriods=1,
            Threshold=1,
            ComparisonOperator="GreaterThanThreshold",
            AlarmDescription=f"{name}: what to do",
            AlarmActions=[resources[operations.ALERT_TOPIC]],
        )
        c("cloudwatch").set_alarm_state(AlarmName=name, StateValue="OK", StateReason="fine")
    resources[edge.DISTRIBUTION] = c("cloudfront").create_distribution(
        DistributionConfig={
            "CallerReference": "check",
            "Comment": "",
            "Enabled": True,
            "HttpVersion": "http2and3",
            "Origins": {
                "Quantity": 1,
                "Items": [
                    {
                        "Id": "o",
                        "DomainName": "o.example.com",
                        "CustomOriginConfig": {
                            "HTTPPort": 80,
                            "HTTPSPort": 443,
                            "OriginProtocolPolicy": "https-only",
                        },
                    }
                ],
            },
            "DefaultCacheBehavior": {
                "TargetOriginId": "o",
                "ViewerProtocolPolicy": "redirect-to-https",
                "CachePolicyId": edge.CACHING_DISABLED,
            },
            "CacheBehaviors": {
                "Quantity": 1,
                "Items": [
                    {
                        "PathPattern": edge.STREAMING_PATH,
                        "TargetOriginId": "o",
                        "ViewerProtocolPolicy": "redirect-to-https",
                        "CachePolicyId": edge.CACHING_DISABLED,
                        "OriginRequestPolicyId": edge.ALL_VIEWER,  # as the template has it
                    }
                ],
            },
        }
    )["Distribution"]["Id"]
    ec2 = c("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.42.{n}.0/24", AvailabilityZone=f"{REGION}{z}")["Subnet"][
            "SubnetId"
        ]
        for n, z in ((0, "a"), (1, "b"))
    ]
    elb = c("elbv2")
    balancer = elb.create_load_balancer(Name="mastodon", Subnets=subnets)["LoadBalancers"][0][
        "LoadBalancerArn"
    ]
    resources[load_balancing.LOAD_BALANCER] = balancer
    groups = {}
    for logical_id, port in (
        (load_balancing.WEB_TARGET_GROUP, load_balancing.WEB_PORT),
        (load_balancing.STREAMING_TARGET_GROUP, load_balancing.STREAMING_PORT),
    ):
        groups[logical_id] = elb.create_target_group(
            Name=logical_id[:20], Protocol="HTTP", Port=port, VpcId=vpc
        )["TargetGroups"][0]["TargetGroupArn"]
        resources[logical_id] = groups[logical_id]
    certificate = c("acm").request_certificate(DomainName=DOMAIN)["CertificateArn"]
    listener = elb.create_listener(
        LoadBalancerArn=balancer,
        Protocol="HTTPS",
        Port=443,
        Certificates=[{"CertificateArn": certificate}],
        DefaultActions=[
            {
                "Type": "fixed-response",
                "FixedResponseConfig": {
                    "StatusCode": "403",
                    "ContentType": "text/plain",
                    "MessageBody": "Forbidden",
                },
            }
        ],
    )["Listeners"][0]
    resources[load_balancing.HTTPS_LISTENER] = listener["ListenerArn"]
    header = {
        "Field": "http-header",
        "HttpHeaderConfig": {"HttpHeaderName": load_balancing.ORIGIN_VERIFY_HEADER, "Values": [SECRET]},
    }
    for priority, (logical_id, paths) in enumerate(
        (
            (load_balancing.STREAMING_TARGET_GROUP, load_balancing.STREAMING_PATHS),
            (load_balancing.WEB_TARGET_GROUP, ["/*"]),
        ),
        start=1,
    ):
        elb.create_rule(
            ListenerArn=listener["ListenerArn"],
            Priority=priority,
            Conditions=[header, {"Field": "path-pattern", "PathPatternConfig": {"Values": paths}}],
            Actions=[{"Type": "forward", "TargetGroupArn": groups[logical_id]}],
        )
    image = "ami-12c6146b"  # one of moto's stock images (listing them all is slow)
    template = ec2.create_launch_template(
        LaunchTemplateName="servers", LaunchTemplateData={"ImageId": image, "InstanceType": "t4g.small"}
    )["LaunchTemplate"]["LaunchTemplateId"]
    autoscaling = c("autoscaling")
    for logical_id, size, target_groups in (
        (compute.WEB_GROUP, 1, list(groups.values())),
        (compute.WORKER_GROUP, 1, []),
    ):
        resources[logical_id] = f"{STACK}-{logical_id}"
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=resources[logical_id],
            MinSize=size,
            MaxSize=size + (logical_id == compute.WEB_GROUP),
            DesiredCapacity=size,
            LaunchTemplate={"LaunchTemplateId": template},
            VPCZoneIdentifier=subnets[0],
            TargetGroupARNs=target_groups,
        )
        (group,) = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[resources[logical_id]])[
            "AutoScalingGroups"
        ]
        ids = [i["InstanceId"] for i in group["Instances"]]
        ec2.create_tags(Resources=ids, Tags=[{"Key": VERSION_TAG, "Value": VERSION}])
    s3 = c("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    resources[data.MEDIA_BUCKET] = BUCKET
    c("sesv2").create_email_identity(EmailIdentity=DOMAIN)
    return resources


@pytest.fixture
def world(tmp_path, monkeypatch) -> Iterator[World]:
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        session = boto3.session.Session(region_name=REGION)
        resources = _build(session)
        # moto's CloudFormation holds only the stack's shell: the rest was made beside it.
        monkeypatch.setattr(check, "stack_resources", lambda *_: dict(resources))
        created = World(session=session, authority=Authority(tmp_path), resources=resources)
        _short_circuit(created)
        yield created


def failing(results: list[check.Result]) -> list[str]:
    return [r.name for r in results if r.status == check.FAIL]


def by_name(results: list[check.Result], name: str) -> check.Result:
    (found,) = [r for r in results if r.name == name]
    return found


# ---------------------------------------------------------------- the healthy stack


def test_every_check_passes_on_a_healthy_stack_and_leaves_no_probe_behind(world):
    results = world.run()

    assert failing(results) == [], "\n".join(check.render(results))
    assert check.summary(results)[0] == 0
    passed = {r.name for r in results if r.status == check.PASS}
    assert {
        "status",
        "versions agree",
        "no rollout running or failed",
        "alarms",
        "certificate",
        "HTTP redirects to HTTPS",
        "/health through CloudFront",
        "security headers",
        "HTTP/2",
        "HTTP/3 advertised",
        "load balancer not reachable directly",
        "listener requires the secret header",
        "instance API",
        "version",
        "WebFinger",
        "NodeInfo",
        "host-meta",
        "streaming health",
        UPGRADE,
        "WebSocket heartbeat",
        check.WEBSOCKET_HEADERS_CHECK,
        "served through CloudFront",
        "media headers",
        "media cached at the edge",
        "bucket not public",
        "gone from the edge after deletion",
        "SMTP settings",
        "SES identity",
        "SES sending status",
        "worker group holds one server",
        "Sidekiq scheduler in exactly one process",
    } <= passed
    for iid in world.instances(compute.WEB_GROUP):
        assert {
            f"web {iid} in service",
            f"web {iid} version",
            f"web {iid} SSM",
            f"web {iid} targets",
        } <= passed
    (worker,) = world.instances(compute.WORKER_GROUP)
    assert f"worker {worker} version" in passed
    # The probe went in, was served, and is gone with every version and delete marker.
    assert any(
        path.startswith(f"{edge.MEDIA_PATH}/{check.PROBE_PREFIX}/") for path in world.behaviour.requests
    )
    listed = world.client("s3").list_object_versions(Bucket=BUCKET)
    assert not listed.get("Versions") and not listed.get("DeleteMarkers")


def test_the_probe_carries_the_cache_lifetime_mastodon_uploads_media_with(world):
    # The edge keeps an object for the lesser of its max-age and the policy's maximum TTL:
    # without Mastodon's ten-year max-age the probe would leave by the default TTL and pass
    # even when the maximum, which real media meet, had been raised.
    world.run(("media",))
    served = {key: value for edge_server in world.edges for key, value in edge_server.cache_control.items()}
    assert served and set(served.values()) == {check.MEDIA_CACHE_CONTROL}
    assert "max-age=315576000" in check.MEDIA_CACHE_CONTROL


def test_a_probe_that_cannot_be_deleted_is_a_failed_line_not_the_end_of_the_run(world):
    def refuse(params: dict[str, Any], **_: Any) -> None:
        if "VersionId" not in params:  # the deletion itself; removing the versions still works
            raise RuntimeError("AccessDenied: s3:DeleteObject")

    original = world.session.client

    def client(name: str, *args: Any, **kwargs: Any) -> Any:
        made = original(name, *args, **kwargs)
        if name == "s3":
            made.meta.events.register("provide-client-params.s3.DeleteObject", refuse)
        return made

    world.session.client = client  # type: ignore[method-assign]
    results = world.run()
    gone = by_name(results, "gone from the edge after deletion")
    assert gone.status == check.FAIL and "s3:DeleteObject" in gone.detail
    # Every later group still ran, and the probe's version was removed all the same.
    assert {r.group for r in results} >= {"mail", "servers"}
    listed = world.client("s3").list_object_versions(Bucket=BUCKET)
    assert not listed.get("Versions")


def test_the_lines_are_grouped_marked_and_summed_up_and_json_says_the_same(world):
    world.behaviour.streaming_health = 502
    results = world.run()

    lines = list(check.render(results))
    assert lines[0] == "stack"
    assert [line for line in lines if not line.startswith(" ")][:-1] == list(check.GROUPS)
    failed = lines.index(next(line for line in lines if line.startswith("  ✗ streaming health")))
    assert lines[failed + 1].startswith("      likely cause: the streaming server does not answer")
    assert lines[failed + 2].startswith("      next step: check the streaming target group")
    assert any(line.startswith("  ✓ ") for line in lines) and any(line.startswith("  – ") for line in lines)
    assert lines[-1].endswith("some required checks FAIL")
    document = json.loads(check.as_json(STACK, results))
    assert document["ok"] is False and document["counts"]["fail"] == 1
    (streaming,) = [c for c in document["checks"] if c["name"] == "streaming health"]
    assert streaming["status"] == "fail" and streaming["cause"] and streaming["step"]


# ---------------------------------------------------------------- each check fails on its fault


def _stale_server(world: World) -> None:
    (iid, *_) = world.instances(compute.WEB_GROUP)
    world.client("ec2").create_tags(Resources=[iid], Tags=[{"Key": VERSION_TAG, "Value": "v4.7.5"}])


def _unhealthy_streaming(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    streaming = world.resources[load_balancing.STREAMING_TARGET_GROUP]
    original = elbv2_models.FakeTargetGroup.health_for

    def health_for(group: Any, target: Any, ec2_backend: Any) -> Any:
        found = original(group, target, ec2_backend)
        if group.arn == streaming:
            found.status, found.reason = "unhealthy", "Target.FailedHealthChecks"
        return found

    monkeypatch.setattr(elbv2_models.FakeTargetGroup, "health_for", health_for)


def _loose_rule(world: World) -> None:
    world.client("elbv2").create_rule(
        ListenerArn=world.resources[load_balancing.HTTPS_LISTENER],
        Priority=50,
        Conditions=[{"Field": "path-pattern", "Values": ["/open/*"]}],
        Actions=[{"Type": "forward", "TargetGroupArn": world.resources[load_balancing.WEB_TARGET_GROUP]}],
    )


def _stack_rolled_back(world: World) -> None:
    backend = cloudformation_backends[DEFAULT_ACCOUNT_ID][REGION]
    (stack,) = [s for s in backend.stacks.values() if s.name == STACK]
    stack.status = "UPDATE_ROLLBACK_COMPLETE"


def _no_outputs(world: World) -> None:
    """The stack as a create that never finished leaves it: no outputs."""
    cloudformation = world.client("cloudformation")
    template = cloudformation.get_template(StackName=STACK)["TemplateBody"]
    template.pop("Outputs")
    cloudformation.delete_stack(StackName=STACK)
    cloudformation.create_stack(StackName=STACK, TemplateBody=json.dumps(template), Parameters=[
        {"ParameterKey": check.parameter_names().domain.title, "ParameterValue": DOMAIN}])


def _failed_rollout(world: World) -> None:
    world.client("ssm").put_parameter(
        Name=world.resources[pipeline.ROLLOUT_STATE],
        Overwrite=True,
        Value=(
            handled_record(2, "v4.7.7", "failed", "arn:execution:x", "web servers failed their health checks")
        ),
    )


FAULTS: list[tuple[str, Callable[..., None], list[str]]] = [
    ("stack rolled back", _stack_rolled_back, ["status"]),
    ("no outputs", _no_outputs, ["outputs"]),
    (
        "versions differ",
        lambda w: w.client("ssm").put_parameter(
            Name=w.resources[versions.DESIRED_VERSION], Value="v4.7.7", Overwrite=True
        ),
        ["versions agree"],
    ),
    (
        "rollout running",
        lambda w: w.client("stepfunctions").start_execution(
            stateMachineArn=w.resources[pipeline.STATE_MACHINE]
        ),
        ["no rollout running or failed"],
    ),
    ("rollout failed", _failed_rollout, ["no rollout running or failed"]),
    (
        "alarm in ALARM",
        lambda w: w.client("cloudwatch").set_alarm_state(
            AlarmName="web-5xx", StateValue="ALARM", StateReason="5xx"
        ),
        ["alarm web-5xx", "alarms"],
    ),
    (
        "wrong certificate",
        lambda w: setattr(w.behaviour, "certificate_host", "other.example.org"),
        ["certificate"],
    ),
    ("certificate about to expire", lambda w: setattr(w.behaviour, "certificate_days", 3), ["certificate"]),
    (
        "plain HTTP served",
        lambda w: setattr(w.behaviour, "redirect_http", False),
        ["HTTP redirects to HTTPS"],
    ),
    (
        "no healthy web server",
        lambda w: setattr(w.behaviour, "health_status", 503),
        ["/health through CloudFront"],
    ),
    (
        "not through CloudFront",
        lambda w: setattr(w.behaviour, "cloudfront_headers", False),
        ["/health through CloudFront", "media cached at the edge"],
    ),
    (
        "security headers stripped",
        lambda w: setattr(w.behaviour, "security_headers", False),
        ["security headers"],
    ),
    ("no HTTP/2", lambda w: setattr(w.behaviour, "http2", False), ["HTTP/2"]),
    (
        "origin reachable",
        lambda w: setattr(w, "load_balancer_status", 403),
        ["load balancer not reachable directly"],
    ),
    (
        "origin reachable and open",
        lambda w: setattr(w, "load_balancer_status", 200),
        ["load balancer not reachable directly", "direct request refused"],
    ),
    ("a rule forwards without the header", _loose_rule, ["listener requires the secret header"]),
    (
        "another domain",
        lambda w: setattr(w.behaviour, "instance_domain", "other.example.org"),
        ["instance API"],
    ),
    ("stale version", lambda w: setattr(w.behaviour, "version", "4.7.5"), ["version", "NodeInfo"]),
    ("owner not found", lambda w: setattr(w.behaviour, "webfinger", False), ["WebFinger"]),
    (
        "NodeInfo names another host",
        lambda w: setattr(w.behaviour, "nodeinfo_host", "other.example.org"),
        ["NodeInfo"],
    ),
    ("streaming down", lambda w: setattr(w.behaviour, "streaming_health", 502), ["streaming health"]),
    ("no heartbeat", lambda w: setattr(w.behaviour, "websocket", "silent"), ["WebSocket heartbeat"]),
    (
        "WebSocket closed at once",
        lambda w: setattr(w.behaviour, "websocket", "close"),
        ["WebSocket heartbeat"],
    ),
    (
        "WebSocket refused by the load balancer",
        lambda w: setattr(w.behaviour, "websocket", "403"),
        [UPGRADE, "WebSocket heartbeat"],
    ),
    (
        "Upgrade headers dropped on the way",
        lambda w: setattr(w.behaviour, "upgrade_headers", False),
        [UPGRADE, "WebSocket heartbeat"],
    ),
    (
        "streaming behaviour forwards only Upgrade and Connection",
        lambda w: w.origin_request_policies.update(
            {edge.ALL_VIEWER: _policy("upgrade-only", "whitelist", ("Upgrade", "Connection"))}
        ),
        [check.WEBSOCKET_HEADERS_CHECK],
    ),
    (
        "streaming behaviour forwards all but Sec-WebSocket-Key",
        lambda w: w.origin_request_policies.update(
            {edge.ALL_VIEWER: _policy("all-but-key", "allExcept", ("sec-websocket-key",))}
        ),
        [check.WEBSOCKET_HEADERS_CHECK],
    ),
    (
        "streaming behaviour forwards no header",
        lambda w: w.origin_request_policies.update({edge.ALL_VIEWER: _policy("none", "none")}),
        [check.WEBSOCKET_HEADERS_CHECK],
    ),
    (
        "media not served",
        lambda w: setattr(w.behaviour, "media_status", 403),
        ["served through CloudFront", "media cached at the edge"],
    ),
    ("media headers missing", lambda w: setattr(w.behaviour, "media_headers", False), ["media headers"]),
    (
        "media still served after delete",
        lambda w: setattr(w.behaviour, "invalidates", False),
        ["gone from the edge after deletion"],
    ),
    ("bucket public", lambda w: setattr(w, "bucket_status", 200), ["bucket not public"]),
    ("DKIM pending", lambda w: w.ses_identity["DkimAttributes"].update(Status="PENDING"), ["SES identity"]),
    ("SES paused", lambda w: w.ses_account.update(SendingEnabled=False), ["SES sending status"]),
    ("stale server", _stale_server, ["version"]),
    ("server not in SSM", lambda w: setattr(w, "ssm_online", set()), ["SSM"]),
    (
        "two schedulers possible",
        lambda w: w.client("autoscaling").update_auto_scaling_group(
            AutoScalingGroupName=w.resources[compute.WORKER_GROUP], MaxSize=2
        ),
        ["worker group holds one server"],
    ),
    (
        "no process runs the scheduler",
        lambda w: w.worker.processes[0]["queues"].remove("scheduler"),
        ["Sidekiq scheduler in exactly one process"],
    ),
    (
        "a second process runs the scheduler",
        lambda w: w.worker.processes.append({"hostname": "ip-10-0-2-7", "queues": ["scheduler", "default"]}),
        ["Sidekiq scheduler in exactly one process"],
    ),
    (
        "the worker cannot be asked",
        lambda w: setattr(w.worker, "status", "Failed"),
        ["SMTP settings", "Sidekiq scheduler in exactly one process"],
    ),
    (
        "Sidekiq's container is not there",
        lambda w: setattr(w.worker, "container", "mastodon-web"),
        ["SMTP settings", "Sidekiq scheduler in exactly one process"],
    ),
    (
        "servers mail through another region",
        lambda w: w.worker.smtp.update(address="email-smtp.eu-west-1.amazonaws.com"),
        ["SMTP settings"],
    ),
    ("servers have no SMTP password", lambda w: w.worker.smtp.update(password=False), ["SMTP settings"]),
    ("servers mail without TLS", lambda w: w.worker.smtp.update(starttls=False), ["SMTP settings"]),
    (
        "Mastodon does not mail by SMTP",
        lambda w: w.worker.smtp.update(delivery_method="sendmail"),
        ["SMTP settings"],
    ),
]


CASCADES = {"wrong certificate"}


def _matches(name: str, expected: str) -> bool:
    return name == expected or name.endswith(f" {expected}")


@pytest.mark.parametrize(("case", "fault", "expected"), FAULTS, ids=[f[0] for f in FAULTS])
def test_each_check_fails_with_a_cause_and_a_next_step_when_its_fake_misbehaves(world, case, fault, expected):
    fault(world)

    results = world.run()

    failed = [r for r in results if r.status == check.FAIL]
    for name in expected:
        assert any(_matches(r.name, name) for r in failed), f"{case}: {name} did not fail\n" + "\n".join(
            check.render(results)
        )
    for result in failed:
        assert result.cause and result.step, result
    # Nothing else fails: the fault is found where it is, not everywhere (but a certificate
    # CloudFront cannot present breaks every request after it).
    assert case in CASCADES or all(any(_matches(r.name, name) for name in expected) for r in failed), (
        "\n".join(check.render(results))
    )
    assert check.summary(results)[0] == 1


@pytest.mark.parametrize("tag, reported", [("v4.7.6-glitch", "4.7.6+glitch"), ("2026-12-01", "4.7.6")])
def test_a_tag_of_your_own_images_is_not_compared_with_the_version_mastodon_reports(world, tag, reported):
    """A fork's or a CI's tag says nothing of what Mastodon reports: no stale-version alarm."""
    ssm = world.client("ssm")
    for logical_id in (versions.DESIRED_VERSION, versions.DEPLOYED_VERSION):
        ssm.put_parameter(Name=world.resources[logical_id], Value=tag, Overwrite=True)
    ids = world.instances(compute.WEB_GROUP) + world.instances(compute.WORKER_GROUP)
    world.client("ec2").create_tags(Resources=ids, Tags=[{"Key": VERSION_TAG, "Value": tag}])
    world.behaviour.version = reported

    results = world.run(("stack", "mastodon", "servers"))

    assert failing(results) == [], "\n".join(check.render(results))
    assert "not compared" in by_name(results, "version").detail


def test_an_unhealthy_target_fails_its_server(world, monkeypatch):
    _unhealthy_streaming(world, monkeypatch)

    results = world.run(("stack", "servers"))

    (iid,) = world.instances(compute.WEB_GROUP)
    assert by_name(results, f"web {iid} targets").status == check.FAIL
    assert "unhealthy" in by_name(results, f"web {iid} targets").detail


def test_the_sandbox_is_reported_but_does_not_fail_the_run(world):
    world.ses_account["ProductionAccessEnabled"] = False

    results = world.run(("stack", "mail"))

    status = by_name(results, "SES sending status")
    assert status.status == check.FAIL and not status.required and "sandbox" in status.detail
    assert "production access" in status.step
    assert check.summary(results)[0] == 0
    assert "(advisory)" in "\n".join(check.render(results))


def test_a_missing_alt_svc_is_advisory_where_http3_is_on(world):
    world.behaviour.alt_svc = ""

    results = world.run(("stack", "edge"))

    assert by_name(results, "HTTP/3 advertised").status == check.FAIL
    assert check.summary(results)[0] == 0


# ---------------------------------------------------------------- the streaming server's token


def test_a_websocket_refused_for_want_of_a_token_proves_the_route_and_asks_for_one(world):
    world.behaviour.websocket = "ping-with-token"  # as Mastodon 4: no WebSocket without a token

    results = world.run(("stack", "mastodon"))

    reaches = by_name(results, UPGRADE)
    assert reaches.status == check.PASS and "X-Error-Message: Missing access token" in reaches.detail
    heartbeat = by_name(results, "WebSocket heartbeat")
    assert heartbeat.status == check.SKIP and "--access-token" in heartbeat.detail
    assert check.summary(results)[0] == 0


def test_with_a_token_the_websocket_must_be_accepted(world):
    world.behaviour.websocket = "401"
    world.options.access_token = "refused"

    results = world.run(("stack", "mastodon"))

    heartbeat = by_name(results, "WebSocket heartbeat")
    assert heartbeat.status == check.FAIL and heartbeat.cause == "the access token was refused"
    assert "Invalid access token" in heartbeat.detail


def test_with_a_token_a_websocket_mastodon_accepts_receives_its_heartbeat(world):
    world.behaviour.websocket = "ping-with-token"
    world.options.access_token = "good"

    results = world.run(("stack", "mastodon"))

    assert by_name(results, "WebSocket heartbeat").status == check.PASS
    assert by_name(results, UPGRADE).detail == "upgraded (101)"


@pytest.mark.parametrize("token", [None, "good"])
def test_an_edge_that_drops_the_upgrade_headers_fails_with_or_without_a_token(world, token):
    world.behaviour.websocket = "ping-with-token"
    world.behaviour.upgrade_headers = False
    world.options.access_token = token

    results = world.run(("stack", "mastodon"))

    reaches = by_name(results, UPGRADE)
    assert reaches.status == check.FAIL and "Upgrade headers were lost" in reaches.cause
    assert "Unknown channel requested" in reaches.detail  # the HTTP handler's own JSON error
    assert by_name(results, "WebSocket heartbeat").status == check.FAIL
    assert check.summary(results)[0] == 1


def test_a_401_from_the_http_handler_is_not_taken_for_the_upgrade_refusal(world, monkeypatch):
    # On a stream given by path the HTTP handler, too, answers 401 without a token: its JSON
    # body, not the status, tells that the Upgrade headers never reached the streaming server.
    monkeypatch.setattr(check, "WEBSOCKET_PATH", "/api/v1/streaming/public/local")
    world.behaviour.websocket = "ping-with-token"
    world.behaviour.upgrade_headers = False

    results = world.run(("stack", "mastodon"))

    reaches = by_name(results, UPGRADE)
    assert reaches.status == check.FAIL and reaches.detail.startswith("401 ")
    assert "Missing access token" in reaches.detail
    heartbeat = by_name(results, "WebSocket heartbeat")
    assert heartbeat.status == check.FAIL and "upgrade headers were lost" in heartbeat.cause


def test_the_fake_edge_routes_the_upgraded_stream_path_as_mastodon_does(world, monkeypatch):
    # The same path with its Upgrade headers intact is refused at the WebSocket layer instead.
    monkeypatch.setattr(check, "WEBSOCKET_PATH", "/api/v1/streaming/public/local")
    world.behaviour.websocket = "ping-with-token"

    results = world.run(("stack", "mastodon"))

    assert by_name(results, UPGRADE).status == check.PASS
    assert by_name(results, "WebSocket heartbeat").status == check.SKIP


def test_without_a_token_the_upgrade_line_claims_only_the_request_and_the_policy_is_read(world):
    # Mastodon refuses a token-less upgrade before its WebSocket layer reads Sec-WebSocket-Key:
    # an edge that dropped that header would pass the upgrade line all the same.
    world.behaviour.websocket = "ping-with-token"
    dropping = _policy("upgrade-only", "whitelist", ("Upgrade", "Connection"))
    world.origin_request_policies[edge.ALL_VIEWER] = dropping

    results = world.run(("stack", "mastodon"))

    upgrade = by_name(results, UPGRADE)
    assert upgrade.status == check.PASS and "the upgrade request reached it" in upgrade.detail
    assert by_name(results, "WebSocket heartbeat").status == check.SKIP
    headers = by_name(results, check.WEBSOCKET_HEADERS_CHECK)
    assert headers.status == check.FAIL
    assert "drops Sec-WebSocket-Key, Sec-WebSocket-Version" in headers.detail
    assert "AllViewer" in headers.step and check.summary(results)[0] == 1


@pytest.mark.parametrize(
    ("behaviour", "headers"),
    [("allViewerAndWhitelistCloudFront", ("CloudFront-Viewer-Country",)),
     ("whitelist", ("upgrade", "connection", "sec-websocket-key", "sec-websocket-version")),
     ("allExcept", ("Cookie",))],
)
def test_a_policy_that_forwards_both_websocket_headers_passes(world, behaviour, headers):
    world.origin_request_policies[edge.ALL_VIEWER] = _policy("custom", behaviour, headers)

    results = world.run(("stack", "mastodon"))

    assert by_name(results, check.WEBSOCKET_HEADERS_CHECK).status == check.PASS


def test_a_policy_that_cannot_be_read_fails_with_the_permission_to_check(world):
    world.origin_request_policies.clear()

    results = world.run(("stack", "mastodon"))

    headers = by_name(results, check.WEBSOCKET_HEADERS_CHECK)
    assert headers.status == check.FAIL and "NoSuchOriginRequestPolicy" in headers.detail
    assert "cloudfront:GetOriginRequestPolicy" in headers.step


# ---------------------------------------------------------------- bounded waits


def test_an_edge_that_never_answers_fails_within_the_timeouts(world):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections (the kernel's backlog) and never says a word
    try:
        net = world.network()
        net.timeout = 0.3
        for port in (443, 80):
            net.routes[(DOMAIN, port)] = silent.getsockname()

        results = world.run(("stack", "edge", "mastodon"), net=net)
    finally:
        silent.close()

    assert by_name(results, "certificate").status == check.FAIL
    assert "Timeout" in by_name(results, "certificate").detail
    assert by_name(results, "WebSocket heartbeat").status == check.FAIL


def test_a_stack_that_cannot_be_read_is_one_failure_that_says_what_to_check(world):
    results = check.check(world.session, "no-such-stack", world.network(), world.options)

    (only,) = results
    assert only.status == check.FAIL and "--stack-name" in only.step


# ---------------------------------------------------------------- mail


def _external_smtp(world: World, server: str = "smtp.example.org") -> None:
    names = check.parameter_names()
    cloudformation = world.client("cloudformation")
    template = cloudformation.get_template(StackName=STACK)["TemplateBody"]
    cloudformation.delete_stack(StackName=STACK)
    cloudformation.create_stack(
        StackName=STACK,
        TemplateBody=json.dumps(template),
        Parameters=[
            {"ParameterKey": names.domain.title, "ParameterValue": DOMAIN},
            {"ParameterKey": names.smtp_server.title, "ParameterValue": server},
        ],
    )


def test_mail_to_sends_one_mail_through_mastodon_on_the_worker_and_shows_the_reply(world):
    world.options.mail_to = "admin@example.org"

    results = world.run(("stack", "mail"))

    mailed = by_name(results, "test mail")
    assert mailed.status == check.PASS and world.worker.mail_reply in mailed.detail
    assert world.worker.mails == ["admin@example.org"]
    (worker,) = world.instances(compute.WORKER_GROUP)
    sent = [c for c in world.commands if check.MAIL_TO_ENV in " ".join(c["Parameters"]["commands"])]
    (one,) = sent
    assert one["InstanceIds"] == [worker] and one["DocumentName"] == maintenance.RUN_SHELL_SCRIPT
    # The settings were read once, in the same Run Command as Sidekiq's processes.
    assert len(world.commands) == 2


@pytest.mark.parametrize(
    ("error", "code", "cause"),
    [
        (("Net::SMTPFatalError", "554 Message rejected: Email address is not verified. The following "
          "identities failed the check in region US-EAST-1: admin@example.org"), "554", "sandbox"),
        (("Net::SMTPAuthenticationError", "535 Authentication Credentials Invalid"), "535", "login"),
    ],
    ids=["refused", "login refused"],
)
def test_a_test_mail_the_smtp_server_refuses_fails_with_its_words_not_a_backtrace(world, error, code, cause):
    # Net::SMTP raises on a refusal, and Ruby would print a long backtrace after the message.
    world.options.mail_to = "admin@example.org"
    world.worker.mail_error = error

    results = world.run(("stack", "mail"))

    mailed = by_name(results, "test mail")
    assert mailed.status == check.FAIL
    assert f"{error[0]}: {error[1][:60]}" in mailed.detail and f"(SMTP reply {code})" in mailed.detail
    assert "from /usr/local/bundle" not in mailed.detail
    assert cause in mailed.cause
    assert world.worker.mails == [] and check.summary(results)[0] == 1


def test_reading_the_facts_that_raises_shows_the_error_not_its_backtrace(world):
    refused = "Connection refused - connect(2) for 10.0.3.4:6379"
    world.worker.facts_error = ("RedisClient::CannotConnectError", refused)

    results = world.run(("mail", "servers"))

    for name in ("SMTP settings", "Sidekiq scheduler in exactly one process"):
        line = by_name(results, name)
        assert line.status == check.FAIL
        assert "Mastodon raised RedisClient::CannotConnectError: Connection refused" in line.detail


def test_a_runner_that_dies_outside_the_rescue_shows_the_first_line_ruby_printed():
    crash = ruby_crash("Net::SMTPFatalError", "554 Message rejected")
    assert len(crash) == STDERR_KEPT  # the backtrace is cut, the message kept
    assert check.runner_failure(crash, "") == crash.splitlines()[0]
    assert "554 Message rejected (Net::SMTPFatalError)" in check.runner_failure(crash, "")
    assert check.runner_failure("", "") == "no output"


def test_without_mail_to_no_mail_is_sent_and_an_external_smtp_server_skips_ses(world):
    _external_smtp(world)
    world.worker.smtp.update(address="smtp.example.org")

    results = world.run(("stack", "mail"))

    assert world.worker.mails == []
    assert by_name(results, "test mail").status == check.SKIP
    assert by_name(results, "SES identity").status == check.SKIP
    settings = by_name(results, "SMTP settings")
    assert settings.status == check.PASS and "smtp.example.org:587" in settings.detail


def test_servers_still_mailing_through_ses_fail_when_the_stack_names_an_external_server(world):
    _external_smtp(world)

    results = world.run(("stack", "mail"))

    settings = by_name(results, "SMTP settings")
    assert settings.status == check.FAIL and "the stack says smtp.example.org:587" in settings.detail


def test_the_smtp_settings_never_carry_a_secret(world):
    world.run(("stack", "mail"))

    (facts,) = world.commands
    ruby = " ".join(facts["Parameters"]["commands"])
    # Login and password reach the output only as present or not.
    assert "smtp[:user_name].present?" in ruby and "smtp[:password].present?" in ruby
    assert "smtp[:password]" not in ruby.replace("smtp[:password].present?", "")


def test_the_container_the_check_asks_is_the_one_bootstrap_runs_sidekiq_in():
    bootstrap = (ROOT / "templates" / "instance" / "bootstrap.sh").read_text()
    assert f"write_unit {check.SIDEKIQ_CONTAINER} " in bootstrap
    assert "--name $name" in bootstrap  # each unit's container is named after its unit
    assert Worker().container == check.SIDEKIQ_CONTAINER


def test_the_command_line_reads_its_token_from_the_environment_and_checks_the_address(monkeypatch):
    monkeypatch.setenv("MASTODON_ACCESS_TOKEN", "from-env")
    assert check.parse_args(["--stack-name", "s"]).access_token == "from-env"
    with pytest.raises(SystemExit):
        check.parse_args(["--stack-name", "s", "--mail-to", "nobody"])


def test_a_run_command_that_never_ends_fails_both_lines_within_its_bound_and_runs_once(world):
    world.worker.status = "InProgress"  # a dead agent: the command never leaves InProgress
    world.options.runner_timeout = 0.2

    results = world.run(("mail", "servers"))

    for name in ("SMTP settings", "Sidekiq scheduler in exactly one process"):
        line = by_name(results, name)
        assert line.status == check.FAIL and "TimedOut" in line.detail
    assert len(world.commands) == 1  # asked once, for both


def test_the_scheduler_queue_is_the_one_the_templates_name(world, monkeypatch):
    # One definition (templates/sidekiq.py): were the servers' scheduler queue renamed, the
    # check counts the processes that run the new name, not a spelling of its own.
    monkeypatch.setattr(sidekiq, "SCHEDULER_QUEUE", "cron")
    world.worker.processes[0]["queues"] = ["default", "cron"]

    results = world.run(("servers",))

    scheduler = by_name(results, "Sidekiq scheduler in exactly one process")
    assert scheduler.status == check.PASS and "run the cron queue" in scheduler.detail


def test_a_test_mail_never_delivered_is_cancelled_when_the_check_gives_up(world):
    # The worker's agent never picks the command up: without a delivery bound and a cancel,
    # SSM would hand it over whenever the agent comes back, and the mail would go out then.
    world.worker.status = "Pending"
    world.options.runner_timeout = 0.2
    world.options.mail_to = "admin@example.org"

    results = world.run(("mail",))

    mailed = by_name(results, "test mail")
    assert mailed.status == check.FAIL and "TimedOut" in mailed.detail and "cancelled" in mailed.detail
    sent = {c["Parameters"]["commands"][-1]: c for c in world.commands}
    assert len(world.commands) == 2 and len(world.cancelled) == 2  # the facts' command, the mail's
    for command in sent.values():
        assert command["TimeoutSeconds"] == check.RUN_COMMAND_MIN_DELIVERY_SECONDS  # SSM's least
    (worker,) = world.instances(compute.WORKER_GROUP)
    assert all(c["InstanceIds"] == [worker] for c in world.cancelled)


def test_the_delivery_bound_is_no_longer_than_the_checks_own_wait(world):
    world.options.runner_timeout = 45
    world.worker.status = ""

    world.run(("mail",))

    (facts,) = world.commands
    assert facts["TimeoutSeconds"] == 45 and facts["Parameters"]["executionTimeout"] == ["45"]
    assert world.cancelled == []  # it answered: nothing to cancel


def test_a_command_that_cannot_be_cancelled_says_how_to_cancel_it(world):
    world.worker.status = "Pending"
    world.options.runner_timeout = 0.2

    def refuse(**_: Any) -> None:
        raise RuntimeError("AccessDeniedException: ssm:CancelCommand")

    world.session.events.register_first("before-call.ssm.CancelCommand", refuse)

    results = world.run(("mail",))

    detail = by_name(results, "SMTP settings").detail
    assert "could not be cancelled" in detail and "aws ssm cancel-command --command-id " in detail


def test_a_stopping_sidekiq_that_still_lists_the_scheduler_is_not_counted(world):
    # During a rollout the old worker's Sidekiq is told to stop: it fetches no more jobs.
    world.worker.processes.append({"hostname": "ip-10-0-9-9", "queues": ["scheduler"], "quiet": True})

    results = world.run(("servers",))

    scheduler = by_name(results, "Sidekiq scheduler in exactly one process")
    assert scheduler.status == check.PASS and "ip-10-0-9-9" not in scheduler.detail


# ---------------------------------------------------------------- queue latency (issue 13's option)


def _latency_option(world: World, values: list[float], threshold: float = 30) -> None:
    """Queue workers on: the oldest-job alarm on the stack's topic, and what the worker published."""
    namespace, metric = check.queue_latency_metric(STACK)
    cloudwatch = world.client("cloudwatch")
    dimensions = [{"Name": "Queue", "Value": "default"}]
    cloudwatch.put_metric_alarm(
        AlarmName="sidekiq-latency",
        Namespace=namespace,
        MetricName=metric,
        Dimensions=dimensions,
        Statistic="Maximum",
        Period=60,
        EvaluationPeriods=2,
        Threshold=threshold,
        ComparisonOperator="GreaterThanThreshold",
        AlarmActions=[world.resources[operations.ALERT_TOPIC]],
    )
    cloudwatch.set_alarm_state(AlarmName="sidekiq-latency", StateValue="OK", StateReason="fine")
    published = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=len(values))
    for minute, value in enumerate(values):  # one a minute, the last a minute ago
        cloudwatch.put_metric_data(
            Namespace=namespace,
            MetricData=[
                {
                    "MetricName": metric,
                    "Dimensions": dimensions,
                    "Value": value,
                    "Unit": "Seconds",
                    "Timestamp": published + datetime.timedelta(minutes=minute),
                }
            ],
        )


def test_queue_latency_is_skipped_with_why_without_queue_workers(world):
    results = world.run(("servers",))

    latency = by_name(results, "queue latency")
    # The metrics and their alarm exist with queue workers; there is no "metrics option".
    assert latency.status == check.SKIP and "no queue workers (QueueWorkerMaxSize 0)" in latency.detail


def test_queue_latency_under_its_alarm_threshold_passes(world):
    _latency_option(world, [45, 2.5])

    results = world.run(("servers",))

    latency = by_name(results, "queue latency")
    assert latency.status == check.PASS and "default 2.5 (alarm at 30, OK)" in latency.detail


def test_queue_latency_over_its_alarm_threshold_fails(world):
    _latency_option(world, [3, 45])  # the latest reading counts
    world.client("cloudwatch").set_alarm_state(
        AlarmName="sidekiq-latency", StateValue="ALARM", StateReason="jobs wait"
    )

    results = world.run(("servers",))

    latency = by_name(results, "queue latency")
    assert "default 45 (alarm at 30, ALARM)" in latency.detail
    assert latency.status == check.FAIL and "do not keep up" in latency.cause
    assert latency.step and check.summary(results)[0] == 1


def test_queue_latency_the_option_stopped_publishing_fails(world):
    _latency_option(world, [])

    results = world.run(("servers",))

    latency = by_name(results, "queue latency")
    assert latency.status == check.FAIL and "no data: default" in latency.detail
    assert "publisher stopped" in latency.cause


# ---------------------------------------------------------------- after a deploy


def test_a_deploy_ends_with_the_check_whose_status_it_returns_unless_told_not_to(aws_env, tmp_path):
    from tests.operations.conftest import run_script
    from tests.operations.test_deploy_script import SMALL_TEMPLATE, write_parameters

    template = tmp_path / "small.json"
    template.write_text(json.dumps(SMALL_TEMPLATE))
    # .invalid never resolves (RFC 2606): the edge checks fail at once, the stack's are read from moto.
    parameters = write_parameters(tmp_path / "checked.json", {"DomainName": "checked.example.invalid"})
    args = ("--stack-name", "checked", "--parameters", str(parameters), "--template", str(template),
            "--poll", "0.2", "--region", REGION)

    checked = run_script("deploy.py", *args, env=aws_env)

    assert "checked: CREATE_COMPLETE" in checked.stdout
    lines = checked.stdout.splitlines()
    assert lines[lines.index("stack") + 1].startswith("  ✓ status: checked: CREATE_COMPLETE")
    assert lines[-1].endswith("some required checks FAIL")
    assert checked.returncode == 1  # the domain answers nothing: the deploy is not done

    unchecked = run_script("deploy.py", *args[2:], "--stack-name", "unchecked", "--no-check", env=aws_env)
    assert unchecked.returncode == 0, unchecked.stderr + unchecked.stdout
    assert "stack" not in unchecked.stdout.splitlines()


def test_an_internal_load_balancer_behind_a_vpc_origin_is_not_tried_from_outside(world):
    from moto.elbv2.models import elbv2_backends

    world.load_balancer_status = 200  # something would answer, were it tried
    arn = world.resources[load_balancing.LOAD_BALANCER]
    elbv2_backends[DEFAULT_ACCOUNT_ID][REGION].load_balancers[arn].scheme = "internal"

    results = world.run(("stack", "edge"))

    closed = by_name(results, "load balancer not reachable directly")
    assert closed.status == check.PASS and closed.detail.startswith("internal ")
    assert "direct request refused" not in {r.name for r in results}


def test_the_readme_says_exactly_how_to_run_the_live_check():
    from tests.operations import test_check_live as live

    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Checking against a real account (live mode)", 1)[1].split("\n## ", 1)[0]
    for variable in ("MASTODON_AWS_LIVE", *live.REQUIRED, *live.OPTIONAL):
        assert f"| `{variable}` |" in section, variable
    sample = section.split("```sh\n", 1)[1].split("```", 1)[0]
    assert all(f"{variable}=" in sample for variable in ("MASTODON_AWS_LIVE", *live.REQUIRED))
    command = sample.strip().splitlines()[-1].strip()
    assert command in (live.__doc__ or ""), "the module's docstring runs it the same way"
    assert command.endswith("tests/operations/test_check_live.py") and "-n 0" in command


IAM_PREFIX = {"elbv2": "elasticloadbalancing", "sesv2": "ses", "stepfunctions": "states"}


def test_every_call_the_check_makes_is_a_permission_the_readme_lists(world):
    # Every AWS call of a full run (with a test mail, a latency alarm, a Run Command given up
    # on) is recorded as the IAM action it needs; the list in check.py and the README hold it.
    used: set[str] = set()

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        service = model.service_model.service_name
        action = model.name
        if service == "s3" and action == "DeleteObject" and "versionid" in str(params).lower():
            action = "DeleteObjectVersion"
        used.add(f"{IAM_PREFIX.get(service, service)}:{action}")

    _latency_option(world, [2.5])
    world.options.mail_to = "admin@example.org"
    net = world.network()  # the fake edge's own S3 client is made before the recording starts
    world.session.events.register_first("before-call.*.*", record)
    world.run(net=net)
    world.worker.status, world.options.runner_timeout = "Pending", 0.2
    world.run(("mail",), net=net)

    assert used <= set(check.PERMISSIONS), used - set(check.PERMISSIONS)
    assert {"s3:DeleteObjectVersion", "ssm:CancelCommand", "cloudfront:GetOriginRequestPolicy"} <= used
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Checking a deployed stack", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{permission}`" in section for permission in check.PERMISSIONS)
    assert "as root on the worker" in section


def test_the_latency_check_reads_the_metric_the_templates_alarm_watches(template):
    alarm = template["Resources"][alarms.SIDEKIQ_OLDEST_JOB_ALARM]["Properties"]
    namespace, metric = check.queue_latency_metric("social-prod")
    assert alarm["MetricName"] == metric
    assert alarm["Namespace"] == {"Fn::Sub": "Mastodon/${AWS::StackName}"}
    assert namespace == "Mastodon/social-prod"
