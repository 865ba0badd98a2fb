"""LoRA adapters over HTTP with the official `openai` client: `model: "<adapter>"` on completions, chat
and responses equals the offline engine with the same adapter (greedy); /v1/models lists adapters
under their base; POST /v1/load_lora_adapter and /v1/unload_lora_adapter at run time, while requests
run, lose no request; error bodies; `llm-infer serve --lora-modules`.

A tiny random Qwen2 and random PEFT adapters (tests/lora_adapters.py); the offline `LLM` with the same
config and adapters is the oracle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys

import httpx
import pytest
import yaml
from openai import AsyncOpenAI, NotFoundError, OpenAI
from starlette.testclient import TestClient

from llm_infer import LLM, SamplingParams
from llm_infer.entrypoints.cli import main as cli_main
from llm_infer.entrypoints.server import AsyncEngine, build_app
from llm_infer.entrypoints.server.serve import lora_module, lora_settings
from llm_infer.errors import UserError
from tests.conftest import served_engine, tiny_engine_config
from tests.lora_adapters import write_adapter
from tests.test_server import (  # noqa: F401 (fixtures: a live server with an API key over `engine`)
    KEY, client, http, live, prompt_ids, slow_steps, wait_idle)

pytestmark = pytest.mark.slow  # a live server
MODEL = "qwen2"  # the tiny checkpoint's folder name: the served base model
GREEDY = {"temperature": 0}
USER = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("adapters")
    base = tiny_models["qwen2"]
    return {name: write_adapter(root / name, base, r=4 + 4 * i, alpha=16, seed=30 + i)
            for i, name in enumerate(["a", "b", "c"])}


def config(tiny_models) -> dict:
    # Two device slots: a step mixing three adapters holds one back (the scheduler's job, not the server's).
    return tiny_engine_config(tiny_models["qwen2"], lora={"enabled": True, "max_loras": 2, "runtime_updates": True},
                              scheduler={"max_num_seqs": 32}, cache={"num_blocks": 512})


@pytest.fixture(scope="module")
def offline(tiny_models, adapters):
    with LLM(config(tiny_models), progress=False, lora_modules=adapters) as llm:
        yield llm


@pytest.fixture(scope="module")
def engine(tiny_models, adapters):
    llm = LLM(config(tiny_models), progress=False, lora_modules={"a": adapters["a"], "b": adapters["b"]})
    async_engine = AsyncEngine(llm)
    yield async_engine
    async_engine.shutdown()
    llm.close()


def greedy(offline: LLM, prompts: list[list[int]], lora: str | None, max_tokens: int = 8) -> list[str]:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, lora=lora, **GREEDY)
    return [o.text for o in offline.generate(prompts, params)]


def completion(client: OpenAI, model: str, ids: list[int], max_tokens: int = 8, **kwargs):
    return client.completions.create(model=model, prompt=ids, max_tokens=max_tokens,
                                     extra_body={"ignore_eos": True}, **GREEDY, **kwargs)


def assert_error(response: httpx.Response, status: int, param: str | None, *needles: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param
    for needle in needles:
        assert needle in error["message"], error["message"]
    return error


# -- requests name the adapter as their model -----------------------------------------------------


def test_completions_through_an_adapter_equal_the_offline_engine(client, offline):
    ids = prompt_ids(1, seed=5)[0]
    texts = {}
    for model, lora in ((MODEL, None), ("a", "a"), ("b", "b")):
        got = completion(client, model, ids)
        assert got.model == model
        texts[model] = got.choices[0].text
        assert texts[model] == greedy(offline, [ids], lora)[0], model
    assert len(set(texts.values())) == 3  # each adapter changes the answer
    chunks = list(completion(client, "a", ids, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == texts["a"] and chunks[0].model == "a"
    # The config's model string names the base model too.
    assert completion(client, str(offline.config.model), ids).choices[0].text == texts[MODEL]


def test_chat_and_responses_through_an_adapter_equal_offline_chat(client, offline):
    want = {lora: offline.chat(USER, SamplingParams(max_tokens=8, lora=lora, **GREEDY)).text
            for lora in (None, "b")}
    assert want[None] != want["b"]
    for model, lora in ((MODEL, None), ("b", "b")):
        chat = client.chat.completions.create(model=model, messages=USER, max_tokens=8, **GREEDY)
        assert chat.model == model and chat.choices[0].message.content == want[lora]
        response = client.responses.create(model=model, input=USER[0]["content"], max_output_tokens=8,
                                           temperature=0.0)
        assert response.model == model and response.output_text == want[lora]


def test_models_lists_each_adapter_under_its_base(client, adapters, offline):
    cards = {m.id: m.to_dict() for m in client.models.list()}
    assert list(cards) == [MODEL, "a", "b"]
    assert cards[MODEL]["parent"] is None and cards[MODEL]["root"] == str(offline.config.model)
    for name in ("a", "b"):
        assert cards[name]["parent"] == MODEL and cards[name]["root"] == str(adapters[name])
        assert cards[name]["object"] == "model" and cards[name]["owned_by"] == "llm-infer"


# -- loading and unloading at run time ------------------------------------------------------------


def test_load_and_unload_while_requests_run_lose_no_request(live, http, engine, offline, adapters):
    """Requests on `a`, `b` and the base stream while `c` is loaded, used and unloaded mid-flight and
    `a`'s folder is loaded again as `d`: every request finishes with the offline engine's text."""
    prompts = prompt_ids(18, seed=6)
    plan = [(p, [MODEL, "a", "b"][i % 3]) for i, p in enumerate(prompts[:12])]
    late = [(p, ["c", "d", "a"][i % 3]) for i, p in enumerate(prompts[12:])]
    oracle = {"a": "a", "b": "b", "c": "c", "d": "a", MODEL: None}
    want = [greedy(offline, [p], oracle[m], max_tokens=16)[0] for p, m in plan + late]

    async def run() -> list[str]:
        async with AsyncOpenAI(base_url=f"{live.url}/v1", api_key=KEY, max_retries=0, timeout=120) as aclient, \
                httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {KEY}"},
                                  timeout=60) as ahttp:
            async def one(ids: list[int], model: str) -> str:
                stream = await aclient.completions.create(model=model, prompt=ids, max_tokens=16, stream=True,
                                                          extra_body={"ignore_eos": True}, **GREEDY)
                return "".join([c.choices[0].text async for c in stream])

            early = [asyncio.create_task(one(p, m)) for p, m in plan]
            await asyncio.sleep(0.3)  # they are running
            for name, path in (("c", adapters["c"]), ("d", adapters["a"])):
                r = await ahttp.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
                assert r.status_code == 200 and r.text == f"Success: LoRA adapter '{name}' added successfully."
            later = [asyncio.create_task(one(p, m)) for p, m in late]
            await asyncio.sleep(0.3)
            r = await ahttp.post("/v1/unload_lora_adapter", json={"lora_name": "c"})  # its requests still run
            assert r.status_code == 200 and r.text == "Success: LoRA adapter 'c' removed successfully."
            assert not all(t.done() for t in early + later)  # the changes happened under load
            return await asyncio.gather(*early, *later)

    with slow_steps(engine, 0.02):
        assert asyncio.run(run()) == want
    wait_idle(engine)
    assert [m["id"] for m in http.get("/v1/models").json()["data"]] == [MODEL, "a", "b", "d"]
    assert_error(http.post("/v1/completions", json={"model": "c", "prompt": [5, 6]}), 404, "model", "'c'")
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "d"}).status_code == 200
    assert [info.name for info in engine.loras] == ["a", "b"]


# -- errors ---------------------------------------------------------------------------------------


def test_an_adapter_unloaded_after_the_route_resolved_it_is_a_404(http, engine, adapters):
    load = {"lora_name": "e", "lora_path": str(adapters["c"])}
    assert http.post("/v1/load_lora_adapter", json=load).status_code == 200
    stale = engine.loras
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "e"}).status_code == 200
    engine.loras = stale  # as if the route read the list just before the unload: the engine refuses it
    try:
        error = assert_error(http.post("/v1/completions", json={"model": "e", "prompt": [5, 6]}), 404, "model",
                             "no LoRA adapter named 'e'")
        assert error["code"] == "model_not_found"
    finally:
        engine.loras = tuple(engine.llm.engine.list_loras())  # the engine is idle: nothing else writes it


def test_unknown_model_is_404_naming_the_adapters(http, client):
    error = assert_error(http.post("/v1/completions", json={"model": "nope", "prompt": [5]}), 404, "model",
                         "'nope'", "'a'", "'b'", MODEL)
    assert error["code"] == "model_not_found"
    with pytest.raises(NotFoundError):
        client.chat.completions.create(model="nope", messages=USER, max_tokens=2)


@pytest.mark.parametrize("body, status, param, needles", [
    ({"lora_name": "a", "lora_path": "/x"}, 400, "lora_name", ["already loaded"]),
    ({"lora_name": MODEL, "lora_path": "/x"}, 400, "lora_name", ["base model"]),
    ({"lora_name": "z", "lora_path": "/no/such/adapter"}, 400, "lora_path", ["/no/such/adapter", "no such folder"]),
    ({"lora_name": "z"}, 400, "lora_path", ["'lora_path'", "required"]),
    ({"lora_name": "", "lora_path": "/x"}, 400, "lora_name", ["non-empty"]),
    ({"lora_name": "z", "lora_path": "/x", "load_inplace": True}, 400, "load_inplace", ["not supported"]),
], ids=["taken", "base-name", "no-folder", "no-path", "empty-name", "unknown-field"])
def test_load_refusals_are_400s_naming_the_field(http, body, status, param, needles):
    assert_error(http.post("/v1/load_lora_adapter", json=body), status, param, *needles)


def test_a_malformed_adapter_is_a_400_naming_its_file_and_tensor(http, tiny_models, tmp_path):
    bad = write_adapter(tmp_path / "bad", tiny_models["qwen2"], r=4, seed=9, targets=("q_proj",), layers=[0])
    config_file = bad / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "r": 8}))  # the tensors have r=4
    error = assert_error(http.post("/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": str(bad)}), 400,
                         "lora_path", str(bad / "adapter_model.safetensors"), "layers.0.self_attn.q_proj.lora_A")
    assert "\n" not in error["message"]
    assert "bad" not in [m["id"] for m in http.get("/v1/models").json()["data"]]


def test_unload_refusals(http):
    error = assert_error(http.post("/v1/unload_lora_adapter", json={"lora_name": "nope"}), 404, "lora_name",
                         "'nope'", "not loaded")
    assert error["code"] == "model_not_found"
    assert_error(http.post("/v1/unload_lora_adapter", json={"lora_int_id": 1}), 400, "lora_int_id", "not supported")
    assert_error(http.post("/v1/unload_lora_adapter", json={}), 400, "lora_name", "required")
    assert_error(http.post("/v1/unload_lora_adapter", content=b"{"), 400, None, "not valid JSON")


def test_adapter_routes_need_the_api_key(live):
    r = httpx.post(f"{live.url}/v1/load_lora_adapter", json={"lora_name": "z", "lora_path": "/x"})
    assert r.status_code == 401


def test_embeddings_with_an_adapter_are_a_400(http):
    error = assert_error(http.post("/v1/embeddings", json={"model": "a", "input": "hi"}), 400, "model", "LoRA")
    assert error["code"] == "model_not_supported"


def test_tokenize_accepts_an_adapter_name(http):
    base = http.post("/tokenize", json={"model": MODEL, "prompt": "Hello"}).json()
    assert http.post("/tokenize", json={"model": "a", "prompt": "Hello"}).json() == base


def test_run_time_updates_are_opt_in(tiny_models, adapters):
    """The routes read any folder the server can read: closed unless lora.runtime_updates."""
    with served_engine(tiny_engine_config(tiny_models["qwen2"], lora={"enabled": True})) as engine, \
            TestClient(build_app(engine, MODEL), raise_server_exceptions=False) as c:
        body = {"lora_name": "a", "lora_path": str(adapters["a"])}
        assert_error(c.post("/v1/load_lora_adapter", json=body), 400, None, "--allow-runtime-lora-updating")
        assert_error(c.post("/v1/unload_lora_adapter", json={"lora_name": "a"}), 400, None, "lora.runtime_updates")
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == [MODEL]


def test_a_server_without_lora_refuses_adapter_routes(tiny_models):
    with served_engine(tiny_engine_config(tiny_models["qwen2"])) as engine, \
            TestClient(build_app(engine, MODEL), raise_server_exceptions=False) as c:
        body = {"lora_name": "a", "lora_path": "/x"}
        assert_error(c.post("/v1/load_lora_adapter", json=body), 400, None, "--enable-lora", "--lora-modules")
        assert_error(c.post("/v1/unload_lora_adapter", json={"lora_name": "a"}), 400, None, "lora.enabled")
        assert [(m["id"], m["parent"]) for m in c.get("/v1/models").json()["data"]] == [(MODEL, None)]


# -- the CLI --------------------------------------------------------------------------------------


def test_lora_module_forms():
    assert lora_module("x=/p/a=b") == ("x", "/p/a=b")
    assert lora_module('{"name": "x", "path": "/p"}') == ("x", "/p")
    for bad in ("x", "=p", "x=", '{"name": "x"}', '{"name": "x", "path": "/p", "base_model_name": "m"}', "{x"):
        with pytest.raises(argparse.ArgumentTypeError):
            lora_module(bad)
    args = argparse.Namespace(lora_modules=[("x", "/p"), ("y", "/q")], enable_lora=False, max_lora_rank=32,
                              max_loras=None, max_cpu_loras=8)
    assert lora_settings(args) == ({"x": "/p", "y": "/q"},
                                   ["lora.enabled=true", "lora.max_rank=32", "lora.max_cpu_loras=8"])
    sizes_only = argparse.Namespace(lora_modules=[], enable_lora=False, max_lora_rank=None, max_loras=3,
                                    max_cpu_loras=None, allow_runtime_lora_updating=True)
    assert lora_settings(sizes_only) == ({}, ["lora.enabled=true", "lora.runtime_updates=true", "lora.max_loras=3"])
    with pytest.raises(UserError, match="given twice"):
        lora_settings(argparse.Namespace(lora_modules=[("x", "/p"), ("x", "/q")]))


def test_serve_rejects_a_malformed_lora_module_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["serve", "--config", "/no/such.yaml", "--lora-modules", "just-a-name"])
    assert exit_info.value.code == 2 and "NAME=PATH" in capsys.readouterr().err


def test_serve_with_lora_modules_serves_them(tiny_models, adapters, tmp_path, offline):
    """`--lora-modules` implies lora.enabled; an adapter named like the base model exits 2."""
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_engine_config(tiny_models["qwen2"])))
    command = [sys.executable, "-m", "llm_infer.entrypoints.cli", "serve", "--config", str(config_file), "--port", "0",
               "--lora-modules", f"a={adapters['a']}", json.dumps({"name": "b", "path": str(adapters["b"])})]
    env = {k: v for k, v in os.environ.items() if k != "LLM_INFER_API_KEY"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving {MODEL} with LoRA adapters a, b at http://"), (line, proc.stderr.read())
        base = line.split(" at ")[1].split()[0]
        assert [m["id"] for m in httpx.get(f"{base}/models").json()["data"]] == [MODEL, "a", "b"]
        ids = prompt_ids(1, seed=7)[0]
        got = OpenAI(base_url=base, api_key="none", max_retries=0).completions.create(
            model="b", prompt=ids, max_tokens=8, extra_body={"ignore_eos": True}, **GREEDY)
        assert got.choices[0].text == greedy(offline, [ids], "b")[0]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    clash = subprocess.run([*command[:-2], f"{MODEL}={adapters['a']}"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert clash.returncode == 2 and clash.stderr.strip().splitlines()[-1] == (
        f"error: LoRA adapter name '{MODEL}' is the base model's name; choose another")
