"""When a sequence stops, and how much of its text is safe to stream so far."""

from __future__ import annotations

from llm_infer.runtime.sampling_params import SamplingParams


def token_stop_reason(params: SamplingParams, token_id: int, num_output: int, num_tokens: int,
                      eos_token_ids: list[int], max_model_len: int) -> str | None:
    """'stop' for an end token, 'length' for a length limit, None to continue."""
    if (token_id in eos_token_ids and not params.ignore_eos) or token_id in params.stop_token_ids:
        return "stop"
    if num_output >= params.max_tokens or num_tokens >= max_model_len:
        return "length"
    return None


def find_stop_string(text: str, stops: list[str], num_new_chars: int, start_at: int = 0) -> int | None:
    """Where the earliest stop string completed by the last `num_new_chars` characters starts
    (matches starting before `start_at` do not count)."""
    best = None
    for stop in stops:
        start = max(start_at, len(text) - num_new_chars - len(stop) + 1)
        at = text.find(stop, start)
        if at != -1 and (best is None or at < best):
            best = at
    return best


def partial_stop_suffix(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that could be the beginning of a stop string;
    streaming holds it back until it is known not to be one."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest
