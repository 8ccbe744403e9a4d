"""Your own images (issue 15), the template's side: which repository counts as in the
stack's own ECR registry, and the pull and describe grants that follow from it, on
exactly the named repositories and on nothing while the images are public."""

from __future__ import annotations

import json
from typing import Any

import pytest

from scripts.template_values import Evaluator, parameter_values
from templates import compute, parameters, pipeline
from templates.options import ECR_HOST_PATTERN, IMAGE_REPOSITORY_PATTERN

ACCOUNT, REGION = "123456789012", "eu-central-1"
OWN = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
PSEUDO = {"AWS::AccountId": ACCOUNT, "AWS::Region": REGION, "AWS::Partition": "aws",
          "AWS::URLSuffix": "amazonaws.com", "AWS::NoValue": None}
ARN = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/"
POLICIES = (compute.WEB_IMAGE_PULL_POLICY, compute.WORKER_IMAGE_PULL_POLICY, pipeline.ECR_IMAGES_POLICY)


def evaluator(template: dict[str, Any], **given: str) -> Evaluator:
    return Evaluator(template, {**parameter_values(template, given), **PSEUDO})


def resolve(ev: Evaluator, node: Any) -> Any:
    """NODE with every function evaluated (AWS::NoValue dropped), as CloudFormation would."""
    if isinstance(node, dict):
        if len(node) == 1 and (next(iter(node)) == "Ref" or next(iter(node)).startswith("Fn::")):
            key, argument = next(iter(node.items()))
            if key == "Fn::If":
                name, when_true, when_false = argument
                return resolve(ev, when_true if ev.condition(name) else when_false)
            if key == "Ref" and argument not in ev.values:
                return node  # a resource: CloudFormation's to resolve
            if key == "Fn::Join":
                return ev.value({key: [argument[0], resolve(ev, argument[1])]})
            return ev.value(node)
        return {k: r for k, v in node.items() if (r := resolve(ev, v)) is not None}
    if isinstance(node, list):
        return [r for v in node if (r := resolve(ev, v)) is not None]
    return node


def images(web: str, streaming: str = "ghcr.io/mastodon/mastodon-streaming") -> dict[str, str]:
    return {"WebImageRepository": web, "StreamingImageRepository": streaming}


@pytest.mark.parametrize("repository, in_ecr", [
    ("ghcr.io/mastodon/mastodon", False),
    ("docker.io/glitchsoc/mastodon", False),
    ("quay.io/someone/mastodon", False),
    (f"{OWN}/mastodon", True),
    (f"{OWN}/team/glitch/mastodon", True),
    # Another account, another region: not this stack's registry.
    (f"210987654321.dkr.ecr.{REGION}.amazonaws.com/mastodon", False),
    (f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/mastodon", False),
    # A later path component that ends like the host would make the ARN name another
    # repository ("a"): refused as not in ECR rather than granted wrongly.
    (f"{OWN}/a.amazonaws.com/b", False),
    # Another partition's suffix: the name cannot be cut out of it (parameters._ECR_NAME_AFTER).
    (f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com.cn/mastodon", False),
])
def test_a_repository_is_in_ecr_exactly_when_it_is_in_the_stack_s_own_registry(template, repository, in_ecr):
    import re

    assert re.fullmatch(IMAGE_REPOSITORY_PATTERN, repository)  # the parameter takes each
    web = evaluator(template, **images(repository))
    assert web.condition(parameters.WEB_IMAGE_IN_ECR) is in_ecr
    assert web.condition(parameters.STREAMING_IMAGE_IN_ECR) is False
    assert web.condition(parameters.ANY_IMAGE_IN_ECR) is in_ecr
    streaming = evaluator(template, **images("ghcr.io/mastodon/mastodon", repository))
    assert streaming.condition(parameters.STREAMING_IMAGE_IN_ECR) is in_ecr
    assert streaming.condition(parameters.WEB_IMAGE_IN_ECR) is False
    assert streaming.condition(parameters.ANY_IMAGE_IN_ECR) is in_ecr


def test_the_conditions_compare_with_the_stack_s_own_account_region_and_suffix(template):
    # Not a literal account: the host is built from the pseudo parameters, so that one
    # template serves every account and region.
    conditions = json.dumps(template["Conditions"][parameters.WEB_IMAGE_IN_ECR])
    for pseudo in ("AWS::AccountId", "AWS::Region", "AWS::URLSuffix"):
        assert pseudo in conditions
    import re
    assert re.fullmatch(ECR_HOST_PATTERN, OWN)


def grants(template: dict[str, Any], **given: str) -> dict[str, list[tuple[list[str], list[str], list[str]]]]:
    """Policy -> [(roles, actions, resources)] of the ECR policies the values create."""
    ev = evaluator(template, **given)
    found = {}
    for name in POLICIES:
        if not ev.creates(name):
            continue
        policy = resolve(ev, template["Resources"][name]["Properties"])
        found[name] = [(sorted(r["Ref"] for r in policy["Roles"]), sorted(s["Action"]), sorted(s["Resource"]))
                       for s in policy["PolicyDocument"]["Statement"]]
    return found


def ecr_actions(node: Any) -> list[str]:
    """Every ecr: action anywhere in NODE."""
    if isinstance(node, dict):
        return [a for v in node.values() for a in ecr_actions(v)]
    if isinstance(node, list):
        return [a for v in node for a in ecr_actions(v)]
    return [node] if isinstance(node, str) and node.startswith("ecr:") else []


def test_the_default_stack_grants_nothing_of_ecr(template):
    assert grants(template) == {}
    ev = evaluator(template)
    for name, resource in template["Resources"].items():
        if ev.creates(name):
            assert ecr_actions(resolve(ev, resource.get("Properties", {}))) == [], name


def test_the_ecr_grants_live_only_in_their_conditional_policies(template):
    holders = {name for name, resource in template["Resources"].items() if ecr_actions(resource)}
    # and the push function's role (upgrade on push: its own condition, tests/templates/test_image_push.py)
    assert holders == set(POLICIES) | {"ImagePushFunctionRole"}
    assert template["Resources"]["ImagePushFunctionRole"]["Condition"] == parameters.UPGRADES_ON_IMAGE_PUSH
    conditions = {name: template["Resources"][name]["Condition"] for name in POLICIES}
    assert conditions == {compute.WEB_IMAGE_PULL_POLICY: parameters.ANY_IMAGE_IN_ECR,
                          compute.WORKER_IMAGE_PULL_POLICY: parameters.WEB_IMAGE_IN_ECR,
                          pipeline.ECR_IMAGES_POLICY: parameters.ANY_IMAGE_IN_ECR}


TOKEN = (["ecr:GetAuthorizationToken"], ["*"])
PULL = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]


def test_both_images_in_ecr_each_server_role_pulls_exactly_its_images(template):
    found = grants(template, **images(f"{OWN}/team/mastodon", f"{OWN}/team/streaming"),
                   QueueWorkerMinSize="1", QueueWorkerMaxSize="2")
    web_role, worker_roles = [compute.WEB_SERVER_ROLE], sorted([compute.WORKER_SERVER_ROLE,
                                                                compute.QUEUE_SERVER_ROLE])
    assert found[compute.WEB_IMAGE_PULL_POLICY] == [
        (web_role, *TOKEN), (web_role, PULL, [f"{ARN}team/mastodon", f"{ARN}team/streaming"])]
    assert found[compute.WORKER_IMAGE_PULL_POLICY] == [
        (worker_roles, *TOKEN), (worker_roles, PULL, [f"{ARN}team/mastodon"])]
    assert found[pipeline.ECR_IMAGES_POLICY] == [
        ([f"{pipeline.ROLLOUT_FUNCTION}Role"], ["ecr:DescribeImages"],
         [f"{ARN}team/mastodon", f"{ARN}team/streaming"])]


def test_only_the_streaming_image_in_ecr_the_web_servers_pull_it_and_the_workers_nothing(template):
    found = grants(template, **images("ghcr.io/mastodon/mastodon", f"{OWN}/streaming"))
    assert set(found) == {compute.WEB_IMAGE_PULL_POLICY, pipeline.ECR_IMAGES_POLICY}
    assert found[compute.WEB_IMAGE_PULL_POLICY][1][2] == [f"{ARN}streaming"]
    assert found[pipeline.ECR_IMAGES_POLICY][0][2] == [f"{ARN}streaming"]


def test_only_the_mastodon_image_in_ecr_no_grant_names_the_public_streaming_image(template):
    found = grants(template, **images(f"{OWN}/mastodon"))
    assert set(found) == set(POLICIES)
    for statements in found.values():
        for _, actions, resources in statements:
            assert resources in (["*"], [f"{ARN}mastodon"]), actions
    # Without queue workers, the worker's policy names its role only.
    assert found[compute.WORKER_IMAGE_PULL_POLICY][1][0] == [compute.WORKER_SERVER_ROLE]


def test_a_repository_of_another_account_is_granted_nothing(template):
    other = f"210987654321.dkr.ecr.{REGION}.amazonaws.com/mastodon"
    assert grants(template, **images(other, other)) == {}


def test_the_servers_learn_their_own_registry_only_while_an_image_is_there(template):
    from tests.templates.test_search import stack_env

    def env(**given: str) -> dict[str, Any]:
        ev = evaluator(template, **given)
        data = template["Resources"]["WebLaunchTemplate"]["Properties"]["LaunchTemplateData"]
        parts = resolve(ev, data["UserData"]["Fn::Base64"]["Fn::Join"][1])
        return {part[:-2]: parts[i + 1] for i, part in enumerate(parts)
                if isinstance(part, str) and part.endswith("='") and "\n" not in part}

    assert env()["ECR_REGISTRY"] == ""
    assert env(**images(f"{OWN}/mastodon"))["ECR_REGISTRY"] == OWN
    assert env(**images("ghcr.io/mastodon/mastodon", f"{OWN}/streaming"))["ECR_REGISTRY"] == OWN
    assert env()["ECR_HOST_PATTERN"] == f"^{ECR_HOST_PATTERN}$"
    assert stack_env(template, "WorkerLaunchTemplate")["ECR_HOST_PATTERN"] == f"^{ECR_HOST_PATTERN}$"


def test_the_evaluator_reads_the_string_functions_and_knows_what_it_does_not_know():
    ev = Evaluator({}, {"Repo": f"{OWN}/m", "AWS::Region": REGION})
    host = {"Fn::Select": [0, {"Fn::Split": ["/", {"Ref": "Repo"}]}]}
    assert ev.value(host) == OWN
    assert ev.value({"Fn::Join": ["-", ["a", {"Ref": "AWS::Region"}]]}) == f"a-{REGION}"
    assert ev.value({"Fn::Sub": "x.${AWS::Region}"}) == f"x.{REGION}"
    assert ev.value({"Fn::Sub": ["${A}.${AWS::Region}", {"A": "b"}]}) == f"b.{REGION}"
    # The account was not given: a host built from it is unknown, never equal by accident.
    assert ev.value({"Fn::Sub": "${AWS::AccountId}.dkr"}) is None
    assert ev.value({"Fn::Equals": [host, {"Fn::Sub": "${AWS::AccountId}.dkr"}]}) is False
    assert ev.value({"Fn::Select": [5, {"Fn::Split": ["/", "a/b"]}]}) is None


def test_a_new_stack_boots_the_initial_version_given_or_the_pinned_release(template):
    """With images of your own the pinned upstream tag may not exist in your repositories:
    InitialMastodonVersion names the first version, read only by the write-once resource."""
    from templates.options import MASTODON_VERSION

    value = template["Resources"]["DeployedVersionParameter"]["Properties"]["Value"]
    chosen = {"Ref": "InitialMastodonVersion"}
    assert value == {"Fn::If": ["HasInitialMastodonVersion", chosen, MASTODON_VERSION]}
    assert template["Conditions"]["HasInitialMastodonVersion"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "InitialMastodonVersion"}, ""]}]
    }


def test_every_launch_template_waits_for_the_pull_grants(template):
    """On an update from a public registry to ECR the grants are new: CloudFormation creates
    them before the launch templates that reference them, so no new server races IAM."""
    import json

    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::EC2::LaunchTemplate":
            continue
        text = json.dumps(resource["Properties"])
        assert '"Ref": "WebServerImagePullPolicy"' in text and '"Ref": "ServerImagePullPolicy"' in text, name
