"""Bad input is a clear one-line error that names the problem; nothing is lost."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llm_infer import LLM, SamplingParams
from llm_infer.config import EngineConfig, config_table, load_config
from llm_infer.errors import ConfigError, UserError
from tests.conftest import tiny_engine_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_configs_local_yaml():
    assert load_config(ROOT / "configs" / "local.yaml") == EngineConfig()


def test_dict_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dtype: float32\nscheduler:\n  max_num_seqs: 4\n")
    cfg = load_config(path, ["scheduler.max_num_seqs=8", "cache.memory_fraction=0.5", "parallel.pipeline_layers=[2, 2]",
                             "parallel.pipeline=2"])
    assert (cfg.dtype, cfg.scheduler.max_num_seqs, cfg.cache.memory_fraction) == ("float32", 8, 0.5)
    assert cfg.parallel.pipeline_layers == [2, 2]
    assert load_config({"cache": {"block_size": 32}}).cache.block_size == 32
    assert load_config(dataclasses.replace(EngineConfig(), seed=7)).seed == 7


@pytest.mark.parametrize("overrides,message", [
    (["cache.blok_size=3"], "unknown config key 'cache.blok_size' (did you mean 'cache.block_size'?)"),
    (["dtyp=float32"], "did you mean 'dtype'?"),
    (["scheduler.max_num_seqs=abc"], "scheduler.max_num_seqs must be int, got 'abc'"),
    (["scheduler.max_num_seqs=0"], "scheduler.max_num_seqs must be at least 1"),
    (["dtype=float64"], "dtype must be one of auto, float32, bfloat16, float16"),
    (["cache.memory_fraction=1.5"], "cache.memory_fraction must be in (0, 1]"),
    (["cache=3"], "cache must be a mapping"),
    (["noequals"], "not of the form dotted.key=value"),
    (["parallel.pipeline_layers=[3]", "parallel.pipeline=2"], "has 1 entries for 2 pipeline stages"),
    (["scheduler.max_num_seqs=true"], "scheduler.max_num_seqs must be int, got True"),  # a bool is not an int
    (["cache.memory_fraction=true"], "cache.memory_fraction must be float, got True"),
    (["cache.memory_fraction='0.5'"], "cache.memory_fraction must be float, got '0.5'"),  # nor a string a number
    (["parallel.pipeline_layers=7"], "parallel.pipeline_layers must be a list, got 7"),
    (["parallel.pipeline_layers=[2, 0]", "parallel.pipeline=2"],
     "parallel.pipeline_layers[1] must be at least 1, got 0"),
    (["parallel.timeout_s=0"], "parallel.timeout_s must be greater than 0, got 0"),
    (["speculative.num_tokens=16"], "speculative.num_tokens must be in [1, 15], got 16"),
    (["speculative.method=ngrams"], "speculative.method must be one of ngram, draft, layers; got 'ngrams'"),
    (["speculative.ngram_min=4"], "speculative.ngram_min (4) must not exceed ngram_max (3)"),
    (["speculative.method=draft"], "speculative.method: draft needs speculative.draft_model"),
    (["speculative.method=layers", "parallel.tensor=2"], "speculative.method: layers runs the target's own layers"),
    (["model=''"], "model must not be empty"),
    (["tokenizer=3"], "tokenizer must be str, got 3"),
])
def test_config_mistakes_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_an_int_is_accepted_for_a_float_and_keys_must_be_strings():
    cfg = load_config(None, ["cache.memory_fraction=1", "parallel.timeout_s=30"])
    assert cfg.cache.memory_fraction == 1.0 and isinstance(cfg.parallel.timeout_s, float)
    with pytest.raises(ConfigError, match="^unknown config key 'cache.1'$"):
        load_config({"cache": {1: 2}})


def test_configs_travel_as_dataclasses():
    """Workers get configs pickled (processes, Ray actors) or as dicts; executors `replace` fields."""
    cfg = load_config(None, ["speculative.method=ngram", "parallel.pipeline_layers=[3]"])
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert load_config(dataclasses.asdict(cfg)) == cfg
    assert dataclasses.replace(cfg, threads=2).threads == 2 and cfg.world_size == 1


def test_readme_config_table_is_rendered_from_the_schema():
    """The README's table lists exactly the schema's keys, defaults and meanings (regenerate: config_table())."""
    lines = (ROOT / "README.md").read_text().split("\n")
    start = next(i for i in range(lines.index("## Configuration"), len(lines)) if lines[i].startswith("|"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    assert "\n".join(lines[start:end]) == config_table()


def test_yaml_syntax_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_missing_model_folder():
    with pytest.raises(UserError, match="model folder not found: /no/such/model"):
        LLM({"model": "/no/such/model"}, progress=False)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_unknown_architecture(tiny_models, tmp_path):
    path = _copy(tiny_models["qwen2"], tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="unsupported architecture.*GPT2LMHeadModel"):
        LLM(tiny_engine_config(path), progress=False)


def test_missing_and_misshapen_tensors_are_named(tiny_models, tmp_path):
    path = _copy(tiny_models["qwen2"], tmp_path / "m")
    weights = load_file(path / "model.safetensors")
    name = "model.layers.1.self_attn.k_proj.weight"
    missing = {k: v for k, v in weights.items() if k != name}
    save_file(missing, path / "model.safetensors")
    with pytest.raises(UserError, match=f"missing tensor {name}"):
        LLM(tiny_engine_config(path), progress=False)
    bad = dict(weights)
    bad["model.layers.0.mlp.down_proj.weight"] = torch.zeros(64, 100)
    save_file(bad, path / "model.safetensors")
    with pytest.raises(UserError, match="tensor model.layers.0.mlp.down_proj.weight does not fit"):
        LLM(tiny_engine_config(path), progress=False)


@pytest.fixture(scope="module")
def llm(tiny_models):
    engine = LLM(tiny_engine_config(tiny_models["qwen2"], scheduler={"max_model_len": 64}), progress=False)
    yield engine
    engine.close()


def test_prompt_errors_leave_the_engine_usable(llm):
    with pytest.raises(UserError, match="the prompt has 80 tokens; max_model_len is 64"):
        llm.generate([[65] * 80], SamplingParams(max_tokens=4))
    with pytest.raises(UserError, match="the prompt is empty"):
        llm.generate([[]], SamplingParams(max_tokens=4))
    with pytest.raises(UserError, match="token id 5000 is outside the vocabulary"):
        llm.generate([[1, 5000]], SamplingParams(max_tokens=4))
    with pytest.raises(UserError, match="messages must be a non-empty list"):
        llm.chat([])
    with pytest.raises(UserError, match="unpaired surrogate"):
        llm.generate("lone \ud800 surrogate", SamplingParams(max_tokens=4))
    out = llm.generate("still works", SamplingParams(max_tokens=4, temperature=0))[0]
    assert len(out.token_ids) == 4 and not llm.engine.has_unfinished()


def test_generation_stops_at_max_model_len(llm):
    out = llm.generate([[65] * 60], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 4


def test_kv_cache_too_small_for_max_model_len(tiny_models):
    with pytest.raises(UserError, match="the KV cache holds 16 tokens, less than max_model_len=512"):
        LLM(tiny_engine_config(tiny_models["qwen2"], cache={"num_blocks": 4}), progress=False)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    load_config(path)
