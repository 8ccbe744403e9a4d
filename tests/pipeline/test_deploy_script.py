"""deploy.sh, run for real under stub commands: deploys, migrations and their failures."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.instance.instance_harness import STUB, run_deploy, write_stack_env

OLD, NEW = "v4.6.2", "v4.7.6"
# docker for these tests: `docker run ... db:migrate` fails when the file migrate_fail exists.
DOCKER = """#!/bin/bash
if [ "$1" = run ] && [ -f "$STUB_DIR/migrate_fail" ] && [[ " $* " == *" db:migrate "* ]]; then
  printf '%s\\x1f' docker "$@" >>"$STUB_DIR/calls.log"; echo >>"$STUB_DIR/calls.log"
  echo "PG::DuplicateColumn: column already exists" >&2
  exit 1
fi
exec "$STUB_BIN/docker" "$@"
"""


def run(
    tmp_path: Path, role: str, *args: str, stack_env: dict[str, str] | None = None, **settings: str
) -> tuple[subprocess.CompletedProcess[str], list]:
    root, stubs, bin_dir, wrap = (tmp_path / d for d in ("root", "stub", "bin", "wrap"))
    for directory in (root / "etc/mastodon", stubs, bin_dir, wrap):
        directory.mkdir(parents=True, exist_ok=True)
    write_stack_env(root, role, **(stack_env or {}))
    if not (root / "etc/mastodon/version.env").exists():
        (root / "etc/mastodon/version.env").write_text(f"MASTODON_VERSION={OLD}\n")
    for name in ("docker", "systemctl", "curl"):
        if not (bin_dir / name).exists():
            (bin_dir / name).symlink_to(STUB)
    (wrap / "docker").write_text(DOCKER)
    (wrap / "docker").chmod(0o755)
    for name, value in settings.items():
        (stubs / name).write_text(value)
    return run_deploy(tmp_path, root, stubs, [wrap, bin_dir], *args, STUB_BIN=str(bin_dir))


def version_file(tmp_path: Path) -> str:
    return (tmp_path / "root/etc/mastodon/version.env").read_text()


def test_a_web_deploy_pulls_both_images_points_the_units_at_the_tag_and_waits_for_health(tmp_path):
    proc, calls = run(tmp_path, "web", "deploy", NEW)
    assert proc.returncode == 0, proc.stderr
    assert f"deployed {NEW} on web (was {OLD})" in proc.stdout
    pulls = [c[-1] for c in calls if c[:2] == ["docker", "pull"]]
    assert pulls == [f"ghcr.io/mastodon/mastodon:{NEW}", f"ghcr.io/mastodon/mastodon-streaming:{NEW}"]
    assert version_file(tmp_path) == f"MASTODON_VERSION={NEW}\n"
    assert ["systemctl", "restart", "mastodon-web", "mastodon-streaming"] in calls
    health = [c[-1] for c in calls if c[0] == "curl"]
    assert (
        "http://127.0.0.1:3000/health" in health and "http://127.0.0.1:4000/api/v1/streaming/health" in health
    )


def test_the_worker_deploy_restarts_sidekiq_only(tmp_path):
    proc, calls = run(tmp_path, "worker", "deploy", NEW)
    assert proc.returncode == 0, proc.stderr
    assert ["systemctl", "restart", "mastodon-sidekiq"] in calls
    assert [c[-1] for c in calls if c[:2] == ["docker", "pull"]] == [f"ghcr.io/mastodon/mastodon:{NEW}"]


def test_a_failing_pull_changes_nothing_and_says_which_image(tmp_path):
    image = f"ghcr.io/mastodon/mastodon-streaming:{NEW}"
    proc, calls = run(tmp_path, "web", "deploy", NEW, pull_fail=image + "\n")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].endswith(f"docker pull {image} failed after 3 attempts")
    assert len([c for c in calls if c[:2] == ["docker", "pull"] and c[-1] == image]) == 3
    assert version_file(tmp_path) == f"MASTODON_VERSION={OLD}\n"
    assert not [c for c in calls if c[0] == "systemctl"]


def test_a_container_that_never_turns_healthy_fails_the_deploy_with_the_reason(tmp_path):
    proc, calls = run(tmp_path, "web", "deploy", NEW, health="down")
    assert proc.returncode != 0
    assert "mastodon-web mastodon-streaming not healthy within 1s" in proc.stderr
    assert ["docker", "logs", "--tail", "20", "mastodon-web"] in calls


def test_deploying_the_running_healthy_version_restarts_nothing(tmp_path):
    run(tmp_path, "web", "deploy", NEW)
    proc, calls = run(tmp_path, "web", "deploy", NEW)
    assert proc.returncode == 0 and "(unchanged)" in proc.stdout
    assert len([c for c in calls if c[:2] == ["systemctl", "restart"]]) == 1


@pytest.mark.parametrize("phase, skip", [("pre", True), ("post", False)])
def test_migrations_run_as_a_one_off_container_of_the_new_image(tmp_path, phase, skip):
    proc, calls = run(tmp_path, "worker", "migrate", phase, NEW)
    assert proc.returncode == 0, proc.stderr
    (migration,) = [c for c in calls if c[:2] == ["docker", "run"]]
    assert f"ghcr.io/mastodon/mastodon:{NEW}" in migration
    assert migration[-4:] == ["bundle", "exec", "rails", "db:migrate"]
    assert ("SKIP_POST_DEPLOYMENT_MIGRATIONS=true" in migration) is skip
    assert version_file(tmp_path) == f"MASTODON_VERSION={OLD}\n", "a migration does not deploy"


def test_a_failed_migration_exits_non_zero_with_the_reason(tmp_path):
    proc, _ = run(tmp_path, "worker", "migrate", "pre", NEW, migrate_fail="1")
    assert proc.returncode != 0
    assert "the pre-deployment migrations of v4.7.6 failed" in proc.stderr


@pytest.mark.parametrize(
    "args", [("deploy", "latest"), ("deploy",), ("migrate", "sideways", NEW), ("deploy", "v4.7.6; reboot")]
)
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, args):
    proc, calls = run(tmp_path, "web", *args)
    assert proc.returncode == 2
    assert calls == []


def test_a_queue_worker_deploy_restarts_its_sidekiq_only(tmp_path):
    proc, calls = run(tmp_path, "queue", "deploy", NEW)
    assert proc.returncode == 0, proc.stderr
    assert f"deployed {NEW} on queue (was {OLD})" in proc.stdout
    assert ["systemctl", "restart", "mastodon-sidekiq"] in calls
    assert [c[-1] for c in calls if c[:2] == ["docker", "pull"]] == [f"ghcr.io/mastodon/mastodon:{NEW}"]


def test_migrations_are_refused_on_a_queue_worker(tmp_path):
    proc, calls = run(tmp_path, "queue", "migrate", "pre", NEW)
    assert proc.returncode != 0 and "run on the worker" in proc.stderr
    assert not [c for c in calls if c[:2] == ["docker", "run"]]


def test_migrations_are_refused_on_a_web_server(tmp_path):
    proc, calls = run(tmp_path, "web", "migrate", "pre", NEW)
    assert proc.returncode != 0 and "run on the worker" in proc.stderr
    assert not [c for c in calls if c[:2] == ["docker", "run"]]


# What `docker images --format '{{.Repository}}:{{.Tag}}'` lists on a server that ran
# OLDER, then OLD, and has pulled NEW: a release is ~1-1.3 GB on an 8 GiB root volume.
OLDER = "v4.5.9"
IMAGES_ON_DISK = "".join(
    f"{repository}:{tag}\n"
    for repository in ("ghcr.io/mastodon/mastodon", "ghcr.io/mastodon/mastodon-streaming")
    for tag in (OLDER, OLD, NEW)
) + "ghcr.io/mastodon/mastodon:<none>\npublic.ecr.aws/cloudwatch-agent/cloudwatch-agent:1.3\n"


def removed(calls: list) -> list[str]:
    return [c[-1] for c in calls if c[:2] == ["docker", "rmi"]]


@pytest.mark.parametrize("role", ["web", "worker"])
def test_a_deploy_removes_the_images_older_than_the_version_it_replaced(tmp_path, role):
    proc, calls = run(tmp_path, role, "deploy", NEW, images=IMAGES_ON_DISK)
    assert proc.returncode == 0, proc.stderr
    assert sorted(removed(calls)) == [
        f"ghcr.io/mastodon/mastodon-streaming:{OLDER}",
        f"ghcr.io/mastodon/mastodon:{OLDER}",
    ], "only the images older than the replaced version go: the replaced one stays for a rollback"
    restarted = next(i for i, c in enumerate(calls) if c[:2] == ["systemctl", "restart"])
    first_removal = next(i for i, c in enumerate(calls) if c[:2] == ["docker", "rmi"])
    assert first_removal > restarted, "images are removed only once the new version serves"


def test_a_failed_deploy_removes_no_image(tmp_path):
    proc, calls = run(tmp_path, "web", "deploy", NEW, images=IMAGES_ON_DISK, health="down")
    assert proc.returncode != 0
    assert removed(calls) == [] and ["docker", "images"] not in [c[:2] for c in calls]


def test_an_unchanged_deploy_removes_no_image(tmp_path):
    run(tmp_path, "web", "deploy", NEW)
    proc, calls = run(tmp_path, "web", "deploy", NEW, images=IMAGES_ON_DISK)
    assert proc.returncode == 0 and "(unchanged)" in proc.stdout
    assert removed(calls) == []


def test_an_image_that_cannot_be_removed_is_logged_and_the_deploy_still_succeeds(tmp_path):
    stuck = f"ghcr.io/mastodon/mastodon:{OLDER}"
    proc, calls = run(tmp_path, "web", "deploy", NEW, images=IMAGES_ON_DISK, rmi_fail=stuck + "\n")
    assert proc.returncode == 0, proc.stderr
    assert f"deployed {NEW} on web (was {OLD})" in proc.stdout
    assert f"could not remove the old image {stuck}" in proc.stderr
    assert f"ghcr.io/mastodon/mastodon-streaming:{OLDER}" in removed(calls)
