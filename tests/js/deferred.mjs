// The official socket.io-client (pinned in package.json) driving deferred
// authentication (PROTOCOL §3, "none (deferred)"): connect with an empty auth
// object, then prove who you are with an `authenticate` event.
//
// usage: node deferred.mjs URL SCENARIO [TOKEN] [TRANSPORTS]
//   SCENARIO authenticate: connect with auth {}, emitWithAck('authenticate',
//     {token: TOKEN}), then wait for an event named `hello` (the test publishes
//     it to user:<sub> once it has seen the ack) and disconnect.
//   SCENARIO join-first: connect with auth {} and emit `join` before any
//     `authenticate`; the server is expected to send `closing` and disconnect.
//   TRANSPORTS (default "polling,websocket", the client's own default order):
//     a comma-separated list passed to io() as `transports`.
//
// Output, one JSON line per thing seen, in order (the shape connect.mjs and
// reauth.mjs print too):
//   {"event": "connect", "transport"}
//   {"event": "connect_error", "message", "data"}
//   {"event": "emit", "name", "args"}       any event the server emitted
//   {"event": "ack", "name", "ack"}         the ack of `authenticate` (or {"error": message} on an ack timeout)
//   {"event": "disconnect", "reason"}
//   {"event": "timeout"}
// Exits 0 once disconnected, 1 on a connect error, 2 after DEFERRED_TIMEOUT_MS
// (default 10000).

import { io } from 'socket.io-client';

const [URL, SCENARIO, TOKEN = '', TRANSPORTS = 'polling,websocket'] = process.argv.slice(2);
if (!URL || !['authenticate', 'join-first'].includes(SCENARIO)) {
  console.error('usage: node deferred.mjs URL authenticate|join-first [TOKEN] [TRANSPORTS]');
  process.exit(64);
}

const print = (line) => console.log(JSON.stringify(line));

setTimeout(() => {
  print({ event: 'timeout' });
  process.exit(2);
}, Number(process.env.DEFERRED_TIMEOUT_MS || 10000)).unref();

const socket = io(URL, {
  auth: {},
  transports: TRANSPORTS.split(','),
  reconnection: false,
});

socket.onAny((name, ...args) => {
  print({ event: 'emit', name, args });
  if (SCENARIO === 'authenticate' && name === 'hello') {
    socket.disconnect();
  }
});

socket.on('connect_error', (err) => {
  print({ event: 'connect_error', message: err.message, data: err.data ?? null });
  process.exit(1);
});

socket.on('disconnect', (reason) => {
  print({ event: 'disconnect', reason });
  socket.close();
  process.exit(0);
});

socket.on('connect', async () => {
  print({ event: 'connect', transport: socket.io.engine.transport.name });
  if (SCENARIO === 'authenticate') {
    let ack;
    try {
      ack = await socket.timeout(5000).emitWithAck('authenticate', { token: TOKEN });
    } catch (err) {
      ack = { error: String(err.message ?? err) };
    }
    print({ event: 'ack', name: 'authenticate', ack });
  } else {
    socket.emit('join', { room: 'room:chat' });
  }
});
