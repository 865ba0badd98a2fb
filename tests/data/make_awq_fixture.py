"""Build tests/data/awq_tiny_qwen2: a tiny random Qwen2 quantized by AutoAWQ (4-bit, group 128, GEMM),
or with `--qwen3-moe` tests/data/awq_tiny_qwen3_moe: a tiny random Qwen3-MoE (group 64, the router left dense).

The source model is `tests.checkpoints.make_checkpoint(..., seed=11)` (byte tokenizer), so it can be rebuilt
bit-for-bit to compare against. AutoAWQ needs its own venv:

    python3 -m venv /work/awq-venv && /work/awq-venv/bin/pip install torch==2.13.0 autoawq
    PYTHONPATH=. /work/awq-venv/bin/python tests/data/make_awq_fixture.py [OUT_DIR]   # from the repo root

AutoAWQ 0.2.9 has no Qwen2-MoE support, and its Qwen3-MoE support iterates `mlp.experts` as a list of
per-expert modules, which transformers 5 replaced by fused 3-D expert tensors: the MoE fixture needs the
last transformers AutoAWQ was tested with, in the same venv:

    /work/awq-venv/bin/pip install transformers==4.51.3 "datasets<4"
    PYTHONPATH=. /work/awq-venv/bin/python tests/data/make_awq_fixture.py --qwen3-moe tests/data/awq_tiny_qwen3_moe
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from awq import AutoAWQForCausalLM
from safetensors import safe_open

from tests.checkpoints import make_checkpoint

SOURCE = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=320, max_position_embeddings=512, initializer_range=0.05)
QUANT_CONFIG = {"zero_point": True, "q_group_size": 128, "w_bit": 4, "version": "GEMM"}
# 8 experts, top-2; AutoAWQ's clip search needs output sizes that are multiples of 64, which the
# router (8 outputs) is not: it stays dense, as in published Qwen3-MoE AWQ checkpoints.
MOE_SOURCE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, vocab_size=320, max_position_embeddings=512,
                  initializer_range=0.08, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64,
                  norm_topk_prob=True)
MOE_QUANT_CONFIG = {"zero_point": True, "q_group_size": 64, "w_bit": 4, "version": "GEMM",
                    "modules_to_not_convert": ["mlp.gate"]}

SUBJECTS = ["The old fisherman", "A small brown dog", "My neighbour", "The night train", "Our teacher",
            "A quiet librarian", "The river", "Every morning the baker"]
ENDINGS = ["walked slowly along the harbour before the sun came up.",
           "forgot the keys on the kitchen table again.",
           "watched the rain fall on the empty market square.",
           "sang an old song about mountains and the sea.",
           "counted the coins twice and still found one missing.",
           "painted the fence a bright shade of green last summer.",
           "read the letter aloud while everyone listened carefully.",
           "waited at the station until the last lights went out."]
# 64 short, varied English sentences (each far below max_calib_seq_len bytes).
CALIB = [f"{s} {e}" for s in SUBJECTS for e in ENDINGS]


def main(out: Path, moe: bool = False) -> None:
    arch, source, quant_config = ("qwen3_moe", MOE_SOURCE, MOE_QUANT_CONFIG) if moe else ("qwen2", SOURCE, QUANT_CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        src = make_checkpoint(Path(tmp) / "src", arch, dtype=torch.float16, seed=11, **source)
        tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer.json"),
                                                   eos_token="<|im_end|>")
        model = AutoAWQForCausalLM.from_pretrained(str(src))
        model.quantize(tok, quant_config=quant_config, calib_data=CALIB, max_calib_samples=len(CALIB),
                       max_calib_seq_len=128, n_parallel_calib_samples=16)
        if out.exists():
            shutil.rmtree(out)
        model.save_quantized(str(out))
        (out / "model.safetensors").chmod(0o644)  # save_quantized writes it 0600
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(src / name, out / name)

    print(json.dumps(json.loads((out / "config.json").read_text())["quantization_config"], indent=2))
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        for key in sorted(f.keys()):
            t = f.get_tensor(key)
            print(f"{key:50s} {str(t.dtype):15s} {list(t.shape)}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--qwen3-moe"]
    moe = "--qwen3-moe" in sys.argv[1:]
    main(Path(args[0] if args else "tests/data/awq_tiny_qwen3_moe" if moe else "tests/data/awq_tiny_qwen2"), moe)
