"""A loopback simulator of the `async-relay` dialect: an OpenAI-compatible, new-api style relay with an async mode.

- `POST /v1/images/generations`: Bearer key (401 otherwise); `model`, `size`, `n`, `prompt` required (its API
  page marks all four required); `size` a `WxH` or `auto`; `n` 1..10; only OpenAI Images fields. With
  `?async=true` it answers a task id in the configured shape (`task_id`, `id`, `code_data`, `data_task_id`);
  without it (or with `sync_anyway`) it answers synchronously `{created, data: [...]}`.
- `GET /v1/images/tasks/{id}`: Bearer key; each check moves the task on: QUEUED "0%", then IN_PROGRESS with
  each of `progress_steps` ("30%", "70%"), then SUCCESS (or FAILURE with `fail_reason`) on check number
  `checks_to_finish` (or, with `finish_after_s`, on the first check that long after the submit). Answers
  are new-api's envelope `{code, message, data: {task...}}` or the task flat,
  with the status in upper or lower case and the progress as "NN%", NN or "NN", as configured. An unknown
  id is a 404 `task_not_exist`.
- `POST /v1/images/edits` (the relay's "图像编辑"): `multipart/form-data` as OpenAI takes it (recorded as a
  `Form`, see `edits`): `model` and `prompt` required, the image(s) under `image` or `image[]` (1 to 16, each a
  PNG, JPEG or WebP by its bytes), `mask` optional (a PNG); `n` 1..10 (default 1), `size` `WxH` or `auto`
  (default auto: the first image's size); only OpenAI's edit fields. A JSON or malformed body is a 400. With
  `?async=true` it answers a task id like generations, the task checked at the same
  `GET /v1/images/tasks/{id}` (action "edit") and finishing with images the same way; without it, synchronously.
Every request is recorded.
"""

from __future__ import annotations

import base64
import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any

from .loopback import (Answer, Captured, Form, LoopbackSimulator, field_problem, image_kind, image_size, png_bytes,
                       png_header)

GEN = "/v1/images/generations"
EDITS = "/v1/images/edits"
EDIT_FIELDS = {"model", "prompt", "n", "size", "quality", "response_format", "user", "background", "input_fidelity",
               "output_format", "output_compression"}
EDIT_FILES = ("image", "image[]", "mask")
TASKS = "/v1/images/tasks/"
REQUIRED = ("model", "size", "n", "prompt")
FIELDS = {"model", "prompt", "n", "size", "quality", "style", "response_format", "user", "background",
          "output_format", "output_compression", "moderation"}
ID_SHAPES = ("task_id", "id", "code_data", "data_task_id")
_PIXELS = re.compile(r"^(\d{2,5})x(\d{2,5})$")


@dataclass
class Behaviour:
    id_shape: str = "task_id"  # one of ID_SHAPES
    envelope: bool = True  # check answers in new-api's envelope, or the task flat
    checks_to_finish: int = 4  # the check that reports SUCCESS/FAILURE (earlier ones: QUEUED, IN_PROGRESS...)
    finish_after_s: float | None = None  # set: the task finishes this long after its submit, however often checked
    progress_steps: list[str] = field(default_factory=lambda: ["30%", "70%"])
    fail_reason: str | None = None  # set: the task ends in FAILURE with this reason
    sync_anyway: bool = False  # answer synchronously even when asked for async
    result_format: str = "url"  # "url" or "b64_json" in the finished task's data
    lower_case_status: bool = False
    progress_as: str = "percent"  # "percent" ("30%"), "int" (30) or "str" ("30")


@dataclass
class SimTask:
    task_id: str
    body: dict[str, Any]
    submitted_at: int
    checks: int = 0
    action: str = "generate"  # or "edit"
    submitted_monotonic: float = field(default_factory=time.monotonic)

    def finished_at(self, after_s: float) -> float:
        """When (time.monotonic) a task that takes `after_s` finished upstream."""
        return self.submitted_monotonic + after_s


class AsyncRelaySimulator(LoopbackSimulator):
    def __init__(self, api_key: str = "sk-relay", behaviour: Behaviour | None = None, port: int = 0):
        super().__init__(port)
        self.api_key = api_key
        self.behaviour = behaviour or Behaviour()
        self.tasks: dict[str, SimTask] = {}
        self._ids = itertools.count(1)

    @property
    def submits(self) -> list[Captured]:
        return [r for r in self.requests if r.path == GEN]

    @property
    def checks(self) -> list[Captured]:
        return [r for r in self.requests if r.path.startswith(TASKS)]

    def answer(self, request: Captured) -> Answer:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return Answer(401, {"error": {"message": "无效的令牌 (invalid token)", "type": "new_api_error",
                                          "code": "invalid_api_key"}})
        if request.path == GEN and request.method == "POST":
            return self.submit(request)
        if request.path == EDITS and request.method == "POST":
            return self.submit_edit(request)
        if request.path.startswith(TASKS) and request.method == "GET":
            return self.check(request.path[len(TASKS):])
        return Answer(404, {"error": {"message": "Invalid URL", "type": "invalid_request_error"}})

    # -- submit ------------------------------------------------------------------------------------------------
    def submit(self, request: Captured) -> Answer:
        body = request.body
        problem = self.problem(body)
        if problem:
            return Answer(400, {"error": {"message": problem, "type": "invalid_request_error",
                                          "code": "invalid_request"}})
        return self.accept(request, body)

    def accept(self, request: Captured, body: dict[str, Any], action: str = "generate") -> Answer:
        """A checked request answered: synchronously, or (`?async=true`) as a task id in the configured shape."""
        if request.query.get("async") != "true" or self.behaviour.sync_anyway:
            return Answer(200, self.result(body))
        with self.lock:
            task_id = f"img_task_{next(self._ids):04d}"
            self.tasks[task_id] = SimTask(task_id, body, int(time.time()), action=action)
        shape = self.behaviour.id_shape
        if shape == "task_id":
            return Answer(200, {"task_id": task_id})
        if shape == "id":
            return Answer(200, {"id": task_id, "object": "image.task", "status": "queued"})
        if shape == "code_data":
            return Answer(200, {"code": "success", "message": "", "data": task_id})
        return Answer(200, {"data": {"task_id": task_id, "status": "SUBMITTED"}})

    @staticmethod
    def problem(body: Any) -> str | None:
        if shape := field_problem(body, REQUIRED, FIELDS):
            return shape
        if not isinstance(body["prompt"], str) or not body["prompt"]:
            return "'prompt' must be a non-empty string."
        if not isinstance(body["size"], str) or not (body["size"] == "auto" or _PIXELS.match(body["size"])):
            return f"Invalid size '{body['size']}'."
        n = body["n"]
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10:
            return "'n' must be an integer from 1 to 10."
        return None

    def submit_edit(self, request: Captured) -> Answer:
        form = request.body
        problem = self.edit_problem(form) if isinstance(form, Form) else (
            "Could not parse multipart form." if isinstance(form, str) and form
            else "Content-Type must be multipart/form-data.")
        if problem:
            return Answer(400, {"error": {"message": problem, "type": "invalid_request_error",
                                          "code": "invalid_request"}})
        size = form.value("size") or "auto"
        if size == "auto":
            width, height = image_size(form.files_named("image", "image[]")[0]) or (1024, 1024)
            size = f"{width}x{height}"
        body = {"model": form.value("model"), "prompt": form.value("prompt"), "n": int(form.value("n") or 1),
                "size": size}
        return self.accept(request, body, action="edit")

    @staticmethod
    def edit_problem(form: Form) -> str | None:
        for name in form.fields:
            if name in EDIT_FILES:
                return f"'{name}' must be a file."
            if name not in EDIT_FIELDS:
                return f"Unknown parameter: '{name}'."
        for upload in form.files:
            if upload.field not in EDIT_FILES:
                return f"Unknown parameter: '{upload.field}'."
        for name in ("model", "prompt"):
            if not form.value(name):
                return f"Missing required parameter: '{name}'."
        images = form.files_named("image", "image[]")
        if not 1 <= len(images) <= 16:
            return f"Between 1 and 16 images are required, got {len(images)}."
        for upload in images:
            if image_kind(upload.data) is None or image_size(upload) is None:
                return f"Invalid image file '{upload.filename}': PNG, JPEG or WebP expected."
        masks = form.files_named("mask")
        if len(masks) > 1 or (masks and png_header(masks[0].data) is None):
            return "'mask' must be one PNG file."
        size = form.value("size")
        if size is not None and not (size == "auto" or _PIXELS.match(size)):
            return f"Invalid size '{size}'."
        n = form.value("n")
        if n is not None and not (n.isdigit() and 1 <= int(n) <= 10):
            return "'n' must be an integer from 1 to 10."
        return None

    def result(self, body: dict[str, Any]) -> dict[str, Any]:
        """The OpenAI Images answer for a finished request (what a sync call returns)."""
        size = "1024x1024" if body["size"] == "auto" else body["size"]
        width, height = map(int, size.split("x"))
        data = []
        for i in range(body["n"]):
            if self.behaviour.result_format == "b64_json":
                data.append({"b64_json": base64.b64encode(png_bytes(width, height)).decode()})
            else:
                data.append({"url": self.file_url(width, height, f"relay-{i}")})
        return {"created": int(time.time()), "data": data}

    # -- check -------------------------------------------------------------------------------------------------
    def check(self, task_id: str) -> Answer:
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None:
                return Answer(404, {"code": "task_not_exist", "message": "task_not_exist", "data": None})
            task.checks += 1
            number = task.checks
        b = self.behaviour
        obj: dict[str, Any] = {"task_id": task_id, "action": task.action, "status": "", "progress": "0%",
                               "fail_reason": "", "submit_time": task.submitted_at, "start_time": 0,
                               "finish_time": 0, "data": None}
        if b.finish_after_s is not None:
            finished = time.monotonic() >= task.finished_at(b.finish_after_s)
        else:
            finished = number >= b.checks_to_finish
        if finished:
            obj["finish_time"] = int(time.time())
            if b.fail_reason is not None:
                obj.update(status="FAILURE", progress="100%", fail_reason=b.fail_reason)
            else:
                obj.update(status="SUCCESS", progress="100%", data=self.result(task.body))
        elif number == 1:
            obj.update(status="QUEUED", progress="0%")
        else:
            step = b.progress_steps[min(number - 2, len(b.progress_steps) - 1)] if b.progress_steps else "50%"
            obj.update(status="IN_PROGRESS", progress=step, start_time=task.submitted_at)
        if b.lower_case_status:
            obj["status"] = obj["status"].lower()
        if b.progress_as != "percent":
            number_value = int(obj["progress"].rstrip("%"))
            obj["progress"] = number_value if b.progress_as == "int" else str(number_value)
        return Answer(200, {"code": "success", "message": "", "data": obj} if b.envelope else obj)
