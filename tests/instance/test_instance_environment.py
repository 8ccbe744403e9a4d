"""The rendered mastodon.env holds everything the pinned Mastodon needs."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from tests.instance.instance_harness import APP_SECRET, CLOUDFRONT_CIDRS, VPC_CIDR

# What the pinned Mastodon (templates/options.py: v4.7.x) must be given in this stack, and
# where each requirement comes from. The variables were read in 4.5's sources and docs;
# the 4.6 and 4.7 release notes change no required variable (dependencies: PostgreSQL 14+,
# Redis 7+, unchanged since 4.6.0).
REQUIRED = {
    # .env.production.sample; docs admin/config.md "Federation"
    "LOCAL_DOMAIN": "social.example.com",
    # config.md "Deployment": RAILS_ENV / NODE_ENV select production for Rails and streaming
    "RAILS_ENV": "production",
    "NODE_ENV": "production",
    # config.md "Secrets"; .env.production.sample
    "SECRET_KEY_BASE": APP_SECRET["SECRET_KEY_BASE"],
    # Unused by 4.4+ itself, still read by the migration of legacy two-factor secrets
    # (MigrationUser: ENV.fetch('OTP_SECRET')): kept so a database restored from an older
    # instance migrates.
    "OTP_SECRET": APP_SECRET["OTP_SECRET"],
    # config/initializers/active_record_encryption.rb aborts without these three (since 4.3)
    **{
        key: APP_SECRET[key]
        for key in (
            "ACTIVE_RECORD_ENCRYPTION_DETERMINISTIC_KEY",
            "ACTIVE_RECORD_ENCRYPTION_KEY_DERIVATION_SALT",
            "ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY",
        )
    },
    # config.md "Secrets": web push
    "VAPID_PRIVATE_KEY": APP_SECRET["VAPID_PRIVATE_KEY"],
    "VAPID_PUBLIC_KEY": APP_SECRET["VAPID_PUBLIC_KEY"],
    # config/database.yml (production) and streaming/database.js
    "DB_HOST": "mastodon.cluster-abc.us-east-1.rds.amazonaws.com",
    "DB_PORT": "5432",
    "DB_NAME": "mastodon",
    "DB_USER": "mastodon",
    "DB_PASS": APP_SECRET["DB_PASS"],
    # database.yml: sslmode from DB_SSLMODE (default prefer); RDS enforces TLS
    "DB_SSLMODE": "require",
    # paperclip.rb / docs admin/optional/object-storage.md
    "S3_ENABLED": "true",
    "S3_BUCKET": "mastodon-test-media-123456789012",
    "S3_REGION": "us-east-1",
    "S3_ALIAS_HOST": "social.example.com/system",
    # object-storage.md: an empty S3_PERMISSION sends no ACL (bucket ACLs are disabled)
    "S3_PERMISSION": "",
    # config.md "E-mail"; .env.production.sample
    "SMTP_SERVER": "email-smtp.us-east-1.amazonaws.com",
    "SMTP_PORT": "587",
    "SMTP_LOGIN": APP_SECRET["SMTP_LOGIN"],
    "SMTP_PASSWORD": APP_SECRET["SMTP_PASSWORD"],
    "SMTP_FROM_ADDRESS": "notifications@social.example.com",
    # config.md: no nginx in front, Puma serves the assets (CloudFront caches them)
    "RAILS_SERVE_STATIC_FILES": "true",
}


def test_every_variable_mastodon_requires_is_rendered(web_run):
    env = web_run.env_file()
    missing = sorted(set(REQUIRED) - set(env))
    assert not missing, f"mastodon.env lacks {missing}"
    wrong = {key: env[key] for key, value in REQUIRED.items() if env[key] != value}
    assert not wrong


def test_redis_is_reached_over_tls_with_the_auth_token(web_run):
    # lib/mastodon/redis_configuration.rb builds redis:// from REDIS_HOST (no TLS) and
    # takes REDIS_URL verbatim; streaming/redis.js hands REDIS_URL to ioredis. Only a
    # rediss:// URL turns TLS on for both.
    env = web_run.env_file()
    url = urlsplit(env["REDIS_URL"])
    assert url.scheme == "rediss"
    assert (url.hostname, url.port) == ("master.mastodon.abc123.use1.cache.amazonaws.com", 6379)
    assert unquote(url.password) == APP_SECRET["REDIS_PASSWORD"]
    assert "REDIS_HOST" not in env, "REDIS_HOST would be ignored next to REDIS_URL; keep one source"


def test_trusted_proxies_cover_the_load_balancer_and_every_cloudfront_range(web_run):
    # config/environments/production.rb and the streaming server split on commas/spaces.
    trusted = web_run.env_file()["TRUSTED_PROXY_IP"].split(",")
    assert VPC_CIDR in trusted
    assert set(CLOUDFRONT_CIDRS) <= set(trusted)


def test_the_streaming_server_encrypts_its_database_connections_too(web_run):
    # streaming/database.js: DB_SSLMODE 'no-verify' -> ssl {rejectUnauthorized: false};
    # node-postgres does not know libpq's 'require'.
    assert "-e DB_SSLMODE=no-verify" in web_run.unit("mastodon-streaming")
