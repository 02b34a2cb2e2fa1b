"""template.yaml, read the way CloudFormation reads it, reduced to what the local stack has to play.

The template is the single source of truth: routes, rules, the schedule, table and bucket definitions and
the functions' environment all come from it, so the local stack cannot drift from what is deployed.
cfn-lint's decoder understands the short-form intrinsics (`!Ref`, `!Sub`, `!GetAtt`) and hands them back
as their long form (`{"Ref": ...}`), which `Resolver` then evaluates against local physical names.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ACCOUNT_ID = "123456789012"  # moto's default account
DEFAULT_TIMEOUT_MS = 29000  # API Gateway's integration timeout when an Api event sets no TimeoutInMillis
IMPLICIT_API = "ServerlessRestApi"  # the logical id SAM gives the API of Api events without a RestApiId
NO_VALUE = object()  # AWS::NoValue: the key disappears
_SUB_VAR = re.compile(r"\$\{([^}!][^}]*)\}")


class TemplateError(ValueError):
    """Something in template.yaml the local stack cannot emulate (named, with its location)."""


@dataclass(frozen=True)
class ApiRoute:
    function: str
    event: str
    path: str  # the template path, e.g. /v1/images/tasks/{id}
    method: str  # upper case, or ANY
    stage: str  # the API's StageName (API Gateway puts it in requestContext.path)
    timeout_ms: int = DEFAULT_TIMEOUT_MS  # the event's TimeoutInMillis: API Gateway's integration timeout
    api: str = IMPLICIT_API  # the logical id of its AWS::Serverless::Api (whose gateway responses apply)


@dataclass(frozen=True)
class GatewayResponse:
    """One of an API's `GatewayResponses` (e.g. INTEGRATION_TIMEOUT): what API Gateway answers itself."""

    status: int | None  # None: the response type's own status
    headers: dict[str, str] = field(default_factory=dict)  # the literal values, unquoted
    templates: dict[str, str] = field(default_factory=dict)  # content type -> body, with $context variables


@dataclass(frozen=True)
class EventRule:
    function: str
    event: str
    bus_name: str
    pattern: dict[str, Any]


@dataclass(frozen=True)
class ScheduleEvent:
    function: str
    event: str
    expression: str  # rate(...) or cron(...), as in the template
    enabled: bool = True


@dataclass(frozen=True)
class SqsEvent:
    """A function's `SQS` event: the queue (its physical name) whose messages invoke it, Records batched."""

    function: str
    event: str
    queue: str
    batch_size: int


@dataclass(frozen=True)
class S3Notification:
    function: str
    event: str
    bucket: str
    events: list[str]
    filter_rules: list[dict[str, str]]


@dataclass(frozen=True)
class Function:
    logical_id: str
    name: str
    code_dir: Path
    handler: str  # module.attribute
    layer_dirs: list[Path]
    timeout_s: int
    memory_mb: int
    environment: dict[str, str]
    on_failure_queue: str | None = None  # EventInvokeConfig's SQS on-failure destination (a queue name)

    @property
    def module_name(self) -> str:
        return self.handler.rpartition(".")[0]

    @property
    def handler_name(self) -> str:
        return self.handler.rpartition(".")[2]


@dataclass
class LocalTemplate:
    """The resolved pieces of the template, with local physical names filled in."""

    root: Path
    stack_name: str
    region: str
    physical_names: dict[str, str]
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)  # logical id -> resolved Properties
    buckets: dict[str, dict[str, Any]] = field(default_factory=dict)
    buses: dict[str, dict[str, Any]] = field(default_factory=dict)
    functions: dict[str, Function] = field(default_factory=dict)
    api_routes: list[ApiRoute] = field(default_factory=list)
    event_rules: list[EventRule] = field(default_factory=list)
    schedules: list[ScheduleEvent] = field(default_factory=list)
    s3_notifications: list[S3Notification] = field(default_factory=list)
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)  # SQS queues the template declares
    sqs_events: list[SqsEvent] = field(default_factory=list)
    gateway_responses: dict[str, dict[str, GatewayResponse]] = field(default_factory=dict)  # API -> type -> answer
    binary_media_types: dict[str, frozenset[str]] = field(default_factory=dict)  # API -> media types (type/sub)
    environment: dict[str, str] = field(default_factory=dict)  # process-wide: the union of every function's
    resource_variables: set[str] = field(default_factory=set)  # those naming a resource (local names must win)


class Resolver:
    """Evaluates the intrinsic functions the template uses, against local names and parameter defaults."""

    def __init__(self, resources: dict[str, Any], parameters: dict[str, str], physical_names: dict[str, str],
                 *, stack_name: str, region: str, conditions: dict[str, Any] | None = None):
        self.resources = resources
        self.conditions = conditions or {}
        self.parameters = parameters
        self.physical_names = physical_names
        self.pseudo = {
            "AWS::StackName": stack_name,
            "AWS::Region": region,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": f"arn:aws:cloudformation:{region}:{ACCOUNT_ID}:stack/{stack_name}/local",
        }

    def __call__(self, value: Any, where: str = "") -> Any:
        if isinstance(value, dict):
            if len(value) == 1:
                (key, arg), = value.items()
                if key == "Ref":
                    return self.ref(arg, where)
                if key == "Fn::Sub":
                    return self.sub(arg, where)
                if key == "Fn::GetAtt":
                    return self.get_att(arg, where)
                if key == "Fn::Join":
                    sep, items = arg
                    return str(sep).join(str(self(i, where)) for i in self(items, where))
                if key == "Fn::If":
                    name, when_true, when_false = arg
                    return self(when_true if self.condition(name, where) else when_false, where)
                if key == "Fn::Select":
                    index, items = arg
                    return self(items, where)[int(self(index, where))]
                if key.startswith("Fn::"):
                    raise TemplateError(f"{where}: {key} is not supported by the local stack")
            out = {}
            for k, v in value.items():
                resolved = self(v, f"{where}.{k}")
                if resolved is not NO_VALUE:
                    out[str(k)] = resolved
            return out
        if isinstance(value, list):
            return [r for i, v in enumerate(value) if (r := self(v, f"{where}[{i}]")) is not NO_VALUE]
        if isinstance(value, str):
            return str(value)  # cfn-lint's str_node -> plain str
        return value

    def condition(self, name: str, where: str) -> bool:
        """A condition of the template's `Conditions` (Fn::Equals, Fn::Not, Fn::And, Fn::Or, Condition)."""
        if name not in self.conditions:
            raise TemplateError(f"{where}: no condition named {name!r}")
        return self._truth(self.conditions[name], f"Conditions.{name}")

    def _truth(self, expr: Any, where: str) -> bool:
        (key, arg), = expr.items()
        if key == "Fn::Equals":
            left, right = (str(self(v, where)) for v in arg)
            return left == right
        if key == "Fn::Not":
            return not self._truth(arg[0], where)
        if key == "Fn::And":
            return all(self._truth(a, where) for a in arg)
        if key == "Fn::Or":
            return any(self._truth(a, where) for a in arg)
        if key == "Condition":
            return self.condition(arg, where)
        raise TemplateError(f"{where}: {key} is not supported in a condition by the local stack")

    def ref(self, name: str, where: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.physical_names:
            return self.physical_names[name]
        raise TemplateError(f"{where}: !Ref {name} names no parameter or resource")

    def get_att(self, arg: Any, where: str) -> str:
        logical, _, attr = arg.partition(".") if isinstance(arg, str) else (arg[0], ".", arg[1])
        if logical not in self.resources:
            raise TemplateError(f"{where}: !GetAtt {logical} names no resource")
        name = self.physical_names.get(logical, logical)
        kind = self.resources[logical].get("Type", "")
        if attr == "Arn":
            return arn_of(kind, name, self.pseudo["AWS::Region"])
        if attr in ("Name", "QueueName"):
            return name
        raise TemplateError(f"{where}: !GetAtt {logical}.{attr} is not supported by the local stack")

    def sub(self, arg: Any, where: str) -> str:
        text, local_vars = (arg, {}) if isinstance(arg, str) else (arg[0], self(arg[1], where))

        def one(match: re.Match) -> str:
            name = match[1]
            if name in local_vars:
                return str(local_vars[name])
            if "." in name and not name.startswith("AWS::"):
                return str(self.get_att(name, where))
            return str(self.ref(name, where))

        return _SUB_VAR.sub(one, str(text)).replace("${!", "${")


def arn_of(resource_type: str, name: str, region: str) -> str:
    if resource_type == "AWS::S3::Bucket":
        return f"arn:aws:s3:::{name}"
    if resource_type == "AWS::DynamoDB::Table":
        return f"arn:aws:dynamodb:{region}:{ACCOUNT_ID}:table/{name}"
    if resource_type == "AWS::Events::EventBus":
        return f"arn:aws:events:{region}:{ACCOUNT_ID}:event-bus/{name}"
    if resource_type in ("AWS::Serverless::Function", "AWS::Lambda::Function"):
        return f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{name}"
    if resource_type == "AWS::SQS::Queue":
        return f"arn:aws:sqs:{region}:{ACCOUNT_ID}:{name}"
    return f"arn:aws:local:{region}:{ACCOUNT_ID}:{resource_type.split('::')[-1].lower()}/{name}"


def load(root: Path, *, stack_name: str = "imagegw-local", region: str = "us-east-1",
         bucket_name: str | None = None, parameter_overrides: dict[str, str] | None = None,
         template_file: str = "template.yaml") -> LocalTemplate:
    """Decode `root/template_file` and resolve everything the local stack needs."""
    # Imported here, not at the top: cfn-lint takes about a second to import, and the API's execution
    # environments (local/environments.py) import this module for its dataclasses only.
    from cfnlint.decode import cfn_yaml

    path = root / template_file
    raw = cfn_yaml.loads(path.read_text(encoding="utf-8"), fname=str(path))
    if not isinstance(raw, dict) or "Resources" not in raw:
        raise TemplateError(f"{path}: not a CloudFormation template")
    resources: dict[str, Any] = raw["Resources"]
    parameters = _parameter_values(raw.get("Parameters") or {}, parameter_overrides or {})
    physical = _physical_names(resources, stack_name, bucket_name)
    resolve = Resolver(resources, parameters, physical, stack_name=stack_name, region=region,
                       conditions=raw.get("Conditions") or {})
    # Names given in the template itself (e.g. the bus's `Name: !Sub ${AWS::StackName}-imagegw`) win.
    for logical, res in resources.items():
        explicit = _explicit_name(res, resolve, logical)
        if explicit:
            physical[logical] = explicit

    out = LocalTemplate(root=root, stack_name=stack_name, region=region, physical_names=physical)
    for logical, res in resources.items():
        kind = res.get("Type")
        if kind == "AWS::DynamoDB::Table":
            out.tables[logical] = resolve(res.get("Properties") or {}, f"Resources.{logical}.Properties")
        elif kind == "AWS::S3::Bucket":
            out.buckets[logical] = resolve(res.get("Properties") or {}, f"Resources.{logical}.Properties")
        elif kind == "AWS::Events::EventBus":
            out.buses[logical] = resolve(res.get("Properties") or {}, f"Resources.{logical}.Properties")
        elif kind == "AWS::SQS::Queue":
            out.queues[logical] = resolve(res.get("Properties") or {}, f"Resources.{logical}.Properties")
        elif kind == "AWS::Serverless::Api":
            out.gateway_responses[logical] = _gateway_responses(res.get("Properties") or {}, resolve,
                                                                f"Resources.{logical}.Properties.GatewayResponses")
            declared = resolve((res.get("Properties") or {}).get("BinaryMediaTypes") or [],
                               f"Resources.{logical}.Properties.BinaryMediaTypes")
            # SAM writes "/" as "~1" (a JSON pointer escape) in binary media types
            out.binary_media_types[logical] = frozenset(str(t).replace("~1", "/").lower() for t in declared)

    globals_fn = (raw.get("Globals") or {}).get("Function") or {}
    for logical, res in resources.items():
        if res.get("Type") == "AWS::Serverless::Function":
            _add_function(out, logical, res.get("Properties") or {}, globals_fn, resources, resolve)
    return out


def _parameter_values(declared: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    values = {}
    for name, spec in declared.items():
        if name in overrides:
            values[name] = _allowed(name, spec, str(overrides[name]))
        elif "Default" in spec:
            default = spec["Default"]
            values[name] = ",".join(map(str, default)) if isinstance(default, list) else str(default)
        else:
            raise TemplateError(f"Parameters.{name} has no Default: pass it in parameter_overrides")
    unknown = set(overrides) - set(declared)
    if unknown:
        raise TemplateError(f"parameter_overrides names unknown parameters: {sorted(unknown)}")
    return values


def _allowed(name: str, spec: dict[str, Any], value: str) -> str:
    """An override CloudFormation would accept: a Number within MinValue..MaxValue, one of AllowedValues."""
    if spec.get("Type") == "Number":
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        low, high = float(spec.get("MinValue", -math.inf)), float(spec.get("MaxValue", math.inf))
        if not low <= number <= high:  # also refuses nan
            raise TemplateError(f"Parameters.{name}: {value!r} is not a number from {spec.get('MinValue', '-inf')} "
                                f"to {spec.get('MaxValue', 'inf')}")
    allowed = [str(v) for v in spec.get("AllowedValues") or []]
    if allowed and value not in allowed:
        raise TemplateError(f"Parameters.{name}: {value!r} is not one of {allowed}")
    return value


def _physical_names(resources: dict[str, Any], stack_name: str, bucket_name: str | None) -> dict[str, str]:
    """Deterministic local names (`<stack>-<LogicalId>`), so a restart finds the same resources."""
    names = {logical: f"{stack_name}-{logical}" for logical in resources}
    buckets = [logical for logical, res in resources.items() if res.get("Type") == "AWS::S3::Bucket"]
    for logical in buckets:
        # S3 names must be lower case; one bucket (the images) may be named by IMAGE_BUCKET.
        names[logical] = bucket_name if bucket_name and len(buckets) == 1 else f"{stack_name}-{logical}".lower()
    return names


def _explicit_name(res: dict[str, Any], resolve: Resolver, logical: str) -> str | None:
    props = res.get("Properties") or {}
    key = {"AWS::Events::EventBus": "Name", "AWS::DynamoDB::Table": "TableName", "AWS::S3::Bucket": "BucketName",
           "AWS::Serverless::Function": "FunctionName", "AWS::SQS::Queue": "QueueName"}.get(res.get("Type", ""))
    if key and key in props:
        return str(resolve(props[key], f"Resources.{logical}.Properties.{key}"))
    return None


def _add_function(out: LocalTemplate, logical: str, props: dict[str, Any], globals_fn: dict[str, Any],
                  resources: dict[str, Any], resolve: Resolver) -> None:
    where = f"Resources.{logical}.Properties"

    def prop(key: str, default: Any = None) -> Any:
        return props[key] if key in props else globals_fn.get(key, default)

    code_uri = resolve(prop("CodeUri"), f"{where}.CodeUri")
    handler = resolve(prop("Handler"), f"{where}.Handler")
    if not isinstance(code_uri, str) or not isinstance(handler, str) or "." not in handler:
        raise TemplateError(f"{where}: a local CodeUri directory and a module.function Handler are needed")
    if prop("PackageType", "Zip") != "Zip":
        raise TemplateError(f"{where}: only Zip functions can run in-process")

    layer_dirs = []
    for i, layer in enumerate(list(globals_fn.get("Layers") or []) + list(props.get("Layers") or [])):
        layer_id = layer.get("Ref") if isinstance(layer, dict) else None
        layer_res = resources.get(layer_id or "")
        if not layer_res or layer_res.get("Type") != "AWS::Serverless::LayerVersion":
            raise TemplateError(f"{where}.Layers[{i}]: only !Ref to an AWS::Serverless::LayerVersion is supported")
        content = resolve(layer_res["Properties"]["ContentUri"], f"Resources.{layer_id}.Properties.ContentUri")
        base = (out.root / content).resolve()
        # A built layer has python/ at its root (Lambda mounts it at /opt/python); a SAM-built one does not.
        layer_dirs.append(base / "python" if (base / "python").is_dir() else base)

    env: dict[str, str] = {}
    for source, label in ((globals_fn, "Globals.Function"), (props, where)):
        variables = ((source.get("Environment") or {}).get("Variables")) or {}
        for name, value in resolve(variables, f"{label}.Environment.Variables").items():
            env[name] = str(value)
            if _mentions_resource(variables[name], resources):
                out.resource_variables.add(name)

    fn = Function(
        logical_id=logical,
        name=out.physical_names[logical],
        code_dir=(out.root / code_uri).resolve(),
        handler=handler,
        layer_dirs=layer_dirs,
        timeout_s=int(resolve(prop("Timeout", 3), f"{where}.Timeout")),
        memory_mb=int(resolve(prop("MemorySize", 128), f"{where}.MemorySize")),
        environment=env,
        on_failure_queue=_on_failure_queue(resolve(prop("EventInvokeConfig") or {}, f"{where}.EventInvokeConfig")),
    )
    out.functions[logical] = fn
    for name, value in env.items():
        if name in out.environment and out.environment[name] != value:
            # Every function shares this process's environment: one value per variable is all it can have.
            log.warning("functions disagree on %s; the local stack uses %s's value", name, logical)
        out.environment[name] = value

    for event_name, event in (props.get("Events") or {}).items():
        ev_where = f"{where}.Events.{event_name}"
        kind = event.get("Type")
        ep = resolve(event.get("Properties") or {}, f"{ev_where}.Properties")
        if kind == "Api":
            api = _api_of(event.get("Properties") or {}, resources)
            out.api_routes.append(ApiRoute(logical, event_name, ep["Path"], str(ep["Method"]).upper(),
                                           _stage_of(api, resources, resolve),
                                           _whole_number(ep.get("TimeoutInMillis", DEFAULT_TIMEOUT_MS),
                                                         f"{ev_where}.Properties.TimeoutInMillis"), api))
        elif kind == "EventBridgeRule":
            bus = ep.get("EventBusName", "default")
            out.event_rules.append(EventRule(logical, event_name, bus, json.loads(json.dumps(ep["Pattern"]))))
        elif kind == "Schedule":
            enabled = ep.get("Enabled", True) and str(ep.get("State", "ENABLED")).upper() == "ENABLED"
            out.schedules.append(ScheduleEvent(logical, event_name, ep["Schedule"], bool(enabled)))
        elif kind == "SQS":
            queue_arn = str(ep["Queue"])
            out.sqs_events.append(SqsEvent(logical, event_name, queue_arn.rsplit(":", 1)[-1],
                                           int(ep.get("BatchSize", 10))))
        elif kind == "S3":
            events = ep.get("Events")
            rules = (((ep.get("Filter") or {}).get("S3Key") or {}).get("Rules")) or []
            out.s3_notifications.append(S3Notification(logical, event_name, ep["Bucket"],
                                                       events if isinstance(events, list) else [events], rules))
        else:
            log.warning("%s: event type %s is not emulated locally; skipped", ev_where, kind)


def _on_failure_queue(config: dict[str, Any]) -> str | None:
    """The queue an asynchronous invocation that failed its retries is recorded in (SQS destinations only)."""
    on_failure = ((config.get("DestinationConfig") or {}).get("OnFailure")) or {}
    if on_failure.get("Type") != "SQS" or not on_failure.get("Destination"):
        return None
    return str(on_failure["Destination"]).rsplit(":", 1)[-1]


def _api_of(api_event: dict[str, Any], resources: dict[str, Any]) -> str:
    """The logical id of the API an `Api` event belongs to: its `RestApiId: !Ref`, else SAM's implicit API."""
    ref = api_event.get("RestApiId")
    name = str(ref.get("Ref", "")) if isinstance(ref, dict) else ""
    return name if name in resources else IMPLICIT_API


def _stage_of(api_id: str, resources: dict[str, Any], resolve: Resolver) -> str:
    """The stage of an API (SAM's implicit API is deployed as "Prod")."""
    api = resources.get(api_id)
    if api and "StageName" in (api.get("Properties") or {}):
        return str(resolve(api["Properties"]["StageName"], "StageName"))
    return "Prod"


def _gateway_responses(api_props: dict[str, Any], resolve: Resolver, where: str) -> dict[str, GatewayResponse]:
    """An API's `GatewayResponses`, SAM syntax: StatusCode, ResponseParameters.Headers, ResponseTemplates."""
    out = {}
    for kind, spec in (resolve(api_props.get("GatewayResponses") or {}, where)).items():
        headers = {}
        for name, value in ((spec.get("ResponseParameters") or {}).get("Headers") or {}).items():
            literal = str(value)
            if len(literal) < 2 or literal[0] != "'" or literal[-1] != "'":
                raise TemplateError(f"{where}.{kind}.ResponseParameters.Headers.{name}: only a quoted literal "
                                    f"('value') is supported by the local stack, not {literal!r}")
            headers[str(name)] = literal[1:-1]
        status = spec.get("StatusCode")
        out[str(kind)] = GatewayResponse(
            status=None if status is None else _whole_number(status, f"{where}.{kind}.StatusCode"),
            headers=headers,
            templates={str(k): str(v) for k, v in (spec.get("ResponseTemplates") or {}).items()})
    return out


def _whole_number(value: Any, where: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise TemplateError(f"{where}: {value!r} is not a whole number") from None


def _mentions_resource(value: Any, resources: dict[str, Any]) -> bool:
    """Whether a raw template value refers to a resource (so its local physical name must be used)."""
    if isinstance(value, dict):
        for key, arg in value.items():
            if key == "Ref" and arg in resources:
                return True
            if key == "Fn::GetAtt":
                return True
            if key == "Fn::Sub":
                text = arg if isinstance(arg, str) else arg[0]
                names = {m.split(".")[0] for m in _SUB_VAR.findall(str(text))}
                if names & set(resources):
                    return True
            if _mentions_resource(arg, resources):
                return True
    if isinstance(value, list):
        return any(_mentions_resource(v, resources) for v in value)
    return False
