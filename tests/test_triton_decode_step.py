"""The GPU kernel set wired into a real model, proven on the CPU (and natively on a GPU).

`cuda_set.triton_kernels` is the set a GPU gets: inside CUDA graphs (`graph_capture()`) the Triton
kernels (one-row GEMV with the SwiGLU gate fused into the down projection, RMSNorm, RoPE fused
with the KV-cache write, GQA decode attention, AWQ), in eager steps the CUDA extension and torch.
Here it runs under Triton's interpreter on CPU tensors, with a stand-in for the CUDA extension
(attention, KV write, RMSNorm) written in torch. Oracle: the same checkpoint through the torch
reference set, both measured against an fp32 truth; and the host side of the CUDA-graph runner
(`fill_decode_rows`) against the eager input builder."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from llm_infer.kernels import cuda_set, dispatch, torch_ref
from llm_infer.runtime.cuda_graphs import FIELDS, fill_decode_rows, split_buffer
from llm_infer.runtime.forward_paths import ReferenceForward
from llm_infer.runtime.kv_cache import KVCache
from llm_infer.runtime.models.build import build_model, resolve_model
from llm_infer.runtime.step_inputs import Placeholders, build_inputs
from tests.checkpoints import make_checkpoint
from tests.test_awq_model import AWQ_DIR

CPU = torch.device("cpu")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BLOCK = 16


def paged_attention(out, q, k_cache, v_cache, tables, q_start, q_lens, seq_lens, scale, *_):
    """The CUDA extension's attention contract, in torch (fp32 math): causal over each sequence's
    first seq_lens[b] cached positions."""
    heads, d = out.shape[1] // k_cache.shape[3], k_cache.shape[3]
    group = heads // k_cache.shape[2]
    for b in range(seq_lens.shape[0]):
        n, length, start = int(q_lens[b]), int(seq_lens[b]), int(q_start[b])
        pos = torch.arange(length, device=k_cache.device)
        slots = tables[b, pos // BLOCK].long() * BLOCK + pos % BLOCK
        keys = k_cache.reshape(-1, *k_cache.shape[2:])[slots].float().repeat_interleave(group, 1)
        values = v_cache.reshape(-1, *v_cache.shape[2:])[slots].float().repeat_interleave(group, 1)
        queries = q[start : start + n].float().view(n, heads, d)
        scores = torch.einsum("qhd,khd->hqk", queries, keys) * scale
        allowed = pos[None, :] <= (length - n + torch.arange(n, device=pos.device))[:, None]
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        out[start : start + n] = torch.einsum("hqk,khd->qhd", probs, values).reshape(n, -1).to(out.dtype)


def write_kv(k, v, k_cache, v_cache, slots):
    keep = slots >= 0
    k_cache.view(-1, *k_cache.shape[2:])[slots[keep].long()] = k[keep].view(-1, *k_cache.shape[2:])
    v_cache.view(-1, *v_cache.shape[2:])[slots[keep].long()] = v[keep].view(-1, *v_cache.shape[2:])


def rms_norm(x, residual, weight, eps):
    if residual is None:
        return torch_ref.rms_norm(x, weight, eps)
    residual += x
    return torch_ref.rms_norm(residual, weight, eps)


STAND_IN_EXT = SimpleNamespace(prefill_attention=paged_attention, decode_attention=paged_attention,
                               write_kv=write_kv, rms_norm=rms_norm, decode_workspace_bytes=lambda *args: 1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # head_dim 64 (the GPU attention's), GQA group 2, q/k/v biases (Qwen2).
    return make_checkpoint(tmp_path_factory.mktemp("triton-step") / "qwen2", "qwen2", dtype=torch.float32, seed=7,
                           hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=384,
                           num_hidden_layers=2)


def greedy_run(path, kernels, dtype: str, prompt: list[int], steps: int) -> tuple[torch.Tensor, list[int]]:
    """Prefill then `steps` greedy decode steps through the reference forward path with `kernels`:
    (float32 logits of every step's last row `[steps + 1, vocab]`, the tokens)."""
    resolved = resolve_model(str(path), dtype, DEVICE, 128)
    model = build_model(resolved, DEVICE, kernels, progress=False)
    if kernels is not dispatch.TORCH and resolved.config.quantization is not None:
        assert model.model.layers[0].mlp.down_proj.awq.q4 is not None  # the Triton kernels' layout
    KVCache.for_model(model, 16, BLOCK, resolved.dtype, DEVICE)
    forward = ReferenceForward(model, kernels, BLOCK, DEVICE)
    tokens, rows = list(prompt), []
    table = list(range(8))
    with torch.inference_mode():
        batch = SimpleNamespace(input_ids=tokens, query_lens=[len(tokens)], seq_lens=[len(tokens)],
                                block_tables=[table])
        for _ in range(steps + 1):
            logits = forward.logits(batch, None, [batch.query_lens[0] - 1])
            rows.append(logits[0].cpu())
            tokens.append(int(logits[0].argmax()))
            batch = SimpleNamespace(input_ids=[tokens[-1]], query_lens=[1], seq_lens=[len(tokens)],
                                    block_tables=[table])
    return torch.stack(rows), tokens[len(prompt):]


# triton 3.6's interpreter multiplies bf16 as raw 16-bit integers in tl.dot: bf16 is proven on GPUs only.
DTYPES = ["float16", "bfloat16"] if torch.cuda.is_available() else ["float16"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["graphs", "eager"])
@pytest.mark.parametrize("model", ["dense", "awq"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_set_in_a_model_is_as_close_to_fp32_as_the_torch_set(checkpoint, model, dtype, mode):
    """Logits of a prefill and 4 decode steps: our set's error against fp32 is at most 1.25x the
    torch set's, both in `dtype` (AWQ: the int4 checkpoint, its weights repacked for the Triton
    kernels; the truth dequantizes them in fp32). `graphs`: as inside CUDA-graph capture (the
    Triton kernels; the prefill too, so that every kernel runs); `eager`: as outside it."""
    path = checkpoint if model == "dense" else AWQ_DIR
    prompt = [257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114]
    ours_kernels = cuda_set.triton_kernels(STAND_IN_EXT, cuda_set.triton_modules(), cuda_attention=True)
    ours_kernels.attention.sm_count = 132  # an H100/H200's (read from the device on a GPU)
    with cuda_set.graph_capture() if mode == "graphs" else contextlib.nullcontext():
        assert (ours_kernels.attention.rotary_write_kv is not None) == (mode == "graphs")
        ours, tokens = greedy_run(path, ours_kernels, dtype, prompt, 4)
    torch_set, _ = greedy_run(path, dispatch.TORCH, dtype, prompt, 4)
    truth, truth_tokens = greedy_run(path, dispatch.TORCH, "float32", prompt, 4)
    assert truth.std() > 0.1
    ours_err = (ours - truth).pow(2).mean().sqrt()
    torch_err = (torch_set - truth).pow(2).mean().sqrt()
    assert ours_err <= 1.25 * torch_err + 1e-3 * truth.abs().max(), (float(ours_err), float(torch_err))
    assert tokens[:2] == truth_tokens[:2]


def test_graph_input_rows_match_the_eager_input_builder():
    """The CUDA-graph runner's host fill (ids, positions, slots, lengths, placeholder sources,
    tables) says what `build_inputs` says for the same decode step; padding rows write nothing."""
    plan = SimpleNamespace(num_seqs=3, input_ids=[11, -1, 13], query_lens=[1, 1, 1], seq_lens=[5, 17, 33],
                           block_tables=[[4], [7, 2], [9, 3, 8]])
    fill = Placeholders([1], [0], torch.tensor([99]))
    top, max_blocks = 8, 4
    buffer = np.full(top * (FIELDS + max_blocks), 77, dtype=np.int32)
    fields, tables = split_buffer(buffer, top, max_blocks)
    fill_decode_rows(fields[:, :4], tables, plan, BLOCK, fill)
    ids, positions, meta = build_inputs(plan, BLOCK, SimpleNamespace(prepare=lambda meta: None), CPU, fill)
    assert fields[0, :3].tolist() == [11, -1, 13] and ids.tolist() == [11, 99, 13]
    assert fields[4, :3].tolist() == [-1, 0, -1]
    assert fields[1, :3].tolist() == positions.tolist()
    assert fields[2, :3].tolist() == meta.slot_mapping.tolist()
    assert fields[3, :3].tolist() == plan.seq_lens
    assert tables[2, :3].tolist() == [9, 3, 8]
    assert fields[:, 3].tolist() == [0, 0, -1, 1, -1]  # the bucket's padding row
    assert fields[:, 4].tolist() == [77] * FIELDS  # past the bucket: untouched
