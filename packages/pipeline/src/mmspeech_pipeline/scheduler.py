"""Sentence-level batching for a server: many requests' sentences share one batch per stage.

A request is planned into sentences (:meth:`TTS.plan`) and becomes a :class:`Ticket`. One worker thread
fills each batch round-robin over the tickets that still have sentences to run, so a short request waits
for the batch in flight and then runs in the next one, however long the requests ahead of it are (a
4,000-character request no longer blocks a "Hello!" until it ends; the next batch still lasts as long as
its longest sentence). A cancelled ticket's sentences that have not started are dropped. Each sentence's audio
depends only on its own text, voice and seed (the TTS guarantees batch invariance), never on its
batch-mates or on how the scheduler grouped them.

A streaming ticket (``submit(jobs, on_chunk=...)``) hands every audio piece to ``on_chunk`` as it is
made, so a client hears the first chunk of a sentence long before the sentence ends. Concurrent streaming
tickets stream together: the next sentence of each (up to ``max_batch``, one voice mode) runs as one batch
through :meth:`TTS.stream_sentences` (one LM batch, one VAE call per step), each ticket's pieces the same
as alone. A batch of streams ends when its longest sentence does, so a ticket whose sentence ended first
waits for it before its next sentence starts. A cancelled ticket's pieces are dropped at once; the batch
stops when every ticket in it is cancelled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from .tts import TTS, SentenceJob

log = logging.getLogger(__name__)
R = TypeVar("R")
# the idle worker wakes this often. Python runs a signal's handler on the main thread, the next time that
# thread runs Python code, but the kernel may deliver a process-wide SIGTERM to any thread: a main thread
# asleep in an untimed wait would then never see it (``mmspeech serve`` on GPU machines ignored SIGTERM so,
# its main thread parked here: stack dumps of 2026-11-28)
SIGNAL_POLL_S = 0.25


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
    """A worker that synthesises queued tickets' sentences, ``max_batch`` at a time, and runs the other
    model work handed to it (:meth:`call`), so that one thread does all the computing.

    After an idle spell the worker waits ``window_s`` for batch-mates before it starts; while busy it
    never waits. ``thread=True`` starts the worker on a thread of its own; with ``False`` the caller runs
    it (:meth:`run`). On a CPU the thread matters: libgomp (PyTorch's OpenMP) shortens its busy-wait once
    more threads compute than there are cores, so a worker thread beside a main thread that has computed
    (loading the models does) runs elementwise ops up to 3x slower (measured: the tiny preset streams a
    4 s sentence in 1.3 s on the main thread, 2.8-3.4 s on another); ``mmspeech serve`` therefore runs
    the worker on the main thread that loaded the models, and the web server on another."""

    def __init__(self, tts: TTS, max_batch: int = 8, window_s: float = 0.01, thread: bool = True) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.tts, self.max_batch, self.window_s = tts, max_batch, window_s
        self._queue: deque[Ticket] = deque()  # tickets with sentences not yet scheduled
        self._calls: deque[tuple[Future[Any], Callable[[], Any]]] = deque()  # other work, before batches
        self._cv = threading.Condition()
        self._stopped = False
        self.batch_sizes: list[int] = []  # observability: what the worker actually batched
        self._thread: threading.Thread | None = None
        if thread:
            self._thread = threading.Thread(target=self.run, daemon=True, name="mmspeech-scheduler")
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

    def call(self, fn: Callable[[], R]) -> Future[R]:
        """Run ``fn`` on the worker, before the next batch (model work outside synthesis: making a voice)."""
        future: Future[R] = Future()
        with self._cv:
            if self._stopped:
                raise RuntimeError("the scheduler is closed")
            self._calls.append((future, fn))
            self._cv.notify()
        return future

    def close(self) -> None:
        """Stop the worker after its current batch; queued tickets and calls are cancelled."""
        with self._cv:
            self._stopped = True
            for t in self._queue:
                t.cancel()
            for f, _ in self._calls:
                f.cancel()
            self._queue.clear()
            self._calls.clear()
            self._cv.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)

    @property
    def has_thread(self) -> bool:
        """Whether the worker runs on a thread of its own (else someone calls :meth:`run`)."""
        return self._thread is not None

    @property
    def pending(self) -> int:
        """Sentences queued and not yet started."""
        with self._cv:
            return sum(len(t.jobs) - t.scheduled for t in self._queue if not t.cancelled)

    # ---- worker -------------------------------------------------------------------------------------
    def run(self) -> None:
        """The worker loop, on the calling thread, until :meth:`close` (the constructor starts it on a
        thread of its own unless ``thread=False``)."""
        while True:
            with self._cv:
                self._wait_for_work()
                if self._stopped:
                    return
                calls, self._calls = list(self._calls), deque()
            if calls:  # run unlocked: submitting must not wait for them
                self._run_calls(calls)
                continue
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:  # its tickets were cancelled meanwhile, or a call came first
                continue
            self.batch_sizes.append(len(batch))
            self._run(batch)

    def _wait_for_work(self) -> None:
        """Until closed, or a call or a live ticket is queued (the lock held), in timed waits: see
        ``SIGNAL_POLL_S``."""
        while not self._cv.wait_for(
            lambda: self._stopped or bool(self._calls) or self._live(), timeout=SIGNAL_POLL_S
        ):
            pass

    @staticmethod
    def _run_calls(calls: list[tuple[Future[Any], Callable[[], Any]]]) -> None:
        for future, fn in calls:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except Exception as e:
                    future.set_exception(e)

    def _next_batch(self) -> list[tuple[Ticket, int]] | None:
        """The next batch (after waiting ``window_s`` for batch-mates); None once closed."""
        with self._cv:
            self._wait_for_work()
            if self._stopped:
                return None
            deadline = time.monotonic() + self.window_s
            while not self._stopped and self._pending_locked() < self.max_batch:
                if (left := deadline - time.monotonic()) <= 0 or not self._cv.wait(left):
                    break
            if self._stopped:
                return None
            return self._pick() if self._live() else []

    def _live(self) -> bool:
        """Drop cancelled tickets from the queue; is anything left to run?"""
        self._queue = deque(t for t in self._queue if not t.cancelled)
        return bool(self._queue)

    def _pending_locked(self) -> int:
        return sum(len(t.jobs) - t.scheduled for t in self._queue)

    def _pick(self) -> list[tuple[Ticket, int]]:
        """Up to ``max_batch`` sentences, one per ticket per round (the TTS runs one voice mode per batch:
        the first ticket's), then rotate so another ticket leads the next batch. The lead ticket also
        decides streaming or not: a batch of streams takes one sentence from each streaming ticket (the
        next sentence of a stream must wait for its previous one), a synthesis batch none from them."""
        lead = self._queue[0]
        batch: list[tuple[Ticket, int]] = []
        mode, streaming = lead.one_shot, lead.on_chunk is not None
        while len(batch) < self.max_batch:
            took = False
            for t in self._queue:
                if (t.on_chunk is not None) != streaming or (streaming and any(b is t for b, _ in batch)):
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
            self._stream(live)
        elif live:
            self._synthesize(live)

    def _stream(self, live: list[tuple[Ticket, int]]) -> None:
        """Streaming tickets' sentences as one batch, each piece to its ticket's ``on_chunk`` as it is made;
        stops early once every ticket in the batch is cancelled."""
        pieces: list[list[torch.Tensor]] = [[] for _ in live]
        running = set(range(len(live)))  # sentences whose future is not settled yet

        def settle(j: int, error: Exception | None = None) -> None:
            ticket, k = live[j]
            assert ticket.on_chunk is not None
            if error is not None:
                ticket.futures[k].set_exception(error)
                ticket.cancel()  # the request has failed: its other sentences need not run
            else:
                ticket.futures[k].set_result(torch.cat(pieces[j]) if pieces[j] else torch.zeros(0))
            running.discard(j)
            ticket.on_chunk(k, None)

        try:
            for piece in self.tts.stream_sentences([t.jobs[k] for t, k in live]):
                if all(t.cancelled for t, _ in live):
                    break
                ticket, k = live[piece.job]
                if ticket.cancelled:
                    continue
                pieces[piece.job].append(piece.audio)
                assert ticket.on_chunk is not None
                ticket.on_chunk(k, piece.audio)
                if piece.last:
                    settle(piece.job)
        except Exception as e:
            log.warning(
                "streaming failed for %s: %s", [live[j][0].jobs[live[j][1]].sentence for j in running], e
            )
            for j in sorted(running):
                settle(j, e)
        for j in sorted(running):  # cancelled: what was made so far
            settle(j)

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
