// The official Socket.IO JavaScript client (socket.io-client, pinned in
// package.json) losing its connection and coming back, for tests/test_recovery.py:
// connection state recovery is the client's own (it keeps the pid of the
// CONNECT packet and the last string argument of each event, and sends both
// with its `auth` when it reconnects); this script only cuts the transport when
// told and reports what the client saw.
//
// usage: node recover.mjs URL OPTIONS_JSON
//   OPTIONS_JSON, every field optional:
//     auth        the Socket.IO `auth` object, sent on every (re)connect
//     ticket      {url, token}: instead of `auth`, fetch a fresh ticket for every
//                 (re)connect from POST url/ws/ticket with Bearer token, as an app's
//                 auth callback does (a ticket is single use)
//     transports  e.g. ["websocket"] (omitted: the client's default)
//     delayMs     reconnection delay (default 1500: the test publishes meanwhile)
//     timeoutMs   give up after this long: print {"event": "timeout"}, exit 2 (default 30000)
//
// Commands, one per line on stdin:
//   cut          drop the connection as a network would: the engine's transport
//                closes without a goodbye, the client reconnects by itself
//   join ROOM    emitWithAck `join` {room}
//   close        close the socket (a client disconnect) and exit 0
//
// Output, one JSON line per thing seen, in order:
//   {"event": "connect", "id", "recovered", "transport"}
//   {"event": "connect_error", "message", "data"}
//   {"event": "disconnect", "reason"}
//   {"event": "emit", "name", "args"}      any event the server emitted (offset included)
//   {"event": "ack", "name", "ack"}
//   {"event": "timeout"}

import { createInterface } from 'node:readline';
import { io } from 'socket.io-client';

const [URL, OPTIONS = '{}'] = process.argv.slice(2);
if (!URL) {
  console.error('usage: node recover.mjs URL OPTIONS_JSON');
  process.exit(64);
}
const options = JSON.parse(OPTIONS);
const print = (line) => console.log(JSON.stringify(line));

async function ticketAuth(callback) {
  const response = await fetch(`${options.ticket.url}/ws/ticket`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${options.ticket.token}` },
  });
  const body = await response.json();
  callback({ ticket: body.ticket });
}

const delay = Number(options.delayMs ?? 1500);
const clientOptions = {
  timeout: 5000,
  reconnectionDelay: delay,
  reconnectionDelayMax: delay,
  randomizationFactor: 0,
  auth: options.ticket ? ticketAuth : options.auth,
};
if (options.transports) clientOptions.transports = options.transports;
const socket = io(URL, clientOptions);

socket.on('connect', () =>
  print({ event: 'connect', id: socket.id, recovered: socket.recovered, transport: socket.io.engine.transport.name }),
);
socket.on('connect_error', (err) => print({ event: 'connect_error', message: err.message, data: err.data ?? null }));
socket.on('disconnect', (reason) => print({ event: 'disconnect', reason }));
socket.onAny((name, ...args) => print({ event: 'emit', name, args }));

createInterface({ input: process.stdin }).on('line', async (line) => {
  const [command, argument] = line.trim().split(' ');
  if (command === 'cut') {
    socket.io.engine.close(); // no Socket.IO DISCONNECT: to the server, the transport closed
  } else if (command === 'join') {
    const ack = await socket.timeout(5000).emitWithAck('join', { room: argument });
    print({ event: 'ack', name: 'join', ack });
  } else if (command === 'close') {
    socket.close();
    setImmediate(() => process.exit(0));
  }
});

setTimeout(() => {
  print({ event: 'timeout' });
  process.exit(2);
}, Number(options.timeoutMs ?? 30000)).unref();
