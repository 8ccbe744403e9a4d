"""The pipeline's wiring of the queue workers' group (issue 13, item 1), on and off.

The group itself is built elsewhere (templates/compute.py's Compute.queue_group); here
a stand-in conditional group is handed to the pipeline to check what the pipeline makes
of it: the config's queue_group, and the grants on that group only, in a policy that
exists exactly when the group does.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from troposphere import Equals, Ref, autoscaling

import build
from lambdas.rollout import names
from templates import compute
from templates.options import BuildOptions
from templates.pipeline import QUEUE_WORKERS_POLICY
from templates.stack import build_template
from tests.support import props

CONDITION = "QueueWorkersStandIn"
GROUP = "QueueAutoScalingGroup"


@pytest.fixture(scope="module")
def with_queue() -> dict[str, Any]:
    """The default template with a stand-in queue workers' group under a Condition."""
    original = compute.create_compute

    def create(t: Any, p: Any, *args: Any, **kwargs: Any) -> compute.Compute:
        made = original(t, p, *args, **kwargs)
        t.add_condition(CONDITION, Equals(Ref(p.rolling_batch_size), "7"))
        worker = made.worker_group.properties
        group = t.add_resource(
            autoscaling.AutoScalingGroup(
                GROUP,
                Condition=CONDITION,
                MinSize="0",
                MaxSize="4",
                VPCZoneIdentifier=worker["VPCZoneIdentifier"],
                MixedInstancesPolicy=worker["MixedInstancesPolicy"],
                Tags=[autoscaling.Tag("Name", "mastodon-queue", True)],
            )
        )
        return dataclasses.replace(made, queue_group=group)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compute, "create_compute", create)
        built = build_template(BuildOptions(), build.load_assets())
    return json.loads(built.to_json())


def _config(template: dict[str, Any]) -> dict[str, Any]:
    return props(template, "RolloutStateMachine")["Definition"]["States"]["Configure"]["Parameters"]["config"]


def test_without_a_queue_group_the_rollout_is_told_none_and_granted_nothing_more(template):
    assert _config(template)["queue_group"] == ""
    assert QUEUE_WORKERS_POLICY not in template["Resources"]
    assert "QueueGroup" not in props(template, "RolloutStateMachine")["DefinitionSubstitutions"]


def test_with_a_queue_group_the_rollout_is_told_its_name_or_none_by_its_condition(with_queue):
    assert _config(with_queue)["queue_group"] == "${QueueGroup}"
    substitution = props(with_queue, "RolloutStateMachine")["DefinitionSubstitutions"]["QueueGroup"]
    assert substitution == {"Fn::If": [CONDITION, {"Ref": GROUP}, ""]}


def test_the_queue_group_grants_exist_with_the_group_and_reach_that_group_only(with_queue):
    policy = with_queue["Resources"][QUEUE_WORKERS_POLICY]
    assert policy["Condition"] == CONDITION
    assert policy["Properties"]["Roles"] == [{"Ref": "RolloutFunctionRole"}]
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    actions = {a for s in statements for a in s["Action"]}
    # In place, no load balancer, no surge: no protection, no sizes, no termination.
    assert actions == {
        "ssm:SendCommand", "ec2:CreateTags", "ec2:DeleteTags", "autoscaling:SuspendProcesses",
        "autoscaling:ResumeProcesses", "autoscaling:CreateOrUpdateTags", "autoscaling:DeleteTags",
    }
    for statement in statements:
        text = json.dumps(statement)
        assert "WebAutoScalingGroup" not in text and "WorkerAutoScalingGroup" not in text
        if statement["Action"][0].startswith(("ssm:", "ec2:")):
            conditions = statement["Condition"].values()
            (group,) = [v for c in conditions for k, v in c.items() if k.endswith(names.GROUP_TAG)]
            assert group == [{"Ref": GROUP}]
        else:
            (arn,) = statement["Resource"]
            assert arn["Fn::Sub"].endswith(f"autoScalingGroupName/${{{GROUP}}}")
    tags = [s for s in statements if "autoscaling:CreateOrUpdateTags" in s["Action"]]
    assert tags[0]["Condition"] == {"ForAllValues:StringEquals": {"aws:TagKeys": [names.HOLD_TAG]}}
    ec2 = [s for s in statements if "ec2:CreateTags" in s["Action"]]
    assert ec2[0]["Condition"]["ForAllValues:StringEquals"] == {
        "aws:TagKeys": [names.VERSION_TAG, names.JOURNAL_TAG]
    }


@pytest.mark.slow
def test_the_template_with_a_queue_group_lints_clean(with_queue):
    from tests.templates.test_lint import findings

    assert findings(with_queue, ["us-east-1", "eu-west-1"]) == []
