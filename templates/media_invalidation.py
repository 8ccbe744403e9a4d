"""Deleted media leave CloudFront: S3 deletion events, a queue, and a function that drains it.

The media bucket sends its events to EventBridge; a rule puts every "Object Deleted"
event of that bucket into a queue, and a scheduled rule runs the invalidation
function (lambdas/media_invalidation.py, whose docstring says why this shape) every
DRAIN_MINUTES, which turns the queued deletions into one bounded CloudFront
invalidation. The function may receive and delete only this queue's messages and
invalidate only this distribution; only the deletion rule may send to the queue.
"""

from __future__ import annotations

from dataclasses import dataclass

from awacs import cloudfront as awacs_cloudfront
from awacs import sqs as awacs_sqs
from awacs.aws import Allow, ArnEquals, Condition, PolicyDocument, Principal, Statement
from troposphere import GetAtt, Ref, Template, awslambda, events, s3, sqs

from templates import functions
from templates.edge import Edge
from templates.parameters import Parameters

FUNCTION = "MediaInvalidationFunction"
QUEUE = "MediaDeletionQueue"
DELETION_RULE = "MediaDeletionRule"
DRAIN_RULE = "MediaInvalidationSchedule"
DRAIN_MINUTES = 5
FUNCTION_TIMEOUT = 120
FUNCTION_MEMORY = 128
# Longer than a run, so that a message is never handled by two runs at once; a
# throttled batch comes back after it, at the next run or the one after.
VISIBILITY_TIMEOUT = 2 * FUNCTION_TIMEOUT + 60
# Deletions CloudFront could not take for this long are given up (logged every run).
RETENTION_SECONDS = 4 * 24 * 3600


@dataclass(frozen=True)
class MediaInvalidation:
    queue: sqs.Queue
    function: awslambda.Function


def create_media_invalidation(t: Template, p: Parameters, bucket: s3.Bucket,
                              cdn: Edge, code: str) -> MediaInvalidation:
    queue = t.add_resource(sqs.Queue(
        QUEUE,
        SqsManagedSseEnabled=True,
        VisibilityTimeout=VISIBILITY_TIMEOUT,
        MessageRetentionPeriod=RETENTION_SECONDS,
        Metadata={"checkov": {"skip": [
            {"id": "CKV_AWS_27", "comment": "Encrypted at rest with SQS-managed keys "
             "(SqsManagedSseEnabled); the messages name deleted objects only, and a KMS key would "
             "need a key policy for EventBridge and cost $1 a month."},
        ]}},
    ))
    deletions = t.add_resource(events.Rule(
        DELETION_RULE,
        Description="Media deleted from the bucket, queued for CloudFront invalidation",
        EventPattern={
            "source": ["aws.s3"],
            "detail-type": ["Object Deleted"],
            # Deletions by a request (Mastodon's, or an operator's), not the lifecycle rule
            # that expires old versions: those were invalidated when they were deleted.
            "detail": {"bucket": {"name": [Ref(bucket)]}, "reason": ["DeleteObject"]},
        },
        Targets=[events.Target(Id="Queue", Arn=GetAtt(queue, "Arn"))],
    ))
    t.add_resource(sqs.QueuePolicy(
        f"{QUEUE}Policy",
        Queues=[Ref(queue)],
        PolicyDocument=PolicyDocument(Version="2012-10-17", Statement=[Statement(
            Sid="DeletionEventsOnly",
            Effect=Allow,
            Principal=Principal("Service", "events.amazonaws.com"),
            Action=[awacs_sqs.SendMessage],
            Resource=[GetAtt(queue, "Arn")],
            Condition=Condition(ArnEquals("aws:SourceArn", GetAtt(deletions, "Arn"))),
        )]),
    ))
    function = functions.inline_function(
        t, FUNCTION, code,
        [
            Statement(Effect=Allow, Action=[awacs_sqs.ReceiveMessage, awacs_sqs.DeleteMessage],
                      Resource=[GetAtt(queue, "Arn")]),
            Statement(Effect=Allow, Action=[awacs_cloudfront.CreateInvalidation,
                                            awacs_cloudfront.ListInvalidations],
                      Resource=[cdn.distribution_arn()]),
        ],
        Ref(p.log_retention), timeout=FUNCTION_TIMEOUT, memory=FUNCTION_MEMORY,
        description="Invalidates the CloudFront paths of media deleted from the bucket.",
        environment={"QUEUE_URL": Ref(queue), "DISTRIBUTION_ID": Ref(cdn.distribution)},
    )
    function.Metadata = {"checkov": {"skip": [
        *(s for s in functions.CHECKOV_SKIPS if s["id"] != "CKV_AWS_116"),
        {"id": "CKV_AWS_116", "comment": "Run by a schedule; the work waits in the queue, which "
         "the next run drains again: a failed run loses nothing, a dead-letter queue would hold "
         "only empty schedule events."},
    ]}}
    # The next scheduled run is the retry; Lambda's own retries would only run it twice.
    t.add_resource(awslambda.EventInvokeConfig(
        f"{FUNCTION}InvokeConfig",
        FunctionName=Ref(function),
        Qualifier="$LATEST",
        MaximumRetryAttempts=0,
    ))
    schedule = t.add_resource(events.Rule(
        DRAIN_RULE,
        Description=f"Every {DRAIN_MINUTES} minutes: invalidate the media deleted since the last run",
        ScheduleExpression=f"rate({DRAIN_MINUTES} minutes)",
        State="ENABLED",
        Targets=[events.Target(Id="Drain", Arn=GetAtt(function, "Arn"))],
    ))
    t.add_resource(awslambda.Permission(
        f"{FUNCTION}Schedule",
        Action="lambda:InvokeFunction",
        FunctionName=Ref(function),
        Principal="events.amazonaws.com",
        SourceArn=GetAtt(schedule, "Arn"),
    ))
    return MediaInvalidation(queue=queue, function=function)
