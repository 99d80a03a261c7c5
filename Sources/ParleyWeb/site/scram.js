// SASL SCRAM-SHA-256 (RFC 5802, RFC 7677) with WebCrypto. Logging in computes the salted
// password once; what is remembered in the browser is only ClientKey and ServerKey for that salt
// and iteration count (what RFC 5802 section 5.1 lets clients cache), never the password.
// WebCrypto exists only on secure pages (https, or localhost); elsewhere the client uses PLAIN.

const encoder = new TextEncoder();

export const available = () => Boolean(globalThis.crypto && crypto.subtle);

function toBase64(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes)));
}

function fromBase64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

async function hmac(keyBytes, text) {
  const key = await crypto.subtle.importKey("raw", keyBytes, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, encoder.encode(text)));
}

async function saltedKeys(password, salt, iterations) {
  const base = await crypto.subtle.importKey("raw", encoder.encode(password.normalize("NFKC")), "PBKDF2", false, ["deriveBits"]);
  const salted = new Uint8Array(await crypto.subtle.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt, iterations }, base, 256));
  return { clientKey: await hmac(salted, "Client Key"), serverKey: await hmac(salted, "Server Key") };
}

function saslName(name) {
  return name.replace(/=/g, "=3D").replace(/,/g, "=2C");
}

/**
 * One exchange. `secret` is { password } or remembered { salt, iterations, clientKey, serverKey }
 * (base64). Each step takes the server's decoded text and returns the client's text to send;
 * `remembered` holds the keys to keep once the server's signature has been verified.
 */
export class ScramClient {
  constructor(account, secret) {
    this.account = account;
    this.secret = secret;
    const nonce = new Uint8Array(18);
    crypto.getRandomValues(nonce);
    this.nonce = toBase64(nonce);
    this.firstBare = `n=${saslName(account)},r=${this.nonce}`;
    this.remembered = null;
  }

  first() {
    return `n,,${this.firstBare}`;
  }

  async final(serverFirst) {
    const fields = Object.fromEntries(serverFirst.split(",").map((f) => [f[0], f.slice(2)]));
    if (!fields.r || !fields.r.startsWith(this.nonce) || !fields.s || !fields.i) throw new Error("unexpected SCRAM challenge");
    const iterations = Number(fields.i);
    let keys;
    if (this.secret.password !== undefined) {
      keys = await saltedKeys(this.secret.password, fromBase64(fields.s), iterations);
    } else if (this.secret.salt === fields.s && this.secret.iterations === iterations) {
      keys = { clientKey: fromBase64(this.secret.clientKey), serverKey: fromBase64(this.secret.serverKey) };
    } else {
      throw new Error("the password changed");
    }
    const withoutProof = `c=biws,r=${fields.r}`;
    this.authMessage = `${this.firstBare},${serverFirst},${withoutProof}`;
    const storedKey = new Uint8Array(await crypto.subtle.digest("SHA-256", keys.clientKey));
    const signature = await hmac(storedKey, this.authMessage);
    const proof = keys.clientKey.map((byte, i) => byte ^ signature[i]);
    this.keys = keys;
    this.salt = fields.s;
    this.iterations = iterations;
    return `${withoutProof},p=${toBase64(proof)}`;
  }

  /** Checks the server's signature: a server that does not know the password cannot forge it. */
  async verify(serverFinal) {
    const expected = toBase64(await hmac(this.keys.serverKey, this.authMessage));
    if (serverFinal !== `v=${expected}`) throw new Error("the server's SCRAM signature is wrong");
    this.remembered = { salt: this.salt, iterations: this.iterations, clientKey: toBase64(this.keys.clientKey), serverKey: toBase64(this.keys.serverKey) };
  }
}

export const base64 = { encode: (text) => toBase64(encoder.encode(text)), decode: (text) => new TextDecoder().decode(fromBase64(text)) };
