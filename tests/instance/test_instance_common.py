"""common.sh, the library bootstrap.sh, deploy.sh and tootctl.sh share: its functions on
their own under stub commands, and the facts the scripts take from stack.env instead of
spelling them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from templates.capacity import ONE_OFF_DB_POOL
from templates.compute import ETC_DIR, IMDS_URL
from templates.load_balancing import STREAMING_HEALTH_PATH, STREAMING_PORT, WEB_HEALTH_PATH, WEB_PORT
from tests.instance.instance_harness import INSTANCE_DIR, STUB, VERSION, stack_env
from tests.instance.test_instance_bootstrap import exec_start

LIBRARY = INSTANCE_DIR / "common.sh"
# Other ports and paths than the template's, so that a script that spells its own fails.
MOVED = {"WEB_PORT": "3100", "WEB_HEALTH_PATH": "/up", "STREAMING_PORT": "4100",
         "STREAMING_HEALTH_PATH": "/streaming/up"}


Outcome = tuple[subprocess.CompletedProcess[str], list[list[str]]]


def shell(tmp_path: Path, script: str, **env: str) -> Outcome:
    """Runs SCRIPT in bash after sourcing common.sh, with docker and curl stubbed."""
    stubs, bin_dir = tmp_path / "stub", tmp_path / "bin"
    for directory in (stubs, bin_dir):
        directory.mkdir(exist_ok=True)
    for name in ("docker", "curl"):
        if not (bin_dir / name).exists():
            (bin_dir / name).symlink_to(STUB)
    proc = subprocess.run(
        ["bash", "-c", f'set -euo pipefail\nLOG_NAME=test\n. "{LIBRARY}"\n{script}'],
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_DIR": str(stubs),
             "MASTODON_ROOT": str(tmp_path / "root"), **env},
        capture_output=True, text=True, timeout=30, check=False)
    log = stubs / "calls.log"
    calls = [line.split("\x1f") for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def test_log_lines_name_the_script_and_the_step_when_there_is_one(tmp_path):
    proc, _ = shell(tmp_path, 'log "plain"; STEP="pull images"; log "in a step"')
    plain, stepped = proc.stderr.splitlines()
    assert plain.endswith(" test plain") and stepped.endswith(" test [pull images] in a step")
    assert proc.stdout == ""


def test_fail_exits_with_the_code_asked_for_and_the_reason_last_on_stderr(tmp_path):
    proc, _ = shell(tmp_path, 'fail "no room" 3; echo not reached')
    assert proc.returncode == 3 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1].endswith("FAILED: no room")


def test_retry_tries_again_with_a_doubling_wait_and_gives_up_after_the_attempts(tmp_path):
    script = 'n=0\nflaky() { n=$((n + 1)); [ "$n" -ge 3 ]; }\nretry flaky\necho "calls $n"\n'
    proc, _ = shell(tmp_path, script, RETRY_ATTEMPTS="3", RETRY_BACKOFF="0")
    assert proc.returncode == 0 and proc.stdout == "calls 3\n"
    assert "attempt 1 of 3 failed: flaky; retrying in 0s" in proc.stderr
    proc, _ = shell(tmp_path, 'n=0\nnever() { n=$((n + 1)); false; }\nretry never || echo "gave up after $n"',
                    RETRY_ATTEMPTS="2", RETRY_BACKOFF="0")
    assert proc.stdout == "gave up after 2\n"


@pytest.mark.parametrize(("sidekiq", "stays"), [("stable", True), ("restarting", False)])
def test_the_stability_watch_fails_a_sidekiq_that_changes_container(tmp_path, sidekiq, stays):
    (tmp_path / "stub").mkdir()
    (tmp_path / "stub" / "sidekiq").write_text(sidekiq)
    proc, calls = shell(tmp_path, 'sidekiq_stays "$(running_sidekiq)" 1 0.05 && echo stays || echo changed')
    assert proc.stdout == ("stays\n" if stays else "changed\n")
    assert sum(1 for c in calls if c[:2] == ["docker", "ps"]) >= 2, "looked more than once"


def test_the_health_probes_ask_the_ports_and_paths_stack_env_gives(tmp_path):
    proc, calls = shell(tmp_path, "web_healthy", **MOVED)
    assert proc.returncode == 0, proc.stderr
    assert [c[-1] for c in calls if c[0] == "curl"] == ["http://127.0.0.1:3100/up",
                                                       "http://127.0.0.1:4100/streaming/up"]


def test_a_one_off_container_runs_with_the_runtime_environment_and_its_pool(tmp_path):
    proc, calls = shell(tmp_path, "one_off 3 repo/image:v1 -e A=b -- bin/tool x 'y z'")
    assert proc.returncode == 0, proc.stderr
    assert calls == [["docker", "run", "--rm", "--network", "host", "--env-file", f"{ETC_DIR}/mastodon.env",
                      "-e", "DB_POOL=3", "-e", "A=b", "repo/image:v1", "bin/tool", "x", "y z"]]


def test_a_one_off_container_with_exec_takes_the_place_of_the_script(tmp_path):
    script = "one_off --exec 6 repo/image:v1 -- bin/tootctl media usage\necho not reached"
    proc, calls = shell(tmp_path, script)
    assert proc.returncode == 0 and "not reached" not in proc.stdout
    assert calls[0][-4:] == ["repo/image:v1", "bin/tootctl", "media", "usage"]


# --- the scripts take the facts from stack.env ------------------------------------------


def test_the_template_ports_and_paths_are_what_the_scripts_receive():
    env = stack_env("web")
    assert (env["WEB_PORT"], env["WEB_HEALTH_PATH"]) == (str(WEB_PORT), WEB_HEALTH_PATH)
    assert env["STREAMING_PORT"] == str(STREAMING_PORT)
    assert env["STREAMING_HEALTH_PATH"] == STREAMING_HEALTH_PATH
    assert (env["ONE_OFF_DB_POOL"], env["IMDS_URL"]) == (str(ONE_OFF_DB_POOL), IMDS_URL)


def test_a_web_server_listens_and_is_probed_where_stack_env_says(bootstrap):
    run = bootstrap("web", stack={**MOVED, "IMDS_URL": "http://192.0.2.1"})
    assert run.returncode == 0, run.output
    assert "-e PORT=3100 " in exec_start(run.unit("mastodon-web"))
    assert "-e PORT=4100 " in exec_start(run.unit("mastodon-streaming"))
    urls = {arg for args in run.commands("curl") for arg in args if arg.startswith("http")}
    assert {"http://127.0.0.1:3100/up", "http://127.0.0.1:4100/streaming/up"} <= urls
    assert "http://192.0.2.1/latest/api/token" in urls
    assert not any(":3000" in url or ":4000" in url or "169.254" in url for url in urls)


def test_the_worker_sizes_its_one_off_containers_from_stack_env(bootstrap):
    run = bootstrap("worker", db_state="empty", stack={"ONE_OFF_DB_POOL": "1"})
    assert run.returncode == 0, run.output
    one_offs = [args for args in run.commands("docker", "run") if "--name" not in args]
    assert one_offs and all(args[args.index("-e") + 1] == "DB_POOL=1" for args in one_offs)


@pytest.mark.parametrize("missing", ["WEB_PORT", "STREAMING_HEALTH_PATH", "ONE_OFF_DB_POOL", "IMDS_URL"])
def test_a_stack_env_without_a_fact_fails_the_boot_naming_it(bootstrap, missing):
    run = bootstrap("web", stack={missing: ""})
    assert run.returncode != 0
    assert f"{missing} is not set in stack.env" in run.log
    assert [s["status"] for s in run.signals()] == ["FAILURE"]


def deploy(tmp_path: Path, role: str, *args: str, **stack: str) -> Outcome:
    root, stubs, bin_dir = tmp_path / "root", tmp_path / "stub", tmp_path / "bin"
    for directory in (root / "etc/mastodon", stubs, bin_dir):
        directory.mkdir(parents=True, exist_ok=True)
    (root / "etc/mastodon/stack.env").write_text(
        "".join(f"{k}='{v}'\n" for k, v in stack_env(role, **stack).items()))
    (root / "etc/mastodon/version.env").write_text("MASTODON_VERSION=v4.6.2\n")
    for name in ("docker", "systemctl", "curl", "df"):
        (bin_dir / name).symlink_to(STUB)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path), "MASTODON_ROOT": str(root),
           "STUB_DIR": str(stubs), "DEPLOY_HEALTH_TIMEOUT": "1", "DEPLOY_HEALTH_INTERVAL": "0.05",
           "DEPLOY_WORKER_STABLE_SECONDS": "0", "DEPLOY_RETRY_BACKOFF": "0", "DEPLOY_LOCK_TIMEOUT": "2"}
    proc = subprocess.run([str(INSTANCE_DIR / "deploy.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=30, check=False)
    log = stubs / "calls.log"
    return proc, [line.split("\x1f") for line in log.read_text().splitlines()] if log.exists() else []


def test_a_deploy_probes_the_health_paths_stack_env_gives(tmp_path):
    proc, calls = deploy(tmp_path, "web", "deploy", VERSION, **MOVED)
    assert proc.returncode == 0, proc.stderr
    assert {c[-1] for c in calls if c[0] == "curl"} == {"http://127.0.0.1:3100/up",
                                                         "http://127.0.0.1:4100/streaming/up"}


def test_migrations_run_with_the_one_off_pool_stack_env_gives(tmp_path):
    proc, calls = deploy(tmp_path, "worker", "migrate", "pre", VERSION, ONE_OFF_DB_POOL="1")
    assert proc.returncode == 0, proc.stderr
    (migration,) = [c for c in calls if c[:2] == ["docker", "run"]]
    assert "DB_POOL=1" in migration and "SKIP_POST_DEPLOYMENT_MIGRATIONS=true" in migration


def test_a_deploy_refuses_a_stack_env_without_the_health_paths(tmp_path):
    proc, calls = deploy(tmp_path, "web", "deploy", VERSION, WEB_HEALTH_PATH="")
    assert proc.returncode != 0
    assert proc.stderr.splitlines()[-1].endswith("WEB_HEALTH_PATH is not set in stack.env")
    assert not [c for c in calls if c[:2] == ["docker", "pull"]]
