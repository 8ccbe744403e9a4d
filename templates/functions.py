"""Lambda functions embedded in the template, each with its own role and log group.

The code of each function is a module of `lambdas/` (with the shared modules of
`lambdas/` it imports, such as custom_resource), or a package of modules
(`lambdas/rollout/`), that `assemble` joins into one file, inlined (Code.ZipFile), so
a single template file is all a quick-create link needs, in any region. Powertools
comes from its public layer, resolved in the stack's region from the SSM parameter
AWS publishes for it.
"""

from __future__ import annotations

from awacs import logs as awacs_logs
from awacs.aws import Allow, Statement
from troposphere import GetAtt, Ref, Sub, Template, awslambda, cloudformation, iam, logs

from templates import policies
from templates.options import STACK_PREFIX

RUNTIME = "python3.13"
ARCHITECTURE = "arm64"
POWERTOOLS_LAYER = (
    "{{resolve:ssm:/aws/service/powertools/python/" + ARCHITECTURE + "/" + RUNTIME + "/latest}}"
)

# checkov's CKV_AWS_115/116/117/173 ask every function for reserved concurrency, a
# dead-letter queue, a VPC and encrypted variables; none fits a function that
# CloudFormation or Step Functions calls synchronously, has no environment secrets and
# only calls AWS APIs. The reasons travel with each function.
CHECKOV_SKIPS = [
    {"id": "CKV_AWS_115", "comment": "Called a few times per stack operation or rollout; "
     "reserved concurrency would only take capacity from the account."},
    {"id": "CKV_AWS_116", "comment": "Invoked synchronously by CloudFormation or as a Step "
     "Functions task (the certificate function also by itself, to keep waiting); every failure "
     "goes back to its caller, which reports or retries it: a dead-letter queue would hold "
     "nothing."},
    {"id": "CKV_AWS_117", "comment": "Calls only public AWS APIs; a VPC would need NAT or "
     "endpoints for nothing."},
    {"id": "CKV_AWS_173", "comment": "The function has no environment variables with "
     "secrets; only Powertools settings and resource identifiers."},
]


def assemble(package: str, modules: list[tuple[str, str]], entry: str) -> str:
    """One inline file that runs a package's modules as themselves.

    Each module's source is kept verbatim, in order, and executed as a module of its
    own name (registered in sys.modules), so `from package.module import name` works
    as in the tests, which import the same files. `entry` names the module whose
    lambda_handler the file exposes. Sources must not contain three single quotes.
    """
    parts = [
        f"# Assembled by the build from {package.replace('.', '/')}/: "
        "one module per section, run under its own name.\n"
        "import sys as _sys\n"
        "import types as _types\n\n\n"
        "def _module(name, source):\n"
        "    module = _types.ModuleType(name)\n"
        "    module.__path__ = []\n"
        "    _sys.modules[name] = module\n"
        "    parent, _, child = name.rpartition('.')\n"
        "    if parent:\n"
        "        setattr(_sys.modules[parent], child, module)\n"
        "    exec(compile(source, name.replace('.', '/') + '.py', 'exec'), module.__dict__)\n\n\n"
    ]
    top = package.split(".")
    for depth in range(1, len(top) + 1):
        parts.append(f"_module({'.'.join(top[:depth])!r}, '')\n")
    for name, source in modules:
        if "'''" in source or source.endswith("\\"):
            raise ValueError(f"{package}.{name} cannot be inlined: it contains three single quotes")
        parts.append(f"\n_module('{package}.{name}', r'''{source}''')\n")
    parts.append(f"\nlambda_handler = _sys.modules['{package}.{entry}'].lambda_handler\n")
    return "".join(parts)


def _role_title(function_name: str) -> str:
    return f"{function_name}Role"


def lambda_role(t: Template, name: str, statements: list[Statement], log_group: logs.LogGroup,
                condition: str | None = None) -> iam.Role:
    """A role the function alone assumes, allowed its statements and its own logs."""
    logging = Statement(
        Effect=Allow,
        Action=[awacs_logs.CreateLogStream, awacs_logs.PutLogEvents],
        Resource=[GetAtt(log_group, "Arn")],
    )
    return policies.service_role(t, _role_title(name), "lambda.amazonaws.com", name, [logging, *statements],
                                 condition=condition)


def role_of(t: Template, function: awslambda.Function) -> iam.Role:
    """The role inline_function gave `function`, for grants its tier adds later."""
    role = t.resources[_role_title(function.title)]
    assert isinstance(role, iam.Role), f"{function.title} was not made by inline_function"
    return role


def inline_function(
    t: Template,
    name: str,
    code: str,
    statements: list[Statement],
    retention: Ref,
    timeout: int = 60,
    description: str = "",
    memory: int = 256,
    environment: dict[str, object] | None = None,
    condition: str | None = None,
) -> awslambda.Function:
    """Add function `name` running `code`, its log group and its least-privilege role, all
    three under the template condition `condition` when one is given."""
    log_group = logs.LogGroup(
        f"{name}Logs",
        RetentionInDays=retention,
        LogGroupName=Sub(f"{STACK_PREFIX}/lambda/{name}"),
    )
    if condition is not None:
        log_group.Condition = condition
    t.add_resource(log_group)
    role = lambda_role(t, name, statements, log_group, condition)
    function = t.add_resource(awslambda.Function(
        name,
        Description=description,
        Runtime=RUNTIME,
        Architectures=[ARCHITECTURE],
        Handler="index.lambda_handler",
        Code=awslambda.Code(ZipFile=code),
        Role=GetAtt(role, "Arn"),
        Timeout=timeout,
        MemorySize=memory,
        Layers=[POWERTOOLS_LAYER],
        LoggingConfig=awslambda.LoggingConfig(LogGroup=Ref(log_group)),
        Environment=awslambda.Environment(Variables={
            "POWERTOOLS_SERVICE_NAME": name,
            "POWERTOOLS_METRICS_NAMESPACE": "Mastodon",
            "POWERTOOLS_TRACE_DISABLED": "true",
            **(environment or {}),
        }),
        Metadata={"checkov": {"skip": CHECKOV_SKIPS}},
    ))
    if condition is not None:
        function.Condition = condition
    return function


def provided_resource(t: Template, kind: str, title: str, function: awslambda.Function, timeout: int,
                      **properties: object) -> cloudformation.CustomResource:
    """Add resource `title` of type Custom::`kind`, which `function` creates, updates and
    deletes (lambdas/custom_resource.py); CloudFormation waits `timeout` seconds at most
    for its answer. The function's module documents the properties it reads."""
    kind_class = type(kind, (cloudformation.CustomResource,), {"resource_type": f"Custom::{kind}"})
    resource = kind_class(title, ServiceToken=GetAtt(function, "Arn"), ServiceTimeout=timeout, **properties)
    return t.add_resource(resource)
