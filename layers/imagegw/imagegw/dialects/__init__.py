"""The dialects: the `dialect` a provider names picks one module here, imported the first time a route uses it.

Importing on first use keeps each Lambda function to the code it runs: Pillow, which only the `local` dialect
needs, never loads in a function that calls real upstreams. A new dialect is one module and one line in
`REGISTRY`, and one row in the README's "Dialects" table (a test checks the two agree).
"""

from __future__ import annotations

from functools import cache
from importlib import import_module

from ..errors import ProviderConfigInvalid
from .base import EDIT, GENERATE, VARIATION, Dialect, Done, Failed, HttpCall, HttpReply, ImageOut, Job, Outcome, \
    Pending

#: dialect name -> "module:Class". The provider configuration is checked against these names without
#: importing anything; tests add a dialect of their own with `monkeypatch.setitem(REGISTRY, name, spec)`.
REGISTRY: dict[str, str] = {
    "openai": "imagegw.dialects.openai:OpenAIDialect",
    "jimeng": "imagegw.dialects.jimeng:JimengDialect",
    "envelope": "imagegw.dialects.envelope:EnvelopeDialect",
    "grok": "imagegw.dialects.grok:GrokDialect",
    "async-relay": "imagegw.dialects.async_relay:AsyncRelayDialect",
    "gemini": "imagegw.dialects.gemini:GeminiDialect",
    "midjourney": "imagegw.dialects.midjourney:MidjourneyDialect",
    "bedrock": "imagegw.dialects.bedrock:BedrockDialect",
    "replicate": "imagegw.dialects.replicate:ReplicateDialect",
    "fal": "imagegw.dialects.fal:FalDialect",
    "local": "imagegw.dialects.local:LocalDialect",
}


def get_dialect(name: str) -> Dialect:
    """The dialect called `name` (one instance per process); ProviderConfigInvalid for a name not registered."""
    try:
        spec = REGISTRY[name]
    except KeyError:
        raise ProviderConfigInvalid(f"The provider configuration names an unknown dialect: {name!r}.") from None
    return _load(spec)


@cache
def _load(spec: str) -> Dialect:
    module, _, cls = spec.partition(":")
    return getattr(import_module(module), cls)()


__all__ = ["EDIT", "GENERATE", "REGISTRY", "VARIATION", "Dialect", "Done", "Failed", "HttpCall", "HttpReply",
           "ImageOut", "Job", "Outcome", "Pending", "get_dialect"]
