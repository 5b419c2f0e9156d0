import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { lpStream, streamPair } from '@libp2p/utils'
import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { beforeAll, describe, expect, it } from 'vitest'
import { BlobStore, cidOf } from '../../src/node/blob-store.ts'
import { silentLogger } from '../../src/node/log.ts'
import { BidRequestCodec, BidAnswerCodec, bidOverStream, handleBidStream } from '../../src/protocol/bid/index.ts'
import { blobOverStream, handleBlobStream } from '../../src/protocol/blob/index.ts'
import { CHUNK_BYTES, DEFAULT_WIRE_LIMITS } from '../../src/protocol/limits.ts'
import { ResultHeaderCodec, ShardHeaderCodec, handleShardStream, shardOverStream } from '../../src/protocol/shard/index.ts'
import type { BidAnswer, BidRequest } from '../../src/protocol/bid/index.ts'
import type { IncomingShard } from '../../src/protocol/shard/index.ts'
import type { PeerId } from '@libp2p/interface'

const log = silentLogger()
let peer: PeerId

beforeAll(async () => {
  peer = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
})

const request: BidRequest = { jobId: 'job-1', op: 'matmul', units: 100, flopsPerUnit: 1e6, bytesInPerUnit: 400, bytesInFixed: 4000, bytesOutPerUnit: 40 }
const accept: BidAnswer = { accept: true, units: 100, unitsPerSecond: 5000, startDelayMs: 0, slots: 2, reason: '' }

describe('bid protocol', () => {
  it('answers a call for bids from the bidder', async () => {
    const [client, server] = await streamPair()
    const seen: BidRequest[] = []
    void handleBidStream(server, peer, (req) => { seen.push(req); return accept }, log)
    expect(await bidOverStream(client, request)).toEqual(accept)
    expect(seen).toEqual([request])
  })

  it('drops a garbage request without calling the bidder', async () => {
    const [client, server] = await streamPair()
    let called = false
    const handled = handleBidStream(server, peer, () => { called = true; return accept }, log)
    const lp = lpStream(client)
    await lp.write(Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]))
    await handled
    expect(called).toBe(false)
    expect(server.status).not.toBe('open')
  })

  it('drops a request whose numbers make no sense', async () => {
    const [client, server] = await streamPair()
    let called = false
    const handled = handleBidStream(server, peer, () => { called = true; return accept }, log)
    await lpStream(client).write(BidRequestCodec.encode({ ...request, flopsPerUnit: Number.NaN }))
    await handled
    expect(called).toBe(false)
  })

  it('refuses an accepting answer with no rate', async () => {
    const [client, server] = await streamPair()
    void (async () => {
      const lp = lpStream(server)
      await lp.read()
      await lp.write(BidAnswerCodec.encode({ ...accept, unitsPerSecond: 0 }))
    })()
    await expect(bidOverStream(client, request)).rejects.toMatchObject({ code: 'ERR_BAD_BID' })
  })

  it('gives up on a peer that never answers', async () => {
    const [client] = await streamPair()
    const signal = AbortSignal.timeout(200)
    await expect(bidOverStream(client, request, signal)).rejects.toThrow()
  })
})

describe('shard protocol', () => {
  const task = {
    op: 'map',
    params: { ops: [{ op: 'mul', value: 2 }] },
    inputs: { x: { dtype: 'float32' as const, shape: [3, 2], data: Float32Array.from([1, 2, 3, 4, 5, 6]) } }
  }

  it('carries inputs in and the partial out, chunked', async () => {
    const [client, server] = await streamPair()
    let got: IncomingShard | undefined
    void handleShardStream(server, peer, async (shard) => {
      got = shard
      const x = shard.task.inputs.x
      if (x === undefined) throw new Error('no x')
      return { partial: { out: { dtype: 'float32', shape: x.shape, data: (x.data as Float32Array).map(v => v * 2) } }, computeMs: 1.5 }
    }, log)
    const out = await shardOverStream(client, { jobId: 'j', index: 3, attempt: 1, start: 0, end: 3, task }, AbortSignal.timeout(5000))
    expect(got?.index).toBe(3)
    expect(got?.task.params).toEqual(task.params)
    expect([...(out.partial.out?.data ?? [])]).toEqual([2, 4, 6, 8, 10, 12])
    expect(out.computeMs).toBe(1.5)
    expect(out.bytesOut).toBe(24)
  })

  it('moves a tensor larger than one chunk intact', async () => {
    const [client, server] = await streamPair()
    const n = CHUNK_BYTES / 4 + 17
    const big = { dtype: 'float32' as const, shape: [n, 1], data: Float32Array.from({ length: n }, (_, i) => i) }
    void handleShardStream(server, peer, async (shard) => ({ partial: { out: shard.task.inputs.x ?? big }, computeMs: 0 }), log)
    const out = await shardOverStream(client, { jobId: 'j', index: 0, attempt: 1, start: 0, end: n, task: { ...task, inputs: { x: big } } }, AbortSignal.timeout(10_000))
    expect(out.partial.out?.data).toEqual(big.data)
  })

  it('refuses a declared tensor over the limit before allocating, and says why', async () => {
    const [client, server] = await streamPair()
    let called = false
    void handleShardStream(server, peer, async () => { called = true; return { partial: {}, computeMs: 0 } }, log, { limits: { ...DEFAULT_WIRE_LIMITS, maxTensorBytes: 1024 } })
    const lp = lpStream(client)
    await lp.write(ShardHeaderCodec.encode({ jobId: 'j', index: 0, attempt: 1, op: 'map', params: '{}', start: 0, end: 1, tensors: [{ name: 'x', dtype: 'float32', shape: [1 << 20, 1 << 20] }], refs: [], blobs: [] }))
    const answer = ResultHeaderCodec.decode((await lp.read()).subarray())
    expect(answer.ok).toBe(false)
    expect(answer.errorCode).toBe('ERR_LIMIT_EXCEEDED')
    expect(called).toBe(false)
  })

  it('refuses garbage headers, bad params and bad dtypes with an error answer', async () => {
    const cases: Array<[Uint8Array, string]> = [
      [Uint8Array.from([0x0a, 0xff, 0xff, 0x7f]), 'ERR_FIELD_TOO_LONG'],
      [Uint8Array.from([0x0a, 0x05, 0x61]), 'ERR_TRUNCATED'],
      [ShardHeaderCodec.encode({ jobId: 'j', index: 0, attempt: 1, op: 'map', params: '[1,2]', start: 0, end: 1, tensors: [], refs: [], blobs: [] }), 'ERR_BAD_PARAMS'],
      [ShardHeaderCodec.encode({ jobId: 'j', index: 0, attempt: 1, op: 'map', params: '{}', start: 0, end: 1, tensors: [{ name: 'x', dtype: 'complex64', shape: [1] }], refs: [], blobs: [] }), 'ERR_BAD_TENSOR'],
      [ShardHeaderCodec.encode({ jobId: 'j', index: 0, attempt: 1, op: 'map', params: '{}', start: 5, end: 1, tensors: [], refs: [], blobs: [] }), 'ERR_BAD_RANGE']
    ]
    for (const [bytes, code] of cases) {
      const [client, server] = await streamPair()
      let called = false
      void handleShardStream(server, peer, async () => { called = true; return { partial: {}, computeMs: 0 } }, log)
      const lp = lpStream(client)
      await lp.write(bytes)
      const answer = ResultHeaderCodec.decode((await lp.read()).subarray())
      expect(answer.ok).toBe(false)
      expect(answer.errorCode).toBe(code)
      expect(called).toBe(false)
    }
  })

  it('refuses more tensor bytes than the header declared', async () => {
    const [client, server] = await streamPair()
    void handleShardStream(server, peer, async () => ({ partial: {}, computeMs: 0 }), log)
    const lp = lpStream(client)
    await lp.write(ShardHeaderCodec.encode({ jobId: 'j', index: 0, attempt: 1, op: 'map', params: '{}', start: 0, end: 1, tensors: [{ name: 'x', dtype: 'float32', shape: [1] }], refs: [], blobs: [] }))
    await lp.write(new Uint8Array(8))
    const answer = ResultHeaderCodec.decode((await lp.read()).subarray())
    expect(answer.ok).toBe(false)
    expect(answer.errorCode).toBe('ERR_BAD_CHUNK')
  })

  it('stops the work when the coordinator goes away (the lease)', async () => {
    const [client, server] = await streamPair()
    let aborted: unknown
    const started = new Promise<void>(resolve => {
      void handleShardStream(server, peer, async (_shard, signal) => {
        resolve()
        await new Promise((_resolve, reject) => { signal.addEventListener('abort', () => { aborted = signal.reason; reject(signal.reason) }) })
        return { partial: {}, computeMs: 0 }
      }, log)
    })
    const ctl = new AbortController()
    const sent = shardOverStream(client, { jobId: 'j', index: 0, attempt: 1, start: 0, end: 3, task }, ctl.signal)
    await started
    ctl.abort(new Error('cancelled'))
    await expect(sent).rejects.toThrow()
    await expect.poll(() => (aborted as { code?: string } | undefined)?.code).toBe('ERR_LEASE_LOST')
  })

  it('reports a remote failure with the peer\'s code', async () => {
    const [client, server] = await streamPair()
    void handleShardStream(server, peer, async () => { throw Object.assign(new Error('bad shapes'), { code: 'ERR_SHAPE_MISMATCH' }) }, log)
    await expect(shardOverStream(client, { jobId: 'j', index: 0, attempt: 1, start: 0, end: 3, task }, AbortSignal.timeout(5000)))
      .rejects.toMatchObject({ code: 'ERR_SHARD_REMOTE', remoteCode: 'ERR_SHAPE_MISMATCH' })
  })
})

describe('blob protocol', () => {
  let store: BlobStore
  beforeAll(async () => {
    store = new BlobStore(await mkdtemp(join(tmpdir(), 'tm-blob-')))
    await store.start()
  })

  it('serves a stored blob in chunks and the fetcher checks its hash', async () => {
    const bytes = Uint8Array.from({ length: CHUNK_BYTES + 1000 }, (_, i) => i * 7)
    const cid = await store.put(bytes)
    // Peers get only what a job of this node granted them.
    const release = store.grant(peer.toString(), cid)
    const [client, server] = await streamPair()
    void handleBlobStream(server, peer, store, log)
    expect(await blobOverStream(client, cid)).toEqual(bytes)
    release()
  })

  it('refuses bytes that do not hash to the CID', async () => {
    const good = await cidOf(Uint8Array.from([1, 2, 3]))
    const liar = { servable: () => true, get: async () => Uint8Array.from([4, 5, 6]) } as unknown as BlobStore
    const [client, server] = await streamPair()
    void handleBlobStream(server, peer, liar, log)
    await expect(blobOverStream(client, good)).rejects.toMatchObject({ code: 'ERR_BLOB_HASH' })
  })

  it('refuses a blob over the size limit before allocating, and a blob the peer lacks', async () => {
    const bytes = new Uint8Array(4096)
    const cid = await store.put(bytes)
    store.grant(peer.toString(), cid)
    const [client, server] = await streamPair()
    void handleBlobStream(server, peer, store, log)
    await expect(blobOverStream(client, cid, undefined, 1024)).rejects.toMatchObject({ code: 'ERR_LIMIT_EXCEEDED' })
    const [c2, s2] = await streamPair()
    void handleBlobStream(s2, peer, store, log)
    await expect(blobOverStream(c2, await cidOf(Uint8Array.from([9])))).rejects.toMatchObject({ code: 'ERR_BLOB_NOT_FOUND' })
  })

  it('never reads a path from a string that is not a CID', async () => {
    await expect(store.get('../../etc/passwd')).rejects.toMatchObject({ code: 'ERR_BAD_CID' })
  })
})
