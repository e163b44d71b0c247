"""A TTS bundle: one folder with every stage, checked for consistency on load.

bundle/
  pipeline.json       {"format_version": 1, "parts": {...}}
  tokenizer/          S3Tokenizer v2 or a trained FSQ tokenizer (prompt tokens for one-shot)
  text_tokenizer/     Hugging Face tokenizer folder
  llm/  flow/  vae/   pretrained stage folders
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmspeech_core import CheckpointError
from mmspeech_core.checkpoint import atomic_write_text, current_umask, is_temp_file

FORMAT_VERSION = 1
PARTS = ("tokenizer", "text_tokenizer", "llm", "flow", "vae")
_RNG_FILE = re.compile(r"rng-r\d+\.pt")


def _copy_ignore(folder: str, names: list[str]) -> set[str]:
    """Training state and crash leftovers (temp files of killed writers) never enter a bundle."""
    return {n for n in names if n == "train_state.pt" or _RNG_FILE.fullmatch(n) or is_temp_file(Path(n))}


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def write_bundle(
    out: str | Path,
    overwrite: bool = False,
    check: Callable[[Path], object] | None = None,
    allow_part_mismatch: bool = False,
    **parts: str | Path,
) -> Path:
    """Copy stage folders into one bundle (``write_bundle(out, llm=..., flow=..., ...)``).

    Nothing the caller did not ask to replace is touched: the bundle is assembled in a temporary sibling
    folder, checked with ``check(folder)`` if given, and only then renamed into place. An ``out`` that
    overlaps a source is refused; an existing ``out`` is replaced only if it is a bundle and ``overwrite``.
    ``allow_part_mismatch`` is recorded in ``pipeline.json``: loading then accepts parts from different
    training runs (see :meth:`TTS.check_provenance`)."""
    missing = [p for p in PARTS if p not in parts]
    if missing:
        raise CheckpointError(f"a bundle needs every part; missing {missing}")
    d = Path(out).resolve()
    sources = {name: Path(parts[name]).resolve() for name in PARTS}
    for name, src in sources.items():
        if not src.is_dir():
            raise CheckpointError(f"{name} folder not found: {src}")
        if _overlaps(src, d):
            raise CheckpointError(
                f"the bundle folder {d} overlaps the {name} source {src}: choose another --out"
            )
    if d.exists() and not (d.is_dir() and (not any(d.iterdir()) or (d / "pipeline.json").is_file())):
        raise CheckpointError(f"{d} exists and is not a bundle: refusing to overwrite it")
    if d.exists() and any(d.iterdir()) and not overwrite:
        raise CheckpointError(f"bundle {d} exists: pass --overwrite to replace it")
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=d.parent, prefix=f".{d.name}.", suffix=".tmp"))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; a bundle must be readable like any folder
        for name, src in sources.items():
            shutil.copytree(src, tmp / name, ignore=_copy_ignore)
        info = {
            "format_version": FORMAT_VERSION,
            "parts": list(PARTS),
            "allow_part_mismatch": allow_part_mismatch,
        }
        atomic_write_text(tmp / "pipeline.json", json.dumps(info, indent=2) + "\n")
        if check is not None:
            check(tmp)
        _replace_dir(tmp, d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return d


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is moved aside first and removed only after."""
    if not target.exists():
        new.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_bundle(directory: str | Path) -> dict[str, Any]:
    """The bundle's ``pipeline.json``, after checking the folder holds a readable bundle."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"bundle folder not found: {d}")
    meta = d / "pipeline.json"
    if not meta.is_file():
        raise CheckpointError(f"{d} is not a TTS bundle (no pipeline.json)")
    try:
        info = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta} is corrupted: {e}") from e
    if not isinstance(info, dict):
        raise CheckpointError(f"{meta} must hold a JSON object, got {type(info).__name__}")
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"bundle {d} has format version {version}; this package reads {FORMAT_VERSION}")
    missing = [p for p in PARTS if not (d / p).is_dir()]
    if missing:
        raise CheckpointError(f"bundle {d} is missing parts: {missing}")
    return info
