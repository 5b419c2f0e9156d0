import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadBackend } from '../../src/compute/backend.ts'
import { readNpyFile } from '../../src/compute/npy.ts'
import { getOperator, map, matmul, MAX_MAP_OPS, operatorNames, reduce } from '../../src/compute/operators/index.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { maxRelativeError, python as numpy, tempDir } from '../helpers/numpy.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'
import type { Operator, ShardRange, Tensors, TF } from '../../src/compute/operators/types.ts'
import { codeOf } from '../helpers/codes.ts'

/**
 * Each operator end to end in this process: plan, shard into uneven ranges,
 * map every shard on the wasm backend (the one the pool uses here), reduce
 * the partials in shuffled order, and compare with numpy.
 */

let tf: TF
const { dir, cleanup } = tempDir()
beforeAll(async () => { tf = (await loadBackend('wasm')).tf })
afterAll(cleanup)

/** 37 rows cut unevenly, reduced in an order unlike the split. */
const CUTS_37 = [0, 5, 6, 19, 30, 37]
const ORDER = [3, 0, 4, 2, 1]

function ranges (cuts: number[]): ShardRange[] {
  return cuts.slice(1).map((end, i) => ({ index: i, start: cuts[i] as number, end }))
}

async function runJob<P> (op: Operator<P>, inputs: Tensors, params: unknown, cuts = CUTS_37, order = ORDER): Promise<HostTensor> {
  const plan = op.plan(inputs, params)
  const rs = ranges(cuts)
  expect(rs.at(-1)?.end).toBe(plan.units)
  const reducer = op.reducer(plan)
  const before = tf.memory().numTensors
  for (const i of order) {
    const range = rs[i] as ShardRange
    const task = op.shard(plan, inputs, range)
    expect(op.validateTask(task)).toBe(range.end - range.start)
    reducer.add(range, await op.map(tf, task))
  }
  // map disposes everything it made.
  expect(tf.memory().numTensors).toBe(before)
  const out = reducer.result()
  expect(out.dtype).toBe(plan.output.dtype)
  expect(out.shape).toEqual(plan.output.shape)
  return out
}

const f32 = (shape: number[], fill = 0): HostTensor => hostTensor('float32', shape, new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(fill))
const i32 = (shape: number[]): HostTensor => hostTensor('int32', shape)

describe('registry', () => {
  it('knows its operators', () => {
    expect(operatorNames()).toEqual(expect.arrayContaining(['matmul', 'map', 'reduce', 'sort', 'topk', 'histogram', 'infer']))
    expect(getOperator('reduce')).toBe(reduce)
  })
  it('refuses an unknown name, listing the known ones', () => {
    expect(codeOf(() => getOperator('conv2d'))).toBe('ERR_UNKNOWN_OPERATOR')
    expect(codeOf(() => getOperator(undefined))).toBe('ERR_UNKNOWN_OPERATOR')
    try { getOperator('conv2d') } catch (err) { expect((err as Error).name).toBe('InvalidInputError') }
  })
})

describe('matmul', () => {
  it('matches numpy on 37x19 @ 19x23 in uneven shards (relative error < 1e-4)', async () => {
    numpy(`r = np.random.default_rng(7)\na = r.standard_normal((37, 19)).astype('<f4')\nb = r.standard_normal((19, 23)).astype('<f4')\nnp.save(d + '/mm-a.npy', a)\nnp.save(d + '/mm-b.npy', b)\nnp.save(d + '/mm-c.npy', a.astype(np.float64) @ b.astype(np.float64))`, dir)
    const a = await readNpyFile(join(dir, 'mm-a.npy'))
    const b = await readNpyFile(join(dir, 'mm-b.npy'))
    const want = await readNpyFile(join(dir, 'mm-c.npy'))
    const c = await runJob(matmul, { a, b }, {})
    expect(c.shape).toEqual([37, 23])
    expect(maxRelativeError(c.data, want.data)).toBeLessThan(1e-4)
  })

  it('plans units, cost and output', () => {
    const plan = matmul.plan({ a: f32([6, 4]), b: f32([4, 3]) }, undefined)
    expect(plan.units).toBe(6)
    expect(plan.cost).toEqual({ flopsPerUnit: 24, bytesInPerUnit: 16, bytesInFixed: 48, bytesOutPerUnit: 12 })
    expect(plan.output).toEqual({ dtype: 'float32', shape: [6, 3] })
  })

  it('shards are views of a, not copies', () => {
    const a = f32([6, 4])
    const b = f32([4, 3])
    const task = matmul.shard(matmul.plan({ a, b }, {}), { a, b }, { index: 0, start: 2, end: 5 })
    expect(task.inputs.a?.data.buffer).toBe(a.data.buffer)
    expect(task.inputs.a?.shape).toEqual([3, 4])
  })

  it('names both shapes when the inner dimensions differ', () => {
    const fn = (): unknown => matmul.plan({ a: f32([3, 4]), b: f32([5, 2]) }, {})
    expect(codeOf(fn)).toBe('ERR_SHAPE_MISMATCH')
    expect(() => fn()).toThrow("matmul: a is float32[3, 4] but b is float32[5, 2]; a's columns (4) must equal b's rows (5)")
  })

  it('refuses every malformed input by code', () => {
    const b = f32([4, 2])
    expect(codeOf(() => matmul.plan({ a: f32([3, 4, 1]), b }, {}))).toBe('ERR_BAD_RANK')
    expect(codeOf(() => matmul.plan({ a: i32([3, 4]), b }, {}))).toBe('ERR_BAD_DTYPE')
    expect(codeOf(() => matmul.plan({ a: f32([3, 4]) }, {}))).toBe('ERR_MISSING_INPUT')
    expect(codeOf(() => matmul.plan({ a: f32([3, 4]), b, c: b }, {}))).toBe('ERR_BAD_INPUT')
    expect(codeOf(() => matmul.plan({ a: f32([3, 4]), b }, { transpose: true }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => matmul.plan({ a: f32([3, 4]), b }, [1]))).toBe('ERR_BAD_PARAMS')
    // Tiny inputs, impossible output.
    expect(codeOf(() => matmul.plan({ a: f32([1e9, 0]), b: f32([0, 1e9]) }, {}))).toBe('ERR_LIMIT_EXCEEDED')
  })

  it('validateTask re-checks what a peer could forge', () => {
    const b = f32([4, 2])
    const lying = { dtype: 'float32', shape: [3, 4], data: new Float32Array(5) }
    expect(codeOf(() => matmul.validateTask({ op: 'matmul', params: {}, inputs: { a: lying as HostTensor, b } }))).toBe('ERR_BAD_SHAPE')
    const wrongArray = { dtype: 'float32', shape: [1, 4], data: new Int32Array(4) }
    expect(codeOf(() => matmul.validateTask({ op: 'matmul', params: {}, inputs: { a: wrongArray as unknown as HostTensor, b } }))).toBe('ERR_BAD_DTYPE')
    const badShape = { dtype: 'float32', shape: [-1, 4], data: new Float32Array(0) }
    expect(codeOf(() => matmul.validateTask({ op: 'matmul', params: {}, inputs: { a: badShape as HostTensor, b } }))).toBe('ERR_BAD_SHAPE')
    expect(codeOf(() => matmul.validateTask({ op: 'matmul', params: {}, inputs: { a: f32([2, 3]), b } }))).toBe('ERR_SHAPE_MISMATCH')
    expect(matmul.validateTask({ op: 'matmul', params: {}, inputs: { a: f32([7, 4]), b } })).toBe(7)
  })
})

describe('map', () => {
  const ops = [
    { op: 'add', value: 0.5 }, { op: 'mul', value: 2 }, { op: 'log' }, { op: 'sqrt' }, { op: 'sub', value: 1 },
    { op: 'tanh' }, { op: 'abs' }, { op: 'square' }, { op: 'div', value: 3 }, { op: 'relu' }, { op: 'sigmoid' }, { op: 'exp' }
  ]

  it('applies every op in order like numpy, float32 (relative error < 1e-5)', async () => {
    numpy(`x = np.random.default_rng(3).uniform(0.1, 2.0, (37, 3, 4)).astype('<f4')\nnp.save(d + '/map-x.npy', x)\ny = x.astype(np.float64)\ny = np.exp(1 / (1 + np.exp(-np.maximum(np.square(np.abs(np.tanh(np.sqrt(np.log((y + 0.5) * 2)) - 1))) / 3, 0))))\nnp.save(d + '/map-y.npy', y)`, dir)
    const x = await readNpyFile(join(dir, 'map-x.npy'))
    const want = await readNpyFile(join(dir, 'map-y.npy'))
    const y = await runJob(map, { x }, { ops })
    expect(y.shape).toEqual([37, 3, 4])
    expect(maxRelativeError(y.data, want.data)).toBeLessThan(1e-5)
  })

  it('computes int32 input in float32', async () => {
    const x = hostTensor('int32', [4], Int32Array.from([-3, 0, 7, 1]))
    const y = await runJob(map, { x }, { ops: [{ op: 'div', value: 2 }] }, [0, 1, 4], [1, 0])
    expect(y.dtype).toBe('float32')
    expect(Array.from(y.data)).toEqual([-1.5, 0, 3.5, 0.5])
  })

  it('is the identity with no ops', async () => {
    const x = hostTensor('float32', [3, 2], Float32Array.from([1, 2, 3, 4, 5, 6]))
    const y = await runJob(map, { x }, { ops: [] }, [0, 2, 3], [1, 0])
    expect(Array.from(y.data)).toEqual([1, 2, 3, 4, 5, 6])
  })

  it('refuses every malformed param and input by code', () => {
    const x = f32([2, 2])
    expect(codeOf(() => map.plan({ x }, { ops: [{ op: 'eval' }] }))).toBe('ERR_UNKNOWN_MAP_OP')
    expect(codeOf(() => map.plan({ x }, { ops: [{ op: 'add' }] }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => map.plan({ x }, { ops: [{ op: 'add', value: '1' }] }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => map.plan({ x }, { ops: [{ op: 'mul', value: Infinity }] }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => map.plan({ x }, { ops: [{ op: 'relu', value: 1 }] }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => map.plan({ x }, { ops: [{ op: 'add', value: 1, extra: 2 }] }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => map.plan({ x }, { ops: 'relu' }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => map.plan({ x }, {}))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => map.plan({ x }, { ops: [null] }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => map.plan({ x }, { ops: Array.from({ length: MAX_MAP_OPS + 1 }, () => ({ op: 'relu' })) }))).toBe('ERR_BAD_PARAMS')
    expect(map.plan({ x }, { ops: Array.from({ length: MAX_MAP_OPS }, () => ({ op: 'relu' })) }).units).toBe(2)
    expect(codeOf(() => map.plan({ x }, { ops: [], fast: true }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => map.plan({ x: f32([]) }, { ops: [] }))).toBe('ERR_BAD_RANK')
    expect(codeOf(() => map.plan({ y: x }, { ops: [] }))).toBe('ERR_BAD_INPUT')
    expect(codeOf(() => map.validateTask({ op: 'map', params: { ops: [{ op: 'exp' }] }, inputs: { x: { dtype: 'float64', shape: [1], data: new Float32Array(1) } as unknown as HostTensor } }))).toBe('ERR_BAD_DTYPE')
  })
})

describe('reduce', () => {
  beforeAll(() => {
    numpy(`r = np.random.default_rng(5)\nx = r.standard_normal((37, 5)).astype('<f4')\nnp.save(d + '/red-x.npy', x)\ny = x.astype(np.float64)\nfor op in ['sum', 'mean', 'max', 'min']:\n  np.save(d + '/red-' + op + '-0.npy', getattr(np, op)(y, axis=0))\n  np.save(d + '/red-' + op + '-all.npy', np.array(getattr(np, op)(y)))\nxi = r.integers(-50, 51, (37, 5)).astype('<f4')\nnp.save(d + '/red-xi.npy', xi)\nyi = xi.astype(np.float64)\nfor op in ['sum', 'mean']:\n  np.save(d + '/red-i-' + op + '-0.npy', getattr(np, op)(yi, axis=0))\n  np.save(d + '/red-i-' + op + '-all.npy', np.array(getattr(np, op)(yi)))\nn = r.integers(-1000, 1000, (37, 5)).astype('<i4')\nnp.save(d + '/red-n.npy', n)\nnp.save(d + '/red-n-max-0.npy', n.max(axis=0))\nnp.save(d + '/red-n-min-all.npy', np.array(n.min()))`, dir)
  })

  for (const op of ['sum', 'mean', 'max', 'min'] as const) {
    for (const axis of [0, null] as const) {
      it(`${op} over ${axis === 0 ? 'axis 0' : 'all elements'} matches numpy float64 (relative error < 1e-5)`, async () => {
        const x = await readNpyFile(join(dir, 'red-x.npy'))
        const want = await readNpyFile(join(dir, `red-${op}-${axis === 0 ? '0' : 'all'}.npy`))
        const y = await runJob(reduce, { x }, axis === null ? { op } : { op, axis })
        expect(y.shape).toEqual(axis === 0 ? [5] : [])
        expect(maxRelativeError(y.data, want.data)).toBeLessThan(1e-5)
      })
    }
  }

  for (const op of ['sum', 'mean'] as const) {
    it(`${op} combines uneven shards exactly (integer data, equal to float64 numpy rounded once)`, async () => {
      // With integer values every float32 partial sum is exact, so the
      // result equals numpy's float64 answer rounded to float32 exactly; a
      // mean of per-shard means would not.
      const x = await readNpyFile(join(dir, 'red-xi.npy'))
      for (const axis of [0, null] as const) {
        const raw = `red-i-${op}-${axis === 0 ? '0' : 'all'}.npy`
        // Read as float32 the same way the reference float64 is narrowed.
        const want = await readNpyFile(join(dir, raw))
        const y = await runJob(reduce, { x }, { op, axis })
        expect(Array.from(y.data)).toEqual(Array.from(want.data))
      }
    })
  }

  it('max and min of int32 stay int32 and exact', async () => {
    const x = await readNpyFile(join(dir, 'red-n.npy'))
    const mx = await runJob(reduce, { x }, { op: 'max', axis: 0 })
    expect(mx.dtype).toBe('int32')
    expect(Array.from(mx.data)).toEqual(Array.from((await readNpyFile(join(dir, 'red-n-max-0.npy'))).data))
    const mn = await runJob(reduce, { x }, { op: 'min' })
    expect(mn.dtype).toBe('int32')
    expect(Array.from(mn.data)).toEqual(Array.from((await readNpyFile(join(dir, 'red-n-min-all.npy'))).data))
  })

  it('refuses a bad axis, op, rank or empty reduction by code', () => {
    const x = f32([3, 2])
    expect(codeOf(() => reduce.plan({ x }, { op: 'sum', axis: 1 }))).toBe('ERR_BAD_AXIS')
    expect(codeOf(() => reduce.plan({ x }, { op: 'sum', axis: -1 }))).toBe('ERR_BAD_AXIS')
    expect(codeOf(() => reduce.plan({ x }, { op: 'sum', axis: '0' }))).toBe('ERR_BAD_AXIS')
    expect(() => reduce.plan({ x: f32([3, 2, 2]) }, { op: 'sum', axis: 2 })).toThrow(/axis 2 .*rank 3/)
    expect(codeOf(() => reduce.plan({ x }, { op: 'prod' }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => reduce.plan({ x }, {}))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => reduce.plan({ x }, { op: 'sum', keepdims: true }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => reduce.plan({ x: f32([]) }, { op: 'sum' }))).toBe('ERR_BAD_RANK')
    expect(codeOf(() => reduce.plan({ x: f32([0, 2]) }, { op: 'max', axis: 0 }))).toBe('ERR_EMPTY_REDUCTION')
    expect(codeOf(() => reduce.plan({ x: f32([2, 0]) }, { op: 'mean' }))).toBe('ERR_EMPTY_REDUCTION')
    expect(reduce.plan({ x: f32([0, 2]) }, { op: 'sum', axis: 0 }).output.shape).toEqual([2])
    expect(codeOf(() => reduce.validateTask({ op: 'reduce', params: { op: 'min', axis: 0 }, inputs: { x: f32([0, 3]) } }))).toBe('ERR_EMPTY_REDUCTION')
  })
})

describe('reducers refuse what a peer could send back', () => {
  const a = f32([4, 2], 1)
  const b = f32([2, 3], 1)
  const plan = matmul.plan({ a, b }, {})
  const good: Tensors = { out: f32([2, 3]) }

  it('a duplicate or overlapping range', () => {
    const r = matmul.reducer(plan)
    r.add({ index: 0, start: 0, end: 2 }, good)
    expect(codeOf(() => { r.add({ index: 0, start: 0, end: 2 }, good) })).toBe('ERR_DUPLICATE_RANGE')
    expect(codeOf(() => { r.add({ index: 1, start: 1, end: 3 }, good) })).toBe('ERR_DUPLICATE_RANGE')
  })

  it('a range outside the job', () => {
    const r = matmul.reducer(plan)
    expect(codeOf(() => { r.add({ index: 0, start: 3, end: 5 }, good) })).toBe('ERR_BAD_RANGE')
    expect(codeOf(() => { r.add({ index: 0, start: 2, end: 2 }, good) })).toBe('ERR_BAD_RANGE')
  })

  it('a partial of the wrong shape, dtype or name', () => {
    const r = matmul.reducer(plan)
    const range = { index: 0, start: 0, end: 2 }
    expect(codeOf(() => { r.add(range, { out: f32([2, 4]) }) })).toBe('ERR_BAD_PARTIAL')
    expect(codeOf(() => { r.add(range, { out: i32([2, 3]) }) })).toBe('ERR_BAD_PARTIAL')
    expect(codeOf(() => { r.add(range, { y: f32([2, 3]) }) })).toBe('ERR_BAD_PARTIAL')
    // Nothing was recorded by the refused adds.
    r.add(range, good)
  })

  it('a result while a range is missing', () => {
    const r = reduce.reducer(reduce.plan({ x: a }, { op: 'mean' }))
    r.add({ index: 1, start: 2, end: 4 }, { out: f32([], 4) })
    expect(codeOf(() => r.result())).toBe('ERR_INCOMPLETE')
    r.add({ index: 0, start: 0, end: 2 }, { out: f32([], 4) })
    expect(Array.from(r.result().data)).toEqual([1])
  })
})
