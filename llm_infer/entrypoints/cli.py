"""`llm-infer`: generate, chat, bench, serve (and the commands later issues add).

Every command takes `--config FILE` (default: configs/local.yaml) and repeated
`--set dotted.key=value`. A user mistake prints one `error:` line and exits 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from llm_infer.errors import UserError, WorkerError


def default_config_path() -> Path | None:
    """configs/local.yaml in the working directory, else the one next to this package's checkout."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = root / "configs" / "local.yaml"
        if candidate.is_file():
            return candidate
    return None


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (default: configs/local.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set scheduler.max_num_seqs=8 (repeatable)")


def _sampling_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("--max-tokens", type=int, default=max_tokens, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--min-p", type=float, default=0.0, help="drop tokens below this fraction of the top one")
    p.add_argument("--seed", type=int, default=None, help="per-request seed (default: the engine's)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence tokens")


def sampling_params(args: argparse.Namespace):
    from llm_infer.runtime.sampling_params import SamplingParams

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, min_p=args.min_p, seed=args.seed, stop=args.stop,
                          ignore_eos=args.ignore_eos)


def make_llm(args: argparse.Namespace, **kwargs: Any):
    from llm_infer.entrypoints.llm import LLM

    config = args.config or default_config_path()
    return LLM(config, overrides=args.overrides, **kwargs)


def cmd_generate(args: argparse.Namespace) -> int:
    """One prompt streams its text as it is generated (so Ctrl-C keeps what was printed); several
    run as one batch and print when all are done."""
    params = sampling_params(args)
    llm = make_llm(args)
    try:
        if args.raw or not llm.tokenizer.has_chat_template:
            prompts = list(args.prompt)
        else:
            prompts = [llm.tokenizer.encode_chat([{"role": "user", "content": p}]) for p in args.prompt]
        if len(prompts) == 1:
            for update in llm.stream(prompts[0], params):
                print(update.new_text, end="", flush=True)
            print()
            return 0
        outputs = llm.generate(prompts, params)
    finally:
        llm.close()
    for i, out in enumerate(outputs):
        if len(outputs) > 1:
            print(f"--- prompt {i + 1} ({out.finish_reason}) ---")
        print(out.text)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    params = sampling_params(args)
    llm = make_llm(args)
    messages: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    try:
        while True:
            if interactive:
                print("> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line or line.strip() in ("/exit", "/quit"):
                break
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line.rstrip("\n")})
            prompt, reply = llm.tokenizer.encode_chat(messages), ""
            for update in llm.stream(prompt, params):
                reply += update.new_text
                print(update.new_text, end="", flush=True)
            print(flush=True)
            # The history keeps the answer and the reasoning apart, as the template wants them
            # (message text is always text: raw <think> tags would not be markers there).
            parsed = llm.chat_parser.parse(reply, prompt, parse_tools=False)
            messages.append({"role": "assistant", "content": parsed.content or "",
                             **({"reasoning_content": parsed.reasoning_content} if parsed.reasoning_content else {})})
    except KeyboardInterrupt:
        print()
    finally:
        llm.close()
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.speculative:
        from llm_infer.entrypoints.bench_spec import run_spec_bench

        return run_spec_bench(args, make_llm)
    from llm_infer.entrypoints.bench import run_bench

    return run_bench(args, make_llm)


def cmd_serve(args: argparse.Namespace) -> int:
    from llm_infer.entrypoints.server.serve import serve

    return serve(args, make_llm)


def cmd_env(args: argparse.Namespace) -> int:
    import json

    from llm_infer.entrypoints.env_report import collect, format_report

    report = collect()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from llm_infer.entrypoints.submit import submit

    return submit(args)


class _DefaultsHelp(argparse.HelpFormatter):
    """`--help` shows each option's default where it has one worth saying (not None/off/empty)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "%(default)" in text or action.default is None or action.default is False
                or action.default == [] or action.default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)".lstrip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-infer", description="Distributed inference for Qwen-family models")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="generate text for one or more prompts")
    _engine_args(p)
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable: one batch)")
    p.add_argument("--raw", action="store_true",
                   help="send the prompt as plain text instead of wrapping it in the chat template")
    _sampling_args(p, max_tokens=256)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat on stdin, streaming the replies")
    _engine_args(p)
    p.add_argument("--system", default=None, help="system message")
    _sampling_args(p, max_tokens=512)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("bench", help="measure TTFT, prefill and decode speed; write JSON")
    _engine_args(p)
    p.add_argument("--prompt-len", type=int, default=128, help="tokens per prompt")
    p.add_argument("--gen-len", type=int, default=64, help="tokens generated per request")
    p.add_argument("--batch", type=int, default=8, help="requests in the batched run")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions (the median is reported)")
    p.add_argument("--out", default="llm-infer-bench.json", help="where to write the JSON results")
    p.add_argument("--ppl", metavar="FILE", help="instead of speed: perplexity of the model on this text file")
    p.add_argument("--ppl-window", type=int, default=512, help="tokens per perplexity window")
    p.add_argument("--speculative", metavar="METHODS",
                   help="instead: compare speculative methods (e.g. ngram,draft,layers) with speculation off")
    p.add_argument("--draft-model", help="with --speculative draft: the draft model (a folder or default)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API")
    _engine_args(p)
    from llm_infer.entrypoints.server.serve import add_serve_args

    add_serve_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("env", help="versions, device, kernels in use, caches: what a bug report needs")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("submit", help="run an llm-infer command on a Ray cluster as a Ray job",
                       usage="llm-infer submit --address URL --config FILE [--wait] -- COMMAND [ARGS...]")
    p.add_argument("--address", required=True, help="the cluster's job server, e.g. http://HEAD:8265")
    p.add_argument("--config", required=True, help="YAML config for the job")
    p.add_argument("--wait", action="store_true", help="stream the job's logs and exit with its status")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then an llm-infer command and its arguments")
    p.set_defaults(func=cmd_submit)

    from llm_infer.entrypoints.quantize import add_parser as add_quantize

    add_quantize(sub)
    for command in sub.choices.values():
        command.formatter_class = _DefaultsHelp
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WorkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        os._exit(0)
    except KeyboardInterrupt:  # Ctrl-C: the command's own cleanup (workers, servers) has run on the way out
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
