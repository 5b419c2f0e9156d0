/**
 * Both ends of the request/answer protocols against a hostile other end,
 * over in-memory stream pairs: the bid handler fed arbitrary requests (the
 * bidder sees only validated ones), and the coordinator's readers of bid
 * answers and shard results fed arbitrary answers (they return checked
 * values or typed errors, and never allocate past their limits).
 */
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import fc from 'fast-check'
import { beforeAll, describe, expect, it } from 'vitest'
import { silentLogger } from '../../src/node/log.ts'
import { BidAnswerCodec, BidRequestCodec, bidOverStream, handleBidStream } from '../../src/protocol/bid/index.ts'
import { MAX_PEER_TEXT } from '../../src/protocol/sanitize.ts'
import { ResultHeaderCodec, shardOverStream } from '../../src/protocol/shard/index.ts'
import { fuzzParams, lpEncode, fuzzTimeout, hostile, memoryPair, STREAM_ERRORS, typedAsync } from '../helpers/fuzz.ts'
import { bidAnswerArb, bidRequestArb, identifier, resultHeaderArb } from './arbitraries.ts'
import type { Tensors } from '../../src/compute/operators/types.ts'
import type { BidRequest } from '../../src/protocol/bid/index.ts'
import type { WireLimits } from '../../src/protocol/limits.ts'
import type { ResultHeader } from '../../src/protocol/shard/index.ts'
import type { PeerId } from '@libp2p/interface'
import type { Stream } from '@libp2p/interface'

const log = silentLogger()
const LIMITS: WireLimits = { maxTensorBytes: 4096, maxShardBytes: 16384, frameTimeoutMs: 5000 }
// eslint-disable-next-line no-control-regex
const UNSAFE_TEXT = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/

let peer: PeerId
beforeAll(async () => {
  peer = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
})

/** The other end: reads one frame, then sends `raw` as is and closes. */
function answerWith (stream: Stream, raw: Uint8Array): Promise<void> {
  const lp = lpStream(stream)
  return (async () => {
    try {
      await lp.read()
      if (!stream.send(raw)) await stream.onDrain()
      await stream.close()
    } catch {
      // The reader may hang up first.
    }
  })()
}

const validRequest: fc.Arbitrary<BidRequest> = fc.record({
  jobId: fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/),
  op: fc.constantFrom('map', 'matmul', 'reduce'),
  units: fc.integer({ min: 1, max: 2 ** 40 }),
  flopsPerUnit: fc.double({ min: 0, max: 1e12, noNaN: true }),
  bytesInPerUnit: fc.double({ min: 0, max: 1e9, noNaN: true }),
  bytesInFixed: fc.double({ min: 0, max: 1e9, noNaN: true }),
  bytesOutPerUnit: fc.double({ min: 0, max: 1e9, noNaN: true })
}).map(r => ({ ...r, flopsPerUnit: Math.abs(r.flopsPerUnit), bytesInPerUnit: Math.abs(r.bytesInPerUnit), bytesInFixed: Math.abs(r.bytesInFixed), bytesOutPerUnit: Math.abs(r.bytesOutPerUnit) }))

/** A result an honest peer sends: tensors described, then their bytes in one frame each. */
const honestResult = fc.uniqueArray(fc.tuple(identifier.filter(n => n !== '__proto__'), fc.constantFrom('float32' as const, 'int32' as const), fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 })), { selector: ([n]) => n, maxLength: 4 })
  .chain(ts => fc.tuple(fc.constant(ts), fc.array(fc.uint8Array({ minLength: 4096, maxLength: 4096 }), { minLength: ts.length, maxLength: ts.length }), fc.double({ min: 0, max: 1e6, noNaN: true })))
  .map(([ts, fills, computeMs]) => {
    const partial: Tensors = {}
    const frames: Uint8Array[] = []
    ts.forEach(([name, dtype, shape], i) => {
      const n = shape.reduce((a, b) => a * b, 1)
      const bytes = (fills[i] ?? new Uint8Array(4096)).slice(0, n * 4)
      partial[name] = { dtype, shape, data: dtype === 'float32' ? new Float32Array(bytes.buffer) : new Int32Array(bytes.buffer) }
      if (bytes.byteLength > 0) frames.push(bytes)
    })
    const header: ResultHeader = { ok: true, errorCode: '', errorMessage: '', computeMs: Math.abs(computeMs), tensors: ts.map(([name, dtype, shape]) => ({ name, dtype, shape })) }
    return { partial, raw: lpEncode([ResultHeaderCodec.encode(header), ...frames]) }
  })

/** Runs the coordinator's side of a shard with no inputs against a peer that answers `raw`. */
async function shardFrom (raw: Uint8Array): ReturnType<typeof shardOverStream> {
  const [client, server] = await memoryPair()
  const served = answerWith(server, raw)
  try {
    return await shardOverStream(client, { jobId: 'j', index: 0, attempt: 1, start: 0, end: 1, task: { op: 'map', params: {}, inputs: {} } }, AbortSignal.timeout(5000), { limits: LIMITS })
  } finally {
    await served
    server.abort(new Error('done'))
  }
}

const ANSWER_CODES = [
  'ERR_SHARD_REMOTE', 'ERR_BAD_RESULT', 'ERR_BAD_TENSOR', 'ERR_LIMIT_EXCEEDED', 'ERR_BAD_CHUNK', 'ERR_BULK', 'ERR_BAD_BID',
  'ERR_FIELD_TOO_LONG', 'ERR_TRUNCATED', 'ERR_BAD_UTF8', 'ERR_FIELD_RANGE', 'ERR_BAD_WIRE_TYPE', 'ERR_TOO_MANY', 'ERR_MESSAGE_TOO_LONG', 'ERR_DECODE',
  'ERR_INVALID_MSG_LENGTH', 'ERR_MSG_DATA_TOO_LONG', 'ERR_MSG_LENGTH_TOO_LONG'
]
const codeOrName = (err: Error): string => (err as { code?: string }).code ?? err.name

describe('peer answers (fuzz)', () => {
  it('the bid handler answers valid calls and calls the bidder with validated requests only', async () => {
    const requests = fc.oneof(
      validRequest.map(r => ({ valid: r, raw: lpEncode([BidRequestCodec.encode(r)]) })),
      hostile(bidRequestArb.map(r => lpEncode([BidRequestCodec.encode(r)]))).map(raw => ({ valid: undefined, raw }))
    )
    await fc.assert(fc.asyncProperty(requests, async ({ valid, raw }) => {
      const [client, server] = await memoryPair()
      const lp = lpStream(client)
      const seen: BidRequest[] = []
      const handled = handleBidStream(server, peer, (req) => {
        seen.push(req)
        return { accept: true, units: 1, unitsPerSecond: 1, startDelayMs: 0, slots: 1, reason: '' }
      }, log)
      try {
        if (!client.send(raw)) await client.onDrain()
        await client.close()
      } catch {}
      await handled
      for (const r of seen) {
        expect(r.jobId).toMatch(/^[A-Za-z0-9_-]{1,64}$/)
        expect(r.units).toBeGreaterThanOrEqual(1)
        expect([r.flopsPerUnit, r.bytesInPerUnit, r.bytesInFixed, r.bytesOutPerUnit].every(n => Number.isFinite(n) && n >= 0)).toBe(true)
      }
      if (valid !== undefined) {
        expect(seen).toEqual([valid])
        expect(BidAnswerCodec.decode((await lp.read()).subarray()).accept).toBe(true)
      }
      client.abort(new Error('done'))
    }), fuzzParams())
  }, fuzzTimeout())

  it('the bid reader returns a usable answer with safe text, or a typed error', async () => {
    const request: BidRequest = { jobId: 'job', op: 'map', units: 10, flopsPerUnit: 1, bytesInPerUnit: 1, bytesInFixed: 0, bytesOutPerUnit: 1 }
    await fc.assert(fc.asyncProperty(hostile(bidAnswerArb.map(a => lpEncode([BidAnswerCodec.encode(a)]))), async (raw) => {
      const [client, server] = await memoryPair()
      const served = answerWith(server, raw)
      const out = await typedAsync(bidOverStream(client, request), STREAM_ERRORS)
      await served
      server.abort(new Error('done'))
      if (!out.ok) {
        expect(ANSWER_CODES.concat(STREAM_ERRORS)).toContain(codeOrName(out.error))
        return
      }
      const a = out.value
      if (a.accept) expect(a.units >= 1 && a.slots >= 1 && a.unitsPerSecond > 0 && Number.isFinite(a.unitsPerSecond)).toBe(true)
      expect(a.reason).not.toMatch(UNSAFE_TEXT)
      expect(a.reason.length).toBeLessThanOrEqual(MAX_PEER_TEXT + 1)
    }), fuzzParams())
  }, fuzzTimeout())

  it('the shard reader returns exactly the partial an honest peer sends', async () => {
    await fc.assert(fc.asyncProperty(honestResult, async ({ partial, raw }) => {
      const out = await shardFrom(raw)
      expect(Object.keys(out.partial)).toEqual(Object.keys(partial))
      for (const [name, t] of Object.entries(partial)) {
        const got = out.partial[name]
        expect({ dtype: got?.dtype, shape: got?.shape }).toEqual({ dtype: t.dtype, shape: t.shape })
        expect(got !== undefined && Buffer.compare(Buffer.from(got.data.buffer, got.data.byteOffset, got.data.byteLength), Buffer.from(t.data.buffer)) === 0).toBe(true)
      }
    }), fuzzParams())
  }, fuzzTimeout())

  it('the shard reader answers arbitrary and mutated results with a typed error, or a partial within its limits', async () => {
    const results = fc.oneof(
      honestResult.map(r => r.raw),
      // Any result header (refusals with hostile text, huge shapes, bulk tickets) without data.
      resultHeaderArb.map(h => lpEncode([ResultHeaderCodec.encode(h)]))
    )
    await fc.assert(fc.asyncProperty(hostile(results), async (raw) => {
      const out = await typedAsync(shardFrom(raw), STREAM_ERRORS)
      if (!out.ok) {
        expect(ANSWER_CODES.concat(STREAM_ERRORS)).toContain(codeOrName(out.error))
        if (codeOrName(out.error) === 'ERR_SHARD_REMOTE') {
          // The peer's own code and message reach logs and job records: sanitized.
          const remote = out.error as Error & { remoteCode: string }
          expect(remote.remoteCode).not.toMatch(UNSAFE_TEXT)
          expect(remote.message).not.toMatch(UNSAFE_TEXT)
        }
        return
      }
      expect(Number.isFinite(out.value.computeMs) && out.value.computeMs >= 0).toBe(true)
      expect(Object.getPrototypeOf(out.value.partial)).toBe(Object.prototype)
      let total = 0
      for (const t of Object.values(out.value.partial)) {
        expect(t.data.length).toBe(t.shape.reduce((a, b) => a * b, 1))
        expect(t.data.byteLength).toBeLessThanOrEqual(LIMITS.maxTensorBytes)
        total += t.data.byteLength
      }
      expect(total).toBeLessThanOrEqual(LIMITS.maxShardBytes)
    }), fuzzParams())
  }, fuzzTimeout())
})
