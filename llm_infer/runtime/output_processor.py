"""From tokens to what callers see: appending a sample's tokens with their scores, stop
checks, incremental detokenization that holds back a possible stop string, and the
`RequestOutput` of a request's samples."""

from __future__ import annotations

import torch

from llm_infer.runtime.outputs import CompletionOutput, RequestMetrics, RequestOutput, TokenLogprob
from llm_infer.runtime.pooling import finish_embedding
from llm_infer.runtime.request import Request
from llm_infer.runtime.stop_checker import find_stop_string, partial_stop_suffix, token_stop_reason


class OutputProcessor:
    def __init__(self, eos_token_ids: list[int], max_model_len: int):
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len

    def append(self, req: Request, tokens: list[int], scores: list[TokenLogprob] | None,
               now: float) -> CompletionOutput:
        """Append a step's tokens to one sample until one of them stops it; the update to report.
        Stop strings are looked for only once `min_tokens` tokens exist, in the text from there on."""
        added: list[int] = []
        new_text = ""
        for k, token in enumerate(tokens):
            req.output_token_ids.append(token)
            added.append(token)
            if req.logprobs is not None and scores:
                req.logprobs.append(scores[k])
            if req.first_token_time is None:
                req.first_token_time = now
            reason = token_stop_reason(req.params, token, len(req.output_token_ids), req.num_known_tokens,
                                       self.eos_token_ids, self.max_model_len)
            detok = req.detokenizer
            delta = detok.add(token) if reason is None else detok.add(token) + detok.flush()
            req.text += delta
            stops = req.params.stop
            if len(req.output_token_ids) < req.params.min_tokens:
                # Before min_tokens no stop string is looked for, and this text streams as it comes,
                # so no later match may start inside it.
                stops, req.stop_from = [], len(req.text)
            if stops and delta:
                at = find_stop_string(req.text, stops, len(delta), start_at=req.stop_from)
                if at is not None:
                    req.text, reason = req.text[:at], "stop"
            if reason is not None:
                self.finish(req, reason, now)
            held = partial_stop_suffix(req.text[req.stop_from:], stops) if reason is None else 0
            visible = len(req.text) - held
            new_text += req.text[req.streamed : visible]
            req.streamed = max(req.streamed, visible)
            if reason is not None:
                break
        return self.completion(req, new_text, added)

    @staticmethod
    def finish(req: Request, reason: str, now: float) -> None:
        req.finish_reason, req.finish_time = reason, now

    @staticmethod
    def completion(req: Request, new_text: str = "", new_token_ids: list[int] | None = None) -> CompletionOutput:
        return CompletionOutput(req.index, req.text, list(req.output_token_ids), req.finish_reason,
                                req.finish_reason is not None, new_text, new_token_ids or [],
                                list(req.logprobs) if req.logprobs is not None else None)

    def request_output(self, samples: list[Request], updates: list[CompletionOutput]) -> RequestOutput:
        """A request's output: every sample once all have finished, else the ones updated."""
        first = samples[0]
        finished = all(s.finish_reason is not None for s in samples)
        outputs = [self.completion(s) for s in samples] if finished else sorted(updates, key=lambda o: o.index)
        if finished:  # keep the new text of this last update
            for out in outputs:
                out.new_text = next((u.new_text for u in updates if u.index == out.index), "")
                out.new_token_ids = next((u.new_token_ids for u in updates if u.index == out.index), [])
        metrics = RequestMetrics(first.arrival_time, first.first_scheduled_time, first.first_token_time,
                                 max((s.finish_time for s in samples if s.finish_time), default=None),
                                 len(first.prompt_token_ids), sum(len(s.output_token_ids) for s in samples),
                                 sum(s.num_preemptions for s in samples))
        logits = torch.cat(first.logits) if (finished and first.logits) else None
        embedding = None
        if finished and first.pooling is not None and first.finish_reason == "stop":
            embedding = finish_embedding(first.pooled, first.pooling, len(first.prompt_token_ids))
        return RequestOutput(first.request_id, first.prompt, first.prompt_token_ids, outputs, finished, metrics,
                             logits, list(first.prompt_logprobs) if first.prompt_logprobs is not None else None,
                             embedding)
