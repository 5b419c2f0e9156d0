/**
 * /tensormesh/shard-session/1.0.0 under hostile bytes, from both ends.
 *
 * Peer side: arbitrary and mutated session streams never reach the executor
 * unchecked, never hang the handler, and every answer is a result frame for
 * an id that was asked, with a refusal code that names the problem.
 *
 * Coordinator side: whatever a peer answers, a request resolves with tensors
 * whose bytes match their shapes, or fails with a typed error; it never hangs.
 */
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import fc from 'fast-check'
import { beforeAll, describe, expect, it } from 'vitest'
import { silentLogger } from '../../src/node/log.ts'
import { SessionFrameCodec, ShardSession, handleSessionStream } from '../../src/protocol/shard/session.ts'
import { fuzzParams, fuzzTimeout, hostile, lpEncode, memoryPair, STREAM_ERRORS, typedAsync } from '../helpers/fuzz.ts'
import { resultHeaderArb, shardHeaderArb, uint32 } from './arbitraries.ts'
import type { IncomingShard } from '../../src/protocol/shard/index.ts'
import type { WireLimits } from '../../src/protocol/limits.ts'
import type { PeerId } from '@libp2p/interface'

const log = silentLogger()
const LIMITS: WireLimits = { maxTensorBytes: 4096, maxShardBytes: 16384, frameTimeoutMs: 5000 }

/** Codes a refused request may carry: the shard checks' (ERR_INTERNAL or ERR_TYPE would mean a bug threw past them). */
const REFUSALS = new Set([
  'ERR_BAD_PARAMS', 'ERR_BAD_RANGE', 'ERR_BAD_TENSOR', 'ERR_LIMIT_EXCEEDED', 'ERR_BAD_REF', 'ERR_BAD_CHUNK', 'ERR_BAD_SESSION'
])

/** What a coordinator-side request may fail with. */
const ANSWER_CODES = [
  'ERR_SHARD_REMOTE', 'ERR_BAD_RESULT', 'ERR_BAD_TENSOR', 'ERR_LIMIT_EXCEEDED', 'ERR_BAD_CHUNK', 'ERR_BAD_SESSION', 'ERR_SESSION_CLOSED',
  'ERR_FIELD_TOO_LONG', 'ERR_TRUNCATED', 'ERR_BAD_UTF8', 'ERR_FIELD_RANGE', 'ERR_BAD_WIRE_TYPE', 'ERR_TOO_MANY', 'ERR_MESSAGE_TOO_LONG', 'ERR_DECODE'
]

let peer: PeerId
beforeAll(async () => {
  peer = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
})

const requestFrame = fc.record({ id: uint32, header: shardHeaderArb, data: fc.uint8Array({ maxLength: 64 }) })
  .map(f => SessionFrameCodec.encode({ kind: 1, ...f }))

/** A request an honest coordinator sends: tensors described and their bytes inline. */
const validRequest = fc.record({
  id: uint32,
  range: fc.tuple(fc.maxSafeNat(), fc.maxSafeNat()).map(([a, b]) => a <= b ? [a, b] : [b, a]),
  shapes: fc.array(fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 }), { maxLength: 3 }),
  fill: fc.uint8Array({ minLength: 256, maxLength: 256 })
}).map(v => {
  const tensors = v.shapes.map((shape, i) => ({ name: `t${i}`, dtype: 'int32', shape }))
  const bytes = v.shapes.reduce((n, shape) => n + 4 * shape.reduce((a, b) => a * b, 1), 0)
  const header = { jobId: 'j', index: 0, attempt: 1, op: 'map', params: '{}', start: v.range[0] ?? 0, end: v.range[1] ?? 0, tensors, refs: [], blobs: [] }
  return SessionFrameCodec.encode({ kind: 1, id: v.id, header, data: v.fill.slice(0, bytes) })
})

describe('shard sessions (fuzz)', () => {
  it('the peer checks every request before its executor sees it, and answers with result frames only', async () => {
    const streams = fc.array(hostile(fc.oneof(requestFrame, validRequest).map(f => lpEncode([f]))), { minLength: 1, maxLength: 4 })
    let executed = 0
    let succeeded = 0
    let refused = 0
    await fc.assert(fc.asyncProperty(streams, async (parts) => {
      const [client, server] = await memoryPair()
      const calls: IncomingShard[] = []
      const handled = handleSessionStream(server, peer, async (shard) => {
        calls.push(shard)
        executed++
        return { partial: shard.task.inputs, computeMs: 1 }
      }, log, { limits: LIMITS })
      const lp = lpStream(client, { maxDataLength: 1024 * 1024 })
      try {
        for (const raw of parts) if (!client.send(raw)) await client.onDrain()
        await client.close()
      } catch {}
      await handled
      for (const s of calls) {
        expect(s.start).toBeLessThanOrEqual(s.end)
        expect(s.task.params !== null && typeof s.task.params === 'object' && !Array.isArray(s.task.params)).toBe(true)
        for (const t of Object.values(s.task.inputs)) {
          expect(t.data.length).toBe(t.shape.reduce((a, b) => a * b, 1))
          expect(t.data.byteLength).toBeLessThanOrEqual(LIMITS.maxTensorBytes)
        }
        expect(Object.getPrototypeOf(s.task.inputs)).toBe(Object.prototype)
      }
      // Whatever came back is well-formed: results, each a success or a refusal with a known code.
      for (;;) {
        let frame
        try {
          frame = SessionFrameCodec.decode((await lp.read({ signal: AbortSignal.timeout(1000) })).subarray())
        } catch {
          break
        }
        expect(frame.kind).toBe(3)
        if (frame.result?.ok === true) { succeeded++; continue }
        refused++
        expect(REFUSALS).toContain(frame.result?.errorCode)
      }
      client.abort(new Error('done'))
    }), fuzzParams(0.5))
    // The generator reaches the executor, its answers and the refusals. (A garbled
    // frame ends the session, and answers still running on it go nowhere.)
    expect(executed).toBeGreaterThan(0)
    expect(succeeded).toBeGreaterThan(0)
    expect(succeeded).toBeLessThanOrEqual(executed)
    expect(refused).toBeGreaterThan(0)
  }, fuzzTimeout(0.5))

  it('the coordinator gets tensors that match their shapes, or a typed error, whatever the peer answers', async () => {
    const answer = fc.record({ id: fc.constantFrom(0, 1, 2), result: resultHeaderArb, data: fc.uint8Array({ maxLength: 64 }) })
      .map(f => lpEncode([SessionFrameCodec.encode({ kind: 3, ...f })]))
    await fc.assert(fc.asyncProperty(hostile(answer), async (raw) => {
      const [client, server] = await memoryPair()
      const session = new ShardSession(client, false, LIMITS, () => {})
      const x = { dtype: 'float32' as const, shape: [1, 1], data: Float32Array.of(1) }
      const request = session.request({ jobId: 'j', index: 0, attempt: 1, start: 0, end: 1, task: { op: 'map', params: {}, inputs: { x } } }, [], [], { x }, AbortSignal.timeout(5000))
      const lp = lpStream(server)
      try {
        await lp.read()
        if (!server.send(raw)) await server.onDrain()
        await server.close()
      } catch {}
      const out = await typedAsync(request, STREAM_ERRORS)
      server.abort(new Error('done'))
      session.close()
      if (!out.ok) {
        expect(ANSWER_CODES.concat(STREAM_ERRORS)).toContain((out.error as { code?: string }).code ?? out.error.name)
        return
      }
      for (const t of Object.values(out.value.partial)) expect(t.data.length).toBe(t.shape.reduce((a, b) => a * b, 1))
    }), fuzzParams(0.5))
  }, fuzzTimeout(0.5))
})
