"""deploy.sh and the images behind a tag: a tag pushed again with new images restarts the
units although the version is unchanged, and every deploy says which images (registry
digests) its units run, for the rollout to record.

docker here answers from files: image_ids (REF ID lines: what a tag names after the pull),
containers (UNIT ID lines: what a unit's container runs) and repo_digests (REF REPO@DIGEST
lines: docker's RepoDigests of a local image)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.instance.instance_harness import STUB, run_deploy, write_stack_env

V = "v4.7.6"
WEB, STREAMING = "ghcr.io/mastodon/mastodon", "ghcr.io/mastodon/mastodon-streaming"
OLD_ID, NEW_ID = "sha256:" + "1" * 64, "sha256:" + "2" * 64
WEB_DIGEST, STREAMING_DIGEST = "sha256:" + "a" * 64, "sha256:" + "b" * 64
DOCKER = """#!/bin/bash
lookup() { awk -v k="$1" '$1 == k { print $2; found = 1 } END { exit !found }' "$STUB_DIR/$2" 2>/dev/null; }
case "$1 $2 $3" in
  "image inspect --format")
    printf '%s\\x1f' docker "$@" >>"$STUB_DIR/calls.log"; echo >>"$STUB_DIR/calls.log"
    case $4 in
      "{{.Id}}") lookup "$5" image_ids || { echo "Error: No such image: $5" >&2; exit 1; } ;;
      *) lookup "$5" repo_digests || exit 1 ;;
    esac
    exit 0
    ;;
  "inspect --format {{.Image}}")
    lookup "$4" containers || { echo "Error: No such object: $4" >&2; exit 1; }
    exit 0
    ;;
esac
exec "$STUB_BIN/docker" "$@"
"""


def run(tmp_path: Path, role: str, running: str, *, image_ids: str, containers: str,
        repo_digests: str = "") -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    root, stubs, bin_dir, wrap = (tmp_path / d for d in ("root", "stub", "bin", "wrap"))
    for directory in (root / "etc/mastodon", stubs, bin_dir, wrap):
        directory.mkdir(parents=True, exist_ok=True)
    write_stack_env(root, role)
    (root / "etc/mastodon/version.env").write_text(f"MASTODON_VERSION={running}\n")
    for name in ("docker", "systemctl", "curl"):
        if not (bin_dir / name).exists():
            (bin_dir / name).symlink_to(STUB)
    (wrap / "docker").write_text(DOCKER)
    (wrap / "docker").chmod(0o755)
    for name, value in (("image_ids", image_ids), ("containers", containers), ("repo_digests", repo_digests)):
        (stubs / name).write_text(value)
    return run_deploy(tmp_path, root, stubs, [wrap, bin_dir], "deploy", V, STUB_BIN=str(bin_dir))


def restarts(calls: list[list[str]]) -> list[list[str]]:
    return [c for c in calls if c[:2] == ["systemctl", "restart"]]


def test_the_running_tag_pushed_again_with_new_images_restarts_the_units(tmp_path):
    proc, calls = run(tmp_path, "web", V,
                      image_ids=f"{WEB}:{V} {NEW_ID}\n{STREAMING}:{V} {NEW_ID}\n",
                      containers=f"mastodon-web {OLD_ID}\nmastodon-streaming {OLD_ID}\n")
    assert proc.returncode == 0, proc.stderr
    assert restarts(calls) == [["systemctl", "restart", "mastodon-web", "mastodon-streaming"]]
    assert "(unchanged)" not in proc.stdout
    assert "pushed again with new images" in proc.stderr


def test_only_the_streaming_image_pushed_again_restarts_the_units_too(tmp_path):
    proc, calls = run(tmp_path, "web", V,
                      image_ids=f"{WEB}:{V} {OLD_ID}\n{STREAMING}:{V} {NEW_ID}\n",
                      containers=f"mastodon-web {OLD_ID}\nmastodon-streaming {OLD_ID}\n")
    assert proc.returncode == 0, proc.stderr
    assert len(restarts(calls)) == 1


def test_the_running_tag_with_the_images_that_run_restarts_nothing(tmp_path):
    proc, calls = run(tmp_path, "worker", V, image_ids=f"{WEB}:{V} {OLD_ID}\n",
                      containers=f"mastodon-sidekiq {OLD_ID}\n")
    assert proc.returncode == 0, proc.stderr
    assert restarts(calls) == [] and "(unchanged)" in proc.stdout


def test_when_docker_cannot_tell_what_runs_the_tag_is_trusted(tmp_path):
    proc, calls = run(tmp_path, "worker", V, image_ids=f"{WEB}:{V} {NEW_ID}\n", containers="")
    assert proc.returncode == 0, proc.stderr
    assert restarts(calls) == []


def test_a_web_deploy_reports_both_images_digests_in_the_units_order(tmp_path):
    proc, _ = run(tmp_path, "web", "v4.7.5", image_ids="", containers="",
                  repo_digests=f"{WEB}:{V} {WEB}@{WEB_DIGEST}\n"
                  f"{STREAMING}:{V} {STREAMING}@{STREAMING_DIGEST}\n")
    assert proc.returncode == 0, proc.stderr
    assert f"image digests: {WEB_DIGEST} {STREAMING_DIGEST}" in proc.stdout.splitlines()


def test_an_unchanged_worker_reports_its_digest_and_an_unknown_one_is_a_dash(tmp_path):
    proc, _ = run(tmp_path, "worker", V, image_ids="", containers="",
                  repo_digests=f"{WEB}:{V} {WEB}@{WEB_DIGEST}\n")
    assert f"image digests: {WEB_DIGEST}" in proc.stdout.splitlines()
    proc, _ = run(tmp_path, "worker", V, image_ids="", containers="",
                  repo_digests=f"{WEB}:{V} other.example/mastodon@{WEB_DIGEST}\n")
    assert "image digests: -" in proc.stdout.splitlines()
