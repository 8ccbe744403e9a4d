"""The README's database restore runs as written on the worker, under stub commands.

The worker has no PostgreSQL client: the README copies the restored database into
the stack's with pg_dump | pg_restore in a one-off `postgres` container that reads
the worker's environment file. Here `docker` is a fake that does what `docker run
--rm --env-file F -e K=V IMAGE sh -c SCRIPT` does to the environment (every byte
after '=' literal, as docker reads an env file) and runs SCRIPT with fake pg_dump and
pg_restore that record their arguments, environment and input.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from templates.data import POSTGRES_MAJOR_VERSION
from tests.instance.instance_harness import STUB

REPO = Path(__file__).resolve().parents[2]
ENDPOINT = "mastodon-restored.abcdefgh.eu-central-1.rds.amazonaws.com"
# A password with what shells and URLs choke on; the env file holds it literally.
DB = {"DB_HOST": "mastodon-db.abcdefgh.eu-central-1.rds.amazonaws.com", "DB_PORT": "5432",
      "DB_NAME": "mastodon_production", "DB_USER": "mastodon", "DB_PASS": "p@ss w$rd'\"x&y=z"}

FAKE_DOCKER = f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
with open(os.path.join(os.environ["STUB_DIR"], "docker.json"), "w") as out:
    json.dump(args, out)
assert args[:2] == ["run", "--rm"], args
env, i = {{"PATH": os.environ["TOOLS_PATH"], "STUB_DIR": os.environ["STUB_DIR"]}}, 2
while args[i].startswith("-"):
    if args[i] == "--env-file":
        for line in open(args[i + 1]).read().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = value
        i += 2
    elif args[i] == "-e":
        key, _, value = args[i + 1].partition("=")
        env[key] = value
        i += 2
    elif args[i] == "--network":
        i += 2
    else:
        sys.exit("fake docker: unknown option " + args[i])
image, command = args[i], args[i + 1:]
os.execve("/bin/" + command[0], command, env) if command[0] in ("sh", "bash") else sys.exit("no shell")
"""

FAKE_PG = f"""#!{sys.executable}
import json, os, sys
name = os.path.basename(sys.argv[0])
record = {{"args": sys.argv[1:], "env": {{k: v for k, v in os.environ.items() if k.startswith("PG")}}}}
if name == "pg_restore":
    record["stdin"] = sys.stdin.read()
else:
    sys.stdout.write("PGDMP-custom-format-dump")
with open(os.path.join(os.environ["STUB_DIR"], name + ".json"), "w") as out:
    json.dump(record, out)
"""


def readme_restore_block() -> str:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"^```sh\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    (block,) = [b for b in blocks if "pg_restore" in b]
    return block


def run_restore(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    root, bin_dir, tools, stub_dir = (tmp_path / n for n in ("root", "bin", "tools", "stub"))
    for folder in (root / "etc" / "mastodon", bin_dir, tools, stub_dir):
        folder.mkdir(parents=True)
    env_file = root / "etc" / "mastodon" / "mastodon.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in {"LOCAL_DOMAIN": "social.example.com", **DB,
                                                           "DB_SSLMODE": "require"}.items()))
    (bin_dir / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "systemctl").symlink_to(STUB)
    for name in ("pg_dump", "pg_restore"):
        (tools / name).write_text(FAKE_PG)
    for path in [*bin_dir.iterdir(), *tools.iterdir()]:
        path.chmod(0o755)
    script = readme_restore_block().replace("/etc/mastodon/", f"{root}/etc/mastodon/")
    script = script.replace("RESTORED-ENDPOINT", ENDPOINT)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "TOOLS_PATH": f"{tools}:/usr/bin:/bin",
           "STUB_DIR": str(stub_dir)}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    return result, stub_dir


def test_the_restore_copies_the_restored_database_into_the_stacks_with_its_settings(tmp_path):
    result, stub = run_restore(tmp_path)
    assert result.returncode == 0, result.stderr
    dump = json.loads((stub / "pg_dump.json").read_text())
    restore = json.loads((stub / "pg_restore.json").read_text())
    connection = {"PGUSER": DB["DB_USER"], "PGPASSWORD": DB["DB_PASS"], "PGPORT": DB["DB_PORT"],
                  "PGSSLMODE": "require"}
    assert dump["env"] == connection and restore["env"] == connection
    assert dump["args"] == ["-h", ENDPOINT, "-Fc", DB["DB_NAME"]]
    assert restore["args"][:4] == ["-h", DB["DB_HOST"], "-d", DB["DB_NAME"]]
    assert {"--clean", "--if-exists", "--no-owner", "--exit-on-error"} <= set(restore["args"])
    # All or nothing: a dump that breaks off never leaves the live database half replaced.
    assert "--single-transaction" in restore["args"]
    assert restore["stdin"] == "PGDMP-custom-format-dump"  # the dump, piped


def test_the_restore_uses_a_client_of_the_databases_major_version_and_pauses_sidekiq(tmp_path):
    result, stub = run_restore(tmp_path)
    assert result.returncode == 0, result.stderr
    docker = json.loads((stub / "docker.json").read_text())
    # pg_dump refuses a server newer than itself; pg_restore reads only its own or older dumps.
    assert f"postgres:{POSTGRES_MAJOR_VERSION}" in docker
    assert "--network" in docker and docker[docker.index("--network") + 1] == "host"
    calls = [line.split("\x1f") for line in (stub / "calls.log").read_text().splitlines()]
    assert calls == [["systemctl", "stop", "mastodon-sidekiq"], ["systemctl", "start", "mastodon-sidekiq"]]


def test_a_dump_that_breaks_off_fails_the_restore(tmp_path):
    # pg_dump dying half-way must fail the command (pipefail), so that the single
    # transaction of pg_restore rolls back and nobody takes it for a restore.
    global FAKE_PG
    original = FAKE_PG
    FAKE_PG = original.replace('sys.stdout.write("PGDMP-custom-format-dump")',
                               'sys.stdout.write("PGDMP-trunc"); sys.exit(1)')
    try:
        result, _ = run_restore(tmp_path)
    finally:
        FAKE_PG = original
    assert result.returncode != 0


def test_the_web_servers_are_down_before_the_restore_and_back_after():
    text = (REPO / "README.md").read_text()
    section = text[text.index("**Restore the database"):text.index("## Checking a deployed stack")]
    down = section.index("--min-size 0 --desired-capacity 0")
    restore = section.index("pg_restore")
    up = section.index("--min-size N --desired-capacity N")
    assert down < restore < up
