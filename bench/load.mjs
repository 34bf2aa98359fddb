// The load of `make bench`: the official socket.io-client (pinned in
// bench/package.json), many sockets in one node process, against any of the
// servers (ticketgate, bare python-socketio, Node socket.io) on 127.0.0.1.
//
// usage: node load.mjs URL SPEC_JSON
//   SPEC_JSON:
//     auths        a file with one JSON auth object per line, one per socket (their count is the socket count)
//     transports   default ["websocket"]
//     concurrency  connects in flight at once (default 50)
//     event        the published event to count (default "tick")
//     publishes    how many POST /api/publish to send after every socket is in (default 0)
//     publishUrl   where to publish (default URL), admin bearer `admin`
//     rooms        the rooms to publish to, in turn (default ["user:bench"])
//     publishRate  publishes per second (default: back to back, each awaited)
//     hold         keep the sockets open until stdin says `close` (memory measurements)
//     deadlineMs   give up after this long (default 120000)
//
// Output, one JSON line each:
//   {"event": "connected", "count", "seconds", "failed"}   every socket authenticated (or refused)
//   {"event": "delivered", "count", "expected", "seconds", "latencyMs": [...]?}
//   {"event": "closed"}
// Everything is measured here, with this process's clock: connects from the
// first connect to the last `authenticated`; fan-out from the first publish
// sent to the last delivery received; latency of each delivery from its
// publish (the data carries the send time), when publishRate is set.

import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { io } from 'socket.io-client';

const [URL, SPEC = '{}'] = process.argv.slice(2);
const spec = JSON.parse(SPEC);
const auths = readFileSync(spec.auths, 'utf8').split('\n').filter(Boolean).map((line) => JSON.parse(line));
const transports = spec.transports ?? ['websocket'];
const concurrency = Number(spec.concurrency ?? 50);
const eventName = spec.event ?? 'tick';
const print = (line) => console.log(JSON.stringify(line));

setTimeout(() => {
  print({ event: 'timeout' });
  process.exit(2);
}, Number(spec.deadlineMs ?? 120000)).unref();

const sockets = [];
let delivered = 0;
let lastDelivery = 0;
const latencies = [];
let onDelivery = () => {};

function open(auth) {
  return new Promise((resolve) => {
    const socket = io(URL, { transports, auth, reconnection: false, forceNew: true, timeout: 20000 });
    sockets.push(socket);
    socket.on(eventName, (data) => {
      const now = performance.now();
      delivered += 1;
      lastDelivery = now;
      if (spec.publishRate && data && typeof data.sentAt === 'number') latencies.push(now - data.sentAt);
      onDelivery();
    });
    socket.once('authenticated', () => resolve(true));
    socket.once('connect_error', () => resolve(false));
  });
}

const started = performance.now();
let next = 0;
let failed = 0;
async function worker() {
  while (next < auths.length) {
    const auth = auths[next];
    next += 1;
    if (!(await open(auth))) failed += 1;
  }
}
await Promise.all(Array.from({ length: Math.min(concurrency, auths.length) }, worker));
print({ event: 'connected', count: auths.length - failed, failed, seconds: (performance.now() - started) / 1000 });

const publishes = Number(spec.publishes ?? 0);
if (publishes > 0) {
  const rooms = spec.rooms ?? ['user:bench'];
  const target = `${spec.publishUrl ?? URL}/api/publish`;
  const headers = { authorization: `Bearer ${spec.admin}`, 'content-type': 'application/json' };
  const perRoom = spec.membersPerRoom ?? auths.length - failed;
  const expected = publishes * perRoom;
  const done = new Promise((resolve) => {
    onDelivery = () => {
      if (delivered >= expected) resolve();
    };
  });
  const interval = spec.publishRate ? 1000 / Number(spec.publishRate) : 0;
  const first = performance.now();
  for (let i = 0; i < publishes; i += 1) {
    const room = rooms[i % rooms.length];
    // sentAt: this process's own clock (performance.now(), sub-millisecond): it is also the receiver.
    const body = JSON.stringify({ room, event: eventName, data: { n: i, sentAt: performance.now() } });
    const response = await fetch(target, { method: 'POST', headers, body });
    if (response.status !== 202) {
      print({ event: 'publish_failed', status: response.status, body: await response.text() });
      process.exit(1);
    }
    if (interval) {
      const due = first + (i + 1) * interval;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
  await Promise.race([done, new Promise((resolve) => setTimeout(resolve, 20000))]);
  const line = { event: 'delivered', count: delivered, expected, seconds: (lastDelivery - first) / 1000 };
  if (latencies.length) line.latencyMs = latencies;
  print(line);
}

function closeAll() {
  for (const socket of sockets) socket.close();
  print({ event: 'closed' });
  setTimeout(() => process.exit(0), 200).unref();
}

if (spec.hold) {
  createInterface({ input: process.stdin }).on('line', (line) => {
    if (line.trim() === 'close') closeAll();
  });
} else {
  closeAll();
}
