"""Deleted media leave CloudFront: the pure decisions, then the function against moto's SQS and CloudFront."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from lambdas import media_invalidation as mi

ATTACHMENT = "media_attachments/files/110/123/456/789/012/345"


def deleted_event(key: str, sequencer: str = "0062E99A88DC407460", bucket: str = "media") -> dict[str, Any]:
    """An S3 "Object Deleted" event as EventBridge puts it in the queue (the message body)."""
    return {
        "version": "0", "id": "2ee9cc15-d022-99ea-1fb8-1b1bac4850f9", "detail-type": "Object Deleted",
        "source": "aws.s3", "account": "123456789012", "time": "2026-12-04T00:00:00Z", "region": "us-east-1",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {"version": "0", "bucket": {"name": bucket},
                   "object": {"key": key, "sequencer": sequencer},
                   "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012",
                   "reason": "DeleteObject", "deletion-type": "Delete Marker Created"},
    }


def covered(key: str, paths: list[str]) -> bool:
    url = f"{mi.MEDIA_PATH}/{key}"
    return any(fnmatch.fnmatchcase(url, p) for p in paths)


# ---------------------------------------------------------------- pure decisions
def test_every_style_of_one_attachment_becomes_one_wildcard_on_its_folder():
    keys = [f"{ATTACHMENT}/{style}/8d2e4f.jpeg" for style in ("original", "small")] + [
        f"{ATTACHMENT}/original/8d2e4f.mp4"]
    assert mi.invalidation_paths(keys) == [f"/{ATTACHMENT}/*", f"/system/{ATTACHMENT}/*"]


def test_the_edge_s_cache_key_is_invalidated_too_not_only_the_viewer_s_uri():
    """The /system/* behaviour's viewer-request function strips /system before CloudFront
    looks up its cache: the file is cached under the stripped URI (found by the review)."""
    from templates.edge import STRIP_MEDIA_PREFIX

    offset = int(STRIP_MEDIA_PREFIX.split("substring(")[1].split(")")[0])
    viewer_uri = f"/system/{ATTACHMENT}/original/8d2e4f.jpeg"
    cached_uri = viewer_uri[offset:]
    paths = mi.invalidation_paths([f"{ATTACHMENT}/original/8d2e4f.jpeg"])
    assert covered_uri(cached_uri, paths) and covered_uri(viewer_uri, paths)


def covered_uri(uri: str, paths: list[str]) -> bool:
    return any(uri.startswith(p[:-1]) if p.endswith("*") else uri == p for p in paths)


def test_many_deleted_files_become_a_few_wildcards_that_still_cover_every_one():
    # A suspension: hundreds of attachments, local and cached remote, avatars too.
    keys = [f"media_attachments/files/110/{a:03d}/{b:03d}/000/000/001/{s}/f.png"
            for a in range(120, 126) for b in range(0, 500, 7) for s in ("original", "small")]
    keys += [f"cache/media_attachments/files/111/222/{b:03d}/000/000/002/original/r.jpg" for b in range(50)]
    keys += ["accounts/avatars/110/000/000/000/000/001/original/a.png"]

    paths = mi.invalidation_paths(keys)

    assert 1 <= len(paths) <= mi.MAX_PATHS
    assert all(p.endswith("/*") for p in paths)
    assert {p for p in paths if p.startswith("/system/")} == {"/system" + p for p in paths
                                                             if not p.startswith("/system/")}
    assert all(covered(k, [p for p in paths if p.startswith("/system/")]) for k in keys)
    # Collapsing stops as soon as it fits: not the whole media tree.
    assert "/system/*" not in paths and "/*" not in paths


def test_a_few_folders_are_kept_exact():
    keys = [f"media_attachments/files/110/123/456/789/012/{n:03d}/original/x.png"
            for n in range(mi.MAX_PATHS // 2)]
    assert len(mi.invalidation_paths(keys)) == mi.MAX_PATHS


def test_a_shallow_key_is_invalidated_as_it_is_and_a_folder_inside_another_is_dropped():
    assert mi.invalidation_paths(["robots.txt"]) == ["/robots.txt/*", "/system/robots.txt/*"]
    keys = [f"{ATTACHMENT}/original/x.png", "media_attachments/files/110/original/y.png"]
    assert mi.invalidation_paths(keys) == ["/media_attachments/files/110/*",
                                           "/system/media_attachments/files/110/*"]


def test_only_s3_object_deleted_events_are_deletions():
    assert mi.deletion(json.dumps(deleted_event("a/b/c/d.png", "01"))) == mi.Deletion("a/b/c/d.png", "01")
    created = {**deleted_event("a/b/c/d.png"), "detail-type": "Object Created"}
    expired = deleted_event("a/b/c/d.png")
    expired["detail"]["reason"] = "Lifecycle Expiration"
    for body in (json.dumps(created), json.dumps(expired), "not json", json.dumps({"detail": {}}),
                 json.dumps([1])):
        assert mi.deletion(body) is None


def test_the_caller_reference_ignores_order_and_duplicate_deliveries():
    one, two = mi.Deletion("a/x/y/z.png", "01"), mi.Deletion("b/x/y/z.png", "02")
    assert mi.caller_reference([one, two]) == mi.caller_reference([two, one, one])
    # The same key deleted again later (a new sequencer) is a new deletion.
    assert mi.caller_reference([one]) != mi.caller_reference([mi.Deletion(one.key, "03")])
    assert len(mi.caller_reference([one, two])) <= 128


# ---------------------------------------------------------------- against moto
class Recorder:
    """Wraps the CloudFront client: records create_invalidation calls, can throttle them."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[dict[str, Any]] = []
        self.throttle = 0

    def create_invalidation(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if self.throttle:
            self.throttle -= 1
            raise ClientError({"Error": {"Code": "TooManyInvalidationsInProgress", "Message": "slow down"}},
                              "CreateInvalidation")
        return self.real.create_invalidation(**kwargs)

    def list_invalidations(self, **kwargs: Any) -> Any:
        return self.real.list_invalidations(**kwargs)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        # No visibility timeout here: a message not deleted is visible again at once,
        # as it is for the real queue's next run after its timeout.
        queue = sqs.create_queue(QueueName="deletions", Attributes={"VisibilityTimeout": "0"})["QueueUrl"]
        cloudfront = boto3.client("cloudfront", region_name="us-east-1")
        distribution = cloudfront.create_distribution(DistributionConfig={
            "CallerReference": "test", "Comment": "", "Enabled": True,
            "Origins": {"Quantity": 1, "Items": [{"Id": "media", "DomainName": "media.s3.amazonaws.com",
                                                  "S3OriginConfig": {"OriginAccessIdentity": ""}}]},
            "DefaultCacheBehavior": {"TargetOriginId": "media", "ViewerProtocolPolicy": "allow-all",
                                     "CachePolicyId": "658327ea-f89d-4fab-a63d-7e88639e58f6"},
        })["Distribution"]["Id"]
        recorder = Recorder(cloudfront)
        mi._clients.clear()
        mi._clients.update(sqs=sqs, cloudfront=recorder)
        monkeypatch.setenv("QUEUE_URL", queue)
        monkeypatch.setenv("DISTRIBUTION_ID", distribution)
        yield {"sqs": sqs, "queue": queue, "cloudfront": cloudfront, "distribution": distribution,
               "recorder": recorder}
        mi._clients.clear()


def put(aws: dict[str, Any], *events: dict[str, Any]) -> None:
    for event in events:
        aws["sqs"].send_message(QueueUrl=aws["queue"], MessageBody=json.dumps(event))


def queued(aws: dict[str, Any]) -> int:
    attributes = aws["sqs"].get_queue_attributes(QueueUrl=aws["queue"], AttributeNames=["All"])["Attributes"]
    return sum(int(attributes[name]) for name in (
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"))


def invalidations(aws: dict[str, Any]) -> list[dict[str, Any]]:
    listed = aws["cloudfront"].list_invalidations(DistributionId=aws["distribution"])["InvalidationList"]
    return [aws["cloudfront"].get_invalidation(DistributionId=aws["distribution"], Id=i["Id"])["Invalidation"]
            for i in listed.get("Items", [])]


def test_a_run_turns_the_queued_deletions_into_one_invalidation_and_empties_the_queue(aws, context):
    keys = [f"{ATTACHMENT}/{s}/f.png" for s in ("original", "small")] + [
        f"cache/accounts/avatars/109/000/000/000/000/00{n}/original/a.png" for n in range(3)]
    put(aws, *(deleted_event(k, f"{n:02d}") for n, k in enumerate(keys)))

    result = mi.lambda_handler({"source": "aws.events", "detail-type": "Scheduled Event"}, context)

    (made,) = invalidations(aws)
    paths = made["InvalidationBatch"]["Paths"]["Items"]
    assert sorted(paths) == result["paths"] and len(paths) == 4
    assert all(covered(k, paths) for k in keys)
    assert queued(aws) == 0


def test_an_idle_run_asks_cloudfront_nothing(aws, context):
    assert mi.lambda_handler({}, context) == {"messages": 0, "paths": []}
    assert aws["recorder"].calls == []


def test_the_same_event_delivered_twice_costs_one_path_and_one_reference(aws, context):
    event = deleted_event(f"{ATTACHMENT}/original/f.png", "0A")
    put(aws, event, event)
    mi.lambda_handler({}, context)
    (call,) = aws["recorder"].calls
    assert call["InvalidationBatch"]["Paths"]["Items"] == [f"/{ATTACHMENT}/*", f"/system/{ATTACHMENT}/*"]
    assert call["InvalidationBatch"]["CallerReference"] == mi.caller_reference(
        [mi.Deletion(f"{ATTACHMENT}/original/f.png", "0A")])


def test_throttling_keeps_the_deletions_queued_until_a_later_run_gets_them_through(aws, context):
    put(aws, deleted_event(f"{ATTACHMENT}/original/f.png"))
    aws["recorder"].throttle = 2

    first = mi.lambda_handler({}, context)
    second = mi.lambda_handler({}, context)
    assert first["retry"] == second["retry"] == "TooManyInvalidationsInProgress"
    assert queued(aws) == 1 and invalidations(aws) == []

    third = mi.lambda_handler({}, context)
    assert "retry" not in third and queued(aws) == 1 - 1
    assert len(invalidations(aws)) == 1
    # Every attempt asked for the same invalidation: CloudFront would answer a repeat
    # of an accepted one with the one it has.
    assert len({c["InvalidationBatch"]["CallerReference"] for c in aws["recorder"].calls}) == 1


def test_a_run_that_dies_after_cloudfront_accepted_repeats_the_same_request(aws, context, monkeypatch):
    put(aws, *(deleted_event(f"{ATTACHMENT}/{s}/f.png", s) for s in ("original", "small")))

    def lost(queue_url: str, messages: list[dict[str, Any]]) -> None:
        raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "try again"}},
                          "DeleteMessageBatch")

    with monkeypatch.context() as patch:
        patch.setattr(mi, "forget", lost)
        with pytest.raises(ClientError):
            mi.lambda_handler({}, context)
    mi.lambda_handler({}, context)

    first, again = aws["recorder"].calls
    assert first["InvalidationBatch"] == again["InvalidationBatch"]
    assert queued(aws) == 0


def test_an_already_accepted_batch_counts_as_done(aws, context):
    put(aws, deleted_event(f"{ATTACHMENT}/original/f.png"))

    def exists(**kwargs: Any) -> Any:
        raise ClientError({"Error": {"Code": "InvalidationBatchAlreadyExists", "Message": "same"}},
                          "CreateInvalidation")

    aws["recorder"].create_invalidation = exists
    result = mi.lambda_handler({}, context)
    assert "retry" not in result and queued(aws) == 0


def test_messages_that_are_not_deletions_are_dropped_without_an_invalidation(aws, context):
    put(aws, {**deleted_event("a/b/c/d.png"), "detail-type": "Object Created"})
    aws["sqs"].send_message(QueueUrl=aws["queue"], MessageBody="garbage")
    result = mi.lambda_handler({}, context)
    assert result["paths"] == [] and aws["recorder"].calls == [] and queued(aws) == 0


def test_a_run_stops_receiving_before_its_time_runs_out(aws, context):
    put(aws, *(deleted_event(f"{ATTACHMENT}/original/{n}.png", str(n)) for n in range(30)))
    context.remaining_ms = mi.RESERVE_MS - 1
    assert mi.lambda_handler({}, context) == {"messages": 0, "paths": []}
    assert queued(aws) == 30


# ---------------------------------------------------------------- the monthly bound (found by review)
def spend_the_full_rate(aws: dict[str, Any]) -> None:
    for n in range(mi.FULL_RATE_INVALIDATIONS):
        aws["cloudfront"].create_invalidation(DistributionId=aws["distribution"], InvalidationBatch={
            "Paths": {"Quantity": 1, "Items": ["/*"]}, "CallerReference": f"earlier-{n}"})


def test_past_the_months_full_rate_deletions_wait_for_the_next_hour(aws, context):
    spend_the_full_rate(aws)
    put(aws, deleted_event(f"{ATTACHMENT}/original/f.png", "0A"))
    result = mi.lambda_handler({}, context)
    assert result["deferred"] and aws["recorder"].calls == []
    assert queued(aws) == 1, "the deletion was dropped instead of kept for the next hour"


def test_at_the_economy_rate_one_invalidation_an_hour_covers_every_deletion(aws, context, monkeypatch):
    import datetime

    spend_the_full_rate(aws)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=mi.ECONOMY_INTERVAL + 60)
    monkeypatch.setattr(mi, "now", lambda: later)
    keys = [f"media_attachments/files/110/{n:03d}/000/000/000/001/original/f.png" for n in range(10)]
    put(aws, *(deleted_event(k, f"{n:02X}") for n, k in enumerate(keys)))
    mi.lambda_handler({}, context)
    (call,) = aws["recorder"].calls
    paths = call["InvalidationBatch"]["Paths"]["Items"]
    assert len(paths) <= mi.ECONOMY_PATHS
    assert all(covered(k, [p for p in paths if p.startswith("/system/")]) for k in keys)
    assert queued(aws) == 0


def test_the_monthly_ceiling_is_what_the_estimate_says():
    ceiling = mi.FULL_RATE_INVALIDATIONS * mi.MAX_PATHS + 24 * 31 * mi.ECONOMY_PATHS
    assert ceiling == 2088 and round((ceiling - 1000) * 0.005, 2) == 5.44
