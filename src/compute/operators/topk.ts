import { InvalidInputError, ProtocolError } from '../../errors.ts'
import { BYTES_PER_ELEMENT, describe, hostTensor, rowSlice } from '../tensor.ts'
import { checkDType, checkInputs, checkOutputSize, checkParams, RangeSet, requireInput } from './common.ts'
import type { HostTensor } from '../tensor.ts'
import type { JobPlan, Operator, ShardRange, Tensors } from './types.ts'

/**
 * Cosine-similarity top-k, the recommendation case: for each of q queries
 * [q, d] the k items of [n, d] most similar to it. params {k}.
 *
 *   sim(i, j) = dot(queries[i], items[j]) / (max(|queries[i]|, EPS) * max(|items[j]|, EPS))
 *
 * in float32 (a zero vector is similar to nothing: sim 0). Ranking is by
 * sim descending, ties broken by the lower item index, so the result is
 * deterministic and equals numpy's brute force
 * `np.lexsort((idx, -sims))[:k]` per query.
 *
 * Output: ONE float32 tensor [q, k, 2], out[i, r] = (item index, sim) of
 * query i's r-th best item. Indices are exact in float32 because n is at
 * most MAX_TOPK_ITEMS = 2^24.
 *
 * Sharded by items (units = n); `queries` is a shared input, sent once per
 * peer. A shard computes the sims of its item block with TF.js (matMul, in
 * blocks of at most MAX_SIM_BLOCK_ELEMENTS) and keeps each query's best
 * k' = min(k, block rows) in a heap, returning
 *
 *   scores:  float32 [q, k']   best first
 *   indices: int32   [q, k']   GLOBAL item indices (params.offset + local row)
 *
 * The reducer merges each partial into the running best k per query
 * (a linear two-list merge), checking that a partial is ordered, in its
 * range, free of duplicates and NaN.
 */

const NAME = 'topk'

/** L2 norms below this count as this, so zero vectors give sim 0 rather than NaN (sklearn's and PyTorch's normalize use 1e-12 too). */
export const TOPK_EPS = 1e-12

/** Items a job may rank: float32 holds every integer index exactly up to 2^24, and indices travel in the float32 output. */
export const MAX_TOPK_ITEMS = 2 ** 24

/**
 * k: each shard keeps a heap of k per query and the coordinator merges
 * lists of k per partial, both O(k) per query per shard; 1024 covers any
 * recommendation or retrieval list and keeps partials small.
 */
export const MAX_TOPK_K = 1024

/**
 * Sims a shard holds at once (query x item block): 4M float32 is 16 MiB,
 * small against the worker's wasm heap yet large enough that the matMul per
 * block amortises its call overhead.
 */
export const MAX_SIM_BLOCK_ELEMENTS = 4 * 1024 * 1024

export interface TopkParams {
  k: number
}

/** What a shard carries: k, and the global index of its first item. */
interface TopkTaskParams extends TopkParams {
  offset: number
}

function checkK (value: unknown): number {
  if (!Number.isSafeInteger(value) || (value as number) < 1 || (value as number) > MAX_TOPK_K) {
    throw new InvalidInputError(`${NAME}: params.k is ${JSON.stringify(value) ?? 'missing'}; it must be an integer in [1, ${MAX_TOPK_K}]`, 'ERR_BAD_PARAMS')
  }
  return value as number
}

function checkShapes (inputs: unknown): { queries: HostTensor, items: HostTensor } {
  const t = checkInputs(NAME, inputs, ['queries', 'items'])
  const queries = requireInput(t, 'queries')
  const items = requireInput(t, 'items')
  checkDType(NAME, 'queries', queries, ['float32'])
  checkDType(NAME, 'items', items, ['float32'])
  if (queries.shape.length !== 2 || items.shape.length !== 2) {
    throw new InvalidInputError(`${NAME}: queries is ${describe(queries)} and items is ${describe(items)}; both must be rank 2 ([count, dims])`, 'ERR_BAD_RANK')
  }
  const d = queries.shape[1] as number
  if (items.shape[1] !== d) throw new InvalidInputError(`${NAME}: queries is ${describe(queries)} but items is ${describe(items)}; both need the same number of dims (columns)`, 'ERR_SHAPE_MISMATCH')
  if (d === 0 || queries.shape[0] === 0) throw new InvalidInputError(`${NAME}: queries is ${describe(queries)}; it needs at least one query of at least one dim`, 'ERR_EMPTY_INPUT')
  if ((items.shape[0] as number) > MAX_TOPK_ITEMS) throw new InvalidInputError(`${NAME}: items has ${items.shape[0]} rows; at most ${MAX_TOPK_ITEMS} (2^24, exact float32 indices) are allowed`, 'ERR_LIMIT_EXCEEDED')
  return { queries, items }
}

function checkFinite (name: string, t: HostTensor): void {
  const d = t.data
  for (let i = 0; i < d.length; i++) {
    if (!Number.isFinite(d[i])) throw new InvalidInputError(`${NAME}: input '${name}' holds a non-finite value at element ${i}; similarities need finite vectors`, 'ERR_NOT_FINITE')
  }
}

/** (s1, i1) ranks above (s2, i2). */
function better (s1: number, i1: number, s2: number, i2: number): boolean {
  return s1 > s2 || (s1 === s2 && i1 < i2)
}

export const topk: Operator<TopkParams> = {
  name: NAME,

  plan (inputs, params): JobPlan<TopkParams> {
    const p = checkParams(NAME, params, ['k'])
    const k = checkK(p.k)
    const { queries, items } = checkShapes(inputs)
    const [q, d] = queries.shape as [number, number]
    const n = items.shape[0] as number
    if (k > n) throw new InvalidInputError(`${NAME}: params.k is ${k} but items has only ${n} rows`, 'ERR_BAD_PARAMS')
    checkFinite('queries', queries)
    checkFinite('items', items)
    checkOutputSize(NAME, [q, k, 2])
    return {
      op: NAME,
      units: n,
      // The item's norm (2d) and one dot product per query (2d each).
      cost: { flopsPerUnit: 2 * d * (q + 1), bytesInPerUnit: d * BYTES_PER_ELEMENT, bytesInFixed: q * d * BYTES_PER_ELEMENT, bytesOutPerUnit: 2 * q * BYTES_PER_ELEMENT },
      params: { k },
      output: { dtype: 'float32', shape: [q, k, 2] }
    }
  },

  shard (plan, inputs, range) {
    const queries = requireInput(inputs, 'queries')
    const items = requireInput(inputs, 'items')
    const params: TopkTaskParams = { k: plan.params.k, offset: range.start }
    return { op: NAME, params: { ...params }, inputs: { queries, items: rowSlice(items, range.start, range.end) }, shared: ['queries'] }
  },

  validateTask (task) {
    const p = checkParams(NAME, task.params, ['k', 'offset'])
    checkK(p.k)
    const { items } = checkShapes(task.inputs)
    const m = items.shape[0] as number
    if (!Number.isSafeInteger(p.offset) || (p.offset as number) < 0 || (p.offset as number) + m > MAX_TOPK_ITEMS) {
      throw new InvalidInputError(`${NAME}: params.offset must be an integer with offset + items rows <= ${MAX_TOPK_ITEMS}`, 'ERR_BAD_PARAMS')
    }
    return m
  },

  async map (tf, task): Promise<Tensors> {
    const k = checkK(task.params.k)
    const offset = task.params.offset as number
    const { queries, items } = checkShapes(task.inputs)
    const [q, d] = queries.shape as [number, number]
    const m = items.shape[0] as number
    const kk = Math.min(k, m)
    // Per query a min-heap (worst on top) of its best kk so far.
    const hs = new Float32Array(q * kk)
    const hi = new Int32Array(q * kk)
    const sizes = new Int32Array(q)
    const qt = tf.tidy(() => {
      const qq = tf.tensor2d(queries.data, [q, d], 'float32')
      return { qq: tf.keep(qq), qn: tf.keep(tf.maximum(tf.norm(qq, 'euclidean', 1, true), TOPK_EPS)) }
    })
    try {
      const block = Math.max(1, Math.floor(MAX_SIM_BLOCK_ELEMENTS / q))
      for (let b0 = 0; b0 < m; b0 += block) {
        const b1 = Math.min(m, b0 + block)
        const sims = tf.tidy(() => {
          const x = tf.tensor2d(items.data.subarray(b0 * d, b1 * d), [b1 - b0, d], 'float32')
          const xn = tf.maximum(tf.norm(x, 'euclidean', 1, true), TOPK_EPS)
          return tf.div(tf.matMul(qt.qq, x, false, true), tf.mul(qt.qn, tf.transpose(xn)))
        })
        let s: Float32Array
        try {
          s = await sims.data<'float32'>()
        } finally {
          sims.dispose()
        }
        const w = b1 - b0
        for (let i = 0; i < q; i++) {
          const base = i * kk
          let size = sizes[i] as number
          for (let j = 0; j < w; j++) {
            const v = s[i * w + j] as number
            const idx = offset + b0 + j
            if (Number.isNaN(v)) continue
            if (size < kk) {
              // Push, sift up: the worse one rises.
              let c = size++
              while (c > 0) {
                const p = (c - 1) >> 1
                if (!better(hs[base + p] as number, hi[base + p] as number, v, idx)) break
                hs[base + c] = hs[base + p] as number; hi[base + c] = hi[base + p] as number
                c = p
              }
              hs[base + c] = v; hi[base + c] = idx
            } else if (better(v, idx, hs[base] as number, hi[base] as number)) {
              // Replace the worst, sift down.
              let c = 0
              for (;;) {
                const l = 2 * c + 1
                if (l >= kk) break
                const r = l + 1
                const worse = r < kk && better(hs[base + l] as number, hi[base + l] as number, hs[base + r] as number, hi[base + r] as number) ? r : l
                if (!better(v, idx, hs[base + worse] as number, hi[base + worse] as number)) break
                hs[base + c] = hs[base + worse] as number; hi[base + c] = hi[base + worse] as number
                c = worse
              }
              hs[base + c] = v; hi[base + c] = idx
            }
          }
          sizes[i] = size
        }
      }
    } finally {
      qt.qq.dispose()
      qt.qn.dispose()
    }
    if (sizes.some(v => v !== kk)) throw new InvalidInputError(`${NAME}: sims were NaN; the vectors must be finite`, 'ERR_NOT_FINITE')
    // Heaps to lists, best first.
    const scores = new Float32Array(q * kk)
    const indices = new Int32Array(q * kk)
    const order = Array.from({ length: kk }, (_, r) => r)
    for (let i = 0; i < q; i++) {
      const base = i * kk
      order.sort((a, b) => better(hs[base + a] as number, hi[base + a] as number, hs[base + b] as number, hi[base + b] as number) ? -1 : 1)
      for (let r = 0; r < kk; r++) {
        scores[base + r] = hs[base + (order[r] as number)] as number
        indices[base + r] = hi[base + (order[r] as number)] as number
      }
    }
    return { scores: hostTensor('float32', [q, kk], scores), indices: hostTensor('int32', [q, kk], indices) }
  },

  reducer (plan) {
    const { k } = plan.params
    const q = plan.output.shape[0] as number
    const seen = new RangeSet(plan.units)
    const bestS = new Float32Array(q * k)
    const bestI = new Int32Array(q * k)
    const tmpS = new Float32Array(k)
    const tmpI = new Int32Array(k)
    let filled = 0
    const bad = (why: string): ProtocolError => new ProtocolError(`${NAME}: bad partial: ${why}`, 'ERR_BAD_PARTIAL')
    return {
      add (range: ShardRange, partial) {
        seen.check(NAME, range)
        let t: Record<string, HostTensor>
        try {
          t = checkInputs(NAME, partial, ['scores', 'indices'])
        } catch (err) {
          throw bad((err as Error).message)
        }
        const kk = Math.min(k, range.end - range.start)
        const sc = t.scores as HostTensor
        const ix = t.indices as HostTensor
        if (sc.dtype !== 'float32' || sc.shape.length !== 2 || sc.shape[0] !== q || sc.shape[1] !== kk) throw bad(`scores is ${describe(sc)}; expected float32[${q}, ${kk}]`)
        if (ix.dtype !== 'int32' || ix.shape.length !== 2 || ix.shape[0] !== q || ix.shape[1] !== kk) throw bad(`indices is ${describe(ix)}; expected int32[${q}, ${kk}]`)
        const ps = sc.data
        const pi = ix.data
        // Each list strictly in rank order (so no index twice) and within the range.
        for (let i = 0; i < q; i++) {
          for (let r = 0; r < kk; r++) {
            const s = ps[i * kk + r] as number
            const idx = pi[i * kk + r] as number
            if (Number.isNaN(s)) throw bad('NaN score')
            if (idx < range.start || idx >= range.end) throw bad(`index ${idx} is outside [${range.start}, ${range.end})`)
            if (r > 0 && !better(ps[i * kk + r - 1] as number, pi[i * kk + r - 1] as number, s, idx)) throw bad(`query ${i}'s list is not in rank order at ${r}`)
          }
        }
        const ranked = new Set<number>()
        for (let i = 0; i < q; i++) {
          ranked.clear()
          for (let r = 0; r < kk; r++) {
            const idx = pi[i * kk + r] as number
            if (ranked.has(idx)) throw bad(`query ${i} lists item ${idx} twice`)
            ranked.add(idx)
          }
        }
        seen.add(NAME, range)
        const total = Math.min(k, filled + kk)
        for (let i = 0; i < q; i++) {
          const base = i * k
          let a = 0
          let b = 0
          for (let r = 0; r < total; r++) {
            const takeA = b >= kk || (a < filled && better(bestS[base + a] as number, bestI[base + a] as number, ps[i * kk + b] as number, pi[i * kk + b] as number))
            if (takeA) { tmpS[r] = bestS[base + a] as number; tmpI[r] = bestI[base + a] as number; a++ } else { tmpS[r] = ps[i * kk + b] as number; tmpI[r] = pi[i * kk + b] as number; b++ }
          }
          bestS.set(tmpS.subarray(0, total), base)
          bestI.set(tmpI.subarray(0, total), base)
        }
        filled = total
      },
      result () {
        seen.requireComplete(NAME)
        const out = new Float32Array(q * k * 2)
        for (let j = 0; j < q * k; j++) {
          out[2 * j] = bestI[j] as number
          out[2 * j + 1] = bestS[j] as number
        }
        return hostTensor('float32', [q, k, 2], out)
      }
    }
  }
}
