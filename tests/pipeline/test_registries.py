"""Does the image exist? The rollout asks the registry that holds it (issue 15, item 1).

Public registries (ghcr.io, Docker Hub, Quay) answer the OCI distribution API: a HEAD of
the tag's manifest gets 401 and a challenge naming a token service, which hands out an
anonymous pull token, and the HEAD is made once more with it. Here fakes on loopback
play the registry and its token service (on another port: another host), with the
answers the real ones give and the faults they may have. Amazon ECR is asked through its
API (DescribeImages), in moto.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

import tests.lambdas.conftest  # noqa: F401  (the Lambda environment first)
from lambdas.rollout import aws
from lambdas.rollout.aws import RegistryUnavailable, image_missing

ACCOUNT, REGION = "123456789012", "us-east-1"
ECR_HOST = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"


@dataclass
class Behaviour:
    """How a fake server answers; tests change it."""

    tags: dict[str, set[str]] = field(default_factory=dict)  # repository -> tags (registry)
    private: set[str] = field(default_factory=set)  # repositories a token does not open (registry)
    status: int | None = None  # answer every request with this status instead
    challenge: str | None = None  # the registry's WWW-Authenticate (None: a Bearer challenge to realm)
    body: bytes | None = None  # the token service's body instead of a token
    hang: bool = False  # never answer
    anonymous: bool = False  # the registry answers without a token (as Quay may for a public repository)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # method, path, headers


class Fake:
    """One HTTP server on 127.0.0.1 with a Behaviour: a registry or a token service."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.behaviour = Behaviour()
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                fake.answer(self)

            def do_GET(self) -> None:
                fake.answer(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.realm = ""  # the registry's token service (set by the fixture)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        b = self.behaviour
        b.requests.append((handler.command, handler.path, dict(handler.headers.items())))
        if b.hang:
            self.release.wait(10)
            return
        if b.status is not None:
            return self.send(handler, b.status)
        if self.kind == "token":
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query)
            body = b.body if b.body is not None else json.dumps({"token": f"t:{query['scope'][0]}"}).encode()
            return self.send(handler, 200, body=body)
        repository, _, tag = handler.path.removeprefix("/v2/").rpartition("/manifests/")
        expected = f"Bearer t:repository:{repository}:pull"
        if (handler.headers.get("Authorization") != expected and not b.anonymous) or repository in b.private:
            challenge = b.challenge or f'Bearer realm="{self.realm}",service="fake.example",scope="x"'
            return self.send(handler, 401, {"WWW-Authenticate": challenge})
        self.send(handler, 200 if tag in b.tags.get(repository, set()) else 404)

    @staticmethod
    def send(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str] | None = None,
             body: bytes = b"") -> None:
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)


@pytest.fixture
def fakes(monkeypatch) -> Iterator[tuple[Fake, Fake]]:
    """(registry, token service): every public registry's API is the fake registry."""
    registry, token = Fake("registry"), Fake("token")
    registry.realm = f"{token.url}/token"
    hosts: list[str] = []

    def registry_url(host: str) -> str:
        hosts.append(host)
        return registry.url

    monkeypatch.setattr(aws, "registry_url", registry_url)
    monkeypatch.setattr(aws, "OPENER", urllib.request.build_opener(urllib.request.ProxyHandler({})))
    registry.hosts = hosts  # type: ignore[attr-defined]
    yield registry, token
    registry.stop()
    token.stop()


# ---------------------------------------------------------------- public registries
@pytest.mark.parametrize("host", ["ghcr.io", "quay.io", "docker.io"])
def test_a_tag_the_registry_holds_is_found_with_an_anonymous_token_from_the_challenge_s_realm(fakes, host):
    registry, token = fakes
    registry.behaviour.tags["glitch-soc/mastodon"] = {"v4.7.6-glitch"}
    assert image_missing(f"{host}/glitch-soc/mastodon", "v4.7.6-glitch") is None
    first, second = registry.behaviour.requests
    assert first[0] == second[0] == "HEAD" and first[1] == "/v2/glitch-soc/mastodon/manifests/v4.7.6-glitch"
    assert "Authorization" not in first[2] and second[2]["Authorization"].startswith("Bearer t:")
    # Both an index (multi-platform) and a single image's manifest are asked for.
    assert "application/vnd.oci.image.index.v1+json" in second[2]["Accept"]
    assert "application/vnd.docker.distribution.manifest.v2+json" in second[2]["Accept"]
    ((method, path, _),) = token.behaviour.requests
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    assert method == "GET" and path.startswith("/token?")
    assert query == {"scope": ["repository:glitch-soc/mastodon:pull"], "service": ["fake.example"]}
    assert registry.hosts == [host]


@pytest.mark.parametrize("tag, missing", [("v1", False), ("v2", True)])
def test_a_registry_that_answers_without_a_token_is_asked_once(fakes, tag, missing):
    registry, token = fakes
    registry.behaviour.anonymous = True
    registry.behaviour.tags["acme/mastodon"] = {"v1"}
    assert bool(image_missing("quay.io/acme/mastodon", tag)) is missing
    assert len(registry.behaviour.requests) == 1 and token.behaviour.requests == []


def test_docker_hub_s_official_images_are_library_s(fakes):
    registry, _ = fakes
    registry.behaviour.tags["library/mastodon"] = {"v4.7.6"}
    assert image_missing("docker.io/mastodon", "v4.7.6") is None
    assert registry.behaviour.requests[-1][1] == "/v2/library/mastodon/manifests/v4.7.6"


def test_docker_hub_s_api_is_not_at_docker_io_and_the_others_are_at_their_names():
    assert aws.registry_url("docker.io") == "https://registry-1.docker.io"
    assert aws.registry_url("ghcr.io") == "https://ghcr.io"
    assert aws.registry_url("quay.io") == "https://quay.io"


def test_a_tag_the_registry_does_not_hold_is_missing_with_the_image_named(fakes):
    registry, _ = fakes
    registry.behaviour.tags["forks/mastodon-streaming"] = {"v4.7.5-fork"}
    reason = image_missing("ghcr.io/forks/mastodon-streaming", "v4.7.6-fork")
    assert reason and "ghcr.io/forks/mastodon-streaming:v4.7.6-fork does not exist" in reason


@pytest.mark.parametrize(
    "how",
    ["token-refused", "token-no-help", "forbidden", "basic-challenge"],
)
def test_a_repository_closed_to_anonymous_pulls_is_refused_as_private_or_missing(fakes, how):
    registry, token = fakes
    registry.behaviour.tags["acme/mastodon"] = {"v1"}
    if how == "token-refused":  # the token service will not hand out a token for it
        token.behaviour.status = 401
    elif how == "token-no-help":  # a token, yet 401 again (Docker Hub on a missing repository)
        registry.behaviour.private.add("acme/mastodon")
    elif how == "forbidden":
        registry.behaviour.status = 403
    else:  # only credentials would do
        registry.behaviour.challenge = 'Basic realm="Registry"'
    reason = image_missing("quay.io/acme/mastodon", "v1")
    assert reason and "quay.io/acme/mastodon:v1 is private or does not exist" in reason
    assert "acme/mastodon" in reason and "ECR" in reason
    assert len(registry.behaviour.requests) <= 2, "one HEAD again with the token, no more"


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_a_registry_that_throttles_or_fails_did_not_answer_and_the_step_is_retried(fakes, status):
    registry, _ = fakes
    registry.behaviour.status = status
    with pytest.raises(RegistryUnavailable, match=rf"ghcr.io did not answer for ghcr.io/a/b:v1 \({status}"):
        image_missing("ghcr.io/a/b", "v1")


@pytest.mark.parametrize("status", [429, 500])
def test_a_token_service_that_fails_did_not_answer(fakes, status):
    _, token = fakes
    token.behaviour.status = status
    with pytest.raises(RegistryUnavailable, match=rf"token service of ghcr.io did not answer .*\({status}"):
        image_missing("ghcr.io/a/b", "v1")


@pytest.mark.parametrize("body", [b"<html>proxy error</html>", b'{"token": ""}', b"[]"])
def test_a_token_service_that_gives_no_token_did_not_answer(fakes, body):
    _, token = fakes
    token.behaviour.body = body
    with pytest.raises(RegistryUnavailable, match="gave no token"):
        image_missing("ghcr.io/a/b", "v1")


@pytest.mark.parametrize("who", ["registry", "token"])
def test_a_registry_or_token_service_that_hangs_did_not_answer(fakes, monkeypatch, who):
    registry, token = fakes
    monkeypatch.setattr(aws, "REGISTRY_TIMEOUT", 0.5)
    (registry if who == "registry" else token).behaviour.hang = True
    with pytest.raises(RegistryUnavailable, match="did not answer"):
        image_missing("ghcr.io/a/b", "v1")


def test_a_registry_nobody_listens_on_did_not_answer(fakes, monkeypatch):
    registry, _ = fakes
    registry.stop()
    with pytest.raises(RegistryUnavailable, match=r"ghcr\.io did not answer"):
        image_missing("ghcr.io/a/b", "v1")


def test_a_token_realm_of_another_scheme_is_not_followed(fakes):
    registry, token = fakes
    registry.behaviour.challenge = 'Bearer realm="file:///etc/passwd",service="x"'
    with pytest.raises(RuntimeError, match="another scheme"):
        image_missing("ghcr.io/a/b", "v1")
    assert token.behaviour.requests == []


def test_an_answer_the_rollout_does_not_know_is_reported_not_retried(fakes):
    registry, _ = fakes
    registry.behaviour.status = 400
    with pytest.raises(RuntimeError, match=r"ghcr\.io answered 400") as raised:
        image_missing("ghcr.io/a/b", "v1")
    assert not isinstance(raised.value, RegistryUnavailable)


# ---------------------------------------------------------------- Amazon ECR
@pytest.fixture
def ecr(monkeypatch) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("ecr", region_name=REGION)
        monkeypatch.setitem(aws._clients, "ecr", client)
        client.create_repository(repositoryName="forks/mastodon")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
                               "digest": "sha256:" + "0" * 64}, "layers": []}
        client.put_image(repositoryName="forks/mastodon", imageManifest=json.dumps(manifest),
                         imageTag="2026-12-01")
        yield client


def test_an_ecr_tag_present_is_found_through_ecr_s_api_not_the_registry(ecr, monkeypatch):
    monkeypatch.setattr(aws, "OPENER", None)  # any HTTP request would fail
    assert image_missing(f"{ECR_HOST}/forks/mastodon", "2026-12-01") is None


def test_an_ecr_tag_absent_is_missing_with_the_image_named(ecr):
    reason = image_missing(f"{ECR_HOST}/forks/mastodon", "2026-12-02")
    assert reason and f"{ECR_HOST}/forks/mastodon:2026-12-02 does not exist" in reason
    assert "has no tag 2026-12-02" in reason


def test_an_ecr_repository_absent_is_missing_with_the_repository_named(ecr):
    reason = image_missing(f"{ECR_HOST}/forks/mastodon-streaming", "2026-12-01")
    assert reason and "does not exist" in reason and "no ECR repository forks/mastodon-streaming" in reason


def test_ecr_is_asked_in_the_account_the_host_names(ecr):
    with Stubber(ecr) as stub:
        expected = {"registryId": "210987654321", "repositoryName": "forks/mastodon",
                    "imageIds": [{"imageTag": "v1"}]}
        stub.add_response("describe_images", {"imageDetails": []}, expected)
        assert image_missing(f"210987654321.dkr.ecr.{REGION}.amazonaws.com/forks/mastodon", "v1") is None


@pytest.mark.parametrize(
    "code, raised, words",
    [
        ("AccessDeniedException", None, "the stack's grant does not cover the ECR repository forks/mastodon"),
        ("ThrottlingException", RegistryUnavailable, "Amazon ECR did not answer"),
        ("ServerException", RegistryUnavailable, "Amazon ECR did not answer"),
    ],
)
def test_ecr_refusals_and_failures(ecr, code, raised, words):
    with Stubber(ecr) as stub:
        stub.add_client_error("describe_images", service_error_code=code, http_status_code=400)
        if raised is None:
            reason = image_missing(f"{ECR_HOST}/forks/mastodon", "v1")
            assert reason and words in reason and f"{ECR_HOST}/forks/mastodon:v1" in reason
        else:
            with pytest.raises(raised, match=words):
                image_missing(f"{ECR_HOST}/forks/mastodon", "v1")


def test_ecr_throttling_is_first_retried_by_boto3_itself(monkeypatch):
    monkeypatch.setattr(aws, "_clients", {})
    retries = aws.client("ecr").meta.config.retries
    assert retries["mode"] == "standard" and retries["total_max_attempts"] >= 5
