"""Local stand-ins for what scripts/check.py talks to: CloudFront on the domain, the load
balancer's own address, the bucket's own address (TLS servers on loopback under a test
certificate authority), and a moto account holding the stack's resources.

`Edge` behaves like CloudFront in front of Mastodon: it adds CloudFront's headers, redirects
plain HTTP, serves Mastodon's discovery documents, its API and its streaming server (a
WebSocket that pings like Mastodon's, every `ping_after` seconds), and serves /system/KEY
from the moto bucket with a cache that forgets a deleted object only when `invalidates`
is on (the stack bounds how long the edge keeps media; a broken bound keeps it).
Every misbehaviour a check must catch is one field of `Behaviour`.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.server
import json
import shlex
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DOMAIN = "social.example.com"
S3_HOST = "media-bucket.s3.test"
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC11B65"


class Authority:
    """A certificate authority of the test's own, and certificates it signs for a name."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "check test authority")])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cafile = directory / "authority.pem"
        self.cafile.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, host: str, days: int = 90) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = self.directory / f"{host}-{days}.pem", self.directory / f"{host}-{days}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path


@dataclass
class Behaviour:
    """How the fake edge answers; each field off its default is one fault."""

    certificate_host: str = DOMAIN
    certificate_days: int = 90
    redirect_http: bool = True
    health_status: int = 200
    cloudfront_headers: bool = True
    security_headers: bool = True
    alt_svc: str = 'h3=":443"; ma=86400'
    http2: bool = True
    instance_domain: str = DOMAIN
    version: str = "4.7.6"
    contact: str | None = "owner"
    webfinger: bool = True  # WebFinger knows the contact account
    nodeinfo_host: str = DOMAIN
    streaming_health: int = 200
    websocket: str = "ping"  # ping | ping-with-token | silent | 401 (refused at the upgrade) | 403 | close
    upgrade_headers: bool = True  # False: the edge drops Upgrade and Connection on the way
    ping_after: float = 0.05
    media_status: int | None = None  # forced status for /system/*
    media_headers: bool = True
    invalidates: bool = True  # a deleted object leaves the cache
    requests: list[str] = field(default_factory=list)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True



class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that keeps connections alive (HTTP/1.1) and logs nothing."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

def _serve(handler: type[http.server.BaseHTTPRequestHandler], context: ssl.SSLContext | None) -> _Server:
    server = _Server(("127.0.0.1", 0), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _tls(authority: Authority, host: str, days: int = 90, alpn: list[str] | None = None) -> ssl.SSLContext:
    cert, key = authority.issue(host, days)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


class Edge:
    """CloudFront on the domain in front of a Mastodon, plus plain HTTP on another port."""

    def __init__(self, authority: Authority, behaviour: Behaviour, s3: Any, bucket: str) -> None:
        self.behaviour, self.s3, self.bucket = behaviour, s3, bucket
        self.cache: dict[str, bytes] = {}
        self.cache_control: dict[str, str] = {}  # what S3 answered for each key it served
        edge = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                edge.behaviour.requests.append(self.path)
                edge.handle(self)

        alpn = ["h2", "http/1.1"] if behaviour.http2 else ["http/1.1"]
        self.https = _serve(
            Handler, _tls(authority, behaviour.certificate_host, behaviour.certificate_days, alpn)
        )

        class Plain(QuietHandler):
            def do_GET(self) -> None:
                if edge.behaviour.redirect_http:
                    edge.send(self, 301, b"", {"Location": f"https://{DOMAIN}{self.path}"})
                else:
                    edge.send(self, 200, b"OK", {})

        self.http = _serve(Plain, None)

    def send(
        self,
        handler: http.server.BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        headers: dict[str, str],
        cache: str = "Miss from cloudfront",
    ) -> None:
        handler.send_response(status)
        if self.behaviour.cloudfront_headers:
            handler.send_header("Via", "1.1 abcdef.cloudfront.net (CloudFront)")
            handler.send_header("X-Amz-Cf-Id", "fake-id")
            handler.send_header("X-Cache", cache)
        if self.behaviour.alt_svc:
            handler.send_header("Alt-Svc", self.behaviour.alt_svc)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        b = self.behaviour
        path, _, query = h.path.partition("?")
        mastodon = (
            {
                "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'",
            }
            if b.security_headers
            else {}
        )
        as_json = {"Content-Type": "application/json", **mastodon}
        upgrade = h.headers.get("Upgrade", "").lower() == "websocket" and b.upgrade_headers
        if upgrade:
            self.websocket(h)
        elif path.startswith("/api/v1/streaming") and path != "/api/v1/streaming/health":
            self.streaming_http(h, path)
        elif path == "/health":
            self.send(
                h, b.health_status, b"OK" if b.health_status == 200 else b"Service Unavailable", mastodon
            )
        elif path == "/about":
            self.send(h, 200, b"<html>about</html>", {"Content-Type": "text/html", **mastodon})
        elif path == "/api/v2/instance":
            contact = {"email": "", "account": {"username": b.contact} if b.contact else None}
            self.send(
                h,
                200,
                json.dumps({"domain": b.instance_domain, "version": b.version, "contact": contact}).encode(),
                as_json,
            )
        elif path == "/.well-known/webfinger":
            wanted = f"resource=acct:{b.contact}@{DOMAIN}"
            if b.webfinger and b.contact and query == wanted:
                self.send(h, 200, json.dumps({"subject": f"acct:{b.contact}@{DOMAIN}"}).encode(), as_json)
            else:
                self.send(h, 404, b"", mastodon)
        elif path == "/.well-known/nodeinfo":
            links = [
                {
                    "rel": "http://nodeinfo.diaspora.software/ns/schema/2.0",
                    "href": f"https://{b.nodeinfo_host}/nodeinfo/2.0",
                }
            ]
            self.send(h, 200, json.dumps({"links": links}).encode(), as_json)
        elif path == "/nodeinfo/2.0":
            self.send(
                h,
                200,
                json.dumps(
                    {"version": "2.0", "software": {"name": "mastodon", "version": b.version}}
                ).encode(),
                as_json,
            )
        elif path == "/.well-known/host-meta":
            template = f"https://{DOMAIN}/.well-known/webfinger?resource={{uri}}"
            body = (
                f'<?xml version="1.0"?><XRD xmlns="http://docs.oasis-open.org/ns/xri/xrd-1.0">'
                f'<Link rel="lrdd" template="{template}"/></XRD>'
            ).encode()
            self.send(h, 200, body, {"Content-Type": "application/xrd+xml", **mastodon})
        elif path == "/api/v1/streaming/health":
            self.send(h, b.streaming_health, b"OK" if b.streaming_health == 200 else b"", {})
        elif path.startswith("/system/"):
            self.media(h, path.removeprefix("/system/"))
        else:
            self.send(h, 404, b"", mastodon)

    def streaming_http(self, h: http.server.BaseHTTPRequestHandler, path: str) -> None:
        """The streaming server's plain-HTTP (EventSource) handler: streams by path, errors as JSON."""
        channels = {"/api/v1/streaming/public", "/api/v1/streaming/public/local", "/api/v1/streaming/user"}
        as_json = {"Content-Type": "application/json"}
        if path not in channels:
            self.send(h, 400, b'{"error":"Unknown channel requested"}', as_json)
        elif not h.headers.get("Authorization"):
            self.send(h, 401, b'{"error":"Missing access token"}', as_json)
        else:
            self.send(h, 200, b":)\n", {"Content-Type": "text/event-stream"})

    def media(self, h: http.server.BaseHTTPRequestHandler, key: str) -> None:
        b = self.behaviour
        headers = (
            {
                "Access-Control-Allow-Origin": "*",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; form-action 'none'",
            }
            if b.media_headers and h.headers.get("Origin")
            else {}
        )
        if b.media_status is not None:
            self.send(h, b.media_status, b"", headers)
            return
        if b.invalidates and key in self.cache:
            try:
                self.s3.head_object(Bucket=self.bucket, Key=key)
            except Exception:
                del self.cache[key]  # the edge's bound has passed
        if key in self.cache:
            self.send(h, 200, self.cache[key], headers, cache="Hit from cloudfront")
            return
        try:
            answer = self.s3.get_object(Bucket=self.bucket, Key=key)
            body = answer["Body"].read()
            self.cache_control[key] = answer.get("CacheControl", "")
        except Exception:
            self.send(h, 403, b"AccessDenied", {})  # S3 through OAC answers 403 for a missing key
            return
        self.cache[key] = body
        self.send(h, 200, body, headers)

    def websocket(self, h: http.server.BaseHTTPRequestHandler) -> None:
        b = self.behaviour
        if b.websocket == "401" or (b.websocket == "ping-with-token" and not h.headers.get("Authorization")):
            # Mastodon's upgrade handler writes its refusal by hand: no body, the reason in a header.
            reason = "Invalid access token" if h.headers.get("Authorization") else "Missing access token"
            headers = {"Connection": "close", "Content-Type": "text/plain", "X-Error-Message": reason}
            self.send(h, 401, b"", headers)
            h.close_connection = True
            return
        if b.websocket == "403":
            self.send(h, 403, b"Forbidden", {})  # the load balancer's fixed response
            return
        accept = base64.b64encode(
            hashlib.sha1((h.headers["Sec-WebSocket-Key"] + GUID).encode(), usedforsecurity=False).digest()
        ).decode()
        h.send_response(101)
        h.send_header("Upgrade", "websocket")
        h.send_header("Connection", "Upgrade")
        h.send_header("Sec-WebSocket-Accept", accept)
        h.end_headers()
        h.wfile.flush()
        time.sleep(b.ping_after)
        try:
            if b.websocket in ("ping", "ping-with-token"):
                h.wfile.write(bytes([0x89, 0]))  # a ping, as Mastodon's streaming server sends
            elif b.websocket == "close":
                h.wfile.write(bytes([0x88, 2]) + (1000).to_bytes(2, "big"))
            h.wfile.flush()
            h.connection.settimeout(2)
            h.connection.recv(1024)  # the client's pong or close, or silence until it leaves
        except OSError:
            pass
        h.close_connection = True


class Fixed:
    """A TLS server that answers every request with one status (the load balancer, the bucket)."""

    def __init__(self, authority: Authority, host: str, status: int) -> None:
        self.status = status
        fixed = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                body = b"Forbidden" if fixed.status == 403 else b"OK"
                self.send_response(fixed.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = _serve(Handler, _tls(authority, host))

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


def closed_port() -> int:
    """A loopback port nothing listens on: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_of(server: _Server) -> int:
    return int(server.server_address[1])


# What Run Command keeps of a command's standard error (its first characters).
STDERR_KEPT = 8000


def ruby_crash(error: str, message: str) -> str:
    """What Ruby prints when an exception escapes `bin/rails runner`: the message once, then a
    backtrace as long as Rails' stack (hundreds of lines); Run Command keeps its beginning."""
    where = "/usr/local/bundle/gems/net-smtp-0.5.0/lib/net/smtp.rb:1100:in `check_response'"
    head = f"{where}: {message} ({error})"
    frames = [f"\tfrom /usr/local/bundle/gems/railties-7.1.5/lib/rails/commands/frame_{n}.rb:{n}:in `run'"
              for n in range(400)]
    return "\n".join([head, *frames])[:STDERR_KEPT]


@dataclass
class Worker:
    """The worker as Run Command reaches it: `docker exec` into its Sidekiq container, where
    `bin/rails runner` runs the check's Ruby and prints one result line among Rails' own.

    Each field off its default is one fault: the mail settings Mastodon uses, the live
    Sidekiq processes, the SMTP server's reply to the test mail, or an exception the Ruby
    meets (Net::SMTP raises on every refusal; Redis may be down). As in Ruby, an exception the
    code rescues becomes its error document; one it does not rescue ends the runner with the
    message and a long backtrace on standard error.
    """

    container: str = "mastodon-sidekiq"
    smtp: dict[str, Any] = field(
        default_factory=lambda: {
            "delivery_method": "smtp",
            "address": "email-smtp.us-east-1.amazonaws.com",
            "port": "587",
            "user_name": True,
            "password": True,
            "tls": False,
            "starttls": True,
        }
    )
    processes: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"hostname": "ip-10-0-1-5", "queues": ["default", "push", "ingress", "mailers", "pull",
                                                   "scheduler", "fasp"]}
        ]
    )
    mail_reply: str = "250 Ok 0100018c3f2e4d5a-6b7c8d9e-test-000000"
    mail_error: tuple[str, str] | None = None  # (class, message) the SMTP delivery raises
    facts_error: tuple[str, str] | None = None  # (class, message) reading the facts raises
    status: str = ""  # forced Run Command status (e.g. "Failed" when the container is gone)
    mails: list[str] = field(default_factory=list)

    def run(self, commands: list[str], mark: str, mail_to_env: str) -> dict[str, str]:
        """What GetCommandInvocation reports for these shell lines."""
        exec_line = next((line for line in commands if line.startswith("docker exec ")), "")
        argv = shlex.split(exec_line)
        env = dict(a.removeprefix("--env=").split("=", 1) for a in argv if a.startswith("--env="))
        rest = [a for a in argv[2:] if not a.startswith("--env=")]
        logs = "W, [2026-12-04T17:00:00] WARN -- : a deprecation notice Rails printed\n"
        if self.status:
            return {"Status": self.status, "StandardOutputContent": "", "StandardErrorContent": "forced"}
        if not rest or rest[0] != self.container or rest[1:3] != ["bin/rails", "runner"]:
            return {"Status": "Failed", "StandardOutputContent": "",
                    "StandardErrorContent": f"Error response from daemon: No such container: {rest[:1]}"}
        code = rest[3] if len(rest) > 3 else ""
        rescues = "rescue StandardError => error" in code and "check_failure(error" in code
        error = self.mail_error if mail_to_env in env else self.facts_error
        if error is not None:
            if not rescues:
                return {"Status": "Failed", "StandardOutputContent": logs,
                        "StandardErrorContent": ruby_crash(*error)}
            document: dict[str, Any] = {"error": error[0], "message": error[1]}
            if mail_to_env in env:
                document["status"] = error[1][:3] if error[1][:3].isdigit() else ""
            return {"Status": "Success", "StandardOutputContent": logs + mark + json.dumps(document) + "\n",
                    "StandardErrorContent": ""}
        if mail_to_env in env:
            self.mails.append(env[mail_to_env])
            status = self.mail_reply.split(" ", 1)[0]
            result: dict[str, Any] = {"status": status, "reply": self.mail_reply}
        else:
            result = {**self.smtp, "processes": self.processes}
        return {"Status": "Success", "StandardOutputContent": logs + mark + json.dumps(result) + "\n",
                "StandardErrorContent": ""}
