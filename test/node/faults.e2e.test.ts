import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import { startMesh, stopAll } from '../helpers/mesh.ts'
import { load, numpy, relError } from '../helpers/numpy.ts'
import type { MeshNode } from '../../src/node/mesh-node.ts'

const MATMUL_TOLERANCE = 1e-4
let dir: string

beforeAll(() => {
  dir = numpy(`
rng = np.random.default_rng(5)
a = rng.standard_normal((120, 160)).astype(np.float32)
b = rng.standard_normal((160, 40)).astype(np.float32)
np.save(f'{out}/a.npy', a); np.save(f'{out}/b.npy', b)
np.save(f'{out}/ab.npy', (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32))
big = rng.standard_normal((512, 1024)).astype(np.float32)
w = rng.standard_normal((1024, 512)).astype(np.float32)
np.save(f'{out}/big.npy', big); np.save(f'{out}/w.npy', w)
np.save(f'{out}/bigw.npy', (big.astype(np.float64) @ w.astype(np.float64)).astype(np.float32))
`)
})

let nodes: MeshNode[] = []
afterEach(async () => {
  await stopAll(nodes)
  nodes = []
})

describe('a peer that lies', () => {
  it('with replicas 2 the result is right, the liar is outvoted, and after two lost votes it is asked no more', async () => {
    nodes = await startMesh(3, (i) => (i === 2 ? { faults: { wrong: true } } : {}))
    const [coord, , liar] = nodes as [MeshNode, MeshNode, MeshNode]
    const liarId = liar.peerId.toString()
    const ref = await load(dir, 'ab')

    const job = coord.submit({ op: 'matmul', inputs: { a: await load(dir, 'a'), b: await load(dir, 'b') }, verify: { replicas: 2 } })
    const out = await job.result()
    expect(relError(out.data, ref.data)).toBeLessThan(MATMUL_TOLERANCE)
    expect(job.verified).toBe(job.shards.length)
    expect(job.outvoted.length).toBeGreaterThan(0)
    expect(job.outvoted.every(o => o.peer === liarId)).toBe(true)
    expect(job.shards.every(s => s.peer !== liarId)).toBe(true)

    if (job.outvoted.length < 2) {
      const again = coord.submit({ op: 'matmul', inputs: { a: await load(dir, 'a'), b: await load(dir, 'b') }, verify: { replicas: 2 } })
      expect(relError((await again.result()).data, ref.data)).toBeLessThan(MATMUL_TOLERANCE)
    }
    expect(coord.info().distrusted).toEqual([liarId])
    const later = coord.submit({ op: 'matmul', inputs: { a: await load(dir, 'a'), b: await load(dir, 'b') } })
    await later.result()
    expect(later.bids.map(b => b.peer)).not.toContain(liarId)
  })

  it('spot checks catch a liar: the coordinator\'s own partial replaces the wrong one', async () => {
    nodes = await startMesh(2, (i) => (i === 1 ? { faults: { wrong: true } } : {}))
    const [coord, liar] = nodes as [MeshNode, MeshNode]
    const job = coord.submit({ op: 'matmul', inputs: { a: await load(dir, 'a'), b: await load(dir, 'b') }, verify: { spotCheck: 1 } })
    const out = await job.result()
    expect(relError(out.data, (await load(dir, 'ab')).data)).toBeLessThan(MATMUL_TOLERANCE)
    const remote = job.shards.filter(s => s.history.some(h => h.peer === liar.peerId.toString()))
    expect(remote.length).toBeGreaterThan(0)
    for (const s of remote) expect(s.history.some(h => h.kind === 'check')).toBe(true)
    expect(job.outvoted.map(o => o.peer)).toEqual(remote.map(() => liar.peerId.toString()))
  })

  it('refuses a bad verify policy before anything starts', async () => {
    nodes = await startMesh(1)
    const node = nodes[0] as MeshNode
    const inputs = { a: await load(dir, 'a'), b: await load(dir, 'b') }
    expect(() => node.submit({ op: 'matmul', inputs, verify: { replicas: 0 } })).toThrow(expect.objectContaining({ code: 'ERR_BAD_VERIFY' }))
    expect(() => node.submit({ op: 'matmul', inputs, verify: { spotCheck: 2 } })).toThrow(expect.objectContaining({ code: 'ERR_BAD_VERIFY' }))
    const tooMany = node.submit({ op: 'matmul', inputs, verify: { replicas: 3 } })
    await expect(tooMany.result()).rejects.toMatchObject({ code: 'ERR_NO_CAPACITY' })
  })
})

describe('a slow peer', () => {
  it('has its straggling shards copied to idle peers; the first result wins', async () => {
    nodes = await startMesh(3, (i) => (i === 2 ? { faults: { slowFactor: 100 } } : {}))
    const [coord, , slow] = nodes as [MeshNode, MeshNode, MeshNode]
    const job = coord.submit({ op: 'matmul', inputs: { a: await load(dir, 'big'), b: await load(dir, 'w') } })
    const out = await job.result()
    expect(relError(out.data, (await load(dir, 'bigw')).data)).toBeLessThan(MATMUL_TOLERANCE)
    const slowId = slow.peerId.toString()
    const backedUp = job.shards.filter(s => s.history.some(h => h.kind === 'backup'))
    expect(backedUp.length).toBeGreaterThan(0)
    for (const s of backedUp) {
      expect(s.history[0]?.peer).toBe(slowId)
      expect(s.peer).not.toBe(slowId)
    }
  })
})
