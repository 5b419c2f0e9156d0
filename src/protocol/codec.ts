/**
 * A small schema-driven protobuf codec on protons-runtime's reader and writer.
 *
 * protons generates TypeScript namespaces and enums, which Node's type
 * stripping cannot run, so our messages are declared as field tables instead.
 * The wire format is plain proto3: any protobuf implementation can read it.
 * Unlike generated code, every string, bytes and repeated field carries its
 * own bound, checked while decoding, before the bytes are sliced or copied.
 */
import { reader as createReader, writer as createWriter } from 'protons-runtime'
import type { Reader, Writer } from 'protons-runtime'
import { ProtocolError } from '../errors.ts'

interface Common {
  /** Protobuf field number. */
  no: number
  repeated?: boolean
  /** Largest number of elements of a repeated field. */
  maxCount?: number
}

export type FieldSpec =
  | (Common & { kind: 'uint32' | 'uint64' | 'double' | 'bool' })
  | (Common & { kind: 'string' | 'bytes', maxBytes: number })
  | (Common & { kind: 'message', codec: MessageCodec<object> })

export type Schema<T> = { [K in keyof T]-?: FieldSpec }

export interface MessageCodec<T> {
  readonly name: string
  // Method syntax on purpose: it lets a MessageCodec<TensorDesc> stand where a
  // MessageCodec<object> is declared (nested message fields).
  encode(value: T): Uint8Array
  decode(bytes: Uint8Array): T
  /** @internal used for nested messages */
  write(value: T, w: Writer): void
  /** @internal used for nested messages */
  read(r: Reader, end: number): T
}

const WIRE_VARINT = 0
const WIRE_FIXED64 = 1
const WIRE_LDELIM = 2

function wireType (spec: FieldSpec): number {
  switch (spec.kind) {
    case 'double': return WIRE_FIXED64
    case 'string': case 'bytes': case 'message': return WIRE_LDELIM
    default: return WIRE_VARINT
  }
}

// ignoreBOM keeps a leading U+FEFF: by default TextDecoder drops it, and a
// string field that starts with one would decode to a different string.
const utf8Strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

function writeScalar (spec: FieldSpec, value: unknown, w: Writer): void {
  w.uint32((spec.no << 3) | wireType(spec))
  switch (spec.kind) {
    case 'uint32': w.uint32(value as number); break
    case 'uint64': w.uint64Number(value as number); break
    case 'double': w.double(value as number); break
    case 'bool': w.bool(value as boolean); break
    case 'string': w.string(value as string); break
    case 'bytes': w.bytes(value as Uint8Array); break
    case 'message': w.fork(); spec.codec.write(value as object, w); w.ldelim(); break
  }
}

function isDefault (spec: FieldSpec, value: unknown): boolean {
  if (value === undefined || value === null) return true
  switch (spec.kind) {
    case 'uint32': case 'uint64': case 'double': return value === 0
    case 'bool': return value === false
    case 'string': return value === ''
    case 'bytes': return (value as Uint8Array).length === 0
    case 'message': return false
  }
}

function readLength (r: Reader, end: number, max: number, what: string): number {
  const len = r.uint32()
  if (len > max) throw new ProtocolError(`${what} is ${len} bytes, more than the limit of ${max}`, 'ERR_FIELD_TOO_LONG')
  if (r.pos + len > end) throw new ProtocolError(`${what} runs past the end of the message`, 'ERR_TRUNCATED')
  return len
}

function readValue (spec: FieldSpec, r: Reader, end: number, what: string): unknown {
  switch (spec.kind) {
    case 'uint32': return r.uint32()
    case 'uint64': {
      const v = r.uint64()
      if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ProtocolError(`${what} is larger than 2^53`, 'ERR_FIELD_RANGE')
      return Number(v)
    }
    case 'double': return r.double()
    case 'bool': return r.bool()
    case 'string': {
      const len = readLength(r, end, spec.maxBytes, what)
      const s = r.buf.subarray(r.pos, r.pos + len)
      r.pos += len
      try {
        return utf8Strict.decode(s)
      } catch {
        throw new ProtocolError(`${what} is not valid UTF-8`, 'ERR_BAD_UTF8')
      }
    }
    case 'bytes': {
      const len = readLength(r, end, spec.maxBytes, what)
      const b = r.buf.subarray(r.pos, r.pos + len)
      r.pos += len
      return b
    }
    case 'message': {
      const len = readLength(r, end, end - r.pos, what)
      const v = spec.codec.read(r, r.pos + len)
      return v
    }
  }
}

function emptyValue (spec: FieldSpec): unknown {
  if (spec.repeated === true) return []
  switch (spec.kind) {
    case 'uint32': case 'uint64': case 'double': return 0
    case 'bool': return false
    case 'string': return ''
    case 'bytes': return new Uint8Array(0)
    case 'message': return undefined
  }
}

/**
 * Declares a message. Missing scalar fields decode to proto3 defaults; a
 * missing message field decodes to `undefined`; unknown fields are skipped so
 * newer peers can add fields.
 */
export function messageCodec<T extends object> (name: string, schema: Schema<T>, maxBytes: number): MessageCodec<T> {
  const entries = Object.entries(schema) as Array<[keyof T & string, FieldSpec]>
  const byNumber = new Map<number, [keyof T & string, FieldSpec]>()
  for (const entry of entries) byNumber.set(entry[1].no, entry)

  const write = (value: T, w: Writer): void => {
    for (const [key, spec] of entries) {
      const v = value[key] as unknown
      if (spec.repeated === true) {
        for (const item of (v as unknown[] | undefined) ?? []) writeScalar(spec, item, w)
      } else if (!isDefault(spec, v)) {
        writeScalar(spec, v, w)
      }
    }
  }

  const read = (r: Reader, end: number): T => {
    const out: Record<string, unknown> = {}
    for (const [key, spec] of entries) out[key] = emptyValue(spec)
    while (r.pos < end) {
      const tag = r.uint32()
      const no = tag >>> 3
      const wt = tag & 7
      const entry = byNumber.get(no)
      if (entry === undefined) {
        if (wt === 3 || wt === 4 || wt > 5) throw new ProtocolError(`${name}: unsupported wire type ${wt}`, 'ERR_BAD_WIRE_TYPE')
        r.skipType(wt)
        continue
      }
      const [key, spec] = entry
      const what = `${name}.${key}`
      if (wt !== wireType(spec)) throw new ProtocolError(`${what} has wire type ${wt}, expected ${wireType(spec)}`, 'ERR_BAD_WIRE_TYPE')
      const v = readValue(spec, r, end, what)
      if (spec.repeated === true) {
        const list = out[key] as unknown[]
        if (list.length >= (spec.maxCount ?? Infinity)) throw new ProtocolError(`${what} has more than ${spec.maxCount} entries`, 'ERR_TOO_MANY')
        list.push(v)
      } else {
        out[key] = v
      }
    }
    if (r.pos !== end) throw new ProtocolError(`${name} runs past its declared length`, 'ERR_TRUNCATED')
    return out as T
  }

  return {
    name,
    write,
    read,
    encode (value: T): Uint8Array {
      const w = createWriter()
      write(value, w)
      return w.finish()
    },
    decode (bytes: Uint8Array): T {
      if (bytes.byteLength > maxBytes) throw new ProtocolError(`${name} is ${bytes.byteLength} bytes, more than the limit of ${maxBytes}`, 'ERR_MESSAGE_TOO_LONG')
      const r = createReader(bytes)
      try {
        return read(r, bytes.byteLength)
      } catch (err) {
        if (err instanceof ProtocolError) throw err
        // protons' reader throws RangeError on a varint or fixed field cut short
        throw new ProtocolError(`${name} does not decode: ${err instanceof Error ? err.message : String(err)}`, 'ERR_DECODE')
      }
    }
  }
}

