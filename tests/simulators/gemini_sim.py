"""A loopback simulator of Google's Generative Language API (the `gemini` dialect): Gemini image models at
`POST /v1beta/models/{model}:generateContent` and Imagen at `POST /v1beta/models/{model}:predict`.

It checks what Google's reference and its python-genai client show: the key in `x-goog-api-key` (a wrong key is
Google's 400 INVALID_ARGUMENT "API key not valid" with reason API_KEY_INVALID; no key at all a 403
PERMISSION_DENIED; a Bearer token instead a 401 UNAUTHENTICATED); the model exists and has the method called
(404 NOT_FOUND otherwise, as Google answers); the body's shape, refusing unknown fields as Google's JSON parser
does (`Invalid JSON payload received. Unknown name "x"`); for generateContent, `contents[].parts[].text`,
`generationConfig.responseModalities` including IMAGE, `imageConfig.aspectRatio` from Gemini's list and
`imageSize` 1K/2K/4K only on the models that have it; for predict, one instance with a prompt, `sampleCount`
1..4, `aspectRatio` from Imagen's list, `sampleImageSize` 1K/2K only on Imagen 4 standard and ultra.

It answers as Google does: one candidate whose parts are a text part (commentary) and the image as
`inlineData {mimeType, data}` (base64 PNG of the size the ratio and image size give), a `thought` image first on
Gemini 3 models, `finishReason` STOP, `usageMetadata`, `modelVersion`, `responseId`; Imagen answers
`predictions[{bytesBase64Encoded, mimeType}]`. Errors are `{"error": {code, message, status, details}}`; a 429
carries a RetryInfo `retryDelay`. A prompt containing "policy" is blocked (`promptFeedback.blockReason`
SAFETY, no candidates). `Behaviour` makes it fail, block, filter or stall on demand. Every request is recorded.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .loopback import Answer, Captured, LoopbackSimulator, png_bytes

PREFIX = "/v1beta/models/"
GEMINI_MODELS = {"gemini-2.5-flash-image", "gemini-3-pro-image-preview", "gemini-3.1-flash-image-preview"}
SIZED_GEMINI = {"gemini-3-pro-image-preview", "gemini-3.1-flash-image-preview"}  # take imageConfig.imageSize
IMAGEN_MODELS = {"imagen-4.0-generate-001", "imagen-4.0-ultra-generate-001", "imagen-4.0-fast-generate-001",
                 "imagen-3.0-generate-002"}
SIZED_IMAGEN = {"imagen-4.0-generate-001", "imagen-4.0-ultra-generate-001"}  # take sampleImageSize
#: Gemini's output at 1K for each ratio (its image generation guide); 2K and 4K double and quadruple it
GEMINI_1K = {"1:1": (1024, 1024), "2:3": (832, 1248), "3:2": (1248, 832), "3:4": (864, 1184), "4:3": (1184, 864),
             "4:5": (896, 1152), "5:4": (1152, 896), "9:16": (768, 1344), "16:9": (1344, 768), "21:9": (1536, 672)}
IMAGEN_1K = {"1:1": (1024, 1024), "3:4": (896, 1280), "4:3": (1280, 896), "9:16": (768, 1408), "16:9": (1408, 768)}
SCALE = {"1K": 1, "2K": 2, "4K": 4}
#: a smaller image than the real one for the 2K/4K sizes keeps the tests fast; the ratio is the real one
MAX_SIDE = 1536
CONTENT_FIELDS = {"contents", "generationConfig", "safetySettings", "systemInstruction"}
CONFIG_FIELDS = {"responseModalities", "imageConfig", "candidateCount", "temperature", "topP", "seed"}
PREDICT_PARAMETERS = {"sampleCount", "aspectRatio", "sampleImageSize", "includeRaiReason", "personGeneration",
                      "includeSafetyAttributes", "outputOptions", "language", "guidanceScale", "safetySetting"}
TOKENS_PER_IMAGE = 1290


@dataclass
class Behaviour:
    #: (HTTP status, Google status) to answer first, in order, e.g. [(429, "RESOURCE_EXHAUSTED")]
    failures: list[tuple[int, str]] = field(default_factory=list)
    retry_delay: str = "7s"  # in a 429's RetryInfo
    #: "prompt": promptFeedback.blockReason SAFETY; "image": finishReason IMAGE_SAFETY without content;
    #: "text": a text-only candidate with finishReason STOP; "no_image": finishReason NO_IMAGE
    block: str | None = None
    block_calls: int | None = None  # block only this many calls (then answer normally); None: all of them
    filtered: int = 0  # Imagen: this many of each call's images filtered (raiFilteredReason)
    empty: bool = False  # Imagen: answer `{}` (every image filtered, no reason)
    garbage: bool = False  # answer 200 with a body that is not JSON
    stall_s: float = 0.0  # wait this long before answering (bounded: a timeout test's)


class GeminiSimulator(LoopbackSimulator):
    generation_path = PREFIX

    def __init__(self, api_key: str = "AIzaSyGeminiSimUpstream0123456789", behaviour: Behaviour | None = None,
                 port: int = 0):
        super().__init__(port)
        self.api_key = api_key
        self.behaviour = behaviour or Behaviour()

    @property
    def generations(self) -> list[Captured]:
        return [r for r in self.requests if r.path.startswith(PREFIX)]

    def respond(self, handler: Any, request: Captured) -> None:
        if self.behaviour.stall_s:
            time.sleep(min(self.behaviour.stall_s, 10.0))
        super().respond(handler, request)

    def answer(self, request: Captured) -> Answer:
        model, _, method = request.path.removeprefix(PREFIX).partition(":")
        if request.method != "POST" or not request.path.startswith(PREFIX) or method not in ("generateContent",
                                                                                            "predict"):
            return error(404, "NOT_FOUND", "The requested URL was not found on this server.")
        key = request.headers.get("x-goog-api-key")
        if key is None and request.headers.get("authorization"):
            return error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 "
                                                 "access token, login cookie or other valid authentication credential.")
        if key is None:
            return error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without "
                                                   "established identity). Please use API Key or other form of API "
                                                   "consumer identity to call this API.")
        if key != self.api_key:
            return error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                         [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                           "domain": "googleapis.com"}])
        known = GEMINI_MODELS if method == "generateContent" else IMAGEN_MODELS
        if model not in known:
            return error(404, "NOT_FOUND", f"models/{model} is not found for API version v1beta, or is not "
                                           f"supported for {method}. Call ListModels to see the list of available "
                                           f"models and their supported methods.")
        with self.lock:
            failure = self.behaviour.failures.pop(0) if self.behaviour.failures else None
        if failure:
            status, google_status = failure
            retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": self.behaviour.retry_delay}
            details = [retry] if status == 429 else None
            return error(status, google_status, "You exceeded your current quota, please check your plan and billing "
                         "details." if status == 429 else "The model is overloaded. Please try again later.", details)
        if method == "generateContent":
            problem = self.content_problem(request.body, model)
            return error(400, "INVALID_ARGUMENT", problem) if problem else self.content_answer(request.body, model)
        problem = self.predict_problem(request.body, model)
        return error(400, "INVALID_ARGUMENT", problem) if problem else self.predict_answer(request.body, model)

    # -- generateContent ------------------------------------------------------------------------------------

    @staticmethod
    def content_problem(body: Any, model: str) -> str | None:
        if not isinstance(body, dict):
            return "Invalid JSON payload received. Expected an object."
        if unknown := sorted(set(body) - CONTENT_FIELDS):
            return f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.'
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return "* GenerateContentRequest.contents: contents is not specified"
        for content in contents:
            if not isinstance(content, dict) or set(content) - {"role", "parts"}:
                return 'Invalid JSON payload received. Unknown name in "contents".'
            if content.get("role", "user") not in ("user", "model"):
                return "Please use a valid role: user, model."
            parts = content.get("parts")
            if not isinstance(parts, list) or not parts or not all(
                    isinstance(p, dict) and set(p) == {"text"} and isinstance(p["text"], str) for p in parts):
                return "* GenerateContentRequest.contents.parts: contents.parts must not be empty."
        config = body.get("generationConfig", {})
        if not isinstance(config, dict):
            return 'Invalid value at \'generation_config\': expected an object.'
        if unknown := sorted(set(config) - CONFIG_FIELDS):
            return (f'Invalid JSON payload received. Unknown name "{unknown[0]}" at \'generation_config\': '
                    'Cannot find field.')
        modalities = config.get("responseModalities")
        if not isinstance(modalities, list) or "IMAGE" not in modalities or \
                not set(modalities) <= {"TEXT", "IMAGE"}:
            return "Model does not support the requested response modalities: " + \
                ",".join(map(str, modalities if isinstance(modalities, list) else ["TEXT"]))
        image_config = config.get("imageConfig", {})
        if not isinstance(image_config, dict) or set(image_config) - {"aspectRatio", "imageSize"}:
            return "Invalid JSON payload received. Unknown name at 'generation_config.image_config'."
        if "aspectRatio" in image_config and image_config["aspectRatio"] not in GEMINI_1K:
            return f"Unsupported aspect ratio: {image_config['aspectRatio']}."
        if "imageSize" in image_config:
            if model not in SIZED_GEMINI:
                return f"Image size is not supported for model {model}."
            if image_config["imageSize"] not in SCALE:
                return f"Unsupported image size: {image_config['imageSize']}. Use 1K, 2K or 4K."
        return None

    def content_answer(self, body: dict[str, Any], model: str) -> Answer:
        prompt = body["contents"][-1]["parts"][0]["text"]
        usage = {"promptTokenCount": max(1, len(prompt) // 4), "candidatesTokenCount": TOKENS_PER_IMAGE,
                 "totalTokenCount": max(1, len(prompt) // 4) + TOKENS_PER_IMAGE}
        answer: dict[str, Any] = {"usageMetadata": usage, "modelVersion": model, "responseId": uuid.uuid4().hex[:22]}
        block = self.behaviour.block or ("prompt" if "policy" in prompt else None)
        if block and self.behaviour.block_calls is not None:
            with self.lock:
                if self.behaviour.block_calls <= 0:
                    block = None
                else:
                    self.behaviour.block_calls -= 1
        if block == "prompt":
            return Answer(200, {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
                                "usageMetadata": {"promptTokenCount": usage["promptTokenCount"],
                                                  "totalTokenCount": usage["promptTokenCount"]},
                                "modelVersion": model, "responseId": answer["responseId"]})
        if block in ("image", "no_image"):
            reason = "IMAGE_SAFETY" if block == "image" else "NO_IMAGE"
            return Answer(200, {**answer, "candidates": [{"finishReason": reason, "index": 0}]})
        if block == "text":
            return Answer(200, {**answer, "candidates": [{"content": {"role": "model", "parts": [
                {"text": "I can describe that picture for you instead."}]}, "finishReason": "STOP", "index": 0}]})
        if self.behaviour.garbage:
            return Answer(200, b"<html>upstream proxy error</html>", {"Content-Type": "text/html"})
        image_config = body.get("generationConfig", {}).get("imageConfig", {})
        width, height = dimensions(GEMINI_1K[image_config.get("aspectRatio", "1:1")], image_config.get("imageSize"))
        parts: list[dict[str, Any]] = [{"text": "Here is the image you asked for."}]
        if model in SIZED_GEMINI:  # a thinking model's interim image comes first, marked as a thought
            parts.insert(0, {"inlineData": {"mimeType": "image/png", "data": b64(png_bytes(8, 8, (0, 0, 0)))},
                             "thought": True})
        parts.append({"inlineData": {"mimeType": "image/png", "data": b64(png_bytes(width, height))}})
        answer["candidates"] = [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}]
        return Answer(200, answer)

    # -- predict --------------------------------------------------------------------------------------------

    @staticmethod
    def predict_problem(body: Any, model: str) -> str | None:
        if not isinstance(body, dict):
            return "Invalid JSON payload received. Expected an object."
        if unknown := sorted(set(body) - {"instances", "parameters"}):
            return f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.'
        instances = body.get("instances")
        if not isinstance(instances, list) or len(instances) != 1 or not isinstance(instances[0], dict) \
                or set(instances[0]) != {"prompt"} or not isinstance(instances[0]["prompt"], str) \
                or not instances[0]["prompt"]:
            return "Invalid instances: exactly one instance with a prompt is expected."
        parameters = body.get("parameters", {})
        if not isinstance(parameters, dict):
            return "Invalid parameters: expected an object."
        if unknown := sorted(set(parameters) - PREDICT_PARAMETERS):
            return f"Unknown parameter: {unknown[0]}."
        count = parameters.get("sampleCount", 4)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 4:
            return "Number of images must be in range [1, 4]."
        if "aspectRatio" in parameters and parameters["aspectRatio"] not in IMAGEN_1K:
            return f"Unsupported aspect ratio: {parameters['aspectRatio']}."
        if "sampleImageSize" in parameters:
            if model not in SIZED_IMAGEN:
                return f"sampleImageSize is not supported for {model}."
            if parameters["sampleImageSize"] not in ("1K", "2K"):
                return "sampleImageSize must be 1K or 2K."
        if "includeRaiReason" in parameters and not isinstance(parameters["includeRaiReason"], bool):
            return "includeRaiReason must be a boolean."
        return None

    def predict_answer(self, body: dict[str, Any], model: str) -> Answer:
        if self.behaviour.garbage:
            return Answer(200, b"<html>upstream proxy error</html>", {"Content-Type": "text/html"})
        parameters = body.get("parameters", {})
        count = parameters.get("sampleCount", 4)
        prompt = body["instances"][0]["prompt"]
        filtered = count if "policy" in prompt else min(count, self.behaviour.filtered)
        if self.behaviour.empty or (filtered == count and not parameters.get("includeRaiReason")):
            return Answer(200, {})  # what Imagen answers when it filtered every image
        width, height = dimensions(IMAGEN_1K[parameters.get("aspectRatio", "1:1")], parameters.get("sampleImageSize"))
        predictions: list[dict[str, Any]] = []
        for i in range(count):
            if i < filtered:
                if parameters.get("includeRaiReason"):
                    predictions.append({"raiFilteredReason": "Unable to show generated images. All images were "
                                                             "filtered out because they violated Vertex AI's usage "
                                                             "guidelines. Support codes: 58061214"})
            else:
                predictions.append({"bytesBase64Encoded": b64(png_bytes(width, height)), "mimeType": "image/png"})
        return Answer(200, {"predictions": predictions})


def dimensions(base: tuple[int, int], size: str | None) -> tuple[int, int]:
    """The image's size for a ratio's 1K dimensions and an image size, capped at MAX_SIDE (ratio kept)."""
    width, height = (side * SCALE.get(size or "1K", 1) for side in base)
    scale = min(1.0, MAX_SIDE / max(width, height))
    return round(width * scale), round(height * scale)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def error(status: int, google_status: str, message: str, details: list[dict[str, Any]] | None = None) -> Answer:
    body: dict[str, Any] = {"code": status, "message": message, "status": google_status}
    if details:
        body["details"] = details
    return Answer(status, {"error": body})
