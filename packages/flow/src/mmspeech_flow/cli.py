"""``mmspeech-flow``: config presets, training, and latent generation from extracted tokens."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from mmspeech_core import Latents, SpeechTokens
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
from mmspeech_core.data import ShardWriter, features_fingerprint, load_shards, read_manifest
from mmspeech_core.training import default_device

from .config import FlowConfig, tiny_config


def _train(args: argparse.Namespace) -> int:
    from .data import FlowDataset
    from .model import FlowModel
    from .train import train

    cfg = load_train_config(FlowConfig, args)
    if args.latent_stats and args.init_from:
        raise ValueError("--latent-stats goes with a new model; --init-from weights carry their own")
    if args.latent_stats:  # written by `mmspeech-vae stats`
        stats = json.loads(Path(args.latent_stats).read_text())
        model = dataclasses.replace(cfg.model, latent_mean=stats["mean"], latent_std=stats["std"])
        cfg = dataclasses.replace(cfg, model=model)
    cfg, init = load_init_model(FlowModel.from_pretrained, args, "flow", cfg)
    ds, val = FlowDataset.from_dirs(
        args.tokens,
        args.latents,
        cfg.model.ratio,
        read_manifest(args.manifest),
        args.val_fraction,
        **reference_options(args),
    )
    sources = {"tokenizer": features_fingerprint(args.tokens), "vae": features_fingerprint(args.latents)}
    trained_with = {part: fp for part, fp in sources.items() if fp is not None}
    train(
        cfg, ds, args.out, args.device, not args.no_resume, init, val_dataset=val, trained_with=trained_with
    )
    return 0


def _generate(args: argparse.Namespace) -> int:
    from .model import FlowModel

    device = default_device(args.device)
    model = FlowModel.from_pretrained(args.model, device=device)
    c = model.config.model
    tokens, latents = load_shards(args.tokens), load_shards(args.reference_latents)
    ids = sorted(tokens)
    ref = latents[args.reference_id] if args.reference_id else None
    writer = ShardWriter(args.output_dir)
    for k in range(0, len(ids), args.batch_size):
        chunk = ids[k : k + args.batch_size]
        refs = [(ref if ref is not None else latents[i]).float() for i in chunk]  # stored half precision
        spk = model.embed_speaker(Latents.from_list(refs, c.latent_rate))
        out = model.generate(
            SpeechTokens.from_list([tokens[i] for i in chunk], c.token_rate), spk, seed=args.seed
        )
        for i, x in zip(chunk, out.unbatch()):
            writer.add(i, x)
    writer.flush()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p, sub = make_parser(
        "mmspeech-flow", "Stage 2: conditional flow matching from speech tokens to VAE latents."
    )
    add_config_command(sub, {"base": FlowConfig, "tiny": tiny_config})
    sp = add_command(sub, "train", "train a flow model on extracted tokens + latents", _train)
    add_train_args(sp, streaming=True)
    sp.add_argument("--tokens", required=True, help="token folder written by `mmspeech-tokenizer extract`")
    sp.add_argument("--latents", required=True, help="latent folder written by `mmspeech-vae extract`")
    sp.add_argument(
        "--manifest", required=True, help="manifest with speaker labels (speaker references come from them)"
    )
    sp.add_argument(
        "--latent-stats",
        default=None,
        help="JSON from `mmspeech-vae stats`: the flow models standardised latents",
    )
    add_reference_args(sp)
    sp = add_command(sub, "generate", "generate latents for every utterance of a token folder", _generate)
    sp.add_argument("--model", required=True, help="pretrained flow folder")
    sp.add_argument("--tokens", required=True, help="token folder (shards)")
    sp.add_argument("--reference-latents", required=True, help="latent folder holding speaker references")
    sp.add_argument(
        "--reference-id", default=None, help="one reference id for all (default: each utterance's own)"
    )
    sp.add_argument("--output-dir", required=True, help="where generated latent shards go")
    sp.add_argument("--batch-size", type=int, default=8, help="utterances per batch")
    add_seed_arg(sp, "noise seed (item i of a batch uses seed+i)")
    add_device_arg(sp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":  # `torchrun -m mmspeech_flow.cli ...`
    raise SystemExit(main())
