import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ApiClient } from '../../src/node/client/api-client.ts'
import { startMesh, stopAll, TEST_ADVERT_INTERVAL_MS } from '../helpers/mesh.ts'
import type { MeshNode } from '../../src/node/mesh-node.ts'

describe('mesh of three nodes in one process', () => {
  let nodes: MeshNode[] = []

  beforeAll(async () => {
    nodes = await startMesh(3)
  })

  afterAll(async () => {
    await stopAll(nodes)
  })

  it('each node sees the other two with their capacity', async () => {
    for (const node of nodes) {
      const peers = await new ApiClient(node.apiUrl ?? '').peers()
      const ids = peers.map(p => p.peerId).sort()
      const others = nodes.filter(n => n !== node).map(n => n.peerId.toString()).sort()
      expect(ids).toEqual(others)
      for (const p of peers) {
        expect(p.backend).toBe('wasm')
        expect(p.cores).toBeGreaterThan(0)
        expect(p.gflops).toBeGreaterThan(0)
        expect(p.slots).toBe(1)
        expect(p.operators).toContain('matmul')
        expect(p.addrs.length).toBeGreaterThan(0)
      }
    }
  })

  it('GET /v1/node describes the node itself', async () => {
    const info = await new ApiClient(nodes[0]?.apiUrl ?? '').node()
    expect(info.peerId).toBe(nodes[0]?.peerId.toString())
    expect(info.peers).toBe(2)
    expect(info.adverts.published).toBeGreaterThan(0)
    expect(info.adverts.lastAdvertBytes).toBeLessThan(1024)
  })

  it('a stopped node leaves the others\' directories within three advert intervals', async () => {
    const [a, b, c] = nodes as [MeshNode, MeshNode, MeshNode]
    const gone = c.peerId.toString()
    const left = (node: MeshNode): Promise<string> => new Promise((resolve) => {
      node.addEventListener('peer:leave', (evt) => { if (evt.detail.peerId === gone) resolve(evt.detail.reason) })
    })
    const seen = Promise.all([left(a), left(b)])
    await c.stop()
    nodes = [a, b]
    // Three intervals of silence plus one sweep period and scheduling slack: the
    // deadline this race loses against is the bound, not a sleep.
    const deadline = new Promise<never>((_resolve, reject) => setTimeout(() => { reject(new Error('peer did not leave in time')) }, 3 * TEST_ADVERT_INTERVAL_MS + 1000))
    const reasons = await Promise.race([seen, deadline])
    expect(reasons).toEqual(['expired', 'expired'])
    expect(a.directory.has(gone)).toBe(false)
    expect(b.directory.has(gone)).toBe(false)
  })
})
