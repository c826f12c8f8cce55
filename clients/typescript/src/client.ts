// MemoryClient: a thin wrapper over the generated Connect clients with deadlines, retries on
// UNAVAILABLE (the same request id on every attempt, so writes are never stored twice), typed errors,
// async-iterable pagers and a StreamHistory that resumes after the last seq received.
import { randomUUID } from "node:crypto";
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { type Message, type MessageInputSchema, Role, type Thread } from "./gen/chatmem/v1/resources_pb.js";
import { type AppendMessagesResponse, ThreadMemoryService } from "./gen/chatmem/v1/thread_memory_service_pb.js";
import { PreferencesService } from "./gen/chatmem/v1/preferences_service_pb.js";
import { AdminService } from "./gen/chatmem/v1/admin_service_pb.js";
import { fromConnectError, UnavailableError } from "./errors.js";

export type RoleName = "user" | "assistant" | "system" | "tool";
/** A message to append: a role (name or enum) and its content. */
export type MessageLike = { role: RoleName | Role; content: string; name?: string; metadata?: Record<string, string> };

export interface RetryPolicy {
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
}

export interface ConnectOptions {
  /** A credential: { apiKey } is sent as "authorization: Bearer <key>". */
  credentials?: { apiKey: string };
  /** TLS: true for the system roots, or PEM material for a private CA and/or a client certificate (mTLS). */
  tls?: boolean | { ca?: string | Buffer; cert?: string | Buffer; key?: string | Buffer; servername?: string };
  /** Deadline of each unary call in ms (default 10000); streams have none unless signal ends them. */
  deadline?: number;
  /** The workspace of every call ("" = the server's default, or the credential's). */
  workspaceId?: string;
  retry?: Partial<RetryPolicy>;
  /** Extra metadata sent with every call. */
  headers?: Record<string, string>;
}

export const NO_RETRY: RetryPolicy = { maxAttempts: 1, initialBackoffMs: 0, maxBackoffMs: 0 };
const DEFAULT_RETRY: RetryPolicy = { maxAttempts: 4, initialBackoffMs: 50, maxBackoffMs: 1000 };

export const newRequestId = (): string => randomUUID().replaceAll("-", "");

const ROLES: Record<RoleName, Role> = { user: Role.USER, assistant: Role.ASSISTANT, system: Role.SYSTEM, tool: Role.TOOL };

function toInput(m: MessageLike): MessageInitShape<typeof MessageInputSchema> {
  return { role: typeof m.role === "string" ? ROLES[m.role] : m.role, content: m.content, name: m.name ?? "", metadata: m.metadata ?? {} };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Open a client; the connection is made lazily, so an unreachable server shows up on the first call. */
export function connect(target: string, options: ConnectOptions = {}): MemoryClient {
  return new MemoryClient(target, options);
}

export class MemoryClient {
  /** The generated Connect clients, for anything the wrapper does not cover. */
  readonly raw: {
    threads: Client<typeof ThreadMemoryService>;
    preferences: Client<typeof PreferencesService>;
    admin: Client<typeof AdminService>;
  };
  readonly workspaceId: string;
  private readonly session: Http2SessionManager;
  private readonly deadline: number;
  private readonly retry: RetryPolicy;

  constructor(target: string, options: ConnectOptions = {}) {
    const tls = options.tls;
    const baseUrl = `${tls ? "https" : "http"}://${target}`;
    // One HTTP/2 session of our own, so that close() can end it and the process can exit.
    this.session = new Http2SessionManager(baseUrl, { pingIntervalMs: 60_000 }, typeof tls === "object" ? tls : {});
    const headers = { ...options.headers };
    if (options.credentials) headers.authorization = `Bearer ${options.credentials.apiKey}`;
    const addHeaders: Interceptor = (next) => (req) => {
      for (const [k, v] of Object.entries(headers)) req.header.set(k, v);
      return next(req);
    };
    const transport = createGrpcTransport({ baseUrl, sessionManager: this.session, interceptors: [addHeaders] });
    this.raw = {
      threads: createClient(ThreadMemoryService, transport),
      preferences: createClient(PreferencesService, transport),
      admin: createClient(AdminService, transport),
    };
    this.workspaceId = options.workspaceId ?? "";
    this.deadline = options.deadline ?? 10_000;
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
  }

  /** Close the connection (open streams end). */
  close(): void {
    this.session.abort();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** Run one unary call with the deadline, retrying UNAVAILABLE with backoff (or the server's RetryInfo). */
  private async unary<T>(call: (opts: { timeoutMs: number }) => Promise<T>): Promise<T> {
    let backoff = this.retry.initialBackoffMs;
    const end = Date.now() + this.deadline;
    for (let attempt = 1; ; attempt++) {
      try {
        return await call({ timeoutMs: Math.max(1, end - Date.now()) });
      } catch (err) {
        const mapped = fromConnectError(err);
        const wait = Math.max(backoff, mapped instanceof UnavailableError ? (mapped.retryAfterMs ?? 0) : 0);
        if (!(mapped instanceof UnavailableError) || attempt >= this.retry.maxAttempts || Date.now() + wait >= end) throw mapped;
        await sleep(wait);
        backoff = Math.min(backoff * 2, this.retry.maxBackoffMs);
      }
    }
  }

  /** Append messages to a thread atomically and in order; returns the seqs, the new length and the durability. */
  append(
    threadId: string,
    messages: MessageLike | MessageLike[],
    opts: { requestId?: string; expectedLastSeq?: bigint | number; userId?: string; title?: string } = {},
  ): Promise<AppendMessagesResponse> {
    const request = {
      workspaceId: this.workspaceId,
      threadId,
      messages: (Array.isArray(messages) ? messages : [messages]).map(toInput),
      requestId: opts.requestId ?? newRequestId(),
      expectedLastSeq: opts.expectedLastSeq === undefined ? undefined : BigInt(opts.expectedLastSeq),
      userId: opts.userId ?? "",
      title: opts.title ?? "",
    };
    return this.unary((o) => this.raw.threads.appendMessages(request, o));
  }

  /** The last `limit` messages (default: the server's window), oldest first. */
  async getHistory(threadId: string, opts: { limit?: number } = {}): Promise<Message[]> {
    const request = { workspaceId: this.workspaceId, threadId, limit: opts.limit ?? 0 };
    return (await this.unary((o) => this.raw.threads.getHistory(request, o))).messages;
  }

  /** Every message of the thread, fetched page by page as the loop goes. */
  async *listMessages(threadId: string, opts: { pageSize?: number; startSeq?: bigint | number; reverse?: boolean } = {}): AsyncGenerator<Message> {
    let pageToken = "";
    do {
      const request = { workspaceId: this.workspaceId, threadId, pageSize: opts.pageSize ?? 0, pageToken, startSeq: BigInt(opts.startSeq ?? 0), reverse: opts.reverse ?? false };
      const page = await this.unary((o) => this.raw.threads.listMessages(request, o));
      yield* page.messages;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  /**
   * The whole thread (or after `afterSeq`) from StreamHistory, message by message. A stream that breaks
   * with UNAVAILABLE is reopened after the last seq received (up to the retry policy's attempts in a row).
   */
  async *streamHistory(threadId: string, opts: { afterSeq?: bigint | number; chunkSize?: number; signal?: AbortSignal; onResume?: (afterSeq: bigint) => void } = {}): AsyncGenerator<Message> {
    let afterSeq = BigInt(opts.afterSeq ?? 0);
    let failures = 0;
    for (;;) {
      try {
        const request = { workspaceId: this.workspaceId, threadId, afterSeq, chunkSize: opts.chunkSize ?? 0 };
        for await (const chunk of this.raw.threads.streamHistory(request, { signal: opts.signal })) {
          failures = 0;
          for (const message of chunk.messages) {
            afterSeq = message.seq;
            yield message;
          }
        }
        return;
      } catch (err) {
        const mapped = fromConnectError(err, opts.signal?.aborted);
        if (!(mapped instanceof UnavailableError) || ++failures >= this.retry.maxAttempts) throw mapped;
        opts.onResume?.(afterSeq);
        await sleep(failures * 100);
      }
    }
  }

  /** The prompt block: "Previous conversation:" lines, then "User preferences:" lines. */
  async getContext(threadId: string, opts: { userId?: string; maxMessages?: number; maxChars?: number } = {}): Promise<string> {
    const request = { workspaceId: this.workspaceId, threadId, userId: opts.userId ?? "", maxMessages: opts.maxMessages ?? 0, maxChars: opts.maxChars ?? 0 };
    return (await this.unary((o) => this.raw.threads.getContext(request, o))).context;
  }

  /** A thread's metadata; NotFoundError (reason THREAD_NOT_FOUND) if it does not exist. */
  async getThread(threadId: string): Promise<Thread> {
    const response = await this.unary((o) => this.raw.threads.getThread({ workspaceId: this.workspaceId, threadId }, o));
    return response.thread!;
  }

  /** A user's threads, newest first, page by page. */
  async *listThreads(userId: string, opts: { pageSize?: number } = {}): AsyncGenerator<Thread> {
    let pageToken = "";
    do {
      const request = { workspaceId: this.workspaceId, userId, pageSize: opts.pageSize ?? 0, pageToken };
      const page = await this.unary((o) => this.raw.threads.listThreads(request, o));
      yield* page.threads;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  /** Change a thread's title or pin; returns the updated thread. */
  async updateThread(threadId: string, changes: { title?: string; pinned?: boolean }): Promise<Thread> {
    const request = { workspaceId: this.workspaceId, threadId, ...changes, requestId: newRequestId() };
    return (await this.unary((o) => this.raw.threads.updateThread(request, o))).thread!;
  }

  /** Delete a thread from every tier; returns how many messages it had (0 if it did not exist). */
  async deleteThread(threadId: string): Promise<bigint> {
    const request = { workspaceId: this.workspaceId, threadId, requestId: newRequestId(), allowMissing: true };
    return (await this.unary((o) => this.raw.threads.deleteThread(request, o))).deletedMessages;
  }

  /** A user's preferences (all, or only `keys`). */
  async getPreferences(userId: string, keys: string[] = []): Promise<Record<string, string>> {
    const response = await this.unary((o) => this.raw.preferences.getPreferences({ workspaceId: this.workspaceId, userId, keys }, o));
    return Object.fromEntries(response.preferences.map((p) => [p.key, p.value]));
  }

  /** Upsert some of a user's preferences; returns how many were written. */
  async setPreferences(userId: string, preferences: Record<string, string>): Promise<number> {
    const request = { workspaceId: this.workspaceId, userId, preferences, requestId: newRequestId() };
    return (await this.unary((o) => this.raw.preferences.setPreferences(request, o))).updatedCount;
  }

  /** Delete some keys of a user's preferences, or all of them when `keys` is empty. */
  async deletePreferences(userId: string, keys: string[] = []): Promise<number> {
    const request = { workspaceId: this.workspaceId, userId, keys, all: keys.length === 0, requestId: newRequestId() };
    return (await this.unary((o) => this.raw.preferences.deletePreferences(request, o))).deletedCount;
  }
}
