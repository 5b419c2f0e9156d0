import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { loadBackend } from '../../src/compute/backend.ts'
import { packModel, viewPackedModel } from '../../src/compute/model.ts'
import { decodeNpy } from '../../src/compute/npy.ts'
import { epochOrder, initModelBytes, initTask, modelTrain, replicaBatch, replicaRows, seedInitializers } from '../../src/compute/operators/model-train.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { codeOf } from '../helpers/codes.ts'
import { maxRelativeError, python, tempDir } from '../helpers/numpy.ts'
import { artifactsOf, loadLayers } from './layers.ts'
import { inProcess, runSharded } from './shards.ts'
import type { Layers } from './layers.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'
import type { TrainLoss } from '../../src/compute/operators/model-train.ts'
import type { TF } from '../../src/compute/operators/types.ts'

/**
 * The model-train operator against numpy: for one Dense layer the gradient
 * of each loss is closed-form (softmax + cross-entropy: x^T (p - onehot);
 * sigmoid + binary cross-entropy: x^T (p - y) / units; linear + mse:
 * x^T 2 (p - y) / units), written here in float64 from the definitions,
 * so TF.js's autodiff through our loss code is checked by something that
 * shares none of it. Tolerance: 1e-4 relative per element (floor 1e-2),
 * float32 sums over 37 rows against float64.
 */
const TOL = 1e-4
const N = 37
const F = 5

const { dir, cleanup } = tempDir()
afterAll(cleanup)

let tf: TF
let layers: Layers
beforeAll(async () => {
  tf = (await loadBackend('wasm')).tf
  layers = await loadLayers()
})

const run = inProcess(modelTrain as never, () => tf)

async function denseModel (units: number, activation: 'softmax' | 'sigmoid' | 'linear'): Promise<Uint8Array> {
  const m = layers.sequential({ layers: [layers.layers.dense({ inputShape: [F], units, activation, kernelInitializer: 'glorotUniform' })] })
  const artifacts = await artifactsOf(tf, m)
  m.dispose()
  // No weights: init seeds the initialisers.
  return packModel({ ...artifacts, weightSpecs: [], weightData: new ArrayBuffer(0) })
}

async function init (model: Uint8Array, loss: TrainLoss, seed = 3): Promise<{ model: Uint8Array, w: Float32Array, trainable: boolean[] }> {
  const out = initModelBytes(await modelTrain.map(tf, initTask(model, loss, seed)))
  const view = viewPackedModel(out.model)
  return { ...out, w: new Float32Array(view.weights.slice().buffer) }
}

function save (name: string, t: HostTensor): void {
  python(`np.save(f'{d}/${name}.npy', np.array(json.loads(sys.argv[2]), dtype=np.${t.dtype}).reshape(${JSON.stringify(t.shape)}))`, dir, [JSON.stringify([...t.data])])
}

const read = (name: string): Float32Array => decodeNpy(readFileSync(join(dir, `${name}.npy`)), name).data as Float32Array

function data (loss: TrainLoss, units: number): { x: HostTensor, y: HostTensor } {
  const x = hostTensor('float32', [N, F], Float32Array.from({ length: N * F }, (_, i) => Math.sin(i * 1.3) * 1.5))
  if (loss === 'sparseCategoricalCrossentropy') return { x, y: hostTensor('int32', [N], Int32Array.from({ length: N }, (_, i) => (i * 5) % units)) }
  if (loss === 'meanSquaredError') return { x, y: hostTensor('float32', [N, units], Float32Array.from({ length: N * units }, (_, i) => Math.cos(i * 0.7))) }
  return { x, y: hostTensor('float32', [N, units], Float32Array.from({ length: N * units }, (_, i) => (i * 7) % 3 === 0 ? 1 : 0)) }
}

/** numpy: [dW, db, loss sum, rows] of one Dense layer, and [loss sum, correct, rows]. */
function reference (loss: TrainLoss, units: number): { grad: Float32Array, evalOut: Float32Array } {
  python(`
x = np.load(f'{d}/x.npy').astype(np.float64); y = np.load(f'{d}/y.npy'); w = np.load(f'{d}/w.npy').astype(np.float64)
F, U = ${F}, ${units}
W = w[:F * U].reshape(F, U); b = w[F * U:F * U + U]
z = x @ W + b
eps = 1e-7
loss = '${loss}'
if loss == 'sparseCategoricalCrossentropy':
    p = np.exp(z - z.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    t = np.eye(U)[y]
    rows = -(t * np.log(np.clip(p, eps, 1 - eps))).sum(1)
    dz = p - t
    right = (p.argmax(1) == y).sum()
elif loss == 'binaryCrossentropy':
    p = 1 / (1 + np.exp(-z)); q = np.clip(p, eps, 1 - eps)
    rows = -(y * np.log(q) + (1 - y) * np.log(1 - q)).mean(1)
    dz = (p - y) / U
    right = ((p > 0.5) == (y > 0.5)).mean(1).sum()
else:
    p = z
    rows = ((p - y) ** 2).mean(1)
    dz = 2 * (p - y) / U
    right = 0
np.save(f'{d}/grad.npy', np.concatenate([(x.T @ dz).ravel(), dz.sum(0), [rows.sum(), len(x)]]).astype(np.float32))
np.save(f'{d}/eval.npy', np.array([rows.sum(), right, len(x)], dtype=np.float32))
`, dir)
  return { grad: read('grad'), evalOut: read('eval') }
}

describe('model-train operator', () => {
  const cases: Array<[TrainLoss, number, 'softmax' | 'sigmoid' | 'linear']> = [
    ['sparseCategoricalCrossentropy', 4, 'softmax'],
    ['binaryCrossentropy', 2, 'sigmoid'],
    ['meanSquaredError', 3, 'linear']
  ]
  for (const [loss, units, activation] of cases) {
    it(`${loss}: grad over uneven shards and eval match numpy's closed form`, async () => {
      const { model, w } = await init(await denseModel(units, activation), loss)
      expect(w.length).toBe(F * units + units)
      const { x, y } = data(loss, units)
      const wt = hostTensor('float32', [w.length], w)
      save('x', x)
      save('y', y)
      save('w', wt)
      const ref = reference(loss, units)
      const inputs = { x, y, w: wt }
      // The batch is a permutation of all rows, so its sum is the full one.
      const { out } = await runSharded(modelTrain, inputs, { mode: 'grad', loss, paramCount: w.length, seed: 9, epoch: 2, offset: 0, batchRows: N }, { shards: 4, seed: 5, run, blobs: { model } })
      expect(maxRelativeError(out.data, ref.grad, 1e-2)).toBeLessThan(TOL)
      expect(out.data[w.length + 1]).toBe(N)
      const evaluated = await runSharded(modelTrain, inputs, { mode: 'eval', loss, paramCount: w.length }, { shards: 3, seed: 6, run, blobs: { model } })
      expect(maxRelativeError(evaluated.out.data, ref.evalOut, 1e-2)).toBeLessThan(TOL)
    })
  }

  it('local: one plain SGD step over all of a replica\'s rows moves w by -lr x the mean gradient', async () => {
    const loss = 'sparseCategoricalCrossentropy'
    const { model, w } = await init(await denseModel(4, 'softmax'), loss)
    const { x, y } = data(loss, 4)
    const inputs = { x, y, w: hostTensor('float32', [w.length], w) }
    const grad = await runSharded(modelTrain, inputs, { mode: 'grad', loss, paramCount: w.length, seed: 1, epoch: 0, offset: 0, batchRows: N }, { shards: 1, seed: 1, run, blobs: { model } })
    const lr = 0.05
    const local = await runSharded(modelTrain, inputs, { mode: 'local', loss, paramCount: w.length, seed: 1, replicas: 1, round: 1, steps: 1, batchSize: N, optimizer: { name: 'sgd', learningRate: lr } }, { shards: 1, seed: 1, run, blobs: { model } })
    // local returns rows x (w' - w) = rows x (-lr x gradSum / rows) = -lr x gradSum.
    const want = Array.from(grad.out.data.subarray(0, w.length), g => -lr * g)
    expect(maxRelativeError(local.out.data.subarray(0, w.length), want, 1e-3)).toBeLessThan(TOL)
    expect(local.out.data[w.length + 1]).toBe(N)
    expect(maxRelativeError([local.out.data[w.length] ?? 0], [grad.out.data[w.length] ?? 0])).toBeLessThan(TOL)
  })

  it('init: the same seed builds the same weights, another seed others; given weights are kept', async () => {
    const bare = await denseModel(4, 'softmax')
    const a = await init(bare, 'sparseCategoricalCrossentropy', 3)
    const b = await init(bare, 'sparseCategoricalCrossentropy', 3)
    const c = await init(bare, 'sparseCategoricalCrossentropy', 4)
    expect([...a.w]).toEqual([...b.w])
    expect([...a.w]).not.toEqual([...c.w])
    expect(a.trainable).toEqual([true, true])
    // The canonical model, trained weights included, is an init's own input: kept as is.
    const again = await init(a.model, 'sparseCategoricalCrossentropy', 99)
    expect([...again.w]).toEqual([...a.w])
    // A hand-written model.json that names no initialiser (Keras' defaults): the seed decides its weights too.
    const plain = packModel({ modelTopology: { class_name: 'Sequential', config: { name: 'plain', layers: [{ class_name: 'Dense', config: { name: 'd', units: 3, activation: 'softmax', batch_input_shape: [null, F] } }] } }, weightSpecs: [], weightData: new ArrayBuffer(0) })
    const p1 = await init(plain, 'sparseCategoricalCrossentropy', 5)
    const p2 = await init(plain, 'sparseCategoricalCrossentropy', 5)
    expect([...p1.w]).toEqual([...p2.w])
    expect([...p1.w]).not.toEqual([...(await init(plain, 'sparseCategoricalCrossentropy', 6)).w])
    const topo = seedInitializers({ model_config: { class_name: 'Sequential', config: { layers: [{ class_name: 'Dense', config: { kernel_initializer: { class_name: 'GlorotUniform', config: {} }, bias_initializer: { class_name: 'Zeros', config: {} } } }] } } }, 1)
    const cfg = ((topo.model_config as { config: { layers: Array<{ config: Record<string, { config: Record<string, unknown> }> }> } }).config.layers[0]?.config) ?? {}
    expect(typeof cfg.kernel_initializer?.config.seed).toBe('number')
    expect(cfg.bias_initializer?.config.seed).toBeUndefined()
  })

  it('a CNN and an Embedding model lose loss over local rounds (BatchNormalization, Dropout, MaxPooling2D on wasm)', async () => {
    const L = layers.layers
    const cnn = layers.sequential({
      layers: [
        L.conv2d({ inputShape: [8, 8, 1], filters: 4, kernelSize: 3, activation: 'relu' }),
        L.batchNormalization(),
        L.maxPooling2d({ poolSize: 2 }),
        L.flatten(),
        L.dropout({ rate: 0.1 }),
        L.dense({ units: 2, activation: 'softmax' })
      ]
    })
    const emb = layers.sequential({ layers: [L.embedding({ inputDim: 20, outputDim: 4, inputLength: 6 }), L.globalAveragePooling1d(), L.dense({ units: 1, activation: 'sigmoid' })] })
    const rows = 64
    // The CNN: is the left half brighter? The embedding: does a "good" token (< 10) outnumber the rest?
    const u = (i: number): number => (Math.sin(i * 12.9898) * 43758.5453) % 1
    const cx = Float32Array.from({ length: rows * 64 }, (_, i) => Math.abs(u(i)) * ((i % 8) < 4 ? (Math.floor(i / 64) % 2 === 0 ? 1 : 0.3) : 0.6))
    const cy = Int32Array.from({ length: rows }, (_, r) => r % 2 === 0 ? 1 : 0)
    const ex = Int32Array.from({ length: rows * 6 }, (_, i) => Math.floor(Math.abs(u(i + 7)) * 10) + (Math.floor(i / 6) % 2 === 0 ? 0 : 10))
    const ey = Float32Array.from({ length: rows }, (_, r) => r % 2 === 0 ? 1 : 0)
    const sets: Array<[typeof cnn, TrainLoss, HostTensor, HostTensor]> = [
      [cnn, 'sparseCategoricalCrossentropy', hostTensor('float32', [rows, 8, 8, 1], cx), hostTensor('int32', [rows], cy)],
      [emb, 'binaryCrossentropy', hostTensor('int32', [rows, 6], ex), hostTensor('float32', [rows, 1], ey)]
    ]
    for (const [m, loss, x, y] of sets) {
      const a = await artifactsOf(tf, m)
      m.dispose()
      const { model, w, trainable } = await init(packModel({ ...a, weightSpecs: [], weightData: new ArrayBuffer(0) }), loss, 1)
      if (m === cnn) expect(trainable.filter(t => !t).length).toBe(2) // batch norm's moving mean and variance
      let wNow = w
      const evalLoss = async (): Promise<number> => {
        const r = await runSharded(modelTrain, { x, y, w: hostTensor('float32', [wNow.length], wNow) }, { mode: 'eval', loss, paramCount: w.length }, { shards: 2, seed: 1, run, blobs: { model } })
        return (r.out.data[0] ?? 0) / rows
      }
      const before = await evalLoss()
      for (let round = 1; round <= 4; round++) {
        const r = await runSharded(modelTrain, { x, y, w: hostTensor('float32', [wNow.length], wNow) }, { mode: 'local', loss, paramCount: w.length, seed: 2, replicas: 2, round, steps: 5, batchSize: 16, optimizer: { name: 'adam', learningRate: 0.02 } }, { shards: 2, seed: round, run, blobs: { model } })
        const count = r.out.data[w.length + 1] ?? 0
        expect(count).toBe(rows)
        wNow = Float32Array.from(wNow, (v, i) => v + (r.out.data[i] ?? 0) / count)
      }
      const after = await evalLoss()
      expect(after).toBeLessThan(before * 0.8)
    }
  })

  it('refuses, by code and naming the problem: labels out of range, rows that do not fit, an unknown loss, a bad optimizer', async () => {
    const { model, w } = await init(await denseModel(3, 'softmax'), 'sparseCategoricalCrossentropy')
    const x = hostTensor('float32', [4, F])
    const wt = hostTensor('float32', [w.length], w)
    const base = { mode: 'grad', loss: 'sparseCategoricalCrossentropy', paramCount: w.length, seed: 1, epoch: 0, offset: 0, batchRows: 4 }
    const plan = (inputs: Record<string, HostTensor>, params: Record<string, unknown>): unknown => modelTrain.plan(inputs, params, { model })
    expect(codeOf(() => plan({ x, y: hostTensor('int32', [4], Int32Array.of(0, 1, 3, 2)), w: wt }, base))).toBe('ERR_BAD_LABEL')
    expect(() => plan({ x, y: hostTensor('int32', [4], Int32Array.of(0, 1, 3, 2)), w: wt }, base)).toThrow(/y\[2\] is 3, out of range for the model's 3 classes/)
    expect(codeOf(() => plan({ x: hostTensor('float32', [4, F + 1]), y: hostTensor('int32', [4]), w: wt }, base))).toBe('ERR_SHAPE_MISMATCH')
    expect(codeOf(() => plan({ x, y: hostTensor('int32', [4]), w: wt }, { ...base, loss: 'hinge' }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => plan({ x, y: hostTensor('int32', [4]), w: wt }, { ...base, mode: 'local', replicas: 1, round: 1, steps: 1, batchSize: 2, optimizer: { name: 'adamw' } }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => plan({ x, y: hostTensor('int32', [4]), w: wt }, { ...base, mode: 'local', replicas: 1, round: 1, steps: 0, batchSize: 2, optimizer: 'adam' }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => plan({ x, y: hostTensor('int32', [4]), w: hostTensor('float32', [3]) }, base))).toBe('ERR_MODEL_MISMATCH')
    expect(codeOf(() => plan({ x, y: hostTensor('int32', [4]), w: wt }, { ...base, batchRows: 5 }))).toBe('ERR_BAD_PARAMS')
  })

  it('row orders: an epoch is a permutation of every row; replicas split the rows and each walks its own, pass after pass', () => {
    const n = 50
    const e = epochOrder(n, 7, 3)
    expect([...e].sort((a, b) => a - b)).toEqual(Array.from({ length: n }, (_, i) => i))
    expect([...epochOrder(n, 7, 4)]).not.toEqual([...e])
    const seen: number[] = []
    for (let r = 0; r < 3; r++) {
      const [lo, hi] = replicaRows(n, 3, r)
      // Two passes: each of the replica's rows twice, none of another's.
      const b = [...replicaBatch(n, 3, r, 5, 0, 2 * (hi - lo))]
      expect(b.every(i => i >= lo && i < hi)).toBe(true)
      expect([...b.slice(0, hi - lo)].sort((a, c) => a - c)).toEqual(Array.from({ length: hi - lo }, (_, i) => lo + i))
      expect([...b.slice(hi - lo)].sort((a, c) => a - c)).toEqual(Array.from({ length: hi - lo }, (_, i) => lo + i))
      seen.push(...b.slice(0, hi - lo))
    }
    expect(seen.sort((a, b) => a - b)).toEqual(Array.from({ length: n }, (_, i) => i))
  })
})
