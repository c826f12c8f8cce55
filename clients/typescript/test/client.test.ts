// The TypeScript client against a real server: tests/integration/test_client_typescript.py starts one
// and sets CHATMEM_TARGET.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as net from "node:net";
import { connect, ConflictError, InvalidArgumentError, NO_RETRY, NotFoundError, Role, UnavailableError, type MemoryClient } from "../src/index.js";

const target = process.env.CHATMEM_TARGET ?? assert.fail("CHATMEM_TARGET is not set: run through tests/integration/test_client_typescript.py");
let n = 0;
const workspace = () => `ts-${process.pid}-${Date.now()}-${n++}`;

async function using<T>(client: MemoryClient, body: (c: MemoryClient) => Promise<T>): Promise<T> {
  try {
    return await body(client);
  } finally {
    client.close();
  }
}

test("append, history, context and preferences round-trip with typed fields", () =>
  using(connect(target, { workspaceId: workspace() }), async (memory) => {
    const appended = await memory.append("t1", [
      { role: "user", content: "Hi! I'm Ada." },
      { role: "assistant", content: "Hello Ada." },
    ]);
    // int64 are bigint, enums are the generated enum, empty repeated fields are [] (not absent).
    assert.deepEqual(appended.seqs, [1n, 2n]);
    const history = await memory.getHistory("t1");
    assert.deepEqual(history.map((m) => [m.seq, m.role, m.content]), [[1n, Role.USER, "Hi! I'm Ada."], [2n, Role.ASSISTANT, "Hello Ada."]]);
    assert.deepEqual(await memory.getHistory("nothing-here"), []);
    assert.equal(await memory.setPreferences("ada", { tone: "brief" }), 1);
    assert.deepEqual(await memory.getPreferences("ada"), { tone: "brief" });
    assert.equal(
      await memory.getContext("t1", { userId: "ada" }),
      "Previous conversation:\nuser: Hi! I'm Ada.\nassistant: Hello Ada.\n\nUser preferences:\ntone: brief",
    );
    const thread = await memory.updateThread("t1", { title: "greeting", pinned: true });
    assert.equal(thread.title, "greeting");
    assert.equal(thread.pinned, true);
    assert.equal(await memory.deletePreferences("ada"), 1);
    assert.equal(await memory.deleteThread("t1"), 2n);
    assert.equal(await memory.deleteThread("t1"), 0n, "a retried delete succeeds");
  }));

test("the same request id stores nothing twice", () =>
  using(connect(target, { workspaceId: workspace() }), async (memory) => {
    const first = await memory.append("t", { role: "user", content: "once" }, { requestId: "req-1" });
    const again = await memory.append("t", { role: "user", content: "once" }, { requestId: "req-1" });
    assert.deepEqual(again.seqs, first.seqs);
    assert.equal(again.replayed, true);
    assert.equal((await memory.getHistory("t")).length, 1);
  }));

test("listMessages and listThreads are async iterable pagers", () =>
  using(connect(target, { workspaceId: workspace() }), async (memory) => {
    for (let i = 0; i < 5; i++) await memory.append("paged", { role: "user", content: `m${i}` }, { userId: "ada" });
    await memory.append("other", { role: "user", content: "x" }, { userId: "ada" });
    const seqs: bigint[] = [];
    for await (const m of memory.listMessages("paged", { pageSize: 2 })) seqs.push(m.seq);
    assert.deepEqual(seqs, [1n, 2n, 3n, 4n, 5n]);
    const threads: string[] = [];
    for await (const t of memory.listThreads("ada", { pageSize: 1 })) threads.push(t.threadId);
    assert.deepEqual(threads.sort(), ["other", "paged"]);
  }));

test("typed errors carry the reason, every bad field and the request id", () =>
  using(connect(target, { workspaceId: workspace(), retry: NO_RETRY }), async (memory) => {
    const invalid = await memory.append("bad id!", [], { userId: "no spaces" }).catch((e: unknown) => e);
    assert.ok(invalid instanceof InvalidArgumentError, String(invalid));
    assert.equal(invalid.reason, "INVALID_ARGUMENT");
    assert.equal(invalid.domain, "chatmem.dev");
    assert.deepEqual(invalid.fields, ["thread_id", "user_id", "messages"]);
    assert.ok(invalid.violations.every((v) => v.description.length > 0));
    assert.match(invalid.requestId ?? "", /^[0-9a-f]{32}$/);
    const missing = await memory.getThread("nobody").catch((e: unknown) => e);
    assert.ok(missing instanceof NotFoundError);
    assert.equal(missing.reason, "THREAD_NOT_FOUND");
    assert.deepEqual(missing.metadata, { thread_id: "nobody" });
    await memory.append("cas", { role: "user", content: "one" });
    const conflict = await memory.append("cas", { role: "user", content: "two" }, { expectedLastSeq: 9 }).catch((e: unknown) => e);
    assert.ok(conflict instanceof ConflictError);
    assert.equal(conflict.reason, "LAST_SEQ_MISMATCH");
  }));

test("no server is UnavailableError after the retries, with no server reason", async () => {
  const port = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
  await using(connect(`127.0.0.1:${port}`, { retry: { maxAttempts: 2, initialBackoffMs: 10 } }), async (memory) => {
    const err = await memory.getHistory("t").catch((e: unknown) => e);
    assert.ok(err instanceof UnavailableError, String(err));
    assert.equal(err.reason, "");
  });
});

// Forwards to the server but cuts its first connection after `limit` bytes from the server, as a
// dropped connection would; later connections pass everything.
function cutProxy(limit: number): Promise<{ port: number; connections: () => number; close: () => void }> {
  let connections = 0;
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
  const server = net.createServer((client) => {
    const first = ++connections === 1;
    const upstream = net.connect(port, host);
    let seen = 0;
    upstream.on("data", (data: Buffer) => {
      seen += data.length;
      if (first && seen > limit) {
        client.destroy();
        upstream.destroy();
        return;
      }
      client.write(data);
    });
    client.on("data", (data) => upstream.write(data));
    for (const s of [client, upstream]) s.on("error", () => undefined).on("close", () => (client.destroy(), upstream.destroy()));
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve({ port: (server.address() as net.AddressInfo).port, connections: () => connections, close: () => server.close() })),
  );
}

test("streamHistory resumes after a dropped connection from the last seq", async () => {
  const ws = workspace();
  await using(connect(target, { workspaceId: ws }), async (direct) => {
    for (let i = 0; i < 3000; i += 100) {
      await direct.append("long", Array.from({ length: 100 }, (_, j) => ({ role: "user" as const, content: `message ${i + j} with some padding to make frames larger` })));
    }
  });
  const proxy = await cutProxy(64 * 1024);
  const resumedAt: bigint[] = [];
  try {
    await using(connect(`127.0.0.1:${proxy.port}`, { workspaceId: ws }), async (memory) => {
      let next = 1n;
      for await (const m of memory.streamHistory("long", { onResume: (seq) => resumedAt.push(seq) })) {
        assert.equal(m.seq, next++);
      }
      assert.equal(next, 3001n);
    });
  } finally {
    proxy.close();
  }
  assert.ok(resumedAt.length >= 1 && resumedAt[0]! > 0n, `resumed at ${resumedAt}`);
  assert.ok(proxy.connections() >= 2);
});
