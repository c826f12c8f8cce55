// The chatmem TypeScript client: connect() and MemoryClient, the typed errors, and the generated types.
export { connect, MemoryClient, NO_RETRY, newRequestId } from "./client.js";
export type { ConnectOptions, MessageLike, RetryPolicy, RoleName } from "./client.js";
export * from "./errors.js";
export { Role, Tier, Durability } from "./gen/chatmem/v1/resources_pb.js";
export type { Message, Thread, ServingInfo } from "./gen/chatmem/v1/resources_pb.js";
