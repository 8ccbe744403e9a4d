"""What CloudFront caches, under which key, and what it compresses, for Mastodon's requests.

Requests go through a model of CloudFront's documented behaviour
(tests/templates/cloudfront_model.py) over the built template's behaviours and policies.
The origin's answers follow Mastodon (pinned release): ApplicationController sends
`private, no-store` unless an action says otherwise; CacheConcern#enforce_cache_control!
turns a response private when its Vary names Cookie, Authorization or Signature and the
request carries it; public pages and ActivityPub objects say `public` with
`Vary: Accept, Accept-Language, Cookie`; WebFinger says `public, max-age=259200`;
PublicFileServerMiddleware gives static files the lifetimes of dist/nginx.conf.
"""

from __future__ import annotations

import copy
import itertools
import re

import pytest

from tests.templates.cloudfront_model import CloudFront, Origin, Request

# dist/nginx.conf: the static locations and the Cache-Control nginx adds to them.
NGINX_STATIC = [
    (re.compile(r"^/(assets|avatars|emoji|headers|packs|shortcuts|sounds)/"), 2419200),
    (re.compile(r"^/sw\.js$"), 604800),
]
STATIC_SAMPLES = [
    "/assets/logo-abc.svg",
    "/avatars/original/missing.png",
    "/emoji/1f600.svg",
    "/headers/original/missing.png",
    "/packs/assets/application-3f2a.js",
    "/shortcuts/home.png",
    "/sounds/boop.ogg",
    "/sw.js",
]

HTML = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"
ACTIVITY = 'application/ld+json; profile="https://www.w3.org/ns/activitystreams"'
CREDENTIALS = {
    "anonymous": {},
    "session A": {"cookie": "_mastodon_session=aaaa"},
    "session B": {"cookie": "_mastodon_session=bbbb"},
    "token A": {"authorization": "Bearer aaaa"},
    "token B": {"authorization": "Bearer bbbb"},
    "signed fetch": {
        "signature": 'keyId="https://remote.example/actor#main-key",signature="x"',
        "date": "Fri, 04 Dec 2026 14:00:00 GMT",
    },
}
ACCEPTS = {"HTML": HTML, "ActivityPub": ACTIVITY}
SAMPLE_PATHS = [
    "/@alice/109",
    "/users/alice",
    "/api/v1/timelines/home",
    "/api/v1/instance",
    "/.well-known/webfinger",
    *STATIC_SAMPLES,
    "/api/v1/streaming",
    "/system/media/1/x.png",
]


def nginx_lifetime(path: str) -> int | None:
    return next((lifetime for rule, lifetime in NGINX_STATIC if rule.search(path)), None)


def mastodon(origin: Origin) -> tuple[str, str | None]:
    """(Content-Type, Cache-Control) of Mastodon's answer to a GET as it reaches Puma."""
    lifetime = nginx_lifetime(origin.path)
    if lifetime is not None:
        return "image/svg+xml", f"public, max-age={lifetime}, must-revalidate"
    if origin.path == "/.well-known/webfinger":
        return "application/jrd+json", "public, max-age=259200"
    if origin.path == "/api/v1/instance":
        return "application/json", "public, max-age=180"  # the same for everyone
    if origin.path.startswith("/api/"):
        return "application/json", "private, no-store"
    activity = "activity" in (origin.header("accept") or "")
    vary = {"accept", "accept-language", "cookie"}
    if vary & {"cookie", "authorization", "signature"} & {name for name, _ in origin.headers}:
        cache_control = "private, no-store"  # CacheConcern#enforce_cache_control!
    else:
        cache_control = "public, max-age=180" if activity else "public, max-age=15"
    return ("application/activity+json" if activity else "text/html"), cache_control


def matrix(path: str) -> dict[str, Request]:
    query = "resource=acct:alice@example.org" if "webfinger" in path else ""
    return {
        f"{who}, {kind}": Request(
            path=path,
            query=query,
            headers={
                "host": "example.org",
                "accept": accept,
                "accept-encoding": "gzip, deflate, br",
                **extra,
            },
        )
        for (who, extra), (kind, accept) in itertools.product(CREDENTIALS.items(), ACCEPTS.items())
    }


def cross_talk(edge: CloudFront, requests: dict[str, Request]) -> list[str]:
    """Pairs that share a cache entry although the origin would see different requests."""
    found = []
    for (a, left), (b, right) in itertools.combinations(requests.items(), 2):
        stored = any(edge.ttl(r, mastodon(edge.origin_request(r))[1]) > 0 for r in (left, right))
        if (
            stored
            and edge.key(left) == edge.key(right)
            and edge.origin_request(left) != edge.origin_request(right)
        ):
            found.append(f"{left.path}: {a!r} and {b!r}")
    return found


def private_kept(edge: CloudFront, requests: dict[str, Request]) -> list[str]:
    return [
        f"{request.path}: {name}"
        for name, request in requests.items()
        if edge.behavior(request.path)["TargetOriginId"] == "load-balancer"
        and edge.ttl(request, "private, no-store") > 0
    ]


@pytest.fixture(scope="module")
def edge(template):
    return CloudFront(template)


@pytest.mark.parametrize("path", SAMPLE_PATHS)
def test_no_two_requests_the_origin_tells_apart_share_a_cache_entry(edge, path):
    assert cross_talk(edge, matrix(path)) == []


@pytest.mark.parametrize("path", SAMPLE_PATHS)
def test_what_mastodon_marks_private_is_never_kept(edge, path):
    assert private_kept(edge, matrix(path)) == []


def test_a_public_page_is_cached_per_format_and_never_across_credentials(edge):
    requests = matrix("/@alice/109")
    stored = {name: edge.ttl(r, mastodon(edge.origin_request(r))[1]) for name, r in requests.items()}
    # Anonymous HTML and ActivityPub at one URL are both kept, as Mastodon asks...
    assert stored["anonymous, HTML"] == 15 and stored["anonymous, ActivityPub"] == 180
    # ...under two keys: CloudFront ignores Vary: Accept, so Accept is in the key.
    assert edge.key(requests["anonymous, HTML"]) != edge.key(requests["anonymous, ActivityPub"])
    # A signed-in browser gets `private, no-store`: never kept.
    for name in ("session A", "session B"):
        assert stored[f"{name}, HTML"] == stored[f"{name}, ActivityPub"] == 0, name
    # A token or a signature Mastodon's Vary does not name (outside authorized-fetch
    # mode) may be answered publicly; it is kept only under that request's own key,
    # and no request with other credentials, or none, ever reads it.
    keys = {name: edge.key(r) for name, r in requests.items()}
    for (a, key_a), (b, key_b) in itertools.combinations(keys.items(), 2):
        if a.split(",")[0] != b.split(",")[0]:
            assert key_a != key_b, (a, b)
    # The key holds the credential itself, so it is forwarded (CloudFront sends
    # Authorization on GET only from the key) and Mastodon sees who asks.
    assert edge.origin_request(requests["token A, HTML"]).header("authorization") == "Bearer aaaa"


def test_the_key_of_a_shared_page_holds_only_what_the_viewers_share(edge):
    one = Request(
        "/@alice/109",
        headers={
            "accept": HTML,
            "accept-encoding": "gzip, br",
            "user-agent": "Firefox",
            "accept-language": "en",
        },
    )
    other = Request(
        "/@alice/109",
        headers={
            "accept": HTML,
            "accept-encoding": "br, gzip",
            "user-agent": "Safari",
            "accept-language": "en",
        },
    )
    assert edge.key(one) == edge.key(other)


def test_webfinger_is_kept_per_resource_as_long_as_mastodon_says_within_a_day(edge):
    alice = Request("/.well-known/webfinger", query="resource=acct:alice@example.org")
    bob = Request("/.well-known/webfinger", query="resource=acct:bob@example.org")
    assert edge.key(alice) != edge.key(bob)
    assert edge.ttl(alice, mastodon(edge.origin_request(alice))[1]) == 86400


def test_static_files_are_kept_as_long_as_mastodon_nginx_says(edge, template):
    for path in STATIC_SAMPLES:
        request = Request(path, headers={"accept-encoding": "gzip, br"})
        lifetime = nginx_lifetime(path)
        # As long as nginx lets caches keep them, whether Puma says so or not...
        assert edge.ttl(request, f"public, max-age={lifetime}, must-revalidate") == lifetime, path
        assert edge.ttl(request, None) == lifetime, path
        # ...but a missing file's error page that says no-store is not kept.
        assert edge.ttl(request, "private, no-store") == 0, path
    # Every static behaviour answers to a rule of nginx's, and each rule has one.
    static = {
        b["PathPattern"]
        for b in edge.config["CacheBehaviors"]
        if b["TargetOriginId"] == "load-balancer" and "streaming" not in b["PathPattern"]
    }
    assert all(nginx_lifetime(p.replace("*", "x")) for p in static)
    assert all(any(edge.behavior(path)["PathPattern"] == p for path in STATIC_SAMPLES) for p in static)


def test_static_files_are_one_entry_for_everyone_and_carry_no_credential(edge):
    for path in STATIC_SAMPLES:
        requests = matrix(path)
        assert len({edge.key(r) for r in requests.values()}) == 1, path
        for request in requests.values():
            origin = edge.origin_request(request)
            assert origin.header("cookie") is None and origin.header("authorization") is None, path
            assert origin.header("host") == "example.org", path  # the load balancer's certificate


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/@alice/109", "text/html; charset=utf-8"),
        ("/api/v1/timelines/home", "application/json; charset=utf-8"),
        ("/api/v1/instance", "application/json"),
        ("/packs/assets/application-3f2a.js", "application/javascript"),
        ("/packs/assets/application-3f2a.css", "text/css"),
        ("/emoji/1f600.svg", "image/svg+xml"),
    ],
)
def test_text_leaves_compressed_brotli_first(edge, path, content_type):
    request = Request(path, headers={"accept-encoding": "gzip, deflate, br"})
    assert edge.compressed(request, content_type) == "br"
    assert edge.compressed(Request(path, headers={"accept-encoding": "gzip"}), content_type) == "gzip"
    assert edge.compressed(Request(path), content_type) is None


@pytest.mark.parametrize("content_type", ["application/activity+json", "application/jrd+json"])
def test_activitypub_and_webfinger_types_are_not_on_cloudfronts_list(edge, content_type):
    # The documented gap (README): CloudFront compresses only listed types, and neither
    # Mastodon (no Rack::Deflater) nor its own nginx (gzip_types) compresses these.
    request = Request("/users/alice", headers={"accept-encoding": "gzip, br"})
    assert edge.compressed(request, content_type) is None


def test_streaming_is_never_kept_nor_compressed_and_websocket_headers_pass(edge):
    upgrade = {
        "host": "example.org",
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        "sec-websocket-version": "13",
        "sec-websocket-protocol": "token-aaaa",
        "accept-encoding": "gzip, br",
        "cookie": "_mastodon_session=aaaa",
    }
    for path in ("/api/v1/streaming", "/api/v1/streaming/user", "/api/v1/streaming/public/local"):
        request = Request(path, query="stream=user&access_token=aaaa", headers=upgrade)
        assert edge.ttl(request, "public, max-age=600") == 0
        for content_type in ("text/plain", "application/json", "text/event-stream"):
            assert edge.compressed(request, content_type) is None, content_type
        origin = edge.origin_request(request)
        assert origin.query == request.query
        for name, value in upgrade.items():
            if name != "accept-encoding":
                assert origin.header(name) == value, name


@pytest.mark.parametrize("path", ["/inbox", "/users/alice/inbox"])
def test_signed_inbox_posts_reach_puma_byte_for_byte(edge, path):
    body = b'{"@context":"https://www.w3.org/ns/activitystreams","type":"Follow"}'
    signed = {
        "host": "example.org",
        "date": "Fri, 04 Dec 2026 14:00:00 GMT",
        "digest": "SHA-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=",
        "content-type": "application/activity+json",
        "signature": 'keyId="https://remote.example/actor#main-key",algorithm="rsa-sha256",'
        'headers="(request-target) host date digest content-type",signature="x"',
    }
    request = Request(path, method="POST", headers={**signed, "accept-encoding": "gzip"}, body=body)
    assert edge.allows(request)
    origin = edge.origin_request(request)
    assert (origin.id, origin.method, origin.path, origin.body) == ("load-balancer", "POST", path, body)
    for name, value in signed.items():
        assert origin.header(name) == value, name
    assert edge.ttl(request, "public, max-age=600") == 0


def test_the_checks_catch_the_classic_pitfalls(template):
    """Each check fails on a distribution that makes the mistake it guards against."""

    def variant(change):
        broken = copy.deepcopy(template)
        change(broken["Resources"]["PageCachePolicy"]["Properties"]["CachePolicyConfig"])
        return CloudFront(broken)

    def parameters(config):
        return config["ParametersInCacheKeyAndForwardedToOrigin"]

    def drop_accept(config):
        parameters(config)["HeadersConfig"]["Headers"].remove("Accept")

    def no_cookies(config):
        parameters(config)["CookiesConfig"]["CookieBehavior"] = "none"

    def minimum_one(config):
        config["MinTTL"] = 1

    assert cross_talk(variant(drop_accept), matrix("/@alice/109"))
    assert cross_talk(variant(no_cookies), matrix("/@alice/109"))
    assert private_kept(variant(minimum_one), matrix("/api/v1/timelines/home"))
