"""export.batching: concurrent jobs share calls, each gets its own result, failures stay with their job."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from export.batching import MicroBatcher


class Recorder:
    """A batch function that doubles numbers and records each call's payloads."""

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[list] = []
        self.gate = gate

    def __call__(self, payloads):
        if self.gate is not None:
            self.gate.wait(5)
        self.calls.append(list(payloads))
        if any(p == "bad" for p in payloads):
            raise ValueError("bad payload")
        return [[2 * x for x in p] for p in payloads]


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture
def executor():
    with ThreadPoolExecutor(1) as pool:
        yield pool


def test_concurrent_jobs_share_one_call_and_get_their_own_rows(executor):
    record = Recorder()

    async def main():
        batcher = MicroBatcher(max_rows=100, max_delay=0.5, executor=executor)
        jobs = [batcher.submit("k", [i, i + 1], 2, record) for i in range(0, 20, 2)]
        return await asyncio.gather(*jobs)

    results = run(main())
    assert results == [[2 * i, 2 * i + 2] for i in range(0, 20, 2)]
    assert len(record.calls) == 1  # 20 rows < max_rows: one call after the delay


def test_max_rows_caps_a_call_and_a_full_batch_does_not_wait(executor):
    record = Recorder()
    sizes = []

    async def main():
        batcher = MicroBatcher(max_rows=4, max_delay=30, executor=executor, on_batch=sizes.append)
        jobs = [batcher.submit("k", [i], 1, record) for i in range(8)]
        return await asyncio.wait_for(asyncio.gather(*jobs), 10)  # a 30 s wait would time out

    assert run(main()) == [[2 * i] for i in range(8)]
    assert sizes == [4, 4]
    assert [len(c) for c in record.calls] == [4, 4]


def test_a_job_larger_than_max_rows_runs_alone(executor):
    record = Recorder()

    async def main():
        batcher = MicroBatcher(max_rows=2, max_delay=0, executor=executor)
        return await asyncio.gather(batcher.submit("k", [1, 2, 3], 3, record), batcher.submit("k", [4], 1, record))

    assert run(main()) == [[2, 4, 6], [8]]
    assert record.calls == [[[1, 2, 3]], [[4]]]


def test_jobs_of_other_keys_never_share_a_call(executor):
    record = Recorder()

    async def main():
        batcher = MicroBatcher(max_rows=10, max_delay=0.05, executor=executor)
        jobs = [batcher.submit(i % 2, [i], 1, record) for i in range(6)]
        return await asyncio.gather(*jobs)

    assert run(main()) == [[2 * i] for i in range(6)]
    assert sorted(record.calls) == [[[0], [2], [4]], [[1], [3], [5]]]


def test_jobs_arriving_during_a_call_go_into_the_next(executor):
    gate = threading.Event()
    record = Recorder(gate)

    async def main():
        batcher = MicroBatcher(max_rows=10, max_delay=0, executor=executor)
        first = asyncio.ensure_future(batcher.submit("k", [0], 1, record))
        await asyncio.sleep(0.05)  # the first call is now blocked on the gate
        later = [asyncio.ensure_future(batcher.submit("k", [i], 1, record)) for i in (1, 2, 3)]
        await asyncio.sleep(0.05)
        assert batcher.queued_rows == 3
        gate.set()
        return await asyncio.gather(first, *later)

    assert run(main()) == [[0], [2], [4], [6]]
    assert [len(c) for c in record.calls] == [1, 3]


def test_a_failing_job_fails_alone(executor):
    record = Recorder()

    async def main():
        batcher = MicroBatcher(max_rows=10, max_delay=0.05, executor=executor)
        jobs = [batcher.submit("k", p, 1, record) for p in ([1], "bad", [3])]
        return await asyncio.gather(*jobs, return_exceptions=True)

    good, bad, other = run(main())
    assert good == [2] and other == [6]
    assert isinstance(bad, ValueError) and str(bad) == "bad payload"


def test_a_cancelled_job_is_skipped(executor):
    record = Recorder()

    async def main():
        batcher = MicroBatcher(max_rows=10, max_delay=0.1, executor=executor)
        gone = asyncio.ensure_future(batcher.submit("k", [1], 1, record))
        kept = asyncio.ensure_future(batcher.submit("k", [2], 1, record))
        await asyncio.sleep(0)
        gone.cancel()
        return await kept

    assert run(main()) == [4]
    assert record.calls == [[[2]]]


def test_invalid_settings():
    with pytest.raises(ValueError):
        MicroBatcher(max_rows=0, max_delay=0, executor=None)


def test_with_nobody_arriving_a_lone_job_does_not_wait(executor):
    record = Recorder()

    async def main():
        batcher = MicroBatcher(max_rows=10, max_delay=30, executor=executor, arriving=lambda: 0)
        return await asyncio.wait_for(batcher.submit("k", [1], 1, record), 10)  # not 30 s

    assert run(main()) == [2]


def test_the_wait_lasts_while_jobs_are_arriving(executor):
    record = Recorder()
    arriving = [1]

    async def main():
        batcher = MicroBatcher(max_rows=10, max_delay=30, executor=executor, arriving=lambda: arriving[0])
        first = asyncio.ensure_future(batcher.submit("k", [1], 1, record))
        await asyncio.sleep(0.2)
        assert not first.done()  # waiting for the one on its way
        arriving[0] = 0
        second = asyncio.ensure_future(batcher.submit("k", [2], 1, record))
        return await asyncio.wait_for(asyncio.gather(first, second), 10)

    assert run(main()) == [[2], [4]]
    assert record.calls == [[[1], [2]]]


def test_notify_ends_the_wait_when_an_arrival_fails(executor):
    record = Recorder()
    arriving = [1]

    async def main():
        batcher = MicroBatcher(max_rows=10, max_delay=30, executor=executor, arriving=lambda: arriving[0])
        first = asyncio.ensure_future(batcher.submit("k", [1], 1, record))
        await asyncio.sleep(0.1)
        arriving[0] = 0  # that request was refused before it reached the batcher
        batcher.notify()
        return await asyncio.wait_for(first, 10)

    assert run(main()) == [2]


def test_small_quick_calls_run_on_the_loop_and_slow_or_large_ones_on_the_executor(executor):
    import time

    from export.batching import INLINE_ROWS

    def where(payloads):
        return [threading.current_thread().name for _ in payloads]

    def slow(payloads):
        time.sleep(0.002)
        return where(payloads)

    async def main():
        batcher = MicroBatcher(max_rows=100, max_delay=0, executor=executor)
        quick = [await batcher.submit("q", [1], 1, where) for _ in range(5)]
        large = await batcher.submit("l", list(range(INLINE_ROWS + 1)), INLINE_ROWS + 1, where)
        other = MicroBatcher(max_rows=100, max_delay=0, executor=executor)
        slowly = [await other.submit("s", [1], 1, slow) for _ in range(5)]
        return quick, large, slowly

    quick, large, slowly = run(main())
    loop_thread = threading.current_thread().name
    assert quick[0] != loop_thread and all(name == loop_thread for name in quick[1:])  # measured first, then inline
    assert large != loop_thread
    assert all(name != loop_thread for name in slowly)


def test_a_lone_quick_job_runs_in_submit_and_one_with_others_arriving_waits_for_them(executor):
    arriving = [0]
    calls = []

    def record(payloads):
        try:
            task = asyncio.current_task()
        except RuntimeError:  # on the executor's thread
            task = None
        calls.append((task, len(payloads)))
        return [p * 2 for p in payloads]

    async def main():
        batcher = MicroBatcher(max_rows=10, max_delay=30, executor=executor, arriving=lambda: arriving[0])
        await batcher.submit("k", 1, 1, record)  # measured first, on the executor
        lone = await batcher.submit("k", 2, 1, record)
        assert calls[-1] == (asyncio.current_task(), 1)  # run by the submitting task itself, not a worker
        arriving[0] = 1  # another request is being received: the next one waits for it
        first = asyncio.ensure_future(batcher.submit("k", 3, 1, record))
        await asyncio.sleep(0.05)
        assert not first.done()
        arriving[0] = 0
        second = await batcher.submit("k", 4, 1, record)
        return lone, await first, second

    assert run(main()) == (4, 6, 8)
    assert calls[-1][1] == 2 and calls[-1][0] is not None  # the waiting one and the late one shared a call, on the loop
