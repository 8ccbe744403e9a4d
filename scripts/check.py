#!/usr/bin/env python3
"""Check a deployed Mastodon stack end to end, the way a careful admin would.

    python scripts/check.py --stack-name mastodon [--region eu-central-1] [--json]
        [--mail-to you@example.com] [--access-token TOKEN]

Read-only, but for one probe object it puts into the media bucket and removes again
(and, with --mail-to, one test mail). It asks the worker through Run Command (read-only:
a `bin/rails runner` in its Sidekiq container) what Mastodon mails with and which Sidekiq
processes are alive. Prints one line per check, grouped:

  stack     status, parameters, the two version parameters agree, no rollout running or
            failed, every alarm's state
  edge      HTTPS with a valid certificate for the domain, HTTP redirected to HTTPS,
            the health check through CloudFront, security headers, HTTP/2 (and HTTP/3 where the
            distribution enables it), the load balancer not reachable from here, and its
            listener refusing a request without the stack's secret header
  mastodon  WebFinger, NodeInfo, host-meta, the instance API (domain, version), the
            streaming server's health and a WebSocket through CloudFront that receives a
            heartbeat
  media     a probe object served at https://DOMAIN/system/KEY with its cache and CORS
            headers, not readable at the bucket's own address, gone from the edge after
            deletion within the time the stack promises
  mail      the SES identity verified with DKIM, the account's sending status, the SMTP
            settings Mastodon uses on the worker; with --mail-to, a real mail sent through
            them, judged by the SMTP server's reply
  servers   each server on the deployed version, registered with SSM, healthy in the
            target groups; the worker group at one server; the Sidekiq scheduler in exactly
            one live process (Sidekiq's own process set); queue latency under its alarm's
            threshold where the stack has queue workers (whose metrics it reads)

✓ passed, ✗ failed (with the likely cause and the next step), – skipped (and why). The
exit status is 0 only when every required check passes; 1 otherwise; 2 bad arguments.
--json prints the same as one JSON document.

Mastodon's streaming server may refuse a WebSocket without an access token; the
heartbeat check then needs --access-token (or MASTODON_ACCESS_TOKEN, which keeps it
out of the shell's history): a token of any account, with the read scope.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import secrets
import shlex
import socket
import ssl
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from troposphere import Template

from lambdas.rollout.names import DOWNGRADE_FLAG, VERSION_TAG
from lambdas.rollout.plan import read_handled
from scripts.deploy import FIRST_OUTPUT
from scripts.version import version_action
from templates import (
    compute,
    data,
    edge,
    load_balancing,
    mail,
    maintenance,
    operations,
    parameters,
    pipeline,
    sidekiq,
    versions,
)
from templates.options import RELEASE_TAG

PASS, FAIL, SKIP = "pass", "fail", "skip"

MARKS = {PASS: "✓", FAIL: "✗", SKIP: "–"}
GROUPS = ("stack", "edge", "mastodon", "media", "mail", "servers")
SETTLED = ("CREATE_COMPLETE", "UPDATE_COMPLETE")
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
# Mastodon's streaming server pings every WebSocket every 30 seconds (streaming/index.js).
HEARTBEAT_SECONDS = 30
# A stream given by query, as Mastodon's web client opens it: the WebSocket layer takes it;
# the plain-HTTP handler knows streams only by path and refuses this one (400).
WEBSOCKET_PATH = "/api/v1/streaming?stream=public:local"
# What CloudFront must forward for a WebSocket handshake (besides Upgrade and Connection).
WEBSOCKET_HEADERS = ("Sec-WebSocket-Key", "Sec-WebSocket-Version")
WEBSOCKET_HEADERS_CHECK = "streaming behaviour forwards the WebSocket headers"
PROBE_PREFIX = "mastodon-check"
# What Mastodon uploads every media file with (config/initializers/paperclip.rb, its S3
# headers): the probe carries it too, so that the edge keeps it exactly as long as it
# keeps real media (the cache policy's maximum TTL, not its default).
MEDIA_CACHE_CONTROL = "public, max-age=315576000, immutable"
# A deleted object leaves the edge once the media behaviour's cache bound has passed at
# the edge location and at the regional cache in front of it (edge.MEDIA_EDGE_TTL_SECONDS).
MEDIA_PROMISE_SECONDS = 2 * edge.MEDIA_EDGE_TTL_SECONDS + 60
CERTIFICATE_WARNING_DAYS = 14
# Every IAM action the check uses (the README lists them; a test holds the code to this list).
PERMISSIONS = (
    "cloudformation:DescribeStacks",
    "cloudformation:ListStackResources",
    "ssm:GetParameter",
    "states:ListExecutions",
    "cloudwatch:DescribeAlarms",
    "cloudwatch:GetMetricStatistics",
    "cloudfront:GetDistributionConfig",
    "cloudfront:GetOriginRequestPolicy",
    "elasticloadbalancing:DescribeLoadBalancers",
    "elasticloadbalancing:DescribeListeners",
    "elasticloadbalancing:DescribeRules",
    "elasticloadbalancing:DescribeTargetHealth",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "ses:GetEmailIdentity",
    "ses:GetAccount",
    "autoscaling:DescribeAutoScalingGroups",
    "ec2:DescribeInstances",
    "ssm:DescribeInstanceInformation",
    "ssm:SendCommand",
    "ssm:GetCommandInvocation",
    "ssm:CancelCommand",
)
# The worker's Sidekiq container (bootstrap.sh names its unit and container so). The check
# asks Mastodon itself, in that container, what it mails with and which Sidekiq processes
# are alive: `bin/rails runner` with the Ruby below, which prints one line after RESULT_MARK.
SIDEKIQ_CONTAINER = "mastodon-sidekiq"
RESULT_MARK = "MASTODON_CHECK_RESULT "
MAIL_TO_ENV = "MASTODON_CHECK_MAIL_TO"
# When the Ruby raises (Redis down; an SMTP server that refuses: Net::SMTP raises on any
# reply that is not 2xx/3xx), it prints {"error": class, "message": ...} after RESULT_MARK
# instead: Ruby would print the message once and then a long backtrace, of which Run Command
# keeps only the first 8,000 characters. The message never carries the SMTP login or
# password, nor a URL's credentials.
RESCUE_RUBY = f"""
require "json"
def check_failure(error, extra = {{}})
  message = error.message.to_s
  settings = (ActionMailer::Base.smtp_settings rescue {{}})
  [settings[:user_name], settings[:password]].each do |secret|
    message = message.gsub(secret.to_s, "[hidden]") unless secret.to_s.empty?
  end
  message = message.gsub(%r{{//[^/@\\s]*@}}, "//[hidden]@")
  puts "{RESULT_MARK}" + JSON.generate(
    {{ "error" => error.class.name, "message" => message.strip[0, 300] }}.merge(extra)
  )
end
"""
# What ActionMailer (Mastodon's mail) uses, without a secret: the login and password only
# as present or not; and every live Sidekiq process (its heartbeat in Redis) with its queues.
# ProcessSet.new(false): no cleanup, which would write to Redis (sidekiq lib/sidekiq/api.rb);
# its `each` skips a process whose heartbeat has expired all the same.
SERVER_FACTS_RUBY = RESCUE_RUBY + f"""
begin
  require "sidekiq/api"
  smtp = ActionMailer::Base.smtp_settings
  processes = Sidekiq::ProcessSet.new(false).map do |process|
    {{
      "hostname" => process["hostname"].to_s,
      "queues" => Array(process["queues"]),
      "quiet" => process.stopping?
    }}
  end
  puts "{RESULT_MARK}" + JSON.generate(
    "delivery_method" => ActionMailer::Base.delivery_method.to_s,
    "address" => smtp[:address].to_s,
    "port" => smtp[:port].to_s,
    "user_name" => smtp[:user_name].present?,
    "password" => smtp[:password].present?,
    "tls" => smtp[:tls].present? || smtp[:ssl].present?,
    "starttls" => (smtp[:enable_starttls] || smtp[:enable_starttls_auto]) ? true : false,
    "processes" => processes
  )
rescue StandardError => error
  check_failure(error)
end
"""
# One mail through Mastodon's own SMTP settings, sent at once (not queued): the SMTP
# server's reply is the result (SES answers 250 with its message ID when it takes the mail;
# a refusal is a Net::SMTP error whose response carries the reply code).
TEST_MAIL_RUBY = RESCUE_RUBY + f"""
begin
  settings = ActionMailer::Base.smtp_settings.merge(return_response: true)
  message = Mail.new
  message.from = ENV["SMTP_FROM_ADDRESS"].presence || ActionMailer::Base.default_params[:from]
  message.to = ENV.fetch("{MAIL_TO_ENV}")
  message.subject = "Mastodon on AWS: test mail from " + ENV.fetch("LOCAL_DOMAIN", "")
  message.body = "scripts/check.py sent this through the servers' SMTP settings. Nothing to do."
  message.delivery_method(:smtp, settings)
  response = message.delivery_method.deliver!(message)
  puts "{RESULT_MARK}" + JSON.generate(
    "status" => response.status.to_s, "reply" => response.string.to_s.strip[0, 200]
  )
rescue StandardError => error
  reply = error.respond_to?(:response) && error.response.respond_to?(:status) ? error.response : nil
  check_failure(error, "status" => reply ? reply.status.to_s : error.message.to_s[/\\A[2-5]\\d\\d/].to_s)
end
"""
RUNNER_TIMEOUT_SECONDS = 300
RUN_COMMAND_MIN_DELIVERY_SECONDS = 30  # SendCommand's TimeoutSeconds may not be shorter
# What an SMTP server's refusal of the test mail most likely means (RFC 5321 codes, SES's use).
MAIL_REFUSALS = {
    "535": "the SMTP server refused the login: the servers' SMTP credentials are wrong (for SES, "
    "derived from another key or region)",
    "554": "the SMTP server refused the mail: in the SES sandbox, the recipient (or the sender) is "
    "not a verified identity",
    "421": "the SMTP server is not taking mail now (throttled or closing): try again later",
    "454": "the SMTP server could not take the mail now (throttled, or a temporary auth failure)",
}


def queue_latency_metric(stack: str) -> tuple[str, str]:
    """The namespace and name of the oldest Sidekiq job's wait, as the main worker publishes it
    when the stack has queue workers (QueueWorkerMaxSize > 0, templates/sidekiq.py) for stack
    `stack`; its alarm is what the check reads."""
    namespace = sidekiq.METRICS_NAMESPACE.data["Fn::Sub"].replace("${AWS::StackName}", stack)
    return namespace, sidekiq.OLDEST_JOB_METRIC


COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "GreaterThanThreshold": lambda value, threshold: value > threshold,
    "GreaterThanOrEqualToThreshold": lambda value, threshold: value >= threshold,
    "LessThanThreshold": lambda value, threshold: value < threshold,
    "LessThanOrEqualToThreshold": lambda value, threshold: value <= threshold,
}
BODY_LIMIT = 1 << 20


def parameter_names() -> parameters.Parameters:
    """The stack's parameters, whose titles are the names the stack reports them by."""
    return parameters.create_parameters(Template())


@dataclass
class Result:
    group: str
    name: str
    status: str
    detail: str = ""
    cause: str = ""
    step: str = ""
    required: bool = True


# ---------------------------------------------------------------- the network


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    protocol: str = ""

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    @property
    def via_cloudfront(self) -> bool:
        return bool(self.header("x-amz-cf-id")) or "cloudfront" in self.header("via").lower()


class Network:
    """How the check reaches hosts: DNS or, in tests, fixed loopback routes; bounded waits.

    `cafile` replaces the system's trust store (tests trust their own authority only).
    """

    def __init__(
        self,
        timeout: float = 10.0,
        cafile: str | None = None,
        routes: dict[tuple[str, int], tuple[str, int]] | None = None,
    ) -> None:
        self.timeout = timeout
        self.cafile = cafile
        self.routes = routes or {}

    def context(self, alpn: list[str] | None = None, verify: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.cafile)
        if not verify:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        if alpn:
            context.set_alpn_protocols(alpn)
        return context

    def endpoints(self, host: str, port: int) -> list[tuple[str, int]]:
        if (host, port) in self.routes:
            return [self.routes[(host, port)]]
        found: list[tuple[str, int]] = []
        for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            address = (str(info[4][0]), port)
            if address not in found:
                found.append(address)
        return found

    def connect(self, host: str, port: int) -> socket.socket:
        error: OSError = OSError(f"{host} has no address")
        for address in self.endpoints(host, port):
            try:
                return socket.create_connection(address, timeout=self.timeout)
            except OSError as failed:
                error = failed
        raise error

    def tls(
        self, host: str, port: int = 443, alpn: list[str] | None = None, verify: bool = True
    ) -> ssl.SSLSocket:
        raw = self.connect(host, port)
        try:
            return self.context(alpn, verify).wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise

    def request(
        self,
        host: str,
        path: str,
        *,
        port: int = 443,
        tls: bool = True,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        verify: bool = True,
    ) -> Response:
        sock: socket.socket = self.tls(host, port, verify=verify) if tls else self.connect(host, port)
        connection = http.client.HTTPConnection(host, port, timeout=self.timeout)
        connection.sock = sock
        try:
            connection.request(method, path, headers={"User-Agent": "mastodon-aws-check", **(headers or {})})
            answer = connection.getresponse()
            body = answer.read(BODY_LIMIT) if method != "HEAD" else b""
            found: dict[str, str] = {}
            for name, value in answer.getheaders():
                key = name.lower()
                found[key] = f"{found[key]}, {value}" if key in found else value
            return Response(answer.status, found, body)
        finally:
            connection.close()


@dataclass
class Handshake:
    """What a WebSocket upgrade got: the HTTP status, what happened, and a refusal's headers and body."""

    status: int
    what: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def websocket_heartbeat(
    net: Network, host: str, path: str, wait: float, token: str | None = None
) -> Handshake:
    """Open a WebSocket and wait for the server's ping."""
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Origin: https://{host}",
        "User-Agent: mastodon-aws-check",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    sock = net.tls(host)
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(4096)
            if not chunk:
                return Handshake(0, "the connection closed before an answer")
            buffer += chunk
            if len(buffer) > 65536:
                return Handshake(0, "no end to the answer's headers")
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers: dict[str, str] = {}
        for name, _, value in (h.partition(":") for h in header_lines):
            key_name = name.strip().lower()
            value = value.strip()
            headers[key_name] = f"{headers[key_name]}, {value}" if key_name in headers else value
        if status != 101:
            return Handshake(status, status_line, headers, _refusal_body(sock, buffer, headers, net.timeout))
        expected = base64.b64encode(
            hashlib.sha1((key + WEBSOCKET_GUID).encode(), usedforsecurity=False).digest()
        ).decode()
        if headers.get("sec-websocket-accept") != expected:
            return Handshake(status, "the upgrade answer has a wrong Sec-WebSocket-Accept", headers)
        deadline = time.monotonic() + wait
        while True:
            frame = _read_frame(sock, buffer, deadline)
            if frame is None:
                return Handshake(status, f"no heartbeat within {wait:g} s", headers)
            opcode, payload, buffer = frame
            if opcode == 0x9:
                sock.sendall(_client_frame(0xA, payload))
                sock.sendall(_client_frame(0x8, b"\x03\xe8"))
                return Handshake(status, "heartbeat received", headers)
            if opcode == 0x8:
                return Handshake(status, "the server closed the WebSocket before a heartbeat", headers)
    finally:
        sock.close()


def _refusal_body(sock: socket.socket, buffer: bytes, headers: dict[str, str], timeout: float) -> bytes:
    """The body of a refused upgrade: by its Content-Length, else until the server closes (bounded)."""
    length = headers.get("content-length", "")
    wanted = min(int(length), 4096) if length.isdigit() else 4096
    deadline = time.monotonic() + timeout
    while len(buffer) < wanted and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        buffer += chunk
    return buffer[:wanted]


def _read_frame(sock: socket.socket, buffer: bytes, deadline: float) -> tuple[int, bytes, bytes] | None:
    def need(count: int) -> bool:
        nonlocal buffer
        while len(buffer) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return False
            if not chunk:
                return False
            buffer += chunk
        return True

    if not need(2):
        return None
    opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
    if length == 126:
        if not need(4):
            return None
        length, offset = int.from_bytes(buffer[2:4], "big"), 4
    elif length == 127:
        if not need(10):
            return None
        length, offset = int.from_bytes(buffer[2:10], "big"), 10
    if buffer[1] & 0x80:
        offset += 4  # servers do not mask; skip a mask should one come
    if not need(offset + length):
        return None
    return opcode, buffer[offset : offset + length], buffer[offset + length :]


def _client_frame(opcode: int, payload: bytes) -> bytes:
    mask = secrets.token_bytes(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def refusal_layer(shake: Handshake) -> str:
    """Which part of Mastodon's streaming server refused an upgrade: "websocket", "http" or "".

    Its upgrade handler writes the refusal itself: no body, the reason in an X-Error-Message
    header. A request whose Upgrade headers were lost on the way reaches its HTTP (EventSource)
    handler instead, which answers with a JSON body {"error": ...} and no such header
    (streaming/index.js: handleUpgrade vs errorMiddleware).
    """
    if shake.status == 101:
        return "websocket"
    try:
        document = json.loads(shake.body.decode("utf-8"))
    except ValueError:
        document = None
    if isinstance(document, dict) and "error" in document:
        return "http"
    if shake.headers.get("x-error-message") and not shake.body.strip():
        return "websocket"
    return ""


def refusal_message(shake: Handshake) -> str:
    """The streaming server's own words for a refusal, if it gave any."""
    if shake.headers.get("x-error-message"):
        return f"X-Error-Message: {shake.headers['x-error-message'][:100]}"
    try:
        document = json.loads(shake.body.decode("utf-8"))
    except ValueError:
        return ""
    return f"error: {str(document.get('error'))[:100]}" if isinstance(document, dict) else ""


# ---------------------------------------------------------------- the stack in AWS


@dataclass
class Stack:
    name: str
    region: str
    status: str
    reason: str
    parameters: dict[str, str]
    outputs: dict[str, str]
    resources: dict[str, str] = field(default_factory=dict)  # logical ID -> physical ID

    def resource(self, logical_id: str) -> str | None:
        return self.resources.get(logical_id)


def load_stack(session: Any, name: str) -> Stack:
    cloudformation = session.client("cloudformation")
    (described,) = cloudformation.describe_stacks(StackName=name)["Stacks"]
    stack = Stack(
        name=name,
        region=session.region_name,
        status=described["StackStatus"],
        reason=described.get("StackStatusReason", ""),
        parameters={
            p["ParameterKey"]: p.get("ResolvedValue", p.get("ParameterValue", ""))
            for p in described.get("Parameters", [])
        },
        outputs={o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])},
    )
    stack.resources = stack_resources(session, name)
    return stack


def stack_resources(session: Any, name: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for page in (
        session.client("cloudformation").get_paginator("list_stack_resources").paginate(StackName=name)
    ):
        for summary in page["StackResourceSummaries"]:
            if summary.get("PhysicalResourceId"):
                found[summary["LogicalResourceId"]] = summary["PhysicalResourceId"]
    return found


# ---------------------------------------------------------------- the checks


@dataclass
class Options:
    media_wait: float = MEDIA_PROMISE_SECONDS
    poll: float = 10.0
    heartbeat_wait: float = HEARTBEAT_SECONDS + 10
    access_token: str | None = None
    mail_to: str | None = None
    runner_timeout: float = RUNNER_TIMEOUT_SECONDS
    s3_host: Callable[[str, str], str] = lambda bucket, region: f"{bucket}.s3.{region}.amazonaws.com"


class Checker:
    """Runs the groups in order; each check appends one Result."""

    def __init__(self, session: Any, stack: Stack, net: Network, options: Options) -> None:
        self.session, self.stack, self.net, self.options = session, stack, net, options
        self.results: list[Result] = []
        self.clients: dict[str, Any] = {}
        names = parameter_names()
        self.domain = stack.parameters.get(names.domain.title, "")
        self.smtp_server_key = names.smtp_server.title
        self.deployed_version: str | None = None
        self.instance: dict[str, Any] | None = None
        self.facts: tuple[dict[str, Any] | None, str] | None = None
        self.alarms: list[dict[str, Any]] | None = None

    def client(self, service: str) -> Any:
        if service not in self.clients:
            self.clients[service] = self.session.client(service)
        return self.clients[service]

    def add(
        self,
        group: str,
        name: str,
        ok: bool | None,
        detail: str = "",
        cause: str = "",
        step: str = "",
        required: bool = True,
    ) -> bool:
        status = SKIP if ok is None else PASS if ok else FAIL
        self.results.append(
            Result(group, name, status, detail, "" if ok else cause, "" if ok else step, required)
        )
        return bool(ok)

    def guard(self, group: str, name: str, cause: str, step: str) -> Callable[[Callable[[], None]], None]:
        """Run a check; an exception (a refused call, a timeout) is its failure, with the error."""

        def run(check: Callable[[], None]) -> None:
            try:
                check()
            except Exception as error:  # every failure is reported, none stops the others
                self.add(group, name, False, f"{type(error).__name__}: {error}", cause, step)

        return run

    def run(self, groups: tuple[str, ...] = GROUPS) -> list[Result]:
        for group in groups:
            getattr(self, f"check_{group}")()
        return self.results

    # ---- 1. the stack

    def check_stack(self) -> None:
        s, g = self.stack, "stack"
        where = f" --region {s.region}"
        self.add(
            g,
            "status",
            s.status in SETTLED,
            f"{s.name}: {s.status} {s.reason}".strip(),
            "the last create or update did not complete"
            if "ROLLBACK" in s.status or "FAILED" in s.status
            else "CloudFormation is still working on the stack",
            f"read the first *_FAILED event: aws cloudformation describe-stack-events --stack-name "
            f"{s.name}{where}; or wait until it settles",
        )
        self.add(
            g,
            "parameters",
            bool(self.domain),
            f"domain {self.domain}; "
            + ", ".join(f"{k}={v}" for k, v in sorted(s.parameters.items()) if v and "Arn" not in k)[:300],
            "the stack has no domain parameter",
            "is this a Mastodon stack of this project?",
        )
        url = s.outputs.get(FIRST_OUTPUT, "")
        self.add(
            g,
            "outputs",
            url == f"https://{self.domain}/",
            f"{len(s.outputs)} outputs; {FIRST_OUTPUT} {url or 'missing'}",
            "the stack's outputs are missing or name another domain (a create that did not finish?)",
            f"aws cloudformation describe-stacks --stack-name {s.name}{where}",
        )
        self.guard(
            g, "versions agree", "an upgrade is pending, running or failed", "see the rollout lines below"
        )(self._versions)
        self.guard(
            g,
            "no rollout running or failed",
            "the rollout state machine cannot be read",
            "check your permissions (states:ListExecutions, ssm:GetParameter)",
        )(self._rollout)
        self.guard(
            g, "alarms", "the alarms cannot be read", "check your permissions (cloudwatch:DescribeAlarms)"
        )(self._alarms)

    def _versions(self) -> None:
        ssm = self.client("ssm")
        desired_name = self.stack.resource(versions.DESIRED_VERSION)
        deployed_name = self.stack.resource(versions.DEPLOYED_VERSION)
        if not desired_name or not deployed_name:
            self.add(
                "stack",
                "versions agree",
                False,
                "the version parameters are not in the stack",
                "the stack is incomplete",
                "redeploy with scripts/deploy.py",
            )
            return
        desired = ssm.get_parameter(Name=desired_name)["Parameter"]["Value"]
        deployed = ssm.get_parameter(Name=deployed_name)["Parameter"]["Value"]
        self.deployed_version = deployed
        wanted = desired.removesuffix(f" {DOWNGRADE_FLAG}")
        self.add(
            "stack",
            "versions agree",
            wanted == deployed,
            f"desired {desired}, deployed {deployed}",
            "the rollout to the desired version is pending, running or failed (a failed rollout keeps "
            "the last good version)",
            f"watch the rollout (output {pipeline.STATE_MACHINE}Arn), or set {desired_name} back to "
            f"{deployed}: aws ssm put-parameter --overwrite --name {desired_name} --value {deployed}",
        )

    def _rollout(self) -> None:
        machine = self.stack.resource(pipeline.STATE_MACHINE)
        record_name = self.stack.resource(pipeline.ROLLOUT_STATE)
        if not machine:
            self.add("stack", "no rollout running or failed", None, "the stack has no rollout state machine")
            return
        running = self.client("stepfunctions").list_executions(
            stateMachineArn=machine, statusFilter="RUNNING", maxResults=10
        )["executions"]
        if running:
            self.add(
                "stack",
                "no rollout running or failed",
                False,
                f"{len(running)} running: {running[0]['name']} since {running[0]['startDate']}",
                "an upgrade is rolling: servers are being replaced and checks may fail meanwhile",
                "wait for its notice (alert e-mail), then run the check again",
            )
            return
        record = (
            read_handled(self.client("ssm").get_parameter(Name=record_name)["Parameter"]["Value"])
            if record_name
            else {}
        )
        failed = record.get("result") == "failed"
        self.add(
            "stack",
            "no rollout running or failed",
            not failed,
            f"last rollout: {record.get('version', 'none')} {record.get('result', '')}".strip(),
            f"the last rollout failed: {record.get('reason', 'no reason recorded')}",
            "read the failure notice (alert e-mail) and the execution "
            f"{record.get('execution', '')} in the Step Functions console; fix, then set the desired "
            "version again",
        )

    def stack_alarms(self) -> list[dict[str, Any]]:
        """Every alarm that notifies the stack's alert topic (read once)."""
        if self.alarms is None:
            topic = self.stack.resource(operations.ALERT_TOPIC)
            found: list[dict[str, Any]] = []
            for page in self.client("cloudwatch").get_paginator("describe_alarms").paginate():
                found += [a for a in page["MetricAlarms"] if topic and topic in a.get("AlarmActions", [])]
            self.alarms = found
        return self.alarms

    def _alarms(self) -> None:
        found = self.stack_alarms()
        if not found:
            self.add(
                "stack",
                "alarms",
                False,
                "no alarm notifies the stack's alert topic",
                "the alarms were not created",
                "redeploy with scripts/deploy.py",
            )
            return
        firing = [a for a in found if a["StateValue"] == "ALARM"]
        for alarm in firing:
            self.add(
                "stack",
                f"alarm {alarm['AlarmName']}",
                False,
                alarm.get("StateReason", "")[:200],
                alarm.get("AlarmDescription", "")[:300] or "the alarm's metric crossed its threshold",
                "see the alarm in the CloudWatch console and the stack's dashboard",
            )
        waiting = [a["AlarmName"] for a in found if a["StateValue"] == "INSUFFICIENT_DATA"]
        self.add(
            "stack",
            "alarms",
            not firing,
            f"{len(found)} alarms, {len(firing)} in ALARM"
            + (f", {len(waiting)} without data yet" if waiting else ""),
            "see the lines above",
            "see the lines above",
        )

    # ---- 2. the edge

    def check_edge(self) -> None:
        g, d = "edge", self.domain
        if not d:
            self.add(g, "edge", None, "no domain to check")
            return
        self.guard(g, "certificate", "the domain does not reach CloudFront", f"check DNS: dig {d}")(
            self._certificate
        )
        self.guard(
            g,
            "HTTP redirects to HTTPS",
            "plain HTTP is not answered by CloudFront",
            f"check DNS for {d} and the distribution's viewer protocol policy",
        )(self._redirect)
        self.guard(
            g,
            f"{load_balancing.WEB_HEALTH_PATH} through CloudFront",
            "CloudFront cannot reach the web servers",
            "see the servers group below and the load balancer's target health",
        )(self._health)
        self.guard(g, "security headers", "Mastodon's pages do not come through", "see the lines above")(
            self._security_headers
        )
        self.guard(g, "HTTP/2", "the TLS handshake failed", "see the certificate line")(self._http2)
        self.guard(
            g,
            "load balancer not reachable directly",
            "the load balancer cannot be described",
            "check your permissions (elasticloadbalancing:Describe*)",
        )(self._origin_closed)
        self.guard(
            g,
            "listener requires the secret header",
            "the listener cannot be described",
            "check your permissions (elasticloadbalancing:Describe*)",
        )(self._secret_header)

    def _certificate(self) -> None:
        try:
            sock = self.net.tls(self.domain)
        except ssl.SSLCertVerificationError as error:
            self.add(
                "edge",
                "certificate",
                False,
                error.verify_message or str(error),
                f"the certificate CloudFront presents is not valid for {self.domain} (another name, "
                "expired, or not yet attached: the distribution's alias or certificate is wrong)",
                "check the distribution's alternate domain name and its ACM certificate in us-east-1",
            )
            return
        with sock:
            certificate = sock.getpeercert() or {}
        expires = datetime.datetime.strptime(str(certificate.get("notAfter")), "%b %d %H:%M:%S %Y %Z")
        days = (expires - datetime.datetime.utcnow()).days
        self.add(
            "edge",
            "certificate",
            days >= CERTIFICATE_WARNING_DAYS,
            f"valid for {self.domain}, expires in {days} days",
            "ACM has not renewed the certificate (its DNS validation record is missing?)",
            "check the certificate's renewal status in ACM (us-east-1)",
        )

    def _redirect(self) -> None:
        answer = self.net.request(self.domain, load_balancing.WEB_HEALTH_PATH, port=80, tls=False)
        location = answer.header("location")
        self.add(
            "edge",
            "HTTP redirects to HTTPS",
            answer.status in (301, 302, 307, 308) and location.startswith(f"https://{self.domain}/"),
            f"{answer.status} → {location or 'no Location'}",
            "plain HTTP is served instead of redirected",
            "set ViewerProtocolPolicy redirect-to-https on every behaviour (redeploy)",
        )

    def _health(self) -> None:
        answer = self.net.request(self.domain, load_balancing.WEB_HEALTH_PATH)
        self.add(
            "edge",
            f"{load_balancing.WEB_HEALTH_PATH} through CloudFront",
            answer.status == 200 and answer.via_cloudfront,
            f"{answer.status} {answer.body[:40]!r}, "
            f"{'via CloudFront' if answer.via_cloudfront else 'no CloudFront headers'}",
            {
                403: "the load balancer refused the request: CloudFront does not send the secret header, "
                "or the origin-facing prefix list does not admit it",
                502: "CloudFront cannot connect to the load balancer (TLS name or security group)",
                503: "no healthy web server",
                504: "the load balancer or the web servers do not answer",
            }.get(answer.status, "the answer does not come from Mastodon through CloudFront"),
            "see the servers group, then the load balancer's target health in the EC2 console",
        )

    def _security_headers(self) -> None:
        about = self.net.request(self.domain, "/about")
        hsts = about.header("strict-transport-security")
        missing = [
            h
            for h in ("strict-transport-security", "x-content-type-options", "content-security-policy")
            if not about.header(h)
        ]
        self.add(
            "edge",
            "security headers",
            about.status == 200 and not missing,
            f"/about {about.status}; "
            + ("all present" if not missing else f"missing {', '.join(missing)}")
            + (f"; HSTS {hsts}" if hsts else ""),
            "Mastodon's headers are stripped on the way, or Mastodon does not see HTTPS",
            "check the origin request policy (all viewer headers) and LOCAL_HTTPS on the servers",
        )
        if self._http3_enabled():
            alt = about.header("alt-svc")
            self.add(
                "edge",
                "HTTP/3 advertised",
                "h3" in alt,
                f"Alt-Svc: {alt or 'none'}",
                "CloudFront does not offer HTTP/3 although the distribution enables it",
                "check the distribution's HttpVersion (http2and3)",
                required=False,
            )
        else:
            self.add("edge", "HTTP/3 advertised", None, "the distribution does not enable HTTP/3")

    def _http3_enabled(self) -> bool:
        distribution = self.stack.resource(edge.DISTRIBUTION)
        if not distribution:
            return False
        config = self.client("cloudfront").get_distribution_config(Id=distribution)["DistributionConfig"]
        return "3" in str(config.get("HttpVersion", ""))

    def _http2(self) -> None:
        with self.net.tls(self.domain, alpn=["h2", "http/1.1"]) as sock:
            chosen = sock.selected_alpn_protocol()
        self.add(
            "edge",
            "HTTP/2",
            chosen == "h2",
            f"ALPN: {chosen or 'none'}",
            "CloudFront does not negotiate HTTP/2",
            "check the distribution's HttpVersion",
        )

    def _load_balancer(self) -> dict[str, Any] | None:
        arn = self.stack.resource(load_balancing.LOAD_BALANCER)
        if not arn:
            return None
        (balancer,) = self.client("elbv2").describe_load_balancers(LoadBalancerArns=[arn])["LoadBalancers"]
        return dict(balancer)

    def _origin_closed(self) -> None:
        balancer = self._load_balancer()
        name = "load balancer not reachable directly"
        if balancer is None:
            self.add(
                "edge",
                name,
                False,
                "no load balancer in the stack",
                "the stack is incomplete",
                "redeploy with scripts/deploy.py",
            )
            return
        host = balancer["DNSName"]
        try:
            endpoints = self.net.endpoints(host, 443)
        except OSError:
            endpoints = []
        public = [a for a, _ in endpoints if ipaddress.ip_address(a).is_global]
        if balancer.get("Scheme") == "internal" and public:
            self.add(
                "edge",
                name,
                False,
                f"{host} is internal but resolves to {', '.join(public)}",
                "the load balancer is not behind the VPC origin it should be",
                "check the LoadBalancerScheme parameter and the region's VPC origin support",
            )
            return
        if balancer.get("Scheme") == "internal":
            # Behind a VPC origin: no public address, nothing to try from here.
            self.add("edge", name, True, f"internal {host}: private addresses only")
            return
        answered = []
        for address in endpoints:
            try:
                with socket.create_connection(address, timeout=self.net.timeout):
                    answered.append(address[0])
            except OSError:
                continue
        self.add(
            "edge",
            name,
            not answered,
            f"{balancer.get('Scheme')} {host}: "
            + (
                f"answers at {', '.join(answered)}"
                if answered
                else f"no answer from {len(endpoints)} address(es)"
                if endpoints
                else "no address from here"
            ),
            "the load balancer's security group admits more than CloudFront's origin-facing prefix list",
            f"check the inbound rules of the load balancer's security group (only the "
            f"{load_balancing.CLOUDFRONT_PREFIX_LIST} on 443)",
        )
        if answered:
            self._refuses_without_header(host)

    def _refuses_without_header(self, host: str) -> None:
        # Its certificate is for the domain, not its own name: only the answer matters here.
        answer = self.net.request(
            host, load_balancing.WEB_HEALTH_PATH, headers={"Host": self.domain}, verify=False
        )
        self.add(
            "edge",
            "direct request refused",
            answer.status == 403,
            f"{answer.status} without the header",
            f"the load balancer serves requests without the {load_balancing.ORIGIN_VERIFY_HEADER} header",
            "check the HTTPS listener's rules: each forward needs the header condition",
        )

    def _secret_header(self) -> None:
        arn = self.stack.resource(load_balancing.HTTPS_LISTENER)
        name = "listener requires the secret header"
        if not arn:
            self.add(
                "edge",
                name,
                False,
                "no HTTPS listener in the stack",
                "the stack is incomplete",
                "redeploy with scripts/deploy.py",
            )
            return
        elb = self.client("elbv2")
        (listener,) = elb.describe_listeners(ListenerArns=[arn])["Listeners"]
        default = listener.get("DefaultActions", [])
        refuses = [
            a
            for a in default
            if a.get("Type") == "fixed-response"
            and a.get("FixedResponseConfig", {}).get("StatusCode") == "403"
        ]
        header = load_balancing.ORIGIN_VERIFY_HEADER.lower()
        loose = []
        for rule in elb.describe_rules(ListenerArn=arn)["Rules"]:
            if rule.get("IsDefault"):
                continue
            guarded = any(
                c.get("Field") == "http-header"
                and str(c.get("HttpHeaderConfig", {}).get("HttpHeaderName", "")).lower() == header
                for c in rule.get("Conditions", [])
            )
            if not guarded and any(a.get("Type") == "forward" for a in rule.get("Actions", [])):
                loose.append(rule.get("Priority", "?"))
        self.add(
            "edge",
            name,
            bool(refuses) and not loose,
            ("default action 403" if refuses else f"default action {[a.get('Type') for a in default]}")
            + (f"; rules forwarding without the header: {', '.join(map(str, loose))}" if loose else ""),
            f"a request without {load_balancing.ORIGIN_VERIFY_HEADER} would reach the servers",
            "redeploy: the template's listener answers 403 unless the header matches",
        )

    # ---- 3. Mastodon

    def check_mastodon(self) -> None:
        g = "mastodon"
        if not self.domain:
            self.add(g, "mastodon", None, "no domain to check")
            return
        step = "see the edge group; then the web servers' logs (CloudWatch Logs, the web log group)"
        self.guard(g, "instance API", "Mastodon does not answer its API", step)(self._instance)
        self.guard(g, "WebFinger", "Mastodon does not answer WebFinger", step)(self._webfinger)
        self.guard(g, "NodeInfo", "Mastodon does not answer NodeInfo", step)(self._nodeinfo)
        self.guard(g, "host-meta", "Mastodon does not answer host-meta", step)(self._host_meta)
        self.guard(g, "streaming health", "the streaming server does not answer", step)(
            self._streaming_health
        )
        self.guard(
            g,
            "WebSocket heartbeat",
            "the WebSocket cannot be opened through CloudFront",
            "see the streaming health line and the streaming log group",
        )(self._websocket)
        self.guard(
            g,
            WEBSOCKET_HEADERS_CHECK,
            "the distribution or its origin request policy cannot be read",
            "check your permissions (cloudfront:GetDistributionConfig, cloudfront:GetOriginRequestPolicy)",
        )(self._websocket_headers)

    def _expected_version(self) -> str | None:
        """The version Mastodon reports on the deployed tag, or None when it cannot be told: a tag of
        your own images (v4.7.6-glitch, a date, a commit) says nothing of what Mastodon reports."""
        if not self.deployed_version or not RELEASE_TAG.fullmatch(self.deployed_version):
            return None
        return self.deployed_version.removeprefix("v")

    def _version_matches(self, reported: str) -> bool:
        expected = self._expected_version()
        return expected is None or reported == expected or reported.startswith(f"{expected}+")

    def _version_detail(self, reported: str) -> str:
        deployed = self.deployed_version or "unknown"
        uncompared = self.deployed_version and self._expected_version() is None
        return f"Mastodon {reported}, deployed-version {deployed}" + (
            " (a tag of your own images: not compared)" if uncompared else ""
        )

    def _instance(self) -> None:
        answer = self.net.request(self.domain, "/api/v2/instance", headers={"Accept": "application/json"})
        if answer.status != 200:
            self.add(
                "mastodon",
                "instance API",
                False,
                f"/api/v2/instance {answer.status}",
                "Mastodon does not answer its API",
                "see the edge group and the web log group",
            )
            return
        self.instance = answer.json()
        domain, reported = self.instance.get("domain"), str(self.instance.get("version", ""))
        self.add(
            "mastodon",
            "instance API",
            domain == self.domain,
            f"domain {domain}",
            f"Mastodon's LOCAL_DOMAIN is {domain}, not {self.domain}",
            "LOCAL_DOMAIN cannot change after the first boot: redeploy with the right DomainName",
        )
        self.add(
            "mastodon",
            "version",
            self._version_matches(reported),
            self._version_detail(reported),
            "the web servers run another version than the stack recorded (a stale server, or a "
            "rollout that did not finish)",
            "see the servers group: replace the stale server (terminate it; its group launches one "
            "at the deployed version)",
        )

    def _webfinger(self) -> None:
        contact = ((self.instance or {}).get("contact") or {}).get("account") or {}
        username = contact.get("username")
        probe = username or f"check-{uuid.uuid4().hex[:8]}"
        answer = self.net.request(
            self.domain,
            f"/.well-known/webfinger?resource=acct:{probe}@{self.domain}",
            headers={"Accept": "application/jrd+json"},
        )
        if username:
            ok = answer.status == 200 and answer.json().get("subject") == f"acct:{username}@{self.domain}"
            detail = f"acct:{username}@{self.domain} → {answer.status}"
        else:
            # No owner yet: Mastodon's 404 for an unknown account proves the route reaches Rails.
            ok = answer.status == 404 and answer.via_cloudfront and b"Forbidden" not in answer.body
            detail = f"no contact account yet; unknown account → {answer.status} (expected 404 from Mastodon)"
        self.add(
            "mastodon",
            "WebFinger",
            ok,
            detail,
            "other servers cannot find accounts here: federation fails",
            "see the edge group; WebFinger must reach the web servers uncached",
        )

    def _nodeinfo(self) -> None:
        index = self.net.request(self.domain, "/.well-known/nodeinfo")
        links = index.json().get("links", []) if index.status == 200 else []
        href = next(
            (str(link.get("href")) for link in links if str(link.get("rel", "")).endswith("/2.0")), ""
        )
        if not href.startswith(f"https://{self.domain}/"):
            self.add(
                "mastodon",
                "NodeInfo",
                False,
                f"/.well-known/nodeinfo {index.status}, 2.0 link {href!r}",
                "Mastodon's NodeInfo index is missing or names another host",
                "check LOCAL_DOMAIN and the edge group",
            )
            return
        document = self.net.request(self.domain, "/" + href.split("/", 3)[3])
        software = document.json().get("software", {}) if document.status == 200 else {}
        self.add(
            "mastodon",
            "NodeInfo",
            software.get("name") == "mastodon" and self._version_matches(str(software.get("version", ""))),
            f"{href} → {document.status} {software.get('name')} {software.get('version')}",
            "NodeInfo does not report this Mastodon and version",
            "see the version line; then the web log group",
        )

    def _host_meta(self) -> None:
        answer = self.net.request(self.domain, "/.well-known/host-meta")
        template = f"https://{self.domain}/.well-known/webfinger?resource="
        self.add(
            "mastodon",
            "host-meta",
            answer.status == 200 and template.encode() in answer.body,
            f"{answer.status}",
            "host-meta does not point at this domain's WebFinger",
            "check LOCAL_DOMAIN and the edge group",
        )

    def _streaming_health(self) -> None:
        answer = self.net.request(self.domain, load_balancing.STREAMING_HEALTH_PATH)
        self.add(
            "mastodon",
            "streaming health",
            answer.status == 200 and answer.body.strip() == b"OK",
            f"{answer.status} {answer.body[:40]!r}",
            "the streaming server does not answer through CloudFront and the load balancer",
            f"check the streaming target group's health and the {edge.STREAMING_PATH} behaviour",
        )

    def _websocket(self) -> None:
        shake = websocket_heartbeat(
            self.net, self.domain, WEBSOCKET_PATH, self.options.heartbeat_wait, self.options.access_token
        )
        layer = refusal_layer(shake)
        reaches, name = "WebSocket upgrade request reaches the streaming server", "WebSocket heartbeat"
        said = refusal_message(shake)
        step = (
            f"check the {edge.STREAMING_PATH} behaviour (its origin request policy must pass the viewer's "
            "Upgrade, Connection and Sec-WebSocket-* headers) and the load balancer's listener rules"
        )
        if shake.status == 101 or layer == "websocket":
            self.add(
                "mastodon",
                reaches,
                True,
                "upgraded (101)"
                if shake.status == 101
                else f"{shake.status} at the WebSocket upgrade ({said}): the upgrade request reached it; "
                "without a token nothing shows that the handshake would complete",
            )
        elif layer == "http":
            self.add(
                "mastodon",
                reaches,
                False,
                f"{shake.status} from its plain-HTTP handler ({said})",
                "the Upgrade headers were lost on the way: the streaming server answered an ordinary "
                "request",
                step,
            )
        else:
            self.add(
                "mastodon",
                reaches,
                False,
                f"{shake.status}: {shake.what}" + (f" ({said})" if said else ""),
                "the answer is not the streaming server's (CloudFront or the load balancer answered)",
                step,
            )
        if shake.status == 401 and layer == "websocket" and not self.options.access_token:
            self.add(
                "mastodon",
                name,
                None,
                "Mastodon wants a token for WebSockets: give --access-token "
                "(or MASTODON_ACCESS_TOKEN) to wait for a heartbeat",
            )
            return
        causes = {
            0: "the connection broke during the handshake",
            400: "the upgrade headers were lost on the way (CloudFront or the load balancer)",
            401: "the access token was refused"
            if layer == "websocket"
            else "the upgrade headers were lost on the way (CloudFront or the load balancer)",
            403: "the load balancer refused the upgrade: the secret header is missing",
            404: f"the {edge.STREAMING_PATH} behaviour or the listener rule does not route to streaming",
            502: "CloudFront cannot reach the load balancer for WebSockets (VPC origin support?)",
            504: "the streaming server does not answer",
        }
        self.add(
            "mastodon",
            name,
            shake.status == 101 and shake.what == "heartbeat received",
            f"{shake.status}: {shake.what}" + (f" ({said})" if said and shake.status != 101 else ""),
            causes.get(
                shake.status,
                "the streaming server accepted the WebSocket but sent no heartbeat"
                if shake.status == 101
                else "the WebSocket upgrade was not accepted",
            ),
            "check the streaming target group's health, the streaming log group and the "
            "load balancer's idle timeout",
        )

    def _websocket_headers(self) -> None:
        """CloudFront passes a WebSocket handshake on only where the behaviour forwards every viewer
        header or Sec-WebSocket-Key and Sec-WebSocket-Version (CloudFront Developer Guide, "Use
        WebSockets with CloudFront distributions"). Without a token the upgrade line cannot tell:
        Mastodon refuses before its WebSocket layer reads the key."""
        name = WEBSOCKET_HEADERS_CHECK
        step = (
            f"give the {edge.STREAMING_PATH} behaviour the AllViewer origin request policy (as the "
            "template does): a stack update restores it"
        )
        distribution = self.stack.resource(edge.DISTRIBUTION)
        if not distribution:
            self.add("mastodon", name, False, "no distribution in the stack", "the stack is incomplete",
                     "redeploy with scripts/deploy.py")
            return
        cloudfront = self.client("cloudfront")
        config = cloudfront.get_distribution_config(Id=distribution)["DistributionConfig"]
        behaviours = (config.get("CacheBehaviors") or {}).get("Items") or []
        found = next((b for b in behaviours if b.get("PathPattern") == edge.STREAMING_PATH), None)
        if found is None:
            self.add("mastodon", name, False, f"no {edge.STREAMING_PATH} behaviour",
                     "WebSockets meet the default behaviour, which is not made for them", step)
            return
        policy_id = str(found.get("OriginRequestPolicyId") or "")
        if not policy_id:
            self.add("mastodon", name, False, f"the {edge.STREAMING_PATH} behaviour has no origin request "
                     "policy", "CloudFront forwards only the legacy ForwardedValues headers", step)
            return
        policy = cloudfront.get_origin_request_policy(Id=policy_id)["OriginRequestPolicy"]
        headers = policy["OriginRequestPolicyConfig"].get("HeadersConfig", {})
        behaviour = str(headers.get("HeaderBehavior", "none"))
        listed = {str(h).lower() for h in (headers.get("Headers") or {}).get("Items") or []}
        wanted = {h.lower() for h in WEBSOCKET_HEADERS}
        if behaviour in ("allViewer", "allViewerAndWhitelistCloudFront"):
            dropped: set[str] = set()
        elif behaviour == "whitelist":
            dropped = wanted - listed
        elif behaviour == "allExcept":
            dropped = wanted & listed
        else:
            dropped = wanted
        label = str(policy["OriginRequestPolicyConfig"].get("Name") or policy_id)
        lost = ", ".join(h for h in WEBSOCKET_HEADERS if h.lower() in dropped)
        self.add(
            "mastodon",
            name,
            not dropped,
            f"{edge.STREAMING_PATH}: origin request policy {label}, headers {behaviour}"
            + (f"; drops {lost}" if dropped else ""),
            "CloudFront does not pass the WebSocket handshake's headers on: every WebSocket (the "
            "live timelines, notifications) fails although the upgrade request gets through",
            step,
        )

    # ---- 4. media

    def check_media(self) -> None:
        bucket = self.stack.resource(data.MEDIA_BUCKET)
        if not bucket or not self.domain:
            self.add("media", "media", None, "no media bucket or domain in the stack")
            return
        # Shaped like Mastodon's keys (folder/style/file).
        key = f"{PROBE_PREFIX}/{uuid.uuid4().hex}/original/probe.txt"
        body = f"mastodon-aws check {key}\n".encode()
        s3 = self.client("s3")
        try:
            put = s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="text/plain",
                                CacheControl=MEDIA_CACHE_CONTROL)
        except Exception as error:
            self.add(
                "media",
                "probe object",
                False,
                f"{type(error).__name__}: {error}",
                "the probe cannot be written to the media bucket",
                "check your permissions (s3:PutObject, s3:DeleteObject on the media bucket)",
            )
            return
        versions_to_remove = [put.get("VersionId")]
        try:
            self.guard(
                "media",
                "served through CloudFront",
                "CloudFront cannot read the bucket",
                "check the Origin Access Control and the bucket policy",
            )(lambda: self._served(key, body))
            self.guard(
                "media",
                "bucket not public",
                "the bucket address cannot be asked",
                "check DNS and the network",
            )(lambda: self._bucket_closed(bucket, key))
            try:
                deleted = s3.delete_object(Bucket=bucket, Key=key)
            except Exception as error:
                self.add(
                    "media",
                    "gone from the edge after deletion",
                    False,
                    f"{type(error).__name__}: {error}",
                    "the probe could not be deleted, so its removal from the edge was not tried",
                    "check your permissions (s3:DeleteObject on the media bucket)",
                )
            else:
                versions_to_remove.append(deleted.get("VersionId"))  # the delete marker, when versioned
                self.guard(
                    "media", "gone from the edge after deletion", "the edge cannot be asked",
                    "see the edge group",
                )(lambda: self._expired(key))
        finally:
            self._remove_probe(bucket, key, [v for v in versions_to_remove if v])

    def _remove_probe(self, bucket: str, key: str, version_ids: list[str]) -> None:
        s3 = self.client("s3")
        try:
            for version in version_ids:
                s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
            if not version_ids:
                s3.delete_object(Bucket=bucket, Key=key)
        except Exception as error:
            self.add(
                "media",
                "probe removed",
                False,
                f"{type(error).__name__}: {error}",
                f"the probe object s3://{bucket}/{key} was left behind",
                f"aws s3api delete-object --bucket {bucket} --key {key} (each version)",
            )

    def _served(self, key: str, body: bytes) -> None:
        path = f"{edge.MEDIA_PATH}/{key}"
        origin = {"Origin": "https://client.example"}
        first = self.net.request(self.domain, path, headers=origin)
        second = self.net.request(self.domain, path, headers=origin)
        for _ in range(2):  # a POP has several caches: the next request may meet another one
            if "hit" in second.header("x-cache").lower():
                break
            second = self.net.request(self.domain, path, headers=origin)
        self.add(
            "media",
            "served through CloudFront",
            first.status == 200 and first.body == body,
            f"{path} → {first.status}",
            {
                403: "CloudFront may not read the bucket (Origin Access Control, bucket policy) or the "
                "path prefix is not stripped",
                404: "the media behaviour does not route /system/* to the bucket",
            }.get(first.status, "the media answer is not the object"),
            "check the distribution's media behaviour, its function and the bucket policy",
        )
        cors = second.header("access-control-allow-origin")
        missing = [h for h in ("x-content-type-options", "content-security-policy") if not second.header(h)]
        self.add(
            "media",
            "media headers",
            cors == "*" and not missing,
            f"CORS {cors or 'none'}; "
            + ("nosniff and CSP present" if not missing else f"missing {', '.join(missing)}"),
            "the media response headers policy is not attached",
            f"check {edge.MEDIA_HEADERS_POLICY} on the media behaviour",
        )
        cached = "hit" in second.header("x-cache").lower()
        self.add(
            "media",
            "media cached at the edge",
            cached,
            f"X-Cache: {second.header('x-cache') or 'none'}",
            "CloudFront does not cache media",
            "check the media behaviour's cache policy",
        )

    def _bucket_closed(self, bucket: str, key: str) -> None:
        host = self.options.s3_host(bucket, self.stack.region)
        answer = self.net.request(host, f"/{key}")
        self.add(
            "media",
            "bucket not public",
            answer.status == 403,
            f"https://{host}/{key} → {answer.status}",
            "the media bucket answers anonymous requests: anyone can read media around CloudFront",
            "turn on the bucket's public access block and remove public statements from its policy",
        )

    def _expired(self, key: str) -> None:
        name = "gone from the edge after deletion"
        if self.options.media_wait <= 0:
            self.add("media", name, None, "--media-wait 0")
            return
        path = f"{edge.MEDIA_PATH}/{key}"
        deadline = time.monotonic() + self.options.media_wait
        while True:
            answer = self.net.request(self.domain, path)
            if answer.status in (403, 404):
                self.add("media", name, True, f"{path} → {answer.status}")
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(min(self.options.poll, max(0.0, deadline - time.monotonic())))
        self.add(
            "media",
            name,
            False,
            f"{path} still {answer.status} after {self.options.media_wait:g} s",
            "CloudFront keeps media longer than the stack's bound: the /system/* behaviour no "
            f"longer uses the stack's {edge.MEDIA_CACHE_POLICY}, or its maximum TTL was raised",
            "compare the distribution's /system/* behaviour with the template (a stack update "
            "restores it)",
        )

    # ---- 5. mail

    def check_mail(self) -> None:
        g = "mail"
        server = self.stack.parameters.get(self.smtp_server_key, "")
        self.guard(
            g,
            "SMTP settings",
            "the worker cannot be asked",
            "see the servers group (SSM line); Run Command needs ssm:SendCommand, ssm:GetCommandInvocation",
        )(self._smtp_settings)
        if server:
            self.add(g, "SES identity", None, "the stack mails through an external SMTP server")
        else:
            self.guard(
                g,
                "SES identity",
                "the identity cannot be read",
                "check your permissions (ses:GetEmailIdentity)",
            )(self._ses_identity)
            self.guard(
                g,
                "SES sending status",
                "the account cannot be read",
                "check your permissions (ses:GetAccount)",
            )(self._ses_account)
        if self.options.mail_to:
            self.guard(
                g,
                "test mail",
                "the test mail could not be sent",
                "see the worker's sidekiq log group (mailers queue)",
            )(self._send_mail)
        else:
            self.add(g, "test mail", None, "give --mail-to ADDRESS to send one")

    def _ses_identity(self) -> None:
        identity = self.client("sesv2").get_email_identity(EmailIdentity=self.domain)
        dkim = identity.get("DkimAttributes", {}).get("Status", "NOT_STARTED")
        verified = identity.get("VerifiedForSendingStatus", False)
        self.add(
            "mail",
            "SES identity",
            bool(verified) and dkim == "SUCCESS",
            f"{self.domain}: verified {verified}, DKIM {dkim}",
            "SES has not found the DKIM records (or they are wrong)",
            "check the three DKIM CNAME records (the stack's DkimRecord outputs without a hosted zone)",
        )

    def _ses_account(self) -> None:
        account = self.client("sesv2").get_account()
        production = bool(account.get("ProductionAccessEnabled"))
        sending = bool(account.get("SendingEnabled", True))
        self.add(
            "mail",
            "SES sending status",
            sending and production,
            f"{'production' if production else 'sandbox'}, sending {'enabled' if sending else 'paused'}",
            "in the SES sandbox only verified addresses receive mail"
            if sending
            else "SES paused sending for this account",
            f"request production access for {self.stack.region} in the SES console",
            required=not sending,
        )

    def server_facts(self) -> tuple[dict[str, Any] | None, str]:
        """What Mastodon on the worker mails with and which Sidekiq processes live (asked once)."""
        if self.facts is None:
            try:
                status, out, err = run_on_worker(
                    self.session,
                    self.stack,
                    rails_runner(SERVER_FACTS_RUBY),
                    "check: mail settings and Sidekiq processes",
                    self.options.poll,
                    self.options.runner_timeout,
                )
            except Exception as error:  # a refused call is this check's failure, with the error
                self.facts = None, f"{type(error).__name__}: {error}"
            else:
                found = runner_result(out) if status == "Success" else None
                if found is not None and "error" in found:
                    self.facts = None, f"Mastodon raised {runner_error(found)}"
                else:
                    self.facts = found, "" if found is not None else f"{status}: {runner_failure(err, out)}"
        return self.facts

    def _expected_smtp(self) -> tuple[str, str]:
        names = parameter_names()
        server = self.stack.parameters.get(names.smtp_server.title, "")
        if server:
            default = str(names.smtp_port.properties.get("Default", ""))
            return server, self.stack.parameters.get(names.smtp_port.title, default) or default
        return mail.SES_SMTP_HOST.format(region=self.stack.region), mail.SES_SMTP_PORT

    def _smtp_settings(self) -> None:
        name = "SMTP settings"
        facts, error = self.server_facts()
        if facts is None:
            self.add(
                "mail",
                name,
                False,
                f"not read from the worker: {error}",
                "the worker cannot be asked (no server in service, its SSM agent offline, Run Command "
                "refused) or Mastodon did not start there",
                "see the servers group; then the worker's sidekiq log group",
            )
            return
        host, port = self._expected_smtp()
        address, used_port = str(facts.get("address", "")), str(facts.get("port", ""))
        implicit_tls = used_port in ("465", "2465")
        encrypted = bool(facts.get("tls")) if implicit_tls else bool(facts.get("starttls"))
        problems = []
        if facts.get("delivery_method") != "smtp":
            problems.append(f"delivery method {facts.get('delivery_method')}, not smtp")
        if (address, used_port) != (host, port):
            problems.append(f"the stack says {host}:{port}")
        if not (facts.get("user_name") and facts.get("password")):
            problems.append("no login or password")
        if not encrypted:
            problems.append("no TLS")
        self.add(
            "mail",
            name,
            not problems,
            f"Mastodon on the worker: {address}:{used_port}, "
            + ("TLS" if implicit_tls else "STARTTLS")
            + f", login {'set' if facts.get('user_name') else 'missing'}"
            + f", password {'set' if facts.get('password') else 'missing'}"
            + (f"; {'; '.join(problems)}" if problems else ""),
            "the worker's env file was rendered from other mail settings than the stack's (an older "
            "boot), or the stack's secret lacks the SMTP credentials",
            "replace the worker (terminate it: its group boots one from the stack); if it stays, read "
            "the SMTP entries of the stack's secret and the worker's system log group",
        )

    def _send_mail(self) -> None:
        """One mail through Mastodon's SMTP settings, on the worker; the SMTP server's reply decides."""
        address = self.options.mail_to or ""
        status, out, err = run_on_worker(
            self.session,
            self.stack,
            rails_runner(TEST_MAIL_RUBY, {MAIL_TO_ENV: address}),
            "check: test mail",
            self.options.poll,
            self.options.runner_timeout,
        )
        found = runner_result(out) if status == "Success" else None
        raised = found is not None and "error" in found
        reply = runner_error(found) if found is not None and raised else str((found or {}).get("reply", ""))
        code = str((found or {}).get("status", ""))
        accepted = found is not None and not raised and code == "250"
        self.add(
            "mail",
            "test mail",
            accepted,
            f"to {address}: " + (reply or f"{status}: {runner_failure(err, out)}")
            + ("; look in that inbox" if accepted else ""),
            MAIL_REFUSALS.get(code, f"the SMTP server refused the mail (reply {code})")
            if found is not None and code[:1] in ("4", "5")
            else "Mastodon could not hand the mail to the SMTP server (see the error above)",
            "see the SMTP settings line; in the SES sandbox the address must be verified in SES",
        )

    # ---- 6. servers

    def check_servers(self) -> None:
        self.guard(
            "servers",
            "servers",
            "the servers cannot be described",
            "check your permissions (autoscaling:Describe*, ec2:DescribeInstances)",
        )(self._servers)

    def _group(self, logical_id: str) -> dict[str, Any] | None:
        name = self.stack.resource(logical_id)
        if not name:
            return None
        groups = self.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])
        return dict(groups["AutoScalingGroups"][0]) if groups["AutoScalingGroups"] else None

    def _servers(self) -> None:
        g = "servers"
        web, worker = self._group(compute.WEB_GROUP), self._group(compute.WORKER_GROUP)
        if web is None or worker is None:
            self.add(
                g,
                "groups",
                False,
                "a server group is missing from the stack",
                "the stack is incomplete",
                "redeploy with scripts/deploy.py",
            )
            return
        servers = {i["InstanceId"]: ("web", i) for i in web["Instances"]}
        servers.update({i["InstanceId"]: ("worker", i) for i in worker["Instances"]})
        tags: dict[str, dict[str, str]] = {}
        if servers:
            for reservation in self.client("ec2").describe_instances(InstanceIds=list(servers))[
                "Reservations"
            ]:
                for instance in reservation["Instances"]:
                    tags[instance["InstanceId"]] = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        registered = self._ssm_registered(list(servers))
        health = self._target_health()
        expected = self.deployed_version
        for iid, (role, instance) in sorted(servers.items(), key=lambda s: (s[1][0], s[0])):
            label = f"{role} {iid}"
            version = tags.get(iid, {}).get(VERSION_TAG)
            self.add(
                g,
                f"{label} in service",
                instance["LifecycleState"] == "InService" and instance.get("HealthStatus") == "Healthy",
                f"{instance['LifecycleState']}, {instance.get('HealthStatus')}",
                "the server is not in service (booting, draining, or failing its health checks)",
                "wait for its boot to end, or read its system log group",
            )
            self.add(
                g,
                f"{label} version",
                expected is None or version == expected,
                f"{VERSION_TAG} {version or 'untagged'}, deployed {expected or 'unknown'}",
                "a server runs another version than the stack recorded",
                "terminate it: its group replaces it with a server at the deployed version",
            )
            if registered is None:
                self.add(
                    g, f"{label} SSM", None, "registration unknown (ssm:DescribeInstanceInformation refused)"
                )
            else:
                self.add(
                    g,
                    f"{label} SSM",
                    iid in registered,
                    registered.get(iid, "not registered"),
                    "the SSM agent on the server is not registered: no Run Command, no rollout, no tootctl",
                    "check the instance role and the server's access to the SSM endpoints",
                )
            if role == "web":
                states = {name: groups.get(iid, "not registered") for name, groups in health.items()}
                self.add(
                    g,
                    f"{label} targets",
                    all(s == "healthy" for s in states.values()),
                    ", ".join(f"{n} {s}" for n, s in states.items()),
                    "the load balancer does not send traffic to this server",
                    "read the web and streaming log groups of the server",
                )
        if not web["Instances"]:
            self.add(
                g,
                "web servers",
                False,
                "the web group has no server",
                "the web group cannot launch",
                "see the group's activity history in the EC2 console",
            )
        serving = [
            i
            for i in worker["Instances"]
            if i["LifecycleState"] in ("InService", "Pending", "Pending:Wait", "Pending:Proceed")
        ]
        self.add(
            g,
            "worker group holds one server",
            len(serving) == 1 and int(worker["MaxSize"]) <= 1,
            f"worker group: {len(serving)} server(s), at most {worker['MaxSize']}",
            "the worker runs the scheduler queue: a second worker would run a second scheduler, none "
            "runs the cron jobs",
            "set the worker group back to one server (min = max = desired = 1)",
        )
        self.guard(
            g,
            "Sidekiq scheduler in exactly one process",
            "Sidekiq's process set cannot be read",
            "see the worker's SSM line",
        )(self._scheduler)
        self.guard(
            g,
            "queue latency",
            "the queue-latency metric cannot be read",
            "check your permissions (cloudwatch:GetMetricStatistics)",
        )(self._queue_latency)

    def _scheduler(self) -> None:
        name = "Sidekiq scheduler in exactly one process"
        facts, error = self.server_facts()
        if facts is None:
            self.add(
                "servers",
                name,
                False,
                f"Sidekiq's process set not read from the worker: {error}",
                "the worker cannot be asked (no server in service, its SSM agent offline, Run Command "
                "refused) or Mastodon did not start there",
                "see the worker's lines above; then its sidekiq log group",
            )
            return
        # A process told to stop (a rollout replacing the worker) fetches no more jobs.
        processes = [p for p in facts.get("processes", []) if isinstance(p, dict) and not p.get("quiet")]
        queue = sidekiq.SCHEDULER_QUEUE
        scheduling = [p for p in processes if queue in p.get("queues", [])]
        self.add(
            "servers",
            name,
            len(scheduling) == 1,
            f"{len(scheduling)} of {len(processes)} live Sidekiq process(es) run the {queue} "
            f"queue" + (f": {', '.join(str(p.get('hostname')) for p in scheduling)}" if scheduling else ""),
            "no Sidekiq process runs the scheduler queue: Mastodon's periodic jobs (cleanups, "
            "scheduled statuses) do not run"
            if not scheduling
            else "several Sidekiq processes run the scheduler queue: periodic jobs run more than once",
            "read the worker's sidekiq log group; only the worker's Sidekiq may run the scheduler "
            "queue (see the worker group line)",
        )

    def _queue_latency(self) -> None:
        name, (namespace, metric) = "queue latency", queue_latency_metric(self.stack.name)
        alarms = [
            a
            for a in self.stack_alarms()
            if (a.get("Namespace"), a.get("MetricName")) == (namespace, metric)
        ]
        if not alarms:
            self.add(
                "servers",
                name,
                None,
                f"the stack has no queue workers ({parameter_names().queue_worker_max_size.title} 0): "
                f"no alarm of the stack watches {namespace} {metric}",
            )
            return
        now = datetime.datetime.now(datetime.UTC)
        readings, missing, over = [], [], []
        for alarm in alarms:
            dimensions = alarm.get("Dimensions", [])
            label = ",".join(str(d.get("Value")) for d in dimensions) or metric
            state = str(alarm.get("StateValue", "state unknown"))
            period = int(alarm.get("Period", 60))
            window = max(5 * period, 600)
            statistic = alarm.get("ExtendedStatistic") or alarm.get("Statistic") or "Maximum"
            wanted = (
                {"ExtendedStatistics": [statistic]}
                if alarm.get("ExtendedStatistic")
                else {"Statistics": [statistic]}
            )
            points = self.client("cloudwatch").get_metric_statistics(
                Namespace=namespace,
                MetricName=metric,
                Dimensions=dimensions,
                StartTime=now - datetime.timedelta(seconds=window),
                EndTime=now,
                Period=period,
                **wanted,
            )["Datapoints"]
            if not points:
                missing.append(f"{label} (none in {window // 60} min; alarm {state})")
                continue
            latest = max(points, key=lambda point: point["Timestamp"])
            extended = bool(alarm.get("ExtendedStatistic"))
            value = float(latest["ExtendedStatistics"][statistic] if extended else latest[statistic])
            threshold = float(alarm.get("Threshold", 0))
            breaches = COMPARISONS.get(str(alarm.get("ComparisonOperator")))
            readings.append(f"{label} {value:g} (alarm at {threshold:g}, {state})")
            if breaches is None or breaches(value, threshold):
                over.append(label)
        self.add(
            "servers",
            name,
            not missing and not over,
            "; ".join(readings + [f"no data: {m}" for m in missing]),
            f"jobs wait longer than the alarm allows in {', '.join(over)}: the workers do not keep up"
            if over
            else "no queue latency published lately: the metrics publisher stopped, or Sidekiq is down",
            "see the queue workers' group size and the sidekiq log group"
            if over
            else "see the Sidekiq lines above and the metrics publisher's logs",
        )

    def _ssm_registered(self, instance_ids: list[str]) -> dict[str, str] | None:
        if not instance_ids:
            return {}
        try:
            found: dict[str, str] = {}
            paginator = self.client("ssm").get_paginator("describe_instance_information")
            for page in paginator.paginate(Filters=[{"Key": "InstanceIds", "Values": instance_ids}]):
                for info in page["InstanceInformationList"]:
                    found[info["InstanceId"]] = f"{info.get('PingStatus')}, agent {info.get('AgentVersion')}"
            return {k: v for k, v in found.items() if v.startswith("Online")}
        except Exception:
            return None

    def _target_health(self) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for logical_id in (load_balancing.WEB_TARGET_GROUP, load_balancing.STREAMING_TARGET_GROUP):
            arn = self.stack.resource(logical_id)
            if not arn:
                continue
            described = self.client("elbv2").describe_target_health(TargetGroupArn=arn)
            found[logical_id] = {
                d["Target"]["Id"]: d["TargetHealth"]["State"] for d in described["TargetHealthDescriptions"]
            }
        return found


def rails_runner(code: str, env: dict[str, str] | None = None) -> list[str]:
    """Shell lines that run Ruby in Mastodon on the worker: its Sidekiq container, its environment."""
    settings = [f"--env={k}={v}" for k, v in (env or {}).items()]
    return [
        "set -eu",
        shlex.join(
            ["docker", "exec", "--env=RAILS_LOG_LEVEL=warn", *settings, SIDEKIQ_CONTAINER,
             "bin/rails", "runner", code]
        ),
    ]


def runner_result(output: str) -> dict[str, Any] | None:
    """The one document the Ruby printed after RESULT_MARK (its last such line), or None."""
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_MARK):
            try:
                found = json.loads(line[len(RESULT_MARK):])
            except ValueError:
                return None
            return found if isinstance(found, dict) else None
    return None


def runner_error(found: dict[str, Any]) -> str:
    """What the Ruby rescued: its class and message (and the SMTP reply code, if any)."""
    code = str(found.get("status", ""))
    return f"{found.get('error')}: {found.get('message')}" + (f" (SMTP reply {code})" if code else "")


def runner_failure(err: str, out: str) -> str:
    """A runner that died before its own rescue: Ruby prints the error's message first, then its
    backtrace (of which Run Command keeps the first 8,000 characters): the first line tells."""
    lines = [line.strip() for line in (err or out).splitlines() if line.strip()]
    return lines[0][:300] if lines else "no output"


def run_on_worker(
    session: Any, stack: Stack, commands: list[str], comment: str, poll: float, timeout: float = 600
) -> tuple[str, str, str]:
    """Run shell lines on the worker through Run Command, as scripts/tootctl.py does.

    (status, standard output, standard error).
    """
    group = stack.resource(compute.WORKER_GROUP)
    if not group:
        return "NoWorker", "", "the stack has no worker group"
    groups = session.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[group])
    serving = [
        i["InstanceId"]
        for g in groups["AutoScalingGroups"]
        for i in g["Instances"]
        if i["LifecycleState"] == "InService"
    ]
    if not serving:
        return "NoWorker", "", "the worker group has no server in service"
    ssm = session.client("ssm")
    wait = timeout + min(60.0, timeout)  # the agent's own execution timeout ends it first
    command = ssm.send_command(
        InstanceIds=serving[:1],
        DocumentName=maintenance.RUN_SHELL_SCRIPT,
        Comment=comment[:100],
        # Not delivered by then (the agent offline, the instance busy), it never runs; SSM's
        # minimum is 30 s. Beyond the check's wait the command is cancelled below.
        TimeoutSeconds=max(RUN_COMMAND_MIN_DELIVERY_SECONDS, min(int(timeout), int(wait))),
        Parameters={"commands": commands, "executionTimeout": [str(max(1, int(timeout)))]},
    )
    command_id = command["Command"]["CommandId"]
    deadline = time.monotonic() + wait
    settled = False
    try:
        while time.monotonic() < deadline:
            time.sleep(poll)
            try:
                invocation = ssm.get_command_invocation(CommandId=command_id, InstanceId=serving[0])
            except Exception as error:
                if "InvocationDoesNotExist" in str(error):
                    continue
                raise
            if invocation["Status"] not in ("Pending", "InProgress", "Delayed"):
                settled = True
                return (
                    str(invocation["Status"]),
                    str(invocation.get("StandardOutputContent", "")),
                    str(invocation.get("StandardErrorContent", "")),
                )
    finally:
        if not settled:  # given up: a test mail must not go out an hour later
            cancelled = _cancel(ssm, command_id, serving[0])
    return "TimedOut", "", f"no result within {timeout:g} s; {cancelled}"


def _cancel(ssm: Any, command_id: str, instance_id: str) -> str:
    try:
        ssm.cancel_command(CommandId=command_id, InstanceIds=[instance_id])
    except Exception as error:
        return (
            f"the command could not be cancelled ({type(error).__name__}: {error}): "
            f"aws ssm cancel-command --command-id {command_id}"
        )
    return f"command {command_id} cancelled"


# ---------------------------------------------------------------- output


def summary(results: list[Result]) -> tuple[int, dict[str, int]]:
    counts = {s: sum(1 for r in results if r.status == s) for s in (PASS, FAIL, SKIP)}
    failed = any(r.status == FAIL and r.required for r in results)
    return (1 if failed else 0), counts


def render(results: list[Result]) -> Iterator[str]:
    for group in GROUPS:
        mine = [r for r in results if r.group == group]
        if not mine:
            continue
        yield group
        for r in mine:
            note = "" if r.required or r.status != FAIL else " (advisory)"
            yield f"  {MARKS[r.status]} {r.name}{note}: {r.detail}".rstrip(": ")
            if r.status == FAIL:
                yield f"      likely cause: {r.cause}"
                yield f"      next step: {r.step}"
    code, counts = summary(results)
    yield (
        f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped: "
        + ("all required checks pass" if code == 0 else "some required checks FAIL")
    )


def as_json(stack: str, results: list[Result]) -> str:
    code, counts = summary(results)
    return json.dumps(
        {"stack": stack, "ok": code == 0, "counts": counts, "checks": [asdict(r) for r in results]}, indent=2
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=version_action(), help="print the project's version and exit")
    parser.add_argument("--stack-name", required=True, help="the deployed stack to check, e.g. mastodon")
    parser.add_argument("--region", help="default: your configured region")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--mail-to",
        metavar="ADDRESS",
        help="send a real mail through Mastodon to this address (a throwaway account's "
        "confirmation, deleted after a minute)",
    )
    parser.add_argument(
        "--access-token",
        default=os.environ.get("MASTODON_ACCESS_TOKEN"),
        help="a Mastodon access token for the WebSocket heartbeat (default: $MASTODON_ACCESS_TOKEN)",
    )
    parser.add_argument(
        "--media-wait",
        type=float,
        default=MEDIA_PROMISE_SECONDS,
        help="seconds a deleted probe may stay at the edge (the stack's promise; 0 skips)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds for each network operation")
    parser.add_argument("--only", choices=GROUPS, action="append", help="run only this group (repeatable)")
    args = parser.parse_args(argv)
    if args.mail_to and "@" not in args.mail_to:
        parser.error(f"{args.mail_to!r} is not an e-mail address")
    return args


def check(
    session: Any, stack_name: str, net: Network, options: Options, groups: tuple[str, ...] = GROUPS
) -> list[Result]:
    try:
        stack = load_stack(session, stack_name)
    except Exception as error:
        return [
            Result(
                "stack",
                "status",
                FAIL,
                f"{type(error).__name__}: {error}",
                "the stack cannot be read (wrong name or region, or no permission)",
                "check --stack-name, --region and your AWS credentials",
            )
        ]
    checker = Checker(session, stack, net, options)
    if "stack" not in groups:
        checker.guard("stack", "versions agree", "the versions cannot be read", "")(checker._versions)
    return checker.run(groups)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import boto3
    except ImportError:
        print("check.py: error: boto3 is not installed: pip install boto3", file=sys.stderr)
        return 2
    session = boto3.session.Session(region_name=args.region) if args.region else boto3.session.Session()
    if not session.region_name:
        print("check.py: error: no region: give --region or configure one", file=sys.stderr)
        return 2
    options = Options(media_wait=args.media_wait, access_token=args.access_token, mail_to=args.mail_to)
    groups = tuple(g for g in GROUPS if not args.only or g in args.only)
    results = check(session, args.stack_name, Network(timeout=args.timeout), options, groups)
    if args.json:
        print(as_json(args.stack_name, results))
    else:
        for line in render(results):
            print(line, flush=True)
    return summary(results)[0]


if __name__ == "__main__":
    sys.exit(main())
