"""A loopback simulator of the `replicate` dialect: Replicate's predictions API (HTTP API reference, "Create a
prediction", "Get a prediction", "Cancel a prediction").

- `POST /v1/models/{owner}/{name}/predictions` (body `{input, webhook?, webhook_events_filter?, stream?}`) and
  `POST /v1/predictions` (body `{version, input, ...}`, `version` a 64-hex id or `owner/name:id`): `Authorization:
  Bearer <token>` (401 problem otherwise), a JSON body, the input checked against the model's schema as
  Replicate does (422 `Input validation failed` with `invalid_fields` and a detail naming `input.<field>`):
  `prompt` a non-empty string, `aspect_ratio` one of the model's ratios, `num_outputs` 1..4 only on the models
  that have it, `output_format` one of the model's formats, `seed` an integer, no other input. `Prefer: wait=N`
  must have 1 <= N <= 60 (400 otherwise). The answer is 201 with the prediction: `succeeded` at once when the
  model is `fast` (what `Prefer: wait` gives a quick model), else `starting`.
- `GET /v1/predictions/{id}`: each check moves it on: `processing` with logs ending "NN%" (each of
  `progress_steps`), then `succeeded` (or `failed` with `error`) on check `checks_to_finish`; `never_finish`
  keeps it processing. Unknown id: 404 problem.
- `POST /v1/predictions/{id}/cancel`: the prediction becomes `canceled` (recorded in `cancels`).
- Outputs: a list of URLs (or one URL string, or data: URIs, as configured) at `/files/WxH/out-i.<format>`, real
  images of the ratio's flux size in the requested format; with `expire_files`, they are gone (404), as after
  Replicate's hour. `rate_limit_first` answers that many 429 problems ("resets in ~Ns") first.
Every request is recorded.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .loopback import Answer, Captured, LoopbackSimulator

MODELS_PATH = re.compile(r"^/v1/models/([^/]+)/([^/]+)/predictions$")
PREDICTION_PATH = re.compile(r"^/v1/predictions/([A-Za-z0-9]+)(/cancel)?$")
RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
SCHEMAS = {  # owner/name -> (has num_outputs, output formats)
    "black-forest-labs/flux-schnell": (True, ("webp", "jpg", "png")),
    "black-forest-labs/flux-dev": (True, ("webp", "jpg", "png")),
    "black-forest-labs/flux-1.1-pro": (False, ("webp", "jpg", "png")),
    "black-forest-labs/flux-1.1-pro-ultra": (False, ("jpg", "png")),
}
VERSIONS = {"5599ed30703defd1d160a25a63321b4dec97101d98b4674bcc56e41f62f35637": "black-forest-labs/flux-schnell"}
BODY_FIELDS = {"input", "version", "webhook", "webhook_events_filter", "stream"}
_WAIT = re.compile(r"^wait(?:=(\d+))?$")
_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


@dataclass
class Behaviour:
    fast: bool = False  # succeed inside the create call (a quick model under `Prefer: wait`)
    checks_to_finish: int = 3
    progress_steps: list[int] = field(default_factory=lambda: [25, 75])
    never_finish: bool = False
    error: str | None = None  # set: the prediction ends `failed` with this error
    output_shape: str = "list"  # "list", "string" (one URL) or "data" (data: URIs)
    expire_files: bool = False
    rate_limit_first: int = 0  # 429s before anything is created
    resets_in_s: int = 7


def flux_size(ratio: str) -> tuple[int, int]:
    """The pixel size flux draws at for a ratio (about one megapixel, multiples of 16)."""
    w, h = (float(x) for x in ratio.split(":"))
    width = math.sqrt(1024 * 1024 * w / h)
    return int(round(width / 16) * 16), int(round(width * h / w / 16) * 16)


def image_bytes(width: int, height: int, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(out, _FORMATS.get(fmt, "PNG"))
    return out.getvalue()


def problem(status: int, title: str, detail: str, **extra: Any) -> Answer:
    return Answer(status, {"title": title, "detail": detail, "status": status, **extra},
                  {"Content-Type": "application/problem+json"})


@dataclass
class SimPrediction:
    id: str
    model: str
    version: str
    input: dict[str, Any]
    created_at: str
    status: str = "starting"
    checks: int = 0
    logs: str = ""
    output: Any = None
    error: str | None = None


class ReplicateSimulator(LoopbackSimulator):
    def __init__(self, api_key: str = "r8_simulatorToken0123456789", behaviour: Behaviour | None = None,
                 port: int = 0):
        super().__init__(port)
        self.api_key = api_key
        self.behaviour = behaviour or Behaviour()
        self.predictions: dict[str, SimPrediction] = {}
        self._ids = itertools.count(1)
        self._limited = 0

    @property
    def creates(self) -> list[Captured]:
        return [r for r in self.requests if r.method == "POST" and not r.path.endswith("/cancel")
                and not r.path.startswith("/files/")]

    @property
    def checks(self) -> list[Captured]:
        return [r for r in self.requests if r.method == "GET" and PREDICTION_PATH.match(r.path)]

    @property
    def cancels(self) -> list[Captured]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/cancel")]

    def answer(self, request: Captured) -> Answer:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        if request.method == "POST" and (match := MODELS_PATH.match(request.path)):
            return self.create(request, f"{match[1]}/{match[2]}", None)
        if request.method == "POST" and request.path == "/v1/predictions":
            version = request.body.get("version") if isinstance(request.body, dict) else None
            version_id = str(version or "").split(":")[-1]
            if version_id not in VERSIONS:
                return problem(422, "Invalid version or not permitted",
                               "The specified version does not exist (or perhaps you don't have permission to use it?)")
            return self.create(request, VERSIONS[version_id], version_id)
        if match := PREDICTION_PATH.match(request.path):
            if request.method == "GET" and not match[2]:
                return self.check(match[1])
            if request.method == "POST" and match[2]:
                return self.cancel(match[1])
        return problem(404, "Not found", "The requested resource could not be found.")

    def _serve_file(self, path: str) -> Answer:
        if self.behaviour.expire_files:
            return Answer(404, b"Not Found", {"Content-Type": "text/plain"})
        try:
            size, name = path.split("/")[2:4]
            width, height = map(int, size.split("x"))
        except (IndexError, ValueError):
            return Answer(404, b"Not Found", {"Content-Type": "text/plain"})
        fmt = name.rsplit(".", 1)[-1]
        with self.lock:
            self.image_downloads += 1
        return Answer(200, image_bytes(width, height, fmt), {"Content-Type": f"image/{fmt.replace('jpg', 'jpeg')}"})

    # -- create --------------------------------------------------------------------------------------------
    def create(self, request: Captured, model: str, version: str | None) -> Answer:
        wait = request.headers.get("prefer")
        if wait is not None:
            match = _WAIT.match(wait.strip())
            if not match or (match[1] is not None and not 1 <= int(match[1]) <= 60):
                return problem(400, "Invalid Prefer header", "Prefer: wait must be between 1 and 60 seconds")
        if not request.headers.get("content-type", "").startswith("application/json"):
            return problem(415, "Unsupported media type", "Content-Type must be application/json")
        body = request.body
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return problem(422, "Input validation failed", "- input: input is required")
        unknown = sorted(set(body) - BODY_FIELDS) or (["version"] if version is None and "version" in body else [])
        if unknown:
            return problem(422, "Invalid request", f"- {unknown[0]}: Additional property {unknown[0]} is not allowed")
        if model not in SCHEMAS:
            return problem(404, "Model not found", f"The model {model} does not exist")
        if invalid := self.invalid(body["input"], model):
            name, description = invalid
            return problem(422, "Input validation failed", f"- input.{name}: {description}",
                           invalid_fields=[{"type": "invalid", "field": f"input.{name}", "description": description}])
        with self.lock:
            if self._limited < self.behaviour.rate_limit_first:
                self._limited += 1
                return problem(429, "Request was throttled.", "Request was throttled. Your rate limit for creating "
                               f"predictions resets in ~{self.behaviour.resets_in_s}s.")
            pid = f"rp{next(self._ids):04d}q7xk2"
            prediction = SimPrediction(pid, model, version or "", body["input"],
                                       time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))
            self.predictions[pid] = prediction
            if self.behaviour.fast and wait is not None:
                self.finish(prediction)
        return Answer(201, self.view(prediction))

    @staticmethod
    def invalid(input_: dict[str, Any], model: str) -> tuple[str, str] | None:
        has_outputs, formats = SCHEMAS[model]
        allowed = {"prompt", "aspect_ratio", "output_format", "seed"} | ({"num_outputs"} if has_outputs else set())
        for name in input_:
            if name not in allowed:
                return name, f"Additional property {name} is not allowed"
        if not isinstance(input_.get("prompt"), str) or not input_["prompt"]:
            return "prompt", "prompt is required"
        if "aspect_ratio" in input_ and input_["aspect_ratio"] not in RATIOS:
            return "aspect_ratio", f"aspect_ratio must be one of the following: {', '.join(RATIOS)}"
        if "num_outputs" in input_:
            n = input_["num_outputs"]
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 4:
                return "num_outputs", "Must be greater than or equal to 1 and less than or equal to 4"
        if "output_format" in input_ and input_["output_format"] not in formats:
            return "output_format", f"output_format must be one of the following: {', '.join(formats)}"
        if "seed" in input_ and (not isinstance(input_["seed"], int) or isinstance(input_["seed"], bool)):
            return "seed", "Invalid type. Expected: integer"
        return None

    # -- lifecycle -----------------------------------------------------------------------------------------
    def finish(self, prediction: SimPrediction) -> None:
        b = self.behaviour
        prediction.logs += "100%|##########| 4/4 [00:01<00:00, 3.2it/s]\n"
        if b.error is not None:
            prediction.status, prediction.error = "failed", b.error
            return
        fmt = prediction.input.get("output_format", "webp")
        width, height = flux_size(prediction.input.get("aspect_ratio", "1:1"))
        count = prediction.input.get("num_outputs", 1)
        if b.output_shape == "data":
            encoded = base64.b64encode(image_bytes(width, height, fmt)).decode()
            outputs = [f"data:image/{fmt};base64,{encoded}" for _ in range(count)]
        else:
            outputs = [f"{self.base_url}/files/{width}x{height}/{prediction.id}-out-{i}.{fmt}" for i in range(count)]
        prediction.status = "succeeded"
        prediction.output = outputs[0] if b.output_shape == "string" else outputs

    def check(self, pid: str) -> Answer:
        with self.lock:
            prediction = self.predictions.get(pid)
            if prediction is None:
                return problem(404, "Not found", "The requested resource could not be found.")
            if prediction.status in ("starting", "processing"):
                prediction.checks += 1
                b = self.behaviour
                if not b.never_finish and prediction.checks >= b.checks_to_finish:
                    self.finish(prediction)
                else:
                    step = b.progress_steps[min(prediction.checks - 1, len(b.progress_steps) - 1)] \
                        if b.progress_steps else 0
                    prediction.status = "processing"
                    prediction.logs += f"Using seed: 42\n{step:3d}%|###       | 1/4 [00:00<00:02, 3.1it/s]\n"
            return Answer(200, self.view(prediction))

    def cancel(self, pid: str) -> Answer:
        with self.lock:
            prediction = self.predictions.get(pid)
            if prediction is None:
                return problem(404, "Not found", "The requested resource could not be found.")
            if prediction.status in ("starting", "processing"):
                prediction.status = "canceled"
            return Answer(200, self.view(prediction))

    def view(self, p: SimPrediction) -> dict[str, Any]:
        api = f"{self.base_url}/v1/predictions/{p.id}"
        done = p.status in ("succeeded", "failed", "canceled")
        return {"id": p.id, "model": p.model, "version": p.version or "hidden", "input": p.input, "logs": p.logs,
                "output": p.output, "data_removed": False, "error": p.error, "status": p.status,
                "created_at": p.created_at, "started_at": p.created_at if p.status != "starting" else None,
                "completed_at": p.created_at if done else None,
                "metrics": {"predict_time": 1.21, "image_count": len(p.output) if isinstance(p.output, list) else 1}
                if p.status == "succeeded"
                else {},
                "urls": {"cancel": f"{api}/cancel", "get": api, "stream": f"{self.base_url}/stream/{p.id}",
                         "web": f"https://replicate.com/p/{p.id}"}}
