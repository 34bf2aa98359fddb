// The Node baseline of `make bench`: socket.io 4 (pinned in bench/package.json)
// doing what the bench asks of every server: verify an ES256 JWT at connect
// (jsonwebtoken, the gateway's public key), join `user:<sub>`, emit
// `authenticated`, and `POST /api/publish` (admin bearer) to a room.
//
// usage: node node_server.mjs PORT PUBLIC_JWK_JSON ADMIN_TOKEN

import { createPublicKey } from 'node:crypto';
import http from 'node:http';
import jwt from 'jsonwebtoken';
import { Server } from 'socket.io';

const [PORT, JWK, ADMIN] = process.argv.slice(2);
const key = createPublicKey({ key: JSON.parse(JWK), format: 'jwk' });
const json = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/healthz') return json(res, 200, { status: 'ok' });
  if (req.method === 'POST' && req.url === '/api/publish') {
    if (req.headers.authorization !== `Bearer ${ADMIN}`) return json(res, 401, { error: { code: 'invalid_token' } });
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      const { room, event, data } = JSON.parse(Buffer.concat(chunks).toString());
      io.to(room).emit(event, data);
      json(res, 202, { room, event });
    });
    return undefined;
  }
  if (!req.url.startsWith('/socket.io/')) json(res, 404, { error: { code: 'not_found' } });
  return undefined;
});

const io = new Server(server);
io.use((socket, next) => {
  try {
    const claims = jwt.verify(socket.handshake.auth?.token ?? '', key, { algorithms: ['ES256'], issuer: 'ticketgate' });
    socket.data.claims = claims;
    next();
  } catch {
    const refusal = new Error('invalid token');
    refusal.data = { code: 4001, reason: 'invalid_token' };
    next(refusal);
  }
});
io.on('connection', (socket) => {
  const { sub, exp } = socket.data.claims;
  socket.join(`user:${sub}`);
  socket.emit('authenticated', { sub, expiresAt: new Date(exp * 1000).toISOString(), via: 'token' });
});

server.listen(Number(PORT), '127.0.0.1');
