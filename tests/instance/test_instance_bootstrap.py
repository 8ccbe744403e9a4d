"""bootstrap.sh, run for real under a temporary root with stub commands."""

from __future__ import annotations

import json

import pytest

from tests.instance.instance_harness import (
    APP_SECRET,
    APP_SECRET_ARN,
    INSTANCE_ID,
    SECRET_VALUES,
    SMTP_SECRET_ARN,
    VERSION,
)


@pytest.fixture
def web(web_run):
    return web_run


def started_units(run) -> list[str]:
    """Mastodon units that systemctl was asked to enable and start."""
    return [
        unit
        for args in run.commands("systemctl", "enable", "--now")
        for unit in args[2:]
        if unit.startswith("mastodon-")
    ]


def exec_start(unit: str) -> str:
    """The ExecStart command of a unit, continuation lines joined."""
    body = unit.split("ExecStart=", 1)[1]
    command = []
    for line in body.splitlines():
        command.append(line.rstrip("\\").strip())
        if not line.endswith("\\"):
            break
    return " ".join(command)


def test_a_web_instance_runs_puma_and_streaming_and_signals_success_once(web):
    assert web.returncode == 0, web.output
    assert web.signals() == [{"status": "SUCCESS", "unique_id": INSTANCE_ID, "resource": "WebGroup"}]

    puma = exec_start(web.unit("mastodon-web"))
    assert "--rm" in puma and "--network host" in puma
    assert "--env-file /etc/mastodon/mastodon.env" in puma
    assert "ghcr.io/mastodon/mastodon:${MASTODON_VERSION}" in puma
    assert puma.endswith("bundle exec puma -C config/puma.rb")
    assert "-e PORT=3000" in puma and "-e BIND=0.0.0.0" in puma

    streaming = exec_start(web.unit("mastodon-streaming"))
    assert "ghcr.io/mastodon/mastodon-streaming:${MASTODON_VERSION}" in streaming
    # The image's own CMD starts the server: no command after the image.
    assert streaming.endswith("ghcr.io/mastodon/mastodon-streaming:${MASTODON_VERSION}")
    assert "-e PORT=4000" in streaming and "-e BIND=0.0.0.0" in streaming

    assert ["enable", "--now", "mastodon-web", "mastodon-streaming"] in web.commands("systemctl")
    assert not web.file("/etc/systemd/system/mastodon-sidekiq.service").exists()


def test_the_version_lives_only_in_version_env(web):
    assert web.file("/etc/mastodon/version.env").read_text() == f"MASTODON_VERSION={VERSION}\n"
    for name in ("mastodon-web", "mastodon-streaming"):
        unit = web.unit(name)
        assert "EnvironmentFile=/etc/mastodon/version.env" in unit
        assert VERSION not in unit
    assert VERSION not in web.file("/etc/mastodon/mastodon.env").read_text()


def test_each_container_logs_to_its_log_group_under_the_instance_id(web):
    for name, group in (
        ("mastodon-web", "/mastodon-test/web"),
        ("mastodon-streaming", "/mastodon-test/streaming"),
    ):
        command = exec_start(web.unit(name))
        assert "--log-driver awslogs" in command
        assert f"--log-opt awslogs-group={group}" in command
        assert f"--log-opt awslogs-stream={INSTANCE_ID}" in command
        assert "--log-opt awslogs-region=us-east-1" in command
        assert "Restart=always" in web.unit(name)


def test_pool_sizes_go_into_the_units_not_the_shared_environment(web):
    puma = exec_start(web.unit("mastodon-web"))
    streaming = exec_start(web.unit("mastodon-streaming"))
    assert "-e WEB_CONCURRENCY=" in puma and "-e MAX_THREADS=" in puma and "-e DB_POOL=" in puma
    assert "-e DB_POOL=" in streaming
    shared = web.env_file()
    for key in ("DB_POOL", "MAX_THREADS", "WEB_CONCURRENCY", "SIDEKIQ_CONCURRENCY", "PORT", "BIND"):
        assert key not in shared


def test_images_are_pulled_at_the_deployed_version(web):
    pulled = [args[1] for args in web.commands("docker", "pull")]
    assert pulled == [
        f"ghcr.io/mastodon/mastodon:{VERSION}",
        f"ghcr.io/mastodon/mastodon-streaming:{VERSION}",
    ]


def test_the_environment_file_is_private_to_root(web):
    assert web.file("/etc/mastodon/mastodon.env").stat().st_mode & 0o777 == 0o600


def test_no_secret_reaches_the_log_or_any_command_line(web):
    assert web.returncode == 0, web.output
    shipped = json.dumps([c for c in web.calls if c["cmd"] == "aws-log-events"])
    command_lines = json.dumps([c for c in web.calls if c["cmd"] != "aws-log-events"])
    assert "bootstrap complete" in shipped, "the system log is shipped to CloudWatch Logs"
    for value in SECRET_VALUES:
        assert value not in web.log
        assert value not in web.output
        assert value not in command_lines
        assert value not in shipped
        assert value not in web.unit("mastodon-web") + web.unit("mastodon-streaming")
    env_text = web.file("/etc/mastodon/mastodon.env").read_text()
    assert APP_SECRET["DB_PASS"] in env_text, "secrets belong in the env file, and only there"


def test_a_web_instance_does_not_start_puma_before_the_database_is_initialized(bootstrap):
    run = bootstrap("web", db_state="empty")
    assert run.returncode != 0
    assert started_units(run) == []
    assert run.db_setup_runs() == 0, "only the worker initializes the database"
    [signal] = run.signals()
    assert signal["status"] == "FAILURE"
    assert "database was not initialized" in run.log


def test_a_worker_first_boot_initializes_the_database_exactly_once(worker_run):
    run = worker_run
    assert run.returncode == 0, run.output
    assert run.db_setup_runs() == 1
    setup = next(args for args in run.commands("docker", "run") if "db:setup" in args)
    assert setup[-4:] == ["bundle", "exec", "rails", "db:setup"]
    assert f"ghcr.io/mastodon/mastodon:{VERSION}" in setup and "--rm" in setup
    assert run.db_state() == "initialized"
    assert [s["status"] for s in run.signals()] == ["SUCCESS"]


def test_a_worker_on_an_initialized_database_leaves_it_alone(bootstrap):
    run = bootstrap("worker", db_state="initialized")
    assert run.returncode == 0, run.output
    assert run.db_setup_runs() == 0
    assert [s["status"] for s in run.signals()] == ["SUCCESS"]


def test_a_worker_never_initializes_a_database_it_cannot_read(bootstrap):
    run = bootstrap("worker", db_state="error")
    assert run.returncode != 0
    assert run.db_setup_runs() == 0
    assert [s["status"] for s in run.signals()] == ["FAILURE"]


def test_the_worker_runs_the_only_sidekiq_with_every_queue(worker_run):
    run = worker_run
    assert run.returncode == 0, run.output
    command = exec_start(run.unit("mastodon-sidekiq"))
    assert " -q " not in command, "no queue filter: config/sidekiq.yml lists all, scheduler included"
    assert "--log-opt awslogs-group=/mastodon-test/sidekiq" in command
    sidekiq_args = command.split("bundle exec sidekiq", 1)[1].split()
    concurrency = int(sidekiq_args[sidekiq_args.index("-c") + 1])
    assert f"-e DB_POOL={concurrency}" in command, "Sidekiq's pool covers every thread"
    assert not run.file("/etc/systemd/system/mastodon-web.service").exists()
    assert ["enable", "--now", "mastodon-sidekiq"] in run.commands("systemctl")


def test_a_failed_image_pull_signals_failure_with_the_reason(bootstrap):
    image = f"ghcr.io/mastodon/mastodon:{VERSION}"
    run = bootstrap("web", pull_fail=[image])
    assert run.returncode != 0
    assert len(run.commands("docker", "pull", image)) == 3, "pulls are retried"
    [signal] = run.signals()
    assert signal["status"] == "FAILURE"
    assert signal["unique_id"].startswith(INSTANCE_ID + "-pull-images")
    assert len(signal["unique_id"]) <= 64
    assert f"docker pull {image} failed" in run.log
    assert started_units(run) == []


def test_a_container_that_never_gets_healthy_signals_failure_after_the_timeout(bootstrap):
    run = bootstrap("web", health="fail")
    assert run.returncode != 0
    assert [s["status"] for s in run.signals()] == ["FAILURE"]
    assert "not healthy within 1s" in run.log
    assert "stub container log" in run.log, "the failing container's last lines are in the system log"


def test_a_sidekiq_that_keeps_restarting_signals_failure(bootstrap):
    run = bootstrap("worker", sidekiq="restarting", env={"BOOTSTRAP_WORKER_STABLE_SECONDS": "1"})
    assert run.returncode != 0
    assert [s["status"] for s in run.signals()] == ["FAILURE"]
    assert "mastodon-sidekiq stopped or restarted" in run.log


def test_a_missing_secret_key_signals_failure_naming_it(bootstrap):
    partial = {k: v for k, v in APP_SECRET.items() if k != "ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY"}
    run = bootstrap("web", secrets={APP_SECRET_ARN: json.dumps(partial)})
    assert run.returncode != 0
    assert "the application secret has no ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY" in run.log
    assert [s["status"] for s in run.signals()] == ["FAILURE"]


def test_an_external_smtp_server_takes_its_password_from_its_own_secret(bootstrap):
    secrets = {APP_SECRET_ARN: json.dumps(APP_SECRET), SMTP_SECRET_ARN: "external-smtp-pw-m3m3m3"}
    run = bootstrap(
        "web",
        secrets=secrets,
        stack={
            "SMTP_LOGIN": "mailer@example.org",
            "SMTP_SERVER": "smtp.example.org",
            "SMTP_PASSWORD_SECRET_ARN": SMTP_SECRET_ARN,
        },
    )
    assert run.returncode == 0, run.output
    env = run.env_file()
    assert env["SMTP_LOGIN"] == "mailer@example.org"
    assert env["SMTP_PASSWORD"] == "external-smtp-pw-m3m3m3"
    assert "external-smtp-pw-m3m3m3" not in run.log


def test_a_server_launched_outside_a_stack_operation_still_boots(bootstrap):
    # Scale-outs and replacements: CloudFormation refuses the signal, nobody waits for it.
    run = bootstrap("web", signal_state="none")
    assert run.returncode == 0, run.output
    assert "no stack operation waits for this server's signal" in run.log
    assert [s["status"] for s in run.signals()] == ["SUCCESS"]


def test_an_external_smtp_server_on_port_465_gets_implicit_tls(bootstrap):
    secrets = {APP_SECRET_ARN: json.dumps(APP_SECRET), SMTP_SECRET_ARN: "external-smtp-pw-m3m3m3"}
    run = bootstrap("web", secrets=secrets, stack={
        "SMTP_LOGIN": "mailer@example.org", "SMTP_SERVER": "smtp.example.org", "SMTP_PORT": "465",
        "SMTP_PASSWORD_SECRET_ARN": SMTP_SECRET_ARN})
    assert run.returncode == 0, run.output
    env = run.env_file()
    assert (env["SMTP_TLS"], env["SMTP_ENABLE_STARTTLS"]) == ("true", "never")


def test_smtp_on_587_negotiates_starttls(web):
    env = web.env_file()
    assert env["SMTP_ENABLE_STARTTLS"] == "auto" and "SMTP_TLS" not in env


# --- swap, journal and disk on a small server ------------------------------------

MICRO_KIB = 943_000  # MemTotal of a 1 GiB instance (~921 MiB; the kernel keeps the rest)
MICRO_SWAP_MIB = 2048 - MICRO_KIB // 1024  # RAM + swap = 2 GiB
GIB_KIB = 1024 * 1024


def sidekiq_threads(run) -> int:
    args = exec_start(run.unit("mastodon-sidekiq")).split("bundle exec sidekiq", 1)[1].split()
    return int(args[args.index("-c") + 1])


def fstab_swap_lines(run) -> list[str]:
    fstab = run.file("/etc/fstab")
    return [line for line in fstab.read_text().splitlines() if "swap" in line] if fstab.exists() else []


def call_index(run, name: str, *prefix: str) -> int:
    return next(
        i for i, c in enumerate(run.calls) if c["cmd"] == name and c["args"][: len(prefix)] == list(prefix)
    )


def test_a_1_gib_worker_gets_a_persistent_swap_file_and_runs_five_sidekiq_threads(bootstrap):
    run = bootstrap("worker", memory_kib=MICRO_KIB)
    assert run.returncode == 0, run.output
    swap_file = run.file("/swapfile")
    [(path, kind, kib, *_)] = run.swaps()
    assert (path, kind, int(kib)) == (str(swap_file), "file", MICRO_SWAP_MIB * 1024)
    assert swap_file.stat().st_size == MICRO_SWAP_MIB * 1024 * 1024
    assert swap_file.stat().st_mode & 0o777 == 0o600, "swap holds process memory: root only"
    # Enabled again at every boot, under the path the instance sees.
    assert fstab_swap_lines(run) == ["/swapfile none swap defaults 0 0"]
    assert "vm.swappiness = 10" in run.file("/etc/sysctl.d/90-mastodon-swap.conf").read_text()
    assert ["-q", "-w", "vm.swappiness=10"] in run.commands("sysctl")
    assert call_index(run, "swapon") < call_index(run, "dnf"), "swap is there before anything big runs"
    assert sidekiq_threads(run) == 5
    assert [s["status"] for s in run.signals()] == ["SUCCESS"]


def test_a_second_run_neither_fails_nor_doubles_the_swap(bootstrap):
    first = bootstrap("worker", memory_kib=MICRO_KIB)
    assert first.returncode == 0, first.output
    again = bootstrap("worker", memory_kib=MICRO_KIB)
    assert again.returncode == 0, again.output
    assert len(again.swaps()) == 1
    assert fstab_swap_lines(again) == ["/swapfile none swap defaults 0 0"]
    for command in ("dd", "mkswap", "swapon"):
        assert again.commands(command) == [], f"{command} ran again"
    assert "/swapfile is already in use" in again.log
    assert sidekiq_threads(again) == 5


def test_a_swap_file_left_inactive_is_enabled_again_without_rewriting_it(bootstrap):
    # A run interrupted after writing the file (or a file whose fstab line was lost).
    first = bootstrap("worker", memory_kib=MICRO_KIB)
    (first.stub_dir / "swaps").unlink()
    again = bootstrap("worker", memory_kib=MICRO_KIB)
    assert again.returncode == 0, again.output
    assert again.commands("dd") == []
    assert again.commands("mkswap") and len(again.swaps()) == 1


@pytest.mark.parametrize("role", ["web", "worker"])
def test_a_2_gib_server_gets_no_swap(role, web_run, worker_run):
    run = web_run if role == "web" else worker_run
    assert run.returncode == 0, run.output
    assert run.swaps() == []
    assert not run.file("/swapfile").exists()
    assert fstab_swap_lines(run) == []
    assert run.commands("dd") == [] and run.commands("swapon") == [] and run.commands("sysctl") == []


def test_a_disk_too_full_for_the_swap_file_fails_with_the_reason_before_anything_else(bootstrap):
    run = bootstrap("worker", memory_kib=MICRO_KIB, free_kib=str(900 * 1024))
    assert run.returncode != 0
    assert f"cannot create a {MICRO_SWAP_MIB} MiB swap file: only 900 MiB free" in run.log
    [signal] = run.signals()
    assert signal["status"] == "FAILURE" and signal["unique_id"].startswith(INSTANCE_ID + "-swap")
    assert run.commands("dd") == [] and run.commands("dnf") == []
    assert not run.file("/swapfile").exists() and fstab_swap_lines(run) == []


def test_a_swap_file_that_cannot_be_written_is_removed_and_the_boot_fails(bootstrap):
    run = bootstrap("worker", memory_kib=MICRO_KIB, dd_fail="1")
    assert run.returncode != 0
    assert "No space left on device" in run.log and "cannot write the" in run.log
    assert [s["status"] for s in run.signals()] == ["FAILURE"]
    assert not run.file("/swapfile").exists(), "no partial swap file is left behind"
    assert run.commands("swapon") == []


def test_the_journal_is_capped_on_every_server(web):
    conf = web.file("/etc/systemd/journald.conf.d/50-mastodon.conf").read_text()
    assert "[Journal]" in conf and "SystemMaxUse=200M" in conf
    assert ["restart", "systemd-journald"] in web.commands("systemctl")


OLD_IMAGES = [
    "ghcr.io/mastodon/mastodon:v4.6.2",
    "ghcr.io/mastodon/mastodon-streaming:v4.6.2",
    "public.ecr.aws/docker/library/postgres:17",
    "ghcr.io/mastodon/mastodon:<none>",
]


def test_a_first_boot_short_of_disk_removes_unused_images_then_pulls(bootstrap):
    run = bootstrap("web", images=OLD_IMAGES, running_images=["public.ecr.aws/docker/library/postgres:17"],
                    free_kib=[str(GIB_KIB), str(3 * GIB_KIB)])
    assert run.returncode == 0, run.output
    assert ["image", "prune", "--force"] in run.commands("docker")
    removed = [args[1] for args in run.commands("docker", "rmi")]
    assert removed == OLD_IMAGES[:2], "unused images go; one a running container uses stays"
    assert call_index(run, "docker", "rmi") < call_index(run, "docker", "pull")
    assert len(run.commands("docker", "pull")) == 2


def test_a_first_boot_still_short_of_disk_fails_with_the_reason_and_pulls_nothing(bootstrap):
    run = bootstrap("web", images=OLD_IMAGES, free_kib=str(GIB_KIB))
    assert run.returncode != 0
    assert "not enough disk to pull" in run.log and "only 1024 MiB free" in run.log
    assert "a pull needs 2048 MiB" in run.log
    [signal] = run.signals()
    assert signal["status"] == "FAILURE" and signal["unique_id"].startswith(INSTANCE_ID + "-pull-images")
    assert run.commands("docker", "pull") == [] and started_units(run) == []


def test_a_first_boot_with_room_removes_no_image(web):
    assert web.commands("docker", "image", "prune") == [] and web.commands("docker", "rmi") == []
    assert web.commands("docker", "images") == []


@pytest.mark.parametrize("role", ["web", "worker"])
def test_a_booted_server_tags_itself_with_the_version_it_runs_before_it_signals(role, web_run, worker_run):
    """The rollout knows what a server runs from this tag (no redeploy, no needless rollback)."""
    run = web_run if role == "web" else worker_run
    (tagging,) = run.commands("aws", "ec2", "create-tags")
    assert tagging[tagging.index("--tags") + 1] == f"Key=mastodon:version,Value={VERSION}"
    order = [c["args"][:2] for c in run.calls if c["cmd"] == "aws"]
    assert order.index(["ec2", "create-tags"]) < order.index(["cloudformation", "signal-resource"])


def test_a_server_that_cannot_tag_itself_still_boots(bootstrap):
    run = bootstrap("web", tag_state="denied")
    assert run.returncode == 0, run.output
    assert "could not tag" in run.log and run.signals()[-1]["status"] == "SUCCESS"


def test_no_container_ever_blocks_on_its_logs(web_run, worker_run):
    # awslogs blocks a container's writes by default when CloudWatch Logs throttles.
    units = ((web_run, ("mastodon-web", "mastodon-streaming")), (worker_run, ("mastodon-sidekiq",)))
    for run, names in units:
        for name in names:
            command = exec_start(run.unit(name))
            assert "--log-opt mode=non-blocking" in command, name
            size = command.split("--log-opt max-buffer-size=", 1)[1].split()[0]
            assert size[:-1].isdigit() and size[-1] == "m" and 1 <= int(size[:-1]) <= 16, size


def put_log_events_bytes(events: list[dict]) -> int:
    """PutLogEvents' own measure of a batch: UTF-8 bytes of each message plus 26."""
    return sum(len(event["message"].encode()) + 26 for event in events)


def test_a_large_bootstrap_log_is_shipped_in_batches_putlogevents_accepts(bootstrap, tmp_path):
    # 3,000 lines of 2,000 UTF-8 bytes (1,000 two-byte characters) before this boot:
    # about 6 MiB, six times what one PutLogEvents call takes.
    log = tmp_path / "root/var/log/mastodon-bootstrap.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"{n:05d} " + "é" * 1000 + "\n" for n in range(3000)))
    run = bootstrap("web")
    assert run.returncode == 0, run.output
    batches = [c["events"] for c in run.calls if c["cmd"] == "aws-log-events"]
    assert len(batches) > 1
    for events in batches:
        assert put_log_events_bytes(events) <= 1_048_576
        assert len(events) <= 10_000
    shipped = [event["message"] for events in batches for event in events]
    # Every line of the tail is shipped, in order, the boot's own lines last.
    assert shipped[0].startswith("00000 ") and "bootstrap complete" in shipped[-1]
    assert [m[:5] for m in shipped[:3000]] == [f"{n:05d}" for n in range(3000)]


def seed_runs(run) -> int:
    return sum(1 for args in run.commands("docker", "run") if "db:seed" in args)


def test_a_worker_repairs_a_first_setup_that_died_before_the_seeds(bootstrap):
    # db:setup = create, schema load, seed: a setup killed after the schema load leaves
    # no instance actor, no roles and no web app, and the schema check alone passes.
    run = bootstrap("worker", db_state="unseeded")
    assert run.returncode == 0, run.output
    assert run.db_setup_runs() == 0, "db:setup over a loaded schema would fail or wipe it"
    assert seed_runs(run) == 1
    seed = next(args for args in run.commands("docker", "run") if "db:seed" in args)
    assert seed[-4:] == ["bundle", "exec", "rails", "db:seed"]
    assert run.db_state() == "initialized"
    assert [s["status"] for s in run.signals()] == ["SUCCESS"]
    # What the check looks for is what Mastodon's db/seeds/*.rb create.
    check = next(args[-1] for args in run.commands("docker", "run") if "runner" in args)
    for seeded in ("oauth_applications WHERE superapp", "accounts WHERE id = -99", "user_roles"):
        assert seeded in check
    # 05_blocked_usernames, in the releases whose schema has its table (found by review).
    assert "table_exists?('username_blocks')" in check and "FROM username_blocks" in check


def test_a_seeded_database_is_not_seeded_again(worker_run, bootstrap):
    assert seed_runs(worker_run) == 0, "db:setup already seeds a fresh database"
    again = bootstrap("worker", db_state="initialized")
    assert again.returncode == 0, again.output
    assert seed_runs(again) == 0 and again.db_setup_runs() == 0


def test_a_web_server_serves_while_the_worker_repairs_the_seeds(bootstrap):
    run = bootstrap("web", db_state="unseeded")
    assert run.returncode == 0, run.output
    assert seed_runs(run) == 0 and run.db_setup_runs() == 0, "only the worker writes to the database"
    assert [s["status"] for s in run.signals()] == ["SUCCESS"]
