import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { readNpyFile } from '../../src/compute/npy.ts'
import { chooseSplitters, MAX_SORT_SPLITTERS, sort } from '../../src/compute/operators/sort.ts'
import { ExecutorPool } from '../../src/compute/pool.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { python as numpy, tempDir } from '../helpers/numpy.ts'
import { runSharded, unevenRanges } from './shards.ts'
import { codeOf } from '../helpers/codes.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'
import type { ShardTask, Tensors, TF } from '../../src/compute/operators/types.ts'

/**
 * sort against numpy's np.sort, exactly: every output element equals
 * numpy's (NaN matching NaN; -0 and +0 are equal, as numpy leaves their
 * order unspecified). Shards are uneven and reduced in a shuffled order.
 */

const { dir, cleanup } = tempDir()
const pool = new ExecutorPool({ workers: 2, calibrate: false })
beforeAll(async () => { await pool.start() })
afterAll(async () => { await pool.stop(); cleanup() })

// sort's map is plain typed-array code; it never touches tf.
const noTf = undefined as unknown as TF
const viaPool = async (task: ShardTask): Promise<Tensors> => (await pool.run(task)).partial
const inProcess = async (task: ShardTask): Promise<Tensors> => await sort.map(noTf, task)

function mismatches (got: ArrayLike<number>, want: ArrayLike<number>): number {
  expect(got.length).toBe(want.length)
  let bad = 0
  for (let i = 0; i < got.length; i++) {
    const g = got[i] as number
    const w = want[i] as number
    if (!(g === w || (Number.isNaN(g) && Number.isNaN(w)))) bad++
  }
  return bad
}

async function fromNumpy (name: string, code: string): Promise<{ x: HostTensor, want: HostTensor }> {
  numpy(`${code}\nx = x.astype('<f4')\nnp.save(d + '/${name}-x.npy', x)\nnp.save(d + '/${name}-sorted.npy', np.sort(x))`, dir)
  return { x: await readNpyFile(join(dir, `${name}-x.npy`)), want: await readNpyFile(join(dir, `${name}-sorted.npy`)) }
}

const f32 = (values: number[]): HostTensor => hostTensor('float32', [values.length], Float32Array.from(values))

describe('sort', () => {
  it('sorts 2^20 keys through the executor pool exactly as np.sort (9 uneven shards)', async () => {
    // Normal keys, a quarter of them rounded to 2 decimals so many keys repeat.
    const { x, want } = await fromNumpy('big', `r = np.random.default_rng(11)\nx = r.standard_normal(2**20)\nx[::4] = np.round(x[::4], 2)`)
    const { out, plan } = await runSharded(sort, { x }, {}, { shards: 9, seed: 3, run: viaPool })
    // Rounded keys repeat, so some quantiles coincide and are merged.
    expect(plan.params.splitters.length).toBeGreaterThan(100)
    expect(plan.params.splitters.length).toBeLessThanOrEqual(MAX_SORT_SPLITTERS)
    expect(mismatches(out.data, want.data)).toBe(0)
  })

  it('puts NaN last and handles infinities, -0 and heavy duplicates', async () => {
    const { x, want } = await fromNumpy('odd', `r = np.random.default_rng(5)\nx = np.round(r.standard_normal(20000), 1)\nx[r.integers(0, 20000, 300)] = np.nan\nx[r.integers(0, 20000, 50)] = np.inf\nx[r.integers(0, 20000, 50)] = -np.inf\nx[r.integers(0, 20000, 50)] = -0.0`)
    const { out } = await runSharded(sort, { x }, {}, { shards: 6, seed: 8, run: inProcess })
    expect(mismatches(out.data, want.data)).toBe(0)
  })

  it('sorts inputs whose sample gives few or no splitters', async () => {
    for (const [name, code] of [
      ['same', 'x = np.full(5000, 3.5)'],
      ['sorted', 'x = np.arange(7000, dtype=np.float64)[::-1] / 7'],
      ['tiny', 'x = np.array([2.0, -1.0, 0.5])'],
      ['nan', 'x = np.full(3000, np.nan)']
    ] as const) {
      const { x, want } = await fromNumpy(name, code)
      const { out } = await runSharded(sort, { x }, {}, { shards: Math.min(3, x.shape[0] as number), seed: 2, run: inProcess })
      expect(mismatches(out.data, want.data), name).toBe(0)
    }
  })

  it('picks at most MAX_SORT_SPLITTERS strictly increasing finite splitters', () => {
    const u = new Float32Array(4_000_000).map((_, i) => (i * 7919) % 100_003)
    const s = chooseSplitters(u)
    expect(s.length).toBeLessThanOrEqual(MAX_SORT_SPLITTERS)
    for (let i = 1; i < s.length; i++) expect(s[i]).toBeGreaterThan(s[i - 1] as number)
    expect(chooseSplitters(Float32Array.of(Infinity, -Infinity, NaN))).toEqual([])
    // Splitters survive a JSON round trip (they travel in params).
    expect(JSON.parse(JSON.stringify(s))).toEqual(s)
  })

  it('refuses bad jobs by code', () => {
    expect(codeOf(() => sort.plan({ x: hostTensor('float32', [2, 2]) }, {}))).toBe('ERR_BAD_RANK')
    expect(codeOf(() => sort.plan({ x: hostTensor('int32', [4]) }, {}))).toBe('ERR_BAD_DTYPE')
    expect(codeOf(() => sort.plan({ x: hostTensor('float32', [0]) }, {}))).toBe('ERR_EMPTY_INPUT')
    expect(codeOf(() => sort.plan({}, {}))).toBe('ERR_MISSING_INPUT')
    expect(codeOf(() => sort.plan({ x: f32([1]), y: f32([1]) }, {}))).toBe('ERR_BAD_INPUT')
    expect(codeOf(() => sort.plan({ x: f32([1]) }, { splitters: [0] }))).toBe('ERR_BAD_PARAMS')
  })

  it('validateTask refuses forged splitters and tensors', () => {
    const task = (params: unknown, x: unknown = f32([1, 2])): ShardTask => ({ op: 'sort', params: params as ShardTask['params'], inputs: { x: x as HostTensor } })
    expect(sort.validateTask(task({ splitters: [0.5, 1.5] }))).toBe(2)
    expect(codeOf(() => sort.validateTask(task({ splitters: [1, 1] })))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => sort.validateTask(task({ splitters: [2, 1] })))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => sort.validateTask(task({ splitters: [0.1] })))).toBe('ERR_BAD_PARAMS') // not a float32 value
    expect(codeOf(() => sort.validateTask(task({ splitters: [null] })))).toBe('ERR_BAD_PARAMS') // Infinity after JSON
    expect(codeOf(() => sort.validateTask(task({ splitters: 'a' })))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => sort.validateTask(task({ splitters: Array.from({ length: MAX_SORT_SPLITTERS + 1 }, (_, i) => i) })))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => sort.validateTask(task({ splitters: [], extra: 1 })))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => sort.validateTask(task({ splitters: [] }, { dtype: 'float32', shape: [3], data: new Float32Array(2) })))).toBe('ERR_BAD_SHAPE')
  })

  it('the reducer refuses partials a lying peer could send', async () => {
    const x = f32(Array.from({ length: 4096 }, (_, i) => (i * 37) % 1001))
    const plan = sort.plan({ x }, {})
    expect(plan.params.splitters.length).toBe(3)
    const [r0, r1] = unevenRanges(plan.units, 2, 1) as [typeof plan extends never ? never : { index: number, start: number, end: number }, { index: number, start: number, end: number }]
    const good = await sort.map(noTf, sort.shard(plan, { x }, r0))
    const keys = good.keys as HostTensor
    const bounds = good.bounds as HostTensor
    const forged = (k: Float32Array, b: Int32Array): Tensors => ({ keys: hostTensor('float32', [k.length], k), bounds: hostTensor('int32', [b.length], b) })
    const add = (p: unknown, range = r0): string | undefined => codeOf(() => { sort.reducer(plan).add(range, p as Tensors) })
    // Unsorted keys.
    const unsorted = keys.data.slice() as Float32Array
    const at = unsorted.findIndex((v, i) => v !== unsorted[i + 1])
    ;[unsorted[at], unsorted[at + 1]] = [unsorted[at + 1] as number, unsorted[at] as number]
    expect(add(forged(unsorted, bounds.data as Int32Array))).toBe('ERR_BAD_PARTIAL')
    // A key moved into the wrong bucket by shifting a boundary.
    const shifted = bounds.data.slice() as Int32Array
    shifted[1] = (shifted[1] as number) + 1
    expect(add(forged(keys.data as Float32Array, shifted))).toBe('ERR_BAD_PARTIAL')
    // Bounds that do not end at the run's length, wrong lengths, dtypes, names.
    const short = bounds.data.slice() as Int32Array
    short[short.length - 1] = (short[short.length - 1] as number) - 1
    expect(add(forged(keys.data as Float32Array, short))).toBe('ERR_BAD_PARTIAL')
    expect(add(forged((keys.data as Float32Array).subarray(1), bounds.data as Int32Array))).toBe('ERR_BAD_PARTIAL')
    expect(add(forged(keys.data as Float32Array, (bounds.data as Int32Array).subarray(1)))).toBe('ERR_BAD_PARTIAL')
    expect(add({ keys, bounds: hostTensor('float32', bounds.shape) })).toBe('ERR_BAD_PARTIAL')
    expect(add({ out: keys })).toBe('ERR_BAD_PARTIAL')
    // NaN outside the last bucket.
    const nan = keys.data.slice() as Float32Array
    nan[0] = NaN
    expect(add(forged(nan, bounds.data as Int32Array))).toBe('ERR_BAD_PARTIAL')
    // Ranges: out of bounds, twice, and a result with one missing.
    expect(add(good, { index: 0, start: 4000, end: 5000 })).toBe('ERR_BAD_RANGE')
    const reducer = sort.reducer(plan)
    reducer.add(r0, good)
    expect(codeOf(() => { reducer.add(r0, good) })).toBe('ERR_DUPLICATE_RANGE')
    expect(codeOf(() => reducer.result())).toBe('ERR_INCOMPLETE')
    reducer.add(r1, await sort.map(noTf, sort.shard(plan, { x }, r1)))
    const want = (x.data as Float32Array).slice().sort()
    expect(mismatches(reducer.result().data, want)).toBe(0)
  })

  it('plans units, cost and output', () => {
    const plan = sort.plan({ x: f32([3, 1, 2]) }, undefined)
    expect(plan.units).toBe(3)
    expect(plan.output).toEqual({ dtype: 'float32', shape: [3] })
    expect(plan.params).toEqual({ splitters: [] })
    expect(plan.cost.bytesInPerUnit).toBe(4)
    expect(plan.cost.bytesOutPerUnit).toBe(4)
  })
})
