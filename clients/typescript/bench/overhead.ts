// Per-call cost of MemoryClient.getHistory against the generated Connect client's getHistory on the same
// connection (bench/client_overhead.py runs it). Prints JSON: wall and CPU microseconds per call, per round.
import { connect } from "../src/index.js";

const [target, thread, workspaceId, calls, rounds] = [process.argv[2]!, process.argv[3]!, process.argv[4]!, Number(process.argv[5]), Number(process.argv[6])];
const memory = connect(target, { workspaceId });
const request = { workspaceId, threadId: thread, limit: 0 };

async function time(body: () => Promise<unknown>): Promise<[number, number]> {
  const start = process.hrtime.bigint();
  const cpu = process.cpuUsage();
  for (let i = 0; i < calls; i++) await body();
  const used = process.cpuUsage(cpu);
  return [Number(process.hrtime.bigint() - start) / 1000 / calls, (used.user + used.system) / calls];
}

const raw = () => memory.raw.threads.getHistory(request, { timeoutMs: 10_000 });
const wrapped = () => memory.getHistory(thread);
const out: Record<string, number[]> = { raw: [], wrapper: [], raw_cpu: [], wrapper_cpu: [] };
try {
  await time(raw);
  await time(wrapped); // warm-up: connection, JIT
  for (let r = 0; r < rounds; r++) {
    const order = [["raw", raw], ["wrapper", wrapped]] as const;
    for (const [name, body] of r % 2 === 0 ? order : [...order].reverse()) {
      const [wall, cpu] = await time(body);
      out[name]!.push(wall);
      out[`${name}_cpu`]!.push(cpu);
    }
  }
} finally {
  memory.close();
}
process.stdout.write(JSON.stringify(out) + "\n");
