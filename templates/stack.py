"""The whole Mastodon stack, composed tier by tier as the architecture diagram reads.

viewer → CloudFront (edge) → ALB (load_balancing, internal behind a VPC origin where the
region supports it) → web/worker servers (compute)
→ RDS, ElastiCache, S3 (data); SES (mail); Secrets Manager (secrets); SSM (versions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from troposphere import GetAtt, Join, Output, Ref, Sub, Template, sns

from templates import parameters
from templates.alarms import create_alarms, create_dashboard, create_rollout_failure_notice
from templates.compute import create_compute, create_server_security_group
from templates.data import create_data, create_database_settings
from templates.edge import Edge, create_edge
from templates.image_push import create_image_push
from templates.keys import create_operations_key, encrypt_every_log_group
from templates.load_balancing import create_load_balancing
from templates.mail import DKIM_RECORDS, Mail, create_mail
from templates.maintenance import create_maintenance
from templates.network import create_network
from templates.operations import create_alert_topic, create_alert_topic_policy
from templates.options import BuildOptions
from templates.pipeline import create_pipeline
from templates.scaling import create_queue_worker_scaling, create_web_scaling
from templates.search import create_search, create_search_alarms
from templates.secrets import create_secrets
from templates.settings import create_refusal_alarm
from templates.versions import Versions, create_versions
from templates.waf import create_waf_conditions, create_web_acl

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
    """Each tier's value is named after its tier; tiers receive what they use."""
    t = Template(Description=options.description)
    p = parameters.create_parameters(t)
    network = create_network(t, p, assets.lambdas["availability_zones"])
    mail = create_mail(t, p)
    secrets = create_secrets(t, p, assets.lambdas["app_secrets"], Ref(mail.smtp_user))
    versions = create_versions(t, options, p, assets.lambdas["initial_parameter"])
    load_balancing = create_load_balancing(t, p, network, secrets, assets.lambdas["prefix_list"])
    server_security_group = create_server_security_group(t, network, load_balancing)
    data = create_data(t, p, network, server_security_group, secrets)
    search = create_search(t, p, network, server_security_group, secrets)
    waf = create_waf_conditions(t, p)
    create_web_acl(t, waf)
    edge = create_edge(t, p, load_balancing, data.bucket, secrets, assets.lambdas["cloudfront_certificate"],
                       web_acl=waf.web_acl_id)
    compute = create_compute(t, p, network, load_balancing, data, secrets, mail, versions,
                             server_security_group, assets.instance_scripts, options_env=search.stack_env())
    # Last of the create: protection on once the servers serve and CloudFront stands.
    create_database_settings(
        t, p, data, assets.lambdas["database_settings"],
        after=[compute.web_group.title, compute.worker_group.title, edge.distribution.title])
    create_web_scaling(t, p, compute)
    create_queue_worker_scaling(t, p, compute)
    create_maintenance(t, compute.worker_group)
    operations_key = create_operations_key(t)
    alerts = create_alert_topic(t, p, operations_key)
    create_alarms(t, p, load_balancing, data, compute, alerts)
    create_search_alarms(t, p, search, compute.log_groups["system"], alerts)
    create_refusal_alarm(t, compute.log_groups["system"], alerts)
    pipeline = create_pipeline(
        t, p, versions, compute, load_balancing, edge, alerts, operations_key,
        assets.lambdas["rollout"], assets.lambdas["invalidate"])
    assert pipeline.state_parameter is not None
    create_image_push(t, p, versions, pipeline.state_parameter, assets.lambdas["image_push"])
    failure_notice = create_rollout_failure_notice(t, p, pipeline.state_machine, alerts, compute.queue_group)
    # Every publisher the topic admits: the alarms, and the rules that target it.
    create_alert_topic_policy(t, alerts, [failure_notice])
    # Last: these cover every log group and alarm the tiers above added.
    encrypt_every_log_group(t, operations_key)
    create_dashboard(t)
    _outputs(t, p, edge, mail, versions, alerts)
    return t


def _outputs(t: Template, p: parameters.Parameters, edge: Edge, mail: Mail, versions: Versions,
             alerts: sns.Topic) -> None:
    t.add_output(Output("AlertTopicArn", Description="Alarms and upgrade notices", Value=Ref(alerts)))
    t.add_output(Output("InstanceUrl", Description="Your Mastodon instance",
                        Value=Join("", ["https://", Ref(p.domain), "/"])))
    t.add_output(Output("DistributionDomainName", Description="CloudFront's name for the domain",
                        Value=GetAtt(edge.distribution, "DomainName")))
    t.add_output(Output("DistributionId", Description="CloudFront distribution (for invalidations)",
                        Value=Ref(edge.distribution)))
    t.add_output(Output(
        "DnsRecordsToCreate", Condition=parameters.NO_HOSTED_ZONE,
        Description="Without a hosted zone, create this record at your DNS provider",
        Value=Join("", [Ref(p.domain), " CNAME (or ALIAS at the apex) ",
                        GetAtt(edge.distribution, "DomainName")]),
    ))
    for n in range(1, DKIM_RECORDS + 1):
        t.add_output(Output(
            f"DkimRecord{n}ToCreate", Condition=parameters.USE_SES_WITHOUT_ZONE,
            Description=f"Without a hosted zone, create DKIM record {n} for SES",
            Value=Join("", [GetAtt(mail.identity, f"DkimDNSTokenName{n}"), " CNAME ",
                            GetAtt(mail.identity, f"DkimDNSTokenValue{n}")]),
        ))
    t.add_output(Output("DesiredVersionParameter", Value=Ref(versions.desired),
                        Description="Overwrite this SSM parameter with a release tag to upgrade"))
    t.add_output(Output("DeployedVersionParameter", Value=Ref(versions.deployed),
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
