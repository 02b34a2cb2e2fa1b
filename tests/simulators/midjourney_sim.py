"""A loopback simulator of the `midjourney` dialect: midjourney-proxy's API (novicezk/midjourney-proxy) under `/mj`.

- Auth as configured: `mj-api-secret` (midjourney-proxy's ApiAuthorizeInterceptor: the header must equal the
  secret, else HTTP 401 with an empty body) or `bearer` (a relay: `Authorization: Bearer <key>`, else 401 JSON).
- `POST /mj/submit/imagine`: a JSON object with `prompt` (a non-blank string) and only the fields of
  SubmitImagineDTO (`prompt`, `base64Array`: a list of data URLs, `base64`, `state`, `notifyHook`); anything
  else is code 4 (the proxy's validation error), as is a blank prompt ("prompt不能为空"). Every answer is HTTP
  200 with `{code, description, result, properties}` (SubmitResultVO): 1 "提交成功"; 22 "排队中，前面还有N个任务"
  when `queued_ahead` is set; 21 "任务已存在" when `existing` (the id of a known task, with its `status` and
  `imageUrl` in `properties`, as new-api reads it); 24 "可能包含敏感词" when the prompt has a banned word
  (`properties`: `promptEn`, `bannedWord`); 23 "队列已满，请稍后尝试" when `queue_full`; `submit_code` forces
  another code (e.g. 9 "提交失败，系统异常").
- `GET /mj/task/{id}/fetch`: the Task as the proxy serialises it (`id, action, status, prompt, promptEn,
  description, state, submitTime, startTime, finishTime, imageUrl, progress, failReason, properties, buttons`).
  Each check moves it on: NOT_START, SUBMITTED "0%", IN_PROGRESS through `progress_steps`, then on check
  `checks_to_finish` SUCCESS "100%" with `imageUrl` (or FAILURE with `failReason` and progress "", CANCEL, or
  MODAL, as configured); `never_finish` keeps it IN_PROGRESS. An unknown id is HTTP 200 with an empty body
  (the proxy returns null).
- `GET /grid/{id}.png`: the task's 2x2 grid, a real PNG whose quadrants are QUADRANT_COLOURS (U1..U4) and whose
  cells have the `--ar` of the prompt (long side `cell_long_side`); `expired_urls` makes it a 404.
Every request is recorded.
"""

from __future__ import annotations

import io
import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .loopback import Answer, Captured, LoopbackSimulator

PREFIX = "/mj"
SUBMIT = PREFIX + "/submit/imagine"
FETCH = re.compile(r"^/mj/task/([^/]+)/fetch$")
GRID = re.compile(r"^/grid/([^/]+)\.png$")
FIELDS = {"prompt", "base64Array", "base64", "state", "notifyHook"}
BANNED = ("nude", "gore", "blood")
QUADRANT_COLOURS = ((220, 30, 30), (30, 200, 40), (30, 60, 220), (240, 220, 20))
_AR = re.compile(r"--(?:ar|aspect)\s+(\d+):(\d+)")


@dataclass
class Behaviour:
    auth: str = "mj-api-secret"  # or "bearer"
    checks_to_finish: int = 4
    progress_steps: list[str] = field(default_factory=lambda: ["25%", "50%", "75%"])
    fail_reason: str | None = None  # set: the task ends FAILURE with it
    end_status: str = "SUCCESS"  # or "CANCEL", "MODAL"
    never_finish: bool = False
    queued_ahead: int = 0  # > 0: code 22
    queue_full: bool = False  # code 23
    existing: bool = False  # code 21 naming the first task it was given
    submit_code: int | None = None  # force a failure code
    expired_urls: bool = False
    cell_long_side: int = 96


@dataclass
class SimTask:
    task_id: str
    prompt: str
    state: str | None
    submitted_at: int
    checks: int = 0


def grid_png(cell_width: int, cell_height: int) -> bytes:
    """A 2x2 grid of cell_width x cell_height cells, each in its QUADRANT_COLOURS entry (U1..U4, row-major)."""
    image = Image.new("RGB", (2 * cell_width, 2 * cell_height))
    for index, colour in enumerate(QUADRANT_COLOURS):
        col, row = index % 2, index // 2
        image.paste(colour, (col * cell_width, row * cell_height, (col + 1) * cell_width, (row + 1) * cell_height))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def cell_size(prompt: str, long_side: int) -> tuple[int, int]:
    """One cell's size for the prompt's `--ar W:H` (1:1 without one), its long side `long_side`."""
    match = _AR.search(prompt)
    w, h = (int(match[1]), int(match[2])) if match else (1, 1)
    if w >= h:
        return long_side, max(1, round(long_side * h / w))
    return max(1, round(long_side * w / h)), long_side


class MidjourneySimulator(LoopbackSimulator):
    generation_path = SUBMIT

    def __init__(self, api_key: str = "mj-secret", behaviour: Behaviour | None = None, port: int = 0):
        super().__init__(port)
        self.api_key = api_key
        self.behaviour = behaviour or Behaviour()
        self.tasks: dict[str, SimTask] = {}
        self.grid_downloads = 0
        self._ids = itertools.count(1)

    @property
    def submits(self) -> list[Captured]:
        return [r for r in self.requests if r.path == SUBMIT]

    @property
    def checks(self) -> list[Captured]:
        return [r for r in self.requests if FETCH.match(r.path)]

    def authorised(self, request: Captured) -> bool:
        if self.behaviour.auth == "mj-api-secret":
            return request.headers.get("mj-api-secret") == self.api_key
        return request.headers.get("authorization") == f"Bearer {self.api_key}"

    def answer(self, request: Captured) -> Answer:
        if request.method == "GET" and (grid := GRID.match(request.path)):
            return self.grid(grid[1])
        if not self.authorised(request):
            if self.behaviour.auth == "mj-api-secret":
                return Answer(401, b"", {"Content-Type": "text/plain"})
            return Answer(401, {"error": {"message": "无效的令牌", "type": "new_api_error"}})
        if request.path == SUBMIT and request.method == "POST":
            return self.submit(request)
        if request.method == "GET" and (fetch := FETCH.match(request.path)):
            return self.fetch(fetch[1])
        return Answer(404, {"timestamp": int(time.time() * 1000), "status": 404, "error": "Not Found",
                            "path": request.path})

    # -- submit ------------------------------------------------------------------------------------------------
    @staticmethod
    def result(code: int, description: str, result: str | None = None, **properties: Any) -> Answer:
        return Answer(200, {"code": code, "description": description, "result": result, "properties": properties})

    def submit(self, request: Captured) -> Answer:
        body = request.body
        b = self.behaviour
        if not isinstance(body, dict):
            return Answer(400, {"timestamp": int(time.time() * 1000), "status": 400, "error": "Bad Request",
                                "path": SUBMIT})
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            return self.result(4, f"unknown field: {unknown[0]}")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return self.result(4, "prompt不能为空")
        images = body.get("base64Array")
        if images is not None and (not isinstance(images, list) or
                                   not all(isinstance(i, str) and i.startswith("data:") for i in images)):
            return self.result(4, "base64格式错误")
        if word := next((w for w in BANNED if re.search(rf"\b{w}\b", prompt.lower())), None):
            return self.result(24, "可能包含敏感词", promptEn=prompt.strip(), bannedWord=word)
        if b.submit_code is not None:
            return self.result(b.submit_code, "提交失败，系统异常", discordInstanceId="1")
        if b.queue_full:
            return self.result(23, "队列已满，请稍后尝试", discordInstanceId="1")
        with self.lock:
            if b.existing and self.tasks:
                first = next(iter(self.tasks.values()))
                return self.result(21, "任务已存在", first.task_id, status="IN_PROGRESS", imageUrl="")
            task_id = f"{1700000000000 + next(self._ids)}{len(self.tasks) % 1000:03d}"
            self.tasks[task_id] = SimTask(task_id, prompt.strip(), body.get("state"), int(time.time() * 1000))
        if b.queued_ahead:
            return self.result(22, f"排队中，前面还有{b.queued_ahead}个任务", task_id,
                               numberOfQueues=b.queued_ahead, discordInstanceId="1")
        return self.result(1, "提交成功", task_id, discordInstanceId="1")

    # -- fetch -------------------------------------------------------------------------------------------------
    def fetch(self, task_id: str) -> Answer:
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None:
                return Answer(200, b"", {"Content-Type": "application/json"})  # Spring's null
            task.checks += 1
            number = task.checks
        b = self.behaviour
        obj: dict[str, Any] = {
            "id": task.task_id, "action": "IMAGINE", "status": "NOT_START", "prompt": task.prompt,
            "promptEn": task.prompt, "description": f"/imagine {task.prompt}", "state": task.state,
            "submitTime": task.submitted_at, "startTime": None, "finishTime": None, "imageUrl": None,
            "progress": None, "failReason": None, "properties": {"discordInstanceId": "1"}, "buttons": []}
        finished = not b.never_finish and number >= b.checks_to_finish
        if finished:
            obj.update(startTime=task.submitted_at + 100, finishTime=int(time.time() * 1000))
            if b.fail_reason is not None:
                obj.update(status="FAILURE", failReason=b.fail_reason, progress="")
            elif b.end_status != "SUCCESS":
                obj.update(status=b.end_status, progress="0%")
            else:
                obj.update(status="SUCCESS", progress="100%", imageUrl=f"{self.base_url}/grid/{task.task_id}.png",
                           buttons=[{"customId": f"MJ::JOB::upsample::{i}::x", "label": f"U{i}"} for i in range(1, 5)])
        elif number == 1:
            obj.update(status="NOT_START" if b.queued_ahead else "SUBMITTED", progress="0%")
        else:
            steps = b.progress_steps or ["50%"]
            obj.update(status="IN_PROGRESS", startTime=task.submitted_at + 100,
                       progress=steps[min(number - 2, len(steps) - 1)])
        return Answer(200, obj)

    def grid(self, task_id: str) -> Answer:
        with self.lock:
            task = self.tasks.get(task_id)
            self.grid_downloads += 1
        if task is None or self.behaviour.expired_urls:
            return Answer(404, b"This content is no longer available.", {"Content-Type": "text/plain"})
        return Answer(200, grid_png(*cell_size(task.prompt, self.behaviour.cell_long_side)),
                      {"Content-Type": "image/png"})
