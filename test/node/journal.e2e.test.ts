import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import { startNode, stopAll, waitForPeers } from '../helpers/mesh.ts'
import { load, numpy, relError } from '../helpers/numpy.ts'
import type { MeshNode } from '../../src/node/mesh-node.ts'

let dir: string
beforeAll(() => {
  dir = numpy(`
rng = np.random.default_rng(9)
a = rng.standard_normal((64, 48)).astype(np.float32)
b = rng.standard_normal((48, 16)).astype(np.float32)
np.save(f'{out}/a.npy', a); np.save(f'{out}/b.npy', b)
np.save(f'{out}/ab.npy', (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32))
`)
})

let nodes: MeshNode[] = []
afterEach(async () => {
  await stopAll(nodes)
  nodes = []
})

describe('job journal', () => {
  it('serves finished results after a restart, from the same data directory', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'tm-journal-'))
    const first = await startNode({ dataDir })
    nodes = [first]
    const job = first.submit({ op: 'matmul', inputs: { a: await load(dir, 'a'), b: await load(dir, 'b') } })
    await job.result()
    await job.persisted
    await first.stop()

    const second = await startNode({ dataDir })
    nodes = [second]
    expect(second.peerId.toString()).toBe(first.peerId.toString())
    const restored = second.jobs.get(job.id)
    expect(restored.state).toBe('succeeded')
    expect(restored.toJSON().output).toEqual({ dtype: 'float32', shape: [64, 16] })
    const out = await restored.result()
    expect(relError(out.data, (await load(dir, 'ab')).data)).toBeLessThan(1e-4)
  })

  it('resumes an unfinished job with the partials it had, and fails one whose inputs are gone', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'tm-journal-'))
    // The peer sleeps 2000x its compute time, so its shards are still out when the coordinator stops.
    const coord = await startNode({ dataDir })
    const slow = await startNode({ bootstrap: coord.multiaddrs(), faults: { slowFactor: 2000 } })
    nodes = [coord, slow]
    await Promise.all([waitForPeers(coord, 1), waitForPeers(slow, 1)])
    const inputs = { a: await load(dir, 'a'), b: await load(dir, 'b') }
    const job = coord.submit({ op: 'matmul', inputs })
    const gone = coord.submit({ op: 'matmul', inputs })
    await Promise.all([job.journaled, gone.journaled])
    const local = new Promise<void>(resolve => {
      job.addEventListener('progress', () => { if (job.done >= 2) resolve() })
    })
    await local
    await job.persisted // the accepted partials are on disk
    const doneBefore = job.shards.filter(s => s.state === 'done').map(s => s.index)
    await stopAll(nodes)
    expect(doneBefore).toHaveLength(2)
    await rm(join(dataDir, 'jobs', gone.id, 'input-b.npy'))

    const again = await startNode({ dataDir })
    nodes = [again]
    const resumed = again.jobs.get(job.id)
    const out = await resumed.result()
    expect(relError(out.data, (await load(dir, 'ab')).data)).toBeLessThan(1e-4)
    expect(resumed.shards).toHaveLength(4)
    // The two shards accepted before the stop were not run again; the other two ran after the restart.
    for (const s of resumed.shards) {
      if (doneBefore.includes(s.index)) expect(s.history).toHaveLength(1)
      else expect(s.history.length).toBeGreaterThan(1)
      expect(s.peer).toBe(coord.peerId.toString())
    }
    const failed = again.jobs.get(gone.id)
    expect(failed.state).toBe('failed')
    expect(failed.error?.code).toBe('ERR_INPUTS_GONE')
    expect(failed.error?.message).toMatch(/input-b\.npy/)
  })
})
