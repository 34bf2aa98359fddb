"""``ticketgate serve --workers N``: N processes of ``serve`` on one port, each a node.

The supervisor serves nothing itself. It starts N workers, each
``python -m gateway serve <the same arguments> --worker-fd FD``: the same config
file, flags and environment, hence the same cluster (the redis engine); one
worker each, binding the port with SO_REUSEPORT, so that the kernel spreads new
connections across them. No listening socket is inherited: each worker binds
its own, and the supervisor never opens one.

FD is the worker's end of a socketpair, the one channel between the two: the
worker writes its node name and a newline on it once it listens (``report``),
and stops, draining its sockets, when it reads EOF there: the supervisor is
gone, and a worker must not outlive it on the shared port (a new supervisor's
workers would share the port with it). The supervisor restarts a worker that
exits while it is not stopping; on SIGTERM or SIGINT it sends SIGTERM to
every worker, waits until they have drained and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.config import Config
from gateway.errors import StartupError

logger = logging.getLogger(__name__)

# How long the workers may drain after SIGTERM before they are killed.
STOP_TIMEOUT = 10.0
# A slot starts a worker at most once a second; after each worker that exits
# before it listens, twice as seldom, up to once every 30 s.
MIN_RESTART_INTERVAL = 1.0
MAX_RESTART_INTERVAL = 30.0


@dataclass(kw_only=True)
class _Worker:
    slot: int
    proc: asyncio.subprocess.Process
    channel: asyncio.StreamReader
    # Held open for the worker's whole life: its end reads EOF when the supervisor is gone.
    writer: asyncio.StreamWriter
    node: str = ""


class Supervisor:
    """Runs ``config.workers`` workers of ``ticketgate serve`` with the arguments ``argv``."""

    def __init__(self, *, config: Config, argv: Sequence[str]) -> None:
        self.config = config
        self.command = [sys.executable, "-m", "gateway", *argv]
        self.env = dict(os.environ)
        if "admin_token" in config.generated:
            # --demo made one up: every worker must accept the same one, printed once.
            self.env["TICKETGATE_ADMIN_TOKEN"] = str(config.admin_token)
        self.workers: dict[int, _Worker] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.stop = asyncio.Event()

    async def run(self) -> int:
        """Supervise until SIGTERM/SIGINT (0), or until a worker fails to start
        (2: the worker has printed why, as its one line)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            # The first worker alone: it proves the configuration and the port,
            # so that a failure is one process's one line, not N copies of it.
            failed = await self._start([1])
            if failed is None and not self.stop.is_set():
                failed = await self._start(range(2, self.config.workers + 1))
            if failed is not None:
                if failed != 2:  # a worker that exits 2 has said why in one line
                    print(f"ticketgate: a worker {_exit_reason(failed)} before it listened", file=sys.stderr)
                return 2
            if self.stop.is_set():
                return 0
            logger.info(
                "ticketgate supervising %d workers on http://%s:%d",
                self.config.workers,
                self.config.host,
                self.config.port,
            )
            if "admin_token" in self.config.generated:
                print(f"demo admin token: {self.config.admin_token}", flush=True)
            await self.stop.wait()
            return 0
        finally:
            await self._stop_all()

    async def _start(self, slots: Iterable[int]) -> int | None:
        """Start a worker in each of ``slots`` and wait until each listens: None,
        or the exit status of one that exited before (None too if a stop came)."""
        loop = asyncio.get_running_loop()
        waiting: set[asyncio.Future[int | None]] = set()
        for slot in slots:
            ready: asyncio.Future[int | None] = loop.create_future()
            self.tasks.append(asyncio.create_task(self._slot(slot, ready), name=f"worker-{slot}"))
            waiting.add(ready)
        stopped = asyncio.create_task(self._stopped())
        try:
            while waiting:
                done, _ = await asyncio.wait({*waiting, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if stopped in done:
                    return None
                for ready in done:
                    waiting.discard(ready)
                    if (status := ready.result()) is not None:
                        return status
            return None
        finally:
            stopped.cancel()

    async def _stopped(self) -> int | None:
        await self.stop.wait()
        return None

    async def _slot(self, slot: int, ready: asyncio.Future[int | None]) -> None:
        try:
            await self._keep(slot, ready)
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)  # the start fails with it
            else:
                logger.exception("worker %d: no longer supervised", slot)

    async def _keep(self, slot: int, ready: asyncio.Future[int | None]) -> None:
        """Run a worker in ``slot``, and a new one each time it exits, until the
        supervisor stops. ``ready`` gets None once the first one listens, or its
        exit status if it exits before: no restart then, the start has failed."""
        loop = asyncio.get_running_loop()
        interval = MIN_RESTART_INTERVAL
        while True:
            started = loop.time()
            try:
                worker = await self._spawn(slot)
            except StartupError as exc:
                if not ready.done():
                    ready.set_exception(exc)
                    return
                logger.error("%s; trying again in %.0f s", exc, MAX_RESTART_INTERVAL)
                await self._pause(MAX_RESTART_INTERVAL)
                if self.stop.is_set():
                    return
                continue
            listening = await self._listening(worker)
            if listening:
                logger.info("worker %d ready: pid %d, node %s", slot, worker.proc.pid, worker.node)
                if not ready.done():
                    ready.set_result(None)
            status = await worker.proc.wait()
            worker.writer.close()
            if self.stop.is_set():
                return
            if not ready.done():
                ready.set_result(status)
                return
            interval = MIN_RESTART_INTERVAL if listening else min(interval * 2, MAX_RESTART_INTERVAL)
            delay = max(0.0, started + interval - loop.time())
            logger.warning(
                "worker %d (pid %d, node %s) %s; restarting%s",
                slot,
                worker.proc.pid,
                worker.node or "-",
                _exit_reason(status),
                f" in {delay:.1f} s" if delay >= 0.1 else "",
            )
            await self._pause(delay)
            if self.stop.is_set():
                return

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if a stop comes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def _spawn(self, slot: int) -> _Worker:
        mine, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command,
                "--worker-fd",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        except BaseException as exc:
            mine.close()
            if isinstance(exc, OSError):
                raise StartupError(f"cannot start a worker: {exc.strerror or exc}") from None
            raise
        finally:
            # Only the worker holds its end now: its exit is EOF here.
            theirs.close()
        channel, writer = await asyncio.open_unix_connection(sock=mine)
        worker = _Worker(slot=slot, proc=proc, channel=channel, writer=writer)
        self.workers[slot] = worker
        if self.stop.is_set():  # it was being started when the stop came: it missed the SIGTERM
            proc.terminate()
        return worker

    async def _listening(self, worker: _Worker) -> bool:
        """True once ``worker`` says it listens; False if it exits first."""
        line = await worker.channel.readline()
        if not line.endswith(b"\n"):
            return False
        worker.node = line[:-1].decode(errors="replace")
        return True

    async def _stop_all(self) -> None:
        """SIGTERM to every worker, and SIGKILL to those still running after STOP_TIMEOUT."""
        self.stop.set()
        running = [worker for worker in self.workers.values() if worker.proc.returncode is None]
        if running:
            logger.info("stopping %d workers", len(running))
        for worker in running:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.terminate()
        if not self.tasks:
            return
        _, late = await asyncio.wait(self.tasks, timeout=STOP_TIMEOUT)
        if late:
            for worker in self.workers.values():
                if worker.proc.returncode is None:
                    logger.warning(
                        "worker %d (pid %d) still running after %.0f s: killed",
                        worker.slot,
                        worker.proc.pid,
                        STOP_TIMEOUT,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        worker.proc.kill()
            await asyncio.wait(late)


def supervise(config: Config, argv: Sequence[str]) -> int:
    """Run ``config.workers`` workers of ``ticketgate serve argv``; the exit status.

    On the standard event loop: the supervisor only waits, and that loop's
    subprocess support is the reference one (``pass_fds`` included)."""
    return asyncio.run(Supervisor(config=config, argv=argv).run())


def channel_to_supervisor(fd: int) -> socket.socket:
    """The worker's end of its channel to the supervisor, from ``--worker-fd``."""
    try:
        return socket.socket(fileno=fd)
    except OSError as exc:
        raise StartupError(f"--worker-fd {fd}: not a socket from a supervisor ({exc.strerror})") from None


async def report(channel: socket.socket, *, node_name: str, stop: asyncio.Event) -> None:
    """In a worker that listens: tell the supervisor its node name, then set
    ``stop`` when the supervisor is gone (EOF)."""
    reader, writer = await asyncio.open_unix_connection(sock=channel)
    try:
        writer.write(node_name.encode() + b"\n")
        await writer.drain()
        await reader.read()  # the supervisor sends nothing: this waits for EOF
    except ConnectionError:
        pass  # gone as well
    finally:
        writer.close()
    if not stop.is_set():
        logger.warning("the supervisor is gone: stopping")
        stop.set()


def _exit_reason(status: int) -> str:
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"
