/**
 * Tensor frames: descriptors checked against the limits (checkDescs), the
 * allocation they lead to (allocateTensors) and the chunked bytes that fill
 * it (readTensorBytes, over an in-memory stream pair). The oracle computes
 * sizes exactly with BigInt, so float rounding in the decoder cannot hide.
 */
import { lpStream } from '@libp2p/utils'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { DEFAULT_WIRE_LIMITS } from '../../src/protocol/limits.ts'
import { allocateTensors, checkDescs, readTensorBytes } from '../../src/protocol/tensor-frames.ts'
import { fuzzParams, fuzzTimeout, memoryPair, STREAM_ERRORS, typed, typedAsync, utf8String } from '../helpers/fuzz.ts'
import { identifier } from './arbitraries.ts'
import type { WireLimits } from '../../src/protocol/limits.ts'
import type { TensorDesc } from '../../src/protocol/tensor-frames.ts'

const BYTES = 4n

/** What checkDescs must decide, computed independently: the error code, or each tensor's byte size. */
function oracle (descs: TensorDesc[], limits: WireLimits): { code: string } | { sizes: number[] } {
  const names = new Set<string>()
  const sizes: number[] = []
  let total = 0n
  for (const d of descs) {
    // An identifier that is not `__proto__`, which no object can hold as a plain key.
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(d.name) || d.name === '__proto__' || names.has(d.name)) return { code: 'ERR_BAD_TENSOR' }
    names.add(d.name)
    if (d.dtype !== 'float32' && d.dtype !== 'int32') return { code: 'ERR_BAD_TENSOR' }
    // The decoder refuses as soon as a prefix of the shape is too large (before
    // a later 0 could make the tensor empty): refusing early is the safe side.
    let elements = 1n
    for (const dim of d.shape) {
      elements *= BigInt(dim)
      if (elements * BYTES > BigInt(limits.maxTensorBytes)) return { code: 'ERR_LIMIT_EXCEEDED' }
    }
    total += elements * BYTES
    if (total > BigInt(limits.maxShardBytes)) return { code: 'ERR_LIMIT_EXCEEDED' }
    sizes.push(Number(elements * BYTES))
  }
  return { sizes }
}

const dim = fc.oneof(
  { arbitrary: fc.integer({ min: 0, max: 8 }), weight: 6 },
  { arbitrary: fc.integer({ min: 0, max: 1 << 20 }), weight: 2 },
  { arbitrary: fc.constantFrom(2 ** 31, 2 ** 32 + 1, 2 ** 53 - 1), weight: 1 },
  { arbitrary: fc.maxSafeNat(), weight: 1 }
)
const descArb: fc.Arbitrary<TensorDesc> = fc.record({
  name: fc.oneof({ arbitrary: identifier, weight: 8 }, { arbitrary: utf8String(16), weight: 1 }),
  dtype: fc.oneof({ arbitrary: fc.constantFrom('float32', 'int32'), weight: 8 }, { arbitrary: utf8String(16), weight: 1 }),
  shape: fc.array(dim, { maxLength: 8 })
})
const limitsArb: fc.Arbitrary<WireLimits> = fc.oneof(
  fc.constant(DEFAULT_WIRE_LIMITS),
  fc.record({
    maxTensorBytes: fc.integer({ min: 0, max: 4096 }),
    maxShardBytes: fc.integer({ min: 0, max: 8192 }),
    frameTimeoutMs: fc.constant(5000)
  })
)

/** Descriptors that pass, with small limits so allocating them is cheap. */
const SMALL: WireLimits = { maxTensorBytes: 4096, maxShardBytes: 16384, frameTimeoutMs: 5000 }
const acceptedDescs = fc.uniqueArray(fc.record({
  name: identifier,
  dtype: fc.constantFrom('float32', 'int32'),
  shape: fc.array(fc.integer({ min: 0, max: 6 }), { maxLength: 4 })
}), { selector: d => d.name, maxLength: 6 }).filter(ds => 'sizes' in oracle(ds, SMALL))

const concat = (parts: Uint8Array[]): Uint8Array => Buffer.concat(parts)

/** Cuts bytes into frames at the given fractions of its length (no empty frame). */
function cut (bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const at = [...new Set(cuts.map(c => Math.floor(c * bytes.byteLength)))].filter(p => p > 0 && p < bytes.byteLength).sort((a, b) => a - b)
  const frames: Uint8Array[] = []
  let prev = 0
  for (const p of [...at, bytes.byteLength]) { if (p > prev) frames.push(bytes.subarray(prev, p)); prev = p }
  return frames
}

/** Frames written to one end of a fresh stream pair, which is then closed for writing. */
async function readFrom (frames: Uint8Array[], descs: TensorDesc[], limits: WireLimits): ReturnType<typeof readTensorBytes> {
  const [client, server] = await memoryPair()
  const writer = lpStream(client)
  for (const f of frames) await writer.write(f)
  await client.close()
  try {
    return await readTensorBytes(lpStream(server, { maxDataLength: 1024 * 1024 }), descs, limits, 'fuzz')
  } finally {
    server.abort(new Error('done'))
  }
}

describe('tensor frames (fuzz)', () => {
  it('checkDescs decides exactly what the limits say, and refuses only with typed errors', () => {
    fc.assert(fc.property(fc.array(descArb, { maxLength: 6 }), limitsArb, (descs, limits) => {
      const want = oracle(descs, limits)
      const got = typed(() => checkDescs(descs, limits, 'fuzz'))
      if ('code' in want) expect(got.ok ? 'accepted' : got.error.code).toBe(want.code)
      else expect(got.ok ? got.value : got.error.code).toEqual(want.sizes)
    }), fuzzParams())
  }, fuzzTimeout())

  it('allocateTensors refuses a declared-huge tensor before allocating, and allocates exactly what was declared', () => {
    // With the default 1 GiB limit, allocating any refused shape would take
    // gigabytes or throw RangeError; a LimitExceededError proves the check came first.
    fc.assert(fc.property(fc.oneof(acceptedDescs.map(ds => [ds, SMALL] as const), fc.tuple(fc.array(descArb, { maxLength: 4 }), limitsArb)), ([descs, limits]) => {
      const want = oracle(descs, limits)
      const got = typed(() => allocateTensors(descs, limits, 'fuzz'))
      if ('code' in want) {
        expect(got.ok ? 'allocated' : got.error.code).toBe(want.code)
        return
      }
      if (!got.ok) throw got.error
      const { tensors, targets, bytes } = got.value
      expect(Object.keys(tensors)).toEqual(descs.map(d => d.name))
      expect(targets.map(t => t.byteLength)).toEqual(want.sizes)
      expect(bytes).toBe(want.sizes.reduce((a, b) => a + b, 0))
      for (const d of descs) {
        const t = Object.getOwnPropertyDescriptor(tensors, d.name)?.value as { dtype: string, shape: number[] } | undefined
        expect(t?.dtype).toBe(d.dtype)
        expect(t?.shape).toEqual(d.shape)
      }
    }), fuzzParams())
  }, fuzzTimeout())

  it('readTensorBytes fills the tensors from frames cut anywhere, and nothing else', async () => {
    const arb = acceptedDescs.chain(descs => {
      const total = oracle(descs, SMALL)
      const bytes = 'sizes' in total ? total.sizes.reduce((a, b) => a + b, 0) : 0
      return fc.tuple(fc.constant(descs), fc.uint8Array({ minLength: bytes, maxLength: bytes }), fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 8 }))
    })
    await fc.assert(fc.asyncProperty(arb, async ([descs, data, cuts]) => {
      const { tensors, bytes } = await readFrom(cut(data, cuts), descs, SMALL)
      expect(bytes).toBe(data.byteLength)
      const got = concat(descs.map(d => {
        const t = Object.getOwnPropertyDescriptor(tensors, d.name)?.value as { data: Float32Array | Int32Array } | undefined
        return t === undefined ? new Uint8Array(0) : new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)
      }))
      expect(Buffer.compare(got, data)).toBe(0)
    }), fuzzParams())
  }, fuzzTimeout())

  it('readTensorBytes refuses frames that are empty, run past the declared total or stop short, with typed errors', async () => {
    const frameArb = fc.oneof(
      { arbitrary: fc.uint8Array({ minLength: 1, maxLength: 64 }), weight: 6 },
      { arbitrary: fc.constant(new Uint8Array(0)), weight: 1 },
      { arbitrary: fc.uint8Array({ minLength: 65, maxLength: 600 }), weight: 1 }
    )
    await fc.assert(fc.asyncProperty(acceptedDescs, fc.array(frameArb, { maxLength: 10 }), async (descs, frames) => {
      const total = ('sizes' in oracle(descs, SMALL) ? (oracle(descs, SMALL) as { sizes: number[] }).sizes : []).reduce((a, b) => a + b, 0)
      // What must happen, frame by frame: the first frame that breaks a rule decides.
      let want: string = 'ERR_UNEXPECTED_EOF'
      let seen = 0
      if (total === 0) want = 'ok'
      for (const f of frames) {
        if (want !== 'ERR_UNEXPECTED_EOF') break
        if (f.byteLength === 0 || seen + f.byteLength > total) { want = 'ERR_BAD_CHUNK'; break }
        seen += f.byteLength
        if (seen === total) want = 'ok'
      }
      const out = await typedAsync(readFrom(frames, descs, SMALL), STREAM_ERRORS)
      if (out.ok) {
        expect(want).toBe('ok')
        expect(out.value.bytes).toBe(total)
      } else {
        expect(out.error.name === 'UnexpectedEOFError' ? 'ERR_UNEXPECTED_EOF' : (out.error as { code?: string }).code).toBe(want)
      }
    }), fuzzParams())
  }, fuzzTimeout())
})
