"""One timer facility per process for every per-socket deadline.

Timers are handles in the event loop's own heap (``loop.call_at``): 10 000
sockets cost 10 000 small handles, not 10 000 sleeping tasks. A timer that
fires runs its coroutine in a short-lived task that is kept referenced until
it ends and whose failure is logged, never lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)

Job = Callable[..., Coroutine[Any, Any, None]]


class Scheduler:
    """Runs coroutines at unix times.

    ``clock`` is the unix time "now" every delay is measured from (``time.time``
    by default); a test may pass one that is ahead of or behind real time.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._running: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()

    def at(self, when: float, job: Job, *args: Any) -> asyncio.TimerHandle:
        """Run ``job(*args)`` at unix time ``when`` (at once if it is past).

        A timer costs its handle, its arguments and a one-item list (the handle,
        for the timer to forget itself when it fires): no closure per timer,
        where there are several per socket."""
        loop = asyncio.get_running_loop()
        delay = max(0.0, when - self._clock())
        box: list[asyncio.TimerHandle] = []
        handle = loop.call_at(loop.time() + delay, self._fire, job, args, box)
        box.append(handle)
        self._timers.add(handle)
        return handle

    def soon(self, job: Job, *args: Any) -> asyncio.TimerHandle:
        """Run ``job(*args)`` once the current handler has returned (e.g. after its ack went out)."""
        return self.at(self._clock(), job, *args)

    def _fire(self, job: Job, args: tuple[Any, ...], box: list[asyncio.TimerHandle]) -> None:
        self._timers.discard(box[0])
        task = asyncio.get_running_loop().create_task(self._run(job, args))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def cancel(self, handle: asyncio.TimerHandle | None) -> None:
        if handle is not None:
            handle.cancel()
            self._timers.discard(handle)

    @property
    def pending(self) -> int:
        return len(self._timers)

    async def _run(self, job: Job, args: tuple[Any, ...]) -> None:
        try:
            await job(*args)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("scheduled job failed")

    async def close(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
