"""A real client: lm-evaluation-harness (`local-completions`) against `llm-infer serve` on the default
model in fp32, on two tasks the project ships (tests/data/lm_eval): a multiple-choice task (one
`loglikelihood` request per choice) and the perplexity of benchmarks/data/heldout.txt (one
`loglikelihood_rolling` request per paragraph). lm-eval batches 16 prompts per completion request,
each with echo, logprobs 1 and max_tokens 1.

Oracles: the same metrics computed following lm-eval's definitions from the offline engine's own
prompt logprobs (equal within rounding) and from transformers on the converted model folder
(within fp32 tolerance). Nothing leaves 127.0.0.1: the hub and datasets are offline, the tasks
read local JSON.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from llm_infer import SamplingParams
from tests.conftest import DEFAULT_FP32, default_model_or_skip

pytestmark = pytest.mark.slow  # the default model twice (server and oracle), transformers, lm-eval

ROOT = Path(__file__).parents[1]
TASKS = ROOT / "tests" / "data" / "lm_eval"
QA, PERPLEXITY = "llm_infer_quick_qa", "llm_infer_heldout_perplexity"
SERVED = "SmolLM2-135M-Instruct"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_perplexity_task_holds_the_heldout_paragraphs():
    paragraphs = [p.strip() for p in (ROOT / "benchmarks/data/heldout.txt").read_text().split("\n\n") if p.strip()]
    assert [d["text"] for d in read_jsonl(TASKS / "heldout_paragraphs.jsonl")] == paragraphs
    qa = read_jsonl(TASKS / "quick_qa.jsonl")
    assert len(qa) >= 30 and all(0 <= d["answer"] < len(d["choices"]) for d in qa)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    default_model_or_skip()
    from llm_infer.runtime.models.default_model import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="module")
def lm_eval_output(model_dir, tmp_path_factory) -> dict:
    """Run lm-eval against a freshly started `llm-infer serve`; its results JSON, its per-request
    log-likelihoods ({task: [[ll per request] per doc]}) and the wall time."""
    tmp = tmp_path_factory.mktemp("lm_eval")
    config = tmp / "default_fp32.yaml"
    config.write_text(yaml.safe_dump(DEFAULT_FP32))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp / "hf"), "HF_DATASETS_CACHE": str(tmp / "datasets"), "OPENAI_API_KEY": "unused"}
    with open(tmp / "serve.err", "w") as err:
        server = subprocess.Popen([sys.executable, "-m", "llm_infer.entrypoints.cli", "serve", "--config", str(config),
                                   "--port", "0"], stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    try:
        line = server.stdout.readline()
        assert line.startswith(f"serving {SERVED} at http://127.0.0.1:"), (line, (tmp / "serve.err").read_text())
        base = line.split(" at ")[1].split()[0]  # http://127.0.0.1:PORT/v1
        start = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "lm_eval", "--model", "local-completions",
             "--model_args", f"model={SERVED},base_url={base}/completions,tokenizer={model_dir},"
                             "tokenizer_backend=huggingface,max_length=1024",
             "--batch_size", "16", "--tasks", f"{QA},{PERPLEXITY}", "--include_path", str(TASKS),
             "--output_path", str(tmp / "out"), "--log_samples"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        wall = time.monotonic() - start
        assert run.returncode == 0, run.stderr[-4000:]
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    (results_file,) = glob.glob(str(tmp / "out" / "*" / "results_*.json"))
    requests = {}
    for task in (QA, PERPLEXITY):
        (samples,) = glob.glob(str(tmp / "out" / "*" / f"samples_{task}_*.jsonl"))
        docs = sorted(read_jsonl(Path(samples)), key=lambda s: s["doc_id"])
        # resps: per request, [[ll, is_greedy]] (loglikelihood) or [ll] (loglikelihood_rolling)
        requests[task] = [[float(r[0][0] if isinstance(r[0], list) else r[0]) for r in s["resps"]] for s in docs]
    print(f"lm-eval wall time: {wall:.1f} s")
    return {"results": json.loads(Path(results_file).read_text())["results"], "requests": requests, "wall_s": wall}


def scored_sequences(tokenize, bos_id: int) -> dict[str, list[tuple[list[int], int]]]:
    """Each request as lm-eval builds it: (token ids, index of the first scored token).
    Multiple choice: context + " " + choice, the choice's tokens scored (the context encoded
    alone gives the split). Perplexity: the prefix token then the paragraph, all of it scored
    (one window: every paragraph is shorter than the context)."""
    qa = []
    for doc in read_jsonl(TASKS / "quick_qa.jsonl"):
        context = f"Question: {doc['question']}\nAnswer:"
        qa += [(tokenize(f"{context} {choice}"), len(tokenize(context))) for choice in doc["choices"]]
    rolling = [([bos_id, *tokenize(d["text"])], 1) for d in read_jsonl(TASKS / "heldout_paragraphs.jsonl")]
    return {QA: qa, PERPLEXITY: rolling}


def metrics(lls: dict[str, list[float]]) -> dict[str, float]:
    """lm-eval's definitions: acc (argmax of the choices' log-likelihoods), acc_norm (divided by the
    choice's characters), and perplexities weighted by words or UTF-8 bytes of each document."""
    qa, docs = read_jsonl(TASKS / "quick_qa.jsonl"), read_jsonl(TASKS / "heldout_paragraphs.jsonl")
    acc = acc_norm = 0.0
    it = iter(lls[QA])
    for doc in qa:
        scores = [next(it) for _ in doc["choices"]]
        acc += max(range(len(scores)), key=lambda i: scores[i]) == doc["answer"]
        acc_norm += max(range(len(scores)), key=lambda i: scores[i] / len(doc["choices"][i])) == doc["answer"]
    total = sum(lls[PERPLEXITY])
    words = sum(len(re.split(r"\s+", d["text"])) for d in docs)
    nbytes = sum(len(d["text"].encode()) for d in docs)
    return {"acc": acc / len(qa), "acc_norm": acc_norm / len(qa), "word_perplexity": math.exp(-total / words),
            "byte_perplexity": math.exp(-total / nbytes), "bits_per_byte": -total / nbytes / math.log(2)}


@pytest.fixture(scope="module")
def hf_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))  # what lm-eval loads (tokenizer_backend=huggingface)


@pytest.fixture(scope="module")
def sequences(hf_tokenizer, default_llm) -> dict[str, list[tuple[list[int], int]]]:
    seqs = scored_sequences(lambda s: hf_tokenizer(s, add_special_tokens=False).input_ids, hf_tokenizer.bos_token_id)
    ours = scored_sequences(default_llm.tokenizer.encode, hf_tokenizer.bos_token_id)
    assert ours == seqs  # the server's tokenizer and lm-eval's agree on every request
    return seqs


@pytest.fixture(scope="module")
def engine_lls(default_llm, sequences) -> dict[str, list[float]]:
    """The offline engine's own prompt logprobs, summed over each request's scored tokens."""
    out = {}
    for task, seqs in sequences.items():
        outputs = default_llm.generate([ids for ids, _ in seqs], SamplingParams(max_tokens=0, prompt_logprobs=0))
        out[task] = [sum(lp.logprob for lp in o.prompt_logprobs[start:]) for o, (_, start) in zip(outputs, seqs)]
    return out


@pytest.fixture(scope="module")
def transformers_lls(model_dir, sequences) -> dict[str, list[float]]:
    """The same sums from transformers (fp32): each task's requests in one right-padded forward
    (padding after a sequence changes nothing before it), the output layer on the scored rows only."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    out: dict[str, list[float]] = {}
    with torch.no_grad():
        for task, seqs in sequences.items():
            width = max(len(ids) for ids, _ in seqs)
            padded = torch.tensor([ids + [0] * (width - len(ids)) for ids, _ in seqs])
            hidden = decoder(input_ids=padded).last_hidden_state
            rows = torch.cat([hidden[r, start - 1:len(ids) - 1] for r, (ids, start) in enumerate(seqs)])
            targets = torch.tensor([t for ids, start in seqs for t in ids[start:]])
            scores = torch.cat([torch.log_softmax(head(chunk).double(), -1).gather(1, want[:, None])[:, 0]
                                for chunk, want in zip(rows.split(512), targets.split(512))])
            out[task] = [float(x.sum()) for x in scores.split([len(ids) - start for ids, start in seqs])]
    return out


def flat(requests: list[list[float]]) -> list[float]:
    return [ll for doc in requests for ll in doc]


def test_lm_eval_equals_the_offline_engine_within_rounding(lm_eval_output, engine_lls):
    served = {task: flat(reqs) for task, reqs in lm_eval_output["requests"].items()}
    for task in (QA, PERPLEXITY):
        assert len(served[task]) == len(engine_lls[task])
        worst = max(abs(a - b) for a, b in zip(served[task], engine_lls[task]))
        print(task, "worst |lm-eval - engine| per request", worst)
        assert worst < 1e-4, (task, worst)
    want = metrics(engine_lls)
    got = lm_eval_output["results"]
    print({k: (got[QA if k.startswith("acc") else PERPLEXITY][f"{k},none"], v) for k, v in want.items()})
    for name, value in want.items():
        reported = got[QA if name.startswith("acc") else PERPLEXITY][f"{name},none"]
        assert reported == pytest.approx(value, rel=1e-6, abs=1e-9), name


def test_lm_eval_equals_transformers_within_fp32_tolerance(lm_eval_output, transformers_lls, sequences):
    served = {task: flat(reqs) for task, reqs in lm_eval_output["requests"].items()}
    for task in (QA, PERPLEXITY):
        # fp32 log-probabilities of two implementations: ~1e-5 apart per scored token (2.4e-5 seen)
        per_token = [abs(a - b) / (len(ids) - start)
                     for a, b, (ids, start) in zip(served[task], transformers_lls[task], sequences[task], strict=True)]
        print(task, "worst |lm-eval - transformers| per scored token", max(per_token))
        assert max(per_token) < 1e-4, task
    want = metrics(transformers_lls)
    got = lm_eval_output["results"]
    print({k: (got[QA if k.startswith("acc") else PERPLEXITY][f"{k},none"], v) for k, v in want.items()})
    for name, value in want.items():
        reported = got[QA if name.startswith("acc") else PERPLEXITY][f"{name},none"]
        assert reported == pytest.approx(value, rel=1e-4), name
