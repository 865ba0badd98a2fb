"""`llm-infer quantize`: make an AWQ int4 (AutoAWQ-compatible), GPTQ int4/int8 (AutoGPTQ-compatible)
or block-wise FP8 (Qwen3-*-FP8 layout) checkpoint from a dense one.

Calibration text comes from `--calib FILE`, or is written by the model itself:
it answers a fixed, varied list of prompts (sampled, seeded), which the project
can ship without shipping anyone's corpus.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from llm_infer.errors import UserError

CALIBRATION_PROMPTS = [
    "Explain how a refrigerator keeps food cold.", "Write a short story about a lighthouse keeper.",
    "What are the main causes of inflation?", "Describe the water cycle for a ten-year-old.",
    "Give three tips for writing clear emails.", "Summarize the plot of a heist movie you invent.",
    "How does a binary search work? Show Python code.", "Compare trains and planes for a 500 km trip.",
    "Write a polite complaint about a late delivery.", "What is photosynthesis and why does it matter?",
    "List the steps to bake bread at home.", "Describe a busy market in the morning.",
    "Explain recursion with an example in JavaScript.", "What should I pack for a week of hiking?",
    "Write a haiku about autumn, then explain it.", "How do vaccines train the immune system?",
    "Draft a project update for a software team.", "Why is the sky blue?",
    "Explain what a hash table is and when to use one.", "Describe the rules of chess briefly.",
    "Give advice to someone starting their first job.", "Write a dialogue between a cat and a dog.",
    "What are prime numbers? List the first ten.", "Explain the difference between weather and climate.",
    "How do I reverse a linked list in C?", "Describe the history of the printing press.",
    "Write a product description for a reusable water bottle.", "What is the Pythagorean theorem?",
    "Plan a three-day trip to a coastal town.", "Explain how compound interest grows savings.",
    "Write SQL to find the top five customers by revenue.", "Describe how bees make honey.",
]


def calibration_text(args: argparse.Namespace, model: str) -> str:
    if args.method in ("rtn", "fp8") and not args.calib:  # round-to-nearest looks at no activations
        return "\n".join(CALIBRATION_PROMPTS)
    if args.calib:
        path = Path(args.calib)
        if not path.is_file():
            raise UserError(f"calibration file not found: {path}")
        return path.read_text(errors="replace")
    from llm_infer.entrypoints.llm import LLM
    from llm_infer.runtime.sampling_params import SamplingParams

    print("writing calibration text with the model itself (pass --calib FILE to use your own)...", file=sys.stderr)
    with LLM({"model": model, "dtype": "bfloat16"}, progress=False) as llm:
        params = SamplingParams(max_tokens=256, temperature=0.8, top_p=0.95, seed=0)
        outs = llm.chat([[{"role": "user", "content": p}] for p in CALIBRATION_PROMPTS], params)
    return "\n\n".join(f"{p}\n{o.text}" for p, o in zip(CALIBRATION_PROMPTS, outs))


def calibration_tokens(text: str, tokenizer, samples: int, seq_len: int) -> torch.Tensor:
    ids = tokenizer.encode(text, add_special_tokens=False)
    available = len(ids) // seq_len
    if available == 0:
        raise UserError(f"the calibration text has {len(ids)} tokens, fewer than one sample of {seq_len}")
    if available < samples:
        print(f"calibration text holds {available} samples of {seq_len} tokens (asked for {samples})", file=sys.stderr)
    n = min(samples, available)
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def cmd_quantize(args: argparse.Namespace) -> int:
    from llm_infer.runtime.models.resolve import resolve_model_dir
    from llm_infer.runtime.quant.awq_quantizer import (QuantizeOptions, check_group_size, fitting_group_sizes,
                                                       quantize_model)
    from llm_infer.runtime.models.model_config import ModelConfig
    from llm_infer.runtime.tokenizer import Tokenizer

    if args.samples < 1 or args.seq_len < 16:
        raise UserError("--samples must be >= 1 and --seq-len >= 16")
    model_dir = resolve_model_dir(args.model)
    out = Path(args.out)
    if out.exists():
        raise UserError(f"output folder {out} already exists; choose a new one")
    config = ModelConfig.from_dir(model_dir)
    if config.quantization is not None:  # before the calibration text, which the model may have to write
        raise UserError(f"{model_dir} is already quantized ({config.quantization.get('quant_method')})")
    if args.bits != 4 and args.method != "gptq":
        raise UserError(f"--bits {args.bits} is for --method gptq (AWQ is int4, FP8 8-bit floats)")
    if args.group_size is None:  # AutoAWQ's 128 where it fits, else the largest size that does
        fits = fitting_group_sizes(config)
        args.group_size = 128 if 128 in fits else max((g for g in fits if g < 128), default=128)
    if args.method != "fp8":
        check_group_size(config, args.group_size)
    text = calibration_text(args, str(model_dir))
    seq_len = args.seq_len if args.method in ("awq", "gptq") else 16
    tokens = calibration_tokens(text, Tokenizer(model_dir), args.samples, seq_len)
    options = QuantizeOptions(group_size=args.group_size, method=args.method, clip=not args.no_clip, bits=args.bits)
    quantize_model(model_dir, out, tokens, options)
    what = ("FP8 e4m3 (128 x 128 blocks)" if args.method == "fp8"
            else f"{args.method.upper()} int{args.bits} (group {args.group_size})")
    print(f"wrote {what} checkpoint to {out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a model to AWQ int4, GPTQ int4/int8 or block-wise FP8")
    p.add_argument("--model", required=True, help="Hugging Face folder, or 'default'")
    p.add_argument("--out", required=True, help="new folder for the quantized checkpoint")
    p.add_argument("--calib", help="calibration text file (default: text the model writes itself)")
    p.add_argument("--group-size", type=int, default=None,
                   help="input channels per scale/zero (default: 128 where it divides the model's widths, "
                        "else the largest of 64, 32 that does; SmolLM2: 64)")
    p.add_argument("--samples", type=int, default=64, help="calibration samples")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per calibration sample")
    p.add_argument("--method", choices=["awq", "rtn", "gptq", "fp8"], default="awq",
                   help="awq (scale and clipping search) or rtn (plain round-to-nearest, the baseline), both "
                        "written as AWQ int4; gptq (the GPTQ algorithm, written as AutoGPTQ); fp8 (block-wise "
                        "e4m3, 128 x 128 blocks, round-to-nearest)")
    p.add_argument("--bits", type=int, choices=[4, 8], default=4, help="GPTQ's bits (--method gptq)")
    p.add_argument("--no-clip", action="store_true", help="skip the clipping search")
    p.set_defaults(func=cmd_quantize)
