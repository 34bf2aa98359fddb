// One official socket.io-client that loses its connection and comes back, for
// the `recovery` scenario of `make bench`: how long from its reconnect to the
// last event it missed.
//
// usage: node recover.mjs URL TOKEN COUNT
// Commands on stdin: `cut` (drop the transport; no reconnect by itself), then
// `reconnect` (connect again: the client sends its pid and offset).
// Output, one JSON line each:
//   {"event": "ready"}                   authenticated, first time
//   {"event": "cut"}                     the transport is down
//   {"event": "replayed", "recovered", "count", "ms"}  COUNT ticks after `reconnect`, and how long it took

import { createInterface } from 'node:readline';
import { io } from 'socket.io-client';

const [URL, TOKEN, COUNT] = process.argv.slice(2);
const expected = Number(COUNT);
const print = (line) => console.log(JSON.stringify(line));
setTimeout(() => {
  print({ event: 'timeout' });
  process.exit(2);
}, 120000).unref();

const socket = io(URL, { transports: ['websocket'], auth: { token: TOKEN }, reconnection: false });
let ticks = 0;
let started = 0;
socket.once('authenticated', () => print({ event: 'ready' }));
socket.on('disconnect', () => print({ event: 'cut' }));
socket.on('tick', () => {
  ticks += 1;
  if (started && ticks === expected) {
    print({ event: 'replayed', recovered: socket.recovered, count: ticks, ms: performance.now() - started });
    socket.close();
    setImmediate(() => process.exit(0));
  }
});
createInterface({ input: process.stdin }).on('line', (line) => {
  if (line === 'cut') socket.io.engine.close();
  if (line === 'reconnect') {
    ticks = 0;
    started = performance.now();
    socket.connect();
  }
});
