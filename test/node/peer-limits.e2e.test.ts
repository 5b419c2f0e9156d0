import { lpStream } from '@libp2p/utils'
import { afterEach, describe, expect, it } from 'vitest'
import { encodeNpy } from '../../src/compute/npy.ts'
import { BAN_MS, STRIKE_THRESHOLD } from '../../src/node/access/peer-limits.ts'

/** A bid bucket small enough that a test's flood empties it (the default takes thousands). */
const BID_LIMIT = { burst: 64, perSecond: 32 }
import { cidOf } from '../../src/node/blob-store.ts'
import { RATE_LIMITED_REASON, requestBid } from '../../src/protocol/bid/index.ts'
import { BLOB_NOT_HERE, BLOB_PROTOCOL, BlobAnswerCodec, BlobRequestCodec, blobOverStream } from '../../src/protocol/blob/index.ts'
import { CHUNK_BYTES } from '../../src/protocol/limits.ts'
import { ResultHeaderCodec, SHARD_PROTOCOL, ShardHeaderCodec, sendShard } from '../../src/protocol/shard/index.ts'
import { asyncCodeOf } from '../helpers/codes.ts'
import { random, startMesh, stopAll } from '../helpers/mesh.ts'
import { scrape } from '../helpers/prometheus.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'
import type { MeshNode, NodeInfo } from '../../src/node/mesh-node.ts'
import type { BidAnswer, BidRequest } from '../../src/protocol/bid/index.ts'
import type { ResultHeader } from '../../src/protocol/shard/index.ts'
import type { Stream } from '@libp2p/interface'


/** GET /v1/node, as a user sees it. */
async function nodeInfo (node: MeshNode): Promise<NodeInfo> {
  const token = process.env.TENSORMESH_TOKEN
  const res = await fetch(`${node.apiUrl ?? ''}/v1/node`, { headers: token === undefined ? {} : { authorization: `Bearer ${token}` } })
  expect(res.status).toBe(200)
  return await res.json() as NodeInfo
}

/** A map job (x * 2) and a check of its result against the same product here (exact in float32). */
async function doubled (node: MeshNode, x: HostTensor): Promise<ReturnType<MeshNode['submit']>> {
  const job = node.submit({ op: 'map', inputs: { x }, params: { ops: [{ op: 'mul', value: 2 }] } })
  const out = await job.result()
  expect(out.shape).toEqual(x.shape)
  expect(Array.from(out.data)).toEqual(Array.from(x.data, v => Math.fround(v * 2)))
  return job
}

const bidRequest: BidRequest = { jobId: 'flood', op: 'map', units: 10, flopsPerUnit: 1e6, bytesInPerUnit: 4, bytesInFixed: 0, bytesOutPerUnit: 4 }

let nodes: MeshNode[] = []

afterEach(async () => {
  await stopAll(nodes)
  nodes = []
})

describe('fair limits per peer', () => {
  it('a peer flooding calls for bids is declined past its rate, counted, while a user\'s job on the mesh succeeds', async () => {
    // The flood has to outrun the bucket: a small one, stated here, keeps the test short.
    nodes = await startMesh(3, (i) => (i === 0 ? { rateLimits: { bid: BID_LIMIT } } : {}))
    const [a, flooder, c] = nodes as [MeshNode, MeshNode, MeshNode]
    const calls = BID_LIMIT.burst * 3
    const flood = (async () => {
      const answers: BidAnswer[] = []
      // In waves of 32: a connection holds at most 64 bid streams at once.
      for (let k = 0; k < calls; k += 32) {
        answers.push(...await Promise.all(Array.from({ length: 32 }, async () => await requestBid(flooder.libp2p, a.peerId, bidRequest))))
      }
      return answers
    })()
    // At the same time a user submits a job on another node; a is one of its peers.
    const [answers, job] = await Promise.all([flood, doubled(c, random([96, 8], 1))])
    const refused = answers.filter(x => !x.accept)
    expect(refused.length).toBeGreaterThan(0)
    expect(refused.every(x => x.reason === RATE_LIMITED_REASON)).toBe(true)
    expect(answers.filter(x => x.accept).length).toBeGreaterThanOrEqual(BID_LIMIT.burst)
    expect(job.bids.find(b => b.peer === a.peerId.toString())?.accept).toBe(true)

    const info = await nodeInfo(a)
    expect(info.misbehaving.rateLimited.bid).toBe(refused.length)
    expect(info.misbehaving.banned).toEqual([])
    const { scrape: m } = await scrape(a.apiUrl ?? '')
    expect(m.value('tensormesh_rate_limited_total', { protocol: 'bid' })).toBe(refused.length)
  })

  it('a peer sending garbage shard frames is banned past the threshold, disconnected, refused, and shown in /v1/node and /metrics', async () => {
    nodes = await startMesh(2)
    const [a, bad] = nodes as [MeshNode, MeshNode]
    const badId = bad.peerId.toString()
    const banned = new Promise<{ peer: string, untilMs: number }>((resolve) => {
      a.peerLimits.addEventListener('peer:banned', (evt) => { resolve(evt.detail) }, { once: true })
    })
    const codes: string[] = []
    for (let k = 0; k < STRIKE_THRESHOLD; k++) {
      const stream = await bad.libp2p.dialProtocol(a.peerId, SHARD_PROTOCOL)
      const lp = lpStream(stream)
      // A header whose first field claims 2 MiB: garbage.
      await lp.write(Uint8Array.from([0x0a, 0xff, 0xff, 0x7f]))
      try {
        codes.push(ResultHeaderCodec.decode((await lp.read()).subarray()).errorCode)
      } catch {
        // The last strike bans: the connection may go before its answer does.
        if (k < STRIKE_THRESHOLD - 1) throw new Error(`no answer to garbage frame ${k}`)
      }
      stream.abort(new Error('done'))
    }
    expect(codes.slice(0, STRIKE_THRESHOLD - 1).every(c => c === 'ERR_FIELD_TOO_LONG')).toBe(true)
    const ban = await banned
    expect(ban.peer).toBe(badId)
    const now = Date.now()
    expect(ban.untilMs).toBeGreaterThan(now + BAN_MS - 60_000)
    expect(ban.untilMs).toBeLessThanOrEqual(now + BAN_MS)

    // Disconnected, out of the directory, and refused when it comes back.
    await expect.poll(() => a.libp2p.getConnections(bad.peerId).length, { timeout: 10_000 }).toBe(0)
    await expect.poll(() => bad.libp2p.getConnections(a.peerId).length, { timeout: 10_000 }).toBe(0)
    expect(a.directory.has(badId)).toBe(false)
    await expect((async () => {
      const stream = await bad.libp2p.dialProtocol(a.peerId, SHARD_PROTOCOL)
      const lp = lpStream(stream)
      await lp.write(Uint8Array.from([0x0a, 0x00]))
      return await lp.read()
    })()).rejects.toThrow()
    await expect(requestBid(bad.libp2p, a.peerId, bidRequest)).rejects.toThrow()

    const info = await nodeInfo(a)
    expect(info.misbehaving.banned).toEqual([{ peer: badId, untilMs: expect.any(Number) }])
    expect(Math.abs((info.misbehaving.banned[0]?.untilMs ?? 0) - ban.untilMs)).toBeLessThanOrEqual(1)
    expect(info.misbehaving.strikes.shard).toBe(STRIKE_THRESHOLD)
    expect(info.misbehaving.bans).toBe(1)
    // Its new connection was closed as it opened, or (once the connection gater asks isBanned) refused there.
    expect(info.misbehaving.refused + info.access.refused.banned).toBeGreaterThan(0)
    const { scrape: m } = await scrape(a.apiUrl ?? '')
    expect(m.value('tensormesh_peer_strikes_total', { source: 'shard' })).toBe(STRIKE_THRESHOLD)
    expect(m.value('tensormesh_peer_bans_total')).toBe(1)
    expect(m.value('tensormesh_peers_banned')).toBe(1)
    expect(m.value('tensormesh_banned_refused_total')).toBeGreaterThanOrEqual(info.misbehaving.refused)
  })

  it('one remote coordinator flooding shards holds at most its share; other coordinators and the node\'s own jobs still run', async () => {
    nodes = await startMesh(3)
    const [a, flooder, c] = nodes as [MeshNode, MeshNode, MeshNode]
    const share = a.jobs.shareOf()
    const extra = 10
    // Shard streams that announce 4 MiB of input and never send it: each holds its place on a.
    const held: Stream[] = []
    const refusals: ResultHeader[] = []
    for (let k = 0; k < share + extra; k++) {
      const stream = await flooder.libp2p.dialProtocol(a.peerId, SHARD_PROTOCOL)
      held.push(stream)
      const lp = lpStream(stream, { maxDataLength: CHUNK_BYTES })
      await lp.write(ShardHeaderCodec.encode({ jobId: 'flood', index: k, attempt: 1, op: 'map', params: '{"ops":[{"op":"mul","value":2}]}', start: 0, end: 1024, tensors: [{ name: 'x', dtype: 'float32', shape: [1024, 1024] }], refs: [], blobs: [] }))
      lp.read().then(f => { refusals.push(ResultHeaderCodec.decode(f.subarray())) }, () => {})
    }
    await expect.poll(() => refusals.length, { timeout: 10_000 }).toBe(extra)
    expect(refusals.every(r => !r.ok && r.errorCode === 'ERR_PEER_OVER_LIMIT')).toBe(true)
    expect(a.jobs.inflightFrom(flooder.peerId.toString())).toBe(share)
    expect((await nodeInfo(a)).misbehaving.overLimit).toBe(extra)

    // A real shard from the flooder, 2 MiB inline: refused before a's side reads it, and the code arrives.
    const n = 512 * 1024
    const big = { dtype: 'float32' as const, shape: [n, 1], data: new Float32Array(n) }
    const over = sendShard(flooder.libp2p, a.peerId, { jobId: 'flood', index: 99, attempt: 1, start: 0, end: n, task: { op: 'map', params: { ops: [{ op: 'mul', value: 2 }] }, inputs: { x: big } } }, AbortSignal.timeout(20_000))
    await expect(over).rejects.toMatchObject({ code: 'ERR_SHARD_REMOTE', remoteCode: 'ERR_PEER_OVER_LIMIT' })
    // Its calls for bids are declined while it holds its share.
    expect(await requestBid(flooder.libp2p, a.peerId, bidRequest)).toMatchObject({ accept: false })

    // Another coordinator's job runs shards on a; a's own job runs too.
    const other = await doubled(c, random([96, 8], 2))
    expect(other.shards.some(s => s.peer === a.peerId.toString())).toBe(true)
    const own = await doubled(a, random([96, 8], 3))
    expect(own.shards.some(s => s.peer === a.peerId.toString())).toBe(true)

    // Once the flooder lets go, its share is free again.
    for (const s of held) s.abort(new Error('done'))
    await expect.poll(() => a.jobs.inflightFrom(flooder.peerId.toString()), { timeout: 10_000 }).toBe(0)
    const ok = await sendShard(flooder.libp2p, a.peerId, { jobId: 'flood', index: 100, attempt: 1, start: 0, end: 4, task: { op: 'map', params: { ops: [{ op: 'mul', value: 2 }] }, inputs: { x: { dtype: 'float32', shape: [4, 1], data: Float32Array.from([1, 2, 3, 4]) } } } }, AbortSignal.timeout(20_000))
    expect(Object.values(ok.partial).map(t => Array.from(t.data))).toEqual([[2, 4, 6, 8]])
  })
})

describe('job data stays with the job', () => {
  it('serves a job\'s shared input only to the peers running its shards, while it runs; an outsider gets the same not-found as for an absent CID', async () => {
    // b runs its shards very slowly (it sleeps after computing), so the job is still running while we look.
    nodes = await startMesh(3, (i) => (i === 1 ? { faults: { slowFactor: 100_000 } } : i === 2 ? { serve: false } : {}))
    const [a, worker, outsider] = nodes as [MeshNode, MeshNode, MeshNode]
    const x = random([128, 512], 4)
    const w = random([512, 512], 5)
    const shared = encodeNpy(w)
    const cid = await cidOf(shared)
    const absent = await cidOf(Uint8Array.from([1, 2, 3, 4]))

    // The worker's pool starts a shard only after the shard's shared input was fetched.
    const fetched = new Promise<void>((resolve) => {
      const check = (): void => {
        if (worker.pool.busy > 0) { worker.pool.removeEventListener('change', check); resolve() }
      }
      worker.pool.addEventListener('change', check)
    })
    const job = a.submit({ op: 'matmul', inputs: { a: x, b: w }, schedule: { backups: false } })
    await fetched
    expect(job.finished).toBe(false)
    expect(worker.info().blobBytesFetched).toBe(shared.byteLength)

    /** The raw answer frame `from` gets from a for `cid`. */
    const raw = async (from: MeshNode, what: string): Promise<Uint8Array> => {
      const stream = await from.libp2p.dialProtocol(a.peerId, BLOB_PROTOCOL)
      const lp = lpStream(stream, { maxDataLength: CHUNK_BYTES })
      await lp.write(BlobRequestCodec.encode({ cid: what }))
      const frame = (await lp.read()).subarray()
      stream.abort(new Error('done'))
      return frame
    }
    const refused = await raw(outsider, cid)
    expect(refused).toEqual(await raw(outsider, absent))
    expect(BlobAnswerCodec.decode(refused)).toEqual({ ok: false, size: 0, error: BLOB_NOT_HERE })
    // Through the node's own resolver (store, then every connected peer): the same code for both.
    expect(await asyncCodeOf(outsider.resolveBlob(cid))).toBe('ERR_BLOB_NOT_FOUND')
    expect(await asyncCodeOf(outsider.resolveBlob(absent))).toBe('ERR_BLOB_NOT_FOUND')

    // The worker, which runs the job's shards, fetches it fine.
    const stream = await worker.libp2p.dialProtocol(a.peerId, BLOB_PROTOCOL)
    expect(await blobOverStream(stream, cid)).toEqual(shared)

    // Once the job ends its grants go: the worker is an outsider too.
    job.cancel()
    await expect(job.result()).rejects.toMatchObject({ code: expect.any(String) })
    expect(await raw(worker, cid)).toEqual(await raw(worker, absent))
  })

  it('serves blobs stored with PUT /v1/blobs to no peer, and still to the node\'s own API', async () => {
    nodes = await startMesh(2)
    const [a, peer] = nodes as [MeshNode, MeshNode]
    const bytes = Uint8Array.from({ length: 3000 }, (_, i) => (i * 13) % 256)
    const token = process.env.TENSORMESH_TOKEN
    const auth: Record<string, string> = token === undefined ? {} : { authorization: `Bearer ${token}` }
    const put = await fetch(`${a.apiUrl ?? ''}/v1/blobs`, { method: 'PUT', body: bytes, headers: { ...auth, 'content-type': 'application/octet-stream' } })
    expect(put.status).toBe(201)
    const { cid } = await put.json() as { cid: string }
    expect(cid).toBe(await cidOf(bytes))
    expect(await asyncCodeOf(peer.resolveBlob(cid))).toBe('ERR_BLOB_NOT_FOUND')
    const own = await fetch(`${a.apiUrl ?? ''}/v1/blobs/${cid}`, { headers: auth })
    expect(own.status).toBe(200)
    expect(new Uint8Array(await own.arrayBuffer())).toEqual(bytes)
  })
})
