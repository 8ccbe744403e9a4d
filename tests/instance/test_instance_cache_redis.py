"""The cache-only Redis (SeparateCacheNodeType) reaches Mastodon as CACHE_REDIS_URL, and only then.

lib/mastodon/redis_configuration.rb (pinned 4.7): `cache` reads the CACHE_-prefixed
variables and takes CACHE_REDIS_URL verbatim; without it, it builds a plain redis:// URL
from CACHE_REDIS_HOST (no TLS) or falls back to the base REDIS_* configuration. Sidekiq
(SIDEKIQ_ prefix, unset here) and the streaming server keep REDIS_URL.
"""

from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

import pytest

from tests.instance.instance_harness import APP_SECRET, APP_SECRET_ARN

CACHE_HOST = "master.mastodon-cache.abc123.use1.cache.amazonaws.com"
CACHE_ON = {"CACHE_REDIS_HOST": CACHE_HOST, "CACHE_REDIS_PORT": "6379"}
# What an ElastiCache AUTH token may hold (printable ASCII without / " @; AWS lists ! & # $ ^
# < > - as its special characters) plus URL delimiters: the stack generates hex, but an
# operator may rotate the token to anything ElastiCache accepts. '#' would start a
# fragment, ':' end the user part, '$' expand in a shell, '+' decode to a space.
AWKWARD_TOKEN = "Ab1!&#$^<>-%+:?=~ 'x"


@pytest.mark.parametrize("role", ["web", "worker"])
def test_without_the_option_the_cache_shares_the_main_redis(bootstrap, role):
    run = bootstrap(role)
    assert run.returncode == 0, run.output
    env = run.env_file()
    assert not {k for k in env if k.startswith("CACHE_REDIS")}, "Rails.cache must fall back to REDIS_URL"


@pytest.mark.parametrize("role", ["web", "worker"])
def test_with_the_option_rails_cache_gets_its_own_redis_over_tls_with_its_own_token(bootstrap, role):
    secret = {**APP_SECRET, "CACHE_REDIS_PASSWORD": AWKWARD_TOKEN}
    run = bootstrap(role, stack=CACHE_ON, secrets={APP_SECRET_ARN: json.dumps(secret)})
    assert run.returncode == 0, run.output
    env = run.env_file()
    url = urlsplit(env["CACHE_REDIS_URL"])
    assert url.scheme == "rediss"
    assert (url.hostname, url.port, url.path, url.fragment, url.query) == (CACHE_HOST, 6379, "/0", "", "")
    assert url.username == ""
    assert unquote(url.password) == AWKWARD_TOKEN
    # Each reserved character is percent-encoded, so no parser splits the URL inside the token.
    assert not set(url.password) & set("!&#$^<>%+:?= '") - {"%"}
    # Sidekiq, the feeds and the streaming server stay on the main Redis and its token.
    main = urlsplit(env["REDIS_URL"])
    assert main.hostname == "master.mastodon.abc123.use1.cache.amazonaws.com"
    assert unquote(main.password) == APP_SECRET["REDIS_PASSWORD"]
    assert "SIDEKIQ_REDIS_URL" not in env
    # The token is in the env file only.
    assert AWKWARD_TOKEN not in run.output and AWKWARD_TOKEN not in run.log


def test_with_the_option_but_no_token_in_the_secret_the_boot_fails_and_says_why(bootstrap):
    run = bootstrap("web", stack=CACHE_ON)  # APP_SECRET holds no CACHE_REDIS_PASSWORD
    assert run.returncode != 0
    [signal] = run.signals()
    assert signal["status"] == "FAILURE"
    assert "CACHE_REDIS_PASSWORD" in run.log


def test_a_cache_host_without_a_port_is_refused(bootstrap):
    secret = {**APP_SECRET, "CACHE_REDIS_PASSWORD": "f" * 32}
    run = bootstrap("web", stack={**CACHE_ON, "CACHE_REDIS_PORT": ""},
                    secrets={APP_SECRET_ARN: json.dumps(secret)})
    assert run.returncode != 0
    assert "CACHE_REDIS_PORT" in run.log
