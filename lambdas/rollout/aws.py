"""The rollout's AWS calls: thin, one purpose each, no decisions.

Tests replace `now`, the clients in `_clients` and `OPENER` or `registry_url` (the public
registries' HTTP).
"""

from __future__ import annotations

import datetime
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from lambdas.rollout.names import DIGEST_TAG, ECR_HOST_PATTERN, JOURNAL_TAG, VERSION_TAG
from lambdas.rollout.plan import Journal, Server, reported_digests

logger = Logger()
OPENER = urllib.request.build_opener()
DOCUMENT = "AWS-RunShellScript"
_clients: dict[str, Any] = {}


def now() -> float:
    """The clock; tests replace it with a simulated one."""
    return time.time()


def client(name: str) -> Any:
    if name not in _clients:
        # Throttling and transient errors are retried with backoff before a step fails.
        _clients[name] = boto3.client(name, config=Config(retries={"mode": "standard", "max_attempts": 8}))
    return _clients[name]


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


# ---------------------------------------------------------------- parameters and executions
def read_parameter(name: str) -> tuple[str, int]:
    parameter = client("ssm").get_parameter(Name=name)["Parameter"]
    return parameter["Value"], int(parameter["Version"])


def write_parameter(name: str, value: str) -> None:
    client("ssm").put_parameter(Name=name, Value=value, Overwrite=True)


def running_executions(state_machine: str) -> list[dict[str, Any]]:
    pages = (
        client("stepfunctions")
        .get_paginator("list_executions")
        .paginate(stateMachineArn=state_machine, statusFilter="RUNNING")
    )
    return [e for page in pages for e in page["executions"]]


def publish(topic: str, subject: str, message: str) -> None:
    client("sns").publish(TopicArn=topic, Subject=subject[:100], Message=message[:100_000])


# ---------------------------------------------------------------- groups and servers
@dataclass
class Group:
    name: str
    servers: list[Server]
    desired: int
    max_size: int
    suspended: set[str]
    tags: dict[str, str] = field(default_factory=dict)
    exists: bool = True


def describe_group(name: str, target_groups: list[str], missing_ok: bool = False) -> Group:
    """The group's sizes, suspended processes and tags, and each of its servers as AWS reports it.

    missing_ok: a group that does not exist (an optional one, removed by a stack update while
    a rollout runs) reads as an empty group that does not exist, not as an error."""
    found = client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
        "AutoScalingGroups"
    ]
    if not found and missing_ok:
        return Group(name=name, servers=[], desired=0, max_size=0, suspended=set(), exists=False)
    (asg,) = found
    members = {i["InstanceId"]: i for i in asg["Instances"]}
    group = Group(
        name=name,
        servers=[],
        desired=int(asg["DesiredCapacity"]),
        max_size=int(asg["MaxSize"]),
        suspended={p["ProcessName"] for p in asg.get("SuspendedProcesses", [])},
        tags={t["Key"]: t["Value"] for t in asg.get("Tags", [])},
    )
    if not members:
        return group
    health: dict[str, list[str]] = {i: [] for i in members}
    for arn in target_groups:
        described = client("elbv2").describe_target_health(
            TargetGroupArn=arn, Targets=[{"Id": i} for i in members]
        )["TargetHealthDescriptions"]
        for d in described:
            if d["Target"]["Id"] in health:
                health[d["Target"]["Id"]].append(d["TargetHealth"]["State"])
    seen: set[str] = set()
    for instance in describe_instances(list(members)):
        iid = instance["InstanceId"]
        seen.add(iid)
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        group.servers.append(
            Server(
                id=iid,
                lifecycle=members[iid]["LifecycleState"],
                running=instance["State"]["Name"] == "running",
                launched=instance["LaunchTime"].timestamp(),
                version=tags.get(VERSION_TAG),
                journal=Journal.decode(tags.get(JOURNAL_TAG)),
                health=tuple(health[iid]),
                protected=bool(members[iid].get("ProtectedFromScaleIn")),
                digests=tuple((tags.get(DIGEST_TAG) or "").split()),
            )
        )
    for iid in set(members) - seen:  # EC2 does not know it yet: a server about to boot
        group.servers.append(Server(iid, members[iid]["LifecycleState"], False, now(), None, described=False))
    return group


def describe_instances(ids: list[str]) -> list[dict[str, Any]]:
    """The instances EC2 reports among `ids`, by filter: one it does not know yet is left out,
    where asking for it by id would fail the whole call (InvalidInstanceID.NotFound)."""
    found: list[dict[str, Any]] = []
    for start in range(0, len(ids), 150):  # a filter takes at most 200 values
        request: dict[str, Any] = {"Filters": [{"Name": "instance-id", "Values": ids[start : start + 150]}]}
        while True:
            page = client("ec2").describe_instances(**request)
            found += [i for r in page["Reservations"] for i in r["Instances"]]
            if not page.get("NextToken"):
                break
            request["NextToken"] = page["NextToken"]
    return found


def tag_servers(instances: list[str], tags: dict[str, str]) -> None:
    client("ec2").create_tags(Resources=instances, Tags=[{"Key": k, "Value": v} for k, v in tags.items()])


def untag_servers(instances: list[str], keys: list[str]) -> None:
    client("ec2").delete_tags(Resources=instances, Tags=[{"Key": k} for k in keys])


def journal(instances: list[str], entry: Journal) -> None:
    tag_servers(instances, {JOURNAL_TAG: entry.encode()})


def tag_group(group: str, key: str, value: str) -> None:
    client("autoscaling").create_or_update_tags(
        Tags=[
            {
                "ResourceId": group,
                "ResourceType": "auto-scaling-group",
                "Key": key,
                "Value": value,
                "PropagateAtLaunch": False,
            }
        ]
    )


def untag_group(group: str, key: str) -> None:
    client("autoscaling").delete_tags(
        Tags=[
            {
                "ResourceId": group,
                "ResourceType": "auto-scaling-group",
                "Key": key,
            }
        ]
    )


def set_targets(target_groups: list[str], instances: list[str], register: bool) -> None:
    for arn in target_groups:
        targets = [{"Id": i} for i in instances]
        if register:
            client("elbv2").register_targets(TargetGroupArn=arn, Targets=targets)
            continue
        try:
            client("elbv2").deregister_targets(TargetGroupArn=arn, Targets=targets)
        except ClientError as error:  # already out: nothing to drain
            if error_code(error) != "InvalidTarget":
                raise


def protect(group: str, instances: list[str], protected: bool) -> None:
    client("autoscaling").set_instance_protection(
        AutoScalingGroupName=group, InstanceIds=instances, ProtectedFromScaleIn=protected
    )


def set_max_size(group: str, size: int) -> None:
    client("autoscaling").update_auto_scaling_group(AutoScalingGroupName=group, MaxSize=size)


def terminate(instance: str) -> None:
    try:
        client("autoscaling").terminate_instance_in_auto_scaling_group(
            InstanceId=instance, ShouldDecrementDesiredCapacity=True
        )
    except ClientError as error:  # already leaving (a retried tick)
        if "not part of" not in str(error) and error_code(error) != "ScalingActivityInProgress":
            raise


def suspend(group: str, processes: list[str]) -> None:
    client("autoscaling").suspend_processes(AutoScalingGroupName=group, ScalingProcesses=processes)


def resume(group: str, processes: list[str]) -> None:
    client("autoscaling").resume_processes(AutoScalingGroupName=group, ScalingProcesses=processes)


# ---------------------------------------------------------------- Run Command
def marker(execution: str, words: str) -> str:
    """The comment that names one command of one rollout (Run Command keeps 100 characters)."""
    return f"mastodon-rollout {execution[-40:]} {words}"[:100]


def find_commands(comment: str, since: float) -> list[tuple[str, list[str]]]:
    """(id, instances) of every command sent since `since` with this marker, oldest first.

    Not filtered by instance: a command that has not reached its instance yet is not
    listed by instance.
    """
    after = datetime.datetime.fromtimestamp(since - 300, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    request: dict[str, Any] = {
        "Filters": [{"key": "InvokedAfter", "value": after}, {"key": "DocumentName", "value": DOCUMENT}]
    }
    matching: list[dict[str, Any]] = []
    while True:
        page = client("ssm").list_commands(**request)
        matching += [c for c in page.get("Commands", []) if c.get("Comment") == comment]
        if not page.get("NextToken"):
            break
        request["NextToken"] = page["NextToken"]
    matching.sort(key=lambda c: str(c.get("RequestedDateTime") or ""))
    return [(str(c["CommandId"]), [str(i) for i in c.get("InstanceIds", [])]) for c in matching]


def find_command(comment: str, since: float, instance: str | None = None) -> str | None:
    """The newest command sent since `since` with this marker (to `instance`), or None."""
    found = [c for c, ids in find_commands(comment, since) if instance is None or instance in ids]
    return found[-1] if found else None


def send(instances: list[str], script: str, arguments: str, timeout: int, comment: str) -> str:
    response = client("ssm").send_command(
        InstanceIds=instances,
        DocumentName=DOCUMENT,
        TimeoutSeconds=600,
        Comment=comment,
        Parameters={"commands": [f"{script} {arguments}"], "executionTimeout": [str(timeout)]},
    )
    return str(response["Command"]["CommandId"])


def command_instances(command_id: str) -> list[str]:
    (command,) = client("ssm").list_commands(CommandId=command_id)["Commands"]
    return [str(i) for i in command.get("InstanceIds", [])]


def command_status(command_id: str, instance: str) -> tuple[str, str]:
    """(status, the last lines of its output) of one invocation."""
    try:
        invocation = client("ssm").get_command_invocation(CommandId=command_id, InstanceId=instance)
    except ClientError as error:
        if error_code(error) == "InvocationDoesNotExist":
            return "Pending", ""  # not registered yet, just after SendCommand
        raise
    reason = (invocation.get("StandardErrorContent") or invocation.get("StandardOutputContent") or "").strip()
    return str(invocation["Status"]), reason[-400:]


# ---------------------------------------------------------------- the registries
class RegistryUnavailable(Exception):
    """A registry that did not answer (a timeout, 429, a 5xx, ECR throttling beyond boto3's
    retries). The state machine retries the step on it (templates/pipeline.TRANSIENT_ERRORS);
    once it gives up, this error's message is the rollout's failure."""


# Seconds per request: two images, at most three requests each, well within the function's minute.
REGISTRY_TIMEOUT = 6
# What a HEAD of a tag may answer with: an index (multi-platform) or a single manifest.
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
# Where a public registry's API answers, when not on its own name: Docker Hub's.
API_HOSTS = {"docker.io": "registry-1.docker.io"}


def registry_url(host: str) -> str:
    """The base URL of a public registry's API (tests point it at a fake on loopback)."""
    return f"https://{API_HOSTS.get(host, host)}"
def command_digests(command_id: str, instance: str) -> tuple[str, ...] | None:
    """The image digests a finished deploy reported on `instance` (deploy.sh), or None."""
    try:
        invocation = client("ssm").get_command_invocation(CommandId=command_id, InstanceId=instance)
    except ClientError as error:
        if error_code(error) == "InvocationDoesNotExist":
            return None
        raise
    return reported_digests(str(invocation.get("StandardOutputContent") or ""))


# ---------------------------------------------------------------- the registry
def ecr_repository(image: str) -> tuple[str, str] | None:
    """(registry id, repository name) of an image in Amazon ECR, or None for another registry."""
    host, _, repository = image.partition("/")
    if ".dkr.ecr." not in host or not repository:
        return None
    return host.split(".", 1)[0], repository


def registry_digest(image: str, tag: str) -> str | None:
    """The digest ECR holds for `image:tag` now, or None (not in ECR, or no such tag)."""
    where = ecr_repository(image)
    if where is None:
        return None
    try:
        found = client("ecr").describe_images(
            registryId=where[0], repositoryName=where[1], imageIds=[{"imageTag": tag}]
        )["imageDetails"]
    except ClientError as error:
        if error_code(error) in ("ImageNotFoundException", "RepositoryNotFoundException"):
            return None
        raise
    return str(found[0]["imageDigest"]) if found else None


def image_missing(image: str, tag: str) -> str | None:
    """Why the registry that holds `image` has no `image:tag` (or will not say), or None.

    Only registry answers, never guesses: a registry that does not answer raises
    RegistryUnavailable (the step is retried); an answer this function does not know
    raises RuntimeError (the rollout fails with it)."""
    host, repository = image.split("/", 1)
    if re.fullmatch(ECR_HOST_PATTERN, host, re.ASCII):
        return _ecr_image_missing(image, host, repository, tag)
    return _public_image_missing(image, host, repository, tag)


def _ecr_image_missing(image: str, host: str, repository: str, tag: str) -> str | None:
    account = host.split(".", 1)[0]
    try:
        client("ecr").describe_images(
            registryId=account, repositoryName=repository, imageIds=[{"imageTag": tag}]
        )
        return None
    except ClientError as error:
        code = error_code(error)
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code == "ImageNotFoundException":
            return f"{image}:{tag} does not exist: the ECR repository {repository} has no tag {tag}"
        if code == "RepositoryNotFoundException":
            return f"{image}:{tag} does not exist: account {account} has no ECR repository {repository} here"
        if code == "AccessDeniedException":
            return (
                f"could not check {image}:{tag}: the stack's grant does not cover the ECR repository "
                f"{repository} (ecr:DescribeImages was denied); is it the repository the stack's "
                "image parameter names?"
            )
        if code in ("ThrottlingException", "ServerException") or status >= 500:
            raise RegistryUnavailable(f"Amazon ECR did not answer for {image}:{tag} ({code})") from error
        raise
    except BotoCoreError as error:  # no connection, a timeout
        raise RegistryUnavailable(f"Amazon ECR did not answer for {image}:{tag} ({error})") from error


def _public_image_missing(image: str, host: str, repository: str, tag: str) -> str | None:
    """The OCI distribution API's answer, anonymously: HEAD the tag's manifest; a 401 names
    where to fetch an anonymous token (WWW-Authenticate: Bearer realm, service); then once more."""
    if host == "docker.io" and "/" not in repository:
        repository = f"library/{repository}"  # Docker Hub's official images
    base = registry_url(host)
    url = f"{base}/v2/{repository}/manifests/{tag}"
    status, challenge = _registry_answer(url, host, image, tag, method="HEAD")
    if status == 401:
        token = _anonymous_token(challenge, base, host, repository, image, tag)
        if token is not None:
            status, _ = _registry_answer(url, host, image, tag, method="HEAD", token=token)
    if status < 300:
        return None
    if status == 404:
        return f"{image}:{tag} does not exist in the registry ({host} answered 404)"
    return (
        f"{image}:{tag} is private or does not exist: {host} refused an anonymous pull of "
        f"{repository} ({status}); the servers pull public images anonymously (a private "
        "image belongs in the stack's Amazon ECR)"
    )


def _registry_answer(
    url: str, host: str, image: str, tag: str, method: str, token: str | None = None
) -> tuple[int, str]:
    """(status, WWW-Authenticate) of a request the registry answered: 2xx, 401, 403 or 404."""
    headers = {"Accept": MANIFEST_TYPES} if method == "HEAD" else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    # Only registry_url's https (a test's loopback http): no file: or other scheme.
    request = urllib.request.Request(url, method=method, headers=headers)  # noqa: S310
    try:
        with OPENER.open(request, timeout=REGISTRY_TIMEOUT) as response:
            status = int(getattr(response, "status", None) or 200)
            return status, ""
    except urllib.error.HTTPError as error:
        status = error.code
        if status in (401, 403, 404):
            challenge = error.headers.get("WWW-Authenticate") if error.headers else None
            return status, str(challenge or "")
        if status == 429 or status >= 500:
            raise RegistryUnavailable(
                f"the registry {host} did not answer for {image}:{tag} ({status} {error.reason})"
            ) from error
        raise RuntimeError(f"the registry {host} answered {status} for {image}:{tag}") from error
    except OSError as error:  # URLError, a timeout, a dropped connection
        reason = getattr(error, "reason", None) or error
        raise RegistryUnavailable(
            f"the registry {host} did not answer for {image}:{tag} ({reason})"
        ) from error


def _anonymous_token(
    challenge: str, base: str, host: str, repository: str, image: str, tag: str
) -> str | None:
    """An anonymous pull token from the challenge's realm, or None when the registry has none
    for us (no Bearer challenge, or its token service refuses: a private repository)."""
    scheme, _, parameters = challenge.partition(" ")
    fields = dict(re.findall(r'(\w+)="([^"]*)"', parameters))
    realm = fields.get("realm", "")
    if scheme.lower() != "bearer" or not realm:
        return None
    if urllib.parse.urlsplit(realm).scheme != urllib.parse.urlsplit(base).scheme:
        raise RuntimeError(f"the registry {host} names a token service of another scheme: {realm}")
    query = {"scope": f"repository:{repository}:pull"}
    if fields.get("service"):
        query["service"] = fields["service"]
    url = f"{realm}{'&' if '?' in realm else '?'}{urllib.parse.urlencode(query)}"
    request = urllib.request.Request(url, method="GET")  # noqa: S310  (the registry's own scheme, above)
    try:
        with OPENER.open(request, timeout=REGISTRY_TIMEOUT) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as error:
        if error.code in (401, 403, 404):
            return None
        if error.code == 429 or error.code >= 500:
            raise RegistryUnavailable(
                f"the token service of {host} did not answer for {image}:{tag} ({error.code} {error.reason})"
            ) from error
        raise RuntimeError(f"the token service of {host} answered {error.code} for {image}:{tag}") from error
    except OSError as error:
        reason = getattr(error, "reason", None) or error
        raise RegistryUnavailable(
            f"the token service of {host} did not answer for {image}:{tag} ({reason})"
        ) from error
    except ValueError as error:  # not JSON: a proxy's page, a cut-off answer
        raise RegistryUnavailable(f"the token service of {host} gave no token for {image}:{tag}") from error
    token = answer.get("token") or answer.get("access_token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token:
        raise RegistryUnavailable(f"the token service of {host} gave no token for {image}:{tag}")
    return token
