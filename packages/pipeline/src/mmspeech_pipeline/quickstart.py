"""The main job on a fresh CPU machine, with no downloads: synthesise an English multi-speaker corpus with
eSpeak NG (:mod:`.corpus`), train every stage on its training speakers, bundle, synthesise for a held-out
speaker, and score the evaluation ladder (:mod:`.evaluate`) on held-out sentences of held-out speakers.

Sizes (:data:`.recipe.SIZES`): ``tiny`` (the default; about 10 minutes on 2 CPU cores), ``medium`` (the longer CPU
recipe: wider models, more steps and voices, about an hour on 2 CPU cores in bf16) and ``small`` (bigger models on a
larger corpus, with the VAE's GAN: hours on CPU — its GAN steps alone take 10-20 s each on 2 cores — so it is
meant for a GPU). The trainings run two at a time where there are two cores or more (:mod:`.recipe`).
The report (``report.md`` / ``report.json``) gives losses, timings, the ladder table and spectrograms of
every rung, so it shows where quality is lost.
The speech tokenizer here is the trainable CTC-supervised FSQ tokenizer with a small codebook (the official
S3Tokenizer weights cannot be downloaded); the recipe for real data is in the README.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from mmspeech_core import read_audio, save_audio
from mmspeech_core.checkpoint import atomic_write_text

from .bundle import write_bundle
from .corpus import CorpusSplit, build_corpus, load_corpus
from .evaluate import Judges, evaluate, ladder_table
from .recipe import (
    DEFAULT_PRECISION,
    SIZES,
    STAGES,
    StepTimer,
    check_jobs,
    check_precision,
    last_checkpoint,
    result_path,
    train_all,
)
from .tts import TTS
from .voices import resolve_sources

log = logging.getLogger(__name__)
STATE_FILE = "quickstart.json"  # the run's settings and the steps it has finished: what a rerun continues
# everything the quickstart writes in its folder (what --no-resume removes, and nothing else)
OUTPUTS = (
    *("corpus", "features", "runs", "bundle", "eval", "voices", "zero_shot.wav", "one_shot.wav"),
    *("streamed.wav", "report.json", "report.md", "losses.png", "spectrograms.png", STATE_FILE),
)


def run_quickstart(
    out_dir: str | Path,
    size: str = "tiny",
    fast: bool = False,
    seed: int = 0,
    evaluate_items: int | None = None,
    device: str = "cpu",
    minutes: float | None = None,
    sources: Sequence[str] = ("espeak",),
    jobs: int | None = None,
    resume: bool = True,
    precision: str = DEFAULT_PRECISION,
) -> dict[str, Any]:
    """Run everything; returns (and writes to ``out_dir/report.json`` + ``report.md``) the report.

    ``fast`` cuts corpus and steps ~10× (a smoke test for CI): the plumbing is the same.
    ``evaluate_items``: ladder items to score (default: the size's; 0 skips the ladder).
    ``minutes``: a training budget shared by the four stages (:func:`.recipe.stage_budget`: each stops at
    its steps or its share, whichever comes first; corpus, extraction and evaluation come on top).
    ``sources``: the corpus's voice sources (:func:`.voices.make_voices`), checked before anything runs.
    ``jobs``: trainings at a time (:func:`.recipe.train_all`; default two where there are two cores).
    ``precision``: the trainings' arithmetic, bf16 (the default: where the hardware computes it, fp32
    elsewhere) or fp32 (each stage's: :func:`.recipe.precision_amp`).
    ``resume``: run again on the same folder, it continues where an interrupted run stopped — a finished
    corpus and finished trainings are kept, a training cut short resumes from its latest checkpoint (at
    most a tenth of its steps back), extraction and the ladder skip what they have done — provided the
    settings that decide what is trained (size, ``fast``, seed, sources, precision) are the folder's; else it
    stops before anything runs. ``resume=False`` removes the folder's quickstart outputs (:data:`OUTPUTS`)
    first. A folder with such outputs but no :data:`STATE_FILE` is neither continued nor cleared (an
    error)."""
    sources = resolve_sources(sources)
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    if minutes is not None and minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    jobs, precision = check_jobs(jobs), check_precision(precision)  # before anything runs
    preset = SIZES[size]
    if fast:
        preset = dataclasses.replace(
            preset,
            speakers=4,
            utterances=3,
            steps={k: max(4, v // 20) for k, v in preset.steps.items()},
            eval_items=1,
        )
    out = Path(out_dir)
    settings = {"size": size, "fast": fast, "seed": seed, "sources": list(sources), "precision": precision}
    state = _state(out, settings | {"preset": dataclasses.asdict(preset)}, resume)
    torch.manual_seed(seed)
    started = time.perf_counter()
    timed = StepTimer()
    continued = [s for s in ("corpus", *STAGES) if s in state["seconds"] or result_path(out, s).is_file()]
    if "corpus" in continued:
        log.info("quickstart: corpus already made in %s", out / "corpus")
        corpus = load_corpus(out / "corpus")
        timed.seconds["corpus"] = state["seconds"]["corpus"]  # the run that made it
    else:
        corpus = timed(
            "corpus", build_corpus, out / "corpus", preset.speakers, preset.utterances, seed, sources=sources
        )
        _finished(out, state, "corpus", timed.seconds["corpus"])
    trained = timed("trainings", train_all, out, preset, device, minutes, jobs, precision=precision)
    bundle = _bundle(out)
    losses = {n: c for r in trained.values() for n, c in r.losses.items()}
    held_out = {n: c for r in trained.values() for n, c in r.held_out.items()}
    for r in trained.values():
        timed.seconds.update(r.seconds)
    tts = timed("load_bundle", TTS.from_pretrained, bundle, device=device)
    outputs, wavs = _demo(tts, corpus, out, seed, timed)
    n_eval = preset.eval_items if evaluate_items is None else evaluate_items
    ladder = None
    if n_eval:
        ladder = timed(
            "evaluate",
            evaluate,
            tts,
            out / "corpus" / "test.lst",
            out / "eval",
            Judges.load(),
            seed=seed,
            limit=n_eval,
            resume=True,  # items an interrupted run scored (its bundle is this one: trainings never rerun)
        )
    report: dict[str, Any] = {
        "size": size,
        "fast": fast,
        "device": device,
        "minutes": minutes,
        "jobs": jobs,
        "precision": precision,
        # steps an earlier run of this folder finished (their seconds are that run's)
        "continued": continued,
        "steps": preset.steps,
        "steps_done": {n: len(c) for n, c in losses.items()},
        "seconds": timed.seconds,
        "losses": {n: [round(v, 4) for v in c] for n, c in losses.items()},
        "loss_first_last": {
            n: [round(sum(c[:3]) / 3, 4), round(sum(c[-3:]) / 3, 4)] for n, c in losses.items()
        },
        "held_out_losses": held_out,  # stage -> [step, loss on the held-out speakers' sentences]
        "corpus": {
            "train": len(corpus.train),
            "test": len(corpus.test),
            "speakers": preset.speakers,
            "sources": list(sources),
        },
        "outputs": outputs,
        "ladder": ladder,
        "bundle": str(bundle),
    }
    target_id = corpus.test_pairs[0][1].id  # the ladder's first item is the demo's sentence: show its rungs
    for rung in ("vae", "oracle_flow"):
        if (out / "eval" / rung / f"{target_id}.wav").is_file():
            wavs[f"{rung} rung"] = out / "eval" / rung / f"{target_id}.wav"
    report["plots"] = _plot(report, wavs, out)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    return report


def _state(out: Path, settings: dict[str, Any], resume: bool) -> dict[str, Any]:
    """The folder's run state (:data:`STATE_FILE`): its settings and the seconds of each step it finished.
    Checked (resume) or started afresh before anything runs. Only a folder whose state file says a
    quickstart made it is continued or cleared: ``--out .`` in a project with a ``runs/`` of its own must
    not lose it."""
    path = out / STATE_FILE
    if path.is_file():
        state: dict[str, Any] = json.loads(path.read_text())
        if resume:
            _check_settings(out, state["settings"], settings)
            done = ", ".join(state["seconds"]) or "nothing"
            log.info("quickstart: continuing the run in %s (%s done)", out, done)
            return state
        for name in OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    elif found := [n for n in OUTPUTS if (out / n).exists()]:
        raise ValueError(
            f"{out} holds {', '.join(found)} but no {STATE_FILE}, so nothing says a quickstart made them: "
            "none is continued or removed; choose another --out (or remove them yourself)"
        )
    out.mkdir(parents=True, exist_ok=True)
    state = {"settings": settings, "seconds": {}}
    atomic_write_text(path, json.dumps(state, indent=2) + "\n")
    return state


def _check_settings(out: Path, before: dict[str, Any], now: dict[str, Any]) -> None:
    before = {"precision": "fp32"} | before  # a folder from before the precision setting trained in fp32
    if before != now:
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        # each setting's two values, but the preset's (the size's whole recipe, which a release changed)
        values = [f"{k} {before.get(k)!r} there, {now.get(k)!r} now" for k in changed if k != "preset"]
        raise ValueError(
            f"{out} holds a quickstart with other settings ({', '.join(changed)} differ"
            f"{': ' + '; '.join(values) if values else ''}): run it with the same settings to continue it, "
            "start it over with --no-resume, or choose another --out"
        )


def _finished(out: Path, state: dict[str, Any], step: str, seconds: float) -> None:
    state["seconds"][step] = seconds
    atomic_write_text(out / STATE_FILE, json.dumps(state, indent=2) + "\n")


def _bundle(out: Path) -> Path:
    """The trainings' last checkpoints, bundled (parts checked for fit and provenance)."""
    return write_bundle(
        out / "bundle",
        overwrite=True,  # the quickstart's own output folder
        tokenizer=last_checkpoint(out / "runs/tokenizer"),
        text_tokenizer=out / "runs/text_tokenizer",
        llm=last_checkpoint(out / "runs/llm"),
        flow=last_checkpoint(out / "runs/flow"),
        vae=last_checkpoint(out / "runs/vae"),
    )


def _demo(
    tts: TTS, corpus: CorpusSplit, out: Path, seed: int, timed: StepTimer
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Zero-shot, one-shot and streamed speech of a held-out sentence in a held-out speaker's voice."""
    prompt, target = corpus.test_pairs[0]
    text = target.text or ""
    zero = timed("synthesize_zero_shot", tts.synthesize, text, reference=prompt.audio, seed=seed)
    save_audio(out / "zero_shot.wav", zero)
    one = timed(
        "synthesize_one_shot",
        tts.synthesize,
        text,
        reference=prompt.audio,
        reference_text=prompt.text,
        seed=seed,
    )
    save_audio(out / "one_shot.wav", one)
    voice = tts.make_voice(prompt.audio)
    voice.save(out / "voices" / f"{prompt.speaker}.safetensors")
    t = time.perf_counter()
    chunks = list(tts.stream(text, voice, seed=seed))
    timed.seconds["stream"] = round(time.perf_counter() - t, 2)
    save_audio(out / "streamed.wav", torch.cat([c.audio for c in chunks]), tts.sample_rate)
    outputs = {
        "text": text,
        "speaker": prompt.speaker,
        "zero_shot_s": round(float(zero.durations()[0]), 2),
        "one_shot_s": round(float(one.durations()[0]), 2),
        "stream_chunks": len(chunks),
        "stream_first_chunk_latency_s": round(chunks[0].elapsed_s, 3),
    }
    wavs = {
        "prompt (held-out speaker)": Path(prompt.audio),
        "recording of the text": Path(target.audio),
        "zero-shot": out / "zero_shot.wav",
        "one-shot": out / "one_shot.wav",
        "streamed": out / "streamed.wav",
    }
    return outputs, wavs


def _plot(report: dict[str, Any], wavs: dict[str, Path], out: Path) -> list[str]:
    import matplotlib  # heavy and only for the report's pictures: imported when they are drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report["losses"]), figsize=(4 * len(report["losses"]), 3))
    for ax, (name, curve) in zip(axes, report["losses"].items()):
        ax.plot(range(1, len(curve) + 1), curve, label="training")
        if held := report["held_out_losses"].get(name):
            ax.plot(*zip(*held), "o-", label="held-out")
            ax.legend()
        ax.set_title(f"{name} loss")
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out / "losses.png")
    fig, axes = plt.subplots(len(wavs), 1, figsize=(8, 2.2 * len(wavs)), squeeze=False)
    for ax, (name, path) in zip(axes[:, 0], wavs.items()):
        x = read_audio(path, 24000)
        spec = torch.stft(x, 1024, 256, window=torch.hann_window(1024), return_complex=True).abs()
        ax.imshow(spec.clamp_min(1e-5).log().numpy(), origin="lower", aspect="auto")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(out / "spectrograms.png")
    plt.close("all")
    return ["losses.png", "spectrograms.png"]


def _source_names(corpus: dict[str, Any]) -> str:
    names = {"espeak": "eSpeak NG", "flite": "Flite"}
    return " and ".join(names[s] for s in corpus.get("sources", ["espeak"]))


def _markdown(report: dict[str, Any]) -> str:
    t = report["seconds"]
    lines = [
        "# mmspeech quickstart report",
        "",
        f"Size `{report['size']}`{' (fast smoke test)' if report['fast'] else ''}: a corpus of "
        f"{report['corpus']['speakers']} {_source_names(report['corpus'])} voices "
        f"({report['corpus']['train']} training utterances); the four trainings took "
        f"{t['trainings'] / 60:.1f} min on {report['device']} "
        f"({'two side by side' if report['jobs'] == 2 else 'one at a time'}), the whole run "
        f"{report['wall_s'] / 60:.1f} min."
        + (
            f" It continued an earlier run of this folder, which had made {', '.join(report['continued'])}"
            " (their seconds below are that run's)."
            if report["continued"]
            else ""
        ),
        "",
        "| stage | first loss | last loss | held-out loss | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, (first, last) in report["loss_first_last"].items():
        held = report["held_out_losses"].get(name)
        lines.append(
            f"| {name} | {first} | {last} | {held[-1][1] if held else ''} | {t.get('train_' + name.split('_')[0], '')} |"
        )
    o = report["outputs"]
    lines += [
        "",
        f'Held-out speaker {o["speaker"]}, held-out sentence: "{o["text"]}" -> zero_shot.wav ({o["zero_shot_s"]} s), '
        f"one_shot.wav, streamed.wav ({o['stream_chunks']} chunks, first after {o['stream_first_chunk_latency_s']} s).",
        "",
    ]
    if report["ladder"] is not None:
        lines += [
            "## Evaluation ladder (held-out speakers, held-out sentences)",
            "",
            ladder_table(report["ladder"]),
            "",
            "Read each rung against `ground_truth`: the judges' own error on eSpeak speech is not zero.",
            "",
        ]
    lines += ["![losses](losses.png)", "", "![spectrograms](spectrograms.png)", ""]
    return "\n".join(lines)
