/**
 * Shared pieces of the fuzz suite (test/fuzz): how many runs, which seed,
 * mutations of valid encodings, and the check that a decoder failed only
 * with one of the project's typed errors.
 *
 * Runs and seed come from the environment so that `npm test` stays quick and
 * reproducible while `npm run fuzz` runs a longer campaign:
 *   TENSORMESH_FUZZ_RUNS  runs per property (default 2000)
 *   TENSORMESH_FUZZ_SEED  a number to replay, or "random" for a fresh seed;
 *                         fast-check prints the seed and path of a failure.
 */
import { streamPair } from '@libp2p/utils'
import { multiaddr } from '@multiformats/multiaddr'
import fc from 'fast-check'
import { TensormeshError } from '../../src/errors.ts'
import type { Stream } from '@libp2p/interface'
import { writer as createWriter } from 'protons-runtime'

export const DEFAULT_FUZZ_RUNS = 2000

/** Fixed so that a plain `npm test` explores the same inputs every time. */
export const DEFAULT_FUZZ_SEED = 0x7e45

function envRuns (): number {
  const raw = process.env.TENSORMESH_FUZZ_RUNS
  if (raw === undefined || raw === '') return DEFAULT_FUZZ_RUNS
  const n = Number(raw)
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`TENSORMESH_FUZZ_RUNS must be a positive integer, not ${JSON.stringify(raw)}`)
  return n
}

function envSeed (): number | undefined {
  const raw = process.env.TENSORMESH_FUZZ_SEED
  if (raw === undefined || raw === '') return DEFAULT_FUZZ_SEED
  // No seed: fast-check draws one and prints it with any counterexample.
  if (raw === 'random') return undefined
  const n = Number(raw)
  if (!Number.isSafeInteger(n)) throw new Error(`TENSORMESH_FUZZ_SEED must be an integer or "random", not ${JSON.stringify(raw)}`)
  return n
}

/**
 * Runs for one property. `share` scales the budget down for properties where
 * each run is expensive (a TCP connection, a multipart parse), so a long
 * campaign scales them too.
 */
export function fuzzRuns (share = 1): number {
  return Math.max(1, Math.ceil(envRuns() * share))
}

/** Parameters for `fc.assert`: runs, the seed, and a time limit for async runs. */
export function fuzzParams<T> (share = 1): fc.Parameters<T> {
  const seed = envSeed()
  return {
    numRuns: fuzzRuns(share),
    ...(seed !== undefined ? { seed } : {}),
    // A hang is a failure: an async run that takes this long is reported as one.
    timeout: 5_000
  }
}

/**
 * How long a test of `share` x runs may take: vitest's 60 s default is sized
 * for the default runs, a campaign multiplies them.
 */
export function fuzzTimeout (share = 1, msPerRun = 20): number {
  return Math.max(60_000, fuzzRuns(share) * msPerRun)
}

/** Bytes that mean something to varint and length parsers. */
const INTERESTING_BYTES = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x0a, 0x12, 0x22]

export type Mutation =
  | { kind: 'flip', at: number, bit: number }
  | { kind: 'set', at: number, value: number }
  | { kind: 'truncate', at: number }
  | { kind: 'extend', tail: Uint8Array }
  | { kind: 'insert', at: number, data: Uint8Array }
  | { kind: 'delete', at: number, length: number }
  | { kind: 'splice', from: number, length: number, at: number }

const position = fc.nat({ max: 0x7fffffff })

export const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: position, bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('set' as const), at: position, value: fc.oneof(fc.constantFrom(...INTERESTING_BYTES), fc.integer({ min: 0, max: 255 })) }),
  fc.record({ kind: fc.constant('truncate' as const), at: position }),
  fc.record({ kind: fc.constant('extend' as const), tail: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  fc.record({ kind: fc.constant('insert' as const), at: position, data: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: position, length: fc.integer({ min: 1, max: 16 }) }),
  // A copy of one range of the input into another place: duplicated fields, repeated frames.
  fc.record({ kind: fc.constant('splice' as const), from: position, length: fc.integer({ min: 1, max: 32 }), at: position })
)

/** Applies one mutation; positions wrap around the input's length. */
export function mutate (bytes: Uint8Array, m: Mutation): Uint8Array {
  const n = bytes.byteLength
  const concat = (...parts: Uint8Array[]): Uint8Array => {
    const out = new Uint8Array(parts.reduce((s, p) => s + p.byteLength, 0))
    let off = 0
    for (const p of parts) { out.set(p, off); off += p.byteLength }
    return out
  }
  switch (m.kind) {
    case 'flip': {
      if (n === 0) return bytes
      const out = bytes.slice()
      const i = m.at % n
      out[i] = (out[i] ?? 0) ^ (1 << m.bit)
      return out
    }
    case 'set': {
      if (n === 0) return Uint8Array.of(m.value)
      const out = bytes.slice()
      out[m.at % n] = m.value
      return out
    }
    case 'truncate': return bytes.slice(0, m.at % (n + 1))
    case 'extend': return concat(bytes, m.tail)
    case 'insert': {
      const i = m.at % (n + 1)
      return concat(bytes.subarray(0, i), m.data, bytes.subarray(i))
    }
    case 'delete': {
      if (n === 0) return bytes
      const i = m.at % n
      return concat(bytes.subarray(0, i), bytes.subarray(i + m.length))
    }
    case 'splice': {
      if (n === 0) return bytes
      const from = m.from % n
      const piece = bytes.slice(from, from + m.length)
      const i = m.at % (n + 1)
      return concat(bytes.subarray(0, i), piece, bytes.subarray(i))
    }
  }
}

/** A valid encoding with one to four mutations applied in turn. */
export function mutated (valid: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Uint8Array> {
  return fc.tuple(valid, fc.array(mutationArb, { minLength: 1, maxLength: 4 }))
    .map(([bytes, ms]) => ms.reduce(mutate, bytes))
}

/** What a hostile peer sends: random bytes, or a valid encoding bent out of shape. */
export function hostile (valid: fc.Arbitrary<Uint8Array>, maxRandomBytes = 256): fc.Arbitrary<Uint8Array> {
  return fc.oneof(
    { arbitrary: fc.uint8Array({ maxLength: maxRandomBytes }), weight: 1 },
    { arbitrary: mutated(valid), weight: 3 }
  )
}

/**
 * The same bytes in another container: a view at an offset into a larger
 * buffer, or a Node Buffer (whose slice() is a view and whose memory may be
 * a shared pool). Decoders take any Uint8Array and must not care.
 */
export function inContainer (bytes: Uint8Array): fc.Arbitrary<Uint8Array> {
  return fc.oneof(
    fc.constant(bytes),
    fc.tuple(fc.integer({ min: 1, max: 7 }), fc.integer({ min: 0, max: 7 })).map(([before, after]) => {
      const big = new Uint8Array(before + bytes.byteLength + after).fill(0xee)
      big.set(bytes, before)
      return big.subarray(before, before + bytes.byteLength)
    }),
    // Buffer.from(array) of a small input comes from Node's shared 8 KiB pool.
    fc.constant(bytes).map(b => Buffer.from(b))
  )
}

/**
 * Characters text handling gets wrong: a byte order mark (which decoders may
 * strip), NUL, a bidi override, the replacement character, two- and
 * four-byte UTF-8.
 */
const TRICKY_CHARS = ['\uFEFF', '\u0000', '\u202E', '\uFFFD', '\u00E9', '\u{1F600}', 'a']

/** A string of at most `maxBytes` UTF-8 bytes, ASCII or not, with no lone surrogates. */
export function utf8String (maxBytes: number, minLength = 0): fc.Arbitrary<string> {
  return fc.oneof(
    fc.string({ unit: 'grapheme-ascii', minLength, maxLength: maxBytes }),
    fc.string({ unit: 'binary-ascii', minLength, maxLength: Math.floor(maxBytes / 2) }),
    fc.string({ unit: 'binary', minLength, maxLength: Math.floor(maxBytes / 4) }),
    fc.string({ unit: fc.constantFrom(...TRICKY_CHARS), minLength, maxLength: Math.floor(maxBytes / 4) })
  ).filter(s => Buffer.byteLength(s) <= maxBytes)
}

/** Thrown by `typed` for anything a decoder must never throw: the fuzz finding itself. */
export class UntypedError extends Error {
  constructor (err: unknown) {
    const name = err instanceof Error ? err.name : typeof err
    super(`decoder threw ${name}, not a typed error: ${err instanceof Error ? err.message : String(err)}`, { cause: err })
  }
}

const CODE = /^ERR_[A-Z0-9_]+$/

/** A TensormeshError (or subclass) with a stable code: the only kind of failure a decoder may report. */
export function isTypedError (err: unknown): err is TensormeshError {
  return err instanceof TensormeshError && CODE.test(err.code)
}

export type Outcome<T> = { ok: true, value: T } | { ok: false, error: TensormeshError }

/** Runs a decoder: its value, or the typed error it threw; anything else fails the property. */
export function typed<T> (fn: () => T): Outcome<T> {
  try {
    return { ok: true, value: fn() }
  } catch (err) {
    if (isTypedError(err)) return { ok: false, error: err }
    throw new UntypedError(err)
  }
}

/** `typed` for a decoder that returns a promise; `allow` admits other named errors (a stream's end). */
export async function typedAsync<T> (p: Promise<T>, allow: readonly string[] = []): Promise<Outcome<T> | { ok: false, error: Error }> {
  try {
    return { ok: true, value: await p }
  } catch (err) {
    if (isTypedError(err)) return { ok: false, error: err }
    if (err instanceof Error && allow.includes(err.name)) return { ok: false, error: err }
    throw new UntypedError(err)
  }
}

/** The UTF-8 byte length of a string, as the protobuf bounds count it. */
export function utf8Bytes (s: string): number {
  return Buffer.byteLength(s)
}

/**
 * A decoded value with every byte field as a plain Uint8Array: a decoder
 * hands back views of its input (a Buffer when the input was one), and
 * equality should not depend on the container.
 */
export function plain<T> (value: T): T {
  if (value instanceof Uint8Array) return Uint8Array.from(value) as T
  if (Array.isArray(value)) return value.map(plain) as T
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)])) as T
  }
  return value
}

/**
 * libp2p's own errors for a stream that ended, was reset or framed wrongly
 * (class names, stable across versions): what a peer that hangs up early
 * makes our readers throw, next to the project's typed errors.
 */
export const STREAM_ERRORS: readonly string[] = [
  'UnexpectedEOFError', 'InvalidMessageLengthError', 'InvalidDataLengthError', 'InvalidDataLengthLengthError',
  'StreamBufferError', 'StreamResetError', 'StreamStateError', 'StreamAbortedError'
]

const PAIR_ADDR = multiaddr('/ip4/127.0.0.1/tcp/1')

/**
 * An in-memory stream pair for one run. streamPair's default remote address
 * takes a port from a counter that passes 65535 after ~32k pairs (a long
 * campaign gets there) and its default 1 ms delay would dominate the runs.
 */
export async function memoryPair (): Promise<[Stream, Stream]> {
  return await streamPair({ delay: 0, outboundConnection: { remoteAddr: PAIR_ADDR }, inboundConnection: { remoteAddr: PAIR_ADDR } })
}

/** Frames as a length-prefixed stream carries them (varint length, then the bytes). */
export function lpEncode (frames: Uint8Array[]): Uint8Array {
  const w = createWriter()
  for (const f of frames) w.bytes(f)
  return w.finish()
}
