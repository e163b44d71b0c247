"""A TTS bundle: one folder with every stage, checked for consistency on load.

bundle/
  pipeline.json       {"format_version": 1, "parts": {...}}
  tokenizer/          S3Tokenizer v2 or a trained FSQ tokenizer (prompt tokens for one-shot)
  text_tokenizer/     Hugging Face tokenizer folder
  llm/  flow/  vae/   pretrained stage folders
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mmspeech_core import CheckpointError
from mmspeech_core.checkpoint import atomic_write_text

FORMAT_VERSION = 1
PARTS = ("tokenizer", "text_tokenizer", "llm", "flow", "vae")


def write_bundle(out: str | Path, **parts: str | Path) -> Path:
    """Copy stage folders into one bundle (``write_bundle(out, llm=..., flow=..., ...)``)."""
    missing = [p for p in PARTS if p not in parts]
    if missing:
        raise CheckpointError(f"a bundle needs every part; missing {missing}")
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    for name in PARTS:
        src = Path(parts[name])
        if not src.is_dir():
            raise CheckpointError(f"{name} folder not found: {src}")
        if src.resolve() != (d / name).resolve():
            shutil.rmtree(d / name, ignore_errors=True)
            shutil.copytree(src, d / name, ignore=shutil.ignore_patterns("train_state.pt"))
    atomic_write_text(
        d / "pipeline.json",
        json.dumps({"format_version": FORMAT_VERSION, "parts": list(PARTS)}, indent=2) + "\n",
    )
    return d


def check_bundle(directory: str | Path) -> Path:
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"bundle folder not found: {d}")
    meta = d / "pipeline.json"
    if not meta.is_file():
        raise CheckpointError(f"{d} is not a TTS bundle (no pipeline.json)")
    version = json.loads(meta.read_text()).get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"bundle {d} has format version {version}; this package reads {FORMAT_VERSION}")
    missing = [p for p in PARTS if not (d / p).is_dir()]
    if missing:
        raise CheckpointError(f"bundle {d} is missing parts: {missing}")
    return d
