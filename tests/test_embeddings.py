"""Embeddings: `LLM.embed` and POST /v1/embeddings against transformers' last hidden state.

The checkpoint is a tiny random Qwen3 laid out as Qwen3-Embedding ships: a sentence-transformers
folder (modules.json, a last-token Pooling module, Normalize) whose weights are the bare decoder's
(`Qwen3Model`: no `model.` prefix, no LM head) under a config.json that says `Qwen3ForCausalLM`.
The oracle is `transformers.AutoModel(...).last_hidden_state` (after the final norm) pooled the
same way, in float32.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch

from llm_infer import LLM, PoolingParams, SamplingParams
from llm_infer.errors import UserError
from tests.checkpoints import TINY, write_byte_tokenizer
from tests.conftest import tiny_engine_config

# Short and long queries, and three prefills of 20 tokens in a row (one batched attention call).
PROMPTS = [list(range(5, 12)), [20, 21, 22], list(range(30, 67)), [7], *(list(range(k, k + 20)) for k in (90, 120, 150))]


def make_embedding_checkpoint(path, pooling: str = "lasttoken"):
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen3Config(**TINY, head_dim=16, tie_word_embeddings=False)
    transformers.Qwen3Model(config).save_pretrained(path)
    raw = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**raw, "architectures": ["Qwen3ForCausalLM"]}))
    write_byte_tokenizer(path)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    modes = {f"pooling_mode_{m}": m == pooling for m in ("cls_token", "mean_tokens", "max_tokens", "lasttoken")}
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 64, **modes}))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_embedding_checkpoint(tmp_path_factory.mktemp("emb") / "qwen3-embedding")


@pytest.fixture(scope="module")
def llm(checkpoint):
    with LLM(tiny_engine_config(checkpoint), progress=False) as llm:
        yield llm


@pytest.fixture(scope="module")
def reference(checkpoint):
    import transformers

    return transformers.AutoModel.from_pretrained(checkpoint, dtype=torch.float32).eval()


def oracle(reference, prompt: list[int], method: str, normalize: bool = True, dimensions: int | None = None):
    with torch.no_grad():
        hidden = reference(torch.tensor([prompt])).last_hidden_state[0]
    vector = {"last": hidden[-1], "mean": hidden.mean(0), "cls": hidden[0]}[method][:dimensions]
    return torch.nn.functional.normalize(vector, dim=0) if normalize else vector


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.nn.functional.cosine_similarity(got, want, dim=0) >= 0.9999
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_the_sentence_transformers_folder_is_an_embedding_model(llm):
    assert llm.task == "embed" and llm.pooling == PoolingParams("last", True)
    with pytest.raises(UserError, match="serves embeddings only"):
        llm.generate([[1, 2]], SamplingParams(max_tokens=2))
    with pytest.raises(UserError, match="serves embeddings only"):
        llm.chat([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("method", ["last", "mean", "cls"])
def test_a_batch_equals_transformers_pooled_the_same_way(llm, reference, method):
    for normalize, dimensions in ((False, None), (True, None), (True, 24)):
        outs = llm.embed(PROMPTS, PoolingParams(method, normalize, dimensions))
        for prompt, out in zip(PROMPTS, outs):
            assert out.prompt_token_ids == prompt and out.finished
            assert_close(out.embedding, oracle(reference, prompt, method, normalize, dimensions))
            if normalize:
                assert abs(out.embedding.norm().item() - 1) < 1e-5


@pytest.mark.slow  # two engines
def test_chunked_cached_and_preempted_prefills_pool_the_same(checkpoint, reference, tiny_models):
    """max_num_batched_tokens 8 cuts every prompt into chunks; a repeated prompt starts from cached
    blocks (last pooling) or recomputes them (mean). Under a cache of 14 blocks of 4 tokens a
    generating request that grows preempts the embedding requests mid-prompt: they are recomputed
    from the start and still pool what transformers does."""
    long = [list(range(40 + k, 88 + k)) for k in range(3)]  # 48 tokens: 12 blocks each
    with LLM(tiny_engine_config(checkpoint, scheduler={"max_num_batched_tokens": 8}), progress=False) as llm:
        for method in ("last", "mean"):
            prompts = [*long, long[0]]
            hits = llm.engine.block_manager.hit_tokens
            outs = llm.embed(prompts, PoolingParams(method))
            for prompt, out in zip(prompts, outs):
                assert_close(out.embedding, oracle(reference, prompt, method))
            assert (llm.engine.block_manager.hit_tokens > hits) == (method == "last")
    import transformers

    generator = transformers.AutoModel.from_pretrained(tiny_models["qwen3"], dtype=torch.float32).eval()
    tight = tiny_engine_config(tiny_models["qwen3"], scheduler={"max_num_batched_tokens": 8, "max_model_len": 56},
                               cache={"num_blocks": 14, "prefix_caching": False})
    with LLM(tight, progress=False) as llm:
        engine = llm.engine
        gen = engine.add_request([1, 2, 3, 4], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
        embeds = {engine.add_request(p, pooling=PoolingParams(m)): (p, m) for p in long for m in ("mean", "cls")}
        done = {}
        while len(done) < 1 + len(embeds):
            done.update((out.request_id, out) for out in engine.step() if out.finished)
        assert engine.scheduler.num_preemptions > 0 and len(done[gen].token_ids) == 40
        for rid, (prompt, method) in embeds.items():
            assert_close(done[rid].embedding, oracle(generator, prompt, method))


def test_embeddings_and_generation_share_steps(tiny_models):
    """A generating request and embedding requests in the same steps: each gets what it gets alone."""
    prompt = list(range(10, 30))
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    with LLM(tiny_engine_config(tiny_models["qwen3"]), progress=False) as llm:
        assert llm.task == "generate"  # a generation model embeds too (last token by default)
        want_text = llm.generate([prompt], params)[0].token_ids
        want_vectors = [o.embedding for o in llm.embed(PROMPTS)]
        engine = llm.engine
        gen = engine.add_request(prompt, params)
        embeds = [engine.add_request(p, pooling=llm.pooling) for p in PROMPTS]
        done = {}
        while len(done) < 1 + len(embeds):
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out
        assert done[gen].token_ids == want_text and done[gen].embedding is None
        for rid, want in zip(embeds, want_vectors):
            torch.testing.assert_close(done[rid].embedding, want, atol=1e-5, rtol=1e-5)
        with pytest.raises(UserError, match="dimensions is 65; this model's embeddings have 64"):
            llm.embed([[1, 2]], PoolingParams(dimensions=65))
        with pytest.raises(UserError, match="pooling method must be one of last, mean, cls"):
            PoolingParams("max")


@pytest.mark.slow  # worker processes
@pytest.mark.parametrize("layout", [{"tensor": 2}, {"pipeline": 2}], ids=["tp2", "pp2"])
def test_parallel_embeddings_equal_one_rank(checkpoint, llm, layout):
    with LLM(tiny_engine_config(checkpoint, parallel=layout), progress=False) as tp2:
        for method in ("last", "mean"):
            for one, two in zip(llm.embed(PROMPTS, PoolingParams(method)), tp2.embed(PROMPTS, PoolingParams(method))):
                torch.testing.assert_close(two.embedding, one.embedding, atol=1e-5, rtol=1e-5)


def test_pooling_modes_are_read_from_the_folder_or_refused(tmp_path):
    from llm_infer.runtime.models.sentence_transformers import resolve_pooling_method, resolve_task

    modes = {"lasttoken": "last", "mean_tokens": "mean", "cls_token": "cls"}
    for mode, method in modes.items():
        path = tmp_path / mode
        path.mkdir()
        (path / "modules.json").write_text(json.dumps([{"path": "p", "type": "sentence_transformers.models.Pooling"}]))
        (path / "p").mkdir()
        (path / "p" / "config.json").write_text(json.dumps({f"pooling_mode_{mode}": True, "pooling_mode_x": False}))
        assert resolve_pooling_method("auto", path) == method and resolve_task("auto", path) == "embed"
        assert resolve_pooling_method("cls", path) == "cls" and resolve_task("generate", path) == "generate"
    (tmp_path / "lasttoken" / "p" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(UserError, match=r"pooling \(pooling_mode_max_tokens\) is not supported"):
        resolve_pooling_method("auto", tmp_path / "lasttoken")
    assert resolve_pooling_method("auto", tmp_path) == "last" and resolve_task("auto", tmp_path) == "generate"


# -- over HTTP, with the official client ---------------------------------------------------------


@pytest.fixture(scope="module")
def live(llm):
    from llm_infer.entrypoints.server import AsyncEngine, build_app
    from llm_infer.entrypoints.server.serve import ServerThread

    engine = AsyncEngine(llm)
    server = ServerThread(build_app(engine, "qwen3-embedding"))
    yield server
    server.stop()
    engine.shutdown()


@pytest.fixture(scope="module")
def client(live):
    from openai import OpenAI

    return OpenAI(base_url=f"{live.url}/v1", api_key="none", max_retries=0)


@pytest.mark.slow  # a live server
def test_the_openai_client_gets_the_offline_embeddings(client, llm):
    texts = ["The cat sat.", "A much longer sentence about embeddings and caches.", "x"]
    want = [o.embedding for o in llm.embed(texts)]
    for fmt in ({}, {"encoding_format": "float"}):  # unless told otherwise the client asks for base64 and decodes it
        got = client.embeddings.create(model="qwen3-embedding", input=texts, **fmt)
        assert [d.index for d in got.data] == [0, 1, 2] and got.model == "qwen3-embedding"
        for d, w in zip(got.data, want):
            torch.testing.assert_close(torch.tensor(d.embedding, dtype=torch.float32), w, atol=1e-6, rtol=1e-6)
        assert got.usage.prompt_tokens == got.usage.total_tokens == sum(len(t.encode()) for t in texts)
    one = client.embeddings.create(model="qwen3-embedding", input=PROMPTS[0], dimensions=16)
    assert len(one.data) == 1 and len(one.data[0].embedding) == 16
    torch.testing.assert_close(torch.tensor(one.data[0].embedding), llm.embed([PROMPTS[0]], PoolingParams(
        dimensions=16))[0].embedding, atol=1e-6, rtol=1e-6)
    batch = client.embeddings.create(model="qwen3-embedding", input=PROMPTS)
    assert len(batch.data) == len(PROMPTS) and batch.usage.prompt_tokens == sum(map(len, PROMPTS))


@pytest.mark.slow  # a live server
def test_base64_is_little_endian_float32(live, llm):
    import httpx

    r = httpx.post(f"{live.url}/v1/embeddings", json={"input": "hi", "encoding_format": "base64"}, timeout=60)
    vector = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, llm.embed(["hi"])[0].embedding.numpy(), atol=1e-6)


@pytest.mark.slow  # a live server
@pytest.mark.parametrize("path,body,param,message", [
    ("/v1/embeddings", {"input": ""}, "input", "the input is empty"),
    ("/v1/embeddings", {"input": []}, "input", "1 to 2048 inputs"),
    ("/v1/embeddings", {"input": ["a", [1]]}, "input", "a string, a list of token ids"),
    ("/v1/embeddings", {"input": [1] * 600}, "input", "maximum context length is 512"),
    ("/v1/embeddings", {"input": [1, 999]}, "input", "outside the vocabulary"),
    ("/v1/embeddings", {"input": "a", "dimensions": 65}, "dimensions", "embeddings have 64"),
    ("/v1/embeddings", {"input": "a", "dimensions": 0}, "dimensions", "integer >= 1"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, "encoding_format", "encoding_format"),
    ("/v1/embeddings", {"input": "a", "pooling": "mean"}, "pooling", "unknown field"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, None, "embeddings only"),
    ("/v1/completions", {"prompt": "hi"}, None, "embeddings only"),
])
def test_bad_embedding_requests_are_400s_naming_the_field(live, path, body, param, message):
    import httpx

    r = httpx.post(f"{live.url}{path}", json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and message in error["message"], error
