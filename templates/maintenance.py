"""Maintenance: the daily media and preview-card cleanup, run on the worker through SSM.

An EventBridge rule runs AWS-RunShellScript by Run Command once a day on the
instance of the worker group (found by the group-name tag Auto Scaling puts on its
instances, so two stacks in one account never reach each other's worker). The
command runs tootctl.sh from the servers' scripts directory, the same wrapper
an operator uses (scripts/tootctl.py), which starts a one-off container of the
deployed Mastodon version. The rule's role may send only that document, only to
that group's instances.
"""

from __future__ import annotations

import json

from awacs import ssm as awacs_ssm
from awacs.aws import Allow, Condition, Statement, StringEquals
from troposphere import GetAtt, Ref, Sub, Template, autoscaling, events

from lambdas.rollout.names import GROUP_TAG
from templates import policies
from templates.compute import SCRIPTS_DIR

CLEANUP_RULE = "DailyCleanupRule"
CLEANUP_ROLE = "DailyCleanupRole"
TOOTCTL = f"{SCRIPTS_DIR}/tootctl.sh"
RUN_SHELL_SCRIPT = "AWS-RunShellScript"
# After the cache snapshot (02-03 UTC), the database backup (03-04) and the Sunday
# maintenance windows (04:30-06:30): the cleanup never competes with them.
CLEANUP_SCHEDULE = "cron(0 7 * * ? *)"
# Mastodon's own defaults: remote media older than a week is fetched again on
# demand; preview cards are kept a month (below 14 days Mastodon warns that cards
# would be refetched while still cached).
MEDIA_DAYS = 7
PREVIEW_CARD_DAYS = 30
# Threads of each cleanup; tootctl.sh's DB_POOL leaves one connection to the main thread.
CLEANUP_CONCURRENCY = 4
CLEANUP_COMMANDS = (
    f"{TOOTCTL} media remove --days {MEDIA_DAYS} --concurrency {CLEANUP_CONCURRENCY}",
    f"{TOOTCTL} preview_cards remove --days {PREVIEW_CARD_DAYS} --concurrency {CLEANUP_CONCURRENCY}",
)
COMMAND_TIMEOUT_SECONDS = 3 * 3600


def create_maintenance(t: Template, worker_group: autoscaling.AutoScalingGroup) -> events.Rule:
    """The daily cleanup rule and its least-privilege role."""
    role = policies.service_role(
        t, CLEANUP_ROLE, "events.amazonaws.com", "RunCleanupOnWorker",
        [
            Statement(Effect=Allow, Action=[awacs_ssm.SendCommand], Resource=[
                Sub(f"arn:${{AWS::Partition}}:ssm:${{AWS::Region}}::document/{RUN_SHELL_SCRIPT}")]),
            Statement(Effect=Allow, Action=[awacs_ssm.SendCommand],
                      Resource=[Sub("arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:instance/*")],
                      Condition=Condition(StringEquals(
                          {f"ssm:resourceTag/{GROUP_TAG}": Ref(worker_group)}))),
        ],
    )
    parameters = {"commands": ["set -eu", *CLEANUP_COMMANDS],
                  "executionTimeout": [str(COMMAND_TIMEOUT_SECONDS)]}
    return t.add_resource(events.Rule(
        CLEANUP_RULE,
        Description="Daily: tootctl media remove and preview_cards remove on the worker",
        ScheduleExpression=CLEANUP_SCHEDULE,
        State="ENABLED",
        Targets=[events.Target(
            Id="Worker",
            Arn=Sub(f"arn:${{AWS::Partition}}:ssm:${{AWS::Region}}::document/{RUN_SHELL_SCRIPT}"),
            RoleArn=GetAtt(role, "Arn"),
            Input=json.dumps(parameters),
            RunCommandParameters=events.RunCommandParameters(RunCommandTargets=[
                events.RunCommandTarget(Key=f"tag:{GROUP_TAG}", Values=[Ref(worker_group)])]),
        )],
    ))
