// Many official socket.io-client sockets (pinned in package.json) in one node
// process, for tests that need a crowd: the drain, fan-out, recovery.
//
// usage: node crowd.mjs URL OPTIONS_JSON
//   OPTIONS_JSON, every field optional:
//     count         how many sockets (default 1)
//     auth          the Socket.IO `auth` object every socket sends (default {})
//     transports    e.g. ["websocket"] (default: the client's, polling then upgrade)
//     concurrency   how many connects are in flight at once (default 50)
//     report        names of server events to print, one line per socket and event (default: none)
//     timeoutMs     give up after this long: print {"event": "timeout"}, exit 2 (default 30000)
//     buffer        hold the per-socket lines (emit, disconnect) until every socket is gone
//
// Output, one JSON line each:
//   {"event": "connected", "count"}                       every socket is connected
//   {"event": "connect_error", "i", "message", "data"}    a socket's connect was refused
//   {"event": "emit", "i", "name", "args", "t"}           a reported server event (t: Date.now())
//   {"event": "disconnect", "i", "reason", "t"}
//   {"event": "gone"}                                     every socket has disconnected; node exits 0
// Commands on stdin, one per line: `close` closes every socket (node then exits 0).

import { createInterface } from 'node:readline';
import { io } from 'socket.io-client';

const [URL, OPTIONS = '{}'] = process.argv.slice(2);
if (!URL) {
  console.error('usage: node crowd.mjs URL OPTIONS_JSON');
  process.exit(64);
}
const options = JSON.parse(OPTIONS);
const count = Number(options.count ?? 1);
const concurrency = Number(options.concurrency ?? 50);
const report = new Set(options.report ?? []);
// buffer: keep the per-socket lines until every socket is gone, so that writing
// them does not delay the sockets still being handled (timing measurements).
const buffered = options.buffer ? [] : null;
const print = (line) => console.log(JSON.stringify(line));
const note = (line) => (buffered ? buffered.push(line) : print(line));

const sockets = [];
let connected = 0;
let gone = 0;

function open(i) {
  return new Promise((resolve) => {
    const clientOptions = { reconnection: false, timeout: 10000, auth: options.auth ?? {}, forceNew: true };
    if (options.transports) clientOptions.transports = options.transports;
    const socket = io(URL, clientOptions);
    sockets[i] = socket;
    socket.onAny((name, ...args) => {
      if (report.has(name)) note({ event: 'emit', i, name, args, t: Date.now() });
    });
    socket.once('connect', () => {
      connected += 1;
      resolve();
    });
    socket.once('connect_error', (err) => {
      print({ event: 'connect_error', i, message: err.message, data: err.data ?? null });
      resolve();
    });
    socket.on('disconnect', (reason) => {
      note({ event: 'disconnect', i, reason, t: Date.now() });
      gone += 1;
      if (gone === count) {
        for (const line of buffered ?? []) print(line);
        print({ event: 'gone' }); // node then exits by itself, stdout flushed
      }
    });
  });
}

let next = 0;
async function worker() {
  while (next < count) {
    const i = next;
    next += 1;
    await open(i);
  }
}
await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
if (connected === count) print({ event: 'connected', count });

const commands = createInterface({ input: process.stdin });
commands.on('line', (line) => {
  if (line.trim() === 'close') {
    for (const socket of sockets) socket.close();
    commands.close(); // nothing left to wait for: node exits once stdout is flushed
  }
});

setTimeout(() => {
  print({ event: 'timeout' });
  process.exit(2);
}, Number(options.timeoutMs ?? 30000)).unref();
