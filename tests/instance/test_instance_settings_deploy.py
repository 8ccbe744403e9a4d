"""Mastodon's other settings after boot: deploy.sh reads them again when it restarts the units,
and `deploy.sh settings` applies a change without a new version (scripts/settings.py).

deploy.sh runs for real under the stub commands; the server already runs OLD with the
settings in SETTINGS_IN_USE.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.instance.instance_harness import STUB, run_deploy, stub_key, write_stack_env
from tests.instance.test_instance_settings import (
    ON,
    SETTINGS_PATH,
    SETTINGS_SECRET_ARN,
    parameters_answer,
)

OLD, NEW = "v4.6.2", "v4.7.6"
SECRET_VALUE = "hcaptcha-secret-3b3b3b3b3b3b3b3b"
# As render_settings wrote it at boot.
SETTINGS_IN_USE = ("# Rendered by render_settings (common.sh); rewritten at boot and by every deploy.\n"
                   "HCAPTCHA_SECRET_KEY=hcaptcha-secret-3b3b3b3b3b3b3b3b\nSINGLE_USER_MODE=false\n")
UNITS = {"web": ("mastodon-web", "mastodon-streaming"), "worker": ("mastodon-sidekiq",)}


def deploy(tmp_path: Path, role: str, *args: str, plain: dict[str, str] | None = None,
           stack: dict[str, str] | None = None,
           **stubs: str) -> tuple[subprocess.CompletedProcess[str], list]:
    root, stub_dir, bin_dir = tmp_path / "root", tmp_path / "stub", tmp_path / "bin"
    etc = root / "etc/mastodon"
    for directory in (etc, root / "etc/systemd/system", stub_dir, bin_dir):
        directory.mkdir(parents=True, exist_ok=True)
    write_stack_env(root, role, **(ON if stack is None else stack))
    if not (etc / "version.env").exists():
        (etc / "version.env").write_text(f"MASTODON_VERSION={OLD}\n")
        (etc / "mastodon.env").write_text("LOCAL_DOMAIN=social.example.com\nRAILS_SERVE_STATIC_FILES=true\n")
        (etc / "settings.env").write_text(SETTINGS_IN_USE)
        for unit in UNITS[role]:
            (root / f"etc/systemd/system/{unit}.service").write_text(
                "ExecStart=/usr/bin/docker run --rm -e PORT=3000 -e BIND=0.0.0.0 \\\n"
                "  -e PUMA_NEW_KNOB=1 \\\n")
    for name in ("docker", "systemctl", "curl", "df", "aws"):
        if not (bin_dir / name).exists():
            (bin_dir / name).symlink_to(STUB)
    (stub_dir / f"secret-{stub_key(SETTINGS_SECRET_ARN)}.json").write_text(json.dumps(
        {"ARN": SETTINGS_SECRET_ARN, "SecretString": json.dumps({"HCAPTCHA_SECRET_KEY": SECRET_VALUE})}))
    (stub_dir / f"parameters-by-path-{stub_key(SETTINGS_PATH)}.json").write_text(
        parameters_answer({"SINGLE_USER_MODE": "false"} if plain is None else plain))
    (stub_dir / "calls.log").unlink(missing_ok=True)
    for name, value in stubs.items():
        (stub_dir / name).write_text(value)
    return run_deploy(tmp_path, root, stub_dir, [bin_dir], *args)


def settings(tmp_path: Path) -> str:
    return (tmp_path / "root/etc/mastodon/settings.env").read_text()


def version(tmp_path: Path) -> str:
    return (tmp_path / "root/etc/mastodon/version.env").read_text()


def restarts(calls: list[list[str]]) -> list[list[str]]:
    return [c for c in calls if c[:2] == ["systemctl", "restart"]]


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stderr.strip().splitlines()[-1]


def test_a_deploy_reads_the_settings_again_before_it_restarts(tmp_path):
    proc, calls = deploy(tmp_path, "web", "deploy", NEW, plain={"SINGLE_USER_MODE": "true"})
    assert proc.returncode == 0, proc.stderr
    assert "SINGLE_USER_MODE=true" in settings(tmp_path)
    reads = [i for i, c in enumerate(calls) if c[:2] == ["aws", "ssm"]]
    (restart,) = [i for i, c in enumerate(calls) if c[:2] == ["systemctl", "restart"]]
    assert reads and max(reads) < restart
    assert SECRET_VALUE not in proc.stdout + proc.stderr


def test_changed_settings_restart_the_units_even_on_the_version_that_runs(tmp_path):
    proc, calls = deploy(tmp_path, "worker", "deploy", OLD, plain={"SINGLE_USER_MODE": "true"})
    assert proc.returncode == 0, proc.stderr
    assert restarts(calls) == [["systemctl", "restart", "mastodon-sidekiq"]]
    assert "SINGLE_USER_MODE=true" in settings(tmp_path)


def test_unchanged_settings_on_the_version_that_runs_restart_nothing(tmp_path):
    proc, calls = deploy(tmp_path, "web", "deploy", OLD)
    assert proc.returncode == 0, proc.stderr
    assert "(unchanged)" in proc.stdout
    assert not restarts(calls)
    assert "SINGLE_USER_MODE=false" in settings(tmp_path)


def test_refused_settings_stop_a_deploy_to_a_new_version_before_anything_changes(tmp_path):
    proc, calls = deploy(tmp_path, "web", "deploy", NEW, plain={"DB_HOST": "db.elsewhere.example"})
    assert proc.returncode != 0
    assert "refused DB_HOST" in last_line(proc), "the rollout quotes the last line"
    assert version(tmp_path) == f"MASTODON_VERSION={OLD}\n"
    assert settings(tmp_path) == SETTINGS_IN_USE
    assert not restarts(calls)


def test_a_rollback_to_the_version_that_runs_keeps_the_settings_in_use_when_new_ones_are_refused(tmp_path):
    # The rollout failed on the refusal; its rollback must not fail on it too.
    proc, calls = deploy(tmp_path, "web", "deploy", OLD, plain={"LOCAL_DOMAIN": "other.example"})
    assert proc.returncode == 0, proc.stderr
    assert "keeping the settings in use" in proc.stderr and "refused LOCAL_DOMAIN" in proc.stderr
    assert settings(tmp_path) == SETTINGS_IN_USE
    assert not restarts(calls)


def test_a_put_back_after_new_settings_failed_health_runs_the_previous_settings(tmp_path):
    # The rollout deploys NEW, which fails health with BAD=1, then puts OLD back while the
    # source still holds BAD=1: OLD must come back on the settings it ran with.
    bad = {"SINGLE_USER_MODE": "false", "BAD": "1"}
    proc, calls = deploy(tmp_path, "web", "deploy", NEW, plain=bad, unhealthy_with="BAD=1")
    assert proc.returncode != 0
    assert "the previous settings are back" in last_line(proc)
    assert settings(tmp_path) == SETTINGS_IN_USE

    proc, calls = deploy(tmp_path, "web", "deploy", OLD, plain=bad, unhealthy_with="BAD=1")
    assert proc.returncode == 0, proc.stderr
    assert f"deployed {OLD} on web (was {NEW})" in proc.stdout
    assert settings(tmp_path) == SETTINGS_IN_USE
    assert version(tmp_path) == f"MASTODON_VERSION={OLD}\n"
    assert restarts(calls) == [["systemctl", "restart", "mastodon-web", "mastodon-streaming"]]

    # Deploying NEW again still tries the settings (they may have been right, NEW wrong).
    (tmp_path / "stub/unhealthy_with").unlink()
    proc, _ = deploy(tmp_path, "web", "deploy", NEW, plain=bad)
    assert proc.returncode == 0, proc.stderr
    assert "BAD=1" in settings(tmp_path)


def test_a_name_a_unit_sets_is_refused_even_if_no_list_names_it(tmp_path):
    # Owned names are read from what the stack wrote: a new -e option of a unit counts.
    proc, _ = deploy(tmp_path, "web", "deploy", NEW, plain={"PUMA_NEW_KNOB": "2"})
    assert proc.returncode != 0
    assert "refused PUMA_NEW_KNOB" in last_line(proc)


def test_a_throttled_read_during_a_deploy_is_retried(tmp_path):
    proc, _ = deploy(tmp_path, "web", "deploy", NEW, plain={"SINGLE_USER_MODE": "true"},
                     **{"fail-ssm-get-parameters-by-path": "2"})
    assert proc.returncode == 0, proc.stderr
    assert "SINGLE_USER_MODE=true" in settings(tmp_path)


def test_apply_restarts_only_when_the_settings_changed(tmp_path):
    proc, calls = deploy(tmp_path, "web", "settings")
    assert proc.returncode == 0, proc.stderr
    assert "settings unchanged on web" in proc.stdout
    assert not restarts(calls)

    proc, calls = deploy(tmp_path, "web", "settings", plain={"SINGLE_USER_MODE": "true"})
    assert proc.returncode == 0, proc.stderr
    assert f"applied the settings on web ({OLD})" in proc.stdout
    assert restarts(calls) == [["systemctl", "restart", "mastodon-web", "mastodon-streaming"]]
    assert "SINGLE_USER_MODE=true" in settings(tmp_path)
    assert version(tmp_path) == f"MASTODON_VERSION={OLD}\n"


def test_apply_puts_the_previous_settings_back_when_the_new_ones_leave_the_server_unhealthy(tmp_path):
    proc, calls = deploy(tmp_path, "web", "settings", plain={"SINGLE_USER_MODE": "true"}, health="down")
    assert proc.returncode != 0
    assert settings(tmp_path) == SETTINGS_IN_USE
    assert len(restarts(calls)) == 2, "once with the new settings, once with the previous ones"
    assert "putting the previous ones back" in proc.stderr


def test_apply_refuses_bad_settings_and_restarts_nothing(tmp_path):
    proc, calls = deploy(tmp_path, "worker", "settings", plain={"OIDC-ISSUER": "https://id.example"})
    assert proc.returncode != 0
    assert "refused OIDC-ISSUER" in last_line(proc)
    assert settings(tmp_path) == SETTINGS_IN_USE
    assert not restarts(calls)


def test_apply_without_a_settings_source_says_how_to_add_one(tmp_path):
    proc, calls = deploy(tmp_path, "web", "settings", stack={})
    assert proc.returncode != 0
    assert "MastodonSettings" in last_line(proc)
    assert not [c for c in calls if c[0] == "aws"]


def test_without_a_source_a_deploy_reads_nothing(tmp_path):
    proc, calls = deploy(tmp_path, "web", "deploy", NEW, stack={})
    assert proc.returncode == 0, proc.stderr
    assert not [c for c in calls if c[0] == "aws"]


def test_migrations_see_the_settings(tmp_path):
    proc, calls = deploy(tmp_path, "worker", "migrate", "pre", NEW)
    assert proc.returncode == 0, proc.stderr
    (migration,) = [c for c in calls if c[:2] == ["docker", "run"] and "db:migrate" in c]
    assert "/etc/mastodon/settings.env" in migration
