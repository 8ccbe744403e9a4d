"""The pipeline's wiring of the queue workers' group (issue 13, item 1).

The group (templates/compute.py's Compute.queue_group) exists only under
parameters.HAS_QUEUE_WORKERS; the pipeline tells the rollout its name under that
condition ("" otherwise) and grants on that group only, in a policy that exists exactly
when the group does.
"""

from __future__ import annotations

import json
from typing import Any

from lambdas.rollout import names
from templates.compute import QUEUE_GROUP
from templates.parameters import HAS_QUEUE_WORKERS
from templates.pipeline import QUEUE_WORKERS_POLICY
from tests.support import props

CONDITION = HAS_QUEUE_WORKERS
GROUP = QUEUE_GROUP


def _config(template: dict[str, Any]) -> dict[str, Any]:
    return props(template, "RolloutStateMachine")["Definition"]["States"]["Configure"]["Parameters"]["config"]


def test_the_rollout_is_told_the_queue_group_by_its_condition(template):
    assert template["Resources"][GROUP]["Condition"] == CONDITION
    assert _config(template)["queue_group"] == "${QueueGroup}"
    substitution = props(template, "RolloutStateMachine")["DefinitionSubstitutions"]["QueueGroup"]
    assert substitution == {"Fn::If": [CONDITION, {"Ref": GROUP}, ""]}


def test_the_queue_group_grants_exist_with_the_group_and_reach_that_group_only(template):
    policy = template["Resources"][QUEUE_WORKERS_POLICY]
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
        assert '"WebAutoScalingGroup"' not in text and '"WorkerAutoScalingGroup"' not in text
        assert "{WebAutoScalingGroup}" not in text and "{WorkerAutoScalingGroup}" not in text
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
        "aws:TagKeys": [names.VERSION_TAG, names.JOURNAL_TAG, names.DIGEST_TAG]
    }
