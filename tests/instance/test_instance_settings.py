"""Mastodon's other settings (templates/settings.py) at boot: read, checked, applied or refused.

bootstrap.sh runs for real under the stub commands; the stub aws CLI answers
GetParametersByPath and GetSecretValue from files, and fails a chosen number of calls
(throttling) first.
"""

from __future__ import annotations

import json

import pytest

from templates.settings import MAX_SETTINGS, SETTINGS_FAILURE
from tests.instance.instance_harness import APP_SECRET, APP_SECRET_ARN, stub_key

SETTINGS_PATH = "/mastodon/mastodon-test/settings"
SETTINGS_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:mastodon-settings-MnOpQr"
ON = {"SETTINGS_PATH": SETTINGS_PATH, "SETTINGS_SECRET_ARN": SETTINGS_SECRET_ARN}
HCAPTCHA_SECRET = "hcaptcha-secret-0x5Ec2e7c1b0b0b0b0b0b0b0b0"
DEEPL_KEY = "deepl-key-9f9f9f9f-9f9f-9f9f-9f9f-9f9f9f9f9f9f:fx"
SECURE_VALUE = "securestring-value-7a7a7a7a7a"
PLAIN = {"HCAPTCHA_SITE_KEY": "10000000-ffff-ffff-ffff-000000000001", "SINGLE_USER_MODE": "true",
         "DEFAULT_LOCALE": "de"}
SECRET = {"HCAPTCHA_SECRET_KEY": HCAPTCHA_SECRET, "DEEPL_API_KEY": DEEPL_KEY}


def parameters_answer(values: dict[str, str], secure: dict[str, str] | None = None) -> str:
    """GetParametersByPath's answer (the CLI joins the pages) for the stack's settings path."""
    entries = [{"Name": f"{SETTINGS_PATH}/{name}", "Type": "String", "Value": value, "Version": 1,
                "DataType": "text"} for name, value in values.items()]
    entries += [{"Name": f"{SETTINGS_PATH}/{name}", "Type": "SecureString", "Value": value, "Version": 2,
                 "DataType": "text"} for name, value in (secure or {}).items()]
    return json.dumps({"Parameters": entries})


def sources(values: dict[str, str] | None = None, secret: object = None,
            secure: dict[str, str] | None = None) -> dict:
    """The bootstrap runner's arguments for a stack with both sources."""
    secret_doc = SECRET if secret is None else secret
    return {
        "stack": ON,
        "secrets": {
            APP_SECRET_ARN: json.dumps(APP_SECRET),
            SETTINGS_SECRET_ARN: secret_doc if isinstance(secret_doc, str) else json.dumps(secret_doc),
        },
        f"parameters-by-path-{stub_key(SETTINGS_PATH)}.json": parameters_answer(
            PLAIN if values is None else values, secure),
    }


def settings_file(run) -> dict[str, str]:
    lines = run.file("/etc/mastodon/settings.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def started(run) -> list[str]:
    """Mastodon units that systemctl was asked to start."""
    return [unit for args in run.commands("systemctl", "enable", "--now") for unit in args[2:]
            if unit.startswith("mastodon-")]


def everything_seen(run) -> str:
    """Every place a value could leak: the log, the output, every command line."""
    return "\n".join([run.log, run.output, *("\x1f".join(c["args"]) for c in run.calls)])


def test_both_sources_reach_every_container_beside_what_the_stack_writes(bootstrap):
    run = bootstrap("web", **sources(secure={"OIDC_CLIENT_SECRET": SECURE_VALUE}))
    assert run.returncode == 0, run.log
    assert settings_file(run) == {**PLAIN, **SECRET, "OIDC_CLIENT_SECRET": SECURE_VALUE}
    assert not set(settings_file(run)) & set(run.env_file()), "mastodon.env keeps only the stack's own"
    for unit in ("mastodon-web", "mastodon-streaming"):
        text = run.unit(unit)
        assert "--env-file /etc/mastodon/mastodon.env --env-file /etc/mastodon/settings.env" in text
    assert oct(run.file("/etc/mastodon/settings.env").stat().st_mode & 0o777) == "0o600"
    # Parameter Store: only the direct children of the stack's path, SecureStrings decrypted.
    (call,) = run.commands("aws", "ssm", "get-parameters-by-path")
    assert call[call.index("--path") + 1] == SETTINGS_PATH
    assert "--no-recursive" in call and "--with-decryption" in call


def test_the_worker_and_its_one_off_containers_see_the_settings_too(bootstrap):
    run = bootstrap("worker", db_state="empty", **sources())
    assert run.returncode == 0, run.log
    assert "--env-file /etc/mastodon/settings.env" in run.unit("mastodon-sidekiq")
    # db:setup runs in a one-off container: it reads the settings like the units.
    (setup,) = [args for args in run.commands("docker", "run") if "db:setup" in args]
    assert "/etc/mastodon/settings.env" in setup


def test_secret_values_are_never_logged_nor_put_on_a_command_line(bootstrap):
    run = bootstrap("web", **sources(secure={"OIDC_CLIENT_SECRET": SECURE_VALUE}))
    assert run.returncode == 0, run.log
    seen = everything_seen(run)
    for value in (HCAPTCHA_SECRET, DEEPL_KEY, SECURE_VALUE):
        assert value not in seen
    assert "HCAPTCHA_SECRET_KEY" in run.log, "the names applied are logged"


def test_without_a_source_nothing_is_read_and_the_units_are_unchanged(bootstrap):
    run = bootstrap("web")
    assert run.returncode == 0, run.log
    assert not run.commands("aws", "ssm", "get-parameters-by-path")
    assert not run.file("/etc/mastodon/settings.env").exists()
    assert "settings.env" not in run.unit("mastodon-web")


def test_only_the_secret_may_be_the_source(bootstrap):
    run = bootstrap("web", **{**sources(), "stack": {"SETTINGS_SECRET_ARN": SETTINGS_SECRET_ARN}})
    assert run.returncode == 0, run.log
    assert settings_file(run) == SECRET
    assert not run.commands("aws", "ssm", "get-parameters-by-path")


REFUSED = [
    # (case, plain settings, secret settings, what the refusal names)
    ("lower case", {"hcaptcha_site_key": "x"}, {}, "hcaptcha_site_key"),
    ("starts with a digit", {"1PASSWORD": "x"}, {}, "1PASSWORD"),
    ("a dash", {}, {"OIDC-ISSUER": "x"}, "OIDC-ISSUER"),
    ("too long", {"A" * 101: "x"}, {}, "A" * 100),
    ("a line break in a value", {"SAML_IDP_CERT": "-----BEGIN\nMIIB"}, {}, "SAML_IDP_CERT"),
    ("a carriage return in a value", {}, {"OIDC_CLIENT_SECRET": "oidc-secret-6e6e6e6e\r"},
     "OIDC_CLIENT_SECRET"),
    ("a number, not a string", {}, {"MAX_FOLLOWS_THRESHOLD": 7500}, "MAX_FOLLOWS_THRESHOLD"),
    ("the database", {"DB_HOST": "evil.example.com"}, {}, "DB_HOST"),
    ("a replica the stack may own", {"REPLICA_DB_HOST": "db2"}, {}, "REPLICA_DB_HOST"),
    ("Redis", {}, {"REDIS_URL": "redis://elsewhere"}, "REDIS_URL"),
    ("search", {"ES_ENABLED": "true"}, {}, "ES_ENABLED"),
    ("media", {"S3_BUCKET": "other"}, {}, "S3_BUCKET"),
    ("mail", {}, {"SMTP_PASSWORD": "smtp-override-5d5d5d5d"}, "SMTP_PASSWORD"),
    ("the domain", {"LOCAL_DOMAIN": "other.example"}, {}, "LOCAL_DOMAIN"),
    ("the web domain the stack serves", {"WEB_DOMAIN": "www.example.com"}, {}, "WEB_DOMAIN"),
    ("an application secret", {}, {"SECRET_KEY_BASE": "x"}, "SECRET_KEY_BASE"),
    ("not from a dotenv file", {"RAILS_ENV": "development"}, {}, "RAILS_ENV"),
    ("a unit's own port", {"PORT": "80"}, {}, "PORT"),
    ("a pool the scripts size", {"DB_POOL": "50"}, {}, "DB_POOL"),
    ("what mastodon.env holds", {"RAILS_SERVE_STATIC_FILES": "false"}, {}, "RAILS_SERVE_STATIC_FILES"),
    ("the proxies the stack trusts", {"TRUSTED_PROXY_IP": "0.0.0.0/0"}, {}, "TRUSTED_PROXY_IP"),
    ("in both sources", {"DEEPL_API_KEY": "plain"}, {"DEEPL_API_KEY": "deepl-twice-4c4c4c4c"},
     "DEEPL_API_KEY"),
    # The URL forms of what the stack owns (database.yml merges them over DB_*).
    *((f"the URL form {url}", {}, {url: "postgres://u:p@elsewhere/db"}, url)
      for url in ("DATABASE_URL", "REPLICA_DATABASE_URL", "SIDEKIQ_REDIS_URL", "CACHE_REDIS_URL")),
]


@pytest.mark.parametrize(("case", "plain", "secret", "name"), REFUSED, ids=[r[0] for r in REFUSED])
def test_a_refused_setting_fails_the_boot_naming_it_and_applies_none(bootstrap, case, plain, secret, name):
    run = bootstrap("web", **sources({"SINGLE_USER_MODE": "true", **plain}, {**SECRET, **secret}))
    assert run.returncode != 0
    (signal,) = run.signals()
    assert signal["status"] == "FAILURE"
    assert f"refused {name}" in run.log
    # What the refusal alarm's metric filter counts in the shipped log.
    assert f"FAILED: {SETTINGS_FAILURE}: " in run.log
    assert any(f"FAILED: {SETTINGS_FAILURE}: " in event["message"]
               for call in run.calls if call["cmd"] == "aws-log-events" for event in call["events"])
    assert not run.file("/etc/mastodon/settings.env").exists(), "nothing is half-applied"
    assert not started(run), "no container starts with part of the settings"
    seen = everything_seen(run)
    for value in (*SECRET.values(), *(v for v in secret.values() if isinstance(v, str) and len(v) > 4)):
        assert value not in seen


def test_a_secret_that_is_not_a_json_object_is_refused(bootstrap):
    run = bootstrap("web", **sources(secret="HCAPTCHA_SECRET_KEY=" + HCAPTCHA_SECRET))
    assert run.returncode != 0
    assert "not a JSON object" in run.log
    assert HCAPTCHA_SECRET not in everything_seen(run)
    assert not started(run)


def test_more_settings_than_allowed_are_refused(bootstrap):
    many = {f"SETTING_{i}": "x" for i in range(MAX_SETTINGS + 1)}
    run = bootstrap("web", **sources(many, {}))
    assert run.returncode != 0
    assert f"more than the {MAX_SETTINGS} allowed" in run.log


SOURCES = [f"ssm-get-parameters-by-path@{stub_key(SETTINGS_PATH)}",
           f"secretsmanager-get-secret-value@{stub_key(SETTINGS_SECRET_ARN)}"]


@pytest.mark.parametrize("operation", SOURCES)
def test_throttled_reads_are_retried(bootstrap, operation):
    run = bootstrap("web", **sources(), **{f"fail-{operation}": "2"})
    assert run.returncode == 0, run.log
    assert settings_file(run) == {**PLAIN, **SECRET}
    assert "ThrottlingException" in run.log


@pytest.mark.parametrize(("operation", "what"), [
    (SOURCES[0], f"cannot read the settings under {SETTINGS_PATH}"),
    (SOURCES[1], f"cannot read the settings secret {SETTINGS_SECRET_ARN}"),
])
def test_a_source_that_keeps_failing_fails_the_boot_with_the_reason(bootstrap, operation, what):
    run = bootstrap("web", **sources(), **{f"fail-{operation}": ["9", "AccessDeniedException"]})
    assert run.returncode != 0
    (signal,) = run.signals()
    assert signal["status"] == "FAILURE"
    assert what in run.log
    assert f"FAILED: {SETTINGS_FAILURE}: {what}" in run.log
    assert not started(run)
