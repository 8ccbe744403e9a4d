"""Full-text search on the servers: the env every container sees, and the worker's
background index creation (search.sh), once per domain, under stubs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from templates.search import SEARCH_DEPLOY_FAILED, SEARCH_MARKER_INDEX
from tests.instance.instance_harness import APP_SECRET, APP_SECRET_ARN, FAST, INSTANCE_ID, VERSION, read_calls

ES_HOST = "https://vpc-mastodon-search-abc123.us-east-1.es.amazonaws.com"
SEARCH_STACK = {
    "ES_ENABLED": "true",
    "ES_HOST": ES_HOST,
    "ES_PORT": "443",
    "ES_USER": "mastodon",
    "ES_PRESET": "small_cluster",
    "SEARCH_MARKER_INDEX": SEARCH_MARKER_INDEX,
    "SEARCH_DEPLOY_FAILED": SEARCH_DEPLOY_FAILED,
}
ES_PASS = "esPass-n4N4_n4n4.N4n4n4"
SEARCH_SECRET = {APP_SECRET_ARN: json.dumps({**APP_SECRET, "ES_PASS": ES_PASS})}
SEARCH_VARIABLES = ("ES_HOST", "ES_PORT", "ES_USER", "ES_PASS", "ES_PRESET")
SEARCH_UNIT = "mastodon-search-deploy"


def test_with_search_off_mastodon_is_told_so_and_given_no_domain(web_run, worker_run):
    for run in (web_run, worker_run):
        env = run.env_file()
        assert env["ES_ENABLED"] == "false"
        assert not set(SEARCH_VARIABLES) & set(env)
    assert not worker_run.file(f"/etc/systemd/system/{SEARCH_UNIT}.service").exists()
    assert not [c for c in worker_run.commands("systemctl") if SEARCH_UNIT in c]


@pytest.mark.parametrize("role", ["web", "worker"])
def test_with_search_on_every_container_sees_the_domain_over_https_on_443(bootstrap, role):
    run = bootstrap(role, stack=SEARCH_STACK, secrets=SEARCH_SECRET)
    assert run.returncode == 0, run.output
    env = run.env_file()
    assert {k: env[k] for k in ("ES_ENABLED", *SEARCH_VARIABLES)} == {
        "ES_ENABLED": "true",
        "ES_HOST": ES_HOST,
        "ES_PORT": "443",
        "ES_USER": "mastodon",
        "ES_PASS": ES_PASS,
        "ES_PRESET": "small_cluster",
    }
    # Every Mastodon container reads that one file.
    units = ["mastodon-web", "mastodon-streaming"] if role == "web" else ["mastodon-sidekiq"]
    for unit in units:
        assert "--env-file /etc/mastodon/mastodon.env" in run.unit(unit)
    assert ES_PASS not in run.log + run.output
    assert (run.file("/etc/mastodon/mastodon.env").stat().st_mode & 0o777) == 0o600


def test_search_on_without_its_password_in_the_secret_fails_the_boot_with_the_reason(bootstrap):
    run = bootstrap("worker", stack=SEARCH_STACK)  # the secret has no ES_PASS
    assert run.returncode != 0
    assert [s["status"] for s in run.signals()] == ["FAILURE"]
    assert "no ES_PASS" in run.signals()[0]["unique_id"] or "no ES_PASS" in run.log


def test_a_malformed_search_switch_fails_the_boot(bootstrap):
    run = bootstrap("web", stack={**SEARCH_STACK, "ES_ENABLED": "yes"}, secrets=SEARCH_SECRET)
    assert run.returncode != 0
    assert "ES_ENABLED must be true or false" in run.log


def test_the_worker_starts_the_index_creation_in_the_background_once_it_is_up(bootstrap):
    run = bootstrap("worker", stack=SEARCH_STACK, secrets=SEARCH_SECRET)
    assert run.returncode == 0, run.output
    unit = run.unit(SEARCH_UNIT)
    assert f"ExecStart=/opt/mastodon-aws/search.sh {INSTANCE_ID}" in unit
    assert "Type=oneshot" in unit and "WantedBy=multi-user.target" in unit
    calls = [(c["cmd"], c["args"]) for c in run.calls]
    start = calls.index(("systemctl", ["start", "--no-block", SEARCH_UNIT]))
    assert ("systemctl", ["enable", SEARCH_UNIT]) in calls[:start]
    # After Sidekiq runs, before the boot signal; and never in the boot itself.
    sidekiq = calls.index(("systemctl", ["enable", "--now", "mastodon-sidekiq"]))
    signal = next(
        i for i, (cmd, args) in enumerate(calls) if args[:2] == ["cloudformation", "signal-resource"]
    )
    assert sidekiq < start < signal
    assert not [c for c in run.commands("docker", "run") if "search" in c]
    assert [s["status"] for s in run.signals()] == ["SUCCESS"]


def test_a_web_server_never_creates_indexes(bootstrap):
    run = bootstrap("web", stack=SEARCH_STACK, secrets=SEARCH_SECRET)
    assert run.returncode == 0, run.output
    assert not run.file(f"/etc/systemd/system/{SEARCH_UNIT}.service").exists()
    assert not [c for c in run.commands("systemctl") if SEARCH_UNIT in c]


def test_a_failure_to_start_the_unit_does_not_fail_the_boot(bootstrap):
    run = bootstrap("worker", stack=SEARCH_STACK, secrets=SEARCH_SECRET, systemctl_fail=SEARCH_UNIT)
    assert run.returncode == 0, run.output
    assert [s["status"] for s in run.signals()] == ["SUCCESS"]
    assert "could not start mastodon-search-deploy" in run.log


# ---------------------------------------------------------------- search.sh


@pytest.fixture
def search(tmp_path: Path, bootstrap):
    """Boots a worker with search on, then returns a function that runs search.sh there."""
    booted = bootstrap("worker", stack=SEARCH_STACK, secrets=SEARCH_SECRET)
    assert booted.returncode == 0, booted.output
    root, stub_dir = booted.root, booted.stub_dir

    def run(**settings: str) -> tuple[int, str, list[dict]]:
        for name, value in settings.items():
            (stub_dir / name).write_text(value)
        for previous in (stub_dir / "calls.log", *stub_dir.glob("shipped-log-*.json")):
            previous.unlink(missing_ok=True)
        env = {
            "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
            "HOME": str(tmp_path),
            "MASTODON_ROOT": str(root),
            "STUB_DIR": str(stub_dir),
            "SEARCH_RETRY_ATTEMPTS": "2",
            "SEARCH_RETRY_BACKOFF": "0",
            **FAST,
        }
        proc = subprocess.run(
            [str(root / "opt/mastodon-aws/search.sh"), INSTANCE_ID],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return proc.returncode, proc.stdout + proc.stderr, read_calls(stub_dir)

    run.stub_dir = stub_dir  # type: ignore[attr-defined]
    return run


def deploys(calls: list[dict]) -> list[list[str]]:
    return [
        c["args"]
        for c in calls
        if c["cmd"] == "docker"
        and c["args"][:1] == ["run"]
        and "search" in c["args"]
        and "deploy" in c["args"]
    ]


def reported(calls: list[dict]) -> list[str]:
    return [e["message"] for c in calls if c["cmd"] == "aws-log-events" for e in c["events"]]



def test_search_sh_refuses_to_run_before_the_server_has_booted(search):
    (search.stub_dir.parent / "root/etc/mastodon/version.env").unlink()
    code, output, calls = search()
    assert code == 3
    assert "search.sh: " in output
    assert "version.env is missing: this server has not finished booting" in output
    assert not deploys(calls) and not reported(calls)

def test_first_enable_creates_the_indexes_then_records_them_in_the_domain(search):
    rc, output, calls = search()
    assert rc == 0, output
    [deploy] = deploys(calls)
    assert deploy[-5:] == ["bin/tootctl", "search", "deploy", "--concurrency", "5"]
    assert f"ghcr.io/mastodon/mastodon:{VERSION}" in deploy
    # Its output goes to the system log group, one stream per worker.
    assert "awslogs-group=/mastodon-test/system" in deploy
    assert f"awslogs-stream={INSTANCE_ID}/search-deploy" in deploy
    assert (search.stub_dir / "search_marker").read_text().strip() == f"{ES_HOST}:443/{SEARCH_MARKER_INDEX}"
    assert reported(calls)[-1].startswith("search deploy done")


def test_a_second_boot_finds_the_marker_and_leaves_the_domain_alone(search):
    assert search()[0] == 0
    rc, output, calls = search()
    assert rc == 0, output
    assert deploys(calls) == []
    assert "nothing to do" in output


def test_a_failed_deploy_is_reported_for_the_alarm_and_runs_again_at_the_next_boot(search):
    rc, output, calls = search(search_deploy_fail="1")
    assert rc == 1
    assert len(deploys(calls)) == 1
    assert not (search.stub_dir / "search_marker").exists()
    [failure] = [m for m in reported(calls) if SEARCH_DEPLOY_FAILED in m]
    assert failure.startswith(f"{SEARCH_DEPLOY_FAILED}: tootctl search deploy exited 1")
    rc, output, calls = search()
    assert rc == 0, output
    assert len(deploys(calls)) == 1
    assert (search.stub_dir / "search_marker").exists()
    assert not [m for m in reported(calls) if SEARCH_DEPLOY_FAILED in m]


def test_a_marker_created_whose_answer_was_lost_still_counts_as_done(search):
    rc, output, calls = search(search_put_lost="1")
    assert rc == 0, output
    assert (search.stub_dir / "search_marker").exists()
    assert reported(calls)[-1].startswith("search deploy done")
    rc, output, calls = search()
    assert rc == 0 and deploys(calls) == [], output


def test_an_unreachable_domain_is_reported_and_nothing_runs(search):
    rc, output, calls = search(search_domain="down")
    assert rc == 1, output
    assert deploys(calls) == []
    [failure] = [m for m in reported(calls) if SEARCH_DEPLOY_FAILED in m]
    assert "cannot read the search domain" in failure
    # Asked again before giving up.
    assert len([c for c in calls if c["cmd"] == "curl"]) == 2


def test_the_domain_password_travels_on_stdin_never_on_a_command_line(search):
    rc, output, calls = search()
    assert rc == 0, output
    assert all(ES_PASS not in " ".join(c["args"]) for c in calls)
    assert ES_PASS not in output
    assert (search.stub_dir / "search_curl_config").read_text() == f'user = "mastodon:{ES_PASS}"\n'


def test_with_search_off_the_script_does_nothing(search, tmp_path):
    root = tmp_path / "root"
    stack = root / "etc/mastodon/stack.env"
    stack.write_text(stack.read_text().replace("ES_ENABLED='true'", "ES_ENABLED='false'"))
    rc, output, calls = search()
    assert rc == 0, output
    assert calls == []
