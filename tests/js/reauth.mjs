// The official Socket.IO JavaScript client (socket.io-client, pinned in
// package.json) through a socket's auth lifetime, for tests/test_js_reauth.py:
// it rotates its refresh token with `refresh`, and when the server asks for
// re-authentication (`reauth_required`) it answers with a fresh access token
// once the test says so, as an application would after fetching one.
//
// usage: node reauth.mjs URL TOKEN FRESH_TOKEN
//   TOKEN        the short-lived access JWT the socket connects with (auth.token)
//   FRESH_TOKEN  the access JWT it re-authenticates with
//   env REAUTH_TIMEOUT_MS  give up after this long: print {"event": "timeout"}, exit 2 (default 15000)
//   env REAUTH_TRANSPORTS  comma-separated, e.g. "websocket" (default: the client's, polling then upgrade)
//
// Commands, one per line on stdin:
//   authenticate   emit `authenticate` {token: FRESH_TOKEN} with emitWithAck
//   close          close the socket and exit 0
//
// Output, one JSON line per thing seen, in order:
//   {"event": "connect", "id", "transport"}
//   {"event": "connect_error", "message", "data"}
//   {"event": "emit", "name", "args"}      any event the server emitted
//   {"event": "ready"}                     after reauth_required: waiting for `authenticate` on stdin
//   {"event": "sent", "name"}              just before an emitWithAck
//   {"event": "ack", "name", "ack"}        its ack (or {"error": message} on an ack timeout)
//   {"event": "disconnect", "reason"}
//   {"event": "timeout"}

import { createInterface } from 'node:readline';
import { io } from 'socket.io-client';

const [URL, TOKEN, FRESH_TOKEN] = process.argv.slice(2);
if (!URL || !TOKEN || !FRESH_TOKEN) {
  console.error('usage: node reauth.mjs URL TOKEN FRESH_TOKEN');
  process.exit(64);
}
const ACK_TIMEOUT_MS = 5000;

const print = (line) => console.log(JSON.stringify(line));

const clientOptions = { reconnection: false, timeout: 5000, auth: { token: TOKEN } };
if (process.env.REAUTH_TRANSPORTS) clientOptions.transports = process.env.REAUTH_TRANSPORTS.split(',');
const socket = io(URL, clientOptions);

async function emitWithAck(name, data) {
  print({ event: 'sent', name });
  let ack;
  try {
    ack = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck(name, data);
  } catch (err) {
    ack = { error: String(err.message ?? err) };
  }
  print({ event: 'ack', name, ack });
}

let rotated = false;

socket.on('connect', () => print({ event: 'connect', id: socket.id, transport: socket.io.engine.transport.name }));
socket.on('connect_error', (err) => print({ event: 'connect_error', message: err.message, data: err.data ?? null }));
socket.on('disconnect', (reason) => print({ event: 'disconnect', reason }));

socket.onAny((name, ...args) => {
  print({ event: 'emit', name, args });
  if (name === 'refresh_token' && !rotated) {
    // Rotate the first refresh token at once: the ack carries its successor.
    rotated = true;
    emitWithAck('refresh', { refreshToken: args[0].refreshToken });
  } else if (name === 'reauth_required') {
    print({ event: 'ready' });
  }
});

createInterface({ input: process.stdin }).on('line', (line) => {
  const command = line.trim();
  if (command === 'authenticate') {
    emitWithAck('authenticate', { token: FRESH_TOKEN });
  } else if (command === 'close') {
    socket.close();
    setImmediate(() => process.exit(0)); // let stdout drain first
  } else if (command) {
    console.error(`unknown command: ${command}`);
  }
});

setTimeout(() => {
  print({ event: 'timeout' });
  process.exit(2);
}, Number(process.env.REAUTH_TIMEOUT_MS ?? 15000)).unref();
