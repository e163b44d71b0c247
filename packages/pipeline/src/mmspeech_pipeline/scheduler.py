"""Sentence-level batching for a server: many requests' sentences share one batch per stage.

A request is planned into sentences (:meth:`TTS.plan`) and becomes a :class:`Ticket`. One worker thread
fills each batch round-robin over the tickets that still have sentences to run, so a short request waits
for the batch in flight and then runs in the next one, however long the requests ahead of it are (a
4,000-character request no longer blocks a "Hello!" until it ends; the next batch still lasts as long as
its longest sentence). A cancelled ticket's sentences that have not started are dropped. Each sentence's audio
depends only on its own text, voice and seed (the TTS guarantees batch invariance), never on its
batch-mates or on how the scheduler grouped them.

A streaming ticket (``submit(jobs, on_chunk=...)``) runs its sentences one at a time through
:meth:`TTS.stream_sentence` and hands every audio piece to ``on_chunk`` as it is made, so a client hears
the first chunk of a sentence long before the sentence ends; a cancelled streaming ticket stops between
pieces. Streams are not batched with each other yet: one streamed sentence holds the worker while it runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from .tts import TTS, SentenceJob

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Ticket:
    """One request's sentences and their results, in order."""

    jobs: list[SentenceJob]
    futures: list[Future[torch.Tensor]] = field(default_factory=list)
    scheduled: int = 0  # sentences handed to the worker so far
    # streaming: called from the worker thread with (sentence index, audio piece) as pieces are made, and
    # with (index, None) once that sentence's future is settled (result or error)
    on_chunk: Callable[[int, torch.Tensor | None], None] | None = None
    _cancel: bool = False  # set by cancel(): a running streamed sentence checks it between pieces

    def __post_init__(self) -> None:
        self.futures = [Future() for _ in self.jobs]

    @property
    def one_shot(self) -> bool:
        return self.jobs[0].voice.one_shot

    @property
    def cancelled(self) -> bool:
        return self._cancel or any(f.cancelled() for f in self.futures)

    def cancel(self) -> None:
        """Drop the sentences that have not started (a running batch finishes; its result is discarded; a
        running streamed sentence stops at its next piece)."""
        self._cancel = True
        for f in self.futures:
            f.cancel()

    def done(self) -> bool:
        return all(f.done() for f in self.futures)


class SentenceScheduler:
    """A worker thread that synthesises queued tickets' sentences, ``max_batch`` at a time.

    After an idle spell the worker waits ``window_s`` for batch-mates before it starts; while busy it
    never waits."""

    def __init__(self, tts: TTS, max_batch: int = 8, window_s: float = 0.01) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.tts, self.max_batch, self.window_s = tts, max_batch, window_s
        self._queue: deque[Ticket] = deque()  # tickets with sentences not yet scheduled
        self._cv = threading.Condition()
        self._stopped = False
        self.batch_sizes: list[int] = []  # observability: what the worker actually batched
        self._thread = threading.Thread(target=self._loop, daemon=True, name="mmspeech-scheduler")
        self._thread.start()

    def submit(
        self,
        jobs: Sequence[SentenceJob],
        on_chunk: Callable[[int, torch.Tensor | None], None] | None = None,
    ) -> Ticket:
        """Queue one request's sentences; with ``on_chunk`` it is streamed (see the module docstring)."""
        if not jobs:
            raise ValueError("nothing to synthesise")
        if on_chunk is not None and not self.tts.can_stream:
            raise ValueError("streaming needs a flow with a fixed-step solver (euler, midpoint, rk4)")
        ticket = Ticket(list(jobs), on_chunk=on_chunk)
        with self._cv:
            if self._stopped:
                raise RuntimeError("the scheduler is closed")
            self._queue.append(ticket)
            self._cv.notify()
        return ticket

    def close(self) -> None:
        """Stop the worker after its current batch; queued tickets are cancelled."""
        with self._cv:
            self._stopped = True
            for t in self._queue:
                t.cancel()
            self._queue.clear()
            self._cv.notify()
        self._thread.join(timeout=60)

    @property
    def pending(self) -> int:
        """Sentences queued and not yet started."""
        with self._cv:
            return sum(len(t.jobs) - t.scheduled for t in self._queue if not t.cancelled)

    # ---- worker -------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            self.batch_sizes.append(len(batch))
            self._run(batch)

    def _next_batch(self) -> list[tuple[Ticket, int]] | None:
        with self._cv:
            self._cv.wait_for(lambda: self._stopped or self._live())
            if self._stopped:
                return None
            deadline = time.monotonic() + self.window_s
            while not self._stopped and self._pending_locked() < self.max_batch:
                if (left := deadline - time.monotonic()) <= 0 or not self._cv.wait(left):
                    break
            return self._pick() if not self._stopped else None

    def _live(self) -> bool:
        """Drop cancelled tickets from the queue; is anything left to run?"""
        self._queue = deque(t for t in self._queue if not t.cancelled)
        return bool(self._queue)

    def _pending_locked(self) -> int:
        return sum(len(t.jobs) - t.scheduled for t in self._queue)

    def _pick(self) -> list[tuple[Ticket, int]]:
        """Up to ``max_batch`` sentences, one per ticket per round (the TTS runs one voice mode per batch:
        the first ticket's), then rotate so another ticket leads the next batch. A streaming ticket's
        sentence runs alone when its ticket leads, and is skipped otherwise."""
        self._live()
        lead = self._queue[0]
        batch: list[tuple[Ticket, int]] = []
        if lead.on_chunk is not None:
            batch.append((lead, lead.scheduled))
            lead.scheduled += 1
            self._rotate()
            return batch
        mode = lead.one_shot
        while len(batch) < self.max_batch:
            took = False
            for t in self._queue:
                if t.on_chunk is not None:
                    continue
                if len(batch) < self.max_batch and t.one_shot == mode and t.scheduled < len(t.jobs):
                    batch.append((t, t.scheduled))
                    t.scheduled += 1
                    took = True
            if not took:
                break
        self._rotate()
        return batch

    def _rotate(self) -> None:
        """Another ticket leads the next batch; tickets with every sentence handed out leave the queue."""
        self._queue.rotate(-1)
        self._queue = deque(t for t in self._queue if t.scheduled < len(t.jobs))

    def _run(self, batch: list[tuple[Ticket, int]]) -> None:
        # a future cancelled before its batch starts is skipped; one that started can no longer be cancelled
        live = [(t, k) for t, k in batch if t.futures[k].set_running_or_notify_cancel()]
        if live and live[0][0].on_chunk is not None:
            self._stream(*live[0])
        elif live:
            self._synthesize(live)

    def _stream(self, ticket: Ticket, k: int) -> None:
        """One sentence of a streaming ticket, piece by piece; stops early once the ticket is cancelled."""
        assert ticket.on_chunk is not None
        pieces = []
        try:
            for piece in self.tts.stream_sentence(ticket.jobs[k]):
                if ticket.cancelled:
                    break
                pieces.append(piece)
                ticket.on_chunk(k, piece)
        except Exception as e:
            log.warning("streaming failed for %r: %s", ticket.jobs[k].sentence, e)
            ticket.futures[k].set_exception(e)
            ticket.cancel()
        else:
            ticket.futures[k].set_result(torch.cat(pieces) if pieces else torch.zeros(0))
        ticket.on_chunk(k, None)

    def _synthesize(self, live: list[tuple[Ticket, int]]) -> None:
        try:
            wavs = self.tts.synthesize_sentences([t.jobs[k] for t, k in live])
        except Exception as e:
            if len(live) > 1:  # one failing sentence must not fail its batch-mates: run each alone
                for item in live:
                    self._synthesize([item])
                return
            ticket, k = live[0]
            log.warning("synthesis failed for %r: %s", ticket.jobs[k].sentence, e)
            ticket.futures[k].set_exception(e)
            ticket.cancel()  # the request has failed: its other sentences need not run
            return
        for (t, k), w in zip(live, wavs):
            t.futures[k].set_result(w)
