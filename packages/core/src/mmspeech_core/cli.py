"""One CLI convention for every package: ``mmspeech-<stage> <command> [options]`` with argparse
subcommands, defaults shown in ``--help``, and ``-v`` for debug logging."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

C = TypeVar("C")
M = TypeVar("M")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults, except where there is none to show (required options, unset ``None``, flags) or the
    help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if (
            "(default:" in (action.help or "")
            or action.required
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
        ):
            return action.help
        return super()._get_help_string(action)


def add_device_arg(
    sp: argparse.ArgumentParser, help: str = "cpu / cuda / cuda:N (default: cuda when available)"
) -> None:
    sp.add_argument("--device", default=None, help=help)


def add_seed_arg(sp: argparse.ArgumentParser, help: str = "sampling and noise seed") -> None:
    sp.add_argument("--seed", type=int, default=0, help=help)


def make_parser(prog: str, description: str) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--debug", action="store_true", help="show the full traceback when a command fails")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    return p, sub


def add_command(
    sub: argparse._SubParsersAction, name: str, help: str, fn: Callable[[argparse.Namespace], int | None]
) -> argparse.ArgumentParser:
    sp = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
    sp.set_defaults(func=fn)
    return sp


def add_extraction_args(sp: argparse.ArgumentParser) -> None:
    """Options shared by the token / latent extraction commands."""
    sp.add_argument(
        "--manifest", required=True, help="JSONL manifest (id, audio[, text, speaker]) or Kaldi wav.scp"
    )
    sp.add_argument("--output-dir", required=True, help="folder for shard-*.safetensors + index/errors files")
    sp.add_argument("--batch-size", type=int, default=16, help="utterances per forward pass")
    sp.add_argument("--shard-size", type=int, default=1000, help="utterances per output shard")
    sp.add_argument(
        "--store-dtype",
        choices=["float16", "bfloat16", "float32"],
        default="float16",
        help="how float features (latents) are stored; training converts them to float32 on the device",
    )
    add_device_arg(sp)
    sp.add_argument(
        "--strict", action="store_true", help="exit 1 if any utterance failed (they are always logged)"
    )


# what a user can cause and fix (bad paths, inputs, configs, checkpoints): exit 2 with one line
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, LookupError, RuntimeError)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse and run one command. A failure prints one line naming the problem (``--debug``: the full
    traceback) and exits 2 for a user error, 1 for anything else."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"{parser.prog}: error: {e}  (--debug shows the traceback)", file=sys.stderr)
        return 2 if isinstance(e, USER_ERRORS) else 1
    finally:
        _close_distributed()


def _close_distributed() -> None:
    """Stop a torchrun process group before the interpreter exits: gloo / NCCL threads still running at
    exit abort the process ("terminate called without an active exception")."""
    dist = sys.modules.get("torch.distributed")  # never imported here: a command that used it did
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_output(path: str, overwrite: bool) -> None:
    """Refuse to replace an existing file unless asked (``--overwrite``)."""
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists: pass --overwrite to replace it")


def add_config_command(sub: argparse._SubParsersAction, presets: dict[str, Callable[[], object]]) -> None:
    """``config --preset NAME --out FILE``: write a preset config as JSON to edit and pass to ``train``."""
    from .config import save_config

    def fn(args: argparse.Namespace) -> int:
        save_config(presets[args.preset](), args.out)
        print(f"wrote {args.preset} config to {args.out}")
        return 0

    sp = add_command(sub, "config", "write a preset config (JSON) to edit and pass to `train --config`", fn)
    sp.add_argument("--preset", choices=sorted(presets), default=sorted(presets)[0], help="which preset")
    sp.add_argument("--out", required=True, help="output JSON path")


def add_train_args(sp: argparse.ArgumentParser, streaming: bool = False) -> None:
    """Options shared by every ``train`` command (``streaming``: the stage trains on extracted feature
    shards and can read them in streaming mode)."""
    sp.add_argument("--config", required=True, help="config JSON (write one with the `config` command)")
    sp.add_argument(
        "--out", required=True, help="run folder: checkpoints, tensorboard logs; resumed if it exists"
    )
    add_device_arg(sp, "cpu / cuda (default: cuda when available; torchrun sets the rank)")
    sp.add_argument("--max-steps", type=int, default=None, help="override train.max_steps from the config")
    sp.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="stop after this many minutes of training even before max-steps; the learning-rate schedule "
        "then follows the clock (train.time_budget_s)",
    )
    sp.add_argument(
        "--no-resume", action="store_true", help="start fresh even if the run folder has a checkpoint"
    )
    sp.add_argument(
        "--init-from",
        default=None,
        help="fine-tune: start from these weights (a bundle, a run folder or a checkpoint folder) with a fresh "
        "optimizer; the model's shape comes from them, the training settings from --config",
    )
    sp.add_argument(
        "--freeze",
        nargs="+",
        default=[],
        metavar="PREFIX",
        help="with --init-from: parameters whose names start with PREFIX are not trained (e.g. backbone)",
    )
    if streaming:
        sp.add_argument(
            "--data",
            choices=["map", "stream"],
            default=None,
            help="override train.data: 'map' draws batches from the whole corpus (random access to the "
            "shards), 'stream' reads the shards one after another through a shuffle buffer of "
            "train.stream_buffer items per loader worker (object stores, network file systems)",
        )
    sp.add_argument(
        "--val-fraction",
        type=float,
        default=0.02,
        help="utterances held out for validation, chosen by id hash (0 disables); run every train.eval_every steps",
    )


def add_reference_args(sp: argparse.ArgumentParser) -> None:
    """How training picks speaker references (see :class:`mmspeech_core.data.ReferencePicker`)."""
    sp.add_argument(
        "--single-speaker-fallback",
        choices=["drop", "self"],
        default="drop",
        help="utterances whose speaker has no other utterance: drop them, or use themselves as reference (leaky)",
    )
    sp.add_argument(
        "--max-self-reference",
        type=float,
        default=0.05,
        help="largest fraction of self-referenced utterances `self` accepts (1.0 accepts any, even no speaker labels)",
    )


def reference_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for the stage datasets from :func:`add_reference_args`'s options."""
    return {"fallback": args.single_speaker_fallback, "max_self_fraction": args.max_self_reference}


def run_extract_command(args: argparse.Namespace, load: Callable[[str], object], desc: str) -> int:
    """Body of every ``extract`` command: torchrun-aware sharding, ``load(device)`` -> encoder, counts,
    exit 1 with ``--strict`` when an utterance failed (failures are always logged to errors-r*.jsonl)."""
    from .data import STORE_DTYPES, extract_features, read_manifest
    from .training import init_distributed

    info = init_distributed(args.device)
    stats = extract_features(
        load(str(info.device)),
        read_manifest(args.manifest),
        args.output_dir,
        args.batch_size,
        args.shard_size,
        info.rank,
        info.world_size,
        desc,
        STORE_DTYPES[args.store_dtype],
    )
    print(f"rank {info.rank}: {stats}")
    return 1 if stats["failed"] and args.strict else 0


def load_init_model(
    load: Callable[[Any], M], args: argparse.Namespace, stage: str, cfg: C
) -> tuple[C, M | None]:
    """``--init-from``: the model it names (``load(folder)``, on the CPU) with ``--freeze`` applied, and
    ``cfg`` with that model's shape (``cfg.model``) in place of the config file's. ``(cfg, None)`` without."""
    import dataclasses

    from .training import freeze, init_weights_dir

    if args.init_from is None:
        if args.freeze:
            raise ValueError(
                "--freeze goes with --init-from (a model trained from scratch trains every part)"
            )
        return cfg, None
    model = load(init_weights_dir(args.init_from, stage))
    if args.freeze:
        freeze(model, args.freeze)  # type: ignore[arg-type]
    return dataclasses.replace(cfg, model=model.config.model), model  # type: ignore[type-var, attr-defined]


def load_train_config(cls: type[C], args: argparse.Namespace) -> C:
    """``--config`` loaded as ``cls``, with ``--max-steps``, ``--minutes`` and ``--data`` applied to its
    ``train`` section."""
    import dataclasses

    from .config import load_config

    cfg = load_config(cls, args.config)
    overrides: dict[str, Any] = {}
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.minutes is not None:
        if args.minutes <= 0:
            raise SystemExit(f"--minutes must be positive, got {args.minutes}")
        overrides["time_budget_s"] = 60 * args.minutes
    if getattr(args, "data", None) is not None:
        overrides["data"] = args.data
    if overrides:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **overrides))  # type: ignore[type-var, attr-defined]
    return cfg
