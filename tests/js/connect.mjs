// The official Socket.IO JavaScript client (socket.io-client, pinned in
// package.json) run by node against a gateway, for tests/test_js_client.py.
//
// usage: node connect.mjs URL OPTIONS_JSON
//   OPTIONS_JSON, every field optional:
//     auth          the Socket.IO `auth` object (omitted: no auth at all)
//     query         query-string parameters ({name: value})
//     transports    e.g. ["websocket"] (omitted: the client's default, polling then upgrade)
//     extraHeaders  request headers, e.g. {"Origin": "http://evil.example"} (node only)
//     until         event names that end the run (exit 0) once seen; the
//                   pseudo-events below count too (default: connect_error, disconnect)
//     timeoutMs     give up after this long: print {"event": "timeout"}, exit 2 (default 10000)
//
// Output, one JSON line per thing seen, in order:
//   {"event": "open", "transport"}            the Engine.IO session opened, on this transport
//   {"event": "upgrade", "transport"}         the Engine.IO session upgraded
//   {"event": "connect", "id", "transport"}   Socket.IO connected
//   {"event": "connect_error", "message", "data", "type", "description"}
//   {"event": "disconnect", "reason"}
//   {"event": "emit", "name", "args"}         any event the server emitted (authenticated among them)
//   {"event": "timeout"}
// Lines the test asked for in `until` end the run: the socket is closed
// and node exits 0.

import { io } from 'socket.io-client';

const [URL, OPTIONS = '{}'] = process.argv.slice(2);
if (!URL) {
  console.error('usage: node connect.mjs URL OPTIONS_JSON');
  process.exit(64);
}
const options = JSON.parse(OPTIONS);
const until = new Set(options.until ?? ['connect_error', 'disconnect']);

const print = (line) => console.log(JSON.stringify(line));

const clientOptions = { reconnection: false, timeout: 5000 };
for (const name of ['auth', 'query', 'transports', 'extraHeaders']) {
  if (options[name] !== undefined) clientOptions[name] = options[name];
}
const socket = io(URL, clientOptions);

let finished = false;
function seen(name, line) {
  if (finished) return; // e.g. the disconnect our own close() causes
  print(line);
  if (until.has(name)) {
    finished = true;
    socket.close();
    // Let stdout drain before leaving.
    setImmediate(() => process.exit(0));
  }
}

const engineName = () => socket.io.engine?.transport?.name ?? null;

socket.io.on('open', () => {
  const engine = socket.io.engine;
  seen('open', { event: 'open', transport: engine.transport.name });
  engine.on('upgrade', (transport) => seen('upgrade', { event: 'upgrade', transport: transport.name }));
});

socket.on('connect', () => seen('connect', { event: 'connect', id: socket.id, transport: engineName() }));

socket.on('connect_error', (err) => {
  seen('connect_error', {
    event: 'connect_error',
    message: err.message,
    data: err.data ?? null,
    type: err.type ?? null,
    description: typeof err.description === 'number' ? err.description : null,
  });
});

socket.on('disconnect', (reason) => seen('disconnect', { event: 'disconnect', reason }));

socket.onAny((name, ...args) => seen(name, { event: 'emit', name, args }));

setTimeout(() => {
  print({ event: 'timeout' });
  process.exit(2);
}, Number(options.timeoutMs ?? 10000)).unref();
