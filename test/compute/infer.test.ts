import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadBackend } from '../../src/compute/backend.ts'
import { packModel } from '../../src/compute/model.ts'
import { cachedModelCount, infer, MAX_CACHED_MODELS, MAX_INFER_BATCH } from '../../src/compute/operators/infer.ts'
import { ExecutorPool } from '../../src/compute/pool.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { artifactsOf, loadLayers, seedWeights } from './layers.ts'
import { prng, runSharded } from './shards.ts'
import { asyncCodeOf, codeOf } from '../helpers/codes.ts'
import type { LayersModel } from '@tensorflow/tfjs-layers'
import type { HostTensor } from '../../src/compute/tensor.ts'
import type { ShardTask, Tensors, TF } from '../../src/compute/operators/types.ts'
import type { Layers } from './layers.ts'

/**
 * infer through the executor pool (workers on the pool's own backend) in
 * uneven shuffled shards, against model.predict run directly in this
 * process on the cpu backend: argmax equal on every row, values within
 * 1e-5. Models are built here with tfjs-layers and packed with packModel.
 */

let tf: TF
let L: Layers
const pool = new ExecutorPool({ workers: 2, calibrate: false })
beforeAll(async () => {
  tf = (await loadBackend('cpu')).tf
  L = await loadLayers()
  await pool.start()
})
afterAll(async () => { await pool.stop() })
const viaPool = async (task: ShardTask): Promise<Tensors> => (await pool.run(task)).partial

function mlp (seed: number, inputs = 20, outputs = 10): LayersModel {
  const m = L.sequential({
    layers: [
      L.layers.dense({ units: 32, inputShape: [inputs], activation: 'relu' }),
      L.layers.dropout({ rate: 0.3 }),
      L.layers.dense({ units: outputs, activation: 'softmax' })
    ]
  })
  seedWeights(tf, m, seed)
  return m
}

function convnet (seed: number): LayersModel {
  const m = L.sequential({
    layers: [
      L.layers.conv2d({ inputShape: [8, 8, 1], filters: 4, kernelSize: 3, padding: 'same', activation: 'relu' }),
      L.layers.maxPooling2d({ poolSize: 2 }),
      L.layers.batchNormalization(),
      L.layers.flatten(),
      L.layers.dense({ units: 3 })
    ]
  })
  seedWeights(tf, m, seed, 0.3)
  return m
}

function randomX (shape: number[], seed: number): HostTensor {
  const u = prng(seed)
  return hostTensor('float32', shape, Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => 2 * u() - 1))
}

async function direct (m: LayersModel, x: HostTensor): Promise<Float32Array> {
  const t = tf.tensor(x.data, x.shape, 'float32')
  const y = m.predict(t) as ReturnType<typeof tf.tensor>
  const out = await y.data<'float32'>()
  t.dispose(); y.dispose()
  return out
}

function compare (got: HostTensor, want: Float32Array, cols: number): void {
  expect(got.data.length).toBe(want.length)
  let worst = 0
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs((got.data[i] as number) - (want[i] as number)))
  expect(worst).toBeLessThan(1e-5)
  const argmax = (d: ArrayLike<number>, row: number): number => {
    let best = 0
    for (let j = 1; j < cols; j++) if ((d[row * cols + j] as number) > (d[row * cols + best] as number)) best = j
    return best
  }
  for (let r = 0; r < want.length / cols; r++) expect(argmax(got.data, r), `row ${r}`).toBe(argmax(want, r))
}

describe('infer', () => {
  it('an MLP over 203 rows in 5 uneven shards through the pool equals model.predict (argmax on every row, |diff| < 1e-5)', async () => {
    const m = mlp(1)
    const model = packModel(await artifactsOf(tf, m))
    const x = randomX([203, 20], 2)
    const { out, plan } = await runSharded(infer, { x }, { batchSize: 16 }, { shards: 5, seed: 4, run: viaPool, blobs: { model } })
    expect(out.shape).toEqual([203, 10])
    expect(plan.params).toEqual({ batchSize: 16, inputShape: [20], outputShape: [10] })
    compare(out, await direct(m, x), 10)
  })

  it('a small conv net on [n, 8, 8, 1] images through the pool equals model.predict', async () => {
    const m = convnet(5)
    const model = packModel(await artifactsOf(tf, m))
    const x = randomX([57, 8, 8, 1], 6)
    const { out } = await runSharded(infer, { x }, {}, { shards: 4, seed: 7, run: viaPool, blobs: { model } })
    expect(out.shape).toEqual([57, 3])
    compare(out, await direct(m, x), 3)
  })

  it('int32 input is cast to float32', async () => {
    const m = mlp(9, 4, 3)
    const model = packModel(await artifactsOf(tf, m))
    const x = hostTensor('int32', [11, 4], Int32Array.from({ length: 44 }, (_, i) => (i % 7) - 3))
    const { out } = await runSharded(infer, { x }, {}, { shards: 3, seed: 1, run: viaPool, blobs: { model } })
    compare(out, await direct(m, hostTensor('float32', [11, 4], Float32Array.from(x.data))), 3)
  })

  it('keeps at most MAX_CACHED_MODELS loaded models per worker, one per distinct blob', async () => {
    const blobs = await Promise.all([1, 2, 3].map(async s => packModel(await artifactsOf(tf, mlp(s, 4, 2)))))
    const x = randomX([3, 4], 1)
    const run = async (model: Uint8Array): Promise<void> => {
      const plan = infer.plan({ x }, {}, { model })
      await infer.map(tf, infer.shard(plan, { x }, { index: 0, start: 0, end: 3 }, { model }))
    }
    const before = cachedModelCount()
    await run(blobs[0] as Uint8Array)
    await run((blobs[0] as Uint8Array).slice()) // same bytes, another array: the same entry
    expect(cachedModelCount()).toBe(before + 1)
    for (const b of blobs) await run(b)
    expect(cachedModelCount()).toBe(MAX_CACHED_MODELS)
  })

  it('refuses bad jobs by code', async () => {
    const model = packModel(await artifactsOf(tf, mlp(1)))
    const x = randomX([4, 20], 1)
    const plan = (inputs: Record<string, unknown>, params: unknown, blobs: unknown = { model }): string | undefined =>
      codeOf(() => infer.plan(inputs as Tensors, params, blobs as Record<string, Uint8Array>))
    expect(plan({ x }, {})).toBeUndefined()
    expect(plan({ x }, {}, {})).toBe('ERR_MISSING_MODEL')
    expect(plan({ x }, {}, { model: 'models/mnist-mlp/model.json' })).toBe('ERR_MISSING_MODEL')
    expect(plan({ x }, {}, { model, extra: model })).toBe('ERR_BAD_INPUT')
    expect(plan({ x }, { model: 'models/mnist-mlp/model.json' })).toBe('ERR_BAD_PARAMS')
    expect(plan({ x }, { batchSize: 0 })).toBe('ERR_BAD_PARAMS')
    expect(plan({ x }, { batchSize: MAX_INFER_BATCH + 1 })).toBe('ERR_BAD_PARAMS')
    expect(plan({ x }, { temperature: 1 })).toBe('ERR_BAD_PARAMS')
    expect(plan({ x: randomX([4, 21], 1) }, {})).toBe('ERR_SHAPE_MISMATCH')
    expect(plan({ x: randomX([4, 20, 1], 1) }, {})).toBe('ERR_SHAPE_MISMATCH')
    expect(plan({ x: randomX([0, 20], 1) }, {})).toBe('ERR_EMPTY_INPUT')
    expect(plan({}, {})).toBe('ERR_MISSING_INPUT')
    expect(plan({ x }, {}, { model: model.subarray(0, 100) })).toBe('ERR_BAD_MODEL')
    const conv1d = L.sequential({ layers: [L.layers.conv1d({ filters: 2, kernelSize: 3, inputShape: [8, 2] })] })
    expect(plan({ x: randomX([2, 8, 2], 1) }, {}, { model: packModel(await artifactsOf(tf, conv1d)) })).toBe('ERR_UNSUPPORTED_MODEL')
  })

  it('validateTask and the worker catch a task whose shapes or weights do not match its model', async () => {
    const art = await artifactsOf(tf, mlp(1))
    const model = packModel(art)
    const x = randomX([4, 20], 1)
    const task = infer.shard(infer.plan({ x }, {}, { model }), { x }, { index: 0, start: 0, end: 4 }, { model })
    expect(infer.validateTask(task)).toBe(4)
    expect(codeOf(() => infer.validateTask({ ...task, params: { ...task.params, outputShape: [11] } }))).toBe('ERR_MODEL_MISMATCH')
    expect(codeOf(() => infer.validateTask({ ...task, params: { ...task.params, outputShape: 'x' } }))).toBe('ERR_BAD_PARAMS')
    const { blobs: _b, ...noBlobs } = task
    expect(codeOf(() => infer.validateTask(noBlobs))).toBe('ERR_MISSING_MODEL')
    expect(await asyncCodeOf(pool.run({ ...task, params: { ...task.params, outputShape: [11] } }))).toBe('ERR_MODEL_MISMATCH')
    // Weights whose bytes fit the specs but whose specs do not fit the topology: the worker's load fails, not the thread.
    const specs = art.weightSpecs as Array<{ name: string, shape: number[], dtype: string }>
    const lying = packModel({ ...art, weightSpecs: specs.map((s, i) => i === 0 ? { ...s, shape: [32, 20] } : s) })
    expect(await asyncCodeOf(pool.run({ ...task, blobs: { model: lying } }))).toBe('ERR_MAP_FAILED')
    // The pool still serves.
    expect((await pool.run(task)).partial.out?.shape).toEqual([4, 10])
  })
})
