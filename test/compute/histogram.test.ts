import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadBackend } from '../../src/compute/backend.ts'
import { readNpyFile } from '../../src/compute/npy.ts'
import { histogram, MAX_HISTOGRAM_BINS } from '../../src/compute/operators/histogram.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { python as numpy, tempDir } from '../helpers/numpy.ts'
import { runSharded } from './shards.ts'
import { codeOf } from '../helpers/codes.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'
import type { ShardTask, Tensors, TF } from '../../src/compute/operators/types.ts'

/**
 * histogram against np.histogram(x, bins, range=(min, max))[0], exactly
 * (counts are integers): values on every edge, outside the range, NaN and
 * infinities, ranges that are not float32 values, int32 input, rank 2.
 */

let tf: TF
const { dir, cleanup } = tempDir()
beforeAll(async () => { tf = (await loadBackend('wasm')).tf })
afterAll(cleanup)
const inProcess = async (task: ShardTask): Promise<Tensors> => await histogram.map(tf, task)

async function check (name: string, make: string, bins: number, min: number, max: number, shards = 5): Promise<void> {
  numpy(`${make}\nnp.save(d + '/${name}-x.npy', x)\nnp.save(d + '/${name}-h.npy', np.histogram(x, bins=${bins}, range=(${min}, ${max}))[0].astype('<i4'))`, dir)
  const x = await readNpyFile(join(dir, `${name}-x.npy`))
  const want = await readNpyFile(join(dir, `${name}-h.npy`))
  const { out } = await runSharded(histogram, { x }, { bins, min, max }, { shards, seed: bins, run: inProcess })
  expect(out.shape).toEqual([bins])
  expect(Array.from(out.data), name).toEqual(Array.from(want.data))
}

describe('histogram', () => {
  it('matches np.histogram on float32 normals with edge values, NaN and infinities', async () => {
    await check('normal', `r = np.random.default_rng(3)
x = r.standard_normal(100003).astype('<f4')
x[:41] = np.linspace(-4, 4, 41).astype('<f4')   # every edge of 40 bins, both ends included
x[50:60] = [np.nan, np.inf, -np.inf, -4.0000005, 4.0000005, 4, -4, 0, -0.0, 1e-30]`, 40, -4, 4)
  })

  it('matches np.histogram when min and max are not float32 values (numpy rounds the edges to float32)', async () => {
    await check('decimal', `r = np.random.default_rng(6)
x = r.uniform(-0.2, 0.5, 50000).astype('<f4')
x[:4] = np.array([0.1, 0.3, 0.1, 0.3], dtype='<f4')
x[4:8] = np.nextafter(np.array([0.1, 0.3, 0.1, 0.3], dtype='<f4'), np.float32(1)).astype('<f4')`, 7, 0.1, 0.3)
  })

  it('matches np.histogram on int32 input of rank 2 (float64 edges)', async () => {
    await check('int', `r = np.random.default_rng(9)
x = r.integers(-50, 150, (3001, 7)).astype('<i4')`, 13, -10.5, 100, 6)
  })

  it('one bin, many bins', async () => {
    await check('one', 'x = np.arange(1000, dtype=np.float32) / 999', 1, 0, 1, 3)
    await check('many', `r = np.random.default_rng(2)\nx = r.uniform(0, 1, 20000).astype('<f4')`, 100000, 0, 1, 4)
  })

  const f32 = (values: number[]): HostTensor => hostTensor('float32', [values.length], Float32Array.from(values))
  const x = f32([1, 2, 3])

  it('refuses bad jobs by code', () => {
    const plan = (inputs: Record<string, unknown>, params: unknown): string | undefined => codeOf(() => histogram.plan(inputs as Tensors, params))
    expect(plan({ x }, { bins: 0, min: 0, max: 1 })).toBe('ERR_BAD_PARAMS')
    expect(plan({ x }, { bins: 2.5, min: 0, max: 1 })).toBe('ERR_BAD_PARAMS')
    expect(plan({ x }, { bins: MAX_HISTOGRAM_BINS + 1, min: 0, max: 1 })).toBe('ERR_BAD_PARAMS')
    expect(plan({ x }, { bins: 2, min: 1, max: 1 })).toBe('ERR_BAD_PARAMS')
    expect(plan({ x }, { bins: 2, min: 2, max: 1 })).toBe('ERR_BAD_PARAMS')
    expect(plan({ x }, { bins: 2, min: 0 })).toBe('ERR_BAD_PARAMS')
    expect(plan({ x }, { bins: 2, min: 0, max: Infinity })).toBe('ERR_BAD_PARAMS')
    expect(plan({ x }, { bins: 2, min: '0', max: 1 })).toBe('ERR_BAD_PARAMS')
    expect(plan({ x }, { bins: 2, min: 0, max: 1, density: true })).toBe('ERR_BAD_PARAMS')
    // Distinct doubles that are the same float32.
    expect(plan({ x }, { bins: 2, min: 0.1, max: 0.1 + 1e-12 })).toBe('ERR_BAD_PARAMS')
    expect(plan({ x: hostTensor('float32', []) }, { bins: 2, min: 0, max: 1 })).toBe('ERR_BAD_RANK')
    expect(plan({}, { bins: 2, min: 0, max: 1 })).toBe('ERR_MISSING_INPUT')
    expect(codeOf(() => histogram.validateTask({ op: 'histogram', params: { bins: 2, min: 0, max: 1 }, inputs: { x: { dtype: 'float32', shape: [4], data: new Float32Array(3) } as HostTensor } }))).toBe('ERR_BAD_SHAPE')
  })

  it('the reducer refuses partials a lying peer could send', () => {
    const plan = histogram.plan({ x: hostTensor('float32', [10, 2]) }, { bins: 3, min: 0, max: 1 })
    const add = (counts: number[], range = { index: 0, start: 0, end: 4 }): string | undefined =>
      codeOf(() => { histogram.reducer(plan).add(range, { out: hostTensor('int32', [counts.length], Int32Array.from(counts)) }) })
    expect(add([8, 0, 0])).toBeUndefined()
    expect(add([9, 0, 0])).toBe('ERR_BAD_PARTIAL') // more than the 4 rows x 2 elements it was sent
    expect(add([-1, 2, 0])).toBe('ERR_BAD_PARTIAL')
    expect(add([1, 1])).toBe('ERR_BAD_PARTIAL')
    expect(codeOf(() => { histogram.reducer(plan).add({ index: 0, start: 0, end: 4 }, { out: hostTensor('float32', [3]) }) })).toBe('ERR_BAD_PARTIAL')
    const reducer = histogram.reducer(plan)
    reducer.add({ index: 0, start: 0, end: 4 }, { out: hostTensor('int32', [3], Int32Array.of(1, 2, 3)) })
    expect(codeOf(() => { reducer.add({ index: 1, start: 3, end: 5 }, { out: hostTensor('int32', [3]) }) })).toBe('ERR_DUPLICATE_RANGE')
    expect(codeOf(() => reducer.result())).toBe('ERR_INCOMPLETE')
  })

  it('plans units, params and output', () => {
    const plan = histogram.plan({ x: hostTensor('int32', [6, 5]) }, { bins: 8, min: -1, max: 1 })
    expect(plan.units).toBe(6)
    expect(plan.output).toEqual({ dtype: 'int32', shape: [8] })
    expect(histogram.shard(plan, { x: hostTensor('int32', [6, 5]) }, { index: 0, start: 1, end: 3 }).params).toEqual({ bins: 8, min: -1, max: 1 })
  })
})
