"""One CLI convention for every package: ``mmspeech-<stage> <command> [options]`` with argparse
subcommands, defaults shown in ``--help``, and ``-v`` for debug logging."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def make_parser(prog: str, description: str) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
    sp.add_argument("--manifest", required=True, help="JSONL manifest (id, audio[, text, speaker]) or Kaldi wav.scp")
    sp.add_argument("--output-dir", required=True, help="folder for shard-*.safetensors + index/errors files")
    sp.add_argument("--batch-size", type=int, default=16, help="utterances per forward pass")
    sp.add_argument("--shard-size", type=int, default=1000, help="utterances per output shard")
    sp.add_argument("--device", default=None, help="cpu / cuda / cuda:N (default: cuda when available)")


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    rc = args.func(args)
    return int(rc or 0)
