"""`bedrock`: Amazon Bedrock's image models, through the bedrock-runtime `InvokeModel` API (boto3).

Why it is its own dialect: there is no key and no HTTP API of our own to call. boto3 signs each call (SigV4)
with the function's role, `region` comes from the provider configuration, and `base_url`, when set, is the
endpoint (a VPC endpoint, or a loopback simulator in tests). The request body depends on the model family,
read from the model id (after an optional cross-region inference prefix such as `us.`):

- Stability (`stability.sd3-5-large-v1:0`, `stability.stable-image-ultra-v1:1`, `stability.stable-image-core-v1:1`,
  `stability.sd3-large-v1:0`): a flat `{prompt, mode: "text-to-image" (sd3 models only), aspect_ratio,
  output_format, seed}`. One image per call, so `n` fans out into n calls (seed s, s+1, ... when a seed is set).
  `aspect_ratio` is one of nine: a pixel `size` maps to the nearest. The answer `{seeds, finish_reasons,
  images}` arrives as HTTP 200 also when it was filtered: a `"Filter reason: ..."` entry is a content-policy
  refusal, `"Inference error"` the provider's failure.
- Amazon (`amazon.nova-canvas-v1:0`, `amazon.titan-image-generator-v2:0`): `{taskType: "TEXT_IMAGE",
  textToImageParams: {text}, imageGenerationConfig: {width, height, numberOfImages, quality, seed}}`, all n in
  one call. The answer `{images, error?}`: a filtered image is left out and `error` says so (HTTP 200); with no
  image left that is a content-policy refusal.

Errors are botocore's `ClientError` codes, mapped onto the gateway's (see `error_for`). botocore never retries
(`total_max_attempts=1`): the worker's fallback and pacing decide, as for every HTTP dialect. The translation
is pure (`build_submit` describes each InvokeModel call as an `HttpCall` to `/model/{modelId}/invoke`,
`parse_submit` reads the answers); `invoke` is the one seam that calls boto3.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

from ..capabilities import STABILITY_RATIOS, parse_pixels, parse_ratio, requested_ratio
from ..errors import (ContentPolicyViolation, GatewayError, ProviderConfigInvalid, RateLimited, UpstreamFailed,
                      UpstreamTimeout, policy_violation, refusal)
from ..request import ImageRequest
from ..routing import Route
from ..scrub import fragment
from ..transport import CONNECT_TIMEOUT_S, MAX_BODY_BYTES, HttpCall, HttpReply, Send, retry_after_s
from .base import GENERATE, Dialect, Done, Failed, ImageOut, Job, Outcome

STABILITY, AMAZON = "stability", "amazon"
#: a cross-region inference profile's prefix (`us.amazon.nova-canvas-v1:0`) names the same model
_PROFILE = re.compile(r"^(?:us|eu|apac|jp|au|ca|us-gov|global)\.")
_FAMILIES = ((re.compile(r"^stability\.(?:sd3|stable-image-(?:ultra|core))"), STABILITY),
             (re.compile(r"^amazon\.(?:nova-canvas|titan-image-generator)"), AMAZON))

STABILITY_FIELDS = frozenset({"n", "size", "aspect_ratio", "output_format", "seed"})
AMAZON_FIELDS = frozenset({"n", "size", "aspect_ratio", "resolution", "quality", "seed"})
STABILITY_SEED_MAX = 4_294_967_294
#: Nova Canvas takes seeds up to 858,993,459, Titan up to 2,147,483,646: a larger seed wraps round
AMAZON_SEED_MAX = {"amazon.nova-canvas": 858_993_459, "amazon.titan-image-generator": 2_147_483_646}
AMAZON_QUALITY = {"hd": "premium", "high": "premium", "standard": "standard", "medium": "standard",
                  "low": "standard"}  # auto: left out (standard)
AMAZON_SIDE_STEP = 16
AMAZON_MIN_SIDE, AMAZON_MAX_PIXELS = 320, 4_194_304
_RESOLUTION_SIDE = {"1k": 1024, "2k": 2048}
INVOKE_PATH = "/model/{model}/invoke"
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def base_model(model: str) -> str:
    """The model id without a cross-region inference prefix."""
    return _PROFILE.sub("", model, count=1)


def family(model: str) -> str | None:
    """The request format a model id takes (STABILITY, AMAZON), or None for a Bedrock model we do not speak."""
    base = base_model(model)
    return next((name for pattern, name in _FAMILIES if pattern.match(base)), None)


# -- pure translation ----------------------------------------------------------------------------------------

def stability_ratio(req: ImageRequest) -> str:
    """The aspect ratio to ask for: `aspect_ratio` as given, else a ratio `size`, else the listed ratio nearest a
    pixel `size`; 1:1 when neither is set (or `auto`). Validation has refused ratios that are not listed."""
    return requested_ratio(req, STABILITY_RATIOS) or "1:1"


def stability_bodies(req: ImageRequest, model: str) -> list[dict[str, Any]]:
    """One body per image. `output_format` png or jpeg (webp is not offered: left out, the model's png)."""
    body: dict[str, Any] = {"prompt": req.prompt}
    if base_model(model).startswith("stability.sd3"):
        body["mode"] = "text-to-image"
    body["aspect_ratio"] = stability_ratio(req)
    if req.output_format in ("png", "jpeg"):
        body["output_format"] = req.output_format
    bodies = []
    for index in range(req.n):
        one = dict(body)
        if req.seed is not None:
            one["seed"] = (req.seed + index) % (STABILITY_SEED_MAX + 1)
        bodies.append(one)
    return bodies


def _step(value: float) -> int:
    return max(AMAZON_MIN_SIDE, int(round(value / AMAZON_SIDE_STEP)) * AMAZON_SIDE_STEP)


def amazon_size(req: ImageRequest) -> tuple[int, int]:
    """Width and height: a pixel `size` as given (validation checked the model's rules); a ratio (`size`, else
    `aspect_ratio`) at `resolution` (1k: long side 1024, 2k: 2048), sides on the 16-pixel grid, within the pixel
    budget; 1024x1024 (2048x2048 at 2k) when neither is set."""
    if req.size and (pixels := parse_pixels(req.size)):
        return pixels
    ratio = parse_ratio(req.size or "") or parse_ratio(req.aspect_ratio or "") or (1.0, 1.0)
    long_side = _RESOLUTION_SIDE.get(req.resolution or "", 1024)
    w, h = ratio
    width, height = _step(long_side * w / max(w, h)), _step(long_side * h / max(w, h))
    while width * height > AMAZON_MAX_PIXELS:
        width, height = (width - AMAZON_SIDE_STEP, height) if width >= height else (width, height - AMAZON_SIDE_STEP)
    return width, height


def amazon_body(req: ImageRequest, model: str) -> dict[str, Any]:
    width, height = amazon_size(req)
    config: dict[str, Any] = {"width": width, "height": height, "numberOfImages": req.n}
    if quality := AMAZON_QUALITY.get(req.quality or ""):
        config["quality"] = quality
    if req.seed is not None:
        limit = next((v for k, v in AMAZON_SEED_MAX.items() if base_model(model).startswith(k)), 858_993_459)
        config["seed"] = req.seed % (limit + 1)
    return {"taskType": "TEXT_IMAGE", "textToImageParams": {"text": req.prompt}, "imageGenerationConfig": config}


def endpoint(route: Route) -> str:
    """`base_url` as given (a VPC endpoint, a simulator), else the region's public bedrock-runtime endpoint."""
    if route.config.base_url:
        return route.config.base_url.rstrip("/")
    return f"https://bedrock-runtime.{region_of(route)}.amazonaws.com"


def region_of(route: Route) -> str:
    """The provider's `region` (the configuration requires it: a Route built without one is a test's, us-east-1)."""
    return route.config.region or "us-east-1"


def invoke_call(route: Route, body: dict[str, Any]) -> HttpCall:
    """One InvokeModel call, described as the request botocore makes of it (the model id URL-encoded)."""
    path = INVOKE_PATH.format(model=quote(route.upstream_model, safe=""))
    return HttpCall("POST", endpoint(route) + path, headers=dict(JSON_HEADERS), json=body,
                    timeout_s=route.config.timeout_s)


def model_of(call: HttpCall) -> str:
    """The model id of a call `invoke_call` made."""
    return unquote(call.url.rsplit("/model/", 1)[1].removesuffix("/invoke"))


def filter_refusal(reason: str) -> ContentPolicyViolation:
    return ContentPolicyViolation(f"The provider refused the prompt under its content policy: {fragment(reason)}")


def parse_stability(payload: Any) -> tuple[list[ImageOut], list[str]]:
    """The images and seeds of one Stability answer; a filter reason is a refusal, another reason a failure."""
    if not isinstance(payload, dict):
        raise UpstreamFailed("The provider's answer is not an object.", code="bad_upstream_response")
    for reason in payload.get("finish_reasons") or []:
        if reason is None:
            continue
        if str(reason).lower().startswith("filter reason"):
            raise filter_refusal(str(reason))
        raise UpstreamFailed(f"The provider could not generate the image: {fragment(str(reason))}")
    images = [ImageOut(data=base64.b64decode(item, validate=True)) for item in payload.get("images") or []]
    return images, [str(seed) for seed in payload.get("seeds") or [] if isinstance(seed, int)]


def parse_amazon(payload: Any) -> tuple[list[ImageOut], str | None]:
    """The images of one Amazon answer, and its `error` (a filtered image) when it has one."""
    if not isinstance(payload, dict):
        raise UpstreamFailed("The provider's answer is not an object.", code="bad_upstream_response")
    images = [ImageOut(data=base64.b64decode(item, validate=True)) for item in payload.get("images") or []]
    error = payload.get("error")
    return images, str(error) if error else None


# -- the boto3 seam ------------------------------------------------------------------------------------------

_clients: dict[tuple[str, str | None, float], Any] = {}
_clients_lock = threading.Lock()


def client_for(route: Route) -> Any:
    """The bedrock-runtime client for the route's region, endpoint and timeout: created on first use and kept
    (boto3 clients are thread-safe once made; making one is not, hence the lock). botocore never retries, never
    uses ambient proxy settings, and each read waits at most the route's `timeout_s`."""
    timeout = route.config.timeout_s
    key = (region_of(route), route.config.base_url.rstrip("/") if route.config.base_url else None, timeout)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(region_name=key[0], retries={"total_max_attempts": 1, "mode": "standard"},
                            connect_timeout=min(CONNECT_TIMEOUT_S, timeout), read_timeout=timeout,
                            max_pool_connections=16, proxies={}, user_agent_extra="imagegw")
            client = boto3.session.Session().client("bedrock-runtime", region_name=key[0], endpoint_url=key[1],
                                                    config=config)
            _clients[key] = client
        return client


def forget_clients() -> None:
    """Drop the kept clients (tests that change the environment they are made from)."""
    with _clients_lock:
        _clients.clear()


def invoke(route: Route, call: HttpCall) -> HttpReply:
    """Run one InvokeModel call; its answer as an HttpReply, or the mapped gateway error."""
    from botocore.exceptions import (BotoCoreError, ClientError, ConnectTimeoutError, EndpointConnectionError,
                                     NoCredentialsError, ReadTimeoutError)

    try:
        answer = client_for(route).invoke_model(modelId=model_of(call), body=json.dumps(call.json).encode(),
                                                contentType="application/json", accept="application/json")
        body = answer["body"].read(MAX_BODY_BYTES + 1)
    except ClientError as exc:
        raise error_for(exc.response) from None
    except ReadTimeoutError:
        raise UpstreamTimeout(f"The provider did not answer within {call.timeout_s:g} s.") from None
    except (EndpointConnectionError, ConnectTimeoutError) as exc:
        raise UpstreamFailed(f"Could not reach the provider ({type(exc).__name__}).",
                             code="upstream_unreachable") from None
    except NoCredentialsError:
        raise UpstreamFailed("The gateway has no AWS credentials to sign the provider's requests.",
                             code="provider_auth_failed") from None
    except BotoCoreError as exc:
        raise UpstreamFailed(f"The provider call failed ({type(exc).__name__}).") from None
    except Exception as exc:  # noqa: BLE001 - the request may have gone out: end the task, never send it twice
        raise UpstreamFailed(f"The provider call failed unexpectedly ({type(exc).__name__}).",
                             retriable=False) from None
    if len(body) > MAX_BODY_BYTES:
        raise UpstreamFailed(f"The provider's answer is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB.",
                             code="upstream_response_too_large")
    meta = answer.get("ResponseMetadata") or {}
    headers = {str(k): str(v) for k, v in (meta.get("HTTPHeaders") or {}).items()}
    return HttpReply(int(meta.get("HTTPStatusCode") or 200), headers, body)


_AUTH_CODES = frozenset({"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
                         "ExpiredTokenException", "IncompleteSignature", "MissingAuthenticationTokenException"})
_RETRIABLE_CODES = frozenset({"ModelNotReadyException", "ServiceUnavailableException", "InternalServerException",
                              "ModelErrorException", "InternalFailure", "ServiceUnavailable"})


def error_for(response: Mapping[str, Any]) -> GatewayError:
    """A botocore ClientError's `response` as the gateway's error. Content filters (a ValidationException
    "blocked by our content filters") are a 400 content_policy_violation; another ValidationException is the
    request's fault (400, no fallback); throttling is a 429 (the task waits, its Retry-After honoured when Bedrock
    sends one, or the next route serves); model
    timeouts, a model not ready and Bedrock's 5xx are retriable (fallback); a refused signature or a role without
    `bedrock:InvokeModel` on the model is `provider_auth_failed`, as a 401/403 is for HTTP dialects."""
    error = response.get("Error") or {}
    code, message = str(error.get("Code") or ""), str(error.get("Message") or "")
    status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    said = f": {fragment(message).rstrip('.')}" if message else ""
    if code == "ValidationException" or (not code and status == 400):
        if "content filter" in message.lower():
            return filter_refusal(message)
        return refusal(message or code)
    if code in _AUTH_CODES or status in (401, 403):
        return UpstreamFailed(f"The provider refused the gateway's AWS credentials or role ({code or status}).",
                              code="provider_auth_failed")
    if code in _RETRIABLE_CODES:
        return UpstreamFailed(f"The provider failed ({code}){said}.")
    if code in ("ThrottlingException", "ServiceQuotaExceededException", "TooManyRequestsException") \
            or status == 429:
        headers = (response.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
        return RateLimited(f"The provider is rate limiting requests{said}.",
                           retry_after_s=retry_after_s({str(k): str(v) for k, v in headers.items()}))
    if code == "ModelTimeoutException" or status == 408:
        return UpstreamTimeout(f"The model timed out{said}.")
    if code == "ResourceNotFoundException":
        return UpstreamFailed(f"The provider does not serve this model here{said}.", code="upstream_model_not_found")
    if status >= 500 or status == 424:
        return UpstreamFailed(f"The provider failed ({code or f'HTTP {status}'}){said}.")
    return policy_violation(message) or refusal(message or code or f"HTTP {status}")


class BedrockDialect(Dialect):
    name = "bedrock"
    #: signed with the function's role: no key; the region is the provider's own
    needs = frozenset({"region"})

    def model_problem(self, model: str) -> str | None:
        if family(model) is None:
            return (f"the bedrock dialect has no request format for {model!r}: it speaks Stability "
                    f"(stability.sd3*, stability.stable-image-ultra*, stability.stable-image-core*) and Amazon "
                    f"(amazon.nova-canvas*, amazon.titan-image-generator*) model ids, with an optional "
                    f"cross-region prefix (us., eu., ...)")
        return None

    def carries(self, model: str, operation: str = GENERATE) -> frozenset[str]:
        return {STABILITY: STABILITY_FIELDS, AMAZON: AMAZON_FIELDS}.get(family(model) or "", frozenset())

    def build_submit(self, req: ImageRequest, route: Route) -> list[HttpCall]:
        """The InvokeModel calls for `req`: none for a model id of no family we speak."""
        kind = family(route.upstream_model)
        if kind == STABILITY:
            return [invoke_call(route, body) for body in stability_bodies(req, route.upstream_model)]
        if kind == AMAZON:
            return [invoke_call(route, amazon_body(req, route.upstream_model))]
        return []

    def parse_submit(self, req: ImageRequest, replies: list[HttpReply]) -> Done:
        meta: dict[str, str] = {}
        request_ids = [r.headers.get("x-amzn-requestid", "") for r in replies]
        if any(request_ids):
            meta["request_id"] = ",".join(i for i in request_ids if i)
        payloads = [reply.json() for reply in replies]
        if len(payloads) != 1 or not isinstance(payloads[0], dict) or "finish_reasons" in payloads[0] \
                or "seeds" in payloads[0]:
            images, seeds = [], []
            for payload in payloads:
                got, used = parse_stability(payload)
                images += got
                seeds += used
            if seeds:
                meta["seeds"] = ",".join(seeds)
        else:
            images, error = parse_amazon(payloads[0])
            if error and not images:
                raise filter_refusal(error)
            if error:
                meta["filtered"] = f"{req.n - len(images)} of {req.n}: {fragment(error)}"
        if not images:
            raise UpstreamFailed("The provider answered without an image.", code="no_image")
        kept = images[: req.n]
        return Done(images=kept, usage={"images": len(kept)}, meta=meta)

    def run_submit(self, req: ImageRequest, route: Route, send: Send, job: Job) -> Outcome:
        """As for HTTP dialects (a fan-out in parallel, all must succeed), each call made by `invoke`."""
        if problem := self.model_problem(route.upstream_model):  # a `*` route: its model is the client's
            return Failed(ProviderConfigInvalid(f"Provider {route.provider!r}: {problem}."))
        return super().run_submit(req, route, lambda call: invoke(route, call), job)
