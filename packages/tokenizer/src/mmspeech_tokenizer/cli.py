"""``mmspeech-tokenizer``: extract speech tokens (S3Tokenizer v2 or a trained FSQ tokenizer), convert the
official ONNX file, train the CTC-supervised FSQ tokenizer."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mmspeech_core.cli import (
    add_command,
    add_config_command,
    add_extraction_args,
    add_train_args,
    load_train_config,
    make_parser,
    run,
    run_extract_command,
)
from mmspeech_core.data import read_manifest, split_utterances

from .config import FSQTokenizerConfig, tiny_fsq_config
from .infer import load_speech_tokenizer


def _extract(args: argparse.Namespace) -> int:
    return run_extract_command(args, lambda device: load_speech_tokenizer(args.model, device), "tokens")


def _convert(args: argparse.Namespace) -> int:
    from .s3 import S3SpeechTokenizer

    S3SpeechTokenizer.from_pretrained(args.onnx).save_pretrained(args.out)
    print(f"converted {args.onnx} -> {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .train import train

    cfg = load_train_config(FSQTokenizerConfig, args)
    train_utts, val_utts = split_utterances(read_manifest(args.manifest), args.val_fraction)
    train(
        cfg,
        train_utts,
        args.out,
        device=args.device,
        resume=not args.no_resume,
        val_utts=val_utts,
        cache_features=args.cache_features,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p, sub = make_parser(
        "mmspeech-tokenizer",
        "Speech tokens at 25 Hz: S3Tokenizer v2 or a trainable CTC-supervised FSQ tokenizer.",
    )
    sp = add_command(
        sub,
        "extract",
        "tokenize every utterance of a manifest (sharded, resumable; torchrun for multi-GPU)",
        _extract,
    )
    add_extraction_args(sp)
    sp.add_argument(
        "--model", required=True, help="speech_tokenizer_v2.onnx, a converted .pt, or a tokenizer folder"
    )
    sp = add_command(
        sub, "convert", "convert the official speech_tokenizer_v2.onnx into a safetensors folder", _convert
    )
    sp.add_argument("--onnx", required=True, help="local path of speech_tokenizer_v2.onnx")
    sp.add_argument("--out", required=True, help="output folder")
    add_config_command(
        sub,
        {
            "base": FSQTokenizerConfig,
            "tiny": lambda: tiny_fsq_config([]),
        },
    )
    sp = add_command(sub, "train", "train the CTC-supervised FSQ tokenizer on a transcribed manifest", _train)
    add_train_args(sp)
    sp.add_argument("--manifest", required=True, help="JSONL manifest with id, audio, text")
    sp.add_argument(
        "--cache-features",
        action="store_true",
        help="keep every utterance's log-mels in memory after the first epoch (a small corpus, few loader workers)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":  # `torchrun -m mmspeech_tokenizer.cli ...`
    raise SystemExit(main())
