import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest'
import { decodeNpy, encodeNpy } from '../../src/compute/npy.ts'
import { ApiClient, ApiError } from '../../src/node/client/api-client.ts'
import { BULK_MIN_BYTES } from '../../src/protocol/bulk/index.ts'
import { startMesh, stopAll } from '../helpers/mesh.ts'
import { load, numpy, relError } from '../helpers/numpy.ts'
import type { MeshNode } from '../../src/node/mesh-node.ts'
import type { JobView } from '../../src/node/jobs/job.ts'

/** float32 products summed over k ~ 200 terms: 1e-4 relative to the largest entry is loose for fp32 and tight for any wrong row. */
const MATMUL_TOLERANCE = 1e-4

let dir: string

beforeAll(() => {
  dir = numpy(`
rng = np.random.default_rng(7)
a = rng.standard_normal((37, 211)).astype(np.float32)
b = rng.standard_normal((211, 23)).astype(np.float32)
np.save(f'{out}/a.npy', a); np.save(f'{out}/b.npy', b)
np.save(f'{out}/ab.npy', (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32))
x = rng.standard_normal((101, 5)).astype(np.float32)
np.save(f'{out}/x.npy', x)
np.save(f'{out}/map.npy', np.tanh(np.maximum(x * 2.0 + 0.5, 0)).astype(np.float32))
np.save(f'{out}/mean0.npy', x.astype(np.float64).mean(axis=0).astype(np.float32))
np.save(f'{out}/max.npy', np.array(x.max(), dtype=np.float32))
`)
})

describe('jobs on a three-node mesh', () => {
  let nodes: MeshNode[] = []
  let a: MeshNode

  beforeAll(async () => {
    nodes = await startMesh(3)
    a = nodes[0] as MeshNode
  })

  afterAll(async () => {
    await stopAll(nodes)
  })

  it('a matmul of odd shapes equals numpy and ran on every peer', async () => {
    // What this test needs, stated: every peer keeps the shards cut for it (no backup copy may win one).
    const job = a.submit({ op: 'matmul', inputs: { a: await load(dir, 'a'), b: await load(dir, 'b') }, schedule: { backups: false } })
    const out = await job.result()
    const ref = await load(dir, 'ab')
    expect(out.shape).toEqual([37, 23])
    expect(relError(out.data, ref.data)).toBeLessThan(MATMUL_TOLERANCE)
    const peers = new Set(job.shards.map(s => s.peer))
    expect(peers.size).toBe(3)
    expect(job.shards.length).toBeGreaterThanOrEqual(6)
    expect(job.toJSON().state).toBe('succeeded')
    // b is shared: each peer fetched it once by CID, however many shards it ran.
    const bBytes = encodeNpy(await load(dir, 'b')).byteLength
    for (const peer of nodes.slice(1)) {
      expect(job.shards.filter(s => s.peer === peer.peerId.toString()).length).toBeGreaterThanOrEqual(2)
      expect(peer.info().blobBytesFetched).toBe(bBytes)
    }
  })

  it('map and reduce jobs equal numpy', async () => {
    const x = await load(dir, 'x')
    const mapped = await a.submit({ op: 'map', inputs: { x }, params: { ops: [{ op: 'mul', value: 2 }, { op: 'add', value: 0.5 }, { op: 'relu' }, { op: 'tanh' }] } }).result()
    expect(relError(mapped.data, (await load(dir, 'map')).data)).toBeLessThan(1e-5)
    const mean0 = await a.submit({ op: 'reduce', inputs: { x }, params: { op: 'mean', axis: 0 } }).result()
    expect(mean0.shape).toEqual([5])
    expect(relError(mean0.data, (await load(dir, 'mean0')).data)).toBeLessThan(1e-5)
    const max = await a.submit({ op: 'reduce', inputs: { x }, params: { op: 'max' } }).result()
    expect(max.shape).toEqual([])
    expect(max.data[0]).toBe((await load(dir, 'max')).data[0])
  })

  it('sends tiny shards on one session per peer and reuses a fresh acceptance for the next tiny job', async () => {
    const x = await load(dir, 'x')
    const params = { ops: [{ op: 'mul', value: 2 }, { op: 'add', value: 0.5 }, { op: 'relu' }, { op: 'tanh' }] }
    const before = a.info().shardSessions?.shards ?? 0
    const first = a.submit({ op: 'map', inputs: { x }, params, schedule: { shardsPerPeer: 4 } })
    expect(relError((await first.result()).data, (await load(dir, 'map')).data)).toBeLessThan(1e-5)
    const second = a.submit({ op: 'map', inputs: { x }, params, schedule: { shardsPerPeer: 4 } })
    expect(relError((await second.result()).data, (await load(dir, 'map')).data)).toBeLessThan(1e-5)
    const remote = (j: typeof first): number => j.shards.filter(s => s.peer !== a.peerId.toString()).length
    expect(remote(first) + remote(second)).toBeGreaterThan(0)
    const info = a.info().shardSessions
    // Every remote shard of both jobs went on a session; none fell back to a stream.
    expect((info?.shards ?? 0) - before).toBe(remote(first) + remote(second))
    expect(info?.fallbacks).toBe(0)
    expect(info?.open).toBeGreaterThan(0)
    // The peers' acceptances of the first job stood in for the second job's bid round.
    const peerBids = second.bids.filter(b => b.peer !== a.peerId.toString())
    expect(peerBids.length).toBe(2)
    for (const b of peerBids) expect(b).toMatchObject({ accept: true, cached: true })
  })

  it('refuses bad jobs before any shard starts, with codes that name the problem', async () => {
    const good = await load(dir, 'a')
    const cases: Array<[Parameters<MeshNode['submit']>[0], string, RegExp]> = [
      [{ op: 'convolve', inputs: {} }, 'ERR_UNKNOWN_OPERATOR', /convolve.*matmul/],
      [{ op: 'matmul', inputs: { a: good } }, '', /\bb\b/],
      [{ op: 'matmul', inputs: { a: good, b: good } }, '', /\[37, 211\].*\[37, 211\]/],
      [{ op: 'reduce', inputs: { x: good }, params: { op: 'sum', axis: 3 } }, '', /axis/]
    ]
    for (const [spec, code, message] of cases) {
      let caught: unknown
      try {
        a.submit(spec)
      } catch (err) {
        caught = err
      }
      expect(caught).toBeInstanceOf(Error)
      expect((caught as Error).name).toBe('InvalidInputError')
      if (code !== '') expect((caught as { code: string }).code).toBe(code)
      expect((caught as Error).message).toMatch(message)
    }
    expect(a.jobs.list().every(j => j.op !== 'convolve')).toBe(true)
  })

  it('serves jobs over HTTP: inline JSON, errors as JSON 400, result as .npy', async () => {
    const client = new ApiClient(a.apiUrl ?? '')
    const bad = await client.json('POST', '/v1/jobs', { op: 'matmul', inputs: { a: { shape: [2, 3], data: [1, 2, 3, 4, 5, 6] }, b: { shape: [2, 2], data: [1, 0, 0, 1] } } }).catch((err: unknown) => err)
    expect(bad).toBeInstanceOf(ApiError)
    expect((bad as ApiError).status).toBe(400)
    expect((bad as ApiError).message).toMatch(/\[2, 3\].*\[2, 2\]/)
    expect((await client.node()).peerId).toBe(a.peerId.toString())

    const job = await client.json<JobView>('POST', '/v1/jobs', { op: 'matmul', inputs: { a: { shape: [2, 3], data: [1, 2, 3, 4, 5, 6] }, b: { shape: [3, 1], data: [1, 1, 1] } } })
    await a.jobs.get(job.id).result().catch(() => {})
    const res = await client.request('GET', `/v1/jobs/${job.id}/result`)
    const out = decodeNpy(new Uint8Array(await res.arrayBuffer()), 'result')
    expect([...out.data]).toEqual([6, 15])
    const missing = await client.json('GET', '/v1/jobs/nope').catch((err: unknown) => err)
    expect((missing as ApiError).status).toBe(404)
    expect((missing as ApiError).code).toBe('ERR_JOB_NOT_FOUND')
  })

  it('takes a 64 MiB input through POST /v1/jobs as multipart .npy', async () => {
    const big = numpy(`
rng = np.random.default_rng(3)
a = rng.standard_normal((4096, 4096)).astype(np.float32)
b = rng.standard_normal((4096, 3)).astype(np.float32)
np.save(f'{out}/a.npy', a); np.save(f'{out}/b.npy', b)
np.save(f'{out}/ab.npy', (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32))
`)
    const aBytes = await readFile(join(big, 'a.npy'))
    expect(aBytes.byteLength).toBeGreaterThanOrEqual(64 * 1024 * 1024)
    const form = new FormData()
    form.set('spec', JSON.stringify({ op: 'matmul', params: {} }))
    form.set('a', new Blob([aBytes]), 'a.npy')
    form.set('b', new Blob([await readFile(join(big, 'b.npy'))]), 'b.npy')
    const client = new ApiClient(a.apiUrl ?? '')
    const job = await (await client.request('POST', '/v1/jobs', form)).json() as JobView
    const out = await a.jobs.get(job.id).result()
    expect(relError(out.data, (await load(big, 'ab')).data)).toBeLessThan(MATMUL_TOLERANCE)
  })

  it('moves shards of 4 MiB and more over the bulk channel, both ways, intact', async () => {
    // A mesh of its own: once a node has measured its links (this file's other jobs do), the split
    // rightly keeps most rows of a job this transfer-bound (x * 2) on the coordinator, and the shards
    // that would cross are no longer large. Fresh nodes split by the bids alone.
    const nodes = await startMesh(3)
    const a = nodes[0] as MeshNode
    onTestFinished(async () => { await stopAll(nodes) })
    const rows = 4096
    const cols = 2048
    const data = new Float32Array(rows * cols)
    for (let i = 0; i < data.length; i++) data[i] = (i % 1000) - 500
    // Bytes a node sent over the bulk channel: pulled from it, or pushed by it (to a peer it dialed).
    const served = (n: MeshNode): number => (n.info().bulk?.bytesServed ?? 0) + (n.info().bulk?.bytesPushed ?? 0)
    const before = nodes.map(served)
    // One shard per peer, and no backup copies: each peer runs the shard cut for it, a third of
    // 32 MiB give or take the bids, well over the threshold. (With backups on, a copy on the
    // coordinator, which moves no bytes, could win a remote shard and this test would see nothing cross.)
    const job = a.submit({ op: 'map', inputs: { x: { dtype: 'float32', shape: [rows, cols], data } }, params: { ops: [{ op: 'mul', value: 2 }] }, schedule: { shardsPerPeer: 1, backups: false } })
    const out = await job.result()
    // x * 2 is exact in float32 for these integers: compare every element.
    let wrong = 0
    for (let i = 0; i < data.length; i++) if (out.data[i] !== 2 * (data[i] ?? 0)) wrong++
    expect(wrong).toBe(0)
    expect(job.bids.filter(b => b.accept)).toHaveLength(3)
    expect(new Set(job.shards.map(s => s.peer))).toEqual(new Set(nodes.map(n => n.peerId.toString())))
    const remote = job.shards.filter(s => s.peer !== a.peerId.toString())
    expect(remote).toHaveLength(2)
    // Which shards go over the bulk channel follows from their size: the split follows the bids.
    const bulky = remote.filter(s => s.bytesOut >= BULK_MIN_BYTES)
    expect(bulky.length).toBeGreaterThan(0)
    for (const s of remote) expect(s.bytesIn).toBe(s.bytesOut)
    // Inputs went out over the coordinator's bulk channel, results came back over the peers'.
    const sent = bulky.reduce((n, s) => n + s.bytesOut, 0)
    expect(served(a) - (before[0] ?? 0)).toBe(sent)
    const returned = nodes.slice(1).reduce((n, node, i) => n + served(node) - (before[i + 1] ?? 0), 0)
    expect(returned).toBe(sent)
    // A peer took its bulky inputs into its reused receive memory, not a fresh buffer.
    for (const s of bulky) {
      const peer = nodes.find(n => n.peerId.toString() === s.peer) as MeshNode
      expect(peer.receiveBuffers.counters.allocated + peer.receiveBuffers.counters.reused).toBeGreaterThan(0)
    }
  })

  it('cancels a job: its state is cancelled and result() rejects', async () => {
    const job = a.submit({ op: 'matmul', inputs: { a: await load(dir, 'a'), b: await load(dir, 'b') } })
    const client = new ApiClient(a.apiUrl ?? '')
    const view = await client.json<JobView>('DELETE', `/v1/jobs/${job.id}`)
    expect(view.state).toBe('cancelled')
    await expect(job.result()).rejects.toMatchObject({ code: 'ERR_CANCELLED' })
  })
})

describe('negotiation with peers that decline or vanish', () => {
  let nodes: MeshNode[] = []

  afterAll(async () => {
    await stopAll(nodes)
  })

  it('a peer that declines gets no shard; one stopped between bid and shard has its shards run elsewhere', async () => {
    let stopOnBids: MeshNode | undefined
    nodes = await startMesh(4, (i) => ({
      // Node 3 accepts no shard whose inputs exceed 1 KiB: b alone is 19 KiB, so it declines.
      ...(i === 3 ? { limits: { maxShardBytes: 1024 } } : {}),
      ...(i === 0 ? { hooks: { afterBids: async () => { await stopOnBids?.stop() } } } : {})
    }))
    const [coord, , vanishing, decliner] = nodes as [MeshNode, MeshNode, MeshNode, MeshNode]

    const job = coord.submit({ op: 'matmul', inputs: { a: await load(dir, 'a'), b: await load(dir, 'b') } })
    stopOnBids = vanishing
    const out = await job.result()
    expect(relError(out.data, (await load(dir, 'ab')).data)).toBeLessThan(MATMUL_TOLERANCE)

    const declined = job.bids.find(b => b.peer === decliner.peerId.toString())
    expect(declined?.accept).toBe(false)
    expect(declined?.reason).toMatch(/shard limit/)
    const gone = vanishing.peerId.toString()
    expect(job.bids.find(b => b.peer === gone)?.accept).toBe(true)
    for (const s of job.shards) {
      expect(s.peer).not.toBe(decliner.peerId.toString())
      expect(s.peer).not.toBe(gone)
      expect(s.history.some(h => h.peer === decliner.peerId.toString())).toBe(false)
    }
    const retried = job.shards.filter(s => s.history.some(h => h.peer === gone))
    expect(retried.length).toBeGreaterThan(0)
    for (const s of retried) {
      expect(s.attempts).toBeGreaterThanOrEqual(2)
      expect(s.history[0]?.error).toBeDefined()
    }
  })
})

describe('nodes without the bulk channel', () => {
  let nodes: MeshNode[] = []

  afterAll(async () => {
    await stopAll(nodes)
  })

  it('move large shards on libp2p streams, intact', async () => {
    nodes = await startMesh(2, () => ({ bulk: false }))
    const [coord, peer] = nodes as [MeshNode, MeshNode]
    expect(coord.info().bulk).toBeNull()
    const rows = 2048
    const cols = 2048
    const data = new Float32Array(rows * cols)
    for (let i = 0; i < data.length; i++) data[i] = (i % 777) - 300
    const job = coord.submit({ op: 'map', inputs: { x: { dtype: 'float32', shape: [rows, cols], data } }, params: { ops: [{ op: 'mul', value: 2 }] }, schedule: { shardsPerPeer: 1 } })
    const out = await job.result()
    let wrong = 0
    for (let i = 0; i < data.length; i++) if (out.data[i] !== 2 * (data[i] ?? 0)) wrong++
    expect(wrong).toBe(0)
    const remote = job.shards.find(s => s.peer === peer.peerId.toString())
    expect(remote?.bytesOut).toBeGreaterThanOrEqual(4 * 1024 * 1024)
  })
})
