"""Checkpoints: ``model.safetensors`` + ``config.json`` + ``meta.json`` (kind + format version), written atomically.

Layout of a pretrained directory::

    <dir>/config.json        the stage's dataclass config
    <dir>/model.safetensors  weights
    <dir>/meta.json          {"kind": "flow", "format_version": 1, "package_version": "0.1.0"}
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ConfigError, config_from_dict, config_to_dict

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
META_NAME = "meta.json"


class CheckpointError(RuntimeError):
    """Missing, corrupted, mismatched or incompatible checkpoint."""


TMP_SUFFIX = ".tmp"


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temp file in the same folder + rename, so a crash never leaves a half-written file.

    mkstemp creates 0600 files; the final file gets the mode a plain ``open`` would (0666 less the umask),
    so a bundle written by one user stays readable by a service account."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save, atomic (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def is_temp_file(path: Path) -> bool:
    """A temp file of :func:`atomic_write` (left behind only by a killed process)."""
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)


def remove_stale_temp_files(directory: Path) -> int:
    """Delete temp files a killed writer left under ``directory``; call only where no other writer runs."""
    stale = [p for p in directory.rglob(f".*{TMP_SUFFIX}") if p.is_file() and is_temp_file(p)]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def save_state_dict(
    state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """safetensors save, atomic; tied / shared tensors are cloned so safetensors accepts them."""
    seen: dict[int, str] = {}
    clean: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        v = v.detach()
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        clean[k] = v.clone().contiguous().cpu() if ptr in seen else v.contiguous().cpu()
        if ptr != -1:
            seen[ptr] = k
    atomic_write(path, lambda tmp: save_file(clean, tmp, metadata=metadata))


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A short hash of a state dict's names, dtypes, shapes and values: the same weights give the same
    fingerprint however they were stored (ONNX-converted, re-saved, copied into a bundle)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def load_state_dict(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"weights file {path} is corrupted or not safetensors: {e}") from e


def save_pretrained_dir(
    directory: str | Path,
    kind: str,
    config: Any,
    state: dict[str, torch.Tensor],
    package_version: str,
    trained_with: Mapping[str, str] | None = None,
) -> Path:
    """``trained_with``: fingerprints of the parts this one was trained against (its provenance)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_state_dict(state, d / WEIGHTS_NAME, metadata={"kind": kind, "format_version": str(FORMAT_VERSION)})
    atomic_write_text(d / CONFIG_NAME, json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n")
    meta: dict[str, Any] = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "package_version": package_version,
    }
    if trained_with:
        meta["trained_with"] = dict(trained_with)
    atomic_write_text(d / META_NAME, json.dumps(meta, indent=2) + "\n")
    return d


C = TypeVar("C")


def load_pretrained_dir(
    directory: str | Path, kind: str, config_cls: type[C], device: str | torch.device = "cpu"
) -> tuple[C, dict[str, torch.Tensor]]:
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {d}")
    for name in (META_NAME, CONFIG_NAME, WEIGHTS_NAME):
        if not (d / name).is_file():
            raise CheckpointError(f"checkpoint {d} is missing {name}")
    try:
        meta = json.loads((d / META_NAME).read_text())
        cfg_data = json.loads((d / CONFIG_NAME).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {d} has an unreadable JSON file: {e}") from e
    if meta.get("kind") != kind:
        raise CheckpointError(f"checkpoint {d} holds a {meta.get('kind')!r} stage, expected {kind!r}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {d} has format version {version}, this package reads version {FORMAT_VERSION}"
        )
    try:
        config = config_from_dict(config_cls, cfg_data, where=f"{d / CONFIG_NAME}")
    except ConfigError as e:
        raise CheckpointError(str(e)) from e
    return config, load_state_dict(d / WEIGHTS_NAME, device)


def read_trained_with(directory: str | Path) -> dict[str, str]:
    """The provenance a pretrained folder records (empty for folders written before it was recorded)."""
    meta = Path(directory) / META_NAME
    try:
        value = json.loads(meta.read_text()).get("trained_with", {}) if meta.is_file() else {}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta} is corrupted: {e}") from e
    return dict(value)


M = TypeVar("M", bound="PretrainedMixin")


class PretrainedMixin:
    """``save_pretrained(dir)`` / ``from_pretrained(dir)`` for an ``nn.Module`` built as ``cls(config)``.

    Subclasses set ``checkpoint_kind``, ``config_class`` and ``package_version`` and store ``self.config``.
    """

    checkpoint_kind: ClassVar[str]
    config_class: ClassVar[type]
    package_version: ClassVar[str] = "0.0.0"
    config: Any
    # fingerprints of the parts this model was trained against ({"vae": ..., "tokenizer": ...}), saved in
    # meta.json so a bundle can refuse parts from another training run
    trained_with: Mapping[str, str] = MappingProxyType({})  # replaced, never mutated

    def save_pretrained(
        self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None
    ) -> Path:
        """``state_dict``: the weights to write instead of ``self.state_dict()`` (e.g. gathered from FSDP
        shards)."""
        assert isinstance(self, torch.nn.Module)
        return save_pretrained_dir(
            directory,
            self.checkpoint_kind,
            self.config,
            state_dict if state_dict is not None else self.state_dict(),
            self.package_version,
            dict(self.trained_with),
        )

    def fingerprint(self) -> str:
        """:func:`weights_fingerprint` of this model's weights."""
        assert isinstance(self, torch.nn.Module)
        return weights_fingerprint(self.state_dict())

    @classmethod
    def from_pretrained(cls: type[M], directory: str | Path, device: str | torch.device = "cpu") -> M:
        config: Any
        config, state = load_pretrained_dir(directory, cls.checkpoint_kind, cls.config_class, device)
        model = cls(config)  # type: ignore[call-arg]
        assert isinstance(model, torch.nn.Module)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches: config.json and weights disagree
            raise CheckpointError(f"checkpoint {directory} does not match its config: {e}") from e
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint {directory} does not match {cls.__name__}: "
                f"missing {sorted(missing)[:8]}{'...' if len(missing) > 8 else ''}, "
                f"unexpected {sorted(unexpected)[:8]}{'...' if len(unexpected) > 8 else ''}"
            )
        model.trained_with = read_trained_with(directory)  # type: ignore[attr-defined]
        return model.to(device).eval()  # type: ignore[return-value]
