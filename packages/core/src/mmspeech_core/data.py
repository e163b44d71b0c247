"""Manifests, length-bucketed batching, and resumable sharded feature extraction shared by every stage."""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import random
import sys
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import torch
from safetensors import safe_open
from tqdm import tqdm

from .audio import read_audio
from .checkpoint import CheckpointError, atomic_write_text, save_state_dict
from .types import Waveform

log = logging.getLogger(__name__)
L = TypeVar("L")


class ManifestError(ValueError):
    """A manifest line that cannot be parsed."""


@dataclass(slots=True)  # slots: a 10-million-line manifest holds 10 million of these
class Utterance:
    """One manifest entry. ``audio`` is a path; relative paths are resolved against the manifest's folder."""

    id: str
    audio: str
    text: str | None = None
    speaker: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: NO_EXTRA)  # other fields of its line


NO_EXTRA: Mapping[str, Any] = MappingProxyType({})  # shared by the lines without other fields


def read_manifest(path: str | os.PathLike[str]) -> list[Utterance]:
    """JSONL (``{"id", "audio", "text"?, "speaker"?}`` per line) or Kaldi ``wav.scp`` (``id path``)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    out: list[Utterance] = []
    seen: set[str] = set()
    is_jsonl = path.suffix in (".jsonl", ".json")
    with open(path, encoding="utf-8") as f:  # line by line: the file is never in memory whole
        for n, line in enumerate(f, 1):
            u = _manifest_line(path, n, line.strip(), is_jsonl)
            if u is None:
                continue
            if u.id in seen:
                raise ManifestError(f"{path}:{n}: duplicate id {u.id!r}")
            seen.add(u.id)
            if not os.path.isabs(u.audio):
                u.audio = str((path.parent / u.audio).resolve())
            out.append(u)
    return out


def _manifest_line(path: Path, n: int, line: str, is_jsonl: bool) -> Utterance | None:
    """One manifest line -> an Utterance (None for blank and comment lines); speakers are interned (many
    utterances share one)."""
    if not line or line.startswith("#"):
        return None
    if not is_jsonl:
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise ManifestError(f"{path}:{n}: expected 'utt_id path', got {line!r}")
        return Utterance(parts[0], parts[1])
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}:{n}: invalid JSON: {e}") from e
    if not isinstance(d, dict) or "id" not in d or "audio" not in d:
        raise ManifestError(f"{path}:{n}: each line needs 'id' and 'audio'")
    known = {k: d.pop(k) for k in ("id", "audio", "text", "speaker") if k in d}
    speaker = known.get("speaker")
    speaker = sys.intern(speaker) if isinstance(speaker, str) else speaker
    # ids interned: feature indexes of the same corpus then share these strings; a line's emptied dict
    # would still hold its table (~200 bytes), so lines without other fields share one empty mapping
    utt_id = sys.intern(str(known["id"]))
    return Utterance(utt_id, str(known["audio"]), known.get("text"), speaker, dict(d) if d else NO_EXTRA)


def write_manifest(path: str | os.PathLike[str], utts: Iterable[Utterance]) -> None:
    lines = []
    for u in utts:
        d = {"id": u.id, "audio": u.audio, **({"text": u.text} if u.text is not None else {})}
        d.update({"speaker": u.speaker} if u.speaker is not None else {})
        d.update(u.extra)
        lines.append(json.dumps(d, ensure_ascii=False))
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


def length_batches(
    items: Iterable[int], lengths: Sequence[int], max_frames: int, max_batch: int, rng: random.Random
) -> list[list[int]]:
    """``items`` sorted by length (ties in random order) and cut into batches of at most ``max_frames``
    padded frames and ``max_batch`` items, shortest first."""
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in sorted(items, key=lambda i: (lengths[i], rng.random())):
        longest = lengths[i]  # ascending order: the newcomer is the longest
        if cur and (longest * (len(cur) + 1) > max_frames or len(cur) >= max_batch):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


class LengthBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Dynamic batches: items sorted into buckets by length so each batch holds at most ``max_frames``
    padded frames (and at most ``max_batch`` items). Shards batches across ``world_size`` ranks;
    every rank gets the same number of batches (DDP needs that)."""

    def __init__(
        self,
        lengths: Sequence[int],
        max_frames: int,
        max_batch: int = 64,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if max_frames <= 0 or max_batch <= 0:
            raise ValueError("max_frames and max_batch must be positive")
        self.lengths = list(lengths)
        self.max_frames, self.max_batch = max_frames, max_batch
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.epoch = 0
        self._start = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, batch: int) -> None:
        """The next iteration starts at batch ``batch`` of this epoch (a resumed run); later ones at 0."""
        self._start = batch

    def _batches(self) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = random.Random(self.seed + self.epoch)
        batches = length_batches(range(len(self.lengths)), self.lengths, self.max_frames, self.max_batch, rng)
        if self.shuffle:
            rng.shuffle(batches)
        per_rank = math.ceil(len(batches) / self.world_size)
        batches = (batches * (1 + per_rank * self.world_size // max(len(batches), 1)))[
            : per_rank * self.world_size
        ]
        mine = batches[self.rank :: self.world_size]
        self._cache = (self.epoch, mine)
        return mine

    def __iter__(self) -> Iterator[list[int]]:
        start, self._start = self._start, 0
        return iter(self._batches()[start:])

    def __len__(self) -> int:
        return len(self._batches())


class ShardStream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """Streaming mode: collated batches read shard by shard, for storage without fast random access.

    Each epoch the shards are shuffled and dealt to *readers*, one per (rank, DataLoader worker); a reader
    reads its shards' items in stored order through a shuffle buffer of ``buffer`` items, and every
    ``buffer`` items leaving it are sorted by length, cut into batches of at most ``max_frames`` padded
    frames (as :class:`LengthBatchSampler` does) and shuffled. So only ~2 × ``buffer`` items per worker are
    in flight, and the storage is read one shard after another.

    Batches are planned from ``shards`` (each item's shard number) and ``lengths`` alone, before any
    tensor is read, which gives every reader the same number of batches (DDP and FSDP need equal steps:
    a reader with fewer batches repeats its first ones) and an exact resume: :meth:`set_start` skips the
    batches a rank already trained on without reading them. The plan depends on the seed, epoch, number
    of ranks and of workers, not on timing: the DataLoader takes batches from its workers in turn, and
    worker ``w`` yields the rank's batches ``start + w``, ``start + w + W``, …

    ``dataset[i]`` reads item ``i``; ``collate(items)`` makes the batch. Wrap in
    ``DataLoader(stream, batch_size=None, num_workers=num_workers)`` (the loader's worker count must be
    ``num_workers``; workers are started afresh each epoch, so :meth:`set_epoch` reaches them).
    """

    def __init__(
        self,
        dataset: Any,
        shards: Sequence[int],
        lengths: Sequence[int],
        collate: Callable[[list[Any]], Any],
        max_frames: int,
        max_batch: int = 64,
        buffer: int = 1000,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        if len(shards) != len(lengths) or not lengths:
            raise ValueError(f"{len(shards)} shard numbers for {len(lengths)} items (need one per item, >0)")
        if max_frames <= 0 or max_batch <= 0 or buffer <= 0:
            raise ValueError("max_frames, max_batch and buffer must be positive")
        self.dataset, self.collate = dataset, collate
        self.lengths = array("q", lengths)
        self.max_frames, self.max_batch, self.buffer = max_frames, max_batch, buffer
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_workers = num_workers
        by_shard: dict[int, array[int]] = {}
        for i, s in enumerate(shards):
            by_shard.setdefault(s, array("q")).append(i)
        self.shards = [by_shard[s] for s in sorted(by_shard)]  # item indices of each shard, stored order
        self.readers = world_size * max(1, num_workers)
        if len(self.shards) < self.readers:
            log.warning(
                "%d shard(s) for %d readers (ranks x loader workers): some shards are read by several "
                "readers each epoch; write smaller shards (extract --shard-size) for an even split",
                len(self.shards),
                self.readers,
            )
        self.epoch, self.start = 0, 0
        self._counts: dict[int, int] = {}

    def set_epoch(self, epoch: int) -> None:
        """Iterate epoch ``epoch`` next, from its first batch (then :meth:`set_start` to resume within it)."""
        self.epoch, self.start = epoch, 0
        self.batches_per_reader(epoch)  # planned here, once, before the workers copy this object

    def set_start(self, batch: int) -> None:
        """The next iteration starts at this rank's batch ``batch`` of the epoch (a resumed run)."""
        self.start = batch

    def __len__(self) -> int:
        """Batches per epoch on each rank."""
        return self.batches_per_reader(self.epoch) * max(1, self.num_workers)

    def _reader_shards(self, reader: int, epoch: int) -> list[int]:
        order = list(range(len(self.shards)))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        order = order * math.ceil(self.readers / len(order))  # fewer shards than readers: deal again
        return order[reader :: self.readers]

    def _plan(self, reader: int, epoch: int) -> Iterator[list[int]]:
        """The reader's batches of item indices, from lengths alone (no tensor is read)."""
        rng = random.Random(f"{self.seed}:{epoch}:{reader}")
        pool: list[int] = []  # the shuffle buffer
        out: list[int] = []  # items that left it, batched once there are ``buffer`` of them
        for s in self._reader_shards(reader, epoch):
            for i in self.shards[s]:
                if len(pool) < self.buffer:
                    pool.append(i)
                    continue
                j = rng.randrange(self.buffer)
                out.append(pool[j])
                pool[j] = i
                if len(out) == self.buffer:
                    yield from self._batches(out, rng)
                    out = []
        rng.shuffle(pool)
        out += pool
        for k in range(0, len(out), self.buffer):
            yield from self._batches(out[k : k + self.buffer], rng)

    def _batches(self, items: list[int], rng: random.Random) -> list[list[int]]:
        batches = length_batches(items, self.lengths, self.max_frames, self.max_batch, rng)
        rng.shuffle(batches)
        return batches

    def batches_per_reader(self, epoch: int) -> int:
        """Every reader's batch count this epoch: the most any reader plans."""
        if epoch not in self._counts:
            self._counts = {epoch: max(sum(1 for _ in self._plan(r, epoch)) for r in range(self.readers))}
        return self._counts[epoch]

    def _padded_plan(self, reader: int, epoch: int) -> Iterator[list[int]]:
        """The reader's plan, repeated from its start until it has the common count of batches."""
        n = self.batches_per_reader(epoch)
        while n > 0:
            for b in self._plan(reader, epoch):
                yield b
                n -= 1
                if n == 0:
                    return

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        w, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != max(1, self.num_workers):
            raise ValueError(
                f"ShardStream was planned for {self.num_workers} loader worker(s), the loader has {workers}"
            )
        start, epoch = self.start, self.epoch
        # the rank's batch n comes from its reader n mod W (the n // W-th of that reader's batches); the
        # loader asks its workers in turn from worker 0, so worker w serves the batches start + w + kW
        first = start + w
        reader = self.rank * workers + first % workers
        for k, batch in enumerate(self._padded_plan(reader, epoch)):
            if k >= first // workers:
                yield self.collate([self.dataset[i] for i in batch])


# ---------------------------------------------------------------------------------------------------------
# Sharded, resumable extraction (tokens, latents): one safetensors shard per N utterances per rank.


class ShardIndexError(ValueError):
    """A corrupt line inside an extraction index or errors file."""


def _iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of an index / errors file, read line by line (a corpus index is never in memory whole). An
    incomplete last line (a write cut off by a crash) is not a record: its ids count as not done and are
    extracted again. Any other bad line is corruption."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or "id" not in record:
                    raise ValueError("not an object with an 'id'")
            except ValueError as e:
                if not line.endswith("\n"):  # the last line, and its write never finished
                    log.warning("%s: ignoring the incomplete last line (an interrupted write)", path)
                    continue
                raise ShardIndexError(f"{path}:{n}: corrupt line ({e}): {line[:80]!r}") from e
            yield record


def _drop_torn_tail(path: Path) -> None:
    """Cut an unfinished last line (no newline) off ``path``, so the next append starts a fresh line."""
    if not path.is_file():
        return
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(raw.rfind(b"\n") + 1)


class ShardWriter:
    """Collects ``id -> tensor`` and flushes shards ``<out>/shard-r{rank}-{k}.safetensors``.

    ``index-r{rank}.jsonl`` records ``{"id", "shard", "shape"}`` after each shard is safely on disk, so an
    interrupted run resumes by skipping ids already indexed, and readers know every item's length without
    opening a shard. Failures go to ``errors-r{rank}.jsonl``. Tensors are stored compactly
    (:func:`compact`: tokens as int16, floats as ``float_dtype``).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        shard_size: int = 1000,
        rank: int = 0,
        float_dtype: torch.dtype = torch.float16,
    ) -> None:
        self.out = Path(out_dir)
        self.float_dtype = float_dtype
        self.out.mkdir(parents=True, exist_ok=True)
        self.shard_size, self.rank = shard_size, rank
        self.buffer: dict[str, torch.Tensor] = {}
        existing = sorted(self.out.glob(f"shard-r{rank}-*.safetensors"))
        self.next_shard = 1 + max((int(p.stem.rsplit("-", 1)[1]) for p in existing), default=-1)
        self.index_path = self.out / f"index-r{rank}.jsonl"
        self.errors_path = self.out / f"errors-r{rank}.jsonl"
        _drop_torn_tail(self.index_path)  # appending after a torn line would corrupt the next one
        _drop_torn_tail(self.errors_path)
        self.failed = {r["id"] for r in _iter_jsonl(self.errors_path)}

    @staticmethod
    def done_ids(out_dir: str | os.PathLike[str]) -> set[str]:
        return {r["id"] for p in Path(out_dir).glob("index-r*.jsonl") for r in _iter_jsonl(p)}

    def add(self, utt_id: str, value: torch.Tensor) -> None:
        self.buffer[utt_id] = compact(value.detach().cpu(), self.float_dtype).contiguous()
        if len(self.buffer) >= self.shard_size:
            self.flush()

    def error(self, utt_id: str, message: str) -> None:
        """Log a failed utterance; each id is recorded once, however often a resumed run retries it."""
        log.warning("skipping %s: %s", utt_id, message)
        if utt_id in self.failed:
            return
        self.failed.add(utt_id)
        with open(self.errors_path, "a") as f:
            f.write(json.dumps({"id": utt_id, "error": message}) + "\n")

    def flush(self) -> None:
        if not self.buffer:
            return
        name = f"shard-r{self.rank}-{self.next_shard:05d}.safetensors"
        save_state_dict(self.buffer, self.out / name)
        with open(self.index_path, "a") as f:
            for k, v in self.buffer.items():
                f.write(json.dumps({"id": k, "shard": name, "shape": list(v.shape)}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.next_shard += 1
        self.buffer = {}


STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def compact(x: torch.Tensor, float_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """The storage form of a feature: integers in the narrowest of int16 / int32 / int64 that holds them
    (speech tokens fit int16), floats as ``float_dtype``. Readers convert back on the device."""
    if x.is_floating_point():
        return x.to(float_dtype)
    if x.numel() == 0:
        return x.to(torch.int16)
    lo, hi = int(x.min()), int(x.max())
    for dtype in (torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return x.to(dtype)
    return x.to(torch.int64)


class FeatureStore(Mapping[str, torch.Tensor]):
    """A folder written by :class:`ShardWriter`, read on demand: ``store[id]`` reads one tensor from its
    memory-mapped shard. Only the index (id -> shard, shape) lives in memory, so a corpus far larger than
    RAM trains the same way as a small one.

    At most ``max_open`` shards are kept open (least recently used closed first): an open shard's pages
    that were read count in the process's RSS until it closes. Pickles without its open files, so
    DataLoader workers each open their own. Shapes come from the index (written since 0.2) or, for older
    folders, from the shard headers (read once, without the tensors)."""

    def __init__(self, out_dir: str | os.PathLike[str], max_open: int = 32) -> None:
        self.dir, self.max_open = Path(out_dir), max_open
        self._shards: list[str] = []  # shard file names; items point into this list
        # per item, compactly (~120 bytes with its id): position, shard number, last dim, leading dims
        self._pos: dict[str, int] = {}
        self._shard_of = array("i")
        self._last = array("q")
        self._lead: list[tuple[int, ...]] = []  # interned: items of one kind share one tuple
        self._open: OrderedDict[int, Any] = OrderedDict()
        leads: dict[tuple[int, ...], tuple[int, ...]] = {}
        shard_ids: dict[str, int] = {}
        unknown: list[int] = []
        for p in sorted(self.dir.glob("index-r*.jsonl")):
            for r in _iter_jsonl(p):
                k = shard_ids.setdefault(r["shard"], len(shard_ids))
                shape = tuple(r.get("shape", (-1,)))
                if "shape" not in r:
                    unknown.append(len(self._last))
                self._pos[sys.intern(r["id"])] = len(self._last)  # shared with the manifest's ids
                self._shard_of.append(k)
                self._last.append(shape[-1] if shape else 1)
                self._lead.append(leads.setdefault(shape[:-1], shape[:-1]))
        self._shards = list(shard_ids)
        ids = list(self._pos)
        for i in unknown:  # folders written before the index had shapes: read the shard headers
            shape = tuple(self._handle(self._shard_of[i]).get_slice(ids[i]).get_shape())
            self._last[i] = shape[-1] if shape else 1
            self._lead[i] = leads.setdefault(shape[:-1], shape[:-1])

    def __getitem__(self, utt_id: str) -> torch.Tensor:
        k = self._shard_of[self._pos[utt_id]]
        try:
            return self._handle(k).get_tensor(utt_id)  # type: ignore[no-any-return]
        except Exception as e:
            raise CheckpointError(f"{self.dir / self._shards[k]}: cannot read {utt_id!r}: {e}") from e

    def __iter__(self) -> Iterator[str]:
        return iter(self._pos)

    def __len__(self) -> int:
        return len(self._pos)

    def __contains__(self, utt_id: object) -> bool:
        return utt_id in self._pos

    def shape(self, utt_id: str) -> tuple[int, ...]:
        """The stored tensor's shape, without reading it."""
        i = self._pos[utt_id]
        return (*self._lead[i], self._last[i])

    def length(self, utt_id: str) -> int:
        """Frames of an item (its last dimension), without reading it."""
        return self._last[self._pos[utt_id]]

    def shard(self, utt_id: str) -> int:
        """The number of the shard that holds an item (shards numbered in the order the index lists them)."""
        return self._shard_of[self._pos[utt_id]]

    def _handle(self, k: int) -> Any:
        if k in self._open:
            self._open.move_to_end(k)
            return self._open[k]
        path = self.dir / self._shards[k]
        try:
            handle = safe_open(str(path), framework="pt")
        except Exception as e:
            raise CheckpointError(f"feature shard {path} is missing or corrupted: {e}") from e
        self._open[k] = handle
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return handle

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": OrderedDict()}


def feature_length(features: Mapping[str, torch.Tensor], utt_id: str) -> int:
    """Frames (last dimension) of one item: from the index of a :class:`FeatureStore`, without reading."""
    if isinstance(features, FeatureStore):
        return features.length(utt_id)
    return int(features[utt_id].shape[-1])


def feature_shards(features: Mapping[str, torch.Tensor], ids: Sequence[str], group: int = 1000) -> list[int]:
    """The shard of each item, for streaming (:class:`ShardStream`): from a :class:`FeatureStore`'s index;
    for an in-memory mapping, consecutive groups of ``group`` items."""
    if isinstance(features, FeatureStore):
        return [features.shard(i) for i in ids]
    return [k // group for k in range(len(ids))]


def load_shards(out_dir: str | os.PathLike[str]) -> FeatureStore:
    """The extracted features of a folder written by :class:`ShardWriter`, as a lazy ``id -> tensor``
    mapping (:class:`FeatureStore`)."""
    return FeatureStore(out_dir)


def run_extraction(
    utts: Sequence[Utterance],
    load: Callable[[Utterance], L],
    process: Callable[[list[L]], list[torch.Tensor]],
    out_dir: str | os.PathLike[str],
    batch_size: int = 16,
    shard_size: int = 1000,
    rank: int = 0,
    world_size: int = 1,
    desc: str = "extract",
    float_dtype: torch.dtype = torch.float16,
) -> dict[str, int]:
    """Extract features for this rank's share of ``utts``, skipping ids already done; floats are stored as
    ``float_dtype``.

    ``load(utt)`` reads one utterance (unreadable audio is logged to the errors file and skipped on its
    own); ``process(loaded_batch)`` returns one tensor per item. A failing batch is retried item by item so
    one bad input never drops its neighbours. Returns counts ``{"done", "skipped", "failed"}``.
    """
    done = ShardWriter.done_ids(out_dir)
    mine = [u for i, u in enumerate(utts) if i % world_size == rank]
    todo = [u for u in mine if u.id not in done]
    writer = ShardWriter(out_dir, shard_size, rank, float_dtype)
    stats = {"done": 0, "skipped": len(mine) - len(todo), "failed": 0}
    batch: list[tuple[Utterance, L]] = []

    def run_batch(items: list[tuple[Utterance, L]]) -> None:
        try:
            outs = process([x for _, x in items])
        except Exception as e:  # one bad batch must not kill a long job: retry items one by one
            if len(items) == 1:
                writer.error(items[0][0].id, f"{type(e).__name__}: {e}")
                stats["failed"] += 1
                return
            for one in items:
                run_batch([one])
            return
        for (it, _), o in zip(items, outs):
            writer.add(it.id, o)
            stats["done"] += 1

    with tqdm(total=len(todo), desc=desc, disable=rank != 0, unit="utt") as bar:
        for u in todo:
            try:
                loaded = load(u)
            except Exception as e:
                writer.error(u.id, f"{type(e).__name__}: {e}")
                stats["failed"] += 1
                bar.update(1)
                continue
            batch.append((u, loaded))
            if len(batch) == batch_size:
                run_batch(batch)
                bar.update(len(batch))
                batch = []
        if batch:
            run_batch(batch)
            bar.update(len(batch))
    writer.flush()
    return stats


class SpeakerReferenceError(ValueError):
    """The corpus cannot give every training item a speaker reference from another utterance."""


class EpochItems:
    """A dataset whose items draw their random numbers (references, crops, layouts) from
    :meth:`item_rng`: a function of the dataset's seed, the epoch and the item alone. An item then draws the
    same in every loader worker, on every rank and in a resumed run (which skips the batches it trained on
    without reading them), and something else the next epoch (:func:`~mmspeech_core.training.train_loader`'s
    ``set_epoch`` passes the epoch on). Validation sets stay at epoch 0: the same draws at every evaluation.
    A generator kept by the dataset would instead carry on from item to item, so which items a run had read
    (and in which worker) would change what the next one drew."""

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def item_rng(self, k: int) -> random.Random:
        return random.Random(f"{self.seed}:{self.epoch}:{k}")  # str seeds hash alike in every process


class ReferencePicker:
    """Speaker references for training: for utterance i, another utterance of the same speaker.

    MiniMax-Speech trains the speaker encoder on a *different* utterance than the target; using the target
    itself leaks its content ("semantic leakage"). Utterances whose speaker has no other utterance (or no
    speaker label) take ``fallback``: ``"drop"`` (the default since 0.2; was ``"self"``) removes them (see
    :attr:`usable`); ``"self"`` uses the target itself, and is refused when more than ``max_self_fraction``
    of the corpus would be self-referenced unless that fraction is raised explicitly. A corpus with no
    speaker labels at all is refused either way unless ``max_self_fraction`` is 1.
    """

    FIX = (
        "give every manifest line a 'speaker' field (`mmspeech prepare` takes it from the parent folder: "
        "DIR/<speaker>/<file>.wav), use --single-speaker-fallback drop to train without them, or accept the "
        "leakage explicitly with --max-self-reference 1.0"
    )

    def __init__(
        self,
        speakers: Sequence[str | None],
        fallback: str = "drop",
        max_self_fraction: float = 0.05,
    ) -> None:
        if fallback not in ("self", "drop"):
            raise ValueError(f"fallback must be 'self' or 'drop', got {fallback!r}")
        self.by_spk: dict[str, array[int]] = {}  # arrays: ~4 bytes per utterance, not ~36
        for i, s in enumerate(speakers):
            if s is not None:
                self.by_spk.setdefault(s, array("i")).append(i)
        self.speakers = list(speakers)
        self.fallback = fallback
        self.single = [i for i, s in enumerate(speakers) if s is None or len(self.by_spk[s]) < 2]
        self._check(max_self_fraction)

    def _check(self, max_self_fraction: float) -> None:
        n, n_single = len(self.speakers), len(self.single)
        if not self.by_spk and max_self_fraction < 1.0:
            raise SpeakerReferenceError(f"none of the {n} utterances has a speaker label: {self.FIX}")
        if self.fallback == "drop":
            if n_single == n:
                raise SpeakerReferenceError(
                    f"no speaker has two utterances, so nothing is left to train on: {self.FIX}"
                )
            if n_single:
                log.warning(
                    "%d of %d utterance(s) have no other utterance of their speaker: dropped", n_single, n
                )
            return
        if n_single > max_self_fraction * n:
            raise SpeakerReferenceError(
                f"{n_single} of {n} utterances ({n_single / n:.0%}) would be their own speaker reference, more "
                f"than the {max_self_fraction:.0%} allowed: {self.FIX}"
            )
        if n_single:
            log.warning("%d of %d utterance(s) are their own reference (leakage risk)", n_single, n)

    @property
    def usable(self) -> array[int]:
        """Indices that can be trained on under this fallback."""
        bad = set(self.single) if self.fallback == "drop" else set()
        return array("i", (i for i in range(len(self.speakers)) if i not in bad))

    @property
    def num_self(self) -> int:
        """Items that are their own reference."""
        return len(self.single) if self.fallback == "self" else 0

    def __call__(self, i: int, rng: random.Random) -> int:
        """The reference of utterance ``i``, drawn with ``rng`` (the item's: :meth:`EpochItems.item_rng`)."""
        s = self.speakers[i]
        pool = self.by_spk.get(s) if s is not None else None
        if pool is None or len(pool) < 2:
            if self.fallback == "drop":
                raise ValueError(f"utterance {i} has no other utterance of its speaker")
            return i
        j = rng.randrange(len(pool) - 1)  # the j-th of the others: skip i itself (pools ascend)
        return pool[j] if j < bisect.bisect_left(pool, i) else pool[j + 1]


SOURCE_NAME = "source.json"


def features_fingerprint(out_dir: str | os.PathLike[str]) -> str | None:
    """Fingerprint of the model that extracted a feature folder (None if it was not recorded)."""
    p = Path(out_dir) / SOURCE_NAME
    return str(json.loads(p.read_text())["fingerprint"]) if p.is_file() else None


def _record_source(encoder: Any, out_dir: str | os.PathLike[str], write: bool) -> None:
    """Write which model extracts into ``out_dir``; refuse to mix features of two models in one folder."""
    fingerprint = getattr(encoder, "fingerprint", None)
    if fingerprint is None:
        return
    fp, done = fingerprint(), features_fingerprint(out_dir)
    if done is not None and done != fp:
        raise ValueError(
            f"{out_dir} holds features of another model (fingerprint {done}, this one {fp}): "
            "extract into a new folder"
        )
    if done is None and write:
        atomic_write_text(Path(out_dir) / SOURCE_NAME, json.dumps({"fingerprint": fp}) + "\n")


def extract_features(
    encoder: Any,
    utts: Sequence[Utterance],
    out_dir: str | os.PathLike[str],
    batch_size: int = 16,
    shard_size: int = 1000,
    rank: int = 0,
    world_size: int = 1,
    desc: str = "extract",
    float_dtype: torch.dtype = torch.float16,
) -> dict[str, int]:
    """Encode every utterance with ``encoder`` (anything with ``sample_rate`` and ``encode(Waveform)``
    returning a padded container: a speech tokenizer, a VAE) into ``out_dir`` shards. See :func:`run_extraction`."""
    sr = encoder.sample_rate
    _record_source(encoder, out_dir, write=rank == 0)

    def process(items: list[torch.Tensor]) -> list[torch.Tensor]:
        return encoder.encode(Waveform.from_list(items, sr)).unbatch()  # type: ignore[no-any-return]

    return run_extraction(
        utts,
        lambda u: read_audio(u.audio, sr),
        process,
        out_dir,
        batch_size,
        shard_size,
        rank,
        world_size,
        desc,
        float_dtype,
    )


def holdout(ids: Sequence[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic train / validation split by a hash of each id: the same id always lands on the same
    side, whatever else the corpus holds (adding data never leaks validation items into training)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must lie in [0, 1), got {fraction}")
    cut = int(fraction * 2**32)
    val = {i for i in ids if zlib.crc32(f"{seed}:{i}".encode()) < cut}
    return [i for i in ids if i not in val], [i for i in ids if i in val]


def split_utterances(
    utts: Sequence[Utterance], fraction: float, seed: int = 0
) -> tuple[list[Utterance], list[Utterance] | None]:
    """(train, validation or None) by :func:`holdout` on the ids."""
    _, val_ids = holdout([u.id for u in utts], fraction, seed)
    val = set(val_ids)
    return [u for u in utts if u.id not in val], ([u for u in utts if u.id in val] or None)
