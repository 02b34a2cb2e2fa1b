"""Routing: a public model name to its ordered upstream routes, from the provider configuration in force.

The document itself (its model, its checks, how it is loaded) is `provider_config`. Keys come from
`api_key` (local only), `api_key_env` or `api_key_secret`, resolved when a route is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import settings
from .errors import BadRequest
from .provider_config import WILDCARD, GatewayConfig, ProviderConfig, current_config


@dataclass(frozen=True)
class Route:
    """One way to serve a public model: a provider, its dialect and the upstream model name."""

    provider: str
    dialect: str
    upstream_model: str
    config: ProviderConfig = field(repr=False, compare=False)
    #: the route entry's own limits (`models.<name>[i]`), on top of the provider's (`config`); None: none
    max_concurrency: int | None = field(default=None, compare=False)
    requests_per_minute: int | None = field(default=None, compare=False)

    @property
    def api_key(self) -> str | None:
        return resolve_api_key(self.config)


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
              upstream_model=entry.model or public_model, config=config.providers[entry.provider],
              max_concurrency=entry.max_concurrency, requests_per_minute=entry.requests_per_minute)
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
        return settings.named_secret(provider.api_key_env)
    if provider.api_key_secret:
        from aws_lambda_powertools.utilities import parameters

        return parameters.get_secret(provider.api_key_secret, max_age=300)
    return None
