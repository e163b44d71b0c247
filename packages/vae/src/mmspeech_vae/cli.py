"""``mmspeech-vae``: config presets, GAN training, latent extraction, statistics, reconstruction."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mmspeech_core import load_audio, save_audio
from mmspeech_core.cli import (
    add_command,
    add_config_command,
    add_device_arg,
    add_extraction_args,
    add_train_args,
    load_init_model,
    load_train_config,
    make_parser,
    run,
    run_extract_command,
)
from mmspeech_core.data import read_manifest, split_utterances
from mmspeech_core.training import default_device

from .config import VAEConfig, tiny_config


def _train(args: argparse.Namespace) -> int:
    from .model import DACVAE
    from .train import train

    cfg, init = load_init_model(DACVAE.from_pretrained, args, "vae", load_train_config(VAEConfig, args))
    train_utts, val_utts = split_utterances(read_manifest(args.manifest), args.val_fraction)
    train(cfg, train_utts, args.out, args.device, not args.no_resume, val_utts, init)
    return 0


def _extract(args: argparse.Namespace) -> int:
    from .model import DACVAE

    return run_extract_command(
        args, lambda device: DACVAE.from_pretrained(args.model, device=device), "latents"
    )


def _stats(args: argparse.Namespace) -> int:
    from .infer import latent_stats

    ids = [u.id for u in read_manifest(args.manifest)] if args.manifest else None
    s = latent_stats(args.latents, args.out, ids)
    print(
        f"{int(s['frames'][0])} frames; mean |mu| {sum(map(abs, s['mean'])) / len(s['mean']):.3f} -> {args.out}"
    )
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from .model import DACVAE

    device = default_device(args.device)
    model = DACVAE.from_pretrained(args.model, device=device)
    wav = load_audio(args.input, model.sample_rate)
    save_audio(args.output, model.decode(model.encode(wav)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p, sub = make_parser("mmspeech-vae", "DAC-VAE: 24 kHz audio <-> continuous latents.")
    add_config_command(sub, {"base": VAEConfig, "tiny": tiny_config})
    sp = add_command(sub, "train", "train the VAE (mel + GAN + KL) on a manifest's audio", _train)
    add_train_args(sp)
    sp.add_argument("--manifest", required=True, help="JSONL manifest or wav.scp of training audio")
    sp = add_command(
        sub, "extract", "extract posterior-mean latents for a manifest (torchrun for multi-GPU)", _extract
    )
    add_extraction_args(sp)
    sp.add_argument("--model", required=True, help="pretrained VAE folder")
    sp = add_command(sub, "stats", "per-channel mean/std of an extracted latent folder", _stats)
    sp.add_argument("--latents", required=True, help="latent folder")
    sp.add_argument("--out", required=True, help="output JSON")
    sp.add_argument(
        "--manifest",
        help="only this manifest's utterances (the training split, where the folder holds held-out ones "
        "too); default: every item of the folder",
    )
    sp = add_command(sub, "reconstruct", "encode and decode one file", _reconstruct)
    sp.add_argument("--model", required=True, help="pretrained VAE folder")
    sp.add_argument("--input", required=True, help="input audio (any rate)")
    sp.add_argument("--output", required=True, help="output wav (model rate)")
    add_device_arg(sp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":  # `torchrun -m mmspeech_vae.cli ...`
    raise SystemExit(main())
