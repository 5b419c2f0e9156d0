/**
 * The peer side of /tensormesh/shard/1.0.0, fed whole streams over an
 * in-memory stream pair: a valid shard (header and chunked tensor bytes)
 * reaches the executor exactly as sent, and arbitrary or mutated streams
 * never reach it unchecked, never hang the handler and are answered with a
 * result frame whose code names the problem.
 */
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import fc from 'fast-check'
import { beforeAll, describe, expect, it } from 'vitest'
import { silentLogger } from '../../src/node/log.ts'
import { ResultHeaderCodec, ShardHeaderCodec, handleShardStream } from '../../src/protocol/shard/index.ts'
import { readTensorBytes } from '../../src/protocol/tensor-frames.ts'
import { fuzzParams, lpEncode, fuzzTimeout, hostile, memoryPair } from '../helpers/fuzz.ts'
import { identifier, shardHeaderArb, uint32, uint64 } from './arbitraries.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'
import type { Tensors } from '../../src/compute/operators/types.ts'
import type { WireLimits } from '../../src/protocol/limits.ts'
import type { ContentRef, IncomingShard, RefResolver, ShardHeader } from '../../src/protocol/shard/index.ts'
import type { PeerId } from '@libp2p/interface'

const log = silentLogger()
const LIMITS: WireLimits = { maxTensorBytes: 4096, maxShardBytes: 16384, frameTimeoutMs: 5000 }

/**
 * Codes a refusal may carry: the codec's, the shard checks', and libp2p's
 * for a stream that ended or was framed wrongly. ERR_INTERNAL, ERR_TYPE or
 * ERR_RANGE would mean a bug threw past the checks.
 */
const REFUSALS = new Set([
  'ERR_FIELD_TOO_LONG', 'ERR_TRUNCATED', 'ERR_BAD_UTF8', 'ERR_FIELD_RANGE', 'ERR_BAD_WIRE_TYPE', 'ERR_TOO_MANY',
  'ERR_MESSAGE_TOO_LONG', 'ERR_DECODE', 'ERR_BAD_PARAMS', 'ERR_BAD_RANGE', 'ERR_BAD_TENSOR', 'ERR_LIMIT_EXCEEDED',
  'ERR_BAD_REF', 'ERR_BAD_CHUNK', 'ERR_BULK',
  'ERR_UNEXPECTED_EOF', 'ERR_INVALID_MSG_LENGTH', 'ERR_MSG_DATA_TOO_LONG', 'ERR_MSG_LENGTH_TOO_LONG'
])

let peer: PeerId
beforeAll(async () => {
  peer = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
})

/** Length-prefixed frames as one byte string: exactly what lpStream puts on the wire. */
function bytesOf (t: HostTensor): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)
}

/** The tensor a resolver hands back for a content ref: its bytes derive from the CID text. */
function refTensor (ref: ContentRef): HostTensor {
  return { dtype: 'int32', shape: [1], data: Int32Array.of(ref.cid.length) }
}

const resolver: RefResolver = async (refs) => ({
  tensors: Object.fromEntries(refs.tensors.map(r => [r.name, refTensor(r)])),
  blobs: Object.fromEntries(refs.blobs.map(r => [r.name, new TextEncoder().encode(r.cid)]))
})

interface ValidShard {
  header: ShardHeader
  inputs: Tensors
  frames: Uint8Array[]
}

/** A shard the handler must accept: names unique across tensors, refs and blobs, sizes within LIMITS. */
const validShard: fc.Arbitrary<ValidShard> = fc.record({
  jobId: fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/),
  index: uint32,
  attempt: uint32,
  range: fc.tuple(uint64, uint64).map(([a, b]) => a <= b ? [a, b] : [b, a]),
  params: fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4 }),
  names: fc.uniqueArray(identifier, { maxLength: 8 }),
  kinds: fc.array(fc.constantFrom('tensor', 'ref', 'blob'), { minLength: 8, maxLength: 8 }),
  tensors: fc.array(fc.record({
    dtype: fc.constantFrom('float32' as const, 'int32' as const),
    shape: fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 3 }),
    seed: fc.integer()
  }), { minLength: 8, maxLength: 8 }),
  cuts: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 6 })
}).map((v): ValidShard => {
  const inputs: Tensors = {}
  const refs: ContentRef[] = []
  const blobs: ContentRef[] = []
  const descs: ShardHeader['tensors'] = []
  v.names.forEach((name, i) => {
    const kind = v.kinds[i] ?? 'tensor'
    if (kind === 'ref') { refs.push({ name, cid: `cid-${i}` }); return }
    if (kind === 'blob') { blobs.push({ name, cid: `blob-${i}` }); return }
    const t = v.tensors[i] ?? { dtype: 'float32' as const, shape: [], seed: 0 }
    const n = t.shape.reduce((a, b) => a * b, 1)
    const data = t.dtype === 'float32' ? Float32Array.from({ length: n }, (_, k) => k + t.seed) : Int32Array.from({ length: n }, (_, k) => k ^ t.seed)
    Object.defineProperty(inputs, name, { value: { dtype: t.dtype, shape: t.shape, data }, enumerable: true })
    descs.push({ name, dtype: t.dtype, shape: t.shape })
  })
  const all = Buffer.concat(Object.values(inputs).map(bytesOf))
  // Cut the concatenated tensor bytes anywhere: frame boundaries need not follow tensors.
  const at = [...new Set(v.cuts.map(c => Math.floor(c * all.byteLength)))].filter(p => p > 0 && p < all.byteLength).sort((a, b) => a - b)
  const frames: Uint8Array[] = []
  let prev = 0
  for (const p of [...at, all.byteLength]) { if (p > prev) frames.push(all.subarray(prev, p)); prev = p }
  const header: ShardHeader = {
    jobId: v.jobId, index: v.index, attempt: v.attempt, op: 'map', params: JSON.stringify(v.params),
    start: v.range[0] ?? 0, end: v.range[1] ?? 0, tensors: descs, refs, blobs
  }
  return { header, inputs, frames: [ShardHeaderCodec.encode(header), ...frames] }
})

interface Served {
  calls: IncomingShard[]
  /** The first frame of the answer, decoded, if the handler sent one. */
  answer?: ReturnType<typeof ResultHeaderCodec.decode>
  /** The partial's tensors, read from the answer when it was a success. */
  partial?: Tensors
}

/** Sends `bytes` on a fresh stream pair, closes for writing, and collects what the handler did. */
async function serve (bytes: Uint8Array): Promise<Served> {
  const [client, server] = await memoryPair()
  const calls: IncomingShard[] = []
  const handled = handleShardStream(server, peer, async (shard) => {
    calls.push(shard)
    // Echo the inputs as the partial, so the answer's bytes can be checked too.
    return { partial: shard.task.inputs, computeMs: 1 }
  }, log, { limits: LIMITS, resolve: resolver })
  // One reader from the start: a second one made later would miss what the first buffered.
  const lp = lpStream(client, { maxDataLength: 1024 * 1024 })
  try {
    // Raw bytes, not frames: mutations may break the length prefixes too.
    if (!client.send(bytes)) await client.onDrain()
    await client.close()
  } catch {
    // The handler may drop the stream before reading all of it: that is its right.
  }
  await handled
  const out: Served = { calls }
  try {
    out.answer = ResultHeaderCodec.decode((await lp.read()).subarray())
    if (out.answer.ok) out.partial = (await readTensorBytes(lp, out.answer.tensors, LIMITS, 'answer')).tensors
  } catch {
    // No answer: the handler aborted the stream (its error frame could not be sent).
  } finally {
    client.abort(new Error('done'))
  }
  return out
}

/** What the executor must only ever see: a shard that passed every check. */
function checkedShard (s: IncomingShard): void {
  expect(s.jobId.length).toBeLessThanOrEqual(64)
  expect(s.start).toBeLessThanOrEqual(s.end)
  expect(s.task.params !== null && typeof s.task.params === 'object' && !Array.isArray(s.task.params)).toBe(true)
  const names = Object.keys(s.task.inputs)
  for (const name of names) expect(name).toMatch(/^[A-Za-z_][A-Za-z0-9_]*$/)
  for (const t of Object.values(s.task.inputs)) {
    expect(['float32', 'int32']).toContain(t.dtype)
    expect(t.data.length).toBe(t.shape.reduce((a, b) => a * b, 1))
    expect(t.data.byteLength).toBeLessThanOrEqual(LIMITS.maxTensorBytes)
  }
  // The inputs are a plain map: nothing reached it through its prototype.
  expect(Object.getPrototypeOf(s.task.inputs)).toBe(Object.prototype)
}

describe('shard handler (fuzz)', () => {
  it('hands a valid shard to the executor exactly as sent, and answers with its partial', async () => {
    await fc.assert(fc.asyncProperty(validShard, async ({ header, inputs, frames }) => {
      const { calls, answer, partial } = await serve(lpEncode(frames))
      if ([...header.tensors, ...header.refs, ...header.blobs].some(t => t.name === '__proto__')) {
        // An identifier no map can hold as a key (it sets the prototype): refused up front.
        expect(answer?.errorCode).toMatch(/^ERR_BAD_(TENSOR|REF)$/)
        expect(calls.length).toBe(0)
        return
      }
      expect(answer?.errorCode).toBe('')
      expect(calls.length).toBe(1)
      const s = calls[0] as IncomingShard
      checkedShard(s)
      expect({ jobId: s.jobId, index: s.index, attempt: s.attempt, start: s.start, end: s.end, op: s.task.op, params: s.task.params })
        .toEqual({ jobId: header.jobId, index: header.index, attempt: header.attempt, start: header.start, end: header.end, op: header.op, params: JSON.parse(header.params) as unknown })
      const want: Tensors = { ...inputs }
      for (const r of header.refs) Object.defineProperty(want, r.name, { value: refTensor(r), enumerable: true })
      expect(Object.keys(s.task.inputs).sort()).toEqual(Object.keys(want).sort())
      for (const [name, t] of Object.entries(want)) {
        const got = Object.getOwnPropertyDescriptor(s.task.inputs, name)?.value as HostTensor | undefined
        expect(got?.dtype).toBe(t.dtype)
        expect(got?.shape).toEqual(t.shape)
        expect(got !== undefined && Buffer.compare(bytesOf(got), bytesOf(t)) === 0).toBe(true)
      }
      expect(s.task.shared ?? []).toEqual(header.refs.map(r => r.name))
      expect(Object.keys(s.task.blobs ?? {}).sort()).toEqual(header.blobs.map(b => b.name).sort())
      // The partial (the echoed inputs) comes back intact.
      expect(Object.keys(partial ?? {}).sort()).toEqual(Object.keys(want).sort())
    }), fuzzParams())
  }, fuzzTimeout())

  it('never lets an arbitrary or mutated stream reach the executor unchecked, never hangs, and names its refusal', async () => {
    const valid = fc.oneof(
      validShard.map(v => lpEncode(v.frames)),
      // Headers with any field values (bad names, dtypes, huge shapes, bulk tickets) and no data.
      shardHeaderArb.map(h => lpEncode([ShardHeaderCodec.encode(h)]))
    )
    await fc.assert(fc.asyncProperty(hostile(valid), async (bytes) => {
      const { calls, answer } = await serve(bytes)
      for (const s of calls) checkedShard(s)
      if (answer === undefined) return
      if (answer.ok) expect(calls.length).toBe(1)
      else {
        expect(calls.length).toBe(0)
        expect(REFUSALS.has(answer.errorCode) ? answer.errorCode : `unexpected ${answer.errorCode}: ${answer.errorMessage}`).toBe(answer.errorCode)
      }
    }), fuzzParams())
  }, fuzzTimeout())
})
