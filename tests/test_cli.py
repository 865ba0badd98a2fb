"""The `llm-infer` command line: happy paths on a tiny model, one-line errors with exit code 2.

Commands run in-process through `cli.main([...])`; two run as real processes: `generate` end to
end, and a user mistake, for the exit status the shell sees and the absence of a traceback.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import yaml

from llm_infer.entrypoints.cli import main
from tests.conftest import tiny_engine_config

CLI = [sys.executable, "-m", "llm_infer.entrypoints.cli"]


def run(*args: str, stdin: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def config(tiny_models, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_engine_config(tiny_models["qwen2"])))
    return str(path)


# -- as real processes -------------------------------------------------------------------------


@pytest.mark.slow  # a process that loads a model and generates: about 3 s
def test_generate_prints_one_text_per_prompt(config):
    r = run("generate", "--config", config, "--prompt", "Hello", "--prompt", "World", "--max-tokens", "5",
            "--ignore-eos")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("--- prompt") == 2


@pytest.mark.slow  # a process that loads a model and generates: about 3 s
def test_one_prompt_streams_the_text_the_batch_would_print(config):
    args = ("generate", "--config", config, "--prompt", "Hello", "--max-tokens", "12", "--ignore-eos")
    streamed = run(*args)
    batched = run(*args, "--prompt", "World")
    assert streamed.returncode == 0 and batched.returncode == 0, streamed.stderr + batched.stderr
    first = batched.stdout.split("--- prompt 2")[0].split("\n", 1)[1]  # the text under "--- prompt 1 (...) ---"
    assert streamed.stdout == first and streamed.stdout.strip()


def test_missing_config_file_exits_2_with_one_line_and_no_traceback():
    r = run("generate", "--config", "/no/such.yaml", "--prompt", "x")
    assert r.returncode == 2 and r.stderr.strip() == "error: config file not found: /no/such.yaml"


# -- in-process --------------------------------------------------------------------------------


def test_chat_streams_replies_for_each_line(config, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\nagain\n"))
    code = main(["chat", "--config", config, "--max-tokens", "4", "--ignore-eos"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(out.strip().splitlines()) >= 2


def test_bench_writes_json(config, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--config", config, "--prompt-len", "16", "--gen-len", "4", "--batch", "3", "--repeat", "2",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    for run_name in ("batch_1", "batch_3"):
        assert set(data["results"][run_name]) >= {"ttft_s", "prefill_tok_s", "decode_tok_s"}
        assert data["results"][run_name]["decode_tok_s"] > 0
    assert data["prompt_len"] == 16 and data["peak_rss_mb"] > 0
    assert data["prefix_hit_tokens"] == 0  # prefix caching is on: every measured prefill must still be computed


def test_bench_prompts_have_the_asked_length_and_distinct_first_blocks(tiny_models):
    from llm_infer.entrypoints.bench import bench_prompts
    from llm_infer.runtime.tokenizer import Tokenizer

    tok = Tokenizer(tiny_models["qwen2"])
    for length in (16, 300, 1000):
        for first in (0, 123, 900, 5000):
            prompts = bench_prompts(tok, length, 40, first)
            assert [len(p) for p in prompts] == [length] * 40
            assert len({tuple(p[:16]) for p in prompts}) == 40


def test_ctrl_c_ends_a_command_with_one_line_and_status_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("llm_infer.entrypoints.cli.cmd_env", interrupted)
    assert main(["env"]) == 130
    assert capsys.readouterr().err == "\ninterrupted\n"


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    assert "tokens to generate at most (default: 256)" in " ".join(out.split())
    assert "(default: None)" not in out and "(default: False)" not in out


@pytest.mark.parametrize("args,message", [
    (["--set", "cache.blok_size=3"], "error: unknown config key 'cache.blok_size' (did you mean 'cache.block_size'?)"),
    (["--set", "model=/no/such/dir"], "error: model folder not found: /no/such/dir"),
    (["--temperature", "-1"], "error: invalid sampling parameters: temperature must be a finite number >= 0"),
    (["--set", "scheduler.max_model_len=4"], "error: the prompt has"),
])
def test_user_mistakes_exit_2_with_one_line(config, args, message, capsys):
    code = main(["generate", "--config", config, "--prompt", "Hello there", *args])
    stderr = capsys.readouterr().err
    assert code == 2
    lines = [ln for ln in stderr.splitlines() if ln.strip() and "it/s" not in ln and "param/s" not in ln]
    assert lines == [message] or (len(lines) == 1 and lines[0].startswith(message)), stderr
    assert "Traceback" not in stderr


def test_bad_arguments_exit_2_naming_the_missing_one(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate"])
    assert exit_.value.code == 2 and "--prompt" in capsys.readouterr().err
