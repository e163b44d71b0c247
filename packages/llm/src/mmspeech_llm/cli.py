"""``mmspeech-llm``: config presets, BPE text tokenizer training, LM training, token generation."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from mmspeech_core import load_audio
from mmspeech_core.cli import (
    add_command,
    add_config_command,
    add_device_arg,
    add_reference_args,
    add_seed_arg,
    add_train_args,
    load_init_model,
    load_train_config,
    make_parser,
    reference_options,
    run,
)
from mmspeech_core.data import features_fingerprint, load_shards, read_manifest, split_utterances
from mmspeech_core.training import default_device

from .config import LLMConfig, small_config, tiny_config


def _train_bpe(args: argparse.Namespace) -> int:
    from .text import TextTokenizer

    texts = [u.text for u in read_manifest(args.manifest) if u.text]
    if not texts:
        raise SystemExit(f"{args.manifest} has no 'text' fields")
    tok = TextTokenizer.train_bpe(texts, vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    tok.save(args.out)
    print(f"text tokenizer with {tok.vocab_size} tokens saved to {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .data import LLMDataset
    from .model import SpeechLM, backbone_config_from_hf
    from .text import TextTokenizer
    from .train import train

    cfg = load_train_config(LLMConfig, args)
    if args.qwen_pretrained and args.init_from:
        raise ValueError("--qwen-pretrained starts a new LM; --init-from continues a trained one: pick one")
    if args.qwen_pretrained:  # shape and vocab come from the pretrained folder's own config
        b, vocab = backbone_config_from_hf(args.qwen_pretrained)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone=b, text_vocab=vocab))
    cfg, init = load_init_model(SpeechLM.from_pretrained, args, "llm", cfg)
    tok = TextTokenizer.from_pretrained(args.text_tokenizer)
    tokens = load_shards(args.tokens)
    train_utts, val_utts = split_utterances(read_manifest(args.manifest), args.val_fraction)
    ds = LLMDataset(
        train_utts, tokens, tok, cfg, **reference_options(args), cache_references=args.cache_references
    )
    # a held-out speaker rarely has two held-out utterances; self-references only flatter the val loss
    val = LLMDataset(val_utts, tokens, tok, cfg, "self", max_self_fraction=1.0) if val_utts else None
    trained_with = {"text_tokenizer": tok.fingerprint()}
    if (speech_tokenizer := features_fingerprint(args.tokens)) is not None:
        trained_with["tokenizer"] = speech_tokenizer
    model, _ = train(
        cfg, ds, args.out, args.device, not args.no_resume, init, val_dataset=val, trained_with=trained_with
    )
    tok.save(Path(args.out) / "text_tokenizer")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from .model import SpeechLM
    from .text import TextTokenizer

    device = default_device(args.device)
    model = SpeechLM.from_pretrained(args.model, device=device)
    tok = TextTokenizer.from_pretrained(args.text_tokenizer)
    spk = model.embed_speaker(load_audio(args.reference, model.config.model.spk_sample_rate))
    out = model.generate([torch.tensor(tok.encode(args.text))], spk, seed=args.seed)
    torch.save({"tokens": out.unbatch()[0], "frame_rate": out.frame_rate}, args.out)
    print(f"{int(out.lengths[0])} speech tokens ({float(out.durations()[0]):.2f} s) -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p, sub = make_parser(
        "mmspeech-llm", "Stage 1: autoregressive text -> speech-token LM with a learnable speaker encoder."
    )
    add_config_command(sub, {"base": small_config, "tiny": tiny_config})
    sp = add_command(
        sub, "train-bpe", "train a byte-level BPE text tokenizer on a manifest's transcripts", _train_bpe
    )
    sp.add_argument("--manifest", required=True, help="JSONL manifest with 'text'")
    sp.add_argument("--out", required=True, help="output tokenizer folder")
    sp.add_argument("--vocab-size", type=int, default=4000, help="BPE vocabulary size")
    sp.add_argument("--min-frequency", type=int, default=2, help="minimum pair frequency for a merge")
    sp = add_command(
        sub, "train", "train the LM on a manifest (text, speaker, audio) + extracted tokens", _train
    )
    add_train_args(sp, streaming=True)
    sp.add_argument("--manifest", required=True, help="JSONL manifest with id, audio, text, speaker")
    sp.add_argument("--tokens", required=True, help="token folder written by `mmspeech-tokenizer extract`")
    sp.add_argument(
        "--text-tokenizer", required=True, help="local HF tokenizer folder (or one from `train-bpe`)"
    )
    sp.add_argument(
        "--qwen-pretrained", default=None, help="local Qwen2 folder to initialise the backbone from"
    )
    add_reference_args(sp)
    sp.add_argument(
        "--cache-references",
        action="store_true",
        help="keep every reference's log-mels in memory after its first use (a small corpus, few loader workers)",
    )
    sp = add_command(
        sub, "generate", "generate speech tokens for one text and a reference recording", _generate
    )
    sp.add_argument("--model", required=True, help="pretrained LM folder")
    sp.add_argument("--text-tokenizer", required=True, help="text tokenizer folder")
    sp.add_argument("--text", required=True, help="text to speak")
    sp.add_argument(
        "--reference", required=True, help="reference audio of the target voice (any rate; downmixed)"
    )
    sp.add_argument("--out", required=True, help="output .pt with the tokens")
    add_seed_arg(sp, "sampling seed")
    add_device_arg(sp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":  # `torchrun -m mmspeech_llm.cli ...`
    raise SystemExit(main())
