"""A loopback simulator of the `fal` dialect: fal.ai's queue API (docs "Queue", fal_client's request handles).

- `POST /{owner}/{alias}[/{path}]` (e.g. `/fal-ai/flux/dev`): `Authorization: Key <key>` (401 `{"detail"}`
  otherwise), a JSON object. The queue takes it and answers `{status: IN_QUEUE, request_id, response_url,
  status_url, cancel_url, queue_position}`, its URLs without the model's subpath
  (`/{owner}/{alias}/requests/{id}`). The input is validated when the model runs, as fal's apps do (pydantic):
  `prompt` a non-empty string, `image_size` one of the six presets or `{width, height}` integers 256..2048,
  `num_images` 1..4, `seed` an integer, `output_format` jpeg|png, `enable_safety_checker`/`sync_mode` booleans,
  no other field; a request that fails it is COMPLETED and its result is a 422 `{"detail": [{loc, msg,
  type}]}` (with `validate_at_submit`, the submit itself answers that 422).
- `GET .../requests/{id}/status` (`?logs=0|1`): each check moves it on: IN_QUEUE with `queue_position` counting
  down from `queue_start`, then IN_PROGRESS, then COMPLETED (with `error`/`error_type` when `error` is set);
  `never_finish` keeps it IN_PROGRESS.
- `GET .../requests/{id}`: the result once COMPLETED (400 "still in progress" before): `{images: [{url, width,
  height, content_type}], timings, seed, has_nsfw_concepts, prompt}`, images of the requested size at
  `/files/WxH/...` (404 with `expire_files`).
- `PUT .../requests/{id}/cancel`: 202 `CANCELLATION_REQUESTED` (400 `ALREADY_COMPLETED` once done).
- `url_prefix` "/q": the URLs it answers are under `/q` (also served there), unlike those fal's client builds.
- Faults: `foreign_urls` (status/response/cancel URLs on another host), `failures` (statuses answered to the
  submit first, with `X-Fal-Retryable` from `retryable`), `nsfw` (the `has_nsfw_concepts` flags).
Every request is recorded.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from .loopback import Answer, Captured, LoopbackSimulator

PRESETS = {"square_hd": (1024, 1024), "square": (512, 512), "portrait_4_3": (768, 1024),
           "portrait_16_9": (576, 1024), "landscape_4_3": (1024, 768), "landscape_16_9": (1024, 576)}
FIELDS = {"prompt", "image_size", "num_images", "seed", "output_format", "enable_safety_checker", "sync_mode",
          "num_inference_steps", "guidance_scale"}
REQUEST_PATH = re.compile(r"^(?:/q)?/([^/]+)/([^/]+)/requests/([0-9a-f-]+)(/status|/cancel)?$")
APP_PATH = re.compile(r"^/([^/]+)/([^/]+)(/[^/]+)*$")


@dataclass
class Behaviour:
    queue_start: int = 1  # IN_QUEUE with this position first, counting down on each check
    progress_checks: int = 1  # IN_PROGRESS answers before COMPLETED
    never_finish: bool = False
    error: str | None = None  # COMPLETED with this error (and error_type)
    error_type: str = "runner_disconnected"
    nsfw: list[bool] = field(default_factory=list)  # has_nsfw_concepts, per image
    foreign_urls: bool = False
    url_prefix: str = ""  # "/q": the queue URLs it answers are under /q (as a queue that moved its paths would)
    validate_at_submit: bool = False
    failures: list[int] = field(default_factory=list)  # statuses answered to submits first, in order
    retryable: str | None = None  # X-Fal-Retryable on those failures
    expire_files: bool = False


@dataclass
class SimRequest:
    id: str
    app: str
    body: Any
    position: int
    checks: int = 0
    status: str = "IN_QUEUE"
    cancelled: bool = False


def validation_problem(body: Any) -> dict[str, Any] | None:
    """fal's 422 detail for an invalid input (its apps' pydantic models), or None."""
    def problem(loc: list[str], msg: str, kind: str) -> dict[str, Any]:
        return {"detail": [{"loc": ["body", *loc], "msg": msg, "type": kind}]}

    if not isinstance(body, dict):
        return problem([], "Input should be a valid dictionary", "dict_type")
    for name in body:
        if name not in FIELDS:
            return problem([name], "Extra inputs are not permitted", "extra_forbidden")
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return problem(["prompt"], "Field required", "missing")
    size = body.get("image_size")
    if size is not None:
        if isinstance(size, dict):
            for side in ("width", "height"):
                value = size.get(side)
                if not isinstance(value, int) or isinstance(value, bool) or not 256 <= value <= 2048:
                    return problem(["image_size", side], "Input should be between 256 and 2048", "int_range")
            if set(size) - {"width", "height"}:
                return problem(["image_size"], "Extra inputs are not permitted", "extra_forbidden")
        elif size not in PRESETS:
            return problem(["image_size"], f"Input should be {', '.join(PRESETS)}", "enum")
    n = body.get("num_images", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 4:
        return problem(["num_images"], "Input should be less than or equal to 4", "less_than_equal")
    if "seed" in body and (not isinstance(body["seed"], int) or isinstance(body["seed"], bool)):
        return problem(["seed"], "Input should be a valid integer", "int_type")
    if "output_format" in body and body["output_format"] not in ("jpeg", "png"):
        return problem(["output_format"], "Input should be 'jpeg' or 'png'", "literal_error")
    return None


class FalSimulator(LoopbackSimulator):
    def __init__(self, api_key: str = "fal-sim-key-id:0123456789abcdef", behaviour: Behaviour | None = None,
                 port: int = 0):
        super().__init__(port)
        self.api_key = api_key
        self.behaviour = behaviour or Behaviour()
        self.queue: dict[str, SimRequest] = {}
        self._ids = itertools.count(1)
        self._failed = 0

    def _handler(self):
        handler = super()._handler()
        handler.do_PUT = handler.do_POST  # the cancel is a PUT
        return handler

    @property
    def submits(self) -> list[Captured]:
        return [r for r in self.requests if r.method == "POST"]

    @property
    def status_checks(self) -> list[Captured]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/status")]

    @property
    def results(self) -> list[Captured]:
        return [r for r in self.requests if r.method == "GET" and REQUEST_PATH.match(r.path)
                and not r.path.endswith("/status")]

    @property
    def cancels(self) -> list[Captured]:
        return [r for r in self.requests if r.method == "PUT"]

    def answer(self, request: Captured) -> Answer:
        if request.headers.get("authorization") != f"Key {self.api_key}":
            return Answer(401, {"detail": "No user found for Key ID and Secret"})
        if match := REQUEST_PATH.match(request.path):
            with self.lock:
                job = self.queue.get(match[3])
            if job is None or job.app != f"{match[1]}/{match[2]}":
                return Answer(404, {"detail": "Request not found"})
            if match[4] == "/status" and request.method == "GET":
                return self.status(job)
            if match[4] == "/cancel" and request.method == "PUT":
                return self.cancel(job)
            if match[4] is None and request.method == "GET":
                return self.result(job)
            return Answer(405, {"detail": "Method Not Allowed"})
        if request.method == "POST" and APP_PATH.match(request.path):
            return self.submit(request)
        return Answer(404, {"detail": "Not Found"})

    def submit(self, request: Captured) -> Answer:
        b = self.behaviour
        with self.lock:
            if self._failed < len(b.failures):
                status = b.failures[self._failed]
                self._failed += 1
                headers = {"X-Fal-Retryable": b.retryable} if b.retryable is not None else {}
                return Answer(status, {"detail": "Runner failed"}, headers)
        if not request.headers.get("content-type", "").startswith("application/json"):
            return Answer(422, {"detail": [{"loc": ["body"], "msg": "JSON expected", "type": "json_invalid"}]})
        if b.validate_at_submit and (problem := validation_problem(request.body)):
            return Answer(422, problem)
        owner, alias = request.path.strip("/").split("/")[:2]
        with self.lock:
            rid = f"764cabcf-b745-4b3e-ae38-{next(self._ids):012x}"
            self.queue[rid] = SimRequest(rid, f"{owner}/{alias}", request.body, b.queue_start)
        base = "http://169.254.169.254" if b.foreign_urls else self.base_url + b.url_prefix
        urls = f"{base}/{owner}/{alias}/requests/{rid}"
        return Answer(200, {"status": "IN_QUEUE", "request_id": rid, "response_url": urls,
                            "status_url": urls + "/status", "cancel_url": urls + "/cancel",
                            "queue_position": b.queue_start})

    def status(self, job: SimRequest) -> Answer:
        b = self.behaviour
        with self.lock:
            if job.status != "COMPLETED":
                job.checks += 1
                if job.position > 0 and job.checks > 1:
                    job.position -= 1
                if job.checks > b.queue_start + 1:
                    job.status = "IN_PROGRESS"
                if not b.never_finish and job.checks > b.queue_start + 1 + b.progress_checks:
                    job.status = "COMPLETED"
            answer: dict[str, Any] = {"status": job.status, "request_id": job.id,
                                      "response_url": f"{self.base_url}/{job.app}/requests/{job.id}"}
            if job.status == "IN_QUEUE":
                answer["queue_position"] = job.position
            else:
                answer["logs"] = None
            if job.status == "COMPLETED":
                answer["metrics"] = {"inference_time": 1.4}
                if b.error is not None:
                    answer.update(error=b.error, error_type=b.error_type)
        return Answer(202 if job.status != "COMPLETED" else 200, answer)

    def result(self, job: SimRequest) -> Answer:
        if job.status != "COMPLETED":
            return Answer(400, {"detail": "Request is still in progress"})
        if problem := validation_problem(job.body):
            return Answer(422, problem)
        body = job.body
        size = body.get("image_size", "landscape_4_3")
        width, height = PRESETS[size] if isinstance(size, str) else (size["width"], size["height"])
        fmt = body.get("output_format", "jpeg")
        images = [{"url": f"{self.base_url}/files/{width}x{height}/{job.id}-{i}.png", "width": width,
                   "height": height, "content_type": f"image/{fmt}"} for i in range(body.get("num_images", 1))]
        return Answer(200, {"images": images, "timings": {"inference": 1.2}, "seed": body.get("seed", 42),
                            "has_nsfw_concepts": self.behaviour.nsfw or [False] * len(images),
                            "prompt": body["prompt"]})

    def cancel(self, job: SimRequest) -> Answer:
        with self.lock:
            if job.status == "COMPLETED":
                return Answer(400, {"status": "ALREADY_COMPLETED"})
            job.cancelled = True
        return Answer(202, {"status": "CANCELLATION_REQUESTED"})

    def _serve_file(self, path: str) -> Answer:
        if self.behaviour.expire_files:
            return Answer(404, {"detail": "Not Found"})
        return super()._serve_file(path)

