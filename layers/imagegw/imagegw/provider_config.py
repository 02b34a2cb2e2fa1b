"""The provider configuration document: its model, every check made on it, and how it is loaded.

One JSON or YAML document (`PROVIDERS_FILE` locally, the SSM parameter `PROVIDERS_PARAM` when deployed):

    {"providers": {<name>: {dialect, base_url?, api_key | api_key_env | api_key_secret, auth?, region?, timeout_s?,
                            max_concurrency?, requests_per_minute?}},
     "models": {<public model | "*">: [{provider, model?, max_concurrency?, requests_per_minute?}, ...]}}

`max_concurrency` and `requests_per_minute` are a provider's limits (per account or key, so across every route
to it and every function instance; absent: unlimited); on a route, that model's own limit on top (see `pacing`).
`auth` is how the key is sent: "bearer" (`Authorization: Bearer <key>`, the default) or "mj-api-secret" (the
`mj-api-secret` header midjourney-proxy itself reads), the latter only for a dialect that lists it in its
`auth_schemes`.

`problems(data)` lists everything wrong with a document at once, each as `<JSON path>: <what is wrong>`
(`providers.relay-a.base_url: required by dialect openai`), never one at a time and never quoting a key:
the shape and types (pydantic), then what pydantic cannot see alone (a dialect no module speaks, with a "did
you mean"; what each dialect needs; routes to providers that do not exist; model names that differ only in
case; `*` used inside a name). The same checks run wherever a document enters: `make run` refuses to start,
`make providers` refuses to upload, `make check-providers` (scripts/check_providers.py) checks a file alone,
and a deployed function that loads an invalid document answers 503 `provider_config_invalid` (logged and
counted once per document, as the `ProviderConfigInvalid` metric) rather than keep an older one: a silent
fallback would hide the mistake while the operator believes the new routes are live.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Literal, get_args

from aws_lambda_powertools import Logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import settings
from .dialects import REGISTRY, get_dialect
from .errors import NoProvider, ProviderConfigInvalid

logger = Logger(child=True)

WILDCARD = "*"
CACHE_SECONDS = 60  # an SSM change applies within a minute
MAX_TIMEOUT_S = 900  # a Lambda's own limit
SHOWN_PROBLEMS = 3  # in an API answer; the log and the command line show them all

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
_SECRET_ID = re.compile(r"^(arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:)?[A-Za-z0-9/_+=.@-]{1,512}$")
_URL = re.compile(r"^https?://[^\s/@?#]+(/[^\s]*)?$", re.I)
_KEY_FIELDS = ("api_key", "api_key_env", "api_key_secret")
BEARER: Literal["bearer"] = "bearer"
AuthScheme = Literal["bearer", "mj-api-secret"]
_AUTH_SCHEMES: tuple[str, ...] = get_args(AuthScheme)
_REGION = r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$"  # an AWS region name: us-east-1, ap-southeast-2, us-gov-west-1


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dialect: str
    base_url: str | None = None
    api_key: str | None = Field(default=None, repr=False)
    api_key_env: str | None = None
    api_key_secret: str | None = None
    auth: AuthScheme = BEARER  # how the key is sent (see the module docstring)
    region: str | None = Field(default=None, pattern=_REGION)  # an AWS region (the bedrock dialect's)
    timeout_s: float = Field(default=120, gt=0, le=MAX_TIMEOUT_S)
    max_concurrency: int | None = Field(default=None, ge=1, strict=True)  # requests in flight (all instances)
    requests_per_minute: int | None = Field(default=None, ge=1, strict=True)  # requests started per minute

    @property
    def root_url(self) -> str:
        """`base_url` without a trailing slash or `/v1`: dialects append their documented paths."""
        url = (self.base_url or "").rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url


class RouteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1)
    max_concurrency: int | None = Field(default=None, ge=1, strict=True)  # this route's own, on top of the provider's
    requests_per_minute: int | None = Field(default=None, ge=1, strict=True)


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    providers: dict[str, ProviderConfig]
    models: dict[str, list[RouteConfig]] = Field(min_length=1)


# -- checking -----------------------------------------------------------------------------------------------

def problems(data: Any) -> list[str]:
    """Everything wrong with a parsed document, each as `path: what is wrong`; empty when it can be used."""
    found: list[str] = []
    try:
        GatewayConfig.model_validate(data)
    except ValidationError as exc:
        found += [_pydantic_problem(error) for error in exc.errors()]
    if isinstance(data, dict):
        found += _provider_problems(data.get("providers"))
        found += _model_problems(data.get("models"), data.get("providers"))
    return list(dict.fromkeys(found))


def check_text(text: str) -> list[str]:
    """The problems of a document as text (JSON or YAML)."""
    data, problem = _parse(text)
    return [problem] if problem else problems(data)


def check_file(path: str | os.PathLike[str]) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{path}: cannot be read ({type(exc).__name__}: {exc.strerror if isinstance(exc, OSError) else exc})"]
    return check_text(text)


def _parse(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text), None
    except ValueError:
        pass
    import yaml  # only a configuration that is not JSON (the deployed one is JSON) loads the YAML parser

    try:
        return yaml.safe_load(text), None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return None, f"(document): neither JSON nor YAML{where}"


def _path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if part != "[key]") or "(document)"


def _pydantic_problem(error: Mapping[str, Any]) -> str:
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        models: dict[int, type[BaseModel]] = {1: GatewayConfig, 3: ProviderConfig}
        known = models.get(len(loc))
        fields = list((known or RouteConfig).model_fields)
        return f"{_path(loc)}: unknown field{_did_you_mean(str(loc[-1]), fields)}"
    if error["type"] == "missing":
        return f"{_path(loc)}: required"
    return f"{_path(loc)}: {error['msg'][0].lower()}{error['msg'][1:]}"  # never the input: it may be a key


def _provider_problems(providers: Any) -> list[str]:
    found = []
    for name, provider in providers.items() if isinstance(providers, dict) else ():
        if not isinstance(provider, dict):
            continue  # its shape is reported by pydantic
        where = f"providers.{name}"
        dialect = provider.get("dialect")
        if isinstance(dialect, str) and dialect not in REGISTRY:
            found.append(f"{where}.dialect: unknown dialect {dialect!r}{_did_you_mean(dialect, REGISTRY)}; "
                         f"known: {', '.join(sorted(REGISTRY))}")
            needs: frozenset[str] = frozenset()
        else:  # imports that one dialect's module: the configuration is about to use it
            needs = get_dialect(dialect).needs if isinstance(dialect, str) else frozenset()
        base_url = provider.get("base_url")
        if "base_url" in needs and not base_url:
            found.append(f"{where}.base_url: required by dialect {dialect}")
        elif isinstance(base_url, str) and base_url and not _URL.match(base_url):
            found.append(f"{where}.base_url: must be an http(s) URL with a host and no credentials")
        auth = provider.get("auth")
        schemes = getattr(get_dialect(dialect), "auth_schemes", frozenset({BEARER})) \
            if needs and isinstance(dialect, str) else frozenset()
        if isinstance(auth, str) and auth != BEARER and auth in _AUTH_SCHEMES and auth not in schemes:
            found.append(f"{where}.auth: dialect {dialect} sends its key as {' or '.join(sorted(schemes)) or 'nothing'}"
                         f", not {auth}")
        if "region" in needs and not provider.get("region"):
            found.append(f"{where}.region: required by dialect {dialect} (an AWS region, e.g. us-east-1)")
        sources = [field for field in _KEY_FIELDS if provider.get(field) not in (None, "")]
        if "key" in needs and not sources:
            found.append(f"{where}: a key source is required by dialect {dialect}: api_key_secret (deployed), "
                         f"api_key_env, or api_key (local only)")
        if len(sources) > 1:
            found.append(f"{where}: give one key source, not {len(sources)} ({', '.join(sources)})")
        env = provider.get("api_key_env")
        if isinstance(env, str) and env and not _ENV_NAME.match(env):
            found.append(f"{where}.api_key_env: must name an environment variable (letters, digits, _)")
        secret = provider.get("api_key_secret")
        if isinstance(secret, str) and secret and not _SECRET_ID.match(secret):
            found.append(f"{where}.api_key_secret: must be a Secrets Manager secret name or ARN")
    return found


def _model_problems(models: Any, providers: Any) -> list[str]:
    found = []
    names = set(providers) if isinstance(providers, dict) else set()
    seen: dict[str, str] = {}
    for public, routes in models.items() if isinstance(models, dict) else ():
        where = f"models.{public}"
        if WILDCARD in public and public != WILDCARD:
            found.append(f"{where}: '*' serves every other name only as a whole key; patterns are not supported")
        if public.strip() != public or not public:
            found.append(f"{where}: a model name must not be empty or start or end with spaces")
        folded = public.casefold()
        if folded in seen:
            found.append(f"{where}: differs from models.{seen[folded]} only in case (clients would not know "
                         f"which they get)")
        seen.setdefault(folded, public)
        if isinstance(routes, list) and not routes:
            found.append(f"{where}: needs at least one route")
        for index, route in enumerate(routes if isinstance(routes, list) else ()):
            provider = route.get("provider") if isinstance(route, dict) else None
            if isinstance(provider, str) and provider and provider not in names:
                found.append(f"{where}.{index}.provider: no provider {provider!r}"
                             f"{_did_you_mean(provider, sorted(names))}")
            elif isinstance(provider, str) and provider:
                found += _route_model_problems(f"{where}.{index}", public, route, providers[provider])
    return found


def _route_model_problems(where: str, public: str, route: dict[str, Any], provider: Any) -> list[str]:
    """What the route's dialect says of its upstream model (`Dialect.model_problem`), when both are known."""
    dialect = provider.get("dialect") if isinstance(provider, dict) else None
    model = route.get("model") or (None if public == WILDCARD else public)
    if not isinstance(dialect, str) or dialect not in REGISTRY or not isinstance(model, str):
        return []
    problem = get_dialect(dialect).model_problem(model)
    return [f"{where}.model: {problem}"] if problem else []


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- loading ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Loaded:
    """A document as loaded: its configuration, or its problems."""

    config: GatewayConfig | None
    problems: tuple[str, ...] = ()

    def usable(self) -> GatewayConfig:
        if self.config is None:
            shown = "; ".join(self.problems[:SHOWN_PROBLEMS])
            more = f" (and {len(self.problems) - SHOWN_PROBLEMS} more)" if len(self.problems) > SHOWN_PROBLEMS else ""
            raise ProviderConfigInvalid(f"The gateway's provider configuration is invalid: {shown}{more}. "
                                        f"An operator must correct it.")
        return self.config


def load_config_text(text: str) -> GatewayConfig:
    """A usable configuration from a document's text, or ProviderConfigInvalid naming its problems."""
    return _load(text, "text").usable()


@lru_cache(maxsize=8)
def _load(text: str, source: str) -> Loaded:
    """Parse and check once per distinct document (per process): a bad one is logged and counted once."""
    data, problem = _parse(text)
    found = [problem] if problem else problems(data)
    if not found:
        return Loaded(GatewayConfig.model_validate(data))
    logger.error("the provider configuration is invalid", extra={"source": source, "problems": found})
    _count_invalid(source)
    return Loaded(None, tuple(found))


def _count_invalid(source: str) -> None:
    from aws_lambda_powertools.metrics import MetricUnit, single_metric

    namespace = settings.current().metrics_namespace
    with single_metric(name="ProviderConfigInvalid", unit=MetricUnit.Count, value=1, namespace=namespace) as metric:
        metric.add_dimension(name="source", value="ssm" if source.startswith("ssm:") else "file")


def current_config() -> GatewayConfig:
    """The provider configuration in force: read from PROVIDERS_FILE (again when it changes) or the SSM
    parameter (cached for CACHE_SECONDS); ProviderConfigInvalid when it cannot be used."""
    path = settings.current().providers_file
    if path:
        try:
            text = _file_text(path, Path(path).stat().st_mtime)
        except (OSError, UnicodeDecodeError) as exc:
            raise ProviderConfigInvalid(f"The gateway's provider configuration cannot be read "
                                        f"({type(exc).__name__}). An operator must correct it.") from None
        return _load(text, f"file:{path}").usable()
    param = settings.current().providers_param
    if not param:
        raise NoProvider("No provider configuration: set PROVIDERS_FILE or PROVIDERS_PARAM.")
    from aws_lambda_powertools.utilities import parameters

    return _load(parameters.get_parameter(param, max_age=CACHE_SECONDS), f"ssm:{param}").usable()


@lru_cache(maxsize=8)
def _file_text(path: str, _mtime: float) -> str:
    return Path(path).read_text(encoding="utf-8")


def forget() -> None:
    """Drop the parsed documents and file texts kept in memory, so the next read starts afresh (tests)."""
    _load.cache_clear()
    _file_text.cache_clear()
