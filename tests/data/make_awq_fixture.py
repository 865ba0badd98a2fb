"""Build tests/data/awq_tiny_qwen2: a tiny random Qwen2 quantized by AutoAWQ (4-bit, group 128, GEMM).

The source model is `tests.checkpoints.make_checkpoint(..., seed=11)` (hidden 256, 2 layers, byte tokenizer),
so it can be rebuilt bit-for-bit to compare against. AutoAWQ needs its own venv:

    python3 -m venv /work/awq-venv && /work/awq-venv/bin/pip install torch==2.13.0 autoawq
    PYTHONPATH=. /work/awq-venv/bin/python tests/data/make_awq_fixture.py [OUT_DIR]   # from the repo root
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


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = make_checkpoint(Path(tmp) / "src", "qwen2", dtype=torch.float16, seed=11, **SOURCE)
        tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer.json"),
                                                   eos_token="<|im_end|>")
        model = AutoAWQForCausalLM.from_pretrained(str(src))
        model.quantize(tok, quant_config=QUANT_CONFIG, calib_data=CALIB, max_calib_samples=len(CALIB),
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
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/awq_tiny_qwen2"))
