/**
 * Nodes that peers cannot dial, in one process on loopback. A node that
 * listens on no address of its own (`listen: []`) is what a node behind a
 * home router is to its peers: it can dial out, nobody can dial in. (The
 * namespaced testnet, test/process/netns.test.ts, has the real NAT router.)
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { startNode, stopAll, waitForPeers } from '../helpers/mesh.ts'
import { load, numpy, relError } from '../helpers/numpy.ts'
import type { MeshNode } from '../../src/node/mesh-node.ts'

/** float32 products summed over 300 terms: 1e-4 of the largest entry is loose for fp32 and tight for any wrong row. */
const MATMUL_TOLERANCE = 1e-4

/** Reachability comes from dial-back probes and a relay reservation: seconds, but a loaded machine may take more. */
const SETTLE_MS = 30_000

let dir: string

beforeAll(() => {
  dir = numpy(`
rng = np.random.default_rng(12)
a = rng.standard_normal((240, 300)).astype(np.float32)
b = rng.standard_normal((300, 40)).astype(np.float32)
np.save(f'{out}/a.npy', a); np.save(f'{out}/b.npy', b)
np.save(f'{out}/ab.npy', (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32))
`)
})

describe('a mesh with two nodes behind NAT', () => {
  let nodes: MeshNode[] = []
  let pub0: MeshNode
  let pub1: MeshNode
  let nat2: MeshNode
  let nat3: MeshNode

  beforeAll(async () => {
    pub0 = await startNode()
    const boot = pub0.multiaddrs()
    pub1 = await startNode({ bootstrap: boot })
    nat2 = await startNode({ bootstrap: boot, listen: [] })
    nat3 = await startNode({ bootstrap: boot, listen: [] })
    nodes = [pub0, pub1, nat2, nat3]
    await Promise.all(nodes.map(async n => { await waitForPeers(n, 3, SETTLE_MS) }))
  }, 60_000)

  afterAll(async () => { await stopAll(nodes) })

  it('the NATed nodes learn that they are private and take a relay; the others learn they are public', async () => {
    await vi.waitFor(() => {
      for (const n of [nat2, nat3]) {
        const info = n.info()
        expect(info.reachability).toBe('private')
        expect(info.relay).not.toBeNull()
        // The relayed address is what the advert carries for other private nodes.
        expect(info.relay?.addrs.some(a => a.includes('/p2p-circuit'))).toBe(true)
      }
      for (const n of [pub0, pub1]) expect(n.info().reachability).toBe('public')
    }, { timeout: SETTLE_MS, interval: 100 })
    const relays = [pub0, pub1].map(n => n.info().relayServer?.reservations ?? 0)
    expect(relays.reduce((a, b) => a + b, 0)).toBe(2)
  })

  it('a job from a reachable node runs on the NATed nodes too, and their results come back over connections they dialed', async () => {
    const rows = 4096
    const cols = 2048
    const data = new Float32Array(rows * cols)
    for (let i = 0; i < data.length; i++) data[i] = (i % 1000) - 500
    const pushed = (n: MeshNode): number => n.info().bulk?.bytesPushed ?? 0
    const before = nodes.map(pushed)
    const job = pub0.submit({ op: 'map', inputs: { x: { dtype: 'float32', shape: [rows, cols], data } }, params: { ops: [{ op: 'mul', value: 2 }] }, schedule: { shardsPerPeer: 1, backups: false } })
    const out = await job.result()
    // x * 2 is exact in float32 for these integers: every element is checked.
    let wrong = 0
    for (let i = 0; i < data.length; i++) if (out.data[i] !== 2 * (data[i] ?? 0)) wrong++
    expect(wrong).toBe(0)
    expect(new Set(job.shards.map(s => s.peer))).toEqual(new Set(nodes.map(n => n.peerId.toString())))
    for (const s of job.shards.filter(s => s.peer !== pub0.peerId.toString())) expect(s.via).toBe('direct')
    // Nobody can dial a NATed node: it pushed its partial (over 4 MiB) to the coordinator itself.
    for (const n of [nat2, nat3]) {
      const shard = job.shards.find(s => s.peer === n.peerId.toString())
      expect(pushed(n) - (before[nodes.indexOf(n)] ?? 0)).toBe(shard?.bytesIn)
    }
  })

  it('a job submitted to a NATed node reaches the other NATed node through a relay and equals numpy', async () => {
    const job = nat2.submit({ op: 'matmul', inputs: { a: await load(dir, 'a'), b: await load(dir, 'b') }, schedule: { backups: false } })
    const out = await job.result()
    expect(relError(out.data, (await load(dir, 'ab')).data)).toBeLessThan(MATMUL_TOLERANCE)
    const byPeer = (n: MeshNode): typeof job.shards => job.shards.filter(s => s.peer === n.peerId.toString())
    for (const n of nodes) expect(byPeer(n).length).toBeGreaterThan(0)
    // Between two private nodes the relay is the only path; to public ones the NATed coordinator dialed direct.
    for (const s of byPeer(nat3)) expect(s.via).toBe('relay')
    for (const s of [...byPeer(pub0), ...byPeer(pub1)]) expect(s.via).toBe('direct')
  })
})

describe('a relay that refuses a reservation', () => {
  let nodes: MeshNode[] = []

  afterAll(async () => { await stopAll(nodes) })

  it('leaves the refused node private, without a relay, retrying; the node keeps working', async () => {
    const relay = await startNode({ relay: { reservations: 1 } })
    const boot = relay.multiaddrs()
    const natA = await startNode({ bootstrap: boot, listen: [] })
    const natB = await startNode({ bootstrap: boot, listen: [] })
    nodes = [relay, natA, natB]
    await vi.waitFor(() => {
      const infos = [natA.info(), natB.info()]
      expect(infos.filter(i => i.relay !== null)).toHaveLength(1)
      const refused = infos.find(i => i.relay === null)
      expect(refused?.reachability).toBe('private')
      // Refused, and asked again after a backoff.
      expect(refused?.relayFailures).toBeGreaterThanOrEqual(2)
    }, { timeout: SETTLE_MS, interval: 100 })
    expect(relay.info().relayServer).toEqual({ reservations: 1, maxReservations: 1 })
    // The refused node still computes: a job it coordinates runs.
    const refusedNode = natA.info().relay === null ? natA : natB
    const out = await refusedNode.submit({ op: 'matmul', inputs: { a: await load(dir, 'a'), b: await load(dir, 'b') } }).result()
    expect(relError(out.data, (await load(dir, 'ab')).data)).toBeLessThan(MATMUL_TOLERANCE)
  }, 60_000)
})
