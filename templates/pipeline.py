"""The upgrade pipeline: a desired-version change rolls every server, safely.

EventBridge sees the desired-version parameter change and starts the rollout state
machine. Its tasks are two Lambda functions (lambdas/rollout.py, lambdas/invalidate.py)
that each do one short step and say how long to wait; the state machine does the
waiting (Wait states), so a rollout may last hours while no invocation lasts more
than seconds. The order: queue behind any older rollout → validate the tag and the
images → pre-deployment migrations on the worker, while every other serving server
pulls the new images (deploy.sh pull) → the web group in batches (drain, deploy.sh
through Run Command, healthy again; a lone server is surged first) → the
worker and the queue workers (when the stack has them), while the last web batch
settles → the deployed (boot) version → the whole fleet checked → the CloudFront
invalidation started → post-deployment migrations → the fleet checked again → the
invalidation awaited → an SNS notice. Any failure
before the post-deployment migrations rolls the changed servers back; the deployed
version stays the last good one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from awacs import autoscaling as awacs_autoscaling
from awacs import cloudfront as awacs_cloudfront
from awacs import ec2 as awacs_ec2
from awacs import ecr as awacs_ecr
from awacs import elasticloadbalancing as awacs_elb
from awacs import kms as awacs_kms
from awacs import logs as awacs_logs
from awacs import sns as awacs_sns
from awacs import ssm as awacs_ssm
from awacs import states as awacs_states
from awacs.aws import (
    Allow,
    Condition,
    ForAllValuesStringEquals,
    PolicyDocument,
    Statement,
    StringEquals,
)
from awacs.awslambda import InvokeFunction
from troposphere import (
    GetAtt,
    If,
    Output,
    Ref,
    Sub,
    Template,
    events,
    iam,
    logs,
    ssm,
    stepfunctions,
)

from lambdas.rollout import names
from templates import functions, parameters, policies
from templates.compute import BOOT_WORST_CASE_SECONDS, DEPLOY_SCRIPT, Compute
from templates.edge import Edge
from templates.load_balancing import DEREGISTRATION_DELAY_SECONDS, SETTLE_SECONDS, LoadBalancing
from templates.options import STACK_PREFIX
from templates.parameters import HAS_QUEUE_WORKERS, ROLLS_REPUSHED_TAGS, Parameters
from templates.versions import PARAMETER_PREFIX, Versions, tag_pattern

STATE_MACHINE = "RolloutStateMachine"
# What the rollout keeps on a server: its version, its images and the rollout's journal.
SERVER_TAGS = [names.VERSION_TAG, names.JOURNAL_TAG, names.DIGEST_TAG]
ROLLOUT_FUNCTION = "RolloutFunction"
INVALIDATE_FUNCTION = "InvalidateFunction"
ROLLOUT_STATE = "RolloutStateParameter"
QUEUE_WORKERS_POLICY = "RolloutQueueWorkersPolicy"
ECR_IMAGES_POLICY = "RolloutEcrImagesPolicy"
# Retried by the state machine: the Lambda service's own transient errors.
LAMBDA_ERRORS = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
]
# Retried too: an AWS call of the step that failed beyond boto3's own retries (throttling,
# a 5xx, a dropped connection). Every step is safe to run again (lambdas/rollout/fleet.py),
# so a step that failed half-way is completed rather than rolled back.
TRANSIENT_ERRORS = [
    "ClientError",
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "RegistryUnavailable",  # a registry that did not answer whether an image exists (lambdas/rollout/aws.py)
]
TASK_TIMEOUT = 90
FUNCTION_TIMEOUT = 60


@dataclass(frozen=True)
class Pipeline:
    state_machine: stepfunctions.StateMachine
    rule: events.Rule
    state_parameter: ssm.Parameter | None = None  # rollout-last: the handled record


# ---------------------------------------------------------------- the state machine
def _task(
    resource: str, action: str, next_state: str, catch: str | None, catch_path: str = "$.error", **extra: str
) -> dict[str, Any]:
    state: dict[str, Any] = {
        "Type": "Task",
        "Resource": resource,
        "Parameters": {"action": action, "state.$": "$", **extra},
        "TimeoutSeconds": TASK_TIMEOUT,
        "Retry": [
            {
                "ErrorEquals": LAMBDA_ERRORS,
                "IntervalSeconds": 2,
                "MaxAttempts": 6,
                "BackoffRate": 2,
                "JitterStrategy": "FULL",
            },
            {
                "ErrorEquals": TRANSIENT_ERRORS,
                "IntervalSeconds": 5,
                "MaxAttempts": 3,
                "BackoffRate": 2,
                "JitterStrategy": "FULL",
            },
        ],
        "Next": next_state,
    }
    if catch:
        state["Catch"] = [{"ErrorEquals": ["States.ALL"], "ResultPath": catch_path, "Next": catch}]
    return state


def _choice(routes: dict[str, str], default: str) -> dict[str, Any]:
    return {
        "Type": "Choice",
        "Default": default,
        "Choices": [
            {"Variable": "$.next", "StringEquals": value, "Next": to} for value, to in routes.items()
        ],
    }


def _wait(next_state: str) -> dict[str, Any]:
    return {"Type": "Wait", "SecondsPath": "$.wait", "Next": next_state}


def _loop(states: dict[str, Any], name: str, task: dict[str, Any], done: str, failed: str) -> None:
    """name → Choice on next: wait → Wait → name; done → `done`; failed → `failed`."""
    states[name] = {**task, "Next": f"{name}Next"}
    states[f"{name}Next"] = _choice(
        {names.WAIT: f"{name}Wait", names.DONE: done, names.FAILED: failed}, failed
    )
    states[f"{name}Wait"] = _wait(name)


def definition(
    config: dict[str, Any],
    rollout: str = "${RolloutFunctionArn}",
    invalidate: str = "${InvalidateFunctionArn}",
) -> dict[str, Any]:
    """The rollout in Amazon States Language; `config` is handed to every step.

    The actions and the outcomes it routes on are the function's own names
    (lambdas/rollout/names.py). A failure before the post-deployment migrations goes
    to Rollback; from there on nothing is rolled back (the schema has moved on).
    """
    states: dict[str, Any] = {
        "Configure": {
            "Type": "Pass",
            "Next": "Begin",
            "Parameters": {
                "config": config,
                "execution.$": "$$.Execution.Id",
                "state_machine.$": "$$.StateMachine.Id",
            },
        },
        "Begin": _task(rollout, names.BEGIN, "BeginNext", "Finish"),
        "BeginNext": _choice(
            {names.QUEUED: "Queued", names.GO: "Validate", names.NOOP: "Done", names.FAILED: "Finish"},
            "Finish",
        ),
        "Queued": _wait("Begin"),
        "Validate": _task(rollout, names.VALIDATE, "ValidateNext", "Finish"),
        "ValidateNext": _choice({names.GO: "PreMigrate"}, "Finish"),
    }
    rollback = "Rollback"
    _loop(states, "PreMigrate", _task(rollout, names.MIGRATE, "", rollback, phase=names.PRE), "Web", rollback)
    _loop(states, "Web", _task(rollout, names.WEB, "", rollback), "Worker", rollback)
    _loop(states, "Worker", _task(rollout, names.WORKER, "", rollback), "Record", rollback)
    states["Record"] = _task(rollout, names.RECORD, "RecordNext", rollback)
    states["RecordNext"] = _choice({names.DONE: "Verify"}, rollback)
    verify = _task(rollout, names.VERIFY, "", rollback, phase=names.PRE)
    _loop(states, "Verify", verify, "InvalidateEarly", rollback)
    # From here on every server runs the new code, which the migrated schema needs: a
    # failure is reported, never rolled back. So CloudFront's copies of the old version's
    # pages can go now: the invalidation runs beside the post-deployment migrations and
    # the final check, and is awaited after them (InvalidateCheck starts it again if
    # CloudFront throttled this first call).
    states["InvalidateEarly"] = _task(invalidate, "start", "PostMigrate", "PostMigrate", "$.warning")
    _loop(states, "PostMigrate", _task(rollout, names.MIGRATE, "", "Finish", phase=names.POST), "FinalCheck",
          "Finish")
    _loop(states, "FinalCheck", _task(rollout, names.VERIFY, "", "Finish", phase=names.FINAL),
          "InvalidateCheck", "Finish")
    states.update(
        {
            "Invalidate": _task(invalidate, "start", "InvalidateNext", "Finish", "$.warning"),
            "InvalidateNext": _choice({"retry": "InvalidateRetry", "wait": "InvalidateWait"}, "Finish"),
            "InvalidateRetry": _wait("Invalidate"),
            "InvalidateWait": _wait("InvalidateCheck"),
            "InvalidateCheck": _task(invalidate, "check", "InvalidateNext", "Finish", "$.warning"),
            "Rollback": _task(rollout, names.ROLLBACK, "RollbackNext", "Finish", "$.rollback_error"),
            "RollbackNext": _choice({names.WAIT: "RollbackWait"}, "Finish"),
            "RollbackWait": _wait("Rollback"),
            "Finish": _task(rollout, names.FINISH, "FinishNext", "Failed", "$.finish_error"),
            "FinishNext": _choice(
                {names.AGAIN: "Begin", names.DONE: "Done", names.WAIT: "FinishWait"}, "Failed"
            ),
            "FinishWait": _wait("Finish"),
            "Done": {"Type": "Succeed"},
            "Failed": {
                "Type": "Fail",
                "Error": "RolloutFailed",
                "Cause": "See the notification and the rollout logs",
            },
        }
    )
    return {
        "Comment": "Mastodon rolling upgrade (templates/pipeline.py)",
        "StartAt": "Configure",
        # The backstop: every step is bounded by the function's own deadlines first.
        "TimeoutSeconds": names.EXECUTION_TIMEOUT,
        "States": states,
    }


# ---------------------------------------------------------------- resources
def _arn(service: str, resource: str) -> Sub:
    return Sub(f"arn:${{AWS::Partition}}:{service}:${{AWS::Region}}:${{AWS::AccountId}}:{resource}")


def _parameter_arn(parameter: object) -> Sub:
    return _arn("ssm", f"parameter${{{parameter.title}}}")  # type: ignore[attr-defined]


def rollout_statements(
    versions: Versions,
    state_parameter: ssm.Parameter,
    compute: Compute,
    load_balancing: LoadBalancing,
    alerts: object,
    alerts_key: object,
) -> list[Statement]:
    groups = [Ref(compute.web_group), Ref(compute.worker_group)]
    return [
        Statement(
            Effect=Allow,
            Action=[awacs_ssm.GetParameter],
            Resource=[
                versions.desired_arn(),
                versions.deployed_arn(),
                _parameter_arn(state_parameter),
            ],
        ),
        Statement(
            Effect=Allow,
            Action=[awacs_ssm.PutParameter],
            Resource=[versions.deployed_arn(), _parameter_arn(state_parameter)],
        ),
        # Run Command: the shell document, on this stack's servers only.
        Statement(
            Effect=Allow,
            Action=[awacs_ssm.SendCommand],
            Resource=[Sub("arn:${AWS::Partition}:ssm:${AWS::Region}::document/AWS-RunShellScript")],
        ),
        Statement(
            Effect=Allow,
            Action=[awacs_ssm.SendCommand],
            Resource=[_arn("ec2", "instance/*")],
            Condition=Condition(StringEquals(f"ssm:resourceTag/{names.GROUP_TAG}", groups)),
        ),
        # The version a server runs, its images, and the rollout's journal on it.
        Statement(
            Effect=Allow,
            Action=[awacs_ec2.CreateTags, awacs_ec2.DeleteTags],
            Resource=[_arn("ec2", "instance/*")],
            Condition=Condition(
                [
                    StringEquals(f"aws:ResourceTag/{names.GROUP_TAG}", groups),
                    ForAllValuesStringEquals("aws:TagKeys", SERVER_TAGS),
                ]
            ),
        ),
        Statement(
            Effect=Allow,
            Action=[awacs_elb.RegisterTargets, awacs_elb.DeregisterTargets],
            Resource=[Ref(load_balancing.web_target_group), Ref(load_balancing.streaming_target_group)],
        ),
        Statement(
            Effect=Allow,
            Action=[
                awacs_autoscaling.SetInstanceProtection,
                awacs_autoscaling.SetDesiredCapacity,
                awacs_autoscaling.UpdateAutoScalingGroup,
                awacs_autoscaling.TerminateInstanceInAutoScalingGroup,
                # Scaling held while the web group rolls (no scale-in of the only server).
                awacs_autoscaling.SuspendProcesses,
                awacs_autoscaling.ResumeProcesses,
            ],
            Resource=[compute.web_group_arn()],
        ),
        # The records of what a rollout held and raised, on the web group, written first.
        Statement(
            Effect=Allow,
            Action=[awacs_autoscaling.CreateOrUpdateTags, awacs_autoscaling.DeleteTags],
            Resource=[compute.web_group_arn()],
            Condition=Condition(ForAllValuesStringEquals("aws:TagKeys", [names.HOLD_TAG, names.SURGE_TAG])),
        ),
        # These accept no resource ARN: AWS grants them only on "*".
        Statement(
            Effect=Allow,
            Action=[
                awacs_ssm.GetCommandInvocation,
                awacs_ssm.ListCommands,
                awacs_autoscaling.DescribeAutoScalingGroups,
                awacs_ec2.DescribeInstances,
                awacs_elb.DescribeTargetHealth,
            ],
            Resource=["*"],
        ),
        Statement(Effect=Allow, Action=[awacs_sns.Publish], Resource=[Ref(alerts)]),  # type: ignore[arg-type]
        # The alert topic is encrypted with the operations key: publishing uses it.
        Statement(
            Effect=Allow,
            Action=[awacs_kms.GenerateDataKey, awacs_kms.Decrypt],
            Resource=[GetAtt(alerts_key, "Arn")],
        ),  # type: ignore[arg-type]
    ]


def ecr_images_policy(p: Parameters, role: iam.Role) -> iam.PolicyType:
    """The rollout asks ECR whether a release's images exist (ecr:DescribeImages), on
    exactly the repositories of the stack's own registry the stack names, only while one is."""
    return iam.PolicyType(
        ECR_IMAGES_POLICY,
        Condition=parameters.ANY_IMAGE_IN_ECR,
        PolicyName="RolloutEcrImages",
        Roles=[Ref(role)],
        PolicyDocument=PolicyDocument(Version="2012-10-17", Statement=[Statement(
            Effect=Allow, Action=[awacs_ecr.DescribeImages], Resource=[
                If(parameters.WEB_IMAGE_IN_ECR, parameters.ecr_repository_arn(p.web_image_repository),
                   Ref("AWS::NoValue")),
                If(parameters.STREAMING_IMAGE_IN_ECR,
                   parameters.ecr_repository_arn(p.streaming_image_repository), Ref("AWS::NoValue")),
            ])]),
    )


def queue_group_statements(compute: Compute) -> list[Statement]:
    """What the rollout needs on the queue workers' group, and nothing more: Run Command and
    the version and journal tags on its servers (rolled in place: no load balancer, no
    protection, no surge), and holding its scaling (the hold tag first, then the processes)."""
    name, arn = Ref(compute.queue_group), compute.queue_group_arn()
    return [
        Statement(
            Effect=Allow,
            Action=[awacs_ssm.SendCommand],
            Resource=[_arn("ec2", "instance/*")],
            Condition=Condition(StringEquals(f"ssm:resourceTag/{names.GROUP_TAG}", [name])),
        ),
        Statement(
            Effect=Allow,
            Action=[awacs_ec2.CreateTags, awacs_ec2.DeleteTags],
            Resource=[_arn("ec2", "instance/*")],
            Condition=Condition(
                [
                    StringEquals(f"aws:ResourceTag/{names.GROUP_TAG}", [name]),
                    ForAllValuesStringEquals("aws:TagKeys", SERVER_TAGS),
                ]
            ),
        ),
        Statement(
            Effect=Allow,
            Action=[awacs_autoscaling.SuspendProcesses, awacs_autoscaling.ResumeProcesses],
            Resource=[arn],
        ),
        Statement(
            Effect=Allow,
            Action=[awacs_autoscaling.CreateOrUpdateTags, awacs_autoscaling.DeleteTags],
            Resource=[arn],
            Condition=Condition(ForAllValuesStringEquals("aws:TagKeys", [names.HOLD_TAG])),
        ),
    ]


def create_pipeline(
    t: Template,
    p: Parameters,
    versions: Versions,
    compute: Compute,
    load_balancing: LoadBalancing,
    edge: Edge,
    alerts: object,
    alerts_key: object,
    rollout_code: str,
    invalidate_code: str,
) -> Pipeline:
    state_parameter = t.add_resource(
        ssm.Parameter(
            ROLLOUT_STATE,
            Name=Sub(f"{PARAMETER_PREFIX}/rollout-last"),
            Type="String",
            Value="{}",
            Description="The last desired-version change a rollout handled, and its result",
        )
    )
    rollout = functions.inline_function(
        t,
        ROLLOUT_FUNCTION,
        rollout_code,
        rollout_statements(versions, state_parameter, compute, load_balancing, alerts, alerts_key),
        Ref(p.log_retention),
        timeout=FUNCTION_TIMEOUT,
        description="Mastodon rollout: one short step of a rolling upgrade",
    )
    invalidate = functions.inline_function(
        t,
        INVALIDATE_FUNCTION,
        invalidate_code,
        [
            Statement(
                Effect=Allow,
                Action=[awacs_cloudfront.CreateInvalidation, awacs_cloudfront.GetInvalidation],
                Resource=[edge.distribution_arn()],
            )
        ],  # type: ignore[attr-defined]
        Ref(p.log_retention),
        timeout=FUNCTION_TIMEOUT,
        description="Mastodon rollout: CloudFront invalidation after an upgrade",
    )

    log_group = t.add_resource(
        logs.LogGroup(
            "RolloutLogs",
            RetentionInDays=Ref(p.log_retention),
            LogGroupName=Sub(f"{STACK_PREFIX}/rollout"),
        )
    )
    role = policies.service_role(
        t, "RolloutStateMachineRole", "states.amazonaws.com", "Rollout",
        [
            Statement(
                Effect=Allow,
                Action=[InvokeFunction],
                Resource=[GetAtt(rollout, "Arn"), GetAtt(invalidate, "Arn")],
            ),
            # Step Functions' log delivery (vended logs) is granted only on "*".
            Statement(
                Effect=Allow,
                Action=[
                    awacs_logs.CreateLogDelivery,
                    awacs_logs.GetLogDelivery,
                    awacs_logs.UpdateLogDelivery,
                    awacs_logs.DeleteLogDelivery,
                    awacs_logs.ListLogDeliveries,
                    awacs_logs.PutResourcePolicy,
                    awacs_logs.DescribeResourcePolicies,
                    awacs_logs.DescribeLogGroups,
                ],
                Resource=["*"],
            ),
        ],
    )
    config = {
        "web_group": "${WebGroup}",
        "worker_group": "${WorkerGroup}",
        "target_groups": ["${WebTargetGroup}", "${StreamingTargetGroup}"],
        "desired_parameter": "${DesiredParameter}",
        "deployed_parameter": "${DeployedParameter}",
        "handled_parameter": "${StateParameter}",
        "batch_size": "${BatchSize}",
        "drain_seconds": DEREGISTRATION_DELAY_SECONDS,
        "settle_seconds": SETTLE_SECONDS,
        "boot_grace": BOOT_WORST_CASE_SECONDS,
        "topic_arn": "${TopicArn}",
        "distribution_id": "${DistributionId}",
        "images": ["${WebImage}", "${StreamingImage}"],
        "tag_pattern": "${TagPattern}",
        "deploy_script": DEPLOY_SCRIPT,
        "queue_group": "${QueueGroup}",  # "" while the stack has no queue workers
        "roll_repushed": "${RollRepushed}",  # "true": a tag pushed again is rolled (upgrade on push)
    }
    machine = t.add_resource(
        stepfunctions.StateMachine(
            STATE_MACHINE,
            RoleArn=GetAtt(role, "Arn"),
            StateMachineType="STANDARD",
            Definition=definition(config),
            DefinitionSubstitutions={
                "RolloutFunctionArn": GetAtt(rollout, "Arn"),
                "InvalidateFunctionArn": GetAtt(invalidate, "Arn"),
                "WebGroup": Ref(compute.web_group),
                "WorkerGroup": Ref(compute.worker_group),
                "WebTargetGroup": Ref(load_balancing.web_target_group),
                "StreamingTargetGroup": Ref(load_balancing.streaming_target_group),
                "DesiredParameter": Ref(versions.desired),
                "DeployedParameter": Ref(versions.deployed),
                "StateParameter": Ref(state_parameter),
                "BatchSize": Ref(p.rolling_batch_size),
                "TopicArn": Ref(alerts),  # type: ignore[arg-type]
                "DistributionId": Ref(edge.distribution),  # type: ignore[arg-type]
                "QueueGroup": compute.queue_group_name(),
                "WebImage": Ref(p.web_image_repository),
                "StreamingImage": Ref(p.streaming_image_repository),
                "TagPattern": tag_pattern(),
                "RollRepushed": If(ROLLS_REPUSHED_TAGS, "true", "false"),
            },
            LoggingConfiguration=stepfunctions.LoggingConfiguration(
                Level="ALL",
                IncludeExecutionData=False,
                Destinations=[
                    stepfunctions.LogDestination(
                        CloudWatchLogsLogGroup=stepfunctions.CloudWatchLogsLogGroup(
                            LogGroupArn=GetAtt(log_group, "Arn")
                        )
                    )
                ],
            ),
        )
    )
    # One rollout at a time: a rollout waits for older running ones (ListExecutions).
    # A separate policy, since the state machine already depends on the function's role.
    t.add_resource(
        iam.PolicyType(
            "RolloutQueuePolicy",
            PolicyName="RolloutQueue",
            Roles=[Ref(functions.role_of(t, rollout))],
            PolicyDocument=PolicyDocument(
                Version="2012-10-17",
                Statement=[
                    Statement(Effect=Allow, Action=[awacs_states.ListExecutions], Resource=[Ref(machine)])
                ],
            ),
        )
    )
    t.add_resource(  # the grants exist only with the group
        iam.PolicyType(
            QUEUE_WORKERS_POLICY,
            Condition=HAS_QUEUE_WORKERS,
            PolicyName="RolloutQueueWorkers",
            Roles=[Ref(functions.role_of(t, rollout))],
            PolicyDocument=PolicyDocument(Version="2012-10-17", Statement=queue_group_statements(compute)),
        )
    )
    t.add_resource(ecr_images_policy(p, functions.role_of(t, rollout)))
    events_role = policies.service_role(
        t, "RolloutTriggerRole", "events.amazonaws.com", "StartRollout",
        [Statement(Effect=Allow, Action=[awacs_states.StartExecution], Resource=[Ref(machine)])],
    )
    rule = t.add_resource(
        events.Rule(
            "RolloutTrigger",
            Description="A change of the desired Mastodon version starts a rollout",
            EventPattern={
                "source": ["aws.ssm"],
                "detail-type": ["Parameter Store Change"],
                "detail": {"name": [Ref(versions.desired)], "operation": ["Update"]},
            },
            Targets=[events.Target(Id="Rollout", Arn=Ref(machine), RoleArn=GetAtt(events_role, "Arn"))],
        )
    )
    t.add_output(
        Output(
            "RolloutStateMachineArn",
            Value=Ref(machine),
            Description="Upgrade rollouts: watch executions here (Step Functions console)",
        )
    )
    t.add_output(
        Output(
            "RolloutStateParameter",
            Value=Ref(state_parameter),
            Description="The last upgrade handled and its result",
        )
    )
    return Pipeline(machine, rule, state_parameter)
