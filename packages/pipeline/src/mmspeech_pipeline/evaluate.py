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

import json
import time
from pathlib import Path
from typing import Any

import torch
from mmspeech_core import Waveform, save_audio
from mmspeech_core.data import read_manifest

from .tts import TTS


def edit_distance(a: list[str], b: list[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def error_rate(ref: str, hyp: str, unit: str = "word") -> float:
    r = ref.lower().split() if unit == "word" else list(ref.replace(" ", ""))
    h = hyp.lower().split() if unit == "word" else list(hyp.replace(" ", ""))
    return edit_distance(r, h) / max(len(r), 1)


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
    from mmspeech_pipeline.reference import load_reference

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sv = _SV(tts, sv_model)
    asr = None
    if asr_model:
        from transformers import pipeline

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
