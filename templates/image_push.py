"""Upgrade on push (optional, UpgradeOnImagePush): ECR's push events start the rollout.

An EventBridge rule takes ECR's successful pushes to the web image's repository (and the
streaming image's, when it is in this account's ECR too) to a small function
(lambdas/rollout/push.py) that writes the pushed tag into the desired-version parameter:
the operator's CI becomes a writer of that parameter, and the rollout it starts is the
one every upgrade goes through. Nothing of it exists unless the option is on and the web
image is in this account's ECR.
"""

from __future__ import annotations

from awacs import ecr as awacs_ecr
from awacs import ssm as awacs_ssm
from awacs.aws import Allow, Statement
from troposphere import GetAtt, If, Join, Ref, Select, Split, Sub, Template, awslambda, events, ssm

from templates import functions
from templates.functions import CHECKOV_SKIPS
from templates.parameters import (
    ROLLS_REPUSHED_TAGS,
    STREAMING_IMAGE_IN_ECR,
    UPGRADES_ON_IMAGE_PUSH,
    Parameters,
)
from templates.versions import Versions, tag_pattern

PUSH_FUNCTION = "ImagePushFunction"
PUSH_RULE = "ImagePushTrigger"
# Invoked asynchronously by EventBridge, unlike the stack's other functions.
_ASYNC_SKIP = {
    "id": "CKV_AWS_116",
    "comment": "Invoked asynchronously by EventBridge, which Lambda retries twice; a lost push is "
    "logged, and the operator writes the tag into desired-version as without the option: a "
    "dead-letter queue would hold events nobody replays.",
}


# Seconds a push event may wait for the function (EventBridge's retries and Lambda's
# asynchronous queue): ECR's push events are news for minutes.
PUSH_EVENT_MAX_AGE = 300

def repository_name(repository: Ref) -> Select:
    """The ECR repository name of an image repository in this account's ECR: its path after
    the host (a name may hold "/"). Fn::Split takes only a literal delimiter: the China
    regions' host suffix is made the others' first."""
    plain = Join(".amazonaws.com/", Split(".amazonaws.com.cn/", repository))
    return Select(1, Split(".amazonaws.com/", plain))


def _repository_arn(name: object) -> Sub:
    return Sub("arn:${AWS::Partition}:ecr:${AWS::Region}:${AWS::AccountId}:repository/${Name}", Name=name)


def _parameter_arn(parameter: ssm.Parameter) -> Sub:
    return Sub("arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${Name}",
               Name=Ref(parameter))


def create_image_push(
    t: Template, p: Parameters, versions: Versions, handled: ssm.Parameter, code: str
) -> awslambda.Function:
    web = repository_name(Ref(p.web_image_repository))
    streaming = If(STREAMING_IMAGE_IN_ECR, repository_name(Ref(p.streaming_image_repository)), "")
    repositories = If(
        STREAMING_IMAGE_IN_ECR, [web, repository_name(Ref(p.streaming_image_repository))], [web]
    )
    repository_arns = If(
        STREAMING_IMAGE_IN_ECR,
        [_repository_arn(web), _repository_arn(repository_name(Ref(p.streaming_image_repository)))],
        [_repository_arn(web)],
    )
    function = functions.inline_function(
        t,
        PUSH_FUNCTION,
        code,
        [
            Statement(
                Effect=Allow,
                Action=[awacs_ssm.GetParameter],
                Resource=[versions.desired_arn(), versions.deployed_arn(), _parameter_arn(handled)],
            ),
            Statement(Effect=Allow, Action=[awacs_ssm.PutParameter], Resource=[versions.desired_arn()]),
            Statement(Effect=Allow, Action=[awacs_ecr.DescribeImages], Resource=repository_arns),
        ],
        Ref(p.log_retention),
        timeout=30,
        memory=128,
        description="Writes a tag pushed to the stack's ECR repositories into desired-version.",
        environment={
            "DESIRED_PARAMETER": Ref(versions.desired),
            "DEPLOYED_PARAMETER": Ref(versions.deployed),
            "HANDLED_PARAMETER": Ref(handled),
            "WEB_REPOSITORY": web,
            "STREAMING_REPOSITORY": streaming,
            "WEB_IMAGE": Ref(p.web_image_repository),
            "STREAMING_IMAGE": Ref(p.streaming_image_repository),
            "TAG_RULE": tag_pattern(),
            "PUSH_TAG_PATTERN": Ref(p.image_push_tag_pattern),
            "ROLL_REPUSHED_TAGS": If(ROLLS_REPUSHED_TAGS, "true", "false"),
        },
        condition=UPGRADES_ON_IMAGE_PUSH,
    )
    function.Metadata = {
        "checkov": {"skip": [_ASYNC_SKIP if s["id"] == "CKV_AWS_116" else s for s in CHECKOV_SKIPS]}
    }
    rule = t.add_resource(
        events.Rule(
            PUSH_RULE,
            Condition=UPGRADES_ON_IMAGE_PUSH,
            Description="A tag pushed to the stack's ECR repositories may become the desired version",
            EventPattern={
                "source": ["aws.ecr"],
                "detail-type": ["ECR Image Action"],
                "detail": {
                    "action-type": ["PUSH"],
                    "result": ["SUCCESS"],
                    "repository-name": repositories,
                    "image-tag": [{"exists": True}],
                },
            },
            # A push is news for minutes, not the day EventBridge would keep retrying by
            # default: a late delivery must not bring back a tag the operator has since
            # replaced in desired-version.
            Targets=[events.Target(
                Id="ImagePush", Arn=GetAtt(function, "Arn"),
                RetryPolicy=events.RetryPolicy(
                    MaximumEventAgeInSeconds=PUSH_EVENT_MAX_AGE, MaximumRetryAttempts=3),
            )],
        )
    )
    t.add_resource(
        awslambda.EventInvokeConfig(
            "ImagePushInvokeConfig",
            Condition=UPGRADES_ON_IMAGE_PUSH,
            FunctionName=Ref(function),
            Qualifier="$LATEST",
            MaximumEventAgeInSeconds=PUSH_EVENT_MAX_AGE,
            MaximumRetryAttempts=1,
        )
    )
    t.add_resource(
        awslambda.Permission(
            "ImagePushPermission",
            Condition=UPGRADES_ON_IMAGE_PUSH,
            Action="lambda:InvokeFunction",
            FunctionName=Ref(function),
            Principal="events.amazonaws.com",
            SourceArn=GetAtt(rule, "Arn"),
        )
    )
    return function
