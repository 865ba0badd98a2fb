"""Speculative decoding: every method is lossless against plain decoding (greedy: identical
tokens; sampled: the target's distribution, by chi-square), and its KV bookkeeping is exact."""

from __future__ import annotations

import pytest
import torch

from llm_infer import LLM, SamplingParams
from llm_infer.config import SpeculativeConfig
from llm_infer.errors import ConfigError
from llm_infer.runtime.block_manager import BlockManager
from llm_infer.runtime.sampling_params import SamplingParams as Params
from llm_infer.runtime.request import Request
from llm_infer.runtime.speculative.ngram import NgramIndex
from llm_infer.runtime.speculative.planner import SpecPlanner
from llm_infer.runtime.speculative.rejection import verify_greedy, verify_sampled
from tests import introspect
from tests.checkpoints import make_checkpoint
from tests.conftest import DEFAULT_FP32, tiny_engine_config

TINY_PROMPTS = [[257] + list(b"The cat sat on the mat. The cat sat on the"), [257] + list(b"abc abc abc abc ab"),
                [65, 66, 67], list(b"0123456789" * 3)]
GREEDY = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)


# ---- pieces -------------------------------------------------------------------------------

def test_ngram_index_proposes_what_followed_the_longest_earlier_match():
    index = NgramIndex(max_n=3)
    index.extend([1, 2, 3, 9, 2, 3, 7, 1, 2, 3])
    assert index.propose(2) == [9, 2]  # [1 2 3] last seen at the start, followed by 9 2
    index.extend([5])
    assert index.propose(4) == []  # 5 never appeared before
    index.extend([2, 3])
    assert index.propose(3) == [5, 2, 3]  # [5 2 3] unseen; [2 3] most recently followed by 5


def test_verify_greedy_accepts_the_matching_prefix_then_the_target_token():
    logits = torch.full((4, 10), -1.0)
    for row, best in enumerate([4, 5, 6, 7]):
        logits[row, best] = 1.0
    assert verify_greedy(logits, [4, 5, 6]) == [4, 5, 6, 7]  # all accepted + bonus
    assert verify_greedy(logits, [4, 9, 6]) == [4, 5]  # first mismatch replaced by the target's choice
    assert verify_greedy(logits[:1], []) == [4]


def test_verify_sampled_never_keeps_a_token_the_target_rules_out():
    p = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    for seed in range(50):
        out = verify_sampled(p, [2], torch.tensor([[0.0, 0.0, 1.0]]), seed, 0)
        assert out == [1]  # p(2) = 0: always rejected, and the residual is a point mass on 1
        out = verify_sampled(p, [1], torch.tensor([[0.0, 1.0, 0.0]]), seed, 0)
        assert out[0] == 1 and out[1] in (0, 1)  # p == q: always accepted, bonus from p[1]


def test_planner_adaptive_k_shrinks_with_acceptance_and_respects_max_tokens():
    planner = SpecPlanner(SpeculativeConfig(method="ngram", num_tokens=6, adaptive=True), max_model_len=100)
    seq = Request(0, "r", [1, 2, 3], Params(max_tokens=50), seed=0)
    seq.spec = planner.new_state(seq)
    seq.output_token_ids.append(4)
    assert planner.num_tokens(seq) == 4  # starting rate 0.7: 0.7^4 >= 0.2 > 0.7^5
    for _ in range(10):
        planner.after_step(seq, proposed=4, appended=1, drafted=None)  # nothing accepted
    assert planner.num_tokens(seq) == 1
    for _ in range(20):
        planner.after_step(seq, proposed=1, appended=2, drafted=None)
    assert planner.num_tokens(seq) == 6
    seq.params.max_tokens = 3  # 1 emitted, 2 left: the pending token's step emits one, one proposal
    assert planner.num_tokens(seq) == 1


def test_block_manager_trim_frees_whole_blocks_past_the_kept_tokens():
    blocks = BlockManager(num_blocks=8, block_size=4)
    seq = Request(0, "r", list(range(5)), Params(), seed=0)
    blocks.allocate(seq, 13)  # 4 blocks
    assert len(seq.block_table) == 4 and blocks.num_free_blocks == 4
    blocks.trim(seq, 6)
    assert len(seq.block_table) == 2 and blocks.num_free_blocks == 6


def test_speculative_config_errors():
    with pytest.raises(ConfigError, match="draft_model"):
        LLM({"speculative": {"method": "draft"}}, progress=False)
    with pytest.raises(ConfigError, match="must be one of"):
        LLM({"speculative": {"method": "ngrams"}}, progress=False)
    with pytest.raises(ConfigError, match="pipeline"):
        LLM({"speculative": {"method": "layers"}, "parallel": {"pipeline": 2}}, progress=False)
    with pytest.raises(ConfigError, match="tensor"):
        LLM({"speculative": {"method": "layers"}, "parallel": {"tensor": 2}}, progress=False)


# ---- greedy losslessness on tiny models ---------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec")
    target = make_checkpoint(root / "target", "qwen2")
    other = make_checkpoint(root / "other", "qwen2", seed=7, num_hidden_layers=2)
    with LLM(tiny_engine_config(target), progress=False) as llm:
        plain = [o.token_ids for o in llm.generate(TINY_PROMPTS, GREEDY)]
    return target, other, plain


TINY_METHODS = {
    "ngram": {"method": "ngram"},
    "layers": {"method": "layers", "draft_layers": 2},
    "draft-self": {"method": "draft", "draft_model": "TARGET"},
    "draft-poor": {"method": "draft", "draft_model": "OTHER", "num_tokens": 3, "adaptive": True},
}


def _spec(name: str, target, other) -> dict:
    spec = dict(TINY_METHODS[name])
    if "draft_model" in spec:
        spec["draft_model"] = str(target if spec["draft_model"] == "TARGET" else other)
        spec["draft_dtype"] = "float32"  # like the target, so a self-draft proposes exactly its choices
    return spec


@pytest.mark.parametrize("name", list(TINY_METHODS))
def test_tiny_greedy_is_identical_to_plain_decoding(tiny, name):
    target, other, plain = tiny
    with LLM(tiny_engine_config(target, speculative=_spec(name, target, other)), progress=False) as llm:
        batched = [o.token_ids for o in llm.generate(TINY_PROMPTS, GREEDY)]
        one_by_one = [llm.generate([p], GREEDY)[0].token_ids for p in TINY_PROMPTS]
        stats = introspect.spec_stats(llm)
    assert batched == plain
    assert one_by_one == plain
    assert stats.proposed > 0
    if name == "draft-self":
        assert stats.acceptance > 0.95  # the same model proposes exactly what it verifies
        assert stats.max_emitted == 5  # K accepted + the bonus token


@pytest.mark.slow  # worker processes
@pytest.mark.parametrize("name", ["ngram", "draft-poor"])
def test_tiny_greedy_under_tensor_parallelism_is_identical(tiny, name):
    target, other, plain = tiny
    cfg = tiny_engine_config(target, speculative=_spec(name, target, other), parallel={"tensor": 2})
    with LLM(cfg, progress=False) as llm:
        assert [o.token_ids for o in llm.generate(TINY_PROMPTS, GREEDY)] == plain


@pytest.mark.slow  # worker processes
def test_ngram_composes_with_pipeline_stages(tiny):
    target, _, plain = tiny
    cfg = tiny_engine_config(target, speculative={"method": "ngram"}, parallel={"pipeline": 2})
    with LLM(cfg, progress=False) as llm:
        assert [o.token_ids for o in llm.generate(TINY_PROMPTS, GREEDY)] == plain


def test_preemption_and_stop_strings_with_speculation(tiny):
    target, _, _ = tiny
    params = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)
    stopped = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True, stop=["c a"])
    prompts = TINY_PROMPTS * 3
    # 32 blocks of 4 tokens cannot hold 12 sequences of ~100 tokens: sequences get preempted
    small = {"cache": {"block_size": 4, "num_blocks": 32}, "scheduler": {"max_model_len": 128}}
    with LLM(tiny_engine_config(target, **small), progress=False) as llm:
        plain = llm.generate(prompts, params)
        plain_stop = llm.generate(prompts, stopped)
    self_draft = {"method": "draft", "draft_model": str(target), "draft_dtype": "float32"}
    with LLM(tiny_engine_config(target, speculative=self_draft, **small),
             progress=False) as llm:
        spec = llm.generate(prompts, params)
        spec_stop = llm.generate(prompts, stopped)
        assert introspect.scheduler(llm).num_preemptions > 0
    assert [o.token_ids for o in spec] == [o.token_ids for o in plain]
    assert [(o.text, o.finish_reason) for o in spec_stop] == [(o.text, o.finish_reason) for o in plain_stop]
    assert all(len(o.token_ids) <= 60 for o in spec)


# ---- KV rollback --------------------------------------------------------------------------

def _cache_rows(llm: LLM, cache, seq: Request, n: int) -> torch.Tensor:
    """K and V of every layer at positions 0..n-1 of `seq`, from the paged cache."""
    bs = introspect.block_manager(llm).block_size
    rows = [(seq.block_table[p // bs], p % bs) for p in range(n)]
    return torch.stack([layer[:, [b for b, _ in rows], [o for _, o in rows]] for layer in cache.layers])


@pytest.mark.parametrize("name", ["ngram", "draft-poor", "layers"])
def test_kv_cache_after_speculation_equals_plain_decoding(tiny, name):
    target, other, _ = tiny
    prompt = TINY_PROMPTS[0]

    def run(spec: dict | None, computed: int):
        llm = LLM(tiny_engine_config(target, speculative=spec or {}), progress=False)
        rid = llm.engine.add_request(prompt, SamplingParams(max_tokens=200, temperature=0, ignore_eos=True))
        while introspect.request(llm, rid).num_computed_tokens < computed:
            llm.engine.step()
        return llm, introspect.request(llm, rid)

    spec_llm, spec_seq = run(_spec(name, target, other), len(prompt) + 50)
    n = spec_seq.num_computed_tokens
    plain_llm, plain_seq = run(None, n)
    try:
        assert introspect.spec_stats(spec_llm).steps > 5
        assert spec_seq.token_ids[:n] == plain_seq.token_ids[:n]
        # no block beyond what the computed tokens (and the pending one) need stays allocated
        assert len(spec_seq.block_table) == -(-n // introspect.block_manager(spec_llm).block_size)
        got = _cache_rows(spec_llm, introspect.kv_cache(spec_llm), spec_seq, n)
        want = _cache_rows(plain_llm, introspect.kv_cache(plain_llm), plain_seq, n)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        if name == "draft-poor":  # the draft's cache, up to what the draft has seen, equals its own plain run
            drafted = spec_seq.spec.draft_from
            draft_llm = LLM(tiny_engine_config(other), progress=False)
            draft_llm.engine.add_request(spec_seq.token_ids[:drafted], SamplingParams(max_tokens=2))
            draft_llm.engine.step()
            draft_seq = introspect.requests(draft_llm)[0]
            got = _cache_rows(spec_llm, introspect.draft_kv_cache(spec_llm), spec_seq, drafted)
            want = _cache_rows(draft_llm, introspect.kv_cache(draft_llm), draft_seq, drafted)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
            draft_llm.close()
    finally:
        spec_llm.close()
        plain_llm.close()


# ---- sampled losslessness (chi-square) ----------------------------------------------------

def _exact_marginals(model_dir, prompt: list[int], vocab: int, steps: int,
                     params: SamplingParams | None = None) -> list[torch.Tensor]:
    """The target's own distribution of output tokens 0..steps-1 at temperature 1 (transformers),
    after the request's logit bias and frequency/presence penalties (OpenAI definitions) and, for
    a constrained request, with tokens outside ALLOWED masked."""
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    marginals, joint = [], {(): 1.0}
    with torch.no_grad():
        for _ in range(steps):
            prefixes = list(joint)
            ids = torch.tensor([prompt + list(p) for p in prefixes])
            logits = hf(ids).logits[:, -1].double()
            for row, prefix in zip(logits, prefixes if params is not None else []):
                for token, bias in params.logit_bias.items():
                    row[token] += bias
                for token in set(prefix):
                    row[token] -= params.frequency_penalty * prefix.count(token) + params.presence_penalty
                if params.structured_outputs is not None:  # the regex of the constrained variant: a token set
                    row[[t for t in range(vocab) if t not in ALLOWED]] = float("-inf")
            probs = torch.softmax(logits, dim=-1)
            nxt, marginal = {}, torch.zeros(vocab, dtype=torch.float64)
            for prefix, row in zip(prefixes, probs):
                for t in range(vocab):
                    nxt[prefix + (t,)] = joint[prefix] * float(row[t])
                marginal += joint[prefix] * row
            joint, marginals = nxt, marginals + [marginal]
    return marginals


ALLOWED = (1, 2, 3, 5)  # the constrained variant's regex admits these bytes (the tiny tokenizer: byte b is token b)


@pytest.mark.slow  # chi-square: 3000 sampled runs
@pytest.mark.parametrize("method", ["draft-poor", "ngram", "draft-self-penalised", "ngram-constrained",
                                    "draft-self-constrained"])
def test_sampled_tokens_follow_the_targets_distribution(tmp_path, method):
    """With penalties and a bias the acceptance test uses the processed distribution at each
    position, counting the proposals before it (the draft, here the target itself so that
    later positions are reached often, proposes from its unprocessed distribution), so output
    stays the target's."""
    from scipy.stats import chisquare

    vocab, runs, steps = 8, 3000, 3
    target = make_checkpoint(tmp_path / "t", "qwen2", vocab_size=vocab, initializer_range=0.5)
    poor = make_checkpoint(tmp_path / "d", "qwen2", seed=3, vocab_size=vocab, num_hidden_layers=1,
                           initializer_range=0.5)
    prompt = [1, 2, 3, 1, 2, 3, 1, 2]  # repetitive, so the n-gram proposer proposes [3 1 2 ...]
    draft = target if method.startswith("draft-self") else poor
    spec = ({"method": "draft", "draft_model": str(draft), "draft_dtype": "float32"} if method.startswith("draft")
            else {"method": "ngram", "ngram_min": 1})
    processing = (dict(frequency_penalty=2.0, presence_penalty=1.0, logit_bias={2: 1.5})
                  if method.endswith("penalised") else {})
    if method.endswith("constrained"):  # the grammar masks per position, rolled back with rejected proposals
        processing = dict(frequency_penalty=1.0, structured_outputs={"regex": "[\\x01-\\x03\\x05]*"})
    params = [SamplingParams(max_tokens=steps + 2, temperature=1.0, seed=s, ignore_eos=True, **processing)
              for s in range(runs)]
    cfg = tiny_engine_config(target, speculative=spec, scheduler={"max_num_seqs": 256},
                             cache={"block_size": 4, "num_blocks": 2048})
    with LLM(cfg, progress=False) as llm:
        outs = llm.generate([prompt] * runs, params)
        stats = introspect.spec_stats(llm)
    assert stats.proposed > runs // 2 and 0 < stats.acceptance < 1  # proposals were made, some rejected
    for i, expected in enumerate(_exact_marginals(target, prompt, vocab, steps, params[0])):
        counts = torch.bincount(torch.tensor([o.token_ids[i] for o in outs]), minlength=vocab).double()
        keep = expected * runs >= 5
        f_exp = (expected[keep] * runs).tolist() + [float(expected[~keep].sum() * runs)]
        f_obs = counts[keep].tolist() + [float(counts[~keep].sum())]
        if f_exp[-1] == 0:
            f_exp, f_obs = f_exp[:-1], f_obs[:-1]
        p_value = chisquare(f_obs, [e * sum(f_obs) / sum(f_exp) for e in f_exp], sum_check=False).pvalue
        assert p_value > 0.01, f"output token {i}: {f_obs} vs expected {f_exp} (p={p_value:.2g})"


def test_a_wrong_acceptance_rule_would_be_caught():
    """The chi-square test above has power: accepting every poor draft token shifts the
    distribution of a token far beyond p = 0.01 over the same number of runs."""
    from scipy.stats import chisquare

    p = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    q = torch.tensor([0.1, 0.1, 0.8], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    drawn = torch.multinomial(q, 3000, replacement=True, generator=gen)  # "always accept" emits q
    counts = torch.bincount(drawn, minlength=3).double()
    assert chisquare(counts.tolist(), (p * 3000).tolist()).pvalue < 1e-6
    right = [verify_sampled(p[None].repeat(2, 1), [int(x)], q[None], s, 0)[0] for s, x in zip(range(3000), drawn)]
    counts = torch.bincount(torch.tensor(right), minlength=3).double()
    assert chisquare(counts.tolist(), (p * 3000).tolist()).pvalue > 0.01


# ---- the default model --------------------------------------------------------------------

DEFAULT_PROMPTS = [
    "Explain KV caching in two sentences.",
    "Summarise in one sentence: The harbour town woke slowly. Fishermen mended nets while the bakery "
    "filled the square with the smell of bread, and the first bus left at seven.",
    "Rewrite this Python function with a docstring:\ndef add(a, b):\n    return a + b",
    "List three prime numbers.",
    "Write a haiku about the sea.",
    "Extract the names from: Alice met Bob and Carol at the station, then Dave arrived.",
    "What is the capital of France?",
    "Translate to French: good morning, my friend.",
    "Continue the sequence: 1, 2, 3, 4, 5,",
    "Give two tips for writing clear code.",
]
DEFAULT_METHODS = {
    "ngram": {"method": "ngram"},
    "draft": {"method": "draft", "draft_model": "default"},  # same weights, int8 head: near but not exact
    "layers": {"method": "layers", "draft_layers": 8, "adaptive": True},
}


@pytest.fixture(scope="module")
def default_plain(default_llm):
    llm = default_llm
    prompts = [llm.tokenizer.encode_chat([{"role": "user", "content": p}]) for p in DEFAULT_PROMPTS]
    params = SamplingParams(max_tokens=32, temperature=0)
    one = [llm.generate([p], params)[0].token_ids for p in prompts]
    eight = [o.token_ids for o in llm.generate(prompts[:8], params)]
    return prompts, params, one, eight


@pytest.mark.slow  # the default model
@pytest.mark.parametrize("name", list(DEFAULT_METHODS))
def test_default_model_greedy_identical_at_batch_1_and_8(default_plain, name):
    prompts, params, one, eight = default_plain
    with LLM({**DEFAULT_FP32, "speculative": DEFAULT_METHODS[name]}, progress=False) as llm:
        assert [llm.generate([p], params)[0].token_ids for p in prompts] == one
        assert [o.token_ids for o in llm.generate(prompts[:8], params)] == eight
        assert introspect.spec_stats(llm).accepted > 0



def test_bench_speculative_user_mistakes_exit_2(capsys):
    from llm_infer.entrypoints.cli import main

    assert main(["bench", "--speculative", "ngram,lookahead"]) == 2
    assert "--speculative takes" in capsys.readouterr().err
    assert main(["bench", "--speculative", "draft"]) == 2
    assert "--draft-model" in capsys.readouterr().err
