import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { readNpyFile } from '../../src/compute/npy.ts'
import { MAX_TOPK_ITEMS, MAX_TOPK_K, topk } from '../../src/compute/operators/topk.ts'
import { ExecutorPool } from '../../src/compute/pool.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { python as numpy, tempDir } from '../helpers/numpy.ts'
import { runSharded, unevenRanges } from './shards.ts'
import { codeOf } from '../helpers/codes.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'
import type { ShardTask, Tensors } from '../../src/compute/operators/types.ts'

/**
 * topk against numpy's brute force: sims = (Q X^T) / (max(|q|, eps) max(|x|, eps)^T)
 * in float32, each query's items ranked by np.lexsort((index, -sims)), i.e.
 * sim descending, ties to the lower index. Run through the executor pool
 * (queries shared) in uneven shards reduced in a shuffled order.
 */

const { dir, cleanup } = tempDir()
const pool = new ExecutorPool({ workers: 2, calibrate: false })
beforeAll(async () => { await pool.start() })
afterAll(async () => { await pool.stop(); cleanup() })
const viaPool = async (task: ShardTask): Promise<Tensors> => (await pool.run(task)).partial

/** numpy's ranking of each query's items: [q, k] indices and scores, and the float64 sims for near-tie checks. */
const REFERENCE = `
def rank(Q, X, k, dt):
    Q = Q.astype(dt); X = X.astype(dt)
    qn = np.maximum(np.sqrt((Q * Q).sum(1)), dt(1e-12))
    xn = np.maximum(np.sqrt((X * X).sum(1)), dt(1e-12))
    sims = (Q @ X.T) / (qn[:, None] * xn[None, :])
    idx = np.stack([np.lexsort((np.arange(X.shape[0]), -row))[:k] for row in sims])
    return idx, np.take_along_axis(sims, idx, 1), sims
`

async function reference (name: string, k: number, make: string): Promise<{ queries: HostTensor, items: HostTensor, idx: HostTensor, score: HostTensor, sims64: HostTensor }> {
  numpy(`${REFERENCE}\n${make}\nQ = Q.astype('<f4'); X = X.astype('<f4')
np.save(d + '/${name}-q.npy', Q); np.save(d + '/${name}-x.npy', X)
idx, score, _ = rank(Q, X, ${k}, np.float32)
_, _, sims64 = rank(Q, X, ${k}, np.float64)
np.save(d + '/${name}-idx.npy', idx.astype('<i4')); np.save(d + '/${name}-score.npy', score.astype('<f4')); np.save(d + '/${name}-sims64.npy', sims64)`, dir)
  const read = async (s: string): Promise<HostTensor> => await readNpyFile(join(dir, `${name}-${s}.npy`))
  return { queries: await read('q'), items: await read('x'), idx: await read('idx'), score: await read('score'), sims64: await read('sims64') }
}

describe('topk', () => {
  it('matches numpy brute force on 16 queries x 48 dims over 7001 random items, k = 25 (scores within 1e-5; indices equal or near-tied within 1e-5)', async () => {
    const k = 25
    const ref = await reference('rand', k, 'r = np.random.default_rng(21)\nQ = r.standard_normal((16, 48))\nX = r.standard_normal((7001, 48))')
    const { out } = await runSharded(topk, { queries: ref.queries, items: ref.items }, { k }, { shards: 7, seed: 5, run: viaPool })
    expect(out.shape).toEqual([16, k, 2])
    const n = ref.items.shape[0] as number
    let exact = 0
    for (let i = 0; i < 16; i++) {
      for (let r = 0; r < k; r++) {
        const ours = out.data[(i * k + r) * 2] as number
        const score = out.data[(i * k + r) * 2 + 1] as number
        const theirs = ref.idx.data[i * k + r] as number
        expect(Math.abs(score - (ref.score.data[i * k + r] as number))).toBeLessThan(1e-5)
        if (ours === theirs) { exact++; continue }
        // A different item only where the two are tied to within rounding.
        expect(Math.abs((ref.sims64.data[i * n + ours] as number) - (ref.sims64.data[i * n + theirs] as number))).toBeLessThan(1e-5)
      }
    }
    expect(exact).toBeGreaterThan(16 * k * 0.95)
  })

  it('breaks exact ties by the lower index, as numpy does, with duplicated, scaled and zero items (bitwise equal scores)', async () => {
    // Small integers: every dot product and squared norm is exact in float32,
    // so numpy and TF.js compute the same bits and the ties are real ties.
    const k = 40
    const ref = await reference('ties', k, `r = np.random.default_rng(4)
Q = r.integers(-2, 3, (9, 6)).astype(np.float64); Q[3] = 0
base = r.integers(-2, 3, (50, 6))
X = np.concatenate([base, base, 2 * base, np.zeros((5, 6)), base[::-1]])[r.permutation(205)].astype(np.float64)`)
    const { out } = await runSharded(topk, { queries: ref.queries, items: ref.items }, { k }, { shards: 6, seed: 9, run: viaPool })
    for (let j = 0; j < 9 * k; j++) {
      expect(out.data[2 * j]).toBe(ref.idx.data[j])
      expect(out.data[2 * j + 1]).toBe(ref.score.data[j])
    }
  })

  it('k equal to the number of items, with shards smaller than k', async () => {
    const k = 30
    const ref = await reference('all', k, 'r = np.random.default_rng(8)\nQ = r.standard_normal((3, 5))\nX = r.standard_normal((30, 5))')
    const { out } = await runSharded(topk, { queries: ref.queries, items: ref.items }, { k }, { shards: 5, seed: 1, run: viaPool })
    for (let j = 0; j < 3 * k; j++) expect(Math.abs((out.data[2 * j + 1] as number) - (ref.score.data[j] as number))).toBeLessThan(1e-5)
    // Every item appears once per query.
    for (let i = 0; i < 3; i++) expect(new Set(Array.from({ length: k }, (_, r) => out.data[(i * k + r) * 2])).size).toBe(k)
  })

  const f32 = (shape: number[], fill = 1): HostTensor => hostTensor('float32', shape, new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(fill))
  const q = f32([2, 3])
  const x = f32([10, 3])

  it('refuses bad jobs by code', () => {
    const plan = (inputs: Record<string, unknown>, params: unknown): string | undefined => codeOf(() => topk.plan(inputs as Tensors, params))
    expect(plan({ queries: q, items: x }, { k: 11 })).toBe('ERR_BAD_PARAMS') // k > n
    expect(plan({ queries: q, items: x }, { k: 0 })).toBe('ERR_BAD_PARAMS')
    expect(plan({ queries: q, items: x }, { k: 1.5 })).toBe('ERR_BAD_PARAMS')
    expect(plan({ queries: q, items: x }, {})).toBe('ERR_BAD_PARAMS')
    expect(plan({ queries: q, items: f32([MAX_TOPK_K + 1, 3]) }, { k: MAX_TOPK_K + 1 })).toBe('ERR_BAD_PARAMS')
    expect(plan({ queries: q, items: x }, { k: 1, metric: 'l2' })).toBe('ERR_BAD_PARAMS')
    expect(plan({ queries: q, items: f32([10, 4]) }, { k: 1 })).toBe('ERR_SHAPE_MISMATCH')
    expect(plan({ queries: f32([3]), items: x }, { k: 1 })).toBe('ERR_BAD_RANK')
    expect(plan({ queries: q, items: hostTensor('int32', [10, 3]) }, { k: 1 })).toBe('ERR_BAD_DTYPE')
    expect(plan({ queries: f32([0, 3]), items: x }, { k: 1 })).toBe('ERR_EMPTY_INPUT')
    expect(plan({ queries: q }, { k: 1 })).toBe('ERR_MISSING_INPUT')
    expect(plan({ queries: q, items: f32([10, 3], NaN) }, { k: 1 })).toBe('ERR_NOT_FINITE')
    expect(plan({ queries: f32([2, 3], Infinity), items: x }, { k: 1 })).toBe('ERR_NOT_FINITE')
    expect(plan({ queries: f32([1, 1]), items: f32([MAX_TOPK_ITEMS + 1, 1]) }, { k: 1 })).toBe('ERR_LIMIT_EXCEEDED')
  })

  it('shards carry the shared queries, k and the range offset; validateTask re-checks them', () => {
    const plan = topk.plan({ queries: q, items: x }, { k: 2 })
    const task = topk.shard(plan, { queries: q, items: x }, { index: 1, start: 4, end: 9 })
    expect(task.shared).toEqual(['queries'])
    expect(task.params).toEqual({ k: 2, offset: 4 })
    expect(task.inputs.queries).toBe(q)
    expect(topk.validateTask(task)).toBe(5)
    expect(codeOf(() => topk.validateTask({ ...task, params: { k: 2, offset: -1 } }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => topk.validateTask({ ...task, params: { k: 2, offset: MAX_TOPK_ITEMS } }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => topk.validateTask({ ...task, params: { k: 2 } }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => topk.validateTask({ ...task, params: { k: 'x', offset: 0 } }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => topk.validateTask({ ...task, inputs: { queries: q, items: f32([5, 2]) } }))).toBe('ERR_SHAPE_MISMATCH')
  })

  it('the reducer refuses partials a lying peer could send', async () => {
    const plan = topk.plan({ queries: q, items: x }, { k: 3 })
    const [r0] = unevenRanges(10, 2, 1) as [{ index: number, start: number, end: number }]
    const part = (scores: number[], indices: number[]): Tensors => ({
      scores: hostTensor('float32', [2, 3], Float32Array.from(scores)),
      indices: hostTensor('int32', [2, 3], Int32Array.from(indices))
    })
    const add = (p: unknown, range = r0): string | undefined => codeOf(() => { topk.reducer(plan).add(range, p as Tensors) })
    const s0 = r0.start
    expect(add(part([3, 2, 1, 3, 2, 1], [s0, s0 + 1, s0 + 2, s0, s0 + 1, s0 + 2]))).toBeUndefined()
    expect(add(part([1, 2, 3, 3, 2, 1], [s0, s0 + 1, s0 + 2, s0, s0 + 1, s0 + 2]))).toBe('ERR_BAD_PARTIAL') // not in rank order
    expect(add(part([3, 2, 1, 3, 2, 1], [s0, s0 + 1, 99, s0, s0 + 1, s0 + 2]))).toBe('ERR_BAD_PARTIAL') // outside the range
    expect(add(part([3, 3, 1, 3, 2, 1], [s0 + 1, s0 + 1, s0, s0, s0 + 1, s0 + 2]))).toBe('ERR_BAD_PARTIAL') // an item twice
    expect(add(part([3, 2, NaN, 3, 2, 1], [s0, s0 + 1, s0 + 2, s0, s0 + 1, s0 + 2]))).toBe('ERR_BAD_PARTIAL')
    expect(add({ scores: hostTensor('float32', [2, 2]), indices: hostTensor('int32', [2, 2]) })).toBe('ERR_BAD_PARTIAL')
    expect(add({ scores: hostTensor('float32', [2, 3]) })).toBe('ERR_BAD_PARTIAL')
    expect(add({ out: hostTensor('float32', [2, 3, 2]) })).toBe('ERR_BAD_PARTIAL')
    const reducer = topk.reducer(plan)
    expect(codeOf(() => reducer.result())).toBe('ERR_INCOMPLETE')
    expect(add(part([3, 2, 1, 3, 2, 1], [0, 1, 2, 0, 1, 2]), { index: 0, start: 5, end: 11 })).toBe('ERR_BAD_RANGE')
  })

  it('plans units, cost and output', () => {
    const plan = topk.plan({ queries: q, items: x }, { k: 4 })
    expect(plan.units).toBe(10)
    expect(plan.output).toEqual({ dtype: 'float32', shape: [2, 4, 2] })
    expect(plan.cost).toEqual({ flopsPerUnit: 2 * 3 * 3, bytesInPerUnit: 12, bytesInFixed: 24, bytesOutPerUnit: 16 })
  })
})
