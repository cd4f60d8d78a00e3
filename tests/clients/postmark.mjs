// Runs calls of Postmark's official Node.js client against a gateway and
// prints, per call, what the client made of the answer. Used by
// tests/postmark_clients.rs; reads {"host": "127.0.0.1:PORT", "calls": [...]}
// from argv[2] (a file), each call {"client": "account"|"server", "token",
// "method", "args": [...]}.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(process.env.POSTMARK_MODULES + "/");
const postmark = require("postmark");

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const options = { useHttps: false, requestHost: spec.host, timeout: 10 };
const results = [];
for (const call of spec.calls) {
  const Client = call.client === "account" ? postmark.AccountClient : postmark.ServerClient;
  const client = new Client(call.token, options);
  try {
    await client[call.method](...call.args);
    results.push({ ok: true });
  } catch (e) {
    results.push({ ok: false, error: e.name, code: e.code, status: e.statusCode, message: e.message });
  }
}
console.log(JSON.stringify(results));
