"""Small helpers for IAM: every role of the stack is one service's, with one inline policy."""

from __future__ import annotations

from awacs.aws import Allow, Condition, PolicyDocument, Principal, Statement
from awacs.sts import AssumeRole
from troposphere import Template, iam


def service_role(
    t: Template,
    title: str,
    service: str,
    policy_name: str,
    statements: list[Statement],
    managed_policies: list[object] | None = None,
    trust_condition: Condition | None = None,
) -> iam.Role:
    """A role only `service` (e.g. "lambda.amazonaws.com") may assume, allowed `statements`."""
    trust = Statement(Effect=Allow, Action=[AssumeRole], Principal=Principal("Service", service))
    if trust_condition is not None:
        trust.Condition = trust_condition
    role = iam.Role(
        title,
        AssumeRolePolicyDocument=PolicyDocument(Statement=[trust]),
        Policies=[iam.Policy(PolicyName=policy_name,
                             PolicyDocument=PolicyDocument(Version="2012-10-17", Statement=statements))],
    )
    if managed_policies:
        role.ManagedPolicyArns = managed_policies
    return t.add_resource(role)
