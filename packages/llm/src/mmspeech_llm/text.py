"""Text tokenizer: any local Hugging Face tokenizer folder, or a byte-level BPE trained on the corpus."""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from mmspeech_core import CheckpointError
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast


class TextError(ValueError):
    """Text that cannot be synthesised (empty, control characters, ...)."""


def normalize_text(text: str) -> str:
    """NFKC, drop invisible format characters, collapse whitespace; raise :class:`TextError` on empty text,
    control characters or unpaired surrogates.

    Format characters (category Cf: a BOM from a Windows-saved file, zero-width space and joiner, soft
    hyphen, direction marks) carry no sound and are stripped rather than refused."""
    if not isinstance(text, str):
        raise TextError(f"text must be a string, got {type(text).__name__}")
    text = "".join(ch for ch in unicodedata.normalize("NFKC", text) if unicodedata.category(ch) != "Cf")
    text = " ".join(text.split())
    if not text:
        raise TextError("text is empty")
    bad = sorted({ch for ch in text if unicodedata.category(ch) in ("Cc", "Co", "Cs")})
    if bad:
        raise TextError(f"text has unsupported characters: {[f'U+{ord(c):04X}' for c in bad]}")
    return text


class TextTokenizer:
    """Thin wrapper over ``transformers.PreTrainedTokenizerFast`` (works offline on a local folder)."""

    def __init__(self, hf_tokenizer: object) -> None:
        self.tok = hf_tokenizer

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> TextTokenizer:
        d = Path(directory)
        if not d.is_dir():
            raise CheckpointError(f"text tokenizer folder not found: {d}")
        if not any((d / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer.model")):
            # else transformers fails with an unrelated error about sentencepiece
            raise CheckpointError(
                f"text tokenizer folder {d} has no tokenizer.json (nor vocab.json, tokenizer.model)"
            )
        try:
            return cls(AutoTokenizer.from_pretrained(str(d), local_files_only=True))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot load the text tokenizer in {d}: {e}") from e

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int = 4000, min_frequency: int = 2) -> TextTokenizer:
        """Byte-level BPE from the corpus: any character encodes (bytes), no unknown tokens."""
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=["<|pad|>"],
        )
        tk.train_from_iterator((normalize_text(t) for t in texts), trainer)
        return cls(PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|pad|>"))

    def save(self, directory: str | os.PathLike[str]) -> None:
        self.tok.save_pretrained(str(directory))  # type: ignore[attr-defined]

    @property
    def vocab_size(self) -> int:
        return len(self.tok)  # type: ignore[arg-type]

    def fingerprint(self) -> str:
        """Hash of the vocabulary (token -> id): a re-saved copy of the same tokenizer keeps it."""
        vocab = sorted(self.tok.get_vocab().items())  # type: ignore[attr-defined]
        return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        ids = self.tok.encode(normalize_text(text), add_special_tokens=False)  # type: ignore[attr-defined]
        if not ids:
            raise TextError(f"text {text!r} encodes to no tokens")
        return list(ids)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)  # type: ignore[attr-defined, no-any-return]
