// Loaded by `capgate exec` and `capgate env` through NODE_OPTIONS=--require.
// Node before 24 ignores HTTP(S)_PROXY in its built-in fetch; undici's EnvHttpProxyAgent,
// set as the global dispatcher, makes fetch (and the SDKs built on it) use the proxy
// variables, NO_PROXY included. Node's http/https modules are not covered: contained,
// a direct https.get fails (no route); capgate's README says so.
"use strict";
const path = require("node:path");
const candidates = [path.join(__dirname, "node_modules", "undici"), "undici"];
let undici = null;
for (const candidate of candidates) {
  try {
    undici = require(candidate);
    break;
  } catch (err) {
    // try the next one
  }
}
if (undici === null) {
  process.emitWarning(
    "capgate: undici is not installed (make venv installs it); Node's fetch ignores " +
      "the proxy and, contained, cannot connect",
    "CapgateWarning"
  );
} else if (process.env.HTTPS_PROXY || process.env.HTTP_PROXY) {
  // undici 6 flags EnvHttpProxyAgent as experimental on every start: not the agent's concern.
  const emitWarning = process.emitWarning;
  process.emitWarning = function (warning, ...rest) {
    const options = rest[0];
    const code = typeof options === "object" && options !== null ? options.code : rest[1];
    if (code === "UNDICI-EHPA" || options === "UNDICI-EHPA") return;
    return emitWarning.call(this, warning, ...rest);
  };
  try {
    undici.setGlobalDispatcher(new undici.EnvHttpProxyAgent());
  } finally {
    process.emitWarning = emitWarning;
  }
}
