"""Offline evaluation as a ladder that shows where quality is lost. Each test item (a held-out sentence of a
held-out speaker, with another utterance of that speaker as the prompt) is scored on each rung:

1. ``ground_truth``  the recording itself (the judges' own error: compare every rung with it)
2. ``vae``           VAE resynthesis (encode -> decode) of the recording
3. ``oracle_flow``   tokens extracted from the recording -> flow -> VAE (no LM)
4. ``zero_shot``     full TTS from the prompt audio alone
5. ``one_shot``      full TTS with the prompt's transcript too
6. ``streamed``      zero-shot through :meth:`TTS.stream`

Metrics (judges from the ``eval`` extra, see :mod:`.judges`; a judge that is not installed leaves its
columns out): ``wer``/``cer`` after Seed-TTS-eval normalisation, ``sim`` = cosine of speaker embeddings
between the rung's audio and the prompt, ``dnsmos`` (overall, no reference), ``pesq``/``stoi`` against the
recording (``vae`` rung), ``rtf`` for synthesis. ``ground_truth`` also reports the different-speaker cosine
(``sim_other``), so SIM values can be read against same- and different-speaker recordings.

Input: a Seed-TTS-eval list (``id|prompt text|prompt wav|target text[|target wav]``) or a JSONL manifest
(``id``, ``text``, ``audio`` = prompt recording, optional ``reference_text`` and ``target_audio``).
"""

from __future__ import annotations

import functools
import json
import logging
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import torch
from mmspeech_core import Waveform, save_audio
from mmspeech_core.data import ManifestError, read_manifest
from tqdm import tqdm

from .judges import AsrJudge, JudgeUnavailable, QualityJudge, SpeakerJudge, to_16k
from .reference import load_reference
from .tts import TTS, Voice

log = logging.getLogger(__name__)


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


RUNGS = ("ground_truth", "vae", "oracle_flow", "zero_shot", "one_shot", "streamed")
METRICS = ("wer", "cer", "sim", "sim_other", "dnsmos", "pesq", "stoi", "rtf")  # averaged per rung
# beside the mean WER: its median, and how many items Whisper ran away on (wrote over twice the words said;
# a repetition loop on unclear audio scores a WER of 10 or more and decides a small sample's mean alone)
COLUMNS = (
    "wer", "wer_median", "wer_ratio", "runaway", "cer", "sim", "sim_other", "dnsmos", "pesq", "stoi", "rtf"
)  # fmt: skip
RUNAWAY_WORDS = 2.0
BOOTSTRAP = 2000  # resamples behind the WER ratio's interval and compare's
ROWS_FILE = "rows.jsonl"  # the per-utterance rows in an evaluate run's folder: written here, read by compare
RUN_FILE = "run.json"  # an evaluate folder's settings, which a resumed run must share


@dataclass
class EvalItem:
    id: str
    prompt_text: str | None
    prompt_wav: str
    target_text: str
    target_wav: str | None = None


def runaway(ref: str, hyp: str, lang: str = "en") -> bool:
    """Whether the transcript has more than ``RUNAWAY_WORDS`` times the words of the reference (after
    scoring normalisation): Whisper looping or hallucinating rather than mishearing."""
    said = len(normalize_for_scoring(ref, lang).split())
    return len(normalize_for_scoring(hyp, lang).split()) > RUNAWAY_WORDS * max(1, said)


def read_eval_list(path: str | Path) -> list[EvalItem]:
    """A Seed-TTS-eval ``.lst`` (``|``-separated; relative wav paths resolve against its folder) or JSONL."""
    path = Path(path)
    if path.suffix in (".jsonl", ".json"):
        return [
            EvalItem(u.id, u.extra.get("reference_text"), u.audio, u.text or "", u.extra.get("target_audio"))
            for u in read_manifest(path)
        ]
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) not in (4, 5):
            raise ManifestError(f"{path}:{n}: expected 'id|prompt text|prompt wav|target text[|target wav]'")
        wavs = [
            str((path.parent / f).resolve()) if f and not Path(f).is_absolute() else f for f in fields[2::2]
        ]
        items.append(
            EvalItem(fields[0], fields[1] or None, wavs[0], fields[3], wavs[1] if len(wavs) > 1 else None)
        )
    return items


@dataclass
class Judges:
    asr: AsrJudge | None
    speaker: SpeakerJudge | None
    quality: QualityJudge | None

    @classmethod
    def load(cls, asr_model: str | None = None, sv_model: str | None = None) -> Judges:
        """Every judge that can be had; each missing one is logged with the reason."""

        def attempt(make: Any) -> Any:
            try:
                return make()
            except JudgeUnavailable as e:
                log.warning("evaluation without this judge: %s", e)
                return None

        return cls(
            attempt(lambda: AsrJudge(asr_model)),
            attempt(lambda: SpeakerJudge(sv_model)),
            attempt(QualityJudge),
        )

    def names(self) -> dict[str, str | None]:
        """Which judge scored each metric (None: that judge was missing)."""
        return {
            "asr": self.asr.name if self.asr else None,
            "speaker": self.speaker.name if self.speaker else None,
            "quality": "DNSMOS (speechmos), PESQ-wb, STOI" if self.quality else None,
        }

    def score(
        self, audio: np.ndarray, item: EvalItem, prompt_embedding: np.ndarray | None, truth: np.ndarray | None
    ) -> dict[str, Any]:
        """``prompt_embedding``: the prompt's speaker embedding (computed once per item); ``truth``: the
        recording to compare with (PESQ, STOI), for the VAE rung."""
        row: dict[str, Any] = {}
        if self.asr is not None:
            hyp = self.asr.transcribe(audio)
            row.update(
                hyp=hyp,
                wer=error_rate(item.target_text, hyp),
                cer=error_rate(item.target_text, hyp, "char"),
                runaway=runaway(item.target_text, hyp),
            )
        if self.speaker is not None and prompt_embedding is not None:
            row["sim"] = float(np.dot(self.speaker.embed(audio), prompt_embedding))
        if self.quality is not None:
            row["dnsmos"] = self.quality.dnsmos(audio)
            if truth is not None:
                row.update(pesq=self.quality.pesq_wb(truth, audio), stoi=self.quality.stoi(truth, audio))
        return row


def evaluate(
    tts: TTS,
    eval_list: str | Path,
    out_dir: str | Path,
    judges: Judges | None = None,
    rungs: Sequence[str] = RUNGS,
    seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
    resume: bool = False,
) -> dict[str, Any]:
    """Score every rung on every item; writes ``rows.jsonl`` (per utterance and rung), ``summary.json`` and
    ``summary.md`` (the ladder table) and each rung's audio under ``out_dir/<rung>/``. Returns the summary.

    Each item's rows are appended to ``rows.jsonl`` as soon as it is scored, so an interrupted run loses at
    most the item in progress: ``resume`` keeps the folder's complete items and scores only the rest (a
    larger ``limit`` extends a finished run the same way). Every item is synthesised from ``seed`` alone, so
    a resumed run's rows equal an uninterrupted one's (but for the timings). Without ``resume`` the folder's
    rows are replaced."""
    unknown = sorted(set(rungs) - set(RUNGS))
    if unknown:
        raise ValueError(f"unknown rungs {unknown}; choose from {list(RUNGS)}")
    rungs = list(dict.fromkeys(rungs))  # each once, in the order given
    listed = read_eval_list(eval_list)
    items = listed[:limit]
    if not items:
        raise ValueError(f"{eval_list} has no items")
    judges = judges or Judges.load()
    out = Path(out_dir)
    settings = {
        "list": str(Path(eval_list).resolve()),
        "rungs": rungs,
        "seed": seed,
        "judges": judges.names(),
    }
    done = _resume_rows(out, settings, listed, rungs) if resume else _start_rows(out, settings)
    todo = [item for item in items if item.id not in done]
    with (out / ROWS_FILE).open("a", encoding="utf-8") as rows_file:
        bar = tqdm(
            todo, "evaluate", len(items), unit="item", initial=len(items) - len(todo), disable=not progress
        )
        for item in bar:
            speaker = Path(item.prompt_wav).parent  # a different speaker's prompt, from the whole list
            other = next((x for x in listed if Path(x.prompt_wav).parent != speaker), None)
            done[item.id] = _score_item(tts, item, other, judges, rungs, seed, out)
            rows_file.write(_jsonl(done[item.id]))
            rows_file.flush()
    rows = [r for item in items for r in done.get(item.id, [])]  # list order, however the run was split
    summary = summarize(rows, judges)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(ladder_table(summary) + "\n")
    return summary


def _start_rows(out: Path, settings: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    (out / ROWS_FILE).write_text("")
    return {}


def _resume_rows(
    out: Path, settings: dict[str, Any], listed: list[EvalItem], rungs: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """The rows of the items an earlier run in ``out`` scored completely, by item id (the file is rewritten
    without the rest: a torn last line or an item cut short)."""
    run_file = out / RUN_FILE
    if not (out / ROWS_FILE).is_file():
        return _start_rows(out, settings)
    if not run_file.is_file():
        raise ValueError(
            f"{out} has rows but no {RUN_FILE} to check them against: resume needs a run that wrote one"
        )
    before = json.loads(run_file.read_text())
    if before != settings:
        raise ValueError(
            f"{out} holds a run with other settings ({before}, not {settings}): "
            "give another --out, or leave out --resume to start it again"
        )
    by_id: dict[str, list[dict[str, Any]]] = {}
    for line in (out / ROWS_FILE).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line being written when the run stopped
        by_id.setdefault(row["id"], []).append(row)
    wanted = {item.id: [r for r in rungs if _applies(r, item)] for item in listed}
    done = {i: rows for i, rows in by_id.items() if [r["rung"] for r in rows] == wanted.get(i)}
    (out / ROWS_FILE).write_text(_jsonl([r for rows in done.values() for r in rows]))
    log.info("resuming %s: %d items already scored", out, len(done))
    return done


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _applies(rung: str, item: EvalItem) -> bool:
    """Whether the item can be scored on the rung: three rungs need the target's recording, one-shot the
    prompt's transcript."""
    if rung in ("ground_truth", "vae", "oracle_flow"):
        return item.target_wav is not None
    return rung != "one_shot" or bool(item.prompt_text)


def _score_item(
    tts: TTS,
    item: EvalItem,
    other: EvalItem | None,
    judges: Judges,
    rungs: Sequence[str],
    seed: int,
    out: Path,
) -> list[dict[str, Any]]:
    prompt_wav = load_reference(item.prompt_wav, tts.sample_rate, tts.policy)  # read once: voices and SIM
    prompt_embedding = judges.speaker.embed(to_16k(prompt_wav)) if judges.speaker is not None else None
    truth_wav = load_reference(item.target_wav, tts.sample_rate, tts.policy) if item.target_wav else None
    truth = to_16k(truth_wav) if truth_wav is not None else None
    # voices are made once, before the clocks start: RTF measures synthesis with a ready voice (a preset)
    voices = {"zero_shot": tts.make_voice(prompt_wav)}
    if item.prompt_text:
        voices["one_shot"] = tts.make_voice(prompt_wav, item.prompt_text)
    rows = []
    for rung in [r for r in rungs if _applies(r, item)]:
        t = time.perf_counter()
        wav = _rung_audio(tts, rung, item, voices, truth_wav, seed)
        seconds = time.perf_counter() - t
        save_audio(out / rung / f"{item.id}.wav", wav)
        audio = to_16k(wav)
        row: dict[str, Any] = {"id": item.id, "rung": rung, "seconds": float(wav.durations()[0])}
        if rung not in ("ground_truth", "vae"):
            row["rtf"] = seconds / row["seconds"]
        row.update(judges.score(audio, item, prompt_embedding, truth if rung == "vae" else None))
        if rung == "ground_truth" and other is not None and judges.speaker is not None:
            other_prompt = to_16k(load_reference(other.prompt_wav, tts.sample_rate, tts.policy))
            row["sim_other"] = judges.speaker.similarity(audio, other_prompt)
        rows.append(row)
    return rows


def _rung_audio(
    tts: TTS, rung: str, item: EvalItem, voices: dict[str, Voice], truth: Waveform | None, seed: int
) -> Waveform:
    if rung == "ground_truth":
        assert truth is not None
        return truth
    if rung == "vae":
        assert truth is not None
        return tts.vae.decode(tts.vae.encode(truth))
    if rung == "oracle_flow":
        assert truth is not None
        return tts.resynthesize_tokens(tts.tokenizer.encode(truth), voices["zero_shot"], seed)
    if rung == "streamed":
        chunks = [c.audio for c in tts.stream(item.target_text, voices["zero_shot"], seed=seed)]
        return Waveform.from_list([torch.cat(chunks)], tts.sample_rate)
    return tts.synthesize_batch([item.target_text], [voices[rung]], seed=seed, progress=False)


def wer_ratio(rows: list[dict[str, Any]], rung: str, seed: int = 0) -> tuple[float, float, float] | None:
    """The rung's WER over the recordings' on the same items (total errors over total errors, as the ratio
    of the two mean WERs), with a 95 % interval from a paired bootstrap over the items (``BOOTSTRAP``
    resamples drawn with replacement, each item keeping both its scores): a dozen items of a weak judge
    move the ratio a lot, and the interval says how much. Items on which Whisper ran away on either side
    are left out: one looping transcript (WER 10 or more) would decide the ratio alone, and it measures the
    judge, not the audio. None without paired items or recording errors."""
    truth = {
        r["id"]: r["wer"] for r in rows if r["rung"] == "ground_truth" and "wer" in r and not r.get("runaway")
    }
    pairs = np.array(
        [
            (r["wer"], truth[r["id"]])
            for r in rows
            if r["rung"] == rung and r["id"] in truth and "wer" in r and not r.get("runaway")
        ]
    )
    if not len(pairs) or pairs[:, 1].sum() == 0:
        return None
    draws = _bootstrap_draws(len(pairs), seed)
    rung_errors, truth_errors = pairs[draws, 0].sum(1), pairs[draws, 1].sum(1)
    kept = truth_errors > 0  # resamples of error-free recordings only have no ratio
    low, high = np.percentile(rung_errors[kept] / truth_errors[kept], [2.5, 97.5])
    return float(pairs[:, 0].sum() / pairs[:, 1].sum()), float(low), float(high)


def _bootstrap_draws(n: int, seed: int) -> np.ndarray:
    """(BOOTSTRAP, n) item indices drawn with replacement: one row per resample."""
    return np.random.default_rng(seed).integers(0, n, (BOOTSTRAP, n))


COMPARED = ("wer", "cer", "sim", "dnsmos", "pesq", "stoi")  # per-item metrics two runs are compared on


def read_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-utterance rows an :func:`evaluate` run wrote to ``run_dir/rows.jsonl``."""
    path = Path(run_dir) / ROWS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give the --out folder of an `mmspeech evaluate` run")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare_runs(
    baseline: list[dict[str, Any]], candidate: list[dict[str, Any]], seed: int = 0
) -> list[dict[str, Any]]:
    """Paired comparison of two ladder runs on the items and rungs they share (two trainings, two
    checkpoints, two settings): per rung and metric, the means of both and the mean difference
    (candidate − baseline) with a 95 % interval from a paired bootstrap over the items. Two runs scored on
    the same items differ by much less than their ladders' intervals suggest, as each item's difficulty
    for the judge cancels out. WER and CER leave out items on which Whisper ran away in either run
    (:func:`wer_ratio`'s reason). Raises ValueError when the runs share no scored item."""

    def index(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r["rung"], r["id"]): r for r in rows}

    a, b = index(baseline), index(candidate)
    out = []
    for rung in RUNGS:
        shared = [key for key in a if key[0] == rung and key in b]
        for metric in COMPARED:
            pairs = np.array(
                [
                    (a[k][metric], b[k][metric])
                    for k in shared
                    if metric in a[k]
                    and metric in b[k]
                    and not (metric in ("wer", "cer") and (a[k].get("runaway") or b[k].get("runaway")))
                ]
            )
            if not len(pairs):
                continue
            diffs = pairs[:, 1] - pairs[:, 0]
            low, high = np.percentile(diffs[_bootstrap_draws(len(diffs), seed)].mean(1), [2.5, 97.5])
            out.append(
                {
                    "rung": rung,
                    "metric": metric,
                    "n": len(pairs),
                    "baseline": float(pairs[:, 0].mean()),
                    "candidate": float(pairs[:, 1].mean()),
                    "diff": float(diffs.mean()),
                    "diff_low": float(low),
                    "diff_high": float(high),
                }
            )
    if not out:
        raise ValueError("the two runs share no scored item: were they evaluated on the same list?")
    return out


def comparison_table(rows: list[dict[str, Any]]) -> str:
    """:func:`compare_runs`'s rows as a markdown table."""
    lines = [
        "| rung | metric | n | baseline | candidate | candidate − baseline (95 % CI) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rung']} | {r['metric']} | {r['n']} | {r['baseline']:.3f} | {r['candidate']:.3f} | "
            f"{r['diff']:+.3f} ({r['diff_low']:+.3f} to {r['diff_high']:+.3f}) |"
        )
    lines += [
        "",
        f"paired per item ({BOOTSTRAP} bootstrap resamples); WER and CER without the items on which Whisper "
        "ran away in either run",
    ]
    return "\n".join(lines)


def summarize(rows: list[dict[str, Any]], judges: Judges | None = None) -> dict[str, Any]:
    """Mean of every metric per rung, the median WER, the WER relative to the recordings' (with its
    interval, :func:`wer_ratio`) and the number of runaway transcripts, plus the judges' names."""
    rungs: dict[str, dict[str, float]] = {}
    for rung in RUNGS:
        mine = [r for r in rows if r["rung"] == rung]
        if mine:
            rungs[rung] = {"n": len(mine)} | {
                m: float(np.mean([r[m] for r in mine if m in r]))
                for m in METRICS
                if any(m in r for r in mine)
            }
            if "wer" in rungs[rung]:
                rungs[rung]["wer_median"] = float(np.median([r["wer"] for r in mine if "wer" in r]))
                rungs[rung]["runaway"] = sum(bool(r.get("runaway")) for r in mine)
                ratio = wer_ratio(rows, rung) if rung != "ground_truth" else None
                if ratio is not None:
                    rungs[rung] |= dict(zip(("wer_ratio", "wer_ratio_low", "wer_ratio_high"), ratio))
    return {"rungs": rungs, "judges": judges.names() if judges is not None else {}}


def ladder_table(summary: dict[str, Any]) -> str:
    """The summary as a markdown table, one row per rung."""
    rungs = summary["rungs"]
    cols = [m for m in COLUMNS if any(m in v for v in rungs.values())]
    names = {"wer_ratio": "wer / recordings' (95 % CI)"}
    lines = [
        "| rung | n | " + " | ".join(names.get(c, c) for c in cols) + " |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for rung, v in rungs.items():
        cells = [_cell(v[m]) if m in v else "" for m in cols]
        if "wer_ratio" in v:
            cells[cols.index("wer_ratio")] = (
                f"{v['wer_ratio']:.2f} ({v['wer_ratio_low']:.2f}-{v['wer_ratio_high']:.2f})"
            )
        lines.append(f"| {rung} | {int(v['n'])} | " + " | ".join(cells) + " |")
    if "wer_ratio" in cols:
        lines += [
            "",
            "wer / recordings': the rung's WER over the recordings' on the same items (runaways on either "
            f"side left out), with a paired bootstrap interval ({BOOTSTRAP} resamples of the items)",
        ]
    if "runaway" in cols:
        lines += [
            "",
            f"runaway: items whose transcript has over {RUNAWAY_WORDS:g}x the words said (Whisper looping)",
        ]
    judges = summary.get("judges") or {}
    if judges:
        lines.append("")
        lines.append("Judges: " + "; ".join(f"{k}: {v}" for k, v in judges.items() if v))
    return "\n".join(lines)


def _cell(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:.3f}"
