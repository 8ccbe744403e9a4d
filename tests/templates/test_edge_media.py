"""Deleted media stop being served within minutes; browsers still cache them for long.

Moderation (a removed post, a purged account, a takedown) deletes files from the
bucket; CloudFront must not keep serving its copy. The /system behaviour's cache policy
bounds how long the edge keeps any object, whatever the Cache-Control Mastodon
uploaded it with, so a deleted file is gone from every edge location within that bound.
"""

from __future__ import annotations

from templates import edge
from tests.support import props


def _media_behaviour(template: dict) -> dict:
    config = props(template, edge.DISTRIBUTION)["DistributionConfig"]
    (behaviour,) = [b for b in config["CacheBehaviors"] if b["PathPattern"] == f"{edge.MEDIA_PATH}/*"]
    return behaviour


def test_the_edge_keeps_a_media_file_a_few_minutes_at_most(template):
    behaviour = _media_behaviour(template)
    # A policy of the stack's own: AWS's managed CachingOptimized keeps objects a year.
    assert behaviour["CachePolicyId"] == {"Ref": edge.MEDIA_CACHE_POLICY}
    config = props(template, edge.MEDIA_CACHE_POLICY)["CachePolicyConfig"]
    assert config["MaxTTL"] <= 600, "a deleted file would outlive 'within minutes' at the edge"
    assert config["MinTTL"] == 0 and config["DefaultTTL"] <= config["MaxTTL"]
    assert config["MaxTTL"] == edge.MEDIA_EDGE_TTL_SECONDS


def test_media_are_cached_by_path_alone(template):
    # Nothing of the viewer's reaches the cache key (or S3): one copy per file.
    config = props(template, edge.MEDIA_CACHE_POLICY)["CachePolicyConfig"]
    key = config["ParametersInCacheKeyAndForwardedToOrigin"]
    assert key["CookiesConfig"] == {"CookieBehavior": "none"}
    assert key["HeadersConfig"] == {"HeaderBehavior": "none"}
    assert key["QueryStringsConfig"] == {"QueryStringBehavior": "none"}
    assert "OriginRequestPolicyId" not in _media_behaviour(template)


def test_browsers_keep_the_long_cache_lifetime_mastodon_uploaded_with(template):
    # The edge bound must not become the browser's: the response headers policy leaves
    # the origin's Cache-Control alone.
    policy = props(template, edge.MEDIA_HEADERS_POLICY)["ResponseHeadersPolicyConfig"]
    custom = policy.get("CustomHeadersConfig", {}).get("Items", [])
    assert all(h["Header"].lower() != "cache-control" for h in custom)



def test_server_errors_are_never_kept_at_the_edge(template):
    # Now that pages may be cached, a 5xx kept for CloudFront's default 10 s would reach
    # every viewer of that key; the origin's own error page passes through unchanged.
    config = props(template, edge.DISTRIBUTION)["DistributionConfig"]
    responses = {r["ErrorCode"]: r for r in config["CustomErrorResponses"]}
    assert set(responses) == {500, 502, 503, 504}
    for response in responses.values():
        assert response["ErrorCachingMinTTL"] == 0
        assert "ResponsePagePath" not in response and "ResponseCode" not in response
