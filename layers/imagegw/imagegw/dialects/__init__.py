"""Dialect registry: the dialect name in the provider configuration picks one module here."""

from __future__ import annotations

from ..errors import ProviderConfigInvalid
from .base import EDIT, GENERATE, VARIATION, Dialect, Done, Failed, HttpCall, HttpReply, ImageOut, Job, Outcome, \
    Pending
from .async_relay import AsyncRelayDialect
from .envelope import EnvelopeDialect
from .grok import GrokDialect
from .jimeng import JimengDialect
from .local import LocalDialect
from .openai import OpenAIDialect

DIALECTS: dict[str, Dialect] = {
    d.name: d for d in (OpenAIDialect(), JimengDialect(), EnvelopeDialect(), GrokDialect(), AsyncRelayDialect(),
                        LocalDialect())
}


def get_dialect(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ProviderConfigInvalid(f"The provider configuration names an unknown dialect: {name!r}.") from None


__all__ = ["EDIT", "GENERATE", "VARIATION", "Dialect", "Done", "Failed", "HttpCall", "HttpReply", "ImageOut", "Job",
           "Outcome", "Pending", "get_dialect"]
