"""Micro-batching for the server: concurrent requests to one model become one runtime call.

A request submits a job (its rows and a blocking ``run`` function) and
awaits the result. One worker task per model takes the oldest job and the
jobs that can share its call (same ``key``: same kind of work, same row
shape), waits until they hold ``max_rows`` rows or the oldest has waited
``max_delay`` seconds, then runs them in one call on a thread pool, off the
event loop, and hands each job its own slice of the result. While a call
runs, new jobs queue up and go together into the next one, so a busy model
batches even with ``max_delay=0``.

Given ``arriving`` (how many requests for this model the server has
received but not yet submitted: bodies being read, JSON being parsed), the
wait ends as soon as none is on its way: a lone request runs at once
instead of waiting ``max_delay`` for requests that nobody sent, and
concurrent ones still gather.

A call of a few rows that is known to be quick (under ``INLINE_SECONDS``,
from the calls measured so far) runs on the event loop itself: the hop to a
thread and back costs more CPU than such a call (two wake-ups of the loop),
and with one client it was most of what the server spent per request. Such
a job that finds the batcher idle and nobody on the way runs at once, in
``submit`` itself, without the worker task, its future and two turns of the
loop (about 10 us of the 115 us a small HTTP request cost in-process).

Only asyncio here: nothing knows about HTTP or onnxruntime.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MicroBatcher"]

#: Calls of at most ``INLINE_ROWS`` rows whose measured time is under
#: ``INLINE_SECONDS`` run on the event loop, not on the executor.
INLINE_ROWS = 4
INLINE_SECONDS = 0.0005

#: ``run(payloads) -> results``: one blocking call over the payloads of a
#: batch, one result per payload, in order.
BatchFunction = Callable[[Sequence[Any]], Sequence[Any]]


@dataclass
class _Job:
    key: Hashable
    payload: Any
    rows: int
    run: BatchFunction
    future: asyncio.Future
    arrival: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Gather jobs of one model into calls of up to ``max_rows`` rows.

    Args:
        max_rows: rows per call; a job with more rows runs alone, whole.
        max_delay: seconds the oldest waiting job may wait for others.
        executor: where the blocking ``run`` functions are called.
        on_batch: called with the rows of each call (for metrics).
        arriving: the number of jobs on their way; None waits the whole
            ``max_delay`` (or until ``max_rows``) every time.
    """

    def __init__(
        self,
        *,
        max_rows: int,
        max_delay: float,
        executor: Executor,
        on_batch: Callable[[int], None] | None = None,
        arriving: Callable[[], int] | None = None,
    ) -> None:
        if max_rows < 1 or max_delay < 0:
            raise ValueError(f"max_rows must be >= 1 and max_delay >= 0, got {max_rows} and {max_delay}")
        self.max_rows = max_rows
        self.max_delay = max_delay
        self._executor = executor
        self._on_batch = on_batch
        self._arriving = arriving
        self._queue: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None
        #: Running mean of the seconds a call of at most INLINE_ROWS rows takes; None until one is measured.
        self._small_call: float | None = None

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a call (not those running)."""
        return sum(job.rows for job in self._queue)

    def notify(self) -> None:
        """Wake the waiting worker: the ``arriving`` count went down without a submit."""
        self._arrived.set()

    async def submit(self, key: Hashable, payload: Any, rows: int, run: BatchFunction) -> Any:
        """Queue ``payload`` and return its result once its batch has run.

        Args:
            key: jobs share a call only if their keys are equal.
            payload: what ``run`` receives for this job, in a list with the
                payloads of the other jobs of its batch.
            rows: how many rows the payload holds.
            run: the blocking batch function (the same for equal keys).

        Raises:
            Whatever ``run`` raised for this payload. When a call of several
            jobs fails, each job is run again alone, so one bad request
            cannot fail the others.
        """
        if self._worker is None and self._arriving is not None and self._inline(rows) and self._arriving() <= 0:
            if self._on_batch is not None:
                self._on_batch(rows)
            return self._call_inline(run, [payload])[0]
        job = _Job(key, payload, rows, run, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._arrived.set()
        if self._worker is None:
            self._worker = asyncio.create_task(self._work())
        return await job.future

    def _take(self) -> list[_Job]:
        """The oldest job and the later ones of its key, up to ``max_rows`` rows."""
        first = self._queue.popleft()
        batch, rows, kept = [first], first.rows, deque()
        while self._queue:
            job = self._queue.popleft()
            if job.key == first.key and rows + job.rows <= self.max_rows:
                batch.append(job)
                rows += job.rows
            else:
                kept.append(job)
        self._queue = kept
        return batch

    def _ready_rows(self, key: Hashable) -> int:
        return sum(job.rows for job in self._queue if job.key == key)

    async def _work(self) -> None:
        try:
            while self._queue:
                first = self._queue[0]
                if first.future.done():  # its client went away
                    self._queue.popleft()
                    continue
                deadline = first.arrival + self.max_delay
                while self._ready_rows(first.key) < self.max_rows:
                    if self._arriving is not None and self._arriving() <= 0:
                        break  # nobody else is coming
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        break
                    self._arrived.clear()
                    try:
                        await asyncio.wait_for(self._arrived.wait(), timeout)
                    except TimeoutError:
                        break
                batch = [job for job in self._take() if not job.future.done()]
                if batch:
                    await self._run(batch)
        finally:
            self._worker = None

    def _inline(self, rows: int) -> bool:
        """Whether a call of ``rows`` rows is small and known to be quick: it then runs on the loop."""
        return rows <= INLINE_ROWS and self._small_call is not None and self._small_call < INLINE_SECONDS

    def _call_inline(self, run: BatchFunction, payloads: list) -> Sequence[Any]:
        started = time.perf_counter()
        try:
            return run(payloads)
        finally:
            self._measured(time.perf_counter() - started)

    async def _call(self, run: BatchFunction, payloads: list, rows: int) -> Sequence[Any]:
        """``run(payloads)``: on the loop when `_inline`, else on the executor."""
        if self._inline(rows):
            return self._call_inline(run, payloads)
        started = time.perf_counter()
        results = await asyncio.get_running_loop().run_in_executor(self._executor, run, payloads)
        if rows <= INLINE_ROWS:  # the hop's wait included: an upper bound of the call
            self._measured(time.perf_counter() - started)
        return results

    def _measured(self, seconds: float) -> None:
        self._small_call = seconds if self._small_call is None else 0.9 * self._small_call + 0.1 * seconds

    async def _run(self, batch: list[_Job]) -> None:
        rows = sum(job.rows for job in batch)
        if self._on_batch is not None:
            self._on_batch(rows)
        try:
            results = await self._call(batch[0].run, [job.payload for job in batch], rows)
        except Exception as error:
            if len(batch) == 1:
                _settle(batch[0].future, error=error)
                return
            for job in batch:  # find the culprit: each alone
                try:
                    (result,) = await self._call(job.run, [job.payload], job.rows)
                except Exception as alone:
                    _settle(job.future, error=alone)
                else:
                    _settle(job.future, result=result)
            return
        for job, result in zip(batch, results, strict=True):
            _settle(job.future, result=result)


def _settle(future: asyncio.Future, *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # cancelled while running
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
