"""Webhooks through the local stack: a receiver that fails twice then succeeds gets three signed deliveries."""

import base64
import hashlib
import hmac
import json
import time

import requests

from tests.integration.conftest import start_stack
from tests.simulators.loopback import Answer, LoopbackSimulator

SECRET = "whsec_" + base64.b64encode(b"integration-webhook-secret-32byt").decode()


class FlakyReceiver(LoopbackSimulator):
    def answer(self, request):
        return Answer(503, {}) if len(self.requests) <= 2 else Answer(200, {"ok": True})


def test_fails_twice_then_succeeds_three_signed_deliveries_one_id_no_fourth():
    with FlakyReceiver() as receiver:
        stack = start_stack(WEBHOOK_SECRET=SECRET, WEBHOOK_RETRY_DELAYS_S="0,2,2,2")
        try:
            reply = requests.post(stack.base_url + "/images/generations?async=true&webhook=" + receiver.base_url,
                                  headers={"Authorization": "Bearer sk-local"},
                                  json={"model": "gpt-image-1", "prompt": "call me back"})
            assert reply.status_code == 202
            for _ in range(60):
                if len(receiver.requests) >= 3:
                    break
                time.sleep(0.25)
            time.sleep(4)  # long enough for a fourth delivery, were there one
        finally:
            stack.stop()
    assert len(receiver.requests) == 3
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    ids = set()
    for delivery in receiver.requests:
        raw = json.dumps(delivery.body, ensure_ascii=False, separators=(",", ":"))
        msg_id, ts = delivery.headers["webhook-id"], delivery.headers["webhook-timestamp"]
        mac = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.{raw}".encode(), hashlib.sha256).digest()).decode()
        assert delivery.headers["webhook-signature"] == f"v1,{mac}"
        ids.add(msg_id)
        assert delivery.body["type"] == "image.task.succeeded" and delivery.body["data"]["id"] == reply.json()["id"]
    assert len(ids) == 1
