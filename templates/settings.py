"""Mastodon's other settings: any environment variable the stack does not own, without a stack update.

Two optional sources, both read by every server at boot and again by deploy.sh when it
restarts the containers (a rollout, or `scripts/settings.py STACK apply`):

- Parameter Store: with MastodonSettings=true, each parameter directly under the stack's
  settings path (SETTINGS_PATH, e.g. /mastodon/<stack>/settings/HCAPTCHA_SITE_KEY) is one
  variable, named after the last segment of its name. String or SecureString (with the
  aws/ssm key, which every principal of the account may decrypt through Parameter Store).
- Secrets Manager: MastodonSettingsSecretArn names a secret whose value is a JSON object
  of variables (e.g. {"HCAPTCHA_SECRET_KEY": "..."}), for the secret ones.

The servers check every name and value before any of them is used (common.sh
render_settings): a name of NAME_PATTERN's shape, not one the stack owns (RESERVED_NAMES,
OWNED_PREFIXES, and every variable the stack itself writes into mastodon.env or a unit),
a value without a line break (docker --env-file cannot carry one). One bad entry refuses
all of them, with the reason in the log: a boot fails (and signals so), a deploy stops
before it changes anything.

The instance role may read exactly the settings path and exactly that secret; each grant
exists only while its option is on.
"""

from __future__ import annotations

from awacs import secretsmanager as awacs_sm
from awacs import ssm as awacs_ssm
from awacs.aws import Allow, PolicyDocument, Statement
from troposphere import If, Ref, Sub, Template, cloudwatch, iam, logs, sns

from templates import parameters
from templates.alerting import LOGGED_FAILURE, topic_alarm
from templates.options import STACK_PREFIX
from templates.parameters import Parameters
from templates.sidekiq import METRICS_NAMESPACE  # the stack's one custom-metrics namespace

# The Parameter Store path whose children are settings (a Sub template). No trailing
# slash: GetParametersByPath is authorized against the path as requested (Systems Manager
# User Guide, "How Parameter Store authorizes parameter retrieval").
SETTINGS_PATH = f"{STACK_PREFIX}/settings"
# A variable name: upper case, digits and _, starting with a letter; bounded.
NAME_PATTERN = "^[A-Z][A-Z0-9_]{0,99}$"
# At most this many settings (both sources together): a bound on what a server reads.
MAX_SETTINGS = 200
# Prefixes of the variables the stack owns, now or with an option on (database, replica,
# Redis, search, media, mail, secrets); and the runtime's own (Ruby, Bundler, the AWS SDK).
OWNED_PREFIXES = (
    "DB_", "REPLICA_DB_", "REDIS_", "CACHE_REDIS_", "SIDEKIQ_REDIS_", "ES_", "S3_", "SMTP_",
    "ACTIVE_RECORD_ENCRYPTION_", "VAPID_", "AWS_", "BUNDLE_", "GEM_", "RUBY",
)
# The URL forms of what the stack owns, each of which overrides the parts the stack writes:
# Mastodon's config/database.yml merges DATABASE_URL over DB_* and REPLICA_DATABASE_URL alone
# turns a replica on; REDIS_URL, SIDEKIQ_REDIS_URL and CACHE_REDIS_URL replace the Redis the
# stack gives each use (config/redis.yml). Reserved whether or not a prefix covers them.
OWNED_URLS = ("DATABASE_URL", "REPLICA_DATABASE_URL", "REDIS_URL", "SIDEKIQ_REDIS_URL", "CACHE_REDIS_URL")
# Names never taken from the settings, whether or not the stack writes them in this
# configuration. RAILS_ENV, NODE_ENV, PORT, BIND and SOCKET cannot come from a dotenv file
# (Mastodon docs, admin/config.md); LOCAL_DOMAIN and WEB_DOMAIN can never change after
# the first start, and the stack serves Mastodon at its Domain parameter only (CloudFront
# alias and certificates), so a different WEB_DOMAIN would send visitors to a host it does
# not serve; the rest are sized or set per container by the scripts (bootstrap.sh units,
# deploy.sh migrations, pools.sh) or the container's own.
RESERVED_NAMES = (
    "RAILS_ENV", "NODE_ENV", "PORT", "BIND", "SOCKET", "LOCAL_DOMAIN", "WEB_DOMAIN",
    "SECRET_KEY_BASE", "OTP_SECRET", "TRUSTED_PROXY_IP", "DB_POOL", "WEB_CONCURRENCY", "MAX_THREADS",
    "SIDEKIQ_CONCURRENCY", "STREAMING_CLUSTER_NUM", "PERSISTENT_TIMEOUT", "NODE_OPTIONS",
    "MASTODON_KEEP_ALIVE_SECONDS", "SKIP_POST_DEPLOYMENT_MIGRATIONS", "PREPARED_STATEMENTS",
    "PATH", "HOME", "LD_PRELOAD", "LD_LIBRARY_PATH", *OWNED_URLS,
)

# A server that refuses its settings fails its boot with "FAILED: <SETTINGS_FAILURE>: <why>"
# and ships that log to the system log group, where the refusal alarm counts it.
SETTINGS_FAILURE = "the other Mastodon settings"
# What stack.env hands the servers (compute.py SERVER_FACTS): the rule, written once here.
SERVER_FACTS = {
    "SETTINGS_NAME_PATTERN": NAME_PATTERN,
    "SETTINGS_MAX": str(MAX_SETTINGS),
    "SETTINGS_OWNED_PREFIXES": " ".join(OWNED_PREFIXES),
    "SETTINGS_RESERVED_NAMES": " ".join(RESERVED_NAMES),
    "SETTINGS_FAILURE": SETTINGS_FAILURE,
}

REFUSED_FILTER = "MastodonSettingsRefusedFilter"
REFUSED_ALARM = "MastodonSettingsRefusedAlarm"
REFUSED_METRIC = "MastodonSettingsRefused"

READ_PARAMETERS_POLICY = "MastodonSettingsParametersPolicy"
READ_SECRET_POLICY = "MastodonSettingsSecretPolicy"


def settings_path_arn() -> Sub:
    return Sub("arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter" + SETTINGS_PATH)


def stack_env(p: Parameters) -> dict[str, object]:
    """stack.env's settings sources: empty while their option is off."""
    return {
        "SETTINGS_PATH": If(parameters.HAS_MASTODON_SETTINGS, Sub(SETTINGS_PATH), ""),
        "SETTINGS_SECRET_ARN": Ref(p.mastodon_settings_secret),
    }


def create_settings_access(t: Template, p: Parameters, roles: list[iam.Role]) -> None:
    """Each server role may read the settings path and the settings secret, only while each is on.

    A role that exists only under a condition (the queue workers') is named only then."""
    names = [If(r.resource["Condition"], Ref(r), Ref("AWS::NoValue")) if "Condition" in r.resource
             else Ref(r) for r in roles]
    grants = [
        # Only the direct children (the servers never ask recursively), whatever their type.
        (READ_PARAMETERS_POLICY, parameters.HAS_MASTODON_SETTINGS, "MastodonSettingsParameters",
         awacs_ssm.GetParametersByPath, settings_path_arn()),
        (READ_SECRET_POLICY, parameters.HAS_MASTODON_SETTINGS_SECRET, "MastodonSettingsSecret",
         awacs_sm.GetSecretValue, Ref(p.mastodon_settings_secret)),
    ]
    for title, condition, policy_name, action, resource in grants:
        t.add_resource(iam.PolicyType(
            title,
            Condition=condition,
            PolicyName=policy_name,
            Roles=names,
            PolicyDocument=PolicyDocument(Version="2012-10-17", Statement=[
                Statement(Effect=Allow, Action=[action], Resource=[resource]),
            ]),
        ))


def create_refusal_alarm(t: Template, system_logs: logs.LogGroup, topic: sns.Topic) -> cloudwatch.Alarm:
    """Mails the alert topic when a server's boot fails on its settings (a scale-out or a
    replacement, which no one watches), while a source of settings is configured.

    Not on the stack's dashboard: the dashboard exists in every stack, and may not name an
    alarm that exists only with an option.
    """
    namespace = METRICS_NAMESPACE
    t.add_resource(logs.MetricFilter(
        REFUSED_FILTER,
        Condition=parameters.HAS_ANY_MASTODON_SETTINGS,
        LogGroupName=Ref(system_logs),
        FilterPattern=f'"FAILED: {SETTINGS_FAILURE}"',
        MetricTransformations=[logs.MetricTransformation(
            MetricNamespace=namespace, MetricName=REFUSED_METRIC, MetricValue="1", Unit="Count")],
    ))
    return topic_alarm(
        t, REFUSED_ALARM, topic, "a server refused Mastodon's other settings",
        "A server failed its boot on Mastodon's other settings (a bad name or value, or "
        "a source it cannot read): it does not serve. The system log group's bootstrap stream names the "
        "setting; fix it, then run scripts/settings.py STACK apply.",
        Condition=parameters.HAS_ANY_MASTODON_SETTINGS,
        Namespace=namespace,
        MetricName=REFUSED_METRIC,
        **LOGGED_FAILURE.properties(),
    )
