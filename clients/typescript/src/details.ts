// Decoding of the three google.rpc detail messages chatmem sends (ErrorInfo, BadRequest, RetryInfo).
// They are small and stable, so they are read with protobuf-es's wire reader rather than generating
// googleapis' protos into this package.
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";

export interface ErrorInfo {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
}

export interface FieldViolation {
  field: string;
  description: string;
}

function fields(bytes: Uint8Array, each: (no: number, reader: BinaryReader, wire: WireType) => void): void {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [no, wire] = reader.tag();
    each(no, reader, wire);
  }
}

export function decodeErrorInfo(bytes: Uint8Array): ErrorInfo {
  const info: ErrorInfo = { reason: "", domain: "", metadata: {} };
  fields(bytes, (no, r, wire) => {
    if (no === 1) info.reason = r.string();
    else if (no === 2) info.domain = r.string();
    else if (no === 3) {
      let key = "";
      let value = "";
      fields(r.bytes(), (n, e, w) => {
        if (n === 1) key = e.string();
        else if (n === 2) value = e.string();
        else e.skip(w);
      });
      info.metadata[key] = value;
    } else r.skip(wire);
  });
  return info;
}

export function decodeBadRequest(bytes: Uint8Array): FieldViolation[] {
  const out: FieldViolation[] = [];
  fields(bytes, (no, r, wire) => {
    if (no !== 1) return void r.skip(wire);
    const violation: FieldViolation = { field: "", description: "" };
    fields(r.bytes(), (n, e, w) => {
      if (n === 1) violation.field = e.string();
      else if (n === 2) violation.description = e.string();
      else e.skip(w);
    });
    out.push(violation);
  });
  return out;
}

/** RetryInfo's retry_delay, in milliseconds. */
export function decodeRetryDelayMs(bytes: Uint8Array): number {
  let ms = 0;
  fields(bytes, (no, r, wire) => {
    if (no !== 1) return void r.skip(wire);
    fields(r.bytes(), (n, e, w) => {
      if (n === 1) ms += Number(e.int64()) * 1000;
      else if (n === 2) ms += e.int32() / 1e6;
      else e.skip(w);
    });
  });
  return ms;
}
