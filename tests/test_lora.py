"""LoRA adapters against transformers with the adapter merged into the weights (fp32 logits within
1e-4 x max|logit|, identical greedy tokens); batches mixing adapters against each request alone;
adapter management under load; the prefix cache never shared across adapters; refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llm_infer import LLM, SamplingParams
from llm_infer.errors import ConfigError, UserError
from tests.checkpoints import reference_model
from tests.conftest import tiny_engine_config
from tests.lora_adapters import merge_adapter, write_adapter
from tests.oracle import engine_greedy as greedy_with_logits

PROMPT = [5, 17, 42, 99, 3, 250, 64, 8, 11, 200, 31]


def lora_config(model: Path, **lora) -> dict:
    return tiny_engine_config(model, lora={"enabled": True, **lora})


def assert_matches_merged(logits: torch.Tensor, tokens: list[int], merged: Path, prompt: list[int]) -> None:
    hf = reference_model(merged)
    with torch.no_grad():
        ref = hf(torch.tensor([prompt + tokens[:-1]])).logits[0]
    assert (logits - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
    assert tokens == [int(t) for t in ref[len(prompt) - 1 :].argmax(-1)]


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_adapter_matches_transformers_with_it_merged(tiny_models, tmp_path, arch):
    base = tiny_models[arch]
    adapter = write_adapter(tmp_path / "a", base, r=8, alpha=16, seed=1)
    merged = merge_adapter(base, adapter, tmp_path / "merged")
    with LLM(lora_config(base), progress=False, lora_modules={"a": adapter}) as llm:
        tokens, logits = greedy_with_logits(llm, PROMPT, 6, "a")
        base_tokens, base_logits = greedy_with_logits(llm, PROMPT, 6, None)
    assert_matches_merged(logits, tokens, merged, PROMPT)
    assert_matches_merged(base_logits, base_tokens, base, PROMPT)  # slots hold an adapter, this request none
    assert (logits - base_logits).abs().max() > 0.1  # the adapter changes the answer


def test_rank_and_alpha_patterns_rslora_and_partial_targets(tiny_models, tmp_path):
    base = tiny_models["qwen2"]
    adapter = write_adapter(tmp_path / "a", base, r=4, alpha=6, seed=2, use_rslora=True, layers=[0, 1, 3],
                            targets=("q_proj", "v_proj", "up_proj", "down_proj"),
                            rank_pattern={"q_proj": 2, "layers.1.mlp.down_proj": 8},
                            alpha_pattern={"v_proj": 3.0, "layers.3.mlp.up_proj": 20})
    merged = merge_adapter(base, adapter, tmp_path / "merged")
    with LLM(lora_config(base, max_rank=8), progress=False, lora_modules={"a": adapter}) as llm:
        tokens, logits = greedy_with_logits(llm, PROMPT, 4, "a")
    assert_matches_merged(logits, tokens, merged, PROMPT)


def test_a_batch_of_three_adapters_and_the_base_equals_each_alone(tiny_models, tmp_path):
    """Two device slots for three adapters: the scheduler holds back what does not fit and slots
    are refilled (least recently used out) as requests finish."""
    base = tiny_models["qwen3"]
    names = ["a", "b", "c"]
    modules = {n: write_adapter(tmp_path / n, base, seed=10 + i) for i, n in enumerate(names)}
    prompts = [PROMPT[i:] + [7 * i + 1] for i in range(8)]
    loras = [names[i % 3] if i % 4 != 3 else None for i in range(8)]
    with LLM(lora_config(base, max_loras=2), progress=False, lora_modules=modules) as llm:
        params = [SamplingParams(max_tokens=5 + i % 3, temperature=0, ignore_eos=True, lora=lora)
                  for i, lora in enumerate(loras)]
        together = llm.generate(prompts, params)
        alone = [llm.generate([p], [sp])[0] for p, sp in zip(prompts, params)]
    for t, a in zip(together, alone):
        assert t.outputs[0].token_ids == a.outputs[0].token_ids
    assert len({tuple(t.outputs[0].token_ids) for t in together[:3]}) == 3


@pytest.mark.slow
@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)])
def test_parallel_adapters_equal_one_rank(tiny_models, tmp_path, tp, pp):
    """TP=2: q/k/v heads, KV heads and gate/up split (B rows with them), o/down split along their
    input (A columns with them); PP=2: each stage loads its layers' part of the adapter."""
    base = tiny_models["qwen2"]  # 4 heads, 2 KV heads
    adapter = write_adapter(tmp_path / "a", base, seed=3)
    results = []
    for parallel in ({}, {"tensor": tp, "pipeline": pp}):
        cfg = lora_config(base, max_loras=2)
        cfg["parallel"] = parallel
        with LLM(cfg, progress=False, lora_modules={"a": adapter}) as llm:
            results.append(greedy_with_logits(llm, PROMPT, 4, "a"))
    (t1, l1), (t2, l2) = results
    assert t1 == t2
    assert (l1 - l2).abs().max().item() <= 1e-4 * l1.abs().max().item()


def test_slots_are_refilled_least_recently_used_first(tiny_models, tmp_path):
    from llm_infer.config import LoRAConfig
    from llm_infer.runtime.lora.registry import NO_LORA, NO_SLOT, LoRARegistry
    from llm_infer.runtime.models.model_config import ModelConfig

    base = tiny_models["qwen2"]
    registry = LoRARegistry(LoRAConfig(enabled=True, max_loras=2), ModelConfig.from_dir(base))
    a, b, c = (registry.add(n, write_adapter(tmp_path / n, base, seed=i)).id for i, n in enumerate("abc"))
    slots, loads = registry.assign([a, NO_LORA, b, a])
    assert slots == [0, NO_SLOT, 1, 0] and [(s.slot, s.lora_id) for s in loads] == [(0, a), (1, b)]
    assert registry.assign([b, a]) == ([1, 0], [])  # resident: nothing to load; a used last
    slots, loads = registry.assign([c])
    assert slots == [1] and [(s.slot, s.lora_id) for s in loads] == [(1, c)]  # b was the least recent
    slots, loads = registry.assign([b, c])  # a goes, though older uses of c came later
    assert slots == [0, 1] and [(s.slot, s.lora_id) for s in loads] == [(0, b)]
    with pytest.raises(RuntimeError, match="more than lora.max_loras=2"):
        registry.assign([a, b, c])


def test_the_prefix_cache_is_never_shared_across_adapters(tiny_models, tmp_path):
    base = tiny_models["qwen2"]
    modules = {n: write_adapter(tmp_path / n, base, seed=20 + i) for i, n in enumerate("ab")}
    prompt = list(range(40, 73))  # 8 full blocks of 4

    def run(llm: LLM, lora: str | None) -> list[int]:
        params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True, lora=lora)
        return llm.generate([prompt], [params])[0].outputs[0].token_ids

    with LLM(lora_config(base), progress=False, lora_modules=modules) as llm:
        blocks = llm.engine.block_manager
        first = run(llm, "a")
        hits = blocks.hit_tokens
        assert run(llm, "a") == first
        assert blocks.hit_tokens > hits  # the same adapter reuses its blocks
        for lora in ("b", None):
            hits = blocks.hit_tokens
            run(llm, lora)
            assert blocks.hit_tokens == hits, f"{lora} found blocks computed with adapter a"
        # removed and loaded again under the same name: a new id, so the old blocks are not found
        llm.remove_lora("a")
        llm.add_lora("a", modules["b"])
        hits = blocks.hit_tokens
        tokens = run(llm, "a")
        assert blocks.hit_tokens == hits
    with LLM(lora_config(base, max_loras=2), progress=False, lora_modules=modules) as fresh:
        assert run(fresh, "b") == tokens


def test_adapters_added_and_removed_while_requests_run_lose_nothing(tiny_models, tmp_path):
    base = tiny_models["qwen2"]
    a, b = (write_adapter(tmp_path / n, base, seed=30 + i) for i, n in enumerate("ab"))
    params = {n: SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, lora=n) for n in ("a", "b")}
    with LLM(lora_config(base, max_loras=1, max_cpu_loras=1), progress=False) as llm:
        llm.add_lora("a", a)
        engine = llm.engine
        first = [engine.add_request(PROMPT[i:], params["a"]) for i in range(3)]
        done = {}
        for _ in range(3):
            done.update({o.request_id: o for o in engine.step() if o.finished})
        llm.remove_lora("a")  # the three keep running with it
        with pytest.raises(UserError, match="no LoRA adapter named 'a'"):
            engine.add_request(PROMPT, params["a"])
        llm.add_lora("b", b)  # one slot: b waits until a's requests are done
        second = [engine.add_request(PROMPT[i:], params["b"]) for i in range(2)]
        assert [i.name for i in llm.list_loras()] == ["b"]
        while engine.has_unfinished():
            done.update({o.request_id: o for o in engine.step() if o.finished})
        assert engine.loras.take_dropped() == [] and 1 not in engine.loras._by_id  # a's copies dropped
    with LLM(lora_config(base), progress=False, lora_modules={"a": a, "b": b}) as ref:
        for ids, name in ((first, "a"), (second, "b")):
            for i, rid in enumerate(ids):
                expected = ref.generate([PROMPT[i:]], [params[name]])[0].outputs[0].token_ids
                assert done[rid].outputs[0].token_ids == expected


def test_ngram_speculation_and_structured_output_with_an_adapter(tiny_models, tmp_path):
    base = tiny_models["qwen2"]
    adapter = write_adapter(tmp_path / "a", base, seed=4)
    prompt = PROMPT * 3  # repeats give n-gram proposals
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, lora="a")
    with LLM(lora_config(base), progress=False, lora_modules={"a": adapter}) as plain:
        expected = plain.generate([prompt], [params])[0].outputs[0].token_ids
    cfg = lora_config(base)
    cfg["speculative"] = {"method": "ngram", "num_tokens": 3}
    with LLM(cfg, progress=False, lora_modules={"a": adapter}) as llm:
        assert llm.generate([prompt], [params])[0].outputs[0].token_ids == expected
        assert llm.engine.spec.stats.proposed > 0
        choice = SamplingParams(max_tokens=8, temperature=0, lora="a", structured_outputs={"choice": ["yes", "no"]})
        assert llm.generate([PROMPT], [choice])[0].outputs[0].text in ("yes", "no")


def _break(adapter: Path, how: str) -> str:
    """Damage a written adapter; returns what the error must name."""
    file = adapter / "adapter_model.safetensors"
    tensors = load_file(str(file))
    config = json.loads((adapter / "adapter_config.json").read_text())
    a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    if how == "rank above max_rank":
        return "above lora.max_rank"
    if how == "wrong shape":
        tensors[a] = tensors[a][:, :-1].contiguous()
        expect = a
    elif how == "missing B":
        del tensors[a.replace("lora_A", "lora_B")]
        expect = a.replace("lora_A", "lora_B")
    elif how == "lm_head":
        tensors["base_model.model.lm_head.lora_A.weight"] = torch.zeros(4, 64)
        expect = "lm_head"
    elif how == "unknown module":
        tensors[a.replace("q_proj", "rotary")] = tensors[a].clone()
        expect = "rotary"
    elif how == "embed target":
        config["target_modules"] = ["q_proj", "embed_tokens"]
        expect = "embed_tokens"
    elif how == "dora":
        config["use_dora"] = True
        expect = "DoRA"
    elif how == "rank disagrees with config":
        config["r"] = 5
        expect = "the config says 5"
    elif how == "not safetensors":
        file.write_bytes(b"not a safetensors file")
        return "not a readable safetensors file"
    elif how == "no config":
        (adapter / "adapter_config.json").unlink()
        return "adapter_config.json"
    elif how == "bad pattern":
        config["rank_pattern"] = {"q_proj[": 2}
        expect = "pattern key 'q_proj[' is not a regular expression"
    elif how == "boolean rank":
        config["r"] = True
        expect = "r must be an integer >= 1"
    save_file(tensors, str(file))
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return expect


@pytest.mark.parametrize("how", ["rank above max_rank", "wrong shape", "missing B", "lm_head", "unknown module",
                                 "embed target", "dora", "rank disagrees with config", "not safetensors",
                                 "no config", "bad pattern", "boolean rank"])
def test_malformed_adapters_are_refused_in_one_line(tiny_models, tmp_path, how):
    base = tiny_models["qwen2"]
    adapter = write_adapter(tmp_path / "a", base, r=4 if how != "rank above max_rank" else 8)
    expect = _break(adapter, how)
    with LLM(lora_config(base, max_rank=4), progress=False) as llm:
        with pytest.raises(UserError) as err:
            llm.add_lora("bad", adapter)
        assert llm.list_loras() == []
        assert llm.generate([PROMPT], [SamplingParams(max_tokens=2)])[0].outputs[0].token_ids  # still serves
    message = str(err.value)
    assert "\n" not in message and expect in message and str(adapter) in message


def test_a_path_the_os_refuses_is_a_one_line_error(tiny_models, tmp_path):
    with LLM(lora_config(tiny_models["qwen2"]), progress=False) as llm:
        with pytest.raises(UserError, match="File name too long") as err:
            llm.add_lora("long", tmp_path / ("x" * 300))
    assert "\n" not in str(err.value)


def test_refusals(tiny_models, tmp_path):
    base = tiny_models["qwen2"]
    adapter = write_adapter(tmp_path / "a", base)
    with LLM(tiny_engine_config(base), progress=False) as llm:
        with pytest.raises(UserError, match="LoRA adapters are off: set lora.enabled: true"):
            llm.add_lora("a", adapter)
        with pytest.raises(UserError, match="lora"):
            llm.generate([PROMPT], [SamplingParams(lora="a")])
    with LLM(lora_config(base), progress=False, lora_modules={"a": adapter}) as llm:
        with pytest.raises(UserError, match="already loaded"):
            llm.add_lora("a", adapter)
        with pytest.raises(UserError, match=r"no LoRA adapter named 'z' is loaded \(loaded: a\)"):
            llm.generate([PROMPT], [SamplingParams(lora="z")])
    with pytest.raises(ConfigError, match="lora.enabled does not run with speculative.method: draft"):
        LLM(lora_config(base, max_loras=1) | {"speculative": {"method": "draft", "draft_model": str(base)}})
    with pytest.raises(ConfigError, match=r"lora.max_cpu_loras \(1\) must be at least lora.max_loras \(2\)"):
        LLM(lora_config(base, max_loras=2, max_cpu_loras=1))


def test_a_request_waiting_for_a_slot_is_not_overtaken_by_adapter_requests():
    """max_loras=1, adapter 1 running: a request for adapter 2 waits, and a later request for adapter
    1 waits behind it (else adapter 1 could hold the slot forever); a base request still goes."""
    from llm_infer.config import SchedulerConfig
    from llm_infer.runtime.block_manager import BlockManager
    from llm_infer.runtime.request import Request
    from llm_infer.runtime.scheduler import Scheduler

    scheduler = Scheduler(SchedulerConfig(max_num_seqs=8), BlockManager(64, 4), max_loras=1)

    def request(i: int, lora_id: int) -> Request:
        req = Request(i, str(i), [1, 2, 3], SamplingParams(), seed=0)
        req.lora_id = lora_id
        scheduler.add(req)
        return req
    first = request(0, 1)
    assert [s.seq_id for s, _ in scheduler.schedule()] == [0]
    request(1, 2), request(2, 1), request(3, 0)
    assert {s.seq_id for s, _ in scheduler.schedule()} == {0, 3}
    assert [s.seq_id for s in scheduler.waiting] == [1, 2]
    scheduler.finish(first)
    admitted = [s.seq_id for s, _ in scheduler.schedule() if s.seq_id in (1, 2)]
    assert admitted == [1]
