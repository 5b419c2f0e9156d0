/**
 * Thirty real nodes in this process with tight connection bounds: jobs still
 * reach enough peers (dialing the ones they are not connected to), the
 * connections outside jobs stay within the bounds, and a job whose first bid
 * round found no taker widens to peers that round missed.
 *
 * Compute is the scale bench's ModelPool (no worker threads: `map` rows held
 * for a modelled time), so thirty nodes fit on two cores.
 */
import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { MeshNode } from '../../src/node/mesh-node.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { silentLogger } from '../../src/node/log.ts'
import { BID_OVERSAMPLE, wantedPeers } from '../../src/node/jobs/bid-sample.ts'
import { ModelPool } from '../../scripts/bench/scale.ts'
import { stopAll } from '../helpers/mesh.ts'

const N = 30
const BOUNDS = { min: 4, max: 10, idleMs: 1500 }
/** These decline every job of 1024-column rows (their shard limit is smaller than one row). */
const DECLINERS = 26
const COLS = 1024

/** Polls a condition (connections change on the keeper's ticks, which emit nothing to wait on). */
async function until (what: string, cond: () => boolean, timeoutMs = 60_000): Promise<void> {
  const t0 = performance.now()
  while (!cond()) {
    if (performance.now() - t0 > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await new Promise(resolve => setTimeout(resolve, 100))
  }
}

describe(`a ${N}-node mesh with connection bounds ${BOUNDS.min}..${BOUNDS.max}`, () => {
  const nodes: MeshNode[] = []
  const outside = (n: MeshNode): number => n.libp2p.getPeers().length

  beforeAll(async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tm-scale-e2e-'))
    for (let i = 0; i < N; i++) {
      const node = new MeshNode({
        dataDir: join(dir, String(i)),
        listen: ['/ip4/127.0.0.1/tcp/0'],
        api: false,
        journal: false,
        bulk: false,
        relay: false,
        // Slow adverts: thirty full-regime nodes in one process would otherwise spend a core on gossip.
        advertIntervalMs: 5000,
        connections: BOUNDS,
        bootstrap: nodes.slice(-2).map(m => m.multiaddrs()[0] ?? ''),
        pool: new ModelPool(1),
        // Node 0 coordinates; the last DECLINERS refuse rows of COLS floats.
        ...(i >= N - DECLINERS ? { limits: { maxShardBytes: 1024 } } : {}),
        logger: silentLogger()
      })
      await node.start()
      nodes.push(node)
    }
    // The full regime: everyone hears everyone, though each is connected to a few.
    await until('directories full', () => nodes.every(n => n.directory.size === N - 1), 120_000)
  }, 180_000)
  afterAll(async () => { await stopAll(nodes) })

  it('keeps the connections outside jobs within max, well short of everyone', async () => {
    await until(`every node at most ${BOUNDS.max} peers`, () => nodes.every(n => outside(n) <= BOUNDS.max))
    const mean = nodes.reduce((s, n) => s + outside(n), 0) / N
    expect(mean).toBeLessThan(N - 1)
    expect(mean).toBeGreaterThanOrEqual(BOUNDS.min)
  })

  it('a job dials and uses the peers it needs, and their connections close once idle', async () => {
    // Four rows of 16 floats: under every node's shard limit, so all accept.
    const x = hostTensor('float32', [N, 16], Float32Array.from({ length: N * 16 }, (_, k) => k % 5 - 2))
    const coord = nodes[0] as MeshNode
    const connectedBefore = new Set(coord.libp2p.getPeers().map(String))
    const job = coord.submit({ op: 'map', inputs: { x }, params: { ops: [{ op: 'relu' }] } })
    const out = await job.result()
    expect([...out.data as Float32Array]).toEqual([...x.data as Float32Array].map(v => Math.max(0, v)))
    // wanted = 30 units -> every peer is asked; most of them were not connected.
    expect(job.bids.length - 1).toBe(Math.min(N - 1, wantedPeers(N) * BID_OVERSAMPLE))
    const ran = new Set(job.shards.map(s => s.peer))
    expect(ran.size).toBeGreaterThanOrEqual(10)
    expect([...ran].filter(p => p !== undefined && !connectedBefore.has(p) && p !== coord.peerId.toString()).length).toBeGreaterThan(0)
    await until('back within bounds after the job', () => outside(coord) <= BOUNDS.max)
  })

  it('widens past a first bid round that found no taker, to the peers it missed', async () => {
    const coord = nodes[0] as MeshNode
    const acceptors = new Set(nodes.slice(1, N - DECLINERS).map(n => n.peerId.toString()))
    const x = hostTensor('float32', [3, COLS], new Float32Array(3 * COLS).fill(1))
    const firstRound = (wantedPeers(3) + 1 - 1) * BID_OVERSAMPLE
    // The first round is a random draw: about half of all jobs find no acceptor in it, and of
    // those about one in eleven finds none in the later rounds either (3 acceptors among the 23
    // peers not asked first, 12 more asked): such a job runs on the coordinator alone.
    for (let attempt = 0; attempt < 25; attempt++) {
      const job = coord.submit({ op: 'map', inputs: { x }, params: { ops: [{ op: 'relu' }] } })
      await job.result()
      const asked = job.bids.slice(1).map(b => b.peer)
      if (asked.slice(0, firstRound).some(p => acceptors.has(p))) continue
      // Missed by the first round: the job widened past it.
      expect(asked.length).toBeGreaterThan(firstRound)
      // Every decline is the decliners' shard limit, or (on a loaded machine) an answer that came too late.
      const reasons = job.bids.filter(b => !b.accept).map(b => b.reason ?? '')
      expect(reasons.filter(r => !r.includes('shard limit') && !r.startsWith('no answer'))).toEqual([])
      const found = job.bids.slice(1).filter(b => b.accept && acceptors.has(b.peer))
      if (found.length === 0) continue
      // The later rounds found acceptors, and they ran shards.
      expect(job.shards.some(s => s.peer !== undefined && found.some(b => b.peer === s.peer))).toBe(true)
      return
    }
    throw new Error('25 jobs in a row either found an acceptor in their first round or none at all (chance about 1e-6)')
  })
})
