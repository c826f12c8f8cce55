// The TypeScript side of tests/interop: one command per step, JSON on stdout. The target, workspace and
// API key come from CHATMEM_TARGET, CHATMEM_WORKSPACE and CHATMEM_API_KEY; TLS from CHATMEM_CA (and
// CHATMEM_CERT, CHATMEM_KEY for a client certificate), PEM files.
import { readFileSync } from "node:fs";
import { ChatmemError, connect, NO_RETRY } from "../src/index.js";

const [command, thread = "t", count = "0"] = process.argv.slice(2);
const apiKey = process.env.CHATMEM_API_KEY;
const memory = connect(process.env.CHATMEM_TARGET!, {
  workspaceId: process.env.CHATMEM_WORKSPACE ?? "",
  credentials: apiKey ? { apiKey } : undefined,
  tls: process.env.CHATMEM_CA ? { ca: readFileSync(process.env.CHATMEM_CA), ...clientCertificate() } : false,
  retry: NO_RETRY,
});

function clientCertificate() {
  const [cert, key] = [process.env.CHATMEM_CERT, process.env.CHATMEM_KEY];
  return cert && key ? { cert: readFileSync(cert), key: readFileSync(key) } : {};
}

function failure(err: unknown) {
  if (!(err instanceof ChatmemError)) throw err;
  return { code: err.code, reason: err.reason, domain: err.domain, fields: err.fields, request_id: Boolean(err.requestId), message: err.message };
}

async function main(): Promise<unknown> {
  switch (command) {
    case "append": {
      // count exchanges of a user question and an assistant answer, one append each.
      const seqs: string[] = [];
      for (let i = 0; i < Number(count); i++) {
        const out = await memory.append(thread, [
          { role: "user", content: `question ${i} from node` },
          { role: "assistant", content: `answer ${i} from node` },
        ]);
        seqs.push(...out.seqs.map(String));
      }
      return { seqs };
    }
    case "window":
      return (await memory.getHistory(thread)).map((m) => ({ seq: Number(m.seq), content: m.content }));
    case "invalid":
      return failure(await memory.append("bad id!", [], { userId: "no spaces" }).then(() => "no error", (e: unknown) => e));
    case "missing":
      return failure(await memory.getThread(thread).then(() => "no error", (e: unknown) => e));
    case "history":
      return failure(await memory.getHistory(thread).then(() => "no error", (e: unknown) => e));
    default:
      throw new Error(`unknown command ${command}`);
  }
}

try {
  process.stdout.write(JSON.stringify(await main()) + "\n");
} finally {
  memory.close();
}
