// Many official socket.io-client sockets (pinned in package.json) that
// reconnect by themselves, each counting the numbered events it receives, for
// the recovery fault tests (tests/cluster/test_recovery_faults.py).
//
// usage: node fleet.mjs OPTIONS_JSON
//   OPTIONS_JSON:
//     sockets     [{url, auth}], one per socket: where it connects (and reconnects) and its `auth`
//     event       the numbered event: its first argument is {n} (default "tick")
//     transports  default ["websocket"]
//     timeoutMs   give up after this long: print {"event": "timeout"}, exit 2 (default 120000)
//
// Commands on stdin, one per line:
//   cut I MS    drop socket I's transport as a network would and keep it from
//               reconnecting for MS milliseconds
//   report N    print, per socket, how the events 0..N-1 arrived, then exit 0
//
// Output, one JSON line each:
//   {"event": "connected"}                        every socket connected once
//   {"event": "reconnected", "i", "recovered"}    socket I connected again
//   {"event": "report", "sockets": [{"i", "received", "lost", "duplicated", "unordered", "reconnects", "recovered"}]}

import { createInterface } from 'node:readline';
import { io } from 'socket.io-client';

const options = JSON.parse(process.argv[2] ?? '{}');
const eventName = options.event ?? 'tick';
const print = (line) => console.log(JSON.stringify(line));
setTimeout(() => {
  print({ event: 'timeout' });
  process.exit(2);
}, Number(options.timeoutMs ?? 120000)).unref();

const states = options.sockets.map(({ url, auth }, i) => {
  const state = { i, seen: [], reconnects: 0, recovered: 0, socket: null, first: true };
  const socket = io(url, {
    transports: options.transports ?? ['websocket'],
    auth,
    forceNew: true,
    reconnectionDelay: 500,
    reconnectionDelayMax: 2000,
  });
  state.socket = socket;
  socket.on(eventName, (data) => state.seen.push(data.n));
  socket.on('connect', () => {
    if (state.first) {
      state.first = false;
      connected += 1;
      if (connected === options.sockets.length) print({ event: 'connected' });
      return;
    }
    state.reconnects += 1;
    if (socket.recovered) state.recovered += 1;
    print({ event: 'reconnected', i, recovered: socket.recovered });
  });
  return state;
});
let connected = 0;

function summary(state, count) {
  const counts = new Map();
  let unordered = 0;
  let last = -1;
  for (const n of state.seen) {
    counts.set(n, (counts.get(n) ?? 0) + 1);
    if (n < last) unordered += 1;
    last = Math.max(last, n);
  }
  let lost = 0;
  let duplicated = 0;
  for (let n = 0; n < count; n += 1) {
    const times = counts.get(n) ?? 0;
    if (times === 0) lost += 1;
    if (times > 1) duplicated += times - 1;
  }
  return {
    i: state.i,
    received: state.seen.length,
    lost,
    duplicated,
    unordered,
    reconnects: state.reconnects,
    recovered: state.recovered,
  };
}

createInterface({ input: process.stdin }).on('line', (line) => {
  const [command, a, b] = line.trim().split(' ');
  if (command === 'cut') {
    const { socket } = states[Number(a)];
    const manager = socket.io;
    manager.reconnection(false);
    manager.engine.close(); // no goodbye: to the server, the transport closed
    setTimeout(() => {
      manager.reconnection(true);
      socket.connect();
    }, Number(b));
  } else if (command === 'report') {
    print({ event: 'report', sockets: states.map((state) => summary(state, Number(a))) });
    for (const { socket } of states) socket.close();
    setImmediate(() => process.exit(0));
  }
});
