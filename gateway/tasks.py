"""Stopping the gateway's long-lived tasks (fan-out listeners, heartbeats).

A cancel can be lost: code a task runs may catch CancelledError and go on (a
library's timeout handling does, when the cancel lands inside a command), and
the task then waits forever for its next message or tick while its stopper
awaits it. So a stop cancels again until each task has ended, a few times.
"""

from __future__ import annotations

import asyncio
import logging

logger = logging.getLogger(__name__)

ATTEMPTS = 5
WAIT = 0.5  # seconds for each attempt


async def cancel_and_wait(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel ``tasks`` (None ones skipped) and return once they have ended (or
    after ATTEMPTS cancels, logged). A cancellation of the caller propagates."""
    pending = {task for task in tasks if task is not None and not task.done()}
    for _ in range(ATTEMPTS):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=WAIT)
    if pending:
        logger.warning("%d task(s) did not stop: %s", len(pending), ", ".join(t.get_name() for t in pending))
