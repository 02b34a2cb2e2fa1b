"""`gemini`: Google's Generative Language API (the Gemini API): the Gemini image models through
`generateContent`, and Imagen through `predict`, keyed by an `x-goog-api-key` header (not a Bearer token).

Why it is its own dialect: neither endpoint is OpenAI's. A model whose name starts with `imagen` goes to
`POST /v1beta/models/{model}:predict` as `{instances: [{prompt}], parameters: {sampleCount, aspectRatio,
sampleImageSize?, includeRaiReason}}` and answers `predictions[].bytesBase64Encoded`; 1 to 4 images a call (n
above 4 fans out), and an image the service filtered is simply missing (or a `raiFilteredReason` entry): fewer
images than n are kept as they are, none at all is a content-policy refusal. Every other model goes to
`POST /v1beta/models/{model}:generateContent` with `{contents: [{role: user, parts: [{text}]}], generationConfig:
{responseModalities: [IMAGE], imageConfig: {aspectRatio?, imageSize?}}}`; each answer holds one image as base64
in a candidate's `inlineData`, so n images are n parallel calls. Text parts are the model's commentary, not a
revised prompt, and are dropped; so are `thought` parts (the interim images a thinking model draws). A blocked
prompt (`promptFeedback.blockReason`) or a candidate stopped for safety (`finishReason` SAFETY, IMAGE_SAFETY,
PROHIBITED_CONTENT, BLOCKLIST, ...) is a 400 content_policy_violation; another answer without an image is a
retriable 502 `no_image` naming its finishReason. Images from the calls that succeeded are kept when others
were blocked.

`size` and `aspect_ratio` become the nearest listed `aspectRatio` (none sent for `auto` or neither: the model's
default); `resolution` becomes `imageSize`/`sampleImageSize` only where the model takes one (see capabilities:
1k/2k/4k on Gemini 3 image models, 1k/2k on Imagen 4 standard and ultra; a larger one than the model has is
its largest). `seed` is dropped: the Gemini API's Imagen refuses it, and one seed over a fan-out would draw n
copies of one image. Every other field is dropped. Usage `usageMetadata` becomes input/output/total tokens
(thinking tokens count as output, as they are billed). Google's error `{error: {code, message, status}}` is
mapped by the transport (429 RESOURCE_EXHAUSTED waits or falls back, its RetryInfo honoured; 5xx retriable;
401/403 provider_auth_failed; another 4xx a 400); a 400 saying the key is invalid (Google's answer to a wrong
key) is provider_auth_failed too. The README's "Dialects" table lists the rules.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any
from urllib.parse import quote

from ..capabilities import GEMINI_RATIOS, IMAGEN_RATIOS, capability_for, requested_ratio
from ..errors import BadRequest, ContentPolicyViolation, UpstreamFailed
from ..request import ImageRequest
from ..routing import Route
from ..scrub import fragment
from ..transport import HttpCall, HttpReply, Send
from .base import GENERATE, Dialect, Done, Failed, ImageOut, Job, Outcome
from .openai_shaped import usage

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
MODELS_PATH = "/v1beta/models/"
IMAGEN_PER_CALL = 4
#: a candidate stopped for one of these reasons was refused under Google's content policy
POLICY_FINISH = frozenset({"SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                           "IMAGE_PROHIBITED_CONTENT", "RECITATION", "IMAGE_RECITATION"})
#: the gateway's resolution -> Google's image size, for the models that take one
IMAGE_SIZE = {"1k": "1K", "2k": "2K", "4k": "4K"}
_INVALID_KEY = ("api key not valid", "api_key_invalid", "api key expired", "api_key_expired")


def model_name(upstream_model: str) -> str:
    """The model as it goes in the path: a leading `models/` (Google's resource name) is tolerated."""
    return upstream_model.removeprefix("models/")


def is_imagen(upstream_model: str) -> bool:
    return model_name(upstream_model).startswith("imagen")


def image_sizes(upstream_model: str) -> list[str]:
    """The gateway resolutions the model takes as an image size, smallest first; [] when it takes none (then
    no size is sent). From the capability table, for Gemini and Imagen names only."""
    name = model_name(upstream_model)
    if not name.startswith(("gemini", "imagen")):
        return []
    listed = capability_for(name, "gemini").resolutions
    return [r for r in IMAGE_SIZE if r in listed] if len(listed) > 1 else []


def image_size(req: ImageRequest, upstream_model: str) -> str | None:
    """The requested resolution as Google's size where the model takes one: as given, or the model's largest
    when it asks for more; None when none was asked or the model takes none."""
    sizes = image_sizes(upstream_model)
    if not sizes or not req.resolution:
        return None
    wanted = req.resolution if req.resolution in sizes else sizes[-1]
    return IMAGE_SIZE[wanted]


def carried(upstream_model: str) -> frozenset[str]:
    fields = {"size", "aspect_ratio"} | ({"resolution"} if image_sizes(upstream_model) else set())
    return frozenset(fields | ({"n"} if is_imagen(upstream_model) else set()))


# -- requests -------------------------------------------------------------------------------------------------

def content_body(req: ImageRequest, upstream_model: str) -> dict[str, Any]:
    """One generateContent request (one image)."""
    image_config: dict[str, Any] = {}
    if ratio := requested_ratio(req, GEMINI_RATIOS):
        image_config["aspectRatio"] = ratio
    if size := image_size(req, upstream_model):
        image_config["imageSize"] = size
    config: dict[str, Any] = {"responseModalities": ["IMAGE"]}
    if image_config:
        config["imageConfig"] = image_config
    return {"contents": [{"role": "user", "parts": [{"text": req.prompt}]}], "generationConfig": config}


def predict_body(req: ImageRequest, upstream_model: str, count: int) -> dict[str, Any]:
    """One Imagen predict request for `count` (1-4) images; `includeRaiReason` so a filtered image says why."""
    parameters: dict[str, Any] = {"sampleCount": count}
    if ratio := requested_ratio(req, IMAGEN_RATIOS):
        parameters["aspectRatio"] = ratio
    if size := image_size(req, upstream_model):
        parameters["sampleImageSize"] = size
    parameters["includeRaiReason"] = True
    return {"instances": [{"prompt": req.prompt}], "parameters": parameters}


def imagen_counts(n: int) -> list[int]:
    """n images as sampleCounts of at most 4: 6 -> [4, 2]."""
    calls = max(1, math.ceil(n / IMAGEN_PER_CALL))
    return [min(IMAGEN_PER_CALL, n - i * IMAGEN_PER_CALL) for i in range(calls)]


def google_headers(route: Route) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key := route.api_key:
        headers["x-goog-api-key"] = key
    return headers


def api_root(route: Route) -> str:
    """`base_url` (Google's by default) without a trailing `/v1beta`: the paths below add it."""
    root = route.config.root_url if route.config.base_url else DEFAULT_BASE_URL
    return root.removesuffix("/v1beta")


def method_url(route: Route, method: str) -> str:
    return f"{api_root(route)}{MODELS_PATH}{quote(model_name(route.upstream_model), safe='')}:{method}"


# -- answers --------------------------------------------------------------------------------------------------

def _text(value: Any) -> str:
    return fragment(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""


def decode(data: str) -> ImageOut:
    """Base64 image bytes (Google's standard alphabet; line breaks tolerated); anything else, or nothing, is the
    upstream's failure."""
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw:
        raise UpstreamFailed("The provider sent an image that is not valid base64.", code="bad_upstream_response",
                             retriable=False)
    return ImageOut(data=raw)


def _get(item: Any, *names: str) -> Any:
    """The first of `names` present in a dict (Google's camelCase, or the snake_case some relays answer)."""
    if isinstance(item, dict):
        for name in names:
            if name in item:
                return item[name]
    return None


def content_images(payload: dict[str, Any]) -> tuple[list[ImageOut], list[str]]:
    """A generateContent answer's images (non-thought `inlineData` parts of image types), and why it has none
    where a candidate has none: `blockReason X` for a blocked prompt, else each such candidate's finishReason."""
    images: list[ImageOut] = []
    reasons: list[str] = []
    feedback = _get(payload, "promptFeedback", "prompt_feedback")
    block = _text(_get(feedback, "blockReason", "block_reason"))
    if block and block != "BLOCKED_REASON_UNSPECIFIED":
        reasons.append(f"blockReason {block}")
    candidates = _get(payload, "candidates")
    for candidate in candidates if isinstance(candidates, list) else []:
        found = []
        parts = _get(_get(candidate, "content"), "parts")
        for part in parts if isinstance(parts, list) else []:
            if not isinstance(part, dict) or part.get("thought") is True:
                continue
            inline = _get(part, "inlineData", "inline_data")
            data, mime = _get(inline, "data"), _get(inline, "mimeType", "mime_type")
            if isinstance(data, str) and data.strip() and (not isinstance(mime, str) or mime.startswith("image/")):
                found.append(decode(data))
        if not found:
            reasons.append(_text(_get(candidate, "finishReason", "finish_reason")) or "none")
        images += found
    if not candidates and not reasons:
        reasons.append("no candidates")
    return images, reasons


def predict_images(payload: dict[str, Any]) -> tuple[list[ImageOut], list[str]]:
    """An Imagen answer's images and the reasons given for the filtered ones."""
    images: list[ImageOut] = []
    reasons: list[str] = []
    predictions = _get(payload, "predictions")
    for item in predictions if isinstance(predictions, list) else []:
        data = _get(item, "bytesBase64Encoded", "bytes_base64_encoded")
        if isinstance(data, str) and data.strip():
            images.append(decode(data))
        elif reason := _text(_get(item, "raiFilteredReason", "rai_filtered_reason")):
            reasons.append(reason)
    return images, reasons


def token_usage(reported: list[Any]) -> dict[str, int]:
    """`usageMetadata` of every answer, added up: promptTokenCount -> input_tokens, candidatesTokenCount (+
    thoughtsTokenCount) -> output_tokens, totalTokenCount -> total_tokens."""
    keys = {"input_tokens": ("promptTokenCount",), "output_tokens": ("candidatesTokenCount", "thoughtsTokenCount"),
            "total_tokens": ("totalTokenCount",)}
    total: dict[str, int] = {}
    for meta in reported:
        if not isinstance(meta, dict):
            continue
        for ours, theirs in keys.items():
            counts = [meta[k] for k in theirs if isinstance(meta.get(k), int) and not isinstance(meta[k], bool)]
            if counts:
                total[ours] = total.get(ours, 0) + sum(counts)
    return total


def is_content_answer(payload: dict[str, Any]) -> bool:
    """Whether an answer is generateContent's (else Imagen's predict: `predictions`, or `{}` when every image
    was filtered)."""
    return any(key in payload for key in ("candidates", "promptFeedback", "prompt_feedback", "usageMetadata"))


def refused(reason: str) -> bool:
    return reason.startswith("blockReason ") or reason in POLICY_FINISH


def no_image(reasons: list[str], *, imagen: bool) -> UpstreamFailed | ContentPolicyViolation:
    """The failure of answers without a single image: a refusal (400, no fallback) for a blocked prompt, a
    safety finishReason, or Imagen filtering every image (it answers `{}` or only `raiFilteredReason`s);
    otherwise a retriable 502 `no_image` naming the finishReasons."""
    named = ", ".join(dict.fromkeys(r for r in reasons if r)) or "none given"
    if imagen or any(map(refused, reasons)):
        return ContentPolicyViolation(f"The provider refused the prompt under its content policy: {named}.")
    return UpstreamFailed(f"The provider answered without any image (finishReason {named}).", code="no_image")


class GeminiDialect(Dialect):
    name = "gemini"
    needs = frozenset({"key"})  # base_url defaults to Google's

    def carries(self, model: str, operation: str = GENERATE) -> frozenset[str]:
        return carried(model)

    def build_submit(self, req: ImageRequest, route: Route) -> list[HttpCall]:
        model, timeout = route.upstream_model, route.config.timeout_s
        if is_imagen(model):
            return [HttpCall("POST", method_url(route, "predict"), headers=google_headers(route),
                             json=predict_body(req, model, count), timeout_s=timeout) for count in imagen_counts(req.n)]
        call = HttpCall("POST", method_url(route, "generateContent"), headers=google_headers(route),
                        json=content_body(req, model), timeout_s=timeout)
        return [call] * req.n

    def parse_submit(self, req: ImageRequest, replies: list[HttpReply]) -> Done:
        """Every answer's images, cut to n; none at all fails (see `no_image`). The responseIds and
        modelVersion are kept on the task, and how many images Imagen filtered."""
        imagen = False
        images: list[ImageOut] = []
        reasons: list[str] = []
        reported = []
        ids: list[str] = []
        versions: list[str] = []
        for reply in replies:
            payload = reply.json()
            if not isinstance(payload, dict):
                raise UpstreamFailed("The provider answered with an unexpected shape.", code="bad_upstream_response")
            content = is_content_answer(payload)
            imagen = imagen or not content
            found, why = content_images(payload) if content else predict_images(payload)
            images += found
            reasons += why
            reported.append(payload.get("usageMetadata"))
            ids += [t] if (t := _text(payload.get("responseId"))) else []
            versions += [t] if (t := _text(payload.get("modelVersion"))) else []
        if not images:
            raise no_image(reasons, imagen=imagen)
        kept = images[: req.n]
        meta = {}
        if versions:
            meta["model_version"] = ",".join(dict.fromkeys(versions))
        if reasons:
            meta["filtered"] = f"{len(reasons)}: " + ", ".join(dict.fromkeys(reasons))
        return Done(images=kept, usage=usage(len(kept), token_usage(reported)), upstream_id=",".join(ids) or None,
                    meta=meta)

    def run_submit(self, req: ImageRequest, route: Route, send: Send, job: Job) -> Outcome:
        """As every dialect's, but Google answers a wrong or expired key with a 400 INVALID_ARGUMENT: that is the
        gateway's credentials failing (502 provider_auth_failed, another route may serve), not the request."""
        outcome = super().run_submit(req, route, send, job)
        if isinstance(outcome, Failed) and type(outcome.error) is BadRequest \
                and any(words in outcome.error.message.lower() for words in _INVALID_KEY):
            return Failed(UpstreamFailed("The provider rejected the gateway's credentials.",
                                         code="provider_auth_failed"))
        return outcome
