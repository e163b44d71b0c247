"""Offline evaluation: synthesise a test manifest and score it with what is available locally.

- ``rtf``: synthesis seconds / audio seconds.
- ``sim``: cosine similarity of speaker embeddings (output vs reference). With ``--sv-model`` (a local
  WavLM-for-x-vector folder, as Seed-TTS-eval uses) that model embeds; without it, the LM's own speaker
  encoder does — a proxy, reported as ``sim_proxy``.
- ``wer`` / ``cer``: with ``--asr-model`` (a local Whisper / wav2vec2 folder loaded by transformers),
  word / character error rate against the input text.
Nothing is downloaded: model folders must exist locally.
"""

from __future__ import annotations

import functools
import json
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jiwer
import torch
from mmspeech_core import Waveform, save_audio
from mmspeech_core.data import read_manifest

from .reference import load_reference
from .tts import TTS


def _english_normalizer() -> Callable[[str], str] | None:
    """Whisper's English normaliser (numbers, spellings, contractions) when the ``eval`` extra is installed."""
    try:  # optional: the eval extra
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError:
        return None
    return EnglishTextNormalizer()  # type: ignore[no-any-return]


@functools.cache
def _normalizers() -> dict[str, Callable[[str], str] | None]:
    return {"en": _english_normalizer()}


def normalize_for_scoring(text: str, lang: str = "en") -> str:
    """As Seed-TTS-eval scores: lower case, punctuation (all but apostrophes) removed, whitespace collapsed;
    for English, first Whisper's English normaliser where installed ("25" == "twenty-five")."""
    english = _normalizers().get(lang)
    if english is not None:
        text = english(text)
    text = "".join(" " if unicodedata.category(ch).startswith("P") and ch != "'" else ch for ch in text)
    return " ".join(text.lower().split())


def error_rate(ref: str, hyp: str, unit: str = "word", lang: str = "en") -> float:
    """WER (``unit="word"``) or CER (``"char"``, spaces ignored) after :func:`normalize_for_scoring`."""
    r, h = normalize_for_scoring(ref, lang), normalize_for_scoring(hyp, lang)
    if not r:
        raise ValueError(f"reference text {ref!r} has nothing to score after normalisation")
    if unit == "char":
        return float(jiwer.cer(r.replace(" ", ""), h.replace(" ", "")))
    return float(jiwer.wer(r, h))


class _SV:
    def __init__(self, tts: TTS, sv_model: str | None) -> None:
        self.tts, self.model = tts, None
        if sv_model:
            from transformers import AutoFeatureExtractor, WavLMForXVector

            self.fe = AutoFeatureExtractor.from_pretrained(sv_model, local_files_only=True)
            self.model = WavLMForXVector.from_pretrained(sv_model, local_files_only=True).eval()

    @torch.inference_mode()
    def embed(self, wav: Waveform) -> torch.Tensor:
        if self.model is None:
            return self.tts.llm.embed_speaker(wav).vectors[0].cpu()
        x = wav.resample(16000).unbatch()[0].cpu().numpy()
        inputs = self.fe(x, sampling_rate=16000, return_tensors="pt")
        return torch.nn.functional.normalize(self.model(**inputs).embeddings[0], dim=-1)


def evaluate(
    tts: TTS,
    manifest: str | Path,
    out_dir: str | Path,
    asr_model: str | None = None,
    sv_model: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Manifest lines: ``id``, ``text``, ``audio`` = the reference recording, optional ``reference_text``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sv = _SV(tts, sv_model)
    asr = None
    if asr_model:
        from transformers import pipeline  # heavy: only when a local ASR folder is given

        asr = pipeline("automatic-speech-recognition", model=asr_model, device=-1)
    rows = []
    for u in read_manifest(manifest):
        if not u.text:
            raise ValueError(f"{u.id}: evaluation lines need 'text'")
        t = time.perf_counter()
        ref = load_reference(u.audio, tts.sample_rate, tts.policy)  # read once: for the voice and for SIM
        wav = tts.synthesize(u.text, reference=ref, reference_text=u.extra.get("reference_text"), seed=seed)
        dt = time.perf_counter() - t
        save_audio(out / f"{u.id}.wav", wav)
        row: dict[str, Any] = {
            "id": u.id,
            "seconds": float(wav.durations()[0]),
            "rtf": dt / float(wav.durations()[0]),
        }
        row["sim" if sv.model is not None else "sim_proxy"] = float(torch.dot(sv.embed(wav), sv.embed(ref)))
        if asr is not None:
            result: Any = asr({"raw": wav.resample(16000).unbatch()[0].numpy(), "sampling_rate": 16000})
            hyp = str(result["text"])
            row.update(hyp=hyp, wer=error_rate(u.text, hyp), cer=error_rate(u.text, hyp, "char"))
        rows.append(row)
    (out / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    keys = [k for k in ("rtf", "sim", "sim_proxy", "wer", "cer") if k in rows[0]]
    summary = {k: sum(r[k] for r in rows) / len(rows) for k in keys} | {"n": len(rows)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
