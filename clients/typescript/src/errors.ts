// The client's typed errors: one class per kind of failure, with the server's ErrorInfo, BadRequest and
// RetryInfo decoded, and the request id the server echoed.
import { Code, ConnectError } from "@connectrpc/connect";
import { decodeBadRequest, decodeErrorInfo, decodeRetryDelayMs, type FieldViolation } from "./details.js";

export type { FieldViolation } from "./details.js";

/** Base of every error a chatmem call throws. */
export class ChatmemError extends Error {
  /** The gRPC status code (Connect's Code enum: same numbers). */
  readonly code: Code;
  /** ErrorInfo reason, e.g. "THREAD_NOT_FOUND"; "" when the status did not come from the server's code. */
  readonly reason: string;
  /** ErrorInfo domain: "chatmem.dev". */
  readonly domain: string;
  /** ErrorInfo metadata, e.g. { thread_id: "t1" }. */
  readonly metadata: Record<string, string>;
  /** Every offending field, from BadRequest (empty unless INVALID_ARGUMENT). */
  readonly violations: FieldViolation[];
  /** How long the server asked to wait before a retry (RetryInfo), or undefined. */
  readonly retryAfterMs: number | undefined;
  /** The x-request-id the server sent back, or undefined. */
  readonly requestId: string | undefined;

  constructor(message: string, init: Partial<Omit<ChatmemError, "message" | "name">> & { code: Code; cause?: unknown }) {
    super(message, { cause: init.cause });
    this.name = new.target.name;
    this.code = init.code;
    this.reason = init.reason ?? "";
    this.domain = init.domain ?? "";
    this.metadata = init.metadata ?? {};
    this.violations = init.violations ?? [];
    this.retryAfterMs = init.retryAfterMs;
    this.requestId = init.requestId;
  }

  /** The paths of the offending fields, in the server's order. */
  get fields(): string[] {
    return this.violations.map((v) => v.field);
  }
}

export class InvalidArgumentError extends ChatmemError {}
export class NotFoundError extends ChatmemError {}
export class ConflictError extends ChatmemError {}
export class UnauthenticatedError extends ChatmemError {}
export class PermissionDeniedError extends ChatmemError {}
export class ResourceExhaustedError extends ChatmemError {}
export class UnavailableError extends ChatmemError {}
export class DeadlineExceededError extends ChatmemError {}
export class CancelledError extends ChatmemError {}
export class InternalError extends ChatmemError {}

const BY_CODE = new Map<Code, typeof ChatmemError>([
  [Code.InvalidArgument, InvalidArgumentError],
  [Code.OutOfRange, InvalidArgumentError],
  [Code.NotFound, NotFoundError],
  [Code.Aborted, ConflictError],
  [Code.AlreadyExists, ConflictError],
  [Code.Unauthenticated, UnauthenticatedError],
  [Code.PermissionDenied, PermissionDeniedError],
  [Code.ResourceExhausted, ResourceExhaustedError],
  [Code.Unavailable, UnavailableError],
  [Code.DeadlineExceeded, DeadlineExceededError],
  [Code.Canceled, CancelledError],
]);

/**
 * Map any error of a Connect call to the matching ChatmemError (non-Connect errors are returned as they are).
 * `cancelledByCaller`: the caller aborted the call; otherwise a CANCELLED without a server reason is the
 * transport's doing (e.g. a TLS handshake the server refused) and becomes UNAVAILABLE, as in gRPC's clients.
 */
export function fromConnectError(err: unknown, cancelledByCaller = false): unknown {
  if (!(err instanceof ConnectError)) return err;
  let info = { reason: "", domain: "", metadata: {} as Record<string, string> };
  let violations: FieldViolation[] = [];
  let retryAfterMs: number | undefined;
  for (const detail of err.details) {
    // Details read from the wire are {type, value}; outgoing ones (server side) carry a schema instead.
    if (!("type" in detail) || !(detail.value instanceof Uint8Array)) continue;
    if (detail.type === "google.rpc.ErrorInfo") info = decodeErrorInfo(detail.value);
    else if (detail.type === "google.rpc.BadRequest") violations = violations.concat(decodeBadRequest(detail.value));
    else if (detail.type === "google.rpc.RetryInfo") retryAfterMs = decodeRetryDelayMs(detail.value);
  }
  // Connect reports a connection the network dropped (ECONNRESET, EPIPE, ...) as ABORTED; gRPC's own
  // clients call that UNAVAILABLE, and so do we, so that it is retried like any transport failure.
  const dropped = err.code === Code.Aborted && isNetworkError(err.cause);
  const torn = err.code === Code.Canceled && !cancelledByCaller;
  const code = !info.reason && (dropped || torn) ? Code.Unavailable : err.code;
  const Class = BY_CODE.get(code) ?? InternalError;
  return new Class(err.rawMessage, {
    code,
    ...info,
    violations,
    retryAfterMs,
    requestId: err.metadata.get("x-request-id") ?? undefined,
    cause: err,
  });
}

function isNetworkError(cause: unknown): boolean {
  const code = (cause as { code?: unknown } | undefined)?.code;
  return typeof code === "string" && /^E[A-Z]+$/.test(code);
}
