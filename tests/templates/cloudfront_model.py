"""A small model of what CloudFront does with a request, read off a built template.

It follows the CloudFront Developer Guide, not the template: which behaviour a path
picks (first matching path pattern, `*` any characters, `?` one), what the cache key
holds and what reaches the origin ("Controlling the cache key", "Controlling origin
requests"), how long a response stays ("Managing how long content stays in the cache":
with a minimum TTL of 0, `private`, `no-store` and `no-cache` are obeyed; otherwise the
minimum wins), and when it compresses ("Serving compressed files": the behaviour's
Compress, the cache policy's Accept-Encoding settings, a listed content type, 1,000 to
10,000,000 bytes, no Content-Encoding from the origin; where the guide once said that
Compress alone makes CloudFront gzip, the model assumes it does). CloudFront ignores
Vary except Accept-Encoding, which is why the key matters.

Managed policies are described here as AWS documents them; the stack's own policies
are read from the template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

CACHING_OPTIMIZED = "658327ea-f89d-4fab-a63d-7e88639e58f6"
CACHING_DISABLED = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"
ALL_VIEWER = "216adef6-5c7f-47e4-b989-5492eafa07d3"

_NOTHING = {
    "HeadersConfig": {"HeaderBehavior": "none"},
    "CookiesConfig": {"CookieBehavior": "none"},
    "QueryStringsConfig": {"QueryStringBehavior": "none"},
}


def _managed(low: int, default: int, high: int, encodings: bool) -> dict[str, Any]:
    return {
        "MinTTL": low,
        "DefaultTTL": default,
        "MaxTTL": high,
        "ParametersInCacheKeyAndForwardedToOrigin": {
            **_NOTHING,
            "EnableAcceptEncodingGzip": encodings,
            "EnableAcceptEncodingBrotli": encodings,
        },
    }


MANAGED_CACHE_POLICIES: dict[str, dict[str, Any]] = {
    CACHING_OPTIMIZED: _managed(1, 86400, 31536000, True),
    CACHING_DISABLED: _managed(0, 0, 0, False),
}
MANAGED_ORIGIN_REQUEST_POLICIES: dict[str, dict[str, Any]] = {
    ALL_VIEWER: {
        "HeadersConfig": {"HeaderBehavior": "allViewer"},
        "CookiesConfig": {"CookieBehavior": "all"},
        "QueryStringsConfig": {"QueryStringBehavior": "all"},
    },
}

# "File types that CloudFront compresses" (Content-Type values, parameters aside).
COMPRESSIBLE_TYPES = frozenset(
    {
        "application/dash+xml",
        "application/eot",
        "application/font",
        "application/font-sfnt",
        "application/javascript",
        "application/json",
        "application/opentype",
        "application/otf",
        "application/pdf",
        "application/pkcs7-mime",
        "application/protobuf",
        "application/rss+xml",
        "application/truetype",
        "application/ttf",
        "application/vnd.apple.mpegurl",
        "application/vnd.mapbox-vector-tile",
        "application/vnd.ms-fontobject",
        "application/wasm",
        "application/xhtml+xml",
        "application/xml",
        "application/x-font-opentype",
        "application/x-font-truetype",
        "application/x-font-ttf",
        "application/x-httpd-cgi",
        "application/x-javascript",
        "application/x-mpegurl",
        "application/x-opentype",
        "application/x-otf",
        "application/x-perl",
        "application/x-ttf",
        "font/eot",
        "font/opentype",
        "font/otf",
        "font/ttf",
        "image/svg+xml",
        "text/css",
        "text/csv",
        "text/html",
        "text/javascript",
        "text/js",
        "text/plain",
        "text/richtext",
        "text/tab-separated-values",
        "text/xml",
        "text/x-component",
        "text/x-java-source",
        "text/x-script",
        "vnd.apple.mpegurl",
    }
)


@dataclass(frozen=True)
class Request:
    path: str
    method: str = "GET"
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def cookies(self) -> dict[str, str]:
        pairs = (c.strip().split("=", 1) for c in (self.header("cookie") or "").split(";") if "=" in c)
        return dict(sorted((k, v) for k, v in pairs))


@dataclass(frozen=True)
class Origin:
    """The request as the origin receives it."""

    id: str
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        return dict(self.headers).get(name.lower())


def _keyed_headers(parameters: dict[str, Any]) -> set[str]:
    headers = parameters["HeadersConfig"]
    if headers["HeaderBehavior"] != "whitelist":
        return set()
    return {h.lower() for h in headers.get("Headers", [])}


def _pattern(path_pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in path_pattern))


class CloudFront:
    def __init__(self, template: dict[str, Any], distribution: str = "Distribution") -> None:
        self.template = template
        self.config = template["Resources"][distribution]["Properties"]["DistributionConfig"]

    def behavior(self, path: str) -> dict[str, Any]:
        for candidate in self.config.get("CacheBehaviors", []):
            if _pattern(candidate["PathPattern"]).fullmatch(path):
                return candidate
        return self.config["DefaultCacheBehavior"]

    def _resolve(self, reference: Any, managed: dict[str, dict[str, Any]], key: str) -> dict[str, Any]:
        if isinstance(reference, str):
            return managed[reference]
        return self.template["Resources"][reference["Ref"]]["Properties"][key]

    def cache_policy(self, behavior: dict[str, Any]) -> dict[str, Any]:
        return self._resolve(behavior["CachePolicyId"], MANAGED_CACHE_POLICIES, "CachePolicyConfig")

    def origin_request_policy(self, behavior: dict[str, Any]) -> dict[str, Any] | None:
        if "OriginRequestPolicyId" not in behavior:
            return None
        return self._resolve(
            behavior["OriginRequestPolicyId"], MANAGED_ORIGIN_REQUEST_POLICIES, "OriginRequestPolicyConfig"
        )

    # --- the cache key -------------------------------------------------------------
    def _encodings(self, policy: dict[str, Any]) -> list[str]:
        parameters = policy["ParametersInCacheKeyAndForwardedToOrigin"]
        settings = (("br", "EnableAcceptEncodingBrotli"), ("gzip", "EnableAcceptEncodingGzip"))
        return [name for name, setting in settings if parameters.get(setting)]

    def normalized_encoding(self, behavior: dict[str, Any], request: Request) -> str | None:
        """The Accept-Encoding CloudFront keys on and sends (None: the viewer's own, unkeyed)."""
        enabled = self._encodings(self.cache_policy(behavior))
        if not enabled:
            return None
        offered = {v.split(";")[0].strip() for v in (request.header("accept-encoding") or "").split(",")}
        accepted = [e for e in enabled if e in offered]
        return ",".join(accepted) if accepted else "identity"

    def key(self, request: Request) -> tuple[Any, ...]:
        behavior = self.behavior(request.path)
        parameters = self.cache_policy(behavior)["ParametersInCacheKeyAndForwardedToOrigin"]
        named = sorted(_keyed_headers(parameters))
        cookies = parameters["CookiesConfig"]["CookieBehavior"]
        query = parameters["QueryStringsConfig"]["QueryStringBehavior"]
        encoding = self.normalized_encoding(behavior, request)
        return (
            behavior.get("PathPattern", "default"),
            request.path,
            request.query if query == "all" else "",
            tuple((h, request.header(h)) for h in named),
            tuple(request.cookies.items()) if cookies == "all" else (),
            encoding if encoding != "identity" else None,
        )

    # --- the origin request -----------------------------------------------------------
    def origin_request(self, request: Request) -> Origin:
        behavior = self.behavior(request.path)
        parameters = self.cache_policy(behavior)["ParametersInCacheKeyAndForwardedToOrigin"]
        forwarding = self.origin_request_policy(behavior) or {
            "HeadersConfig": {"HeaderBehavior": "none"},
            "CookiesConfig": {"CookieBehavior": "none"},
            "QueryStringsConfig": {"QueryStringBehavior": "none"},
        }
        keyed = _keyed_headers(parameters)
        sent_behavior = forwarding["HeadersConfig"]["HeaderBehavior"]
        named = {h.lower() for h in forwarding["HeadersConfig"].get("Headers", [])}
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            if name in ("cookie", "accept-encoding"):
                continue
            if name == "authorization" and request.method in ("GET", "HEAD") and name not in keyed:
                continue  # only the cache key forwards Authorization on GET and HEAD
            if (
                name in keyed
                or sent_behavior.startswith("allViewer")
                or (sent_behavior == "whitelist" and name in named)
            ):
                headers[name] = value
        if "host" not in headers:
            headers["host"] = "<origin domain>"
        cookie_rule = {settings["CookiesConfig"]["CookieBehavior"] for settings in (parameters, forwarding)}
        if "all" in cookie_rule and request.header("cookie"):
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in request.cookies.items())
        encoding = self.normalized_encoding(behavior, request)
        if encoding is not None:
            headers["accept-encoding"] = encoding
        elif request.header("accept-encoding") and sent_behavior.startswith("allViewer"):
            headers["accept-encoding"] = request.headers["accept-encoding"]
        query_rule = {
            parameters["QueryStringsConfig"]["QueryStringBehavior"],
            forwarding["QueryStringsConfig"]["QueryStringBehavior"],
        }
        return Origin(
            id=behavior["TargetOriginId"],
            method=request.method,
            path=request.path,
            query=request.query if "all" in query_rule else "",
            headers=tuple(sorted(headers.items())),
            body=request.body,
        )

    def allows(self, request: Request) -> bool:
        return request.method in self.behavior(request.path)["AllowedMethods"]

    # --- what is kept, and for how long ------------------------------------------------
    def ttl(self, request: Request, cache_control: str | None) -> int:
        """Seconds CloudFront keeps the origin's answer (0: every request goes to the origin)."""
        behavior = self.behavior(request.path)
        if request.method not in behavior["CachedMethods"]:
            return 0
        policy = self.cache_policy(behavior)
        low, default, high = policy["MinTTL"], policy["DefaultTTL"], policy["MaxTTL"]
        if high == 0:
            return 0
        parts = [d.strip() for d in (cache_control or "").split(",") if d.strip()]
        directives = {d.split("=")[0]: d for d in parts}
        if directives.keys() & {"private", "no-store", "no-cache"}:
            return low
        for name in ("s-maxage", "max-age"):
            if name in directives:
                return max(low, min(int(directives[name].split("=")[1]), high))
        return max(low, default)

    def compressed(self, request: Request, content_type: str, size: int = 50_000) -> str | None:
        """The encoding CloudFront applies to an uncompressed origin answer, if any."""
        behavior = self.behavior(request.path)
        if not behavior.get("Compress") or not 1_000 <= size <= 10_000_000:
            return None
        if content_type.split(";")[0].strip().lower() not in COMPRESSIBLE_TYPES:
            return None
        encoding = self.normalized_encoding(behavior, request)
        if encoding is None:
            # The guide's older text: Compress alone makes CloudFront gzip. Assume it.
            offered = (request.header("accept-encoding") or "").replace(" ", "").split(",")
            return "gzip" if "gzip" in offered else None
        if encoding == "identity":
            return None
        return encoding.split(",")[0]
