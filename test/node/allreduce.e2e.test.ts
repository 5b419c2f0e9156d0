import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadBackend } from '../../src/compute/backend.ts'
import { packModel } from '../../src/compute/model.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { partition } from '../../src/protocol/allreduce/index.ts'
import { startMesh, stopAll } from '../helpers/mesh.ts'
import { maxRelativeError } from '../helpers/numpy.ts'
import { artifactsOf, loadLayers } from '../compute/layers.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'
import type { Job } from '../../src/node/jobs/job.ts'
import type { MeshNode } from '../../src/node/mesh-node.ts'

/**
 * Butterfly rounds (src/protocol/allreduce) against the star: the same
 * train job, local mode, with averaging "butterfly" and "star" on the
 * same 3-node mesh gives the same weights (both add the same float32
 * partials in float64; the replicas' grouping into members or shards only
 * moves the last float32 rounding, so 1e-4 relative per weight, floor 1e-3,
 * after four rounds of Adam); a member lost mid-job is left out and the
 * job finishes on the others; the coordinator's bytes per round are the
 * vector's, not k times it.
 */
const TOL = 1e-4

const u = (i: number): number => Math.abs((Math.sin(i * 12.9898 + 3.3) * 43758.5453) % 1)

/** Sequences of 6 tokens of 20; positive when tokens below 10 are the majority. */
function data (rows: number, seed: number): { x: HostTensor, y: HostTensor } {
  const x = Int32Array.from({ length: rows * 6 }, (_, i) => Math.floor(u(seed * 7 + i) * 10) + (Math.floor(i / 6) % 2 === 0 ? 0 : 10) * (u(seed + i) < 0.8 ? 1 : 0))
  const y = Float32Array.from({ length: rows }, (_, r) => (r % 2 === 0 ? 1 : 0))
  return { x: hostTensor('int32', [rows, 6], x), y: hostTensor('float32', [rows, 1], y) }
}

describe('butterfly averaging', () => {
  let nodes: MeshNode[] = []
  let model: Uint8Array

  beforeAll(async () => {
    const { tf } = await loadBackend('wasm')
    const layers = await loadLayers()
    const L = layers.layers
    // 20 x 5 + (5 x 1 + 1) = 106 weights, 108 values per result: neither splits evenly in 3.
    const m = layers.sequential({ layers: [L.embedding({ inputDim: 20, outputDim: 5, inputLength: 6 }), L.globalAveragePooling1d(), L.dense({ units: 1, activation: 'sigmoid' })] })
    const a = await artifactsOf(tf, m)
    m.dispose()
    model = packModel({ ...a, weightSpecs: [], weightData: new ArrayBuffer(0) })
    nodes = await startMesh(3, () => ({ workers: 1 }))
  })

  afterAll(async () => {
    await stopAll(nodes)
  })

  const train = async (node: MeshNode, averaging: string, rounds: number, onProgress?: (job: Job) => void): Promise<Job> => {
    const train = data(360, 1)
    const test = data(60, 2)
    // 360 rows / (3 replicas x 3 steps x 10 rows) = 4 rounds per epoch.
    const job = node.submit({
      op: 'train',
      inputs: { x: train.x, y: train.y, xTest: test.x, yTest: test.y },
      params: { loss: 'binaryCrossentropy', optimizer: { name: 'adam', learningRate: 0.05 }, batchSize: 10, epochs: rounds / 4, seed: 3, sync: { mode: 'local', steps: 3, replicas: 3, averaging } },
      blobs: { model }
    })
    if (onProgress !== undefined) job.addEventListener('progress', () => { onProgress(job) })
    await job.result().catch(() => {})
    return job
  }

  it('parts: contiguous, covering, sizes within one of each other', () => {
    for (const [n, k] of [[108, 3], [106, 3], [7, 7], [10, 4], [1, 1]] as const) {
      const parts = partition(n, k)
      expect(parts).toHaveLength(k)
      expect(parts[0]?.[0]).toBe(0)
      expect(parts.at(-1)?.[1]).toBe(n)
      for (let i = 1; i < k; i++) expect(parts[i]?.[0]).toBe(parts[i - 1]?.[1])
      const sizes = parts.map(([s, e]) => e - s)
      expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(1)
    }
  })

  it('gives the weights the star gives, with the round spread over all three members', async () => {
    const node = nodes[0] as MeshNode
    const star = await train(node, 'star', 4)
    const butterfly = await train(node, 'butterfly', 4)
    expect(star.error).toBeUndefined()
    expect(butterfly.error).toBeUndefined()
    expect(butterfly.state).toBe('succeeded')
    const ws = star.output?.data as Float32Array
    const wb = butterfly.output?.data as Float32Array
    expect(wb.length).toBe(106)
    expect(maxRelativeError(wb, ws, 1e-3)).toBeLessThan(TOL)
    expect(butterfly.metrics?.rounds.at(-1)?.peers).toBe(3)
    // The last round's record: one shard per member, each member's replica, the coordinator's own without a link.
    expect(butterfly.shards.map(s => [s.start, s.end, s.state])).toEqual([[0, 1, 'done'], [1, 2, 'done'], [2, 3, 'done']])
    expect(new Set(butterfly.shards.map(s => s.peer))).toEqual(new Set(nodes.map(n => n.peerId.toString())))
    expect(butterfly.shards.filter(s => s.via === 'direct')).toHaveLength(2)
    for (const s of butterfly.shards) expect(s.computeMs).toBeGreaterThanOrEqual(0)
    expect(butterfly.shards.reduce((n, s) => n + s.bytesIn, 0)).toBe(Math.round(108 * 4 * 2 / 3))
    // The coordinator moved w's parts out and the reduced parts in: (k - 1)/k of one vector each way, plus headers.
    const perRound = (butterfly.metrics?.wireBytes ?? 0) / 4
    const vector = (106 + 108) * 4
    expect(perRound).toBeGreaterThan(vector * 2 / 3)
    expect(perRound).toBeLessThan(vector * 2 / 3 + 4096)
    // The star's: every remote shard's weights and partial.
    expect((star.metrics?.wireBytes ?? 0) / 4).toBeGreaterThanOrEqual(2 * vector)
  })

  it('a member that stops mid-job is left out; the job finishes on the others', async () => {
    const node = nodes[0] as MeshNode
    let stopped: Promise<void> | undefined
    const job = await train(node, 'butterfly', 8, (j) => {
      if (stopped === undefined && (j.metrics?.progress?.done ?? 0) >= 2) stopped = (nodes[2] as MeshNode).stop()
    })
    await stopped
    expect(job.error).toBeUndefined()
    expect(job.state).toBe('succeeded')
    expect(job.metrics?.progress?.done).toBe(8)
    expect(job.metrics?.rounds.at(-1)?.peers).toBe(2)
    // Still training well on two: the held-out rows are separated.
    expect(job.metrics?.rounds.at(-1)?.accuracy).toBeGreaterThan(0.9)
  })
})
