import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { lpStream, streamPair } from '@libp2p/utils'
import { beforeAll, describe, expect, it } from 'vitest'
import { PeerLimits } from '../../src/node/access/peer-limits.ts'
import { silentLogger } from '../../src/node/log.ts'
import { TensormeshError } from '../../src/errors.ts'
import { DEFAULT_WIRE_LIMITS } from '../../src/protocol/limits.ts'
import { SESSION_MAX_PAYLOAD, SessionFrameCodec, ShardSession, handleSessionStream } from '../../src/protocol/shard/session.ts'
import type { IncomingShard, OutgoingShard, ShardExecutor } from '../../src/protocol/shard/index.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'
import type { PeerId, Stream } from '@libp2p/interface'

const log = silentLogger()
let peer: PeerId

beforeAll(async () => {
  peer = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
})

function rows (values: number[]): HostTensor {
  return { dtype: 'float32', shape: [values.length, 1], data: Float32Array.from(values) }
}

function shard (index: number, x: HostTensor, params: Record<string, unknown> = { ops: [{ op: 'mul', value: 2 }] }): OutgoingShard {
  return { jobId: 'j', index, attempt: 1, start: 0, end: x.shape[0] ?? 0, task: { op: 'map', params, inputs: { x } } }
}

/** Doubles x; the shard waits for `gates[index]` first when there is one. */
function doubler (gates: Map<number, Promise<void>> = new Map(), seen: IncomingShard[] = []): ShardExecutor {
  return async (s, signal) => {
    seen.push(s)
    await gates.get(s.index)
    signal.throwIfAborted()
    const x = s.task.inputs.x as HostTensor
    return { partial: { y: { ...x, data: Float32Array.from(x.data, v => v * 2) } }, computeMs: 1 }
  }
}

async function session (execute: ShardExecutor, transport = {}): Promise<{ client: ShardSession, server: Stream, served: Promise<void> }> {
  const [c, s] = await streamPair()
  const served = handleSessionStream(s, peer, execute, log, transport)
  return { client: new ShardSession(c, false, DEFAULT_WIRE_LIMITS, () => {}), server: s, served }
}

function deferred (): { promise: Promise<void>, resolve: () => void } {
  let resolve = (): void => {}
  const promise = new Promise<void>(r => { resolve = r })
  return { promise, resolve }
}

describe('shard session protocol', () => {
  it('runs many shards on one stream and matches each result to its request, whatever order they finish in', async () => {
    const first = deferred()
    const gates = new Map([[0, first.promise]])
    const { client } = await session(doubler(gates))
    const sent = Array.from({ length: 20 }, (_, i) => client.request(shard(i, rows([i, i + 0.5])), [], [], { x: rows([i, i + 0.5]) }, AbortSignal.timeout(10_000)))
    // Shard 0 is held back: the other 19 answer first, on the same stream.
    const later = await Promise.all(sent.slice(1))
    first.resolve()
    const all = [await sent[0], ...later]
    all.forEach((out, i) => {
      expect(Array.from((out?.partial.y as HostTensor).data)).toEqual([2 * i, 2 * i + 1])
      expect(out?.bytesOut).toBe(8)
      expect(out?.bytesIn).toBe(8)
    })
  })

  it('cancels one shard with a frame, leaving the others on the stream running', async () => {
    const gate = deferred()
    const aborted: number[] = []
    const execute: ShardExecutor = async (s, signal) => {
      signal.addEventListener('abort', () => { aborted.push(s.index) })
      if (s.index === 1) await new Promise((resolve, reject) => { signal.addEventListener('abort', () => { reject(signal.reason) }) })
      await gate.promise
      return { partial: { y: s.task.inputs.x as HostTensor }, computeMs: 0 }
    }
    const { client } = await session(execute)
    const ctl = new AbortController()
    const a = client.request(shard(0, rows([1])), [], [], { x: rows([1]) }, AbortSignal.timeout(10_000))
    const b = client.request(shard(1, rows([2])), [], [], { x: rows([2]) }, ctl.signal)
    const c = client.request(shard(2, rows([3])), [], [], { x: rows([3]) }, AbortSignal.timeout(10_000))
    ctl.abort(new TensormeshError('ERR_CANCELLED', 'test cancels shard 1'))
    await expect(b).rejects.toMatchObject({ code: 'ERR_CANCELLED' })
    // The cancel frame reaches the peer, which aborts shard 1 only.
    await expect.poll(() => aborted).toEqual([1])
    gate.resolve()
    expect(Array.from(((await a).partial.y as HostTensor).data)).toEqual([1])
    expect(Array.from(((await c).partial.y as HostTensor).data)).toEqual([3])
    expect(aborted).toEqual([1])
  })

  it('is the lease: the stream going away aborts every shard on it', async () => {
    const started = deferred()
    let running = 0
    const reasons: string[] = []
    const execute: ShardExecutor = async (_s, signal) => {
      if (++running === 3) started.resolve()
      return await new Promise((resolve, reject) => { signal.addEventListener('abort', () => { reasons.push((signal.reason as { code?: string }).code ?? ''); reject(signal.reason) }) })
    }
    const { client, served } = await session(execute)
    const sent = [0, 1, 2].map(i => client.request(shard(i, rows([i])), [], [], { x: rows([i]) }, AbortSignal.timeout(10_000)))
    await started.promise
    client.close()
    for (const p of sent) await expect(p).rejects.toMatchObject({ code: 'ERR_SESSION_CLOSED' })
    await served
    expect(reasons).toEqual(['ERR_LEASE_LOST', 'ERR_LEASE_LOST', 'ERR_LEASE_LOST'])
  })

  it('answers a result too large for a frame with ERR_SESSION_RESULT_TOO_LARGE', async () => {
    const n = SESSION_MAX_PAYLOAD / 4 + 1
    const execute: ShardExecutor = async () => ({ partial: { y: { dtype: 'float32', shape: [n], data: new Float32Array(n) } }, computeMs: 0 })
    const { client } = await session(execute)
    await expect(client.request(shard(0, rows([1])), [], [], { x: rows([1]) }, AbortSignal.timeout(10_000)))
      .rejects.toMatchObject({ code: 'ERR_SHARD_REMOTE', remoteCode: 'ERR_SESSION_RESULT_TOO_LARGE' })
  })

  it('refuses a malformed request by its id, strikes the sender, and goes on serving the session', async () => {
    const guard = new PeerLimits({ strikeThreshold: 10 })
    const seen: IncomingShard[] = []
    const { client } = await session(doubler(new Map(), seen), { guard })
    // Params that are not a JSON object, then a range that ends before it starts.
    const bad = shard(0, rows([1]))
    bad.task.params = [1, 2] as unknown as Record<string, unknown>
    await expect(client.request(bad, [], [], { x: rows([1]) }, AbortSignal.timeout(10_000))).rejects.toMatchObject({ remoteCode: 'ERR_BAD_PARAMS' })
    await expect(client.request({ ...shard(1, rows([1])), start: 5, end: 2 }, [], [], { x: rows([1]) }, AbortSignal.timeout(10_000))).rejects.toMatchObject({ remoteCode: 'ERR_BAD_RANGE' })
    const ok = await client.request(shard(2, rows([4])), [], [], { x: rows([4]) }, AbortSignal.timeout(10_000))
    expect(Array.from((ok.partial.y as HostTensor).data)).toEqual([8])
    expect(guard.info().strikes.shard).toBe(2)
    expect(seen.map(s => s.index)).toEqual([2])
  })

  it('refuses inline bytes that do not match the descriptors', async () => {
    const [c, s] = await streamPair()
    let called = false
    void handleSessionStream(s, peer, async () => { called = true; return { partial: {}, computeMs: 0 } }, log)
    const lp = lpStream(c)
    const header = { jobId: 'j', index: 0, attempt: 1, op: 'map', params: '{}', start: 0, end: 2, tensors: [{ name: 'x', dtype: 'float32', shape: [2, 1] }], refs: [], blobs: [] }
    await lp.write(SessionFrameCodec.encode({ kind: 1, id: 1, header, data: new Uint8Array(5) }))
    const answer = SessionFrameCodec.decode((await lp.read()).subarray())
    expect(answer).toMatchObject({ kind: 3, id: 1, result: { ok: false, errorCode: 'ERR_BAD_CHUNK' } })
    expect(called).toBe(false)
  })

  it('drops the stream on a frame that does not decode, failing what was in flight', async () => {
    const gate = deferred()
    const [c, server] = await streamPair()
    const guard = new PeerLimits({ strikeThreshold: 10 })
    const served = handleSessionStream(server, peer, doubler(new Map([[0, gate.promise]])), log, { guard })
    const client = new ShardSession(c, false, DEFAULT_WIRE_LIMITS, () => {})
    const pending = client.request(shard(0, rows([1])), [], [], { x: rows([1]) }, AbortSignal.timeout(10_000))
    // Garbage on the same stream after the request: the peer cannot say which request it was.
    await lpStream(c).write(Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]))
    await served
    expect(guard.info().strikes.shard).toBe(1)
    gate.resolve()
    await expect(pending).rejects.toMatchObject({ code: 'ERR_SESSION_CLOSED' })
    expect(server.status).not.toBe('open')
  })

  it('answers a refused admission with its code, and releases every admitted shard when it ends', async () => {
    let admitted = 0
    const admit = (): (() => void) => {
      if (admitted >= 2) throw new TensormeshError('ERR_PEER_OVER_LIMIT', 'two at a time')
      admitted++
      return () => { admitted-- }
    }
    const gate = deferred()
    const { client } = await session(doubler(new Map([[0, gate.promise], [1, gate.promise]])), { admit })
    const a = client.request(shard(0, rows([1])), [], [], { x: rows([1]) }, AbortSignal.timeout(10_000))
    const b = client.request(shard(1, rows([2])), [], [], { x: rows([2]) }, AbortSignal.timeout(10_000))
    const c = client.request(shard(2, rows([3])), [], [], { x: rows([3]) }, AbortSignal.timeout(10_000))
    await expect(c).rejects.toMatchObject({ remoteCode: 'ERR_PEER_OVER_LIMIT' })
    gate.resolve()
    await Promise.all([a, b])
    expect(admitted).toBe(0)
    const d = await client.request(shard(3, rows([5])), [], [], { x: rows([5]) }, AbortSignal.timeout(10_000))
    expect(Array.from((d.partial.y as HostTensor).data)).toEqual([10])
  })

  it('a coordinator that closes its side gets the answers still running, then the peer closes too', async () => {
    const [c, s] = await streamPair()
    const served = handleSessionStream(s, peer, doubler(), log)
    const lp = lpStream(c)
    const header = { jobId: 'j', index: 0, attempt: 1, op: 'map', params: '{"ops":[{"op":"mul","value":2}]}', start: 0, end: 1, tensors: [{ name: 'x', dtype: 'float32', shape: [1, 1] }], refs: [], blobs: [] }
    await lp.write(SessionFrameCodec.encode({ kind: 1, id: 7, header, data: new Uint8Array(Float32Array.of(21).buffer) }))
    await c.close()
    const answer = SessionFrameCodec.decode((await lp.read()).subarray())
    expect(answer).toMatchObject({ kind: 3, id: 7, result: { ok: true } })
    expect(Array.from(new Float32Array(answer.data.slice().buffer))).toEqual([42])
    await served
  })

  it('fails a result for a request that was never sent as a protocol error', async () => {
    const [c, s] = await streamPair()
    const client = new ShardSession(c, false, DEFAULT_WIRE_LIMITS, () => {})
    const pending = client.request(shard(0, rows([1])), [], [], { x: rows([1]) }, AbortSignal.timeout(10_000))
    const lp = lpStream(s)
    await lp.read()
    await lp.write(SessionFrameCodec.encode({ kind: 3, id: 99, result: { ok: true, errorCode: '', errorMessage: '', computeMs: 0, tensors: [] }, data: new Uint8Array(0) }))
    await expect(pending).rejects.toMatchObject({ code: 'ERR_BAD_SESSION' })
    expect(client.open).toBe(false)
  })
})
