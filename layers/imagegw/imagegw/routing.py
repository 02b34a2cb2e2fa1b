"""Provider configuration (A2) and routing of a public model name to its ordered upstream routes.

The document comes from `PROVIDERS_FILE` (local stack, tests) or the SSM parameter named by
`PROVIDERS_PARAM` (deployed). Keys come from `api_key` (local only), `api_key_env` or `api_key_secret`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import BadRequest, NoProvider, ServerError

DIALECTS = ("openai", "jimeng", "envelope", "grok", "async-relay", "local")
WILDCARD = "*"
CONFIG_CACHE_SECONDS = 60


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    dialect: str
    base_url: str | None = None
    api_key: str | None = Field(default=None, repr=False)
    api_key_env: str | None = None
    api_key_secret: str | None = None
    timeout_s: float = Field(default=120, gt=0, le=900)

    @model_validator(mode="after")
    def _needs_base_url(self) -> "ProviderConfig":
        if self.dialect != "local" and not self.base_url:
            raise ValueError(f"dialect {self.dialect!r} needs a base_url")
        return self

    @property
    def root_url(self) -> str:
        """`base_url` without a trailing slash or `/v1`: dialects append their documented paths."""
        url = (self.base_url or "").rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url


class RouteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: str
    model: str | None = None


class GatewayConfig(BaseModel):
    providers: dict[str, ProviderConfig]
    models: dict[str, list[RouteConfig]]

    @model_validator(mode="after")
    def _routes_name_providers(self) -> "GatewayConfig":
        for public, routes in self.models.items():
            for route in routes:
                if route.provider not in self.providers:
                    raise ValueError(f"model {public!r} routes to unknown provider {route.provider!r}")
        return self


@dataclass(frozen=True)
class Route:
    """One way to serve a public model: a provider, its dialect and the upstream model name."""

    provider: str
    dialect: str
    upstream_model: str
    config: ProviderConfig = field(repr=False, compare=False)

    @property
    def api_key(self) -> str | None:
        return resolve_api_key(self.config)


def load_config_text(text: str) -> GatewayConfig:
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = yaml.safe_load(text)
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ServerError(f"The provider configuration is invalid: {exc.errors()[0]['msg']}") from None


def current_config() -> GatewayConfig:
    """The provider configuration in force (cached briefly, so an SSM change applies within a minute)."""
    path = os.environ.get("PROVIDERS_FILE")
    if path:
        return _config_from_file(path, Path(path).stat().st_mtime)
    param = os.environ.get("PROVIDERS_PARAM")
    if not param:
        raise NoProvider("No provider configuration: set PROVIDERS_FILE or PROVIDERS_PARAM.")
    from aws_lambda_powertools.utilities import parameters

    return load_config_text(parameters.get_parameter(param, max_age=CONFIG_CACHE_SECONDS))


@lru_cache(maxsize=8)
def _config_from_file(path: str, _mtime: float) -> GatewayConfig:
    return load_config_text(Path(path).read_text(encoding="utf-8"))


def routes_for(public_model: str, config: GatewayConfig | None = None) -> list[Route]:
    """The ordered routes for a public model name; the `*` entry, if any, serves every other name."""
    config = config or current_config()
    entries = config.models.get(public_model) or config.models.get(WILDCARD)
    if not entries:
        # An unknown name is the caller's mistake (400), not an outage: a 5xx would make SDKs retry it.
        raise BadRequest(f"The model '{public_model}' is not served by this gateway; GET /v1/models lists "
                         f"the models it serves.", param="model", code="model_not_found")
    return [
        Route(provider=entry.provider, dialect=config.providers[entry.provider].dialect,
              upstream_model=entry.model or public_model, config=config.providers[entry.provider])
        for entry in entries
    ]


def public_models(config: GatewayConfig | None = None) -> list[tuple[str, str]]:
    """(public model, provider of its first route) for every named model, for `GET /v1/models`."""
    config = config or current_config()
    return [(name, routes[0].provider) for name, routes in config.models.items() if name != WILDCARD and routes]


def resolve_api_key(provider: ProviderConfig) -> str | None:
    if provider.api_key:
        return provider.api_key
    if provider.api_key_env:
        return os.environ.get(provider.api_key_env)
    if provider.api_key_secret:
        from aws_lambda_powertools.utilities import parameters

        return parameters.get_secret(provider.api_key_secret, max_age=300)
    return None
