"""The optional PgBouncer and read replica on a server (issue 13 items 2 and 3): the env each
container sees, PgBouncer's files, and the paths that must reach the database directly."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from templates.options import PGBOUNCER_IMAGE, PGBOUNCER_PORT
from tests.instance.instance_harness import (
    APP_SECRET,
    APP_SECRET_ARN,
    INSTANCE_DIR,
    STUB,
    make_runner,
    stack_env,
)

RDS = "mastodon.cluster-abc.us-east-1.rds.amazonaws.com"
REPLICA = "mastodon-replica.abc.us-east-1.rds.amazonaws.com"
POOLER = {"DB_POOLER": "true", "PGBOUNCER_IMAGE": PGBOUNCER_IMAGE, "PGBOUNCER_PORT": str(PGBOUNCER_PORT)}
REPLICA_ENV = {"REPLICA_DB_HOST": REPLICA, "REPLICA_DB_PORT": "5432", "REPLICA_MAX_CONNECTIONS": "180"}
PASSWORD = APP_SECRET["DB_PASS"]


def boot(tmp_path_factory, role: str, **stack: str):
    state = "empty" if role == "worker" else "initialized"
    return make_runner(tmp_path_factory.mktemp(role))(role, db_state=state, stack=stack)


def booted(name: str, role: str, **stack: str):
    """A module-scoped fixture `name`: a server of `role` booted once with `stack`."""

    @pytest.fixture(scope="module", name=name)
    def fixture(tmp_path_factory):
        return boot(tmp_path_factory, role, **stack)

    return fixture


pooled_web = booted("pooled_web", "web", **POOLER)
pooled_worker = booted("pooled_worker", "worker", **POOLER, **REPLICA_ENV)
replicated_web = booted("replicated_web", "web", **REPLICA_ENV)
pooled_replicated_web = booted("pooled_replicated_web", "web", **POOLER, **REPLICA_ENV)


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def env_options(args: list[str]) -> dict[str, str]:
    """The -e KEY=VALUE options of a docker run, later ones winning as in docker."""
    return dict(args[i + 1].split("=", 1) for i, a in enumerate(args[:-1]) if a == "-e")


def runs(run, text: str) -> list[list[str]]:
    return [args for args in run.commands("docker", "run") if any(text in a for a in args)]


# --- the containers' environment ------------------------------------------------------


def test_without_the_options_the_environment_is_unchanged(web_run):
    env = web_run.env_file()
    assert (env["DB_HOST"], env["DB_PORT"], env["DB_SSLMODE"]) == (RDS, "5432", "require")
    assert not {k for k in env if k.startswith("REPLICA_") or k == "PREPARED_STATEMENTS"}
    assert not web_run.file("/etc/mastodon/pgbouncer").exists()
    assert "pgbouncer" not in web_run.log.lower()
    assert "-e DB_SSLMODE=no-verify" in web_run.unit("mastodon-streaming")


def test_behind_the_pooler_every_process_talks_to_pgbouncer_without_prepared_statements(pooled_web):
    assert pooled_web.returncode == 0, pooled_web.output
    env = pooled_web.env_file()
    assert (env["DB_HOST"], env["DB_PORT"]) == ("127.0.0.1", str(PGBOUNCER_PORT))
    assert env["PREPARED_STATEMENTS"] == "false"
    # Loopback only: PgBouncer offers no TLS there and speaks TLS to RDS itself.
    assert env["DB_SSLMODE"] == "disable"
    assert "-e DB_SSLMODE=disable" in pooled_web.unit("mastodon-streaming")
    assert "DB_SSLMODE=no-verify" not in pooled_web.unit("mastodon-streaming")


def test_a_replica_is_wired_through_replica_db_settings(replicated_web):
    assert replicated_web.returncode == 0, replicated_web.output
    env = replicated_web.env_file()
    assert {k: v for k, v in env.items() if k.startswith("REPLICA_")} == {
        "REPLICA_DB_HOST": REPLICA, "REPLICA_DB_PORT": "5432",
        # Mastodon ignores a replica without REPLICA_DB_NAME (DatabaseHelper#replica_enabled?).
        "REPLICA_DB_NAME": "mastodon", "REPLICA_DB_USER": "mastodon", "REPLICA_DB_PASS": PASSWORD,
        # db:setup and migrations never run against the replica.
        "REPLICA_DB_TASKS": "false",
    }
    assert env["DB_HOST"] == RDS


def test_a_pooled_replica_goes_through_its_own_pgbouncer_database(pooled_replicated_web):
    run = pooled_replicated_web
    assert run.returncode == 0, run.output
    env = run.env_file()
    assert (env["REPLICA_DB_HOST"], env["REPLICA_DB_PORT"], env["REPLICA_DB_NAME"]) == (
        "127.0.0.1", str(PGBOUNCER_PORT), "mastodon_replica")
    assert env["REPLICA_PREPARED_STATEMENTS"] == "false"
    ini = run.file("/etc/mastodon/pgbouncer/pgbouncer.ini").read_text()
    assert f"mastodon_replica = host={REPLICA} port=5432 dbname=mastodon" in ini


def pools_line(run) -> str:
    [line] = [a for a in run.log.splitlines() if "pools for" in a]
    return line.split("pools for", 1)[1]


def test_the_replicas_max_connections_bounds_the_pools_too(replicated_web, web_run, tmp_path):
    # Beside MAX_CONNECTIONS 80, a replica of 180 changes nothing; one of 40 halves the share.
    assert pools_line(replicated_web) == pools_line(web_run)
    small = make_runner(tmp_path)("web", stack={**REPLICA_ENV, "REPLICA_MAX_CONNECTIONS": "40"})
    assert small.returncode == 0, small.output
    assert f"CONNECTION_SHARE={(40 - 10) // 4} " in pools_line(small)


# --- PgBouncer's files and unit ---------------------------------------------------------


def test_pgbouncer_pools_transactions_with_scram_and_tls_to_the_database(pooled_web):
    ini = pooled_web.file("/etc/mastodon/pgbouncer/pgbouncer.ini").read_text()
    settings = dict(line.split(" = ", 1) for line in ini.splitlines() if " = " in line)
    assert settings["mastodon"] == f"host={RDS} port=5432 dbname=mastodon"
    assert settings["listen_addr"] == "127.0.0.1"
    assert settings["listen_port"] == str(PGBOUNCER_PORT)
    assert settings["pool_mode"] == "transaction"
    assert settings["auth_type"] == "scram-sha-256"
    assert settings["server_tls_sslmode"] == "require"
    # The server's share of max_connections (80 - 10 reserved, over 2 + 1 surge + 1 worker).
    assert settings["default_pool_size"] == settings["max_db_connections"] == str((80 - 10) // 4)
    assert int(settings["max_client_conn"]) >= 2 * 5 + 1 + 5
    assert PASSWORD not in ini


def test_the_password_file_is_readable_by_pgbouncer_only(pooled_web):
    userlist = pooled_web.file("/etc/mastodon/pgbouncer/userlist.txt")
    assert userlist.read_text() == f'"mastodon" "{PASSWORD}"\n'
    mode = userlist.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == 6432
    assert stat.S_IMODE(pooled_web.file("/etc/mastodon/pgbouncer").stat().st_mode) == 0o700
    assert PASSWORD not in pooled_web.log and PASSWORD not in pooled_web.unit("mastodon-pgbouncer")


def test_a_double_quote_in_the_password_is_doubled(tmp_path):
    secret = {**APP_SECRET, "DB_PASS": 'pa"ss'}
    run = make_runner(tmp_path)("web", stack=POOLER, secrets={APP_SECRET_ARN: json.dumps(secret)})
    assert run.returncode == 0, run.output
    assert run.file("/etc/mastodon/pgbouncer/userlist.txt").read_text() == '"mastodon" "pa""ss"\n'


def test_pgbouncer_runs_its_pinned_image_unprivileged_without_mastodons_environment(pooled_web):
    unit = pooled_web.unit("mastodon-pgbouncer")
    assert f" {PGBOUNCER_IMAGE}\n" in unit and "MASTODON_VERSION" not in unit
    assert "--user 6432:6432" in unit
    assert "-v /etc/mastodon/pgbouncer:/etc/pgbouncer:ro" in unit
    assert "--env-file" not in unit
    assert "awslogs-stream=i-0123456789abcdef0/pgbouncer" in unit
    [pull] = [a for a in pooled_web.commands("docker", "pull") if a[-1] == PGBOUNCER_IMAGE]
    assert pull
    enabled = [a[2:] for a in pooled_web.commands("systemctl", "enable")]
    first = enabled.index(["mastodon-pgbouncer"])
    assert enabled.index(["mastodon-pgbouncer", "mastodon-web", "mastodon-streaming"]) > first, (
        "PgBouncer runs, and passes its check, before Mastodon's processes start")


# --- what goes straight to the database -------------------------------------------------


def direct_settings(args: list[str]) -> tuple[str, str, str]:
    env = env_options(args)
    return env.get("DB_HOST", ""), env.get("DB_PORT", ""), env.get("DB_SSLMODE", "")


def test_db_setup_and_the_database_checks_connect_directly(pooled_worker):
    assert pooled_worker.returncode == 0, pooled_worker.output
    setups = runs(pooled_worker, "db:setup")
    checks = [a for a in runs(pooled_worker, "runner") if "SELECT version()" not in " ".join(a)]
    assert setups and checks
    for args in setups + checks:
        assert direct_settings(args) == (RDS, "5432", "require")
        env = env_options(args)
        assert (env["REPLICA_DB_HOST"], env["REPLICA_DB_NAME"]) == (REPLICA, "mastodon")


def test_the_boot_checks_a_query_through_pgbouncer_before_mastodon_starts(pooled_worker):
    [check] = [a for a in runs(pooled_worker, "runner") if "SELECT version()" in " ".join(a)]
    calls = pooled_worker.calls
    check_at = next(i for i, c in enumerate(calls)
                    if c["cmd"] == "docker" and "SELECT version()" in " ".join(c["args"]))
    sidekiq_at = next(i for i, c in enumerate(calls)
                      if c["cmd"] == "systemctl" and "mastodon-sidekiq" in c["args"])
    assert check_at < sidekiq_at
    assert "DB_HOST" not in env_options(check), "the check uses mastodon.env's pooler"
    assert "connected_to(role: :reading)" in check[-1], "and the replica's entry"


def test_a_broken_pooler_fails_the_boot_with_the_reason(tmp_path):
    run = make_runner(tmp_path)("web", stack=POOLER, pooler_state="broken")
    assert run.returncode != 0
    [signal] = run.signals()
    assert signal["status"] == "FAILURE"
    assert "no query passes through PgBouncer" in run.log
    started = [a for a in run.commands("systemctl", "enable") if "mastodon-web" in a]
    assert not started, "Mastodon never starts"
    [abandon] = run.commands("aws", "autoscaling", "complete-lifecycle-action")
    assert option(abandon, "--lifecycle-action-result") == "ABANDON"


@pytest.mark.parametrize("setting, value, message", [
    ("DB_POOLER", "yes", "DB_POOLER must be true or false"),
    ("PGBOUNCER_IMAGE", "", "PGBOUNCER_IMAGE"),
])
def test_a_bad_pooler_setting_fails_before_anything_runs(tmp_path, setting, value, message):
    run = make_runner(tmp_path)("web", stack={**POOLER, setting: value})
    assert run.returncode != 0 and message in run.log
    assert not run.commands("docker", "run")


def test_a_replica_without_its_budget_fails_before_anything_runs(tmp_path):
    run = make_runner(tmp_path)("web", stack={**REPLICA_ENV, "REPLICA_MAX_CONNECTIONS": ""})
    assert run.returncode != 0 and "REPLICA_MAX_CONNECTIONS" in run.log


def script_run(tmp_path: Path, script: str, *args: str, **stack: str) -> list[list[str]]:
    """deploy.sh or tootctl.sh on a booted worker, stack.env with `stack`; the docker runs."""
    root, stubs, bin_dir = tmp_path / "root", tmp_path / "stub", tmp_path / "bin"
    for directory in (root / "etc/mastodon", stubs, bin_dir):
        directory.mkdir(parents=True, exist_ok=True)
    env_lines = [f"{k}='{v}'" for k, v in stack_env("worker", **stack).items()]
    (root / "etc/mastodon/stack.env").write_text("\n".join(env_lines) + "\n")
    (root / "etc/mastodon/version.env").write_text("MASTODON_VERSION=v4.7.6\n")
    (root / "etc/mastodon/mastodon.env").write_text("DB_HOST=127.0.0.1\n")
    for name in ("docker", "systemctl", "curl"):
        (bin_dir / name).symlink_to(STUB)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path), "MASTODON_ROOT": str(root),
           "STUB_DIR": str(stubs), "DEPLOY_RETRY_BACKOFF": "0"}
    proc = subprocess.run(["bash", str(INSTANCE_DIR / script), *args], env=env, capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    log = stubs / "calls.log"
    calls = [line.split("\x1f") for line in log.read_text().splitlines()]
    return [call[1:] for call in calls if call[:2] == ["docker", "run"]]


@pytest.mark.parametrize("phase", ["pre", "post"])
def test_the_rollouts_migrations_connect_directly(tmp_path, phase):
    [migration] = script_run(tmp_path, "deploy.sh", "migrate", phase, "v4.7.6", **POOLER, **REPLICA_ENV)
    assert migration[-1] == "db:migrate"
    assert direct_settings(migration) == (RDS, "5432", "require")
    assert env_options(migration)["REPLICA_DB_HOST"] == REPLICA


def test_tootctl_connects_directly(tmp_path):
    [call] = script_run(tmp_path, "tootctl.sh", "media", "remove", "--days", "7", **POOLER)
    assert direct_settings(call) == (RDS, "5432", "require")
    assert "REPLICA_DB_HOST" not in env_options(call)


def test_without_the_pooler_one_off_containers_are_unchanged(tmp_path):
    [call] = script_run(tmp_path, "tootctl.sh", "media", "remove")
    assert env_options(call) == {"DB_POOL": "6"}
