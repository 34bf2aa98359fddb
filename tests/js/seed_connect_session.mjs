// The IDToken WebSocket API's own browser client (seed 000, "connectSession"),
// run by node against a ticketgate gateway: PROTOCOL §4 says such a client
// works unchanged. The function below is the seed's, word for word, except for
// its URL (ws://127.0.0.1:PORT instead of wss://auth.idtoken.example.com).
// Everything around it only observes: the three callbacks the seed leaves to
// the page print JSON lines, and listeners on the returned socket print every
// frame and the close code.
//
// usage: node seed_connect_session.mjs PORT SESSION_ID WS_TOKEN [TABS]
//   TABS (default 1): how many times connectSession is called for the session,
//   each call once the previous socket has shown its OTP (a second browser tab).
// Output: one line per callback/frame/close; the function's own console.log
// lines come out as they are. Exits when every socket has closed, or with
// status 2 after SEED_CLIENT_TIMEOUT_MS (default 15000).

import WebSocket from 'ws';

const [PORT, SESSION_ID, WS_TOKEN, TABS = '1'] = process.argv.slice(2);
if (!PORT || !SESSION_ID || WS_TOKEN === undefined) {
  console.error('usage: node seed_connect_session.mjs PORT SESSION_ID WS_TOKEN [TABS]');
  process.exit(64);
}

const print = (line) => console.log(JSON.stringify(line));
let tab = 0;

// -- the page's callbacks, which the seed calls -------------------------------

function displayOTP(autoPassword) {
  print({ event: 'displayOTP', tab, autoPassword });
  if (tab < Number(TABS)) {
    openTab();
  }
}

function handleSuccess(jwt, hash, random) {
  print({ event: 'handleSuccess', tab, jwt, hash, random });
}

function handleRejection(reason) {
  print({ event: 'handleRejection', tab, reason });
}

// -- the seed's function, unchanged but for the URL ----------------------------

function connectSession(sessionId, wsToken) {
  const ws = new WebSocket(
    `ws://127.0.0.1:${PORT}/ws/session/${sessionId}?token=${wsToken}`
  );
  ws.onmessage = (event) => {
    const data = JSON.parse(event.data);
    switch (data.type) {
      case 'otp_ready':
        displayOTP(data.autoPassword);
        break;
      case 'approved':
        handleSuccess(data.jwt, data.hash, data.random);
        ws.close();
        break;
      case 'rejected':
        handleRejection(data.reason);
        ws.close();
        break;
    }
  };
  ws.onclose = (event) => {
    if (event.code === 4009) {
      console.log('Connection replaced by another tab');
    }
  };
  return ws;
}

// -- observing the sockets it returns ---------------------------------------------

function openTab() {
  tab += 1;
  const mine = tab;
  const ws = connectSession(SESSION_ID, WS_TOKEN);
  // Registered after the seed's own handlers, so these lines follow theirs.
  ws.addEventListener('message', (event) => print({ event: 'frame', tab: mine, data: JSON.parse(event.data) }));
  ws.addEventListener('close', (event) => print({ event: 'close', tab: mine, code: event.code }));
  ws.addEventListener('error', (event) => print({ event: 'error', tab: mine, message: String(event.message) }));
}

setTimeout(() => {
  print({ event: 'timeout' });
  process.exit(2);
}, Number(process.env.SEED_CLIENT_TIMEOUT_MS || 15000)).unref();

openTab();
