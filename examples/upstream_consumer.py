"""A backend worker for ticketgate's upstream stream ``tg:upstream``.

Every Socket.IO ``message`` a member sends to a room is appended once, by the
node that took it, to the Redis Stream ``tg:upstream`` with the fields ``id``,
``ts``, ``sub`` (the verified sender), ``room`` and ``data`` (JSON text); see
PROTOCOL §3 and §6.9. This worker reads that stream through a consumer group
and prints each entry as one JSON line ``{"id", "ts", "sub", "room", "data"}``
with ``data`` parsed. Printing stands in for the real work.

Delivery is **at least once**:

* Workers that share a ``--group`` share the stream: each entry goes to one of
  them (``XREADGROUP ... >``). Another ``--group`` sees every entry again.
* An entry is acknowledged (``XACK``) only after it has been processed. Until
  then Redis keeps it in the consumer's pending entries list, so a worker that
  dies mid-entry loses nothing: on start it first re-reads *its own* pending
  entries (``XREADGROUP ... 0``), then waits for new ones.
* The price is that such an entry is processed twice (once before the crash,
  once after), so the processing must be idempotent. The gateway's ``id``
  field is unique per message: use it to deduplicate.
* Entries pending on a consumer name that never comes back stay there; a
  production deployment would claim them with ``XAUTOCLAIM`` from a live
  worker. Start a restarted worker with the same ``--consumer`` name.

A new group starts at the beginning of what the stream still holds: the
gateway trims it to about ``upstream_maxlen`` entries and lets it expire after
a week without messages (which also drops its groups; the next start creates
the group again). Entries trimmed away while pending come back without fields
and are acknowledged and skipped.

Run it next to a redis-engine gateway::

    python examples/upstream_consumer.py --redis-url redis://127.0.0.1:6379/0 \\
        --group workers --consumer worker-1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

STREAM = "tg:upstream"
NEW = ">"  # XREADGROUP: entries never delivered to this group
MINE = "0"  # XREADGROUP: this consumer's own delivered-but-unacknowledged entries

logger = logging.getLogger("upstream_consumer")


async def ensure_group(client: aioredis.Redis, group: str) -> None:
    """Create ``group`` at the start of the stream, and the stream if it is missing."""
    try:
        await client.xgroup_create(STREAM, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):  # BUSYGROUP: it already exists, as on every restart
            raise


def render(fields: dict[str, str]) -> str:
    """The JSON line for one stream entry (``data`` parsed back into JSON)."""
    record = {name: fields[name] for name in ("id", "ts", "sub", "room")}
    return json.dumps({**record, "data": json.loads(fields["data"])})


def process(entry_id: str, fields: dict[str, str] | None, out: TextIO) -> None:
    """The work itself: here, print the entry. An exception leaves the entry
    pending (it is not acknowledged) and stops the worker; the next start retries it."""
    if not fields:
        logger.warning("entry %s was trimmed from the stream before it was processed", entry_id)
        return
    try:
        line = render(fields)
    except (KeyError, ValueError):
        # This can never succeed: left pending, it would fail again on every
        # start and stop the worker. A real worker would copy it to a dead-letter stream.
        logger.warning("entry %s is malformed; skipped", entry_id)
        return
    print(line, file=out, flush=True)


async def consume(
    client: aioredis.Redis,
    *,
    group: str,
    consumer: str,
    count: int = 10,
    block_ms: int = 5000,
    max_entries: int | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Process entries until ``max_entries`` are done (forever when None); their number."""
    await ensure_group(client, group)
    done = 0
    cursor = MINE  # first what an earlier run of this consumer left unacknowledged
    while max_entries is None or done < max_entries:
        want = count if max_entries is None else min(count, max_entries - done)
        # The pending pass must not block: an empty answer means it is over.
        block = None if cursor == MINE else block_ms
        reply: Any = await client.xreadgroup(group, consumer, {STREAM: cursor}, count=want, block=block)
        entries: list[tuple[str, dict[str, str] | None]] = reply[0][1] if reply else []
        if cursor == MINE and not entries:
            cursor = NEW
            continue
        for entry_id, fields in entries:
            process(entry_id, fields, out)
            await client.xack(STREAM, group, entry_id)
            done += 1
    return done


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Process ticketgate's tg:upstream stream with a consumer group.")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--group", default="workers", help="consumer group (workers sharing it share the stream)")
    parser.add_argument("--consumer", default="worker-1", help="this worker's stable name within the group")
    parser.add_argument("--count", type=int, default=10, help="entries per read (default 10)")
    parser.add_argument("--block-ms", type=int, default=5000, help="how long one read waits for new entries")
    parser.add_argument("--max", type=int, default=None, metavar="N", help="exit after N entries (for tests)")
    args = parser.parse_args(argv)
    if args.count < 1 or args.block_ms < 0 or (args.max is not None and args.max < 0):
        parser.error("--count must be >= 1, --block-ms and --max >= 0")
    return args


async def run(args: argparse.Namespace) -> int:
    client = aioredis.Redis.from_url(args.redis_url, decode_responses=True)
    try:
        return await consume(
            client,
            group=args.group,
            consumer=args.consumer,
            count=args.count,
            block_ms=args.block_ms,
            max_entries=args.max,
        )
    finally:
        await client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130  # an entry being processed stays pending: the next start re-reads it
    return 0


if __name__ == "__main__":
    sys.exit(main())
