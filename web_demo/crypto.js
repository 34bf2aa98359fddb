// What the demo's simulated phone and browser compute, with WebCrypto only:
// base32/base64url, TOTP (RFC 6238: HMAC-SHA1, 6 digits, 30 s steps),
// ECDSA P-256 signatures in WebCrypto's raw r||s form, and the approval hash.
//
// WebCrypto exists only in secure contexts: https, or http on 127.0.0.1 /
// localhost. `cryptoAvailable()` lets the page say so instead of failing.

const encoder = new TextEncoder();

export function cryptoAvailable() {
  return Boolean(globalThis.crypto && globalThis.crypto.subtle);
}

export function base64url(bytes) {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let binary = "";
  for (const byte of view) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The UTF-8 text inside a base64url string. */
export function base64urlDecodeText(text) {
  const padded = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  const binary = atob(padded);
  return new TextDecoder().decode(Uint8Array.from(binary, (char) => char.charCodeAt(0)));
}

/** RFC 4648 base32 (the TOTP secret), case-insensitive, padding optional. */
export function base32Decode(text) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  const clean = text.toUpperCase().replace(/=+$/, "").replace(/\s+/g, "");
  const out = [];
  let bits = 0;
  let value = 0;
  for (const char of clean) {
    const index = alphabet.indexOf(char);
    if (index < 0) throw new Error(`not base32: ${char}`);
    value = (value << 5) | index;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return new Uint8Array(out);
}

/** The TOTP step (RFC 6238 T) of a moment given in milliseconds. */
export function totpStep(nowMs, period = 30) {
  return Math.floor(nowMs / 1000 / period);
}

/** HOTP(secret, step) as `digits` decimal digits (RFC 4226 dynamic truncation). */
export async function totpAt(secretBase32, step, digits = 6) {
  const key = await crypto.subtle.importKey(
    "raw",
    base32Decode(secretBase32),
    { name: "HMAC", hash: "SHA-1" },
    false,
    ["sign"],
  );
  const counter = new Uint8Array(8);
  let rest = step;
  for (let i = 7; i >= 0; i -= 1) {
    counter[i] = rest % 256;
    rest = Math.floor(rest / 256);
  }
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, counter));
  const offset = mac[mac.length - 1] & 0x0f;
  const code =
    ((mac[offset] & 0x7f) << 24) | (mac[offset + 1] << 16) | (mac[offset + 2] << 8) | mac[offset + 3];
  return String(code % 10 ** digits).padStart(digits, "0");
}

/** A fresh P-256 signing key; the private half never leaves WebCrypto. */
export async function generateDeviceKey() {
  const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
  const jwk = await crypto.subtle.exportKey("jwk", pair.publicKey);
  return { privateKey: pair.privateKey, publicJwk: { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y } };
}

/** ECDSA P-256 / SHA-256 over the UTF-8 text; WebCrypto gives raw r||s (64 bytes). */
export async function signText(privateKey, text) {
  const signature = await crypto.subtle.sign(
    { name: "ECDSA", hash: "SHA-256" },
    privateKey,
    encoder.encode(text),
  );
  return base64url(signature);
}

/** base64url(HMAC-SHA256(key = UTF-8 of wsToken, msg = jwt + "." + random)). */
export async function approvalHash(wsToken, jwt, random) {
  const key = await crypto.subtle.importKey(
    "raw",
    encoder.encode(wsToken),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  return base64url(await crypto.subtle.sign("HMAC", key, encoder.encode(`${jwt}.${random}`)));
}

/** The claims of a JWT, unverified: the page only displays them. */
export function jwtClaims(jwt) {
  try {
    return JSON.parse(base64urlDecodeText(jwt.split(".")[1]));
  } catch {
    return {};
  }
}

/**
 * A copy of `jwt` whose payload says it expired an hour ago. Its signature no
 * longer matches, so a gateway must refuse it as invalid_token, not
 * token_expired: only a genuinely expired gateway token shows token_expired.
 */
export function tamperedExpiredCopy(jwt) {
  const [header, , signature] = jwt.split(".");
  const claims = { ...jwtClaims(jwt), exp: Math.floor(Date.now() / 1000) - 3600 };
  return `${header}.${base64url(encoder.encode(JSON.stringify(claims)))}.${signature}`;
}
