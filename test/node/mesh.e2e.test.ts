import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ApiClient } from '../../src/node/client/api-client.ts'
import { startMesh, startNode, stopAll, waitForPeers, TEST_ADVERT_INTERVAL_MS } from '../helpers/mesh.ts'
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

/** GossipsubHistoryGossip (3), plus one for the heartbeat in progress. */
const GOSSIP_WINDOW_HEARTBEATS = 4

describe('a newcomer', () => {
  let nodes: MeshNode[] = []
  afterAll(async () => { await stopAll(nodes) })

  it('and the mesh know each other as soon as it subscribes, not an advert interval later', async () => {
    // Adverts every 10 minutes: only the advert a subscription triggers can fill the directories within the wait.
    const slow = 10 * 60_000
    const first = await startNode({ advertIntervalMs: slow })
    nodes = [first]
    const second = await startNode({ advertIntervalMs: slow, bootstrap: first.multiaddrs() })
    nodes.push(second)
    await Promise.all([waitForPeers(first, 1, 30_000), waitForPeers(second, 1, 30_000)])
    // Gossipsub offers messages of its last 3 heartbeats to new peers (IHAVE), and the two have
    // re-advertised once they learned they are reachable: wait until all that has left the window.
    await new Promise<void>(resolve => {
      let beats = 0
      const onBeat = (): void => { if (++beats > GOSSIP_WINDOW_HEARTBEATS) { first.libp2p.services.pubsub.removeEventListener('gossipsub:heartbeat', onBeat); resolve() } }
      first.libp2p.services.pubsub.addEventListener('gossipsub:heartbeat', onBeat)
    })
    const third = await startNode({ advertIntervalMs: slow, bootstrap: first.multiaddrs() })
    nodes.push(third)
    await Promise.all(nodes.map(async n => { await waitForPeers(n, 2, 30_000) }))
    for (const n of nodes) for (const m of nodes) if (n !== m) expect(n.directory.get(m.peerId.toString())).toBeDefined()
  })
})
