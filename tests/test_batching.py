"""`BatchQueue`: concurrent submissions share calls, errors reach their callers, nobody hangs."""

from __future__ import annotations

import asyncio

import pytest

from indextts.batching import BatchQueue


def _recording_queue(max_batch=None, fail_on=None):
    calls: list[list[int]] = []

    async def run(items):
        calls.append(list(items))
        await asyncio.sleep(0.01)
        if fail_on is not None and fail_on in items:
            raise ValueError(f"bad item {fail_on}")
        return [10 * i for i in items]
    return BatchQueue(run, max_batch), calls


def test_waiting_items_share_calls_up_to_max_batch():
    queue, calls = _recording_queue(max_batch=3)

    async def main():
        return await asyncio.gather(*(queue.submit(i) for i in range(7)))
    assert asyncio.run(main()) == [10 * i for i in range(7)]
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]


def test_items_arriving_during_a_call_go_together_in_the_next():
    queue, calls = _recording_queue()

    async def main():
        first = asyncio.ensure_future(queue.submit(0))
        await asyncio.sleep(0.002)                         # the first call is running now
        rest = await asyncio.gather(*(queue.submit(i) for i in (1, 2, 3)))
        return [await first] + rest
    assert asyncio.run(main()) == [0, 10, 20, 30]
    assert calls == [[0], [1, 2, 3]]


def test_a_failed_call_fails_its_callers_only():
    queue, calls = _recording_queue(max_batch=2, fail_on=1)

    async def main():
        return await asyncio.gather(*(queue.submit(i) for i in range(4)), return_exceptions=True)
    results = asyncio.run(main())
    assert [type(r) for r in results[:2]] == [ValueError, ValueError]
    assert results[2:] == [20, 30]


def test_cancelled_callers_are_dropped_before_their_call():
    queue, calls = _recording_queue()

    async def main():
        first = asyncio.ensure_future(queue.submit(0))
        await asyncio.sleep(0.002)
        gone = asyncio.ensure_future(queue.submit(1))
        kept = asyncio.ensure_future(queue.submit(2))
        await asyncio.sleep(0)
        gone.cancel()
        return await first, await kept
    assert asyncio.run(main()) == (0, 20)
    assert calls == [[0], [2]]


def test_cancelling_the_drain_tells_the_waiting_callers():
    queue, _ = _recording_queue()

    async def main():
        waiter = asyncio.ensure_future(queue.submit(5))
        await asyncio.sleep(0.002)
        queue._drain.cancel()
        with pytest.raises(RuntimeError, match="cancelled"):
            await asyncio.wait_for(waiter, 1.0)
    asyncio.run(main())


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError):
        BatchQueue(lambda items: items, max_batch=0)


def test_the_most_urgent_waiting_items_go_first_whatever_their_order():
    queue, calls = _recording_queue(max_batch=2)

    async def main():
        first = asyncio.ensure_future(queue.submit(0, key=0.0))
        await asyncio.sleep(0.002)                         # the first call is running now
        late = [asyncio.ensure_future(queue.submit(i, key=100.0 + i)) for i in (1, 2, 3)]
        urgent = asyncio.ensure_future(queue.submit(9, key=1.0))
        return await asyncio.gather(first, *late, urgent)
    assert asyncio.run(main()) == [0, 10, 20, 30, 90]
    assert calls == [[0], [9, 1], [2, 3]]                  # 9 came last but was due first
