"""The corpus's voices: where its speech comes from, offline.

Sources (:data:`SOURCES`):

- ``espeak`` (the default, always there): eSpeak NG through ctypes, the library and its data shipped in the
  ``espeakng-loader`` wheel. 8 English accents × 39 voice variants, each speaker with its own base pitch and
  rate: up to 312 speakers, 22.05 kHz, ~0.002 s of compute per second of speech.
- ``flite`` (when Debian's ``flite`` is installed: ``apt-get install flite``; never required): CMU Flite's
  voices awb, rms and slt, built from real speakers of CMU ARCTIC, and the diphone voice kal16. Each voice
  at 4 pitch levels (rms: 4 speaking rates, its pitch is fixed), the other setting drawn: 16 speakers,
  16 kHz (nothing above 8 kHz once resampled to the corpus's 24 kHz), ~0.1 s a sentence as a subprocess.
  Flite's 8 kHz voice kal is left out.

Both engines give the same samples for the same call in every process, so corpora rebuild bit for bit.
Both would silently fall back to a default voice when given a name they lack: names are checked first
(:class:`VoiceError`).
"""

from __future__ import annotations

import ctypes
import functools
import random
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import espeakng_loader
import numpy as np
import torch
from mmspeech_core.audio import read_audio, resample

T = TypeVar("T")
SAMPLE_RATE = 24000  # the corpus's rate: every voice is resampled to it
# English accents of eSpeak NG (lang/gmw/*), and voice variants (voices/!v/*) that are voiced, human-like
# and speak the same samples in every process: f2, f3 and f5 (breath noise) and victor draw from a source
# that differs between processes, so a corpus that used them could not be rebuilt bit for bit
LANGUAGES = (
    "en-us",
    "en",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-029",
    "en-us-nyc",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f4",
    "klatt", "klatt2", "klatt3", "klatt4", "adam", "Alex", "Andy", "Annie", "belinda", "benjamin", "caleb",
    "david", "ed", "edward", "grandma", "grandpa", "ian", "john", "linda", "max", "michel", "paul", "quincy",
    "rob", "robert", "shelby", "steph", "travis", "zac",
)  # fmt: skip
# Flite's voices: each one's pitch levels (mean F0 in Hz, ``int_f0_target_mean``), or None for rms, which
# ignores every pitch setting (measured: the same samples at 90, 140 and 210 Hz) and varies its rate instead
FLITE_PITCHES: dict[str, tuple[int, ...] | None] = {
    "awb": (105, 125, 145, 165),
    "kal16": (90, 110, 130, 150),
    "rms": None,
    "slt": (150, 175, 200, 225),
}
FLITE_STRETCHES = (0.85, 0.95, 1.05, 1.15)  # duration_stretch levels: rms's 4 speakers


class VoiceError(ValueError):
    """A voice its engine lacks (eSpeak NG and Flite would silently use their default), or settings out of
    range."""


class SourceError(RuntimeError):
    """A voice source that is not installed here."""


@dataclass(frozen=True)
class EspeakVoice:
    source: ClassVar[str] = "espeak"
    language: str  # e.g. "en-us"
    variant: str  # e.g. "m3"
    pitch: int  # 0-100, eSpeak's base pitch (50 is its default)
    rate: int  # words per minute (175 is its default)

    @property
    def name(self) -> str:
        return f"{self.language}+{self.variant}"


@dataclass(frozen=True)
class FliteVoice:
    source: ClassVar[str] = "flite"
    voice: str  # one of FLITE_PITCHES
    pitch: int  # mean F0 in Hz; 0 = the voice's own (rms has no other)
    stretch: float  # duration_stretch: 1.0 is the voice's own rate, above 1 slower


Voice = EspeakVoice | FliteVoice


def voice_to_dict(voice: Voice) -> dict[str, Any]:
    """The voice as ``speakers.json`` keeps it: its settings and its source."""
    return {"source": voice.source, **asdict(voice)}


def voice_from_dict(d: dict[str, Any]) -> Voice:
    """The inverse of :func:`voice_to_dict`; a dict without ``source`` (corpora before flite) is eSpeak's."""
    fields = {k: v for k, v in d.items() if k not in ("source", "split")}
    cls = {"espeak": EspeakVoice, "flite": FliteVoice}[d.get("source", "espeak")]
    return cls(**fields)  # type: ignore[arg-type]


def speak(text: str, voice: Voice) -> torch.Tensor:
    """(T,) float32 audio at :data:`SAMPLE_RATE`."""
    if isinstance(voice, FliteVoice):
        return Flite.get().synthesize(text, voice)
    engine = Espeak.get()
    return resample(engine.synthesize(text, voice), engine.sample_rate, SAMPLE_RATE)


# ---- eSpeak NG -----------------------------------------------------------------------------------------
class Espeak:
    """eSpeak NG through ctypes. The library keeps global state, so every call holds one process-wide lock."""

    _lock = threading.Lock()
    _instance: Espeak | None = None
    # espeak_PARAMETER and flags from speak_lib.h
    _RATE, _PITCH = 1, 3
    _CHARS_UTF8, _RETRIEVAL = 1, 1

    def __init__(self) -> None:
        self.data = Path(espeakng_loader.get_data_path())
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.sample_rate = int(self.lib.espeak_Initialize(self._RETRIEVAL, 0, str(self.data).encode(), 0))
        if self.sample_rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to initialise (data folder {self.data})")
        self._chunks: list[np.ndarray] = []
        callback = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
        )
        self._callback = callback(self._collect)  # kept on self: the library holds only a raw pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> Espeak:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _collect(self, wav: ctypes.Array, n: int, events: int) -> int:  # type: ignore[type-arg]
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def check(self, voice: EspeakVoice) -> None:
        if voice.language.lower() not in _languages(self.data):
            raise VoiceError(f"unknown eSpeak language {voice.language!r}; English ones: {list(LANGUAGES)}")
        if not (self.data / "voices" / "!v" / voice.variant).is_file():
            raise VoiceError(
                f"unknown eSpeak variant {voice.variant!r} (files in {self.data / 'voices' / '!v'})"
            )
        if not 0 <= voice.pitch <= 100 or not 80 <= voice.rate <= 450:
            raise VoiceError(f"pitch must lie in [0, 100] and rate in [80, 450] wpm, got {voice}")

    def synthesize(self, text: str, voice: EspeakVoice) -> torch.Tensor:
        """(T,) float audio at :attr:`sample_rate`."""
        self.check(voice)
        data = text.encode()
        with self._lock:
            self._chunks = []
            if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise VoiceError(f"eSpeak refused voice {voice.name!r}")
            self.lib.espeak_SetParameter(self._RATE, voice.rate, 0)
            self.lib.espeak_SetParameter(self._PITCH, voice.pitch, 0)
            self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, self._CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if not chunks:
            raise RuntimeError(f"eSpeak produced no audio for {text!r}")
        return torch.from_numpy(np.concatenate(chunks).astype(np.float32) / 32768.0)


@functools.cache
def _languages(data: Path) -> frozenset[str]:
    """eSpeak NG's language names, lower case, read once per process: walking its folder on every utterance
    took 5 of the 27 ms that synthesising one took (20 % of a corpus build)."""
    return frozenset(p.name.lower() for p in (data / "lang").rglob("*") if p.is_file())


# ---- Flite ---------------------------------------------------------------------------------------------
class Flite:
    """CMU Flite's command line, one process per sentence (it keeps no state between calls)."""

    _instance: Flite | None = None

    def __init__(self, binary: str) -> None:
        self.binary = binary
        listed = subprocess.run([binary, "-lv"], capture_output=True, text=True, timeout=60, check=True)
        # "Voices available: kal awb_time kal16 awb rms slt "
        self.installed = frozenset(listed.stdout.split(":", 1)[-1].split())

    @classmethod
    def get(cls) -> Flite:
        if cls._instance is None:
            binary = shutil.which("flite")
            if binary is None:
                raise SourceError("the flite voices need CMU Flite: apt-get install flite")
            cls._instance = cls(binary)
        return cls._instance

    def check(self, voice: FliteVoice) -> None:
        if voice.voice not in FLITE_PITCHES or voice.voice not in self.installed:
            usable = sorted(self.installed & set(FLITE_PITCHES))
            raise VoiceError(f"unknown Flite voice {voice.voice!r}; usable ones here: {usable}")
        if (voice.pitch and not 50 <= voice.pitch <= 400) or not 0.5 <= voice.stretch <= 2.0:
            raise VoiceError(f"pitch must be 0 or lie in [50, 400] Hz, stretch in [0.5, 2], got {voice}")

    def synthesize(self, text: str, voice: FliteVoice) -> torch.Tensor:
        """(T,) float audio at :data:`SAMPLE_RATE`."""
        self.check(voice)
        settings = ["--setf", f"duration_stretch={voice.stretch}"]
        if voice.pitch:
            settings += ["--setf", f"int_f0_target_mean={voice.pitch}"]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "speech.wav"
            run = subprocess.run(
                [self.binary, "-voice", voice.voice, *settings, "-t", text, "-o", str(path)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if run.returncode != 0 or not path.is_file() or path.stat().st_size <= 44:
                raise RuntimeError(f"flite produced no audio for {text!r}: {run.stderr.strip()}")
            return read_audio(path, SAMPLE_RATE)


# ---- choosing voices -----------------------------------------------------------------------------------
SOURCES = ("espeak", "flite")


def available_sources() -> tuple[str, ...]:
    """The sources installed here, in :data:`SOURCES` order (eSpeak NG always: it ships in a wheel)."""
    return tuple(s for s in SOURCES if s == "espeak" or shutil.which("flite"))


def resolve_sources(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` checked and without repeats; ``auto`` stands for every installed source. A named source that
    is not installed is an error, not skipped: a corpus must not quietly depend on what a machine has."""
    out: list[str] = []
    for name in names:
        for s in available_sources() if name == "auto" else [name]:
            if s not in SOURCES:
                raise ValueError(f"unknown voice source {s!r}; known: {list(SOURCES)} or 'auto'")
            if s not in out:
                out.append(s)
    if not out:
        raise ValueError("no voice source given")
    if "flite" in out and "flite" not in available_sources():
        raise SourceError(
            "voice source 'flite' needs CMU Flite, which is not installed: apt-get install flite"
        )
    return tuple(out)


def make_voices(n: int, seed: int = 0, sources: Sequence[str] = ("espeak",)) -> list[Voice]:
    """``n`` distinct voices, drawn without repetition: the sources take turns (the first speaker from the
    first source, ...), a source out of distinct voices leaving the rest to the others. With eSpeak NG alone
    the voices are those this function has always drawn for a seed."""
    sources = resolve_sources(sources)
    room = {s: len(_COMBOS[s]()) for s in sources}
    if n > sum(room.values()):
        raise ValueError(
            f"at most {sum(room.values())} distinct speakers from {list(sources)}, asked for {n}"
        )
    share = dict.fromkeys(sources, 0)
    while sum(share.values()) < n:
        for s in sources:
            if share[s] < room[s] and sum(share.values()) < n:
                share[s] += 1
    draws = {"espeak": _espeak_voices, "flite": _flite_voices}
    return take_turns([draws[s](share[s], random.Random(seed)) for s in sources])


def take_turns(groups: Sequence[Sequence[T]]) -> list[T]:
    """Each group's first item, then each one's second, ...: any prefix of the list spreads over the groups."""
    return [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]


def _espeak_combos() -> list[tuple[str, str]]:
    return [(lang, var) for lang in LANGUAGES for var in VARIANTS]


def _flite_combos() -> list[tuple[str, float]]:
    """Voice × pitch level, or for rms (no pitch) × rate level."""
    return [
        (voice, level) for voice, pitches in FLITE_PITCHES.items() for level in (pitches or FLITE_STRETCHES)
    ]


_COMBOS: dict[str, Callable[[], list[Any]]] = {"espeak": _espeak_combos, "flite": _flite_combos}


def _espeak_voices(n: int, rng: random.Random) -> list[Voice]:
    """``n`` eSpeak NG voices: accent × variant, each with a drawn pitch and rate."""
    picked = rng.sample(_espeak_combos(), n)
    return [EspeakVoice(lang, var, rng.randrange(25, 76), rng.randrange(140, 196)) for lang, var in picked]


def _flite_voices(n: int, rng: random.Random) -> list[Voice]:
    """``n`` Flite voices: voice × pitch level (rms: × rate level), the other setting drawn."""
    out: list[Voice] = []
    for voice, level in rng.sample(_flite_combos(), n):
        if FLITE_PITCHES[voice] is None:
            out.append(FliteVoice(voice, 0, float(level)))
        else:
            out.append(FliteVoice(voice, int(level), round(rng.uniform(0.85, 1.15), 2)))
    return out
