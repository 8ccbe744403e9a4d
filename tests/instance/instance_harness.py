"""Runs the instance scripts for real under a temporary root with stub commands (shared by the tests)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lambdas.rollout.names import VERSION_TAG
from templates import sidekiq
from templates.compute import (
    BOOT_DATABASE_WAIT_SECONDS,
    BOOT_HEALTH_WAIT_SECONDS,
    BOOT_TARGET_WAIT_SECONDS,
    LAUNCH_HOOK,
    SERVER_FACTS,
)
from templates.load_balancing import TARGET_KEEP_ALIVE_SECONDS
from templates.options import ECR_HOST_PATTERN, MASTODON_VERSION, RELEASE_TAG_PATTERN

REPO = Path(__file__).resolve().parents[2]
INSTANCE_DIR = REPO / "templates" / "instance"
STUB = Path(__file__).with_name("stub_command.sh")
STUBBED_COMMANDS = (
    "docker", "aws", "systemctl", "curl", "dnf", "nproc", "df", "dd", "mkswap", "swapon", "sysctl",
    "docker-credential-ecr-login",
)

INSTANCE_ID = "i-0123456789abcdef0"
TARGET_GROUPS = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup"
WEB_TARGET_GROUP_ARN = f"{TARGET_GROUPS}/mastodon-web/0123456789abcdef"
STREAMING_TARGET_GROUP_ARN = f"{TARGET_GROUPS}/mastodon-streaming/fedcba9876543210"
APP_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:mastodon-app-AbCdEf"
SMTP_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:mastodon-smtp-GhIjKl"
VERSION_PARAMETER = "/mastodon/test/deployed-version"
PREFIX_LIST_ID = "pl-3b927c52"
CLOUDFRONT_CIDRS = ["120.52.22.96/27", "205.251.249.0/24", "180.163.57.128/26", "3.172.0.0/18"]
VPC_CIDR = "10.20.0.0/16"
VERSION = MASTODON_VERSION

# Distinctive values so that a leak anywhere is found by a plain substring search.
APP_SECRET = {
    "SECRET_KEY_BASE": "skb-" + "a1" * 60,
    "OTP_SECRET": "otp-" + "b2" * 60,
    "ACTIVE_RECORD_ENCRYPTION_DETERMINISTIC_KEY": "ardk-c3c3c3c3c3c3c3c3c3c3c3c3",
    "ACTIVE_RECORD_ENCRYPTION_KEY_DERIVATION_SALT": "arks-d4d4d4d4d4d4d4d4d4d4d4d4",
    "ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY": "arpk-e5e5e5e5e5e5e5e5e5e5e5e5",
    "VAPID_PRIVATE_KEY": "vapidpriv-f6f6f6f6f6f6f6f6f6f6f6f6f6f6",
    "VAPID_PUBLIC_KEY": "BVapidPublicKeyG7G7G7G7G7G7G7G7G7G7G7G7G7G7G7G7G7G7",
    "DB_PASS": "dbpass-h8h8h8h8h8h8h8h8",
    "REDIS_PASSWORD": "redis+pass/word=i9i9i9i9i9",
    "SMTP_LOGIN": "AKIASMTPLOGINJ0J0J0J0",
    "SMTP_PASSWORD": "smtppass-k1k1k1k1k1k1k1k1k1k1",
    "SOMETHING_ELSE": "ignored-l2l2l2l2",
}
SECRET_VALUES = [
    v for k, v in APP_SECRET.items() if k not in ("SMTP_LOGIN", "SOMETHING_ELSE", "VAPID_PUBLIC_KEY")
]

# Fast waits: every timeout and interval of bootstrap.sh is overridable.
FAST = {
    "BOOTSTRAP_DB_WAIT_TIMEOUT": "1",
    "BOOTSTRAP_DB_POLL_INTERVAL": "0.05",
    "BOOTSTRAP_DB_CHECK_ATTEMPTS": "2",
    "BOOTSTRAP_HEALTH_TIMEOUT": "1",
    "BOOTSTRAP_TARGET_TIMEOUT": "1",
    "BOOTSTRAP_HEALTH_INTERVAL": "0.05",
    "BOOTSTRAP_WORKER_STABLE_SECONDS": "0",
    "BOOTSTRAP_RETRY_ATTEMPTS": "3",
    "BOOTSTRAP_RETRY_BACKOFF": "0",
}

# deploy.sh's waits, as fast as its overrides allow.
DEPLOY_FAST = {
    "DEPLOY_HEALTH_TIMEOUT": "1",
    "DEPLOY_HEALTH_INTERVAL": "0.05",
    "DEPLOY_WORKER_STABLE_SECONDS": "0",
    "DEPLOY_RETRY_ATTEMPTS": "3",
    "DEPLOY_RETRY_BACKOFF": "0",
    "DEPLOY_LOCK_TIMEOUT": "2",
}


def stack_env(role: str, **overrides: str) -> dict[str, str]:
    env = {
        "STACK_NAME": "mastodon-test",
        "AWS_REGION": "us-east-1",
        "ROLE": role,
        "SIGNAL_RESOURCE": {"web": "WebGroup", "queue": "QueueWorkerGroup"}.get(role, "WorkerGroup"),
        "LOCAL_DOMAIN": "social.example.com",
        "MASTODON_IMAGE": "ghcr.io/mastodon/mastodon",
        "STREAMING_IMAGE": "ghcr.io/mastodon/mastodon-streaming",
        "DEPLOYED_VERSION_PARAMETER": VERSION_PARAMETER,
        "APP_SECRET_ARN": APP_SECRET_ARN,
        "DB_HOST": "mastodon.cluster-abc.us-east-1.rds.amazonaws.com",
        "DB_PORT": "5432",
        "DB_NAME": "mastodon",
        "DB_USER": "mastodon",
        "REDIS_HOST": "master.mastodon.abc123.use1.cache.amazonaws.com",
        "REDIS_PORT": "6379",
        "CACHE_REDIS_HOST": "",
        "CACHE_REDIS_PORT": "",
        "S3_BUCKET": "mastodon-test-media-123456789012",
        "S3_ALIAS_HOST": "social.example.com/system",
        "SMTP_SERVER": "email-smtp.us-east-1.amazonaws.com",
        "SMTP_PORT": "587",
        "SMTP_FROM_ADDRESS": "notifications@social.example.com",
        "SMTP_LOGIN": "",
        "SMTP_PASSWORD_SECRET_ARN": "",
        # Mastodon's other settings: off unless a test names a source.
        "SETTINGS_PATH": "",
        "SETTINGS_SECRET_ARN": "",
        "LOG_GROUP_WEB": "/mastodon-test/web",
        "LOG_GROUP_STREAMING": "/mastodon-test/streaming",
        "LOG_GROUP_SIDEKIQ": "/mastodon-test/sidekiq",
        "LOG_GROUP_SYSTEM": "/mastodon-test/system",
        "MAX_CONNECTIONS": "80",
        "WEB_MAX_SIZE": "2",
        "QUEUE_WORKER_MAX_SIZE": "0",
        "MAIN_WORKER_QUEUES": sidekiq.ALL_QUEUES,
        "QUEUE_WORKER_QUEUES": ",".join(sidekiq.DEFAULT_QUEUE_WORKER_QUEUES),
        "ROLLOUT_SURGE": "1",
        "DB_CONNECTION_RESERVE": "10",
        "CLOUDFRONT_PREFIX_LIST_ID": PREFIX_LIST_ID,
        "VPC_CIDR": VPC_CIDR,
        "TAG_PATTERN": RELEASE_TAG_PATTERN,
        "VERSION_TAG": VERSION_TAG,
        "TARGET_KEEP_ALIVE_SECONDS": str(TARGET_KEEP_ALIVE_SECONDS),
        "BOOT_DATABASE_WAIT_SECONDS": str(BOOT_DATABASE_WAIT_SECONDS),
        "BOOT_HEALTH_WAIT_SECONDS": str(BOOT_HEALTH_WAIT_SECONDS),
        **SERVER_FACTS,
        **sidekiq.SERVER_FACTS,
        # The database growth options, off (templates/compute.py _database_growth_env).
        "DB_POOLER": "false", "PGBOUNCER_IMAGE": "", "PGBOUNCER_PORT": "",
        "REPLICA_DB_HOST": "", "REPLICA_DB_PORT": "", "REPLICA_MAX_CONNECTIONS": "",
        # Your own images: public ones (templates/compute.py _image_registry_env).
        "ECR_REGISTRY": "", "ECR_HOST_PATTERN": f"^{ECR_HOST_PATTERN}$", "ECR_PULL_GRANTS": " ",
        # Full-text search off, as templates/search.py writes it (tests/instance/test_instance_search.py).
        "ES_ENABLED": "false",
        **dict.fromkeys(("ES_HOST", "ES_PORT", "ES_USER", "ES_PRESET", "SEARCH_MARKER_INDEX",
                         "SEARCH_DEPLOY_FAILED"), ""),
    }
    if role == "worker":
        env["METRICS_NAMESPACE"] = ""
    if role == "web":
        env |= {
            "LAUNCH_HOOK": LAUNCH_HOOK,
            "WEB_TARGET_GROUP_ARN": WEB_TARGET_GROUP_ARN,
            "STREAMING_TARGET_GROUP_ARN": STREAMING_TARGET_GROUP_ARN,
            "BOOT_TARGET_WAIT_SECONDS": str(BOOT_TARGET_WAIT_SECONDS),
        }
    env.update(overrides)
    return env


@dataclass
class Run:
    """The outcome of one bootstrap run: exit code, files, log and recorded calls."""

    returncode: int
    root: Path
    stub_dir: Path
    output: str
    calls: list[dict] = field(default_factory=list)

    @property
    def log(self) -> str:
        return (self.root / "var/log/mastodon-bootstrap.log").read_text()

    def file(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def env_file(self) -> dict[str, str]:
        lines = self.file("/etc/mastodon/mastodon.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))

    def unit(self, name: str) -> str:
        return self.file(f"/etc/systemd/system/{name}.service").read_text()

    def commands(self, name: str, *prefix: str) -> list[list[str]]:
        return [
            c["args"] for c in self.calls if c["cmd"] == name and c["args"][: len(prefix)] == list(prefix)
        ]

    def signals(self) -> list[dict[str, str]]:
        found = []
        for args in self.commands("aws", "cloudformation", "signal-resource"):
            found.append(
                {
                    "status": args[args.index("--status") + 1],
                    "unique_id": args[args.index("--unique-id") + 1],
                    "resource": args[args.index("--logical-resource-id") + 1],
                }
            )
        return found

    def db_setup_runs(self) -> int:
        return sum(1 for args in self.commands("docker", "run") if "db:setup" in args)

    def db_state(self) -> str:
        return (self.stub_dir / "db_state").read_text().strip()

    def swaps(self) -> list[list[str]]:
        """The swap areas in use, as /proc/swaps lists them (file, type, KiB, ...)."""
        path = self.stub_dir / "swaps"
        return [line.split() for line in path.read_text().splitlines()[1:]] if path.exists() else []


def stub_key(text: str) -> str:
    """The file-name form of an ARN or name, as stub_command.sh computes it."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def write_stub_responses(
    stub_dir: Path, secrets: dict[str, str], db_state: str, settings: dict[str, str | list[str]]
) -> None:
    """Writes what the fake AWS CLI and Docker answer, shaped like the real responses."""
    for arn, secret_string in secrets.items():
        (stub_dir / f"secret-{stub_key(arn)}.json").write_text(
            json.dumps(
                {
                    "ARN": arn,
                    "Name": arn.rsplit(":", 1)[-1],
                    "SecretString": secret_string,
                    "VersionId": "b1f8a3c2-0000-4000-8000-000000000001",
                    "VersionStages": ["AWSCURRENT"],
                    "CreatedDate": "2026-01-01T00:00:00+00:00",
                }
            )
        )
    (stub_dir / f"parameter-{stub_key(VERSION_PARAMETER)}.json").write_text(
        json.dumps(
            {
                "Parameter": {
                    "Name": VERSION_PARAMETER,
                    "Type": "String",
                    "Value": VERSION,
                    "Version": 3,
                    "LastModifiedDate": "2026-01-01T00:00:00+00:00",
                    "DataType": "text",
                    "ARN": f"arn:aws:ssm:us-east-1:123456789012:parameter{VERSION_PARAMETER}",
                }
            }
        )
    )
    (stub_dir / f"prefix-list-{stub_key(PREFIX_LIST_ID)}.json").write_text(
        json.dumps({"Entries": [{"Cidr": cidr} for cidr in CLOUDFRONT_CIDRS]})
    )
    (stub_dir / "db_state").write_text(db_state)
    (stub_dir / "instance_id").write_text(INSTANCE_ID)
    for name, value in settings.items():
        text = "\n".join(value) + "\n" if isinstance(value, list) else str(value)
        (stub_dir / name).write_text(text)


def read_calls(stub_dir: Path) -> list[dict]:
    calls = []
    log = stub_dir / "calls.log"
    if log.exists():
        for line in log.read_text().splitlines():
            name, *args = line.split("\x1f")
            calls.append({"cmd": name, "args": args})
    for shipped in sorted(stub_dir.glob("shipped-log-*.json")):
        calls.append({"cmd": "aws-log-events", "args": [], "events": json.loads(shipped.read_text())})
    return calls


def make_runner(tmp_path: Path):
    """A function that runs bootstrap.sh as user data would, with stubs first on PATH.

    Runs in the same tmp_path share the server (files, swap in use); each Run's calls
    are that run's only.
    """

    def run(
        role: str,
        *,
        db_state: str = "initialized",
        memory_kib: int = 1_952_000,
        stack: dict[str, str] | None = None,
        secrets: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        **stub_config: str | list[str],
    ) -> Run:
        root = tmp_path / "root"
        stub_dir = tmp_path / "stub"
        bin_dir = tmp_path / "bin"
        for directory in (root / "etc/mastodon", root / "opt/mastodon-aws", stub_dir, bin_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for script in INSTANCE_DIR.glob("*.sh"):
            target = root / "opt/mastodon-aws" / script.name
            shutil.copy(script, target)
            target.chmod(0o755)
        lines = [f"{key}='{value}'" for key, value in stack_env(role, **(stack or {})).items()]
        (root / "etc/mastodon/stack.env").write_text("\n".join(lines) + "\n")
        for name in STUBBED_COMMANDS:
            if not (bin_dir / name).exists():
                (bin_dir / name).symlink_to(STUB)
        for previous in (stub_dir / "calls.log", *stub_dir.glob("shipped-log-*.json")):
            previous.unlink(missing_ok=True)
        write_stub_responses(
            stub_dir,
            secrets if secrets is not None else {APP_SECRET_ARN: json.dumps(APP_SECRET)},
            db_state,
            stub_config,
        )
        meminfo = tmp_path / "meminfo"
        meminfo.write_text(f"MemTotal:       {memory_kib} kB\nMemFree:          100000 kB\n")
        env = {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "HOME": str(tmp_path),
            "MASTODON_ROOT": str(root),
            "MEMINFO_FILE": str(meminfo),
            "SWAPS_FILE": str(stub_dir / "swaps"),
            "STUB_DIR": str(stub_dir),
            **FAST,
            **(env or {}),
        }
        proc = subprocess.run(
            [str(root / "opt/mastodon-aws/bootstrap.sh")], env=env, capture_output=True, text=True, timeout=60
        )
        calls = read_calls(stub_dir)
        return Run(proc.returncode, root, stub_dir, proc.stdout + proc.stderr, calls)

    return run


@pytest.fixture
def bootstrap(tmp_path: Path):
    return make_runner(tmp_path)


@pytest.fixture(scope="session")
def web_run(tmp_path_factory):
    """One successful web boot, shared by the tests that only read its results."""
    return make_runner(tmp_path_factory.mktemp("web"))("web")


@pytest.fixture(scope="session")
def worker_run(tmp_path_factory):
    """One successful worker boot on a fresh database."""
    return make_runner(tmp_path_factory.mktemp("worker"))("worker", db_state="empty")


def write_stack_env(root: Path, role: str, **overrides: str) -> None:
    """The server's stack.env under `root`, as the template writes it."""
    (root / "etc/mastodon/stack.env").write_text(
        "".join(f"{k}='{v}'\n" for k, v in stack_env(role, **overrides).items()))


def run_deploy(tmp_path: Path, root: Path, stub_dir: Path, path: list[Path], *args: str,
               **env: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """Runs deploy.sh with `path` first on PATH and fast waits (`env` overrides them); returns
    the process and the stubbed calls, each as its fields."""
    environment = {"PATH": ":".join([*map(str, path), os.environ["PATH"]]), "HOME": str(tmp_path),
                   "MASTODON_ROOT": str(root), "STUB_DIR": str(stub_dir), **DEPLOY_FAST, **env}
    proc = subprocess.run([str(INSTANCE_DIR / "deploy.sh"), *args], env=environment, capture_output=True,
                          text=True, timeout=30, check=False)
    log = stub_dir / "calls.log"
    calls = [line.split("\x1f") for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls
