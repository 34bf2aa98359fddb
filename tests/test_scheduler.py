"""gateway/scheduler.py: timers at unix times, measured from an injectable clock.

A clock far ahead of (or behind) real time shows which "now" the scheduler
measures from without sleeping for long: a timer due 0.2 s from the clock's
now fires 0.2 s later, wherever real time is.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gateway.scheduler import Scheduler
from tests.support import Clock

pytestmark = pytest.mark.timeout(30)

HOUR = 3600.0


class Fired:
    """A job that records the loop time it ran at."""

    def __init__(self) -> None:
        self.at: list[float] = []
        self.event = asyncio.Event()

    async def __call__(self) -> None:
        self.at.append(asyncio.get_running_loop().time())
        self.event.set()

    async def wait(self, timeout: float = 5.0) -> float:
        await asyncio.wait_for(self.event.wait(), timeout)
        return self.at[0]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.mark.parametrize("offset", [HOUR, -HOUR], ids=["clock_ahead", "clock_behind"])
async def test_at_fires_when_due_by_the_clock_not_by_real_time(offset: float) -> None:
    # Ahead: `when` is an hour in the real future, and must not wait an hour.
    # Behind: `when` is an hour in the real past, and must not fire at once.
    scheduler = Scheduler(clock=lambda: time.time() + offset)
    loop = asyncio.get_running_loop()
    job = Fired()
    started = loop.time()
    scheduler.at(time.time() + offset + 0.2, job)
    elapsed = await job.wait() - started
    assert 0.19 <= elapsed < 3.0, elapsed
    await scheduler.close()


async def test_the_delay_is_when_minus_the_clocks_now(clock: Clock) -> None:
    scheduler = Scheduler(clock=clock)
    loop = asyncio.get_running_loop()
    before = loop.time()
    handle = scheduler.at(clock.now + 60, Fired())
    after = loop.time()
    assert before + 60 <= handle.when() <= after + 60
    clock.now += 30  # the delay was fixed when the timer was set
    assert before + 60 <= handle.when() <= after + 60
    await scheduler.close()


async def test_a_past_when_fires_at_once(clock: Clock) -> None:
    scheduler = Scheduler(clock=clock)
    loop = asyncio.get_running_loop()
    late, soon = Fired(), Fired()
    started = loop.time()
    handles = [scheduler.at(clock.now - 10, late), scheduler.soon(soon)]
    assert all(handle.when() <= loop.time() for handle in handles)
    for job in (late, soon):
        assert await job.wait(timeout=1.0) - started < 0.5
    assert scheduler.pending == 0
    await scheduler.close()


async def test_cancel_prevents_firing(clock: Clock) -> None:
    scheduler = Scheduler(clock=clock)
    cancelled, later = Fired(), Fired()
    handle = scheduler.at(clock.now + 0.05, cancelled)
    scheduler.at(clock.now + 0.1, later)
    scheduler.cancel(handle)
    scheduler.cancel(None)  # a socket without that timer: nothing to do
    assert handle.cancelled()
    assert scheduler.pending == 1
    # The loop runs timers in order of their time: once the later one has
    # run, the cancelled one would have run before it.
    await later.wait()
    assert cancelled.at == []
    await scheduler.close()


async def test_pending_counts_armed_timers(clock: Clock) -> None:
    scheduler = Scheduler(clock=clock)
    assert scheduler.pending == 0
    first = Fired()
    scheduler.at(clock.now + 0.05, first)
    second = scheduler.at(clock.now + 60, Fired())
    scheduler.at(clock.now + 60, Fired())
    assert scheduler.pending == 3
    await first.wait()
    assert scheduler.pending == 2  # fired: no longer pending
    scheduler.cancel(second)
    assert scheduler.pending == 1
    await scheduler.close()
    assert scheduler.pending == 0


async def test_a_failing_job_is_logged_and_the_scheduler_keeps_going(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = Scheduler(clock=clock)
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))

    async def failing() -> None:
        raise RuntimeError("boom")

    after = Fired()
    with caplog.at_level(logging.ERROR, logger="gateway.scheduler"):
        scheduler.at(clock.now, failing)
        scheduler.at(clock.now + 0.05, after)
        await after.wait()
    [record] = [r for r in caplog.records if r.name == "gateway.scheduler"]
    assert record.getMessage() == "scheduled job failed"
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert unhandled == []  # handled by the scheduler, not left to the loop
    # A job scheduled after the failure still runs.
    again = Fired()
    scheduler.soon(again)
    await again.wait()
    await scheduler.close()
    loop.set_exception_handler(None)


async def test_close_cancels_timers_and_running_jobs(clock: Clock) -> None:
    scheduler = Scheduler(clock=clock)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def long_job() -> None:
        started.set()
        try:
            await asyncio.sleep(HOUR)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    scheduler.soon(long_job)
    waiting = scheduler.at(clock.now + 0.05, Fired())
    await started.wait()
    await asyncio.wait_for(scheduler.close(), 5)  # an uncancelled job would hold it for an hour
    assert cancelled.is_set()  # the running job was cancelled, and close waited for it
    assert waiting.cancelled()
    assert scheduler.pending == 0
