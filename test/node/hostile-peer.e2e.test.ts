import { lpStream } from '@libp2p/utils'
import { afterAll, describe, expect, it } from 'vitest'
import { generateSwarmKey } from '../../src/node/access/index.ts'
import { BID_PROTOCOL, BidRequestCodec } from '../../src/protocol/bid/index.ts'
import { BLOB_PROTOCOL } from '../../src/protocol/blob/index.ts'
import { CAPACITY_TOPIC } from '../../src/protocol/capacity/index.ts'
import { SHARD_PROTOCOL, ShardHeaderCodec } from '../../src/protocol/shard/index.ts'
import { startMesh, stopAll } from '../helpers/mesh.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'
import type { MeshNode } from '../../src/node/mesh-node.ts'
import type { Stream } from '@libp2p/interface'

/**
 * A hostile member: a real libp2p node that holds the mesh's key, attacking
 * one node on every protocol at once (garbage, declared-huge tensors, a
 * stream stalled mid-frame, a flood of bids, garbage adverts) while a user
 * runs a job on the same mesh. The job must be right, and the attacked
 * node must neither crash nor allocate what the attacker declares.
 */

/**
 * How much this process's RSS may grow while the attack runs. Every
 * declared tensor is 4 TiB and each garbage frame at most 1 MiB; what
 * legitimately grows is the user's job (a few MiB) and V8's heap churn.
 * 256 MiB is far below any one declared allocation and well above churn.
 */
const RSS_BOUND_BYTES = 256 * 1024 * 1024

function pseudoRandom (n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n)
  let x = seed
  for (let i = 0; i < n; i++) { x = (x * 1103515245 + 12345) % 2147483648; out[i] = x & 0xff }
  return out
}

function rows (n: number, cols: number): HostTensor {
  const data = new Float32Array(n * cols)
  for (let i = 0; i < data.length; i++) data[i] = (i % 113) - 56
  return { dtype: 'float32', shape: [n, cols], data }
}

describe('a hostile peer that holds the key', () => {
  let nodes: MeshNode[] = []
  const stalled: Stream[] = []

  afterAll(async () => {
    for (const s of stalled) s.abort(new Error('test over'))
    await stopAll(nodes)
  })

  it('attacks every protocol of one node while a user\'s job on the mesh still succeeds; the node stays up and its RSS bounded', async () => {
    const key = generateSwarmKey()
    nodes = await startMesh(4, () => ({ swarmKey: key }))
    const [victim, , user, hostile] = nodes as [MeshNode, MeshNode, MeshNode, MeshNode]
    const attack = async (): Promise<void> => {
      const tasks: Array<Promise<unknown>> = []
      const send = async (protocol: string, frames: Uint8Array[], stall = false): Promise<void> => {
        try {
          const stream = await hostile.libp2p.dialProtocol(victim.peerId, protocol, { signal: AbortSignal.timeout(10_000) })
          const lp = lpStream(stream)
          for (const f of frames) await lp.write(f)
          if (stall) {
            // Half a frame: a length prefix promising 1 MiB, then 10 bytes, then nothing.
            await lp.unwrap().send(Uint8Array.from([0x80, 0x80, 0x40, ...pseudoRandom(10, 3)]))
            stalled.push(stream)
            return
          }
          await lp.read({ signal: AbortSignal.timeout(10_000) }).catch(() => {})
          stream.abort(new Error('done'))
        } catch {
          // Refused, reset or banned: all fine for an attacker.
        }
      }
      for (let k = 0; k < 6; k++) {
        // Garbage on each protocol.
        for (const p of [BID_PROTOCOL, SHARD_PROTOCOL, BLOB_PROTOCOL]) tasks.push(send(p, [pseudoRandom(200 + k * 37, k + 1)]))
        // A shard header declaring a 4 TiB tensor, then a stream stalled mid-frame.
        tasks.push(send(SHARD_PROTOCOL, [ShardHeaderCodec.encode({ jobId: 'evil', index: k, attempt: 1, op: 'map', params: '{"ops":[]}', start: 0, end: 1 << 20, tensors: [{ name: 'x', dtype: 'float32', shape: [1 << 20, 1 << 20] }], refs: [], blobs: [] })]))
        tasks.push(send(BLOB_PROTOCOL, [], true))
        tasks.push(send(SHARD_PROTOCOL, [], true))
      }
      // A flood of bids, some absurd.
      for (let k = 0; k < 200; k++) tasks.push(send(BID_PROTOCOL, [BidRequestCodec.encode({ jobId: `flood${k}`, op: 'matmul', units: k % 2 === 0 ? Number.MAX_SAFE_INTEGER : 3, flopsPerUnit: 1e9, bytesInPerUnit: 1e15, bytesInFixed: 0, bytesOutPerUnit: 4 })]))
      await Promise.all(tasks)
      // Then garbage adverts on the capacity topic (after the streams: eight of them alone get it banned).
      await Promise.all(Array.from({ length: 10 }, async (_, k) => { await hostile.libp2p.services.pubsub.publish(CAPACITY_TOPIC, pseudoRandom(300, 50 + k)).catch(() => {}) }))
    }

    const before = process.memoryUsage().rss
    let peak = before
    const sampler = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss) }, 20)
    const x = rows(3000, 256)
    try {
      const [job] = await Promise.all([
        user.submit({ op: 'map', inputs: { x }, params: { ops: [{ op: 'mul', value: 2 }] }, schedule: { shardsPerPeer: 4 } }).result(),
        attack()
      ])
      let wrong = 0
      for (let i = 0; i < x.data.length; i++) if (job.data[i] !== 2 * (x.data[i] ?? 0)) wrong++
      expect(wrong).toBe(0)
      // The victim still serves: a job that it coordinates itself, and one of its API.
      const after = await victim.submit({ op: 'reduce', inputs: { x }, params: { op: 'sum' } }).result()
      let sum = 0
      for (const v of x.data) sum += v
      expect(after.data[0]).toBeCloseTo(sum, 0)
      expect(victim.info().peerId).toBe(victim.peerId.toString())
    } finally {
      clearInterval(sampler)
    }
    const grew = peak - before
    console.log(JSON.stringify({ hostile: { rssBeforeMiB: Math.round(before / 2 ** 20), rssPeakMiB: Math.round(peak / 2 ** 20), grewMiB: Math.round(grew / 2 ** 20), strikes: victim.info().misbehaving.strikes, banned: victim.info().misbehaving.banned.length, advertsRejected: victim.info().adverts.rejected } }))
    expect(grew).toBeLessThan(RSS_BOUND_BYTES)
    // The attack was seen for what it was: strikes on its streams, and a ban.
    const m = victim.info().misbehaving
    expect(m.strikes.bid + m.strikes.shard + m.strikes.blob).toBeGreaterThan(0)
    expect(m.banned.map(b => b.peer)).toContain(hostile.peerId.toString())
  })
})
