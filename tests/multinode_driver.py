"""Driver for the simulated multi-node test: TP=2 across the two Ray nodes given by argv."""

import json
import sys

from llm_infer import LLM, SamplingParams
from tests import introspect

model, address, prompt = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cfg = {"model": model, "dtype": "float32", "device": "cpu", "cache": {"block_size": 4, "num_blocks": 256},
       "threads": 1, "parallel": {"tensor": 2, "launcher": "ray", "ray_address": address, "timeout_s": 60}}
with LLM(cfg, progress=False) as llm:
    ips = sorted(info["ip"] for info in introspect.channel_hello(llm).values())
    tokens = llm.generate([prompt], SamplingParams(max_tokens=32, temperature=0, ignore_eos=True))[0].token_ids
print("RESULT " + json.dumps({"ips": ips, "tokens": tokens}))
