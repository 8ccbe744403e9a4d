"""Custom::AppSecrets: fills the stack's Mastodon secret with generated values.

The secret (an AWS::SecretsManager::Secret created empty and retained by the
stack) receives every key Mastodon needs that it does not hold yet. A key that
exists is never changed: SECRET_KEY_BASE, OTP_SECRET and the Active Record keys
encrypt user data, and a new VAPID pair breaks every push subscription.

VAPID keys are written as Mastodon's `rails mastodon:webpush:generate_vapid_key`
writes them (webpush gem `VapidKey`): URL-safe base64, with padding, of the
32-byte private scalar and of the 65-byte uncompressed public point on P-256.
The Lambda runtime has no `cryptography` package and this file must stay one
inline module, so the public point is computed here by a small affine P-256
scalar multiplication. It runs once per stack, so speed and timing side channels
do not matter; the tests check the pair against `cryptography`.

SES SMTP credentials: an access key of the stack's SMTP IAM user, the password
derived with AWS's documented SigV4 algorithm (see `smtp_password`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import string
from collections.abc import Callable, Mapping
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import (
    CloudFormationCustomResourceEvent,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

from lambdas.custom_resource import Answer, handle

logger = Logger()

# ---------------------------------------------------------------- P-256 (SEC 2, FIPS 186-4)
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
A = P - 3
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
G = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)
Point = tuple[int, int] | None  # None is the point at infinity


def point_add(p1: Point, p2: Point) -> Point:
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2 and (y1 + y2) % P == 0:
        return None
    if p1 == p2:
        slope = (3 * x1 * x1 + A) * pow(2 * y1, -1, P) % P
    else:
        slope = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (slope * slope - x1 - x2) % P
    return x3, (slope * (x1 - x3) - y1) % P


def scalar_mult(k: int, point: Point = G) -> Point:
    """k * point by double-and-add."""
    result: Point = None
    while k:
        if k & 1:
            result = point_add(result, point)
        point = point_add(point, point)
        k >>= 1
    return result


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()  # padded, like Ruby's urlsafe_encode64


def vapid_public_key(private_key: str) -> str:
    scalar = int.from_bytes(base64.urlsafe_b64decode(private_key + "=" * (-len(private_key) % 4)), "big")
    if not 0 < scalar < N:
        raise ValueError("VAPID_PRIVATE_KEY is not a valid P-256 private key")
    point = scalar_mult(scalar)
    assert point is not None
    return b64url(b"\x04" + point[0].to_bytes(32, "big") + point[1].to_bytes(32, "big"))


def vapid_key_pair() -> tuple[str, str]:
    """(private, public) as Mastodon expects them."""
    private_key = b64url((secrets.randbelow(N - 1) + 1).to_bytes(32, "big"))
    return private_key, vapid_public_key(private_key)


# ---------------------------------------------------------------- generated values
ALPHANUMERIC = string.ascii_letters + string.digits


def alphanumeric(length: int = 32) -> str:
    """Like Rails' SecureRandom.alphanumeric(32) in `db:encryption:init`."""
    return "".join(secrets.choice(ALPHANUMERIC) for _ in range(length))


# Characters that need no escaping in a URL's user info, a curl config string or an
# env file. "_" is a word character (\w), which a rule of "not a letter or a digit"
# may not count as special: every password holds one of the others.
PASSWORD_SPECIALS = "-_."  # noqa: S105 (a character set, not a password)
REQUIRED_SPECIALS = "-."


def search_password(length: int = 32) -> str:
    """The OpenSearch internal user's password: 8-128 characters with an upper-case and a
    lower-case letter, a digit and a special character (OpenSearch Service's rule for the
    master user), each guaranteed, in random places."""
    classes = (string.ascii_uppercase, string.ascii_lowercase, string.digits, REQUIRED_SPECIALS)
    chars = [secrets.choice(c) for c in classes]
    chars += [secrets.choice(ALPHANUMERIC + PASSWORD_SPECIALS) for _ in range(length - len(chars))]
    for i in range(len(chars) - 1, 0, -1):  # Fisher-Yates with the secrets module's randomness
        j = secrets.randbelow(i + 1)
        chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)


GENERATORS: dict[str, Callable[[], str]] = {
    "SECRET_KEY_BASE": lambda: secrets.token_hex(64),
    "OTP_SECRET": lambda: secrets.token_hex(64),
    "ACTIVE_RECORD_ENCRYPTION_DETERMINISTIC_KEY": alphanumeric,
    "ACTIVE_RECORD_ENCRYPTION_KEY_DERIVATION_SALT": alphanumeric,
    "ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY": alphanumeric,
    # Hex: safe in URLs, and a valid ElastiCache AUTH token (16-128 chars, no @ " /).
    "DB_PASS": lambda: secrets.token_hex(16),
    "REDIS_PASSWORD": lambda: secrets.token_hex(16),
    # The optional cache-only Redis (SeparateCacheNodeType) has its own token.
    "CACHE_REDIS_PASSWORD": lambda: secrets.token_hex(16),
    "ORIGIN_VERIFY": lambda: secrets.token_hex(24),
    # Generated for every stack, used only with SearchEnabled (templates/search.py).
    "ES_PASS": search_password,
}


def missing_values(current: Mapping[str, str]) -> dict[str, str]:
    """The values to add to `current`; never a replacement of an existing key."""
    added = {key: generate() for key, generate in GENERATORS.items() if not current.get(key)}
    private_key, public_key = (
        current.get("VAPID_PRIVATE_KEY"),
        current.get("VAPID_PUBLIC_KEY"),
    )
    if private_key and not public_key:
        added["VAPID_PUBLIC_KEY"] = vapid_public_key(private_key)
    elif public_key and not private_key:
        raise ValueError("the secret has VAPID_PUBLIC_KEY but no VAPID_PRIVATE_KEY: repair it by hand")
    elif not private_key:
        added["VAPID_PRIVATE_KEY"], added["VAPID_PUBLIC_KEY"] = vapid_key_pair()
    return added


def smtp_password(secret_access_key: str, region: str) -> str:
    """SES SMTP password from an IAM secret access key (AWS SES developer guide,
    "Obtaining Amazon SES SMTP credentials by converting existing AWS credentials")."""
    signature = ("AWS4" + secret_access_key).encode()
    for message in ("11111111", region, "ses", "aws4_request", "SendRawEmail"):
        signature = hmac.new(signature, message.encode(), hashlib.sha256).digest()
    return base64.b64encode(b"\x04" + signature).decode()


def smtp_key_needed(current: Mapping[str, str], user_key_ids: list[str]) -> bool:
    return current.get("SMTP_LOGIN") not in user_key_ids or not current.get("SMTP_PASSWORD")


REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")


def parse_properties(properties: Mapping[str, Any]) -> tuple[str, str, str]:
    """(secret id, SMTP user name or '', SMTP region); ValueError when invalid."""
    secret_id = properties.get("SecretId") or ""
    user = properties.get("SmtpUserName") or ""
    region = properties.get("SmtpRegion") or ""
    if not isinstance(secret_id, str) or not secret_id:
        raise ValueError("property SecretId is required (the ARN of the stack's secret)")
    if not isinstance(user, str) or not isinstance(region, str):
        raise ValueError("properties SmtpUserName and SmtpRegion must be strings")
    if user and not REGION.match(region):
        raise ValueError("property SmtpRegion must be an AWS region when SmtpUserName is set")
    return secret_id, user, region


def sender_problem(properties: Mapping[str, Any]) -> str:
    """Why SES would refuse MailFromAddress, or ''.

    The stack's SES identity and SMTP user cover DomainName (SES lets a verified domain
    send from its subdomains too), so an address on any other domain fails every mail.
    A CloudFormation rule cannot compare two parameters' suffixes (rule functions have
    no string operations), so the first custom resource checks it, before the database.
    """
    sender = str(properties.get("MailFromAddress") or "")
    domain = str(properties.get("DomainName") or "").lower().rstrip(".")
    if not properties.get("SmtpUserName") or not sender or not domain:
        return ""  # external SMTP decides for itself; empty means notifications@domain
    host = sender.rpartition("@")[2].lower().rstrip(".")
    if host == domain or host.endswith("." + domain):
        return ""
    return (
        f"MailFromAddress must be on {domain} or one of its subdomains: the stack's SES "
        f"identity covers only {domain}, so SES would refuse mail from {host}. Use "
        "an address on the domain, or an external SMTP server (SmtpServer) for another one."
    )


# ---------------------------------------------------------------- AWS calls
def read_secret(client: Any, secret_id: str) -> dict[str, str]:
    try:
        text = client.get_secret_value(SecretId=secret_id).get("SecretString") or ""
    except ClientError as error:
        if error.response["Error"]["Code"] == "ResourceNotFoundException":
            return {}  # the secret has no value yet
        raise
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        # Never overwrite a value we cannot read: it may hold the only copy of a key.
        raise TypeError("the secret's current value is not a JSON object")
    return {str(k): str(v) for k, v in value.items()}


def access_key_ids(client: Any, user: str) -> list[str]:
    try:
        pages = client.get_paginator("list_access_keys").paginate(UserName=user)
        return [key["AccessKeyId"] for page in pages for key in page["AccessKeyMetadata"]]
    except ClientError as error:
        if error.response["Error"]["Code"] == "NoSuchEntity":
            return []
        raise


def delete_access_keys(client: Any, user: str, key_ids: list[str]) -> None:
    for key_id in key_ids:
        try:
            client.delete_access_key(UserName=user, AccessKeyId=key_id)
        except ClientError as error:
            if error.response["Error"]["Code"] != "NoSuchEntity":
                raise
    if key_ids:
        logger.info("Deleted access keys", extra={"user": user, "count": len(key_ids)})


def create_access_key(client: Any, user: str) -> tuple[str, str]:
    key = client.create_access_key(UserName=user)["AccessKey"]
    logger.info("Created access key", extra={"user": user, "access_key_id": key["AccessKeyId"]})
    return key["AccessKeyId"], key["SecretAccessKey"]


def fill_secret(properties: Mapping[str, Any], old_properties: Mapping[str, Any]) -> list[str]:
    """Create/Update: returns the names of the keys added or replaced (never values)."""
    secret_id, user, region = parse_properties(properties)
    problem = sender_problem(properties)
    if problem:
        raise ValueError(problem)
    old_user = str(old_properties.get("SmtpUserName") or "")
    secretsmanager, iam = boto3.client("secretsmanager"), boto3.client("iam")
    current = read_secret(secretsmanager, secret_id)
    updated = {**current, **missing_values(current)}
    if user:
        key_ids = access_key_ids(iam, user)
        if smtp_key_needed(current, key_ids):
            # The user exists only for this stack's mail: its other keys are stale
            # (and IAM allows two keys per user).
            delete_access_keys(iam, user, key_ids)
            key_id, secret_key = create_access_key(iam, user)
            updated["SMTP_LOGIN"], updated["SMTP_PASSWORD"] = (
                key_id,
                smtp_password(secret_key, region),
            )
    old_keys = access_key_ids(iam, old_user) if old_user and old_user != user else []
    if not user and updated.get("SMTP_LOGIN") in old_keys:
        (
            updated.pop("SMTP_LOGIN"),
            updated.pop("SMTP_PASSWORD", None),
        )  # switched to external SMTP
    changed = sorted(k for k in set(updated) | set(current) if updated.get(k) != current.get(k))
    if changed:
        secretsmanager.put_secret_value(SecretId=secret_id, SecretString=json.dumps(updated))
    delete_access_keys(iam, old_user, old_keys)
    return changed


def remove_smtp_keys(properties: Mapping[str, Any]) -> None:
    """Delete: CloudFormation cannot delete an IAM user that still has keys."""
    user = str(properties.get("SmtpUserName") or "")
    if user:
        iam = boto3.client("iam")
        delete_access_keys(iam, user, access_key_ids(iam, user))


# ---------------------------------------------------------------- CloudFormation
def safe_reason(error: Exception) -> str:
    """A reason that names the failure but can never carry a secret value."""
    if isinstance(error, ClientError):
        return f"{error.operation_name} failed: {error.response['Error'].get('Code', 'error')}"
    if isinstance(error, (ValueError, TypeError)):
        return str(error)  # messages name keys and properties, never values
    return f"{type(error).__name__} (see the function's log)"


def fill(event: CloudFormationCustomResourceEvent, physical_id: str) -> Answer:
    if event.request_type == "Delete":
        remove_smtp_keys(event.resource_properties)
    else:
        old = event.old_resource_properties if event.request_type == "Update" else {}
        changed = fill_secret(event.resource_properties, old)
        logger.info("Secret filled", extra={"changed_keys": changed})
    return Answer(physical_id)


@logger.inject_lambda_context
def lambda_handler(raw_event: dict[str, Any], context: LambdaContext) -> None:
    # Stable for the resource's life: a new id would make CloudFormation "delete" the
    # old one, and Delete removes the SMTP user's keys.
    stack_name = [*str(raw_event.get("StackId", "")).split("/"), "", ""][1] or "stack"
    logical_id = raw_event.get("LogicalResourceId", "AppSecrets")
    physical_id = raw_event.get("PhysicalResourceId") or f"{stack_name}-{logical_id}"
    handle(raw_event, context, lambda event: fill(event, physical_id), logger, physical_id,
           reason=safe_reason, no_echo=True)
