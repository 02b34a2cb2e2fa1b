"""The `midjourney` dialect end to end: the OpenAI SDK against the local stack, routed to the midjourney-proxy
simulator (its `mj-api-secret` auth on one route, a Bearer relay on another), sync and async."""

import base64
import io
import json
import time

import pytest
import requests
from openai import OpenAI
from PIL import Image

from tests.integration.conftest import start_stack
from tests.simulators.midjourney_sim import QUADRANT_COLOURS, Behaviour, MidjourneySimulator


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    proxy = MidjourneySimulator(api_key="mj-secret", behaviour=Behaviour(checks_to_finish=3)).__enter__()
    relay = MidjourneySimulator(api_key="sk-mj-relay", behaviour=Behaviour(auth="bearer", checks_to_finish=2,
                                                                           cell_long_side=64)).__enter__()
    providers = {"mj-proxy": {"dialect": "midjourney", "base_url": proxy.base_url + "/mj", "api_key": proxy.api_key,
                              "auth": "mj-api-secret"},
                 "mj-relay": {"dialect": "midjourney", "base_url": relay.base_url, "api_key": relay.api_key}}
    models = {"midjourney": [{"provider": "mj-proxy"}], "mj-relay": [{"provider": "mj-relay", "model": "midjourney"}]}
    path = tmp_path_factory.mktemp("cfg") / "providers.json"
    path.write_text(json.dumps({"providers": providers, "models": models}))
    stack = start_stack(PROVIDERS_FILE=str(path))
    yield stack, proxy, relay
    stack.stop()
    proxy.__exit__(None, None, None)
    relay.__exit__(None, None, None)


def client(stack):
    return OpenAI(base_url=stack.base_url, api_key="sk-local", max_retries=0, timeout=90)


def picture(raw: bytes) -> tuple[tuple[int, int], set]:
    with Image.open(io.BytesIO(raw)) as image:
        return image.size, {colour for _, colour in image.convert("RGB").getcolors(1 << 24)}


def pictures(result) -> list[tuple[tuple[int, int], set]]:
    return [picture(base64.b64decode(item.b64_json) if item.b64_json else requests.get(item.url, timeout=10).content)
            for item in result.data]


def sent(sim, prompt):
    return [r for r in sim.submits if r.body.get("prompt", "").startswith(prompt)]


def test_sync_n4_gets_the_four_quadrants_of_the_grid(world):
    stack, proxy, _ = world
    prompt = "a lighthouse at dusk, four takes"
    result = client(stack).images.generate(model="midjourney", prompt=prompt, n=4, size="1792x1024",
                                           response_format="b64_json", quality="hd")
    assert pictures(result) == [((96, 55), {colour}) for colour in QUADRANT_COLOURS]
    [submit] = sent(proxy, prompt)
    assert submit.body == {"prompt": prompt + " --ar 7:4"} and submit.headers["mj-api-secret"] == "mj-secret"
    assert "authorization" not in submit.headers
    task_id = next(t.task_id for t in proxy.tasks.values() if t.prompt.startswith(prompt))
    checks = [r for r in proxy.checks if r.path == f"/mj/task/{task_id}/fetch"]
    assert len(checks) >= 3 and all(r.headers["mj-api-secret"] == "mj-secret" for r in checks)


def test_sync_n1_gets_the_grid_as_a_url_from_our_bucket(world):
    stack, proxy, _ = world
    result = client(stack).images.generate(model="midjourney", prompt="a quiet harbour", size="1024x1024")
    [item] = result.data
    assert item.url.startswith(f"http://127.0.0.1:{stack.aws_port}/")  # our copy, not the proxy's URL
    assert pictures(result) == [((192, 192), set(QUADRANT_COLOURS))]
    assert [r.body for r in sent(proxy, "a quiet harbour")] == [{"prompt": "a quiet harbour --ar 1:1"}]


def test_async_through_a_bearer_relay_with_visible_progress(world):
    stack, _, relay = world
    auth = {"Authorization": "Bearer sk-local"}
    accepted = requests.post(stack.base_url + "/images/generations", headers={**auth, "Prefer": "respond-async"},
                             json={"model": "mj-relay", "prompt": "three foxes --ar 2:3", "n": 3}, timeout=30)
    assert accepted.status_code == 202, accepted.text
    task_id = accepted.json()["id"]
    seen = []
    for _ in range(120):  # bounded: about a minute
        task = requests.get(f"{stack.base_url}/images/tasks/{task_id}", headers=auth, timeout=30).json()
        seen.append(task["progress"])
        if task["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.5)
    assert task["status"] == "succeeded", task
    assert len(task["data"]) == 3 and seen == sorted(seen) and task["usage"] == {"images": 3}
    [submit] = sent(relay, "three foxes")
    assert submit.body == {"prompt": "three foxes --ar 2:3"} and submit.headers["authorization"] == "Bearer sk-mj-relay"
    assert submit.path == "/mj/submit/imagine"
    got = [picture(requests.get(image["url"], timeout=10).content) for image in task["data"]]
    assert got == [((43, 64), {colour}) for colour in QUADRANT_COLOURS[:3]]
    assert relay.grid_downloads == 1


def test_a_banned_prompt_is_a_400_content_policy_violation(world):
    stack, proxy, _ = world
    with pytest.raises(Exception) as raised:
        client(stack).images.generate(model="midjourney", prompt="a gore scene")
    assert getattr(raised.value, "status_code", None) == 400
    assert raised.value.body["code"] == "content_policy_violation" and "gore" in raised.value.body["message"]
    assert not any(t.prompt.startswith("a gore") for t in proxy.tasks.values())


def test_n5_is_refused_before_any_upstream_call(world):
    stack, proxy, _ = world
    before = len(proxy.requests)
    with pytest.raises(Exception) as raised:
        client(stack).images.generate(model="midjourney", prompt="five takes", n=5)
    assert getattr(raised.value, "status_code", None) == 400 and raised.value.body["param"] == "n"
    assert len(proxy.requests) == before
