"""Small helpers for IAM: every role of the stack is one service's, with one inline policy."""

from __future__ import annotations

from awacs.aws import Allow, ArnLike, Condition, PolicyDocument, Principal, Statement, StringEquals
from awacs.sts import AssumeRole
from troposphere import Ref, Sub, Template, iam


def confused_deputy_condition(service: str) -> Condition | None:
    """The aws:SourceAccount/aws:SourceArn trust condition a service documents, or None.

    A condition on a key the service does not put in its AssumeRole request denies the
    role to the service itself, so only services whose documentation says they set both
    keys get one:
    - events.amazonaws.com: the rule's account and ARN (EventBridge User Guide, "Using
      IAM policy conditions in Amazon EventBridge").
    - states.amazonaws.com: the state machine's account and ARN (Step Functions
      Developer Guide, cross-service confused deputy prevention; the roles its console
      creates carry exactly this condition).
    Not ec2.amazonaws.com (instance profiles) nor lambda.amazonaws.com (execution roles):
    neither service documents these keys for role assumption; a role of theirs can only
    be passed by a principal of this account with iam:PassRole.
    """
    sources = {"events.amazonaws.com": "events:${AWS::Region}:${AWS::AccountId}:rule/*",
               "states.amazonaws.com": "states:${AWS::Region}:${AWS::AccountId}:stateMachine:*"}
    if service in sources:
        return Condition([
            StringEquals({"aws:SourceAccount": Ref("AWS::AccountId")}),
            ArnLike({"aws:SourceArn": Sub("arn:${AWS::Partition}:" + sources[service])}),
        ])
    return None


def service_role(
    t: Template,
    title: str,
    service: str,
    policy_name: str,
    statements: list[Statement],
    managed_policies: list[object] | None = None,
    trust_condition: Condition | None = None,
    condition: str | None = None,
) -> iam.Role:
    """A role only `service` (e.g. "lambda.amazonaws.com") may assume, allowed `statements`;
    `condition` names the template condition under which the role exists (always if None)."""
    trust = Statement(Effect=Allow, Action=[AssumeRole], Principal=Principal("Service", service))
    trusted_if = trust_condition if trust_condition is not None else confused_deputy_condition(service)
    if trusted_if is not None:
        trust.Condition = trusted_if
    role = iam.Role(
        title,
        AssumeRolePolicyDocument=PolicyDocument(Statement=[trust]),
        Policies=[iam.Policy(PolicyName=policy_name,
                             PolicyDocument=PolicyDocument(Version="2012-10-17", Statement=statements))],
    )
    if managed_policies:
        role.ManagedPolicyArns = managed_policies
    if condition is not None:
        role.Condition = condition
    return t.add_resource(role)
