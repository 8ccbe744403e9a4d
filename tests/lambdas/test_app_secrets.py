"""Custom::AppSecrets: every secret Mastodon needs, generated once and never changed."""

from __future__ import annotations

import base64
import json
import random
import re
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.iam.models import iam_backends

from lambdas import app_secrets

GENERATED_KEYS = {
    "SECRET_KEY_BASE",
    "OTP_SECRET",
    "ACTIVE_RECORD_ENCRYPTION_DETERMINISTIC_KEY",
    "ACTIVE_RECORD_ENCRYPTION_KEY_DERIVATION_SALT",
    "ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY",
    "VAPID_PRIVATE_KEY",
    "VAPID_PUBLIC_KEY",
    "DB_PASS",
    "REDIS_PASSWORD",
    "CACHE_REDIS_PASSWORD",
    "ORIGIN_VERIFY",
    "ES_PASS",
}


def b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


# ---------------------------------------------------------------- VAPID
def test_vapid_pair_is_a_real_p256_key_pair_in_the_webpush_gem_format() -> None:
    private_b64, public_b64 = app_secrets.vapid_key_pair()
    # webpush gem: Base64.urlsafe_encode64 (padded) of 32-byte scalar / 65-byte point
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}=", private_b64)
    assert re.fullmatch(r"[A-Za-z0-9_-]{87}=", public_b64)
    scalar = int.from_bytes(b64url_decode(private_b64), "big")
    private_key = ec.derive_private_key(scalar, ec.SECP256R1())
    expected_public = private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    assert b64url_decode(public_b64) == expected_public

    public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64url_decode(public_b64))
    signature = private_key.sign(b"web push", ec.ECDSA(hashes.SHA256()))
    public_key.verify(signature, b"web push", ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize(
    "scalar",
    [
        1,
        2,
        3,
        app_secrets.N - 1,
        2**255 + 12345,
        # A fixed pseudo-random scalar: every test worker collects the same cases.
        random.Random(20261204).randrange(1, app_secrets.N),
    ],
)
def test_p256_scalar_multiplication_agrees_with_openssl(scalar: int) -> None:
    point = app_secrets.scalar_mult(scalar)
    numbers = ec.derive_private_key(scalar, ec.SECP256R1()).public_key().public_numbers()
    assert point == (numbers.x, numbers.y)


def test_a_lost_vapid_public_key_is_derived_from_the_private_key() -> None:
    private_b64, public_b64 = app_secrets.vapid_key_pair()
    added = app_secrets.missing_values({"VAPID_PRIVATE_KEY": private_b64})
    assert added["VAPID_PUBLIC_KEY"] == public_b64
    assert "VAPID_PRIVATE_KEY" not in added


def test_a_vapid_public_key_without_its_private_key_is_refused_not_replaced() -> None:
    with pytest.raises(ValueError, match="VAPID_PRIVATE_KEY"):
        app_secrets.missing_values({"VAPID_PUBLIC_KEY": "abc"})


# ---------------------------------------------------------------- other values
SHAPES = {
    "SECRET_KEY_BASE": r"[0-9a-f]{128}",
    "OTP_SECRET": r"[0-9a-f]{128}",
    "ACTIVE_RECORD_ENCRYPTION_DETERMINISTIC_KEY": r"[A-Za-z0-9]{32,}",
    "ACTIVE_RECORD_ENCRYPTION_KEY_DERIVATION_SALT": r"[A-Za-z0-9]{32,}",
    "ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY": r"[A-Za-z0-9]{32,}",
    "DB_PASS": r"[0-9a-f]{32,}",
    "REDIS_PASSWORD": r"[0-9a-f]{32,128}",  # ElastiCache AUTH: 16-128, no @ " /
    "CACHE_REDIS_PASSWORD": r"[0-9a-f]{32,128}",
    "ORIGIN_VERIFY": r"[0-9a-f]{48}",
    # OpenSearch's internal user: 8-128 characters; safe in a URL, curl config, env file.
    "ES_PASS": r"[A-Za-z0-9_.-]{32}",
}


def test_an_empty_secret_gets_every_key_in_the_shape_mastodon_and_aws_accept() -> None:
    added = app_secrets.missing_values({})
    assert set(added) == GENERATED_KEYS
    for key, shape in SHAPES.items():
        assert re.fullmatch(shape, added[key]), key
    assert len({added[k] for k in SHAPES}) == len(SHAPES), "values must be independent"


@pytest.mark.parametrize("attempt", range(200))
def test_the_search_password_always_meets_opensearchs_master_user_rule(attempt: int) -> None:
    password = app_secrets.search_password()
    assert 8 <= len(password) <= 128
    for kind in (r"[A-Z]", r"[a-z]", r"[0-9]", r"[^A-Za-z0-9]"):
        assert re.search(kind, password), (kind, attempt)


def test_a_search_password_of_eight_still_has_every_kind_of_character() -> None:
    for _ in range(200):
        password = app_secrets.search_password(8)
        assert len(password) == 8
        assert all(re.search(k, password) for k in (r"[A-Z]", r"[a-z]", r"[0-9]", r"[-_.]"))


def test_every_search_password_has_a_special_that_is_not_a_word_character() -> None:
    # "_" alone would leave ~14% of the passwords without a character outside \w.
    for length in (8, 32):
        for _ in range(1000):
            password = app_secrets.search_password(length)
            assert re.search(r"[^A-Za-z0-9_]", password), password
            assert re.fullmatch(r"[A-Za-z0-9_.-]+", password), password


def test_existing_values_are_never_regenerated() -> None:
    complete = app_secrets.missing_values({})
    assert app_secrets.missing_values(complete) == {}
    partial = {k: v for k, v in complete.items() if k != "OTP_SECRET"}
    assert set(app_secrets.missing_values(partial)) == {"OTP_SECRET"}


# ---------------------------------------------------------------- SES SMTP password
@pytest.mark.parametrize(
    ("region", "secret_key", "expected"),
    [
        # Known answers from terraform-provider-aws, internal/service/iam/access_key_test.go
        # (TestSESSMTPPasswordFromSecretKeySigV4), an implementation used against SES.
        (
            "eu-central-1",
            "some+secret+key",
            "BMXhUYlu5Z3gSXVQORxlVa7XPaz91aGWdfHxvkOZdWZ2",
        ),
        (
            "eu-central-1",
            "another+secret+key",
            "BBbphbrQmrKMx42d1N6+C7VINYEBGI5v9VsZeTxwskfh",
        ),
        (
            "us-west-1",
            "some+secret+key",
            "BH+jbMzper5WwlwUar9E1ySBqHa9whi0GPo+sJ0mVYJj",
        ),
        (
            "us-west-1",
            "another+secret+key",
            "BKVmjjMDFk/qqw8EROW99bjCS65PF8WKvK5bSr4Y6EqF",
        ),
    ],
)
def test_smtp_password_matches_known_answers(region: str, secret_key: str, expected: str) -> None:
    assert app_secrets.smtp_password(secret_key, region) == expected


@pytest.mark.parametrize(
    ("case", "current", "keys", "needed"),
    [
        ("nothing stored yet", {}, [], True),
        (
            "stored key still belongs to the user",
            {"SMTP_LOGIN": "AK1", "SMTP_PASSWORD": "p"},
            ["AK1"],
            False,
        ),
        (
            "stored key was deleted",
            {"SMTP_LOGIN": "AK1", "SMTP_PASSWORD": "p"},
            ["AK2"],
            True,
        ),
        ("password lost", {"SMTP_LOGIN": "AK1"}, ["AK1"], True),
    ],
)
def test_smtp_key_is_created_only_when_the_stored_one_is_unusable(
    case: str, current: dict[str, str], keys: list[str], needed: bool
) -> None:
    assert app_secrets.smtp_key_needed(current, keys) is needed


@pytest.mark.parametrize(
    ("case", "properties", "message"),
    [
        ("no secret", {"SmtpUserName": "u", "SmtpRegion": "us-east-1"}, "SecretId"),
        (
            "SES user without region",
            {"SecretId": "s", "SmtpUserName": "u"},
            "SmtpRegion",
        ),
        (
            "bad region",
            {"SecretId": "s", "SmtpUserName": "u", "SmtpRegion": "moon"},
            "SmtpRegion",
        ),
    ],
)
def test_invalid_properties_are_rejected(case: str, properties: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        app_secrets.parse_properties(properties)


# ---------------------------------------------------------------- against moto
USER = "mastodon-smtp"


@pytest.fixture
def aws() -> Iterator[dict[str, Any]]:
    with mock_aws():
        secretsmanager, iam = boto3.client("secretsmanager"), boto3.client("iam")
        secret_arn = secretsmanager.create_secret(Name="mastodon/app")["ARN"]  # no value
        iam.create_user(UserName=USER)
        iam.create_user(UserName="other-smtp")
        yield {"secretsmanager": secretsmanager, "iam": iam, "secret": secret_arn}


def properties(aws: dict[str, Any], user: str = USER) -> dict[str, str]:
    return {"SecretId": aws["secret"], "SmtpUserName": user, "SmtpRegion": "eu-west-1"}


def stored(aws: dict[str, Any]) -> dict[str, str]:
    value = aws["secretsmanager"].get_secret_value(SecretId=aws["secret"])["SecretString"]
    return dict(json.loads(value))


def key_ids(aws: dict[str, Any], user: str = USER) -> list[str]:
    metadata = aws["iam"].list_access_keys(UserName=user)["AccessKeyMetadata"]
    return [k["AccessKeyId"] for k in metadata]


def versions(aws: dict[str, Any]) -> int:
    return len(aws["secretsmanager"].list_secret_version_ids(SecretId=aws["secret"])["Versions"])


def test_create_fills_an_empty_secret_with_every_key_and_ses_credentials(
    aws: dict[str, Any], answers: Any, cfn_event: Any, context: Any
) -> None:
    app_secrets.lambda_handler(cfn_event("Create", properties(aws)), context)

    assert answers.last["Status"] == "SUCCESS", answers.last["Reason"]
    assert answers.last["Data"] == {}
    values = stored(aws)
    assert GENERATED_KEYS | {"SMTP_LOGIN", "SMTP_PASSWORD"} == set(values)
    assert key_ids(aws) == [values["SMTP_LOGIN"]]
    user = iam_backends[DEFAULT_ACCOUNT_ID]["global"].get_user(USER)
    secret_key = user.access_keys[0].secret_access_key
    assert values["SMTP_PASSWORD"] == app_secrets.smtp_password(secret_key, "eu-west-1")


def test_a_second_run_keeps_every_value_and_adds_only_missing_ones(
    aws: dict[str, Any], answers: Any, cfn_event: Any, context: Any
) -> None:
    event = cfn_event("Create", properties(aws))
    app_secrets.lambda_handler(event, context)
    first = stored(aws)
    partial = {k: v for k, v in first.items() if k not in {"ORIGIN_VERIFY", "REDIS_PASSWORD"}}
    aws["secretsmanager"].put_secret_value(SecretId=aws["secret"], SecretString=json.dumps(partial))
    physical_id = answers.last["PhysicalResourceId"]

    update = cfn_event("Update", properties(aws), properties(aws), physical_id=physical_id)
    app_secrets.lambda_handler(update, context)

    assert answers.last["Status"] == "SUCCESS"
    assert answers.last["PhysicalResourceId"] == physical_id
    second = stored(aws)
    assert {k: second[k] for k in partial} == partial
    assert second["ORIGIN_VERIFY"] != first["ORIGIN_VERIFY"]  # re-added, freshly generated
    assert key_ids(aws) == [first["SMTP_LOGIN"]], "a valid SMTP key is not replaced"

    count = versions(aws)
    app_secrets.lambda_handler(update, context)
    assert versions(aws) == count, "nothing missing: no new secret version"
    assert stored(aws) == second


def test_ses_credentials_are_replaced_when_their_access_key_is_gone(
    aws: dict[str, Any], answers: Any, cfn_event: Any, context: Any
) -> None:
    app_secrets.lambda_handler(cfn_event("Create", properties(aws)), context)
    old = stored(aws)
    aws["iam"].delete_access_key(UserName=USER, AccessKeyId=old["SMTP_LOGIN"])

    app_secrets.lambda_handler(cfn_event("Create", properties(aws)), context)

    new = stored(aws)
    assert new["SMTP_LOGIN"] != old["SMTP_LOGIN"]
    assert key_ids(aws) == [new["SMTP_LOGIN"]]
    assert new["SECRET_KEY_BASE"] == old["SECRET_KEY_BASE"]


def test_an_external_smtp_server_gets_no_ses_credentials(
    aws: dict[str, Any], answers: Any, cfn_event: Any, context: Any
) -> None:
    app_secrets.lambda_handler(cfn_event("Create", properties(aws, user="")), context)
    assert answers.last["Status"] == "SUCCESS"
    assert set(stored(aws)) == GENERATED_KEYS
    assert key_ids(aws) == []


def test_changing_the_smtp_user_moves_the_credentials_and_deletes_the_old_keys(
    aws: dict[str, Any], answers: Any, cfn_event: Any, context: Any
) -> None:
    app_secrets.lambda_handler(cfn_event("Create", properties(aws)), context)
    update = cfn_event("Update", properties(aws, "other-smtp"), properties(aws), physical_id="p")

    app_secrets.lambda_handler(update, context)

    assert answers.last["Status"] == "SUCCESS"
    assert key_ids(aws) == []
    assert key_ids(aws, "other-smtp") == [stored(aws)["SMTP_LOGIN"]]


def test_delete_removes_the_smtp_keys_and_leaves_the_secret(
    aws: dict[str, Any], answers: Any, cfn_event: Any, context: Any
) -> None:
    app_secrets.lambda_handler(cfn_event("Create", properties(aws)), context)
    before = stored(aws)

    app_secrets.lambda_handler(cfn_event("Delete", properties(aws), physical_id="p"), context)

    assert answers.last["Status"] == "SUCCESS"
    assert key_ids(aws) == []
    assert stored(aws) == before
    aws["iam"].delete_user(UserName=USER)  # what CloudFormation does next now succeeds


def test_delete_after_the_user_is_gone_still_succeeds(
    aws: dict[str, Any], answers: Any, cfn_event: Any, context: Any
) -> None:
    event = cfn_event("Delete", properties(aws, "no-such-user"), physical_id="p")
    app_secrets.lambda_handler(event, context)
    assert answers.last["Status"] == "SUCCESS"


def test_an_unreadable_secret_is_never_overwritten(
    aws: dict[str, Any], answers: Any, cfn_event: Any, context: Any
) -> None:
    aws["secretsmanager"].put_secret_value(SecretId=aws["secret"], SecretString="SECRET=abc")
    app_secrets.lambda_handler(cfn_event("Create", properties(aws)), context)
    assert answers.last["Status"] == "FAILED"
    assert "not a JSON object" in answers.last["Reason"]
    value = aws["secretsmanager"].get_secret_value(SecretId=aws["secret"])["SecretString"]
    assert value == "SECRET=abc"


def test_a_malformed_event_fails_without_touching_aws(
    answers: Any, cfn_event: Any, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_aws(*args: object, **kwargs: object) -> None:
        raise AssertionError("AWS was called")

    monkeypatch.setattr(app_secrets.boto3, "client", no_aws)
    app_secrets.lambda_handler(cfn_event("Create", {"SmtpUserName": USER}), context)
    assert answers.last["Status"] == "FAILED"
    assert "SecretId" in answers.last["Reason"]
    assert answers.last["PhysicalResourceId"]


def test_no_secret_value_reaches_the_logs_or_the_response(
    aws: dict[str, Any], answers: Any, cfn_event: Any, context: Any, capture_logs: Any
) -> None:
    logs = capture_logs(app_secrets)
    app_secrets.lambda_handler(cfn_event("Create", properties(aws)), context)
    values = stored(aws)
    # and a failure, whose traceback is logged: a public VAPID key without its private key
    broken = {**values, "VAPID_PRIVATE_KEY": ""}
    aws["secretsmanager"].put_secret_value(SecretId=aws["secret"], SecretString=json.dumps(broken))
    app_secrets.lambda_handler(cfn_event("Update", properties(aws), properties(aws), "p"), context)

    assert [a["Status"] for a in answers.bodies] == ["SUCCESS", "FAILED"]
    output = logs.getvalue() + b"".join(answers.raw).decode()
    assert "Answered CloudFormation" in output, "the log capture works"
    secret_key = iam_backends[DEFAULT_ACCOUNT_ID]["global"].get_user(USER).access_keys[0]
    assert len(values) == len(GENERATED_KEYS) + 2
    # The access key id (SMTP_LOGIN) is an identifier AWS itself logs; the public key is public.
    hidden = [v for k, v in values.items() if k not in {"SMTP_LOGIN", "VAPID_PUBLIC_KEY"}]
    for value in [*hidden, secret_key.secret_access_key]:
        assert value not in output


# ---------------------------------------------------------------- the sender's domain
@pytest.mark.parametrize(
    ("sender", "accepted"),
    [
        ("", True),  # notifications@<domain>
        ("notifications@social.example.com", True),
        ("Notifications@Social.Example.com", True),
        ("bot@mail.social.example.com", True),  # SES sends from a verified domain's subdomains
        ("admin@example.com", False),  # the parent is not covered
        ("me@gmail.com", False),
        ("me@evilsocial.example.com", False),  # a suffix, not a subdomain
        ("me@social.example.com.evil.net", False),
    ],
)
def test_with_ses_the_sender_must_be_on_the_domain_or_a_subdomain(sender: str, accepted: bool) -> None:
    properties = {"SecretId": "s", "SmtpUserName": "u", "SmtpRegion": "eu-west-1",
                  "MailFromAddress": sender, "DomainName": "social.example.com"}
    problem = app_secrets.sender_problem(properties)
    assert (problem == "") is accepted, problem
    if not accepted:
        assert "social.example.com or one of its subdomains" in problem


def test_with_external_smtp_any_sender_is_the_servers_business() -> None:
    assert app_secrets.sender_problem({"SmtpUserName": "", "MailFromAddress": "me@gmail.com",
                                       "DomainName": "social.example.com"}) == ""


def test_a_sender_on_another_domain_fails_the_create_before_anything_is_written(
    aws: dict[str, Any], answers: Any, cfn_event: Any, context: Any
) -> None:
    event = cfn_event("Create", {**properties(aws), "MailFromAddress": "me@gmail.com",
                                 "DomainName": "social.example.com"})
    app_secrets.lambda_handler(event, context)
    assert answers.last["Status"] == "FAILED"
    assert "MailFromAddress must be on social.example.com" in answers.last["Reason"]
    assert key_ids(aws) == []
    assert versions(aws) == 0
