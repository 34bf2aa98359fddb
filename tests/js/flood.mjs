// The official socket.io-client (pinned in package.json) flooding a room with
// `message` events, for the per-socket rate limit (client_event_rate, issue #16).
//
// usage: node flood.mjs URL TOKEN ROOM COUNT
//   connect with auth {token: TOKEN} over WebSocket, join ROOM, then emit COUNT
//   `message` events with acks, 10 every 10 ms (1000 a second), until all are
//   sent or the socket is disconnected.
//
// Output, one JSON line per thing seen, in order (the shape connect.mjs prints):
//   {"event": "connect", "transport"}
//   {"event": "connect_error", "message", "data"}
//   {"event": "ack", "name", "ack"}      the join's ack, and every message's ack
//   {"event": "emit", "name", "args"}    any event the server emitted (closing among them)
//   {"event": "disconnect", "reason"}
//   {"event": "timeout"}
// Exits 0 once disconnected, 1 on a connect error, 2 after FLOOD_TIMEOUT_MS
// (default 15000).

import { io } from 'socket.io-client';

const [URL, TOKEN, ROOM, COUNT] = process.argv.slice(2);
if (!URL || !TOKEN || !ROOM || !COUNT) {
  console.error('usage: node flood.mjs URL TOKEN ROOM COUNT');
  process.exit(64);
}

const print = (line) => console.log(JSON.stringify(line));

setTimeout(() => {
  print({ event: 'timeout' });
  process.exit(2);
}, Number(process.env.FLOOD_TIMEOUT_MS || 15000)).unref();

const socket = io(URL, { auth: { token: TOKEN }, transports: ['websocket'], reconnection: false });

socket.onAny((name, ...args) => print({ event: 'emit', name, args }));

socket.on('connect_error', (err) => {
  print({ event: 'connect_error', message: err.message, data: err.data ?? null });
  process.exit(1);
});

socket.on('disconnect', (reason) => {
  print({ event: 'disconnect', reason });
  setImmediate(() => process.exit(0));
});

socket.on('connect', () => {
  print({ event: 'connect', transport: socket.io.engine.transport.name });
  socket.emit('join', { room: ROOM }, (ack) => {
    print({ event: 'ack', name: 'join', ack });
    let n = 0;
    const tick = setInterval(() => {
      for (let i = 0; i < 10 && n < Number(COUNT) && socket.connected; i += 1, n += 1) {
        const data = { n };
        socket.emit('message', { room: ROOM, data }, (reply) => print({ event: 'ack', name: 'message', ack: reply }));
      }
      if (n >= Number(COUNT) || !socket.connected) clearInterval(tick);
    }, 10);
  });
});
