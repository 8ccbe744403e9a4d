"""Media deleted by Mastodon leaves CloudFront within minutes: batched, bounded invalidations.

Removed posts, suspended or deleted accounts and takedowns delete objects from the
media bucket, but CloudFront would keep serving its cached copy for up to a year.
The path:

    S3 "Object Deleted" (EventBridge) ─▶ SQS queue ─▶ this function, every few minutes

Why this shape, and not S3 → SQS → an event source mapping with a batching window:
- EventBridge, not an S3 notification: a bucket notification to SQS needs the queue
  policy (naming the bucket) to exist before the bucket's configuration, and the
  bucket cannot be renamed or replaced to break that cycle; the bucket's EventBridge
  switch needs no destination permission, and AWS services' events are free.
- A schedule that drains the queue, not an event source mapping: Lambda's pollers
  long-poll an event-source queue around the clock, hundreds of thousands of empty,
  billed receives a month on an idle instance. A run every few minutes costs one
  receive when there is nothing to do, and is a natural batching window: each run
  turns every deletion queued since the last one into one invalidation.

One run: receive what is queued (up to a bound), map each deleted key to its
attachment folder (Paperclip's class/attachment/id_partition/style/filename: the
folder above style/filename holds every style of one file), one wildcard per folder,
and collapse folders to their parents until at most MAX_PATHS remain, so that a
suspension deleting thousands of files still costs a few paths ($0.005 each after
CloudFront's 1,000 free a month) and stays under CloudFront's 15 wildcard paths in
progress. Over-invalidating costs only cache misses, served again from S3.

The bill is bounded per month, not only per run: a federated instance deletes objects
all day (remote media replaced or expired, the daily cleanup), and a run every few
minutes could ask for tens of thousands of paths a month. Once the distribution has
had FULL_RATE_INVALIDATIONS invalidations this month (the rollout's included), a run
acts at most once an hour, with at most ECONOMY_PATHS paths; deletions wait in the
queue meanwhile. Ceiling: FULL_RATE_INVALIDATIONS x MAX_PATHS + 24 x 31 x ECONOMY_PATHS
paths a month (2,088; at most $5.44 beyond CloudFront's 1,000 free paths).

Duplicates and retries: the same S3 event delivered twice (same key and sequencer)
counts once; the caller reference is derived from the set of deletions, so a run
repeated with the same messages gets CloudFront's existing invalidation back instead
of paying for a second. Messages are deleted only after CloudFront accepted the
batch: when CloudFront throttles (TooManyInvalidationsInProgress), they reappear after
the queue's visibility timeout and the next run retries them with newer deletions.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

logger = Logger()

# Mastodon's media are served under /system (edge.MEDIA_PATH); the keys have no prefix.
# The /system/* behaviour's viewer-request function strips /system, so CloudFront caches
# each file under the stripped URI: both are invalidated, as the CloudFront guide says
# to when a viewer-request function changes the URI ("What you need to know when
# invalidating paths"). Each folder costs two paths.
MEDIA_PATH = "/system"
MAX_PATHS = 6
FULL_RATE_INVALIDATIONS = 100  # of this distribution this month, before the economy rate
ECONOMY_INTERVAL = 3600  # seconds between invalidations at the economy rate
ECONOMY_PATHS = 2  # one folder, both URIs
# Paperclip: the last two key components are style/filename.
FILE_LEVELS = 2
MAX_MESSAGES = 5000
RECEIVE_BATCH = 10
# Stop receiving while this much time is left: the rest waits for the next run.
RESERVE_MS = 20_000
THROTTLED = {"TooManyInvalidationsInProgress", "Throttling", "ThrottlingException"}
ALREADY_DONE = {"InvalidationBatchAlreadyExists"}


@dataclass(frozen=True, order=True)
class Deletion:
    key: str
    sequencer: str


# ---------------------------------------------------------------- pure decisions
def deletion(body: str) -> Deletion | None:
    """The deletion an S3 "Object Deleted" EventBridge event names; None for anything else."""
    try:
        event = json.loads(body)
        detail = event["detail"]
        obj = detail["object"]
        key = unquote_plus(str(obj["key"]))
    except (ValueError, TypeError, KeyError):
        return None
    if event.get("source") != "aws.s3" or event.get("detail-type") != "Object Deleted" or not key:
        return None
    if detail.get("reason") == "Lifecycle Expiration":
        return None  # an old version expiring: its deletion was invalidated when it happened
    return Deletion(key=key, sequencer=str(obj.get("sequencer") or obj.get("version-id") or ""))


def folder(key: str) -> tuple[str, ...]:
    """The components of the key's attachment folder; the whole key when it is shallower."""
    parts = tuple(p for p in key.split("/") if p)
    return parts[:-FILE_LEVELS] if len(parts) > FILE_LEVELS else parts


def _drop_covered(prefixes: set[tuple[str, ...]]) -> set[tuple[str, ...]]:
    """Folders inside another folder of the set are already covered by its wildcard."""
    return {p for p in prefixes if not any(p[:n] in prefixes for n in range(len(p)))}


def invalidation_paths(keys: list[str], max_paths: int = MAX_PATHS) -> list[str]:
    """Wildcard paths covering every key as viewers ask for it (under MEDIA_PATH) and as
    CloudFront caches it (the stripped URI), at most max_paths of them.

    While there are too many folders, the deepest are replaced by their parents (at
    worst, the whole media tree).
    """
    prefixes = _drop_covered({folder(k) for k in keys if folder(k)})
    while len(prefixes) > max(max_paths // 2, 1):
        deepest = max(len(p) for p in prefixes)
        prefixes = _drop_covered({p[:-1] if len(p) == deepest else p for p in prefixes})
    stripped = {"/" + "/".join((*p, "*")) for p in prefixes}
    return sorted(stripped | {MEDIA_PATH + path for path in stripped})


def caller_reference(deletions: list[Deletion]) -> str:
    """The same deletions, in any order and with duplicates, give the same reference."""
    identity = "\n".join(f"{d.key}@{d.sequencer}" for d in sorted(set(deletions)))
    return "media-" + hashlib.sha256(identity.encode()).hexdigest()[:40]


# ---------------------------------------------------------------- AWS calls
_clients: dict[str, Any] = {}


def client(name: str) -> Any:
    if name not in _clients:
        _clients[name] = boto3.client(name)
    return _clients[name]


def receive(queue_url: str, context: LambdaContext) -> list[dict[str, Any]]:
    messages: dict[str, dict[str, Any]] = {}
    while len(messages) < MAX_MESSAGES and context.get_remaining_time_in_millis() > RESERVE_MS:
        batch = client("sqs").receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=RECEIVE_BATCH,
            # A long poll on the first call (a short one can miss the few messages an idle
            # queue holds); then take what is there.
            WaitTimeSeconds=0 if messages else 1,
        ).get("Messages", [])
        # A message seen again (its visibility ran out during the run) keeps its newest
        # receipt handle, the one SQS deletes by; a batch of nothing new ends the run's share.
        fresh = [m for m in batch if m["MessageId"] not in messages]
        messages.update((m["MessageId"], m) for m in batch)
        if not fresh:
            break
    return list(messages.values())


def now() -> datetime.datetime:
    """The clock; tests replace it."""
    return datetime.datetime.now(datetime.UTC)


def this_months_invalidations(distribution_id: str, moment: datetime.datetime) -> list[datetime.datetime]:
    """When each invalidation of the distribution this month was made (at most a few pages read)."""
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    made: list[datetime.datetime] = []
    request: dict[str, Any] = {"DistributionId": distribution_id, "MaxItems": "100"}
    for _ in range(3):  # past 300, the economy rate applies anyway
        listing = client("cloudfront").list_invalidations(**request)["InvalidationList"]
        made += [i["CreateTime"] for i in listing.get("Items", []) if i["CreateTime"] >= start]
        if not listing.get("IsTruncated"):
            break
        request["Marker"] = listing["NextMarker"]
    return made


def rate(distribution_id: str) -> int | None:
    """How many paths this run may ask for (None: none now, wait for the next hour)."""
    moment = now()
    made = this_months_invalidations(distribution_id, moment)
    if len(made) < FULL_RATE_INVALIDATIONS:
        return MAX_PATHS
    if max(made) > moment - datetime.timedelta(seconds=ECONOMY_INTERVAL):
        return None
    return ECONOMY_PATHS


def forget(queue_url: str, messages: list[dict[str, Any]]) -> None:
    for start in range(0, len(messages), RECEIVE_BATCH):
        chunk = messages[start:start + RECEIVE_BATCH]
        client("sqs").delete_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(chunk)])


def drain(queue_url: str, distribution_id: str, context: LambdaContext) -> dict[str, Any]:
    messages = receive(queue_url, context)
    if not messages:
        return {"messages": 0, "paths": []}
    deletions = [d for d in (deletion(m.get("Body", "")) for m in messages) if d is not None]
    allowed = rate(distribution_id) if deletions else MAX_PATHS
    if allowed is None:  # the month's full-rate invalidations are spent: once an hour
        logger.info("Economy rate: deletions wait for the next hourly invalidation",
                    extra={"messages": len(messages)})
        return {"messages": len(messages), "paths": [], "deferred": True}
    paths = invalidation_paths([d.key for d in deletions], allowed)
    result: dict[str, Any] = {"messages": len(messages), "deletions": len(set(deletions)), "paths": paths}
    if paths:
        try:
            response = client("cloudfront").create_invalidation(
                DistributionId=distribution_id,
                InvalidationBatch={"Paths": {"Quantity": len(paths), "Items": paths},
                                   "CallerReference": caller_reference(deletions)},
            )
            result["invalidation"] = response["Invalidation"]["Id"]
        except ClientError as error:
            code = error.response["Error"]["Code"]
            if code not in ALREADY_DONE:
                # Throttled or failed: the messages come back after the visibility
                # timeout and the next run tries again.
                logger.warning("CloudFront did not take the invalidation; retrying next run",
                               extra={"code": code, "paths": paths})
                return {**result, "retry": code}
    forget(queue_url, messages)
    logger.info("Invalidated deleted media", extra=result)
    return result


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return drain(os.environ["QUEUE_URL"], os.environ["DISTRIBUTION_ID"], context)
