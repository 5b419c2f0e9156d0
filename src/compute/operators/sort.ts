import { InvalidInputError, ProtocolError } from '../../errors.ts'
import { BYTES_PER_ELEMENT, describe, hostTensor, rowSlice } from '../tensor.ts'
import { checkDType, checkInputs, checkParams, RangeSet, requireInput } from './common.ts'
import type { HostTensor } from '../tensor.ts'
import type { JobPlan, Operator, ShardRange, Tensors } from './types.ts'

/**
 * Sample sort of float32 keys: x [n] -> float32 [n] in ascending order, equal
 * to numpy's `np.sort(x)` (NaN last; -0 and +0 compare equal, so their
 * relative order is unspecified, as in numpy).
 *
 * The coordinator's plan takes a deterministic sample of x (every k-th
 * element), sorts it and keeps up to MAX_SORT_SPLITTERS distinct finite
 * quantiles as splitters, carried in params. Units are elements of x, sharded
 * by ranges. A shard sorts its keys and cuts its sorted run into buckets by
 * the splitters: bucket j holds keys in (s[j-1], s[j]], the last bucket keys
 * above every splitter and all NaNs. It returns
 *
 *   keys:   float32 [len]      its keys, sorted
 *   bounds: int32   [B + 1]    bucket j is keys[bounds[j] .. bounds[j+1])
 *
 * The reducer checks each run (sorted, every key inside its bucket's
 * interval) and, once all ranges are in, k-way merges the runs bucket by
 * bucket with a heap over the shards: O(n log shards) with typed arrays only.
 *
 * The sort inside a shard is TypedArray.prototype.sort rather than a TF.js
 * kernel: it is exact on every backend (TF.js's topk/sort kernels differ by
 * backend in NaN and tie handling) and faster than topk(k = n) on wasm.
 */

const NAME = 'sort'

/**
 * Splitters travel as JSON in the shard params, whose limit is 64 KiB
 * (protocol/limits.ts); a float32 prints as at most ~16 characters, so 1023
 * splitters (1024 buckets) take about 17 KiB and leave room to spare.
 */
export const MAX_SORT_SPLITTERS = 1023

/**
 * Aim for buckets of at least this many keys: finer buckets buy nothing
 * (the merge costs the same) and only lengthen the params.
 */
export const SORT_MIN_BUCKET_KEYS = 1024

/**
 * Sample elements per bucket. Sample sort's usual oversampling (16-32 per
 * bucket) keeps bucket sizes within a small factor of n/B; the sample is
 * sorted on the coordinator, so this also bounds that work (16K keys).
 */
export const SORT_OVERSAMPLING = 16

export interface SortParams {
  /** Strictly increasing finite float32 values; B = splitters.length + 1 buckets. */
  splitters: number[]
}

/** A float32 run sorted as numpy sorts: ascending, NaN last. */
function compareKeys (a: number, b: number): number {
  if (a < b) return -1
  if (a > b) return 1
  if (a === b) return 0
  // At least one NaN: NaN sorts after everything.
  return Number.isNaN(a) ? (Number.isNaN(b) ? 0 : 1) : -1
}

/** Number of keys in the sorted run that are <= s (NaNs are not). */
function upperBound (run: Float32Array, s: number): number {
  let lo = 0
  let hi = run.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((run[mid] as number) <= s) lo = mid + 1
    else hi = mid
  }
  return lo
}

/** Deterministic splitters from every k-th element of x. */
export function chooseSplitters (x: Float32Array): number[] {
  const n = x.length
  const buckets = Math.max(1, Math.min(MAX_SORT_SPLITTERS + 1, Math.floor(n / SORT_MIN_BUCKET_KEYS)))
  if (buckets === 1) return []
  const size = Math.min(n, buckets * SORT_OVERSAMPLING)
  const stride = n / size
  const sample = new Float32Array(size)
  // The middle of each stride, so a sorted x gives evenly spaced quantiles.
  for (let i = 0; i < size; i++) sample[i] = x[Math.floor((i + 0.5) * stride)] as number
  sample.sort()
  const out: number[] = []
  for (let j = 1; j < buckets; j++) {
    const s = sample[Math.floor(j * size / buckets)] as number
    // Infinity has no JSON form and NaN is no splitter; -0 becomes 0 (equal anyway).
    if (!Number.isFinite(s)) continue
    const v = s === 0 ? 0 : s
    if (out.length === 0 || v > (out[out.length - 1] as number)) out.push(v)
  }
  return out
}

function checkSortParams (params: unknown): SortParams {
  const p = checkParams(NAME, params, ['splitters'])
  const s = p.splitters ?? []
  if (!Array.isArray(s)) throw new InvalidInputError(`${NAME}: params.splitters must be a list of numbers`, 'ERR_BAD_PARAMS')
  if (s.length > MAX_SORT_SPLITTERS) throw new InvalidInputError(`${NAME}: params.splitters has ${s.length} values; at most ${MAX_SORT_SPLITTERS} are allowed`, 'ERR_BAD_PARAMS')
  for (let i = 0; i < s.length; i++) {
    const v: unknown = s[i]
    if (typeof v !== 'number' || !Number.isFinite(v) || Math.fround(v) !== v) {
      throw new InvalidInputError(`${NAME}: params.splitters[${i}] must be a finite float32 value`, 'ERR_BAD_PARAMS')
    }
    if (i > 0 && !(v > (s[i - 1] as number))) throw new InvalidInputError(`${NAME}: params.splitters must be strictly increasing (at ${i})`, 'ERR_BAD_PARAMS')
  }
  return { splitters: s as number[] }
}

function checkX (inputs: unknown): HostTensor {
  const x = requireInput(checkInputs(NAME, inputs, ['x']), 'x')
  checkDType(NAME, 'x', x, ['float32'])
  if (x.shape.length !== 1) throw new InvalidInputError(`${NAME}: input 'x' is ${describe(x)}; it must be rank 1 (a list of keys)`, 'ERR_BAD_RANK')
  return x
}

function badPartial (why: string): ProtocolError {
  return new ProtocolError(`${NAME}: bad partial: ${why}`, 'ERR_BAD_PARTIAL')
}

/** A shard's run checked against the splitters: shapes, bounds, order and bucket membership. O(len). */
function checkRun (partial: unknown, len: number, splitters: readonly number[]): { keys: Float32Array, bounds: Int32Array } {
  let t: Record<string, HostTensor>
  try {
    t = checkInputs(NAME, partial, ['keys', 'bounds'])
  } catch (err) {
    throw badPartial((err as Error).message)
  }
  const keys = t.keys as HostTensor
  const bounds = t.bounds as HostTensor
  const b = splitters.length + 1
  if (keys.dtype !== 'float32' || keys.shape.length !== 1 || keys.shape[0] !== len) throw badPartial(`keys is ${describe(keys)}; expected float32[${len}]`)
  if (bounds.dtype !== 'int32' || bounds.shape.length !== 1 || bounds.shape[0] !== b + 1) throw badPartial(`bounds is ${describe(bounds)}; expected int32[${b + 1}]`)
  const k = keys.data as Float32Array
  const o = bounds.data as Int32Array
  if (o[0] !== 0 || o[b] !== len) throw badPartial(`bounds must start at 0 and end at ${len}`)
  for (let j = 0; j < b; j++) {
    const from = o[j] as number
    const to = o[j + 1] as number
    if (to < from) throw badPartial('bounds decrease')
    const lo = j === 0 ? undefined : splitters[j - 1] as number
    const hi = j === b - 1 ? undefined : splitters[j] as number
    for (let i = from; i < to; i++) {
      const v = k[i] as number
      if (Number.isNaN(v)) {
        // NaNs only at the very end of the last bucket.
        if (j !== b - 1) throw badPartial(`NaN in bucket ${j}`)
        continue
      }
      if (!((lo === undefined || v > lo) && (hi === undefined || v <= hi))) throw badPartial(`key at ${i} is outside bucket ${j}`)
      if (i > from && !(v >= (k[i - 1] as number))) throw badPartial(`keys are not sorted at ${i}`)
    }
  }
  return { keys: k, bounds: o }
}

export const sort: Operator<SortParams> = {
  name: NAME,

  plan (inputs, params): JobPlan<SortParams> {
    checkParams(NAME, params, [])
    const x = checkX(inputs)
    const n = x.shape[0] as number
    if (n === 0) throw new InvalidInputError(`${NAME}: input 'x' is empty; it needs at least one key`, 'ERR_EMPTY_INPUT')
    return {
      op: NAME,
      units: n,
      // A comparison sort: about log2(len) compares and moves per key.
      cost: { flopsPerUnit: 2 * Math.max(1, Math.log2(n)), bytesInPerUnit: BYTES_PER_ELEMENT, bytesInFixed: 0, bytesOutPerUnit: BYTES_PER_ELEMENT },
      params: { splitters: chooseSplitters(x.data as Float32Array) },
      output: { dtype: 'float32', shape: [n] }
    }
  },

  shard (plan, inputs, range) {
    const x = requireInput(inputs, 'x')
    return { op: NAME, params: { splitters: plan.params.splitters }, inputs: { x: rowSlice(x, range.start, range.end) } }
  },

  validateTask (task) {
    checkSortParams(task.params)
    return checkX(task.inputs).shape[0] as number
  },

  async map (_tf, task): Promise<Tensors> {
    const { splitters } = checkSortParams(task.params)
    const x = checkX(task.inputs)
    // A copy: the input may be a view of the job's own tensor.
    const keys = (x.data as Float32Array).slice().sort()
    const bounds = new Int32Array(splitters.length + 2)
    for (let j = 0; j < splitters.length; j++) bounds[j + 1] = upperBound(keys, splitters[j] as number)
    bounds[splitters.length + 1] = keys.length
    return { keys: hostTensor('float32', [keys.length], keys), bounds: hostTensor('int32', [bounds.length], bounds) }
  },

  reducer (plan) {
    const n = plan.units
    const { splitters } = plan.params
    const buckets = splitters.length + 1
    const seen = new RangeSet(n)
    const runs: Array<{ start: number, keys: Float32Array, bounds: Int32Array }> = []
    return {
      add (range: ShardRange, partial) {
        seen.check(NAME, range)
        const run = checkRun(partial, range.end - range.start, splitters)
        seen.add(NAME, range)
        runs.push({ start: range.start, ...run })
      },
      result () {
        seen.requireComplete(NAME)
        // Runs in range order, so equal keys come out in input-range order (deterministic).
        runs.sort((a, b) => a.start - b.start)
        const out = new Float32Array(n)
        const r = runs.length
        const pos = new Int32Array(r)
        const end = new Int32Array(r)
        // A binary min-heap of run numbers, keyed by each run's current key.
        const heap = new Int32Array(r)
        let at = 0
        const less = (a: number, b: number): boolean => {
          const c = compareKeys(runs[a]!.keys[pos[a] as number] as number, runs[b]!.keys[pos[b] as number] as number)
          return c < 0 || (c === 0 && a < b)
        }
        const siftDown = (size: number): void => {
          let i = 0
          for (;;) {
            const l = 2 * i + 1
            if (l >= size) return
            const rr = l + 1
            const m = rr < size && less(heap[rr] as number, heap[l] as number) ? rr : l
            if (!less(heap[m] as number, heap[i] as number)) return
            const t = heap[i] as number; heap[i] = heap[m] as number; heap[m] = t
            i = m
          }
        }
        const siftUp = (i: number): void => {
          while (i > 0) {
            const p = (i - 1) >> 1
            if (!less(heap[i] as number, heap[p] as number)) return
            const t = heap[i] as number; heap[i] = heap[p] as number; heap[p] = t
            i = p
          }
        }
        for (let j = 0; j < buckets; j++) {
          let size = 0
          for (let s = 0; s < r; s++) {
            const run = runs[s]!
            pos[s] = run.bounds[j] as number
            end[s] = run.bounds[j + 1] as number
            if ((pos[s] as number) < (end[s] as number)) { heap[size] = s; siftUp(size); size++ }
          }
          while (size > 0) {
            const s = heap[0] as number
            const run = runs[s]!
            let p = pos[s] as number
            const stop = end[s] as number
            // Copy the run's stretch that stays below the next best run's head: long stretches when runs barely overlap.
            const next = size > 1 ? (size > 2 && less(heap[2] as number, heap[1] as number) ? heap[2] as number : heap[1] as number) : -1
            if (next < 0) {
              out.set(run.keys.subarray(p, stop), at)
              at += stop - p
              p = stop
            } else {
              do {
                out[at++] = run.keys[p] as number
                p++
                pos[s] = p
              } while (p < stop && less(s, next))
            }
            pos[s] = p
            if (p < stop) {
              siftDown(size)
            } else {
              heap[0] = heap[size - 1] as number
              size--
              siftDown(size)
            }
          }
        }
        if (at !== n) throw new ProtocolError(`${NAME}: runs hold ${at} keys but ${n} were expected`, 'ERR_BAD_PARTIAL')
        return hostTensor('float32', [n], out)
      }
    }
  }
}

