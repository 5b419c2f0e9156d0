import { readdir, readFile, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { NSFW_LABELS, writeExampleModels } from '../../scripts/examples-models.ts'
import { loadBackend } from '../../src/compute/backend.ts'
import { SUPPORTED_GRAPH_OPS, SUPPORTED_LAYERS, describeModel, packModel, readModelDir, storedBytes, unpackModel } from '../../src/compute/model.ts'
import { infer } from '../../src/compute/operators/infer.ts'
import { ExecutorPool } from '../../src/compute/pool.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { asyncCodeOf, codeOf } from '../helpers/codes.ts'
import { maxAbsDiff, python, tempDir } from '../helpers/numpy.ts'
import { artifactsOf, loadLayers, seedWeights } from './layers.ts'
import { prng, runSharded } from './shards.ts'
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers'
import type { GraphModel } from '@tensorflow/tfjs-converter'
import type { Tensor } from '@tensorflow/tfjs-core'
import type { ModelArtifacts, ModelArtifactsInput, WeightSpec } from '../../src/compute/model.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'
import type { ShardTask, Tensors, TF } from '../../src/compute/operators/types.ts'
import type { Layers } from './layers.ts'

/**
 * Real pretrained models through the infer operator: nsfwjs's MobileNetV2
 * (a functional layers-model with uint8-quantised weights) and its
 * graph-model sibling, as `npm run examples:models` writes them from
 * node_modules, plus functional toys built here. Every mesh result comes
 * from uneven shards run in an ExecutorPool's worker threads on wasm and is
 * compared with the same model run directly in this process on wasm
 * (predict / executeAsync): |diff| <= 1e-5 on every element. The toy's
 * numbers, quantised or not, are also checked against numpy computing the
 * network (and dequantising the weights) on its own, to 1e-5.
 */

const TOL = 1e-5

let tf: TF
let L: Layers
let C: typeof import('@tensorflow/tfjs-converter')
const pool = new ExecutorPool({ workers: 2, backend: 'wasm', calibrate: false })
const { dir, cleanup } = tempDir()
const modelsDir = join(dir, 'models')
let mobilenet: ModelArtifacts
let graph: ModelArtifacts
let mobilenetLocal: LayersModel
let graphLocal: GraphModel
/** 10 real-ish images: seeded uniform noise in [0, 1], the range nsfwjs feeds (pixel / 255). */
let images: HostTensor

beforeAll(async () => {
  tf = (await loadBackend('wasm')).tf
  L = await loadLayers()
  C = await import('@tensorflow/tfjs-converter')
  await pool.start()
  await writeExampleModels(modelsDir)
  mobilenet = await readModelDir(join(modelsDir, 'mobilenet-v2', 'model.json'))
  graph = await readModelDir(join(modelsDir, 'mobilenet-v2-graph', 'model.json'))
  mobilenetLocal = await L.loadLayersModel(tf.io.fromMemory(mobilenet))
  graphLocal = await C.loadGraphModel(tf.io.fromMemory(graph))
  const u = prng(17)
  images = hostTensor('float32', [10, 224, 224, 3], Float32Array.from({ length: 10 * 224 * 224 * 3 }, () => u()))
})
afterAll(async () => {
  await pool.stop()
  cleanup()
})

const viaPool = async (task: ShardTask): Promise<Tensors> => (await pool.run(task)).partial

async function local (run: (x: Tensor) => Tensor | Promise<Tensor>, x: HostTensor): Promise<Float32Array> {
  const t = tf.tensor(x.data, x.shape, 'float32')
  const y = await run(t)
  const out = await y.data<'float32'>()
  t.dispose(); y.dispose()
  return out
}

const blob = (a: ModelArtifactsInput): Uint8Array => packModel(a)

describe('npm run examples:models', () => {
  it('writes both nsfwjs models from node_modules as model.json + weight files + labels.json, and a second run changes nothing', async () => {
    const again = await writeExampleModels(modelsDir)
    expect(again.map(w => w.changed)).toEqual([0, 0])
    expect(again.map(w => [w.format, w.inputShape, w.outputShape])).toEqual([
      ['layers-model', [224, 224, 3], [5]],
      ['graph-model', [224, 224, 3], [5]]
    ])
    for (const d of ['mobilenet-v2', 'mobilenet-v2-graph']) {
      expect(JSON.parse(await readFile(join(modelsDir, d, 'labels.json'), 'utf8'))).toEqual(['Drawing', 'Hentai', 'Neutral', 'Porn', 'Sexy'])
    }
    expect([...NSFW_LABELS]).toEqual(['Drawing', 'Hentai', 'Neutral', 'Porn', 'Sexy'])
    // nsfwjs ships MobileNetV2 with every weight uint8-quantised: one byte per element in the packed blob.
    expect(mobilenet.weightSpecs.every(s => s.quantization?.dtype === 'uint8')).toBe(true)
    const elements = mobilenet.weightSpecs.reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0)
    expect(mobilenet.weightData.byteLength).toBe(elements)
    expect(mobilenet.weightSpecs.reduce((n, s) => n + storedBytes(s), 0)).toBe(elements)
  })
})

describe('MobileNetV2 (nsfwjs), layers-model', () => {
  it('10 images in 3 uneven shards through the pool equal predict in this process (|diff| <= 1e-5), rows are softmax', async () => {
    const model = blob(mobilenet)
    const { out, plan } = await runSharded(infer, { x: images }, { batchSize: 3 }, { shards: 3, seed: 5, run: viaPool, blobs: { model } })
    expect(out.shape).toEqual([10, 5])
    // ~300M multiply-adds per 224x224 image.
    expect(plan.cost.flopsPerUnit).toBeGreaterThan(5e8)
    const want = await local(t => mobilenetLocal.predict(t) as Tensor, images)
    expect(maxAbsDiff(out.data, want)).toBeLessThanOrEqual(TOL)
    for (let r = 0; r < 10; r++) expect(Math.abs(Array.from(out.data.subarray(r * 5, r * 5 + 5)).reduce((a, b) => a + b, 0) - 1)).toBeLessThan(1e-5)
  })

  it('outputLayer flatten_1 gives the 1280-d pooled embedding: equal to a truncated model in this process, and to the mean of out_relu over 7x7', async () => {
    const model = blob(mobilenet)
    const x = hostTensor('float32', [4, 224, 224, 3], images.data.slice(0, 4 * 224 * 224 * 3))
    const { out, plan } = await runSharded(infer, { x }, { outputLayer: 'flatten_1' }, { shards: 2, seed: 2, run: viaPool, blobs: { model } })
    expect(plan.params.outputShape).toEqual([1280])
    expect(out.shape).toEqual([4, 1280])
    const truncated = (name: string): LayersModel => L.model({ inputs: mobilenetLocal.inputs, outputs: mobilenetLocal.getLayer(name).output as SymbolicTensor })
    expect(maxAbsDiff(out.data, await local(t => truncated('flatten_1').predict(t) as Tensor, x))).toBeLessThanOrEqual(TOL)
    // Independent of the pooling layer: average the last feature map here, in float64.
    const fmap = await local(t => truncated('out_relu').predict(t) as Tensor, x)
    const mean = new Float32Array(4 * 1280)
    for (let r = 0; r < 4; r++) {
      for (let ch = 0; ch < 1280; ch++) {
        let s = 0
        for (let p = 0; p < 49; p++) s += fmap[(r * 49 + p) * 1280 + ch] as number
        mean[r * 1280 + ch] = s / 49
      }
    }
    expect(maxAbsDiff(out.data, mean)).toBeLessThanOrEqual(TOL)
  })
})

describe('MobileNetV2 (nsfwjs mobilenet_v2_mid), graph-model', () => {
  const embedding = 'StatefulPartitionedCall/sequential/keras_layer/StatefulPartitionedCall/StatefulPartitionedCall/StatefulPartitionedCall/predict/feature_vector/SpatialSqueeze'

  it('10 images in 4 uneven shards through the pool equal executeAsync in this process (|diff| <= 1e-5)', async () => {
    const model = blob(graph)
    const { out, plan } = await runSharded(infer, { x: images }, { batchSize: 2 }, { shards: 4, seed: 8, run: viaPool, blobs: { model } })
    expect(plan.params).toEqual({ batchSize: 2, inputShape: [224, 224, 3], outputShape: [5] })
    const want = await local(async t => await graphLocal.executeAsync(t) as Tensor, images)
    expect(maxAbsDiff(out.data, want)).toBeLessThanOrEqual(TOL)
  })

  it('outputLayer names a node: its 1792-d feature vector equals executeAsync of that node here', async () => {
    const model = blob(graph)
    const x = hostTensor('float32', [3, 224, 224, 3], images.data.slice(0, 3 * 224 * 224 * 3))
    const { out } = await runSharded(infer, { x }, { outputLayer: embedding }, { shards: 2, seed: 3, run: viaPool, blobs: { model } })
    expect(out.shape).toEqual([3, 1792])
    expect(maxAbsDiff(out.data, await local(async t => await graphLocal.executeAsync(t, embedding) as Tensor, x))).toBeLessThanOrEqual(TOL)
  })

  it('a task whose shapes do not match its graph is refused by validateTask and by the worker', async () => {
    const model = blob(graph)
    const x = hostTensor('float32', [1, 224, 224, 3], images.data.slice(0, 224 * 224 * 3))
    const task = infer.shard(infer.plan({ x }, {}, { model }), { x }, { index: 0, start: 0, end: 1 }, { model })
    const wrong = { ...task, params: { ...task.params, outputShape: [6] } }
    expect(codeOf(() => infer.validateTask(wrong))).toBe('ERR_MODEL_MISMATCH')
    expect(await asyncCodeOf(pool.run(wrong))).toBe('ERR_MODEL_MISMATCH')
  })
})

/** Functional toy with every merge, a shared layer called twice (inbound node 1) and a 3-way Add. */
function mergeToy (seed: number): LayersModel {
  const x = L.input({ shape: [4], name: 'x' })
  const apply = (layer: { apply: (t: SymbolicTensor | SymbolicTensor[]) => unknown }, t: SymbolicTensor | SymbolicTensor[]): SymbolicTensor => layer.apply(t) as SymbolicTensor
  const d1 = apply(L.layers.dense({ units: 4, activation: 'relu', name: 'd1' }), x)
  const shared = L.layers.dense({ units: 4, name: 'shared' })
  const sum = apply(L.layers.add({ name: 'sum' }), [apply(shared, x), apply(shared, d1), d1])
  const gate = apply(L.layers.dense({ units: 4, activation: 'sigmoid', name: 'gate' }), x)
  const mul = apply(L.layers.multiply({ name: 'mul' }), [sum, gate])
  const cat = apply(L.layers.concatenate({ name: 'cat' }), [mul, x])
  const out = apply(L.layers.dense({ units: 3, activation: 'softmax', name: 'out' }), cat)
  const m = L.model({ inputs: x, outputs: out })
  seedWeights(tf, m, seed)
  return m
}

/** Functional toy of MobileNetV2's own blocks: pad, strided conv, BN, ReLU6, depthwise, residual Add, then merges and a head. */
function convToy (seed: number): LayersModel {
  const x = L.input({ shape: [9, 9, 3] })
  const apply = (layer: { apply: (t: SymbolicTensor | SymbolicTensor[]) => unknown }, t: SymbolicTensor | SymbolicTensor[]): SymbolicTensor => layer.apply(t) as SymbolicTensor
  const pad = apply(L.layers.zeroPadding2d({ padding: [[0, 1], [0, 1]] }), x)
  const c = apply(L.layers.conv2d({ filters: 8, kernelSize: 3, strides: 2, useBias: false }), pad)
  const r = apply(L.layers.reLU({ maxValue: 6 }), apply(L.layers.batchNormalization({ epsilon: 1e-3 }), c))
  const dw = apply(L.layers.reLU({ maxValue: 6 }), apply(L.layers.batchNormalization(), apply(L.layers.depthwiseConv2d({ kernelSize: 3, padding: 'same', useBias: false }), r)))
  const proj = apply(L.layers.batchNormalization(), apply(L.layers.conv2d({ filters: 8, kernelSize: 1, useBias: false }), dw))
  const res = apply(L.layers.add(), [r, proj])
  const cat = apply(L.layers.concatenate({ axis: -1 }), [res, r])
  const gated = apply(L.layers.multiply(), [cat, apply(L.layers.activation({ activation: 'sigmoid' }), cat)])
  const pooled = apply(L.layers.dropout({ rate: 0.5 }), apply(L.layers.globalAveragePooling2d({}), gated))
  const out = apply(L.layers.dense({ units: 4, activation: 'softmax' }), pooled)
  const m = L.model({ inputs: x, outputs: out })
  seedWeights(tf, m, seed, 0.4)
  return m
}

function uniform (shape: number[], seed: number, lo = -1, hi = 1): HostTensor {
  const u = prng(seed)
  return hostTensor('float32', shape, Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => lo + (hi - lo) * u()))
}

/** A copy of float32 artifacts with every weight affine-quantised as tensorflowjs_converter stores it: q = round((w - min) / scale). */
function quantise (a: ModelArtifactsInput, dtype: 'uint8' | 'uint16'): ModelArtifactsInput {
  const specs = a.weightSpecs as WeightSpec[]
  const all = new Float32Array(a.weightData as ArrayBuffer)
  const levels = dtype === 'uint8' ? 255 : 65535
  const parts: Uint8Array[] = []
  const out: WeightSpec[] = []
  let at = 0
  for (const s of specs) {
    const n = s.shape.reduce((x, y) => x * y, 1)
    const w = all.subarray(at, at + n)
    at += n
    const min = Math.min(...w)
    const scale = (Math.max(...w) - min) / levels || 1
    const q = dtype === 'uint8' ? new Uint8Array(n) : new Uint16Array(n)
    for (let i = 0; i < n; i++) q[i] = Math.round(((w[i] as number) - min) / scale)
    parts.push(new Uint8Array(q.buffer))
    out.push({ ...s, quantization: { dtype, scale, min } })
  }
  const data = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0))
  let off = 0
  for (const p of parts) { data.set(p, off); off += p.byteLength }
  return { ...a, weightSpecs: out, weightData: data.buffer }
}

/** The same with float16 halves, rounded by numpy. */
async function quantiseFloat16 (a: ModelArtifactsInput, scratch: string): Promise<ModelArtifactsInput> {
  await writeFile(join(scratch, 'f32.bin'), new Uint8Array(a.weightData as ArrayBuffer))
  python('np.fromfile(d + "/f32.bin", "<f4").astype("<f2").tofile(d + "/f16.bin")', scratch)
  const data = new Uint8Array(await readFile(join(scratch, 'f16.bin')))
  return { ...a, weightSpecs: (a.weightSpecs as WeightSpec[]).map(s => ({ ...s, quantization: { dtype: 'float16' } })), weightData: data.buffer }
}

/** The merge toy computed by numpy from the packed weights, dequantising them itself. */
async function numpyMergeToy (a: ModelArtifactsInput, x: HostTensor, scratch: string): Promise<Float64Array> {
  await writeFile(join(scratch, 'specs.json'), JSON.stringify(a.weightSpecs))
  await writeFile(join(scratch, 'weights.bin'), new Uint8Array(unpackModel(packModel(a)).weightData))
  await writeFile(join(scratch, 'x.bin'), new Uint8Array(x.data.buffer, x.data.byteOffset, x.data.byteLength))
  const printed = python(`
specs = json.load(open(d + '/specs.json')); buf = open(d + '/weights.bin', 'rb').read(); off = 0; W = {}
for s in specs:
    n = int(np.prod(s['shape'])); q = s.get('quantization')
    if q is None: a = np.frombuffer(buf, '<f4', n, off).astype(np.float64); off += 4 * n
    elif q['dtype'] == 'uint8': a = np.frombuffer(buf, np.uint8, n, off) * q['scale'] + q['min']; off += n
    elif q['dtype'] == 'uint16': a = np.frombuffer(buf, '<u2', n, off) * q['scale'] + q['min']; off += 2 * n
    else: a = np.frombuffer(buf, '<f2', n, off).astype(np.float64); off += 2 * n
    W[s['name']] = a.reshape(s['shape'])
assert off == len(buf), (off, len(buf))
x = np.fromfile(d + '/x.bin', '<f4').astype(np.float64).reshape(-1, 4)
dense = lambda v, k: v @ W[k + '/kernel'] + W[k + '/bias']
d1 = np.maximum(dense(x, 'd1'), 0)
s = dense(x, 'shared') + dense(d1, 'shared') + d1
g = 1 / (1 + np.exp(-dense(x, 'gate')))
z = dense(np.concatenate([s * g, x], axis=1), 'out')
e = np.exp(z - z.max(axis=1, keepdims=True))
print(json.dumps((e / e.sum(axis=1, keepdims=True)).ravel().tolist()))
`, scratch)
  return Float64Array.from(JSON.parse(printed) as number[])
}

describe('functional toys', () => {
  it('Add (3-way), Multiply, Concatenate and a shared layer called twice: the pool equals predict and numpy', async () => {
    const m = mergeToy(3)
    const art = await artifactsOf(tf, m)
    const x = uniform([37, 4], 4)
    const { out } = await runSharded(infer, { x }, { batchSize: 5 }, { shards: 4, seed: 1, run: viaPool, blobs: { model: blob(art) } })
    expect(maxAbsDiff(out.data, await local(t => m.predict(t) as Tensor, x))).toBeLessThanOrEqual(TOL)
    const scratch = tempDir()
    try {
      expect(maxAbsDiff(out.data, await numpyMergeToy(art, x, scratch.dir))).toBeLessThanOrEqual(TOL)
    } finally { scratch.cleanup() }
  })

  it('MobileNetV2-style blocks (ZeroPadding2D, strided Conv2D, BatchNormalization, ReLU6, DepthwiseConv2D, residual Add, GlobalAveragePooling2D, Dropout): the pool equals predict', async () => {
    const m = convToy(6)
    const art = await artifactsOf(tf, m)
    expect(describeModel(unpackModel(blob(art)))).toMatchObject({ inputShape: [9, 9, 3], outputShape: [4] })
    const x = uniform([23, 9, 9, 3], 7, 0, 1)
    const { out } = await runSharded(infer, { x }, { batchSize: 4 }, { shards: 3, seed: 2, run: viaPool, blobs: { model: blob(art) } })
    expect(maxAbsDiff(out.data, await local(t => m.predict(t) as Tensor, x))).toBeLessThanOrEqual(TOL)
  })

  it('outputLayer on a Sequential model returns that layer\'s activations, as a truncated model here does', async () => {
    const m = L.sequential({ layers: [L.layers.dense({ units: 7, inputShape: [5], activation: 'tanh', name: 'hidden' }), L.layers.dropout({ rate: 0.5, name: 'drop' }), L.layers.dense({ units: 2, name: 'logits' })] })
    seedWeights(tf, m, 21)
    const x = uniform([29, 5], 22)
    const { out, plan } = await runSharded(infer, { x }, { outputLayer: 'drop', batchSize: 8 }, { shards: 3, seed: 6, run: viaPool, blobs: { model: blob(await artifactsOf(tf, m)) } })
    expect(plan.params).toEqual({ batchSize: 8, inputShape: [5], outputShape: [7], outputLayer: 'drop' })
    const truncated = L.model({ inputs: m.inputs, outputs: m.getLayer('hidden').output as SymbolicTensor })
    expect(maxAbsDiff(out.data, await local(t => truncated.predict(t) as Tensor, x))).toBeLessThanOrEqual(TOL)
  })

  for (const dtype of ['uint8', 'uint16', 'float16'] as const) {
    it(`a ${dtype}-quantised copy packs at ${dtype === 'uint8' ? 1 : 2} byte(s) per weight, loads in the workers and equals predict with the dequantised weights, and numpy`, async () => {
      const m = mergeToy(11)
      const art = await artifactsOf(tf, m)
      const scratch = tempDir()
      try {
        const q = dtype === 'float16' ? await quantiseFloat16(art, scratch.dir) : quantise(art, dtype)
        const packed = blob(q)
        const elements = (art.weightSpecs as WeightSpec[]).reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0)
        expect(unpackModel(packed).weightData.byteLength).toBe(elements * (dtype === 'uint8' ? 1 : 2))
        // The reference: the same network with the weights TF.js will have decoded, set in this process.
        const decoded = await L.loadLayersModel(tf.io.fromMemory(unpackModel(packed)))
        const x = uniform([19, 4], 12)
        const { out } = await runSharded(infer, { x }, {}, { shards: 3, seed: 4, run: viaPool, blobs: { model: packed } })
        const dequantised = mergeToy(99)
        dequantised.setWeights(decoded.getWeights())
        expect(maxAbsDiff(out.data, await local(t => dequantised.predict(t) as Tensor, x))).toBeLessThanOrEqual(TOL)
        expect(maxAbsDiff(out.data, await numpyMergeToy(q, x, scratch.dir))).toBeLessThanOrEqual(TOL)
        // And it is not simply the float32 model: quantisation moved the numbers.
        if (dtype === 'uint8') expect(maxAbsDiff(out.data, await local(t => m.predict(t) as Tensor, x))).toBeGreaterThan(TOL)
        decoded.dispose()
      } finally { scratch.cleanup() }
    })
  }
})

/** A copy of artifacts with the topology edited. */
function edited (a: ModelArtifacts, edit: (topology: Record<string, unknown>) => void): Uint8Array {
  const topology = structuredClone(a.modelTopology)
  edit(topology)
  return packModel({ ...a, modelTopology: topology })
}

function thrown (fn: () => unknown): { code?: string, message: string } {
  try { fn() } catch (err) { return { code: (err as { code?: string }).code, message: (err as Error).message } }
  return { message: 'did not throw' }
}

describe('allow-lists', () => {
  it('name only layer classes tfjs-layers registers and ops tfjs-converter executes', async () => {
    const registered = (tf.serialization.SerializationMap as unknown as { getMap: () => { classNameMap: Record<string, unknown> } }).getMap().classNameMap
    expect(SUPPORTED_LAYERS.filter(name => !(name in registered))).toEqual([])
    const dir = join(dirname(createRequire(import.meta.url).resolve('@tensorflow/tfjs-converter')), 'operations', 'op_list')
    const ops = new Set<string>()
    for (const f of (await readdir(dir)).filter(f => f.endsWith('.js'))) {
      const mod = await import(pathToFileURL(join(dir, f)).href) as { json?: Array<{ tfOpName: string }> }
      for (const op of mod.json ?? []) ops.add(op.tfOpName)
    }
    expect(ops.size).toBeGreaterThan(200)
    expect(SUPPORTED_GRAPH_OPS.filter(name => !ops.has(name))).toEqual([])
  })
})

describe('refusals, before anything starts', () => {
  const x = (): HostTensor => hostTensor('float32', [1, 224, 224, 3], images.data.slice(0, 224 * 224 * 3))
  const layersOf = (t: Record<string, unknown>): Array<Record<string, unknown>> => ((t.model_config as Record<string, unknown>).config as Record<string, unknown>).layers as Array<Record<string, unknown>>
  const nodesOf = (t: Record<string, unknown>): Array<Record<string, unknown>> => t.node as Array<Record<string, unknown>>

  it('a Lambda layer (and any class outside the allow-list), named with its layer', () => {
    const model = edited(mobilenet, t => {
      const layers = layersOf(t)
      const i = layers.findIndex(l => l.name === 'dropout_2')
      layers[i] = { ...layers[i], class_name: 'Lambda', config: { name: 'dropout_2', function: ['4wEAAAAAAAAAAQAAAAQAAABTAAAAcwgAAAB8AGQBGwBTACkCTukC', null, null], function_type: 'lambda' } }
      const j = layers.findIndex(l => l.name === 'dense_2')
      layers[j] = { ...layers[j], class_name: 'MyCustomDense' }
    })
    const e = thrown(() => infer.plan({ x: x() }, {}, { model }))
    expect(e.code).toBe('ERR_UNSUPPORTED_MODEL')
    expect(e.message).toMatch(/Lambda \(dropout_2\)/)
    expect(e.message).toMatch(/MyCustomDense \(dense_2\)/)
  })

  it('an op outside the graph allow-list, named with its node; run-time shapes (Shape) too', () => {
    const softmax = 'StatefulPartitionedCall/sequential/prediction/Softmax'
    const model = edited(graph, t => { const n = nodesOf(t).find(n => n.name === softmax) as Record<string, unknown>; n.op = 'MyFancyOp' })
    const e = thrown(() => infer.plan({ x: x() }, {}, { model }))
    expect(e.code).toBe('ERR_UNSUPPORTED_MODEL')
    expect(e.message).toContain(`MyFancyOp (${softmax})`)
    const shape = edited(graph, t => { const n = nodesOf(t).find(n => n.name === softmax) as Record<string, unknown>; n.op = 'Shape' })
    expect(thrown(() => infer.plan({ x: x() }, {}, { model: shape })).message).toMatch(/unsupported graph ops: Shape/)
    // Control flow lives in graph functions.
    const loop = edited(graph, t => { t.library = { function: [{ signature: { name: 'while_body' } }] } })
    expect(codeOf(() => infer.plan({ x: x() }, {}, { model: loop }))).toBe('ERR_UNSUPPORTED_MODEL')
  })

  it('an outputLayer the model lacks, named', () => {
    for (const model of [blob(mobilenet), blob(graph)]) {
      const e = thrown(() => infer.plan({ x: x() }, { outputLayer: 'no_such_layer' }, { model }))
      expect(e.code).toBe('ERR_BAD_PARAMS')
      expect(e.message).toContain("'no_such_layer'")
    }
    expect(codeOf(() => infer.plan({ x: x() }, { outputLayer: 7 }, { model: blob(mobilenet) }))).toBe('ERR_BAD_PARAMS')
  })

  it('inputs whose shape is not the model\'s, and a model whose layers do not fit together, naming the shapes', () => {
    const gray = hostTensor('float32', [2, 224, 224, 1], new Float32Array(2 * 224 * 224))
    for (const model of [blob(mobilenet), blob(graph)]) {
      const e = thrown(() => infer.plan({ x: gray }, {}, { model }))
      expect(e.code).toBe('ERR_SHAPE_MISMATCH')
      expect(e.message).toContain('[n, 224, 224, 3]')
    }
    // A residual Add whose branches no longer agree: block_2_project has 32 filters instead of 24.
    const broken = edited(mobilenet, t => {
      const l = layersOf(t).find(l => l.name === 'block_2_project') as { config: Record<string, unknown> }
      l.config.filters = 32
    })
    const e = thrown(() => infer.plan({ x: x() }, {}, { model: broken }))
    expect(e.code).toBe('ERR_UNSUPPORTED_MODEL')
    expect(e.message).toMatch(/block_2_add.*\[56, 56, 24\].*\[56, 56, 32\]/)
  })

  it('ReLU knobs tfjs-layers would ignore, unknown activations, bad quantisation', () => {
    const relu = edited(mobilenet, t => { (layersOf(t).find(l => l.name === 'Conv1_relu') as { config: Record<string, unknown> }).config.threshold = 0.5 })
    expect(thrown(() => infer.plan({ x: x() }, {}, { model: relu })).message).toMatch(/Conv1_relu.*threshold/)
    const act = edited(mobilenet, t => { (layersOf(t).find(l => l.name === 'dense_3') as { config: Record<string, unknown> }).config.activation = 'my_activation' })
    expect(codeOf(() => infer.plan({ x: x() }, {}, { model: act }))).toBe('ERR_UNSUPPORTED_MODEL')
    const specs = mobilenet.weightSpecs.map((s, i) => i === 0 ? { ...s, quantization: { dtype: 'int4', scale: 1, min: 0 } } : s)
    expect(codeOf(() => packModel({ ...mobilenet, weightSpecs: specs }))).toBe('ERR_BAD_DTYPE')
    const noScale = mobilenet.weightSpecs.map((s, i) => i === 0 ? { ...s, quantization: { dtype: 'uint8' } } : s)
    expect(codeOf(() => packModel({ ...mobilenet, weightSpecs: noScale }))).toBe('ERR_BAD_MODEL')
  })
})
