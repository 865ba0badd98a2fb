"""Checkpoint variants: sharded safetensors, half-precision dtypes, tokenizers without a template."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from llm_infer import LLM
from llm_infer.runtime.tokenizer import Tokenizer
from tests.checkpoints import make_checkpoint, reference_model
from tests.conftest import tiny_engine_config

PROMPT = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101]


def test_sharded_checkpoint_with_index(tiny_models, tmp_path):
    src = tiny_models["qwen3"]
    hf = reference_model(src)
    out = tmp_path / "sharded"
    hf.save_pretrained(out, max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, out / name)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3, "the checkpoint should really be sharded"
    with LLM(tiny_engine_config(out), progress=False) as llm:
        with torch.no_grad():
            ref = hf(torch.tensor([PROMPT])).logits[0]
        torch.testing.assert_close(llm.logits(PROMPT), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("kernels", ["torch", "auto"])
def test_half_precision_matches_transformers_in_the_same_dtype(tmp_path_factory, dtype, kernels):
    torch_dtype = getattr(torch, dtype)
    path = tmp_path_factory.getbasetemp() / f"half-{dtype}"
    if not path.exists():
        make_checkpoint(path, "qwen2", dtype=torch_dtype, seed=5)
    hf = reference_model(path, torch_dtype)
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT])).logits[0].float()
    with LLM(tiny_engine_config(path, dtype=dtype, kernels=kernels), progress=False) as llm:
        ours = llm.logits(PROMPT)
    # Rounding differs between implementations; the error must stay at the dtype's precision.
    scale = ref.abs().max()
    assert (ours - ref).abs().max() < 0.03 * scale
    assert (ours.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


def test_chatml_is_the_fallback_template(tiny_models, tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(tiny_models["qwen2"] / "tokenizer.json", folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    tok = Tokenizer(folder)
    assert not tok.has_chat_template
    text = tok.render_chat([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
