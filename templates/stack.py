"""The whole Mastodon stack, composed tier by tier as the architecture diagram reads.

viewer → CloudFront (edge) → ALB (load_balancing, internal behind a VPC origin where the
region supports it) → web/worker servers (compute)
→ RDS, ElastiCache, S3 (data); SES (mail); Secrets Manager (secrets); SSM (versions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from troposphere import GetAtt, Join, Output, Ref, Sub, Template, sns

from templates import (
    alarms,
    compute,
    data,
    edge,
    keys,
    load_balancing,
    mail,
    maintenance,
    network,
    operations,
    parameters,
    pipeline,
    scaling,
    secrets,
    settings,
    versions,
    waf,
)
from templates.options import BuildOptions

OWNER_ACCOUNT_OUTPUT = "OwnerAccount"
# The same path as scripts/tootctl.py's owner subcommand and the README's first steps.
OWNER_ACCOUNT_HOWTO = (
    "python scripts/tootctl.py --region ${AWS::Region} ${AWS::StackName} owner NAME --email EMAIL "
    "creates a confirmed, approved Owner account and prints its password once; sign in and change "
    "it at once (Run Command's history keeps the output)"
)


@dataclass(frozen=True)
class Assets:
    """What the build reads from disk and embeds: Lambda code and instance scripts."""

    lambdas: dict[str, str]
    instance_scripts: dict[str, str] = field(default_factory=dict)


def build_template(options: BuildOptions, assets: Assets) -> Template:
    t = Template(Description=options.description)
    p = parameters.create_parameters(t)
    net = network.create_network(t, p, assets.lambdas["availability_zones"])
    outgoing_mail = mail.create_mail(t, p)
    stack_secrets = secrets.create_secrets(t, p, assets.lambdas["app_secrets"], Ref(outgoing_mail.smtp_user))
    version_parameters = versions.create_versions(t, options, p, assets.lambdas["initial_parameter"])
    lb = load_balancing.create_load_balancing(t, p, net, stack_secrets, assets.lambdas["prefix_list"])
    servers = compute.create_server_security_group(t, net, lb)
    stores = data.create_data(t, p, net, servers, stack_secrets)
    firewall = waf.create_waf_conditions(t, p)
    waf.create_web_acl(t, firewall)
    cdn = edge.create_edge(t, p, lb, stores.bucket, stack_secrets, assets.lambdas["cloudfront_certificate"],
                           web_acl=firewall.web_acl_id)
    fleet = compute.create_compute(t, p, net, lb, stores, stack_secrets, outgoing_mail, version_parameters,
                                   servers, assets.instance_scripts)
    # Last of the create: protection on once the servers serve and CloudFront stands.
    data.create_database_settings(
        t, p, stores, assets.lambdas["database_settings"],
        after=[fleet.web_group.title, fleet.worker_group.title, cdn.distribution.title])
    scaling.create_web_scaling(t, p, fleet)
    maintenance.create_maintenance(t, fleet.worker_group)
    operations_key = keys.create_operations_key(t)
    alerts = operations.create_alert_topic(t, p, operations_key)
    alarms.create_alarms(t, p, lb, stores, fleet, alerts)
    rollout = pipeline.create_pipeline(
        t, p, version_parameters, fleet, lb, cdn, alerts, operations_key,
        assets.lambdas["rollout"], assets.lambdas["invalidate"])
    failure_notice = alarms.create_rollout_failure_notice(t, p, rollout.state_machine, alerts)
    # Every publisher the topic admits: the alarms, and the rules that target it.
    operations.create_alert_topic_policy(t, alerts, [failure_notice])
    # Last: these cover every log group and alarm the tiers above added.
    keys.encrypt_every_log_group(t, operations_key)
    alarms.create_dashboard(t)
    settings.create_refusal_alarm(t, fleet.log_groups["system"], alerts)
    _outputs(t, p, cdn, outgoing_mail, version_parameters, alerts)
    return t


def _outputs(t: Template, p: parameters.Parameters, cdn: edge.Edge, outgoing_mail: mail.Mail,
             version_parameters: versions.Versions, alerts: sns.Topic) -> None:
    t.add_output(Output("AlertTopicArn", Description="Alarms and upgrade notices", Value=Ref(alerts)))
    t.add_output(Output("InstanceUrl", Description="Your Mastodon instance",
                        Value=Join("", ["https://", Ref(p.domain), "/"])))
    t.add_output(Output("DistributionDomainName", Description="CloudFront's name for the domain",
                        Value=GetAtt(cdn.distribution, "DomainName")))
    t.add_output(Output("DistributionId", Description="CloudFront distribution (for invalidations)",
                        Value=Ref(cdn.distribution)))
    t.add_output(Output(
        "DnsRecordsToCreate", Condition=parameters.NO_HOSTED_ZONE,
        Description="Without a hosted zone, create this record at your DNS provider",
        Value=Join("", [Ref(p.domain), " CNAME (or ALIAS at the apex) ",
                        GetAtt(cdn.distribution, "DomainName")]),
    ))
    for n in range(1, mail.DKIM_RECORDS + 1):
        t.add_output(Output(
            f"DkimRecord{n}ToCreate", Condition=parameters.USE_SES_WITHOUT_ZONE,
            Description=f"Without a hosted zone, create DKIM record {n} for SES",
            Value=Join("", [GetAtt(outgoing_mail.identity, f"DkimDNSTokenName{n}"), " CNAME ",
                            GetAtt(outgoing_mail.identity, f"DkimDNSTokenValue{n}")]),
        ))
    t.add_output(Output("DesiredVersionParameter", Value=Ref(version_parameters.desired),
                        Description="Overwrite this SSM parameter with a release tag to upgrade"))
    t.add_output(Output("DeployedVersionParameter", Value=Ref(version_parameters.deployed),
                        Description="The version every process runs; new servers boot it"))
    t.add_output(Output(
        OWNER_ACCOUNT_OUTPUT,
        Description="Registrations start closed and SES in its sandbox: create the owner this way",
        Value=Sub(OWNER_ACCOUNT_HOWTO),
    ))
    t.add_output(Output("MailSetup", Condition=parameters.USE_SES,
                        Description="SES starts in its sandbox",
                        Value=Sub("Request SES production access for ${AWS::Region} so Mastodon "
                                  "can mail every user, not only verified addresses")))
