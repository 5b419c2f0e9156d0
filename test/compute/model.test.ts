import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadBackend } from '../../src/compute/backend.ts'
import { MAX_MODEL_HEADER_BYTES, describeModel, modelSignature, packModel, readModelDir, unpackModel, writeModelDir } from '../../src/compute/model.ts'
import { tempDir } from '../helpers/numpy.ts'
import { artifactsOf, loadLayers, seedWeights } from './layers.ts'
import { codeOf } from '../helpers/codes.ts'
import type { LayersModel } from '@tensorflow/tfjs-layers'
import type { ModelArtifacts, ModelArtifactsInput } from '../../src/compute/model.ts'
import type { Layers } from './layers.ts'
import type { TF } from '../../src/compute/operators/types.ts'

/**
 * Packed models and model folders. Without tfjs-node there is no file://
 * handler in Node, so models read back from disk are loaded through
 * tf.io.fromMemory, the same path the infer operator's workers take.
 */

let tf: TF
let L: Layers
const { dir, cleanup } = tempDir()
beforeAll(async () => { tf = (await loadBackend('cpu')).tf; L = await loadLayers() })
afterAll(cleanup)

function mlp (): LayersModel {
  const m = L.sequential({ layers: [L.layers.dense({ units: 6, inputShape: [4], activation: 'relu' }), L.layers.dropout({ rate: 0.2 }), L.layers.dense({ units: 3, activation: 'softmax' })] })
  seedWeights(tf, m, 1)
  return m
}

async function predict (model: LayersModel, x: Float32Array, features: number[]): Promise<Float32Array> {
  const t = tf.tensor(x, [x.length / features.reduce((a, b) => a * b, 1), ...features])
  const y = model.predict(t) as ReturnType<typeof tf.tensor>
  const out = await y.data<'float32'>()
  t.dispose(); y.dispose()
  return out
}

const X = Float32Array.from({ length: 20 }, (_, i) => Math.sin(i))

/** Rewrites the JSON header of a packed model and re-pads it. */
function withHeader (packed: Uint8Array, edit: (h: Record<string, unknown>) => void): Uint8Array {
  const len = new DataView(packed.buffer, packed.byteOffset).getUint32(8, true)
  const h = JSON.parse(new TextDecoder().decode(packed.subarray(12, 12 + len))) as Record<string, unknown>
  const weights = packed.subarray((12 + len + 3) & ~3)
  edit(h)
  const json = new TextEncoder().encode(JSON.stringify(h))
  const at = (12 + json.length + 3) & ~3
  const out = new Uint8Array(at + weights.length)
  out.set(packed.subarray(0, 8))
  new DataView(out.buffer).setUint32(8, json.length, true)
  out.set(json, 12)
  out.set(weights, at)
  return out
}

describe('packModel / unpackModel', () => {
  it('round-trips a Layers model: same topology, specs and weight bytes, same predictions after loading', async () => {
    const m = mlp()
    const art = await artifactsOf(tf, m)
    const packed = packModel(art)
    const back = unpackModel(packed)
    expect(back.modelTopology).toEqual(art.modelTopology)
    expect(back.weightSpecs).toEqual(art.weightSpecs)
    expect(new Uint8Array(back.weightData)).toEqual(new Uint8Array(art.weightData as ArrayBuffer))
    expect(back.format).toBe('layers-model')
    const loaded = await L.loadLayersModel(tf.io.fromMemory(back))
    expect(Array.from(await predict(loaded, X, [4]))).toEqual(Array.from(await predict(m, X, [4])))
    // Weights given as a list of buffers or a view pack to the same bytes.
    const buf = art.weightData as ArrayBuffer
    expect(packModel({ ...art, weightData: [buf.slice(0, 10), buf.slice(10)] })).toEqual(packed)
    expect(packModel({ ...art, weightData: new Uint8Array(buf) })).toEqual(packed)
  })

  it('refuses malformed bytes by code, before allocating', async () => {
    const art = await artifactsOf(tf, mlp())
    const packed = packModel(art)
    const head = new DataView(packed.buffer)
    const len = head.getUint32(8, true)
    expect(codeOf(() => unpackModel(new Uint8Array(4)))).toBe('ERR_BAD_MODEL')
    expect(codeOf(() => unpackModel(Uint8Array.from([...packed.subarray(0, 7), 0x32, ...packed.subarray(8)])))).toBe('ERR_BAD_MODEL')
    const huge = packed.slice(); new DataView(huge.buffer).setUint32(8, MAX_MODEL_HEADER_BYTES + 1, true)
    expect(codeOf(() => unpackModel(huge))).toBe('ERR_LIMIT_EXCEEDED')
    const long = packed.slice(); new DataView(long.buffer).setUint32(8, packed.length, true)
    expect(codeOf(() => unpackModel(long))).toBe('ERR_BAD_MODEL')
    expect(codeOf(() => unpackModel(Uint8Array.from([...packed, 0])))).toBe('ERR_BAD_MODEL') // trailing byte
    expect(codeOf(() => unpackModel(packed.subarray(0, packed.length - 4)))).toBe('ERR_BAD_MODEL') // short weights
    const notJson = packed.slice(); notJson[12] = 0x7b + 1
    expect(codeOf(() => unpackModel(notJson))).toBe('ERR_BAD_MODEL')
    expect(len).toBeGreaterThan(0)
    const spec = (f: (s: Record<string, unknown>) => void): Uint8Array => withHeader(packed, h => { f((h.weightSpecs as Array<Record<string, unknown>>)[0] as Record<string, unknown>) })
    expect(codeOf(() => unpackModel(spec(s => { s.dtype = 'float16' })))).toBe('ERR_BAD_DTYPE')
    // A quantised spec is read at its stored width: uint8 needs a quarter of the bytes these specs had.
    expect(codeOf(() => unpackModel(spec(s => { s.quantization = { dtype: 'uint8', scale: 1, min: 0 } })))).toBe('ERR_BAD_MODEL')
    expect(codeOf(() => unpackModel(spec(s => { s.quantization = { dtype: 'int4', scale: 1, min: 0 } })))).toBe('ERR_BAD_DTYPE')
    expect(codeOf(() => unpackModel(spec(s => { s.quantization = { dtype: 'uint8' } })))).toBe('ERR_BAD_MODEL') // no scale, min
    expect(codeOf(() => unpackModel(spec(s => { s.dtype = 'int32'; s.quantization = { dtype: 'float16' } })))).toBe('ERR_BAD_MODEL')
    expect(codeOf(() => unpackModel(spec(s => { s.group = 'optimizer' })))).toBe('ERR_BAD_MODEL')
    expect(codeOf(() => unpackModel(spec(s => { s.shape = [4, -6] })))).toBe('ERR_BAD_MODEL')
    expect(codeOf(() => unpackModel(spec(s => { s.shape = [5, 6] })))).toBe('ERR_BAD_MODEL') // specs no longer match the bytes
    expect(codeOf(() => unpackModel(spec(s => { s.shape = [1e6, 1e6] })))).toBe('ERR_LIMIT_EXCEEDED')
    expect(codeOf(() => unpackModel(withHeader(packed, h => { h.modelTopology = [] })))).toBe('ERR_BAD_MODEL')
    expect(codeOf(() => unpackModel(withHeader(packed, h => { h.extra = 1 })))).toBe('ERR_BAD_MODEL')
    expect(codeOf(() => packModel({ ...art, weightData: new ArrayBuffer(4) }))).toBe('ERR_BAD_MODEL')
  })
})

describe('readModelDir / writeModelDir', () => {
  it('writes TF.js\'s own layout and reads it back into a model that predicts the same', async () => {
    const m = mlp()
    const path = await writeModelDir(join(dir, 'mlp'), await artifactsOf(tf, m))
    const json = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>
    expect(Object.keys(json).sort()).toEqual(['convertedBy', 'format', 'generatedBy', 'modelTopology', 'weightsManifest'])
    expect(json.weightsManifest).toEqual([{ paths: ['weights.bin'], weights: (await artifactsOf(tf, m)).weightSpecs }])
    const read = await readModelDir(path)
    const loaded = await L.loadLayersModel(tf.io.fromMemory(read))
    expect(Array.from(await predict(loaded, X, [4]))).toEqual(Array.from(await predict(m, X, [4])))
  })

  it('reads weights split over several files in manifest order, and refuses paths outside the folder or short files', async () => {
    const art = unpackModel(packModel(await artifactsOf(tf, mlp()))) as ModelArtifacts
    const d = join(dir, 'split')
    await mkdir(d, { recursive: true })
    const w = new Uint8Array(art.weightData)
    await writeFile(join(d, 'group1-shard1of2.bin'), w.subarray(0, 40))
    await writeFile(join(d, 'group1-shard2of2.bin'), w.subarray(40))
    const manifest = (paths: string[]): string => JSON.stringify({ modelTopology: art.modelTopology, format: 'layers-model', weightsManifest: [{ paths, weights: art.weightSpecs }] })
    await writeFile(join(d, 'model.json'), manifest(['group1-shard1of2.bin', 'group1-shard2of2.bin']))
    expect(new Uint8Array((await readModelDir(join(d, 'model.json'))).weightData)).toEqual(w)
    const code = async (paths: string[]): Promise<string | undefined> => {
      await writeFile(join(d, 'model.json'), manifest(paths))
      try { await readModelDir(join(d, 'model.json')) } catch (err) { return (err as { code?: string }).code }
      return undefined
    }
    expect(await code(['../split/group1-shard1of2.bin', 'group1-shard2of2.bin'])).toBe('ERR_BAD_MODEL')
    expect(await code(['/etc/passwd'])).toBe('ERR_BAD_MODEL')
    expect(await code(['group1-shard1of2.bin'])).toBe('ERR_BAD_MODEL')
    expect(await code(['group1-shard1of2.bin', 'group1-shard2of2.bin', 'group1-shard2of2.bin'])).toBe('ERR_BAD_MODEL')
    // A weight file the manifest names and the folder lacks; a format no loader here reads.
    expect(await code(['group1-shard1of2.bin', 'missing.bin'])).toBe('ERR_BAD_MODEL')
    await writeFile(join(d, 'model.json'), JSON.stringify({ modelTopology: art.modelTopology, format: 'saved-model', weightsManifest: [{ paths: ['group1-shard1of2.bin', 'group1-shard2of2.bin'], weights: art.weightSpecs }] }))
    // The coordinator's plan reads the model with describeModel before any shard: refused there, by name.
    expect(codeOf(() => describeModel(unpackModel(packModel(art)) as ModelArtifacts))).toBeUndefined()
    const odd = await readModelDir(join(d, 'model.json'))
    expect(() => describeModel(odd)).toThrow(/format 'saved-model' is not supported/)
    expect(codeOf(() => describeModel(odd))).toBe('ERR_UNSUPPORTED_MODEL')
  })
})

describe('modelSignature', () => {
  async function realShapes (m: LayersModel): Promise<{ sig: ReturnType<typeof modelSignature>, want: { inputShape: number[], outputShape: number[] } }> {
    const art: ModelArtifactsInput = await artifactsOf(tf, m)
    const sig = modelSignature(unpackModel(packModel(art)).modelTopology)
    return { sig, want: { inputShape: (m.inputs[0]?.shape ?? []).slice(1) as number[], outputShape: (m.outputs[0]?.shape ?? []).slice(1) as number[] } }
  }

  it('reads input and output shapes as tfjs-layers builds them', async () => {
    const models: LayersModel[] = [
      mlp(),
      L.sequential({
        layers: [
          L.layers.conv2d({ inputShape: [28, 28, 1], filters: 4, kernelSize: 5, strides: 2, padding: 'same' }),
          L.layers.maxPooling2d({ poolSize: 2 }),
          L.layers.conv2d({ filters: 3, kernelSize: [3, 2], padding: 'valid', activation: 'relu' }),
          L.layers.averagePooling2d({ poolSize: 2, strides: 1 }),
          L.layers.batchNormalization(),
          L.layers.flatten(),
          L.layers.dense({ units: 10 }),
          L.layers.softmax(),
          L.layers.reshape({ targetShape: [2, -1] })
        ]
      }),
      L.sequential({ layers: [L.layers.inputLayer({ inputShape: [5, 6] }), L.layers.dense({ units: 2 })] }),
      L.sequential({ layers: [L.layers.conv2d({ inputShape: [9, 9, 2], filters: 2, kernelSize: 3, dilationRate: 2 }), L.layers.globalAveragePooling2d({})] })
    ]
    const inp = L.input({ shape: [2, 3] })
    const out = L.layers.dense({ units: 4 }).apply(L.layers.flatten().apply(inp)) as ReturnType<typeof L.input>
    models.push(L.model({ inputs: inp, outputs: out }))
    // Functional graphs: merges, padding and cropping, depthwise and separable convs, a shared layer called twice.
    type Sym = ReturnType<typeof L.input>
    const on = (layer: { apply: (t: Sym | Sym[]) => unknown }, t: Sym | Sym[]): Sym => layer.apply(t) as Sym
    const img = L.input({ shape: [11, 13, 3] })
    const padded = on(L.layers.zeroPadding2d({ padding: [[1, 2], [0, 3]] }), img)
    const conv = on(L.layers.conv2d({ filters: 6, kernelSize: [3, 2], strides: 2, padding: 'same' }), padded)
    const dw = on(L.layers.depthwiseConv2d({ kernelSize: 3, depthMultiplier: 2, padding: 'same' }), conv)
    const sep = on(L.layers.separableConv2d({ filters: 12, kernelSize: 3, padding: 'same' }), conv)
    const sum = on(L.layers.add(), [dw, sep])
    const shared = L.layers.conv2d({ filters: 12, kernelSize: 1 })
    const merged = on(L.layers.concatenate(), [on(L.layers.multiply(), [on(shared, sum), on(shared, dw)]), on(L.layers.minimum(), [sum, dw]), on(L.layers.maximum(), [sum, dw])])
    const up = on(L.layers.upSampling2d({ size: [2, 3] }), on(L.layers.cropping2D({ cropping: [[1, 0], [0, 1]] }), merged))
    const pooled = on(L.layers.maxPooling2d({ poolSize: 3, strides: 2, padding: 'valid' }), on(L.layers.reLU({ maxValue: 6 }), on(L.layers.batchNormalization(), up)))
    const head = on(L.layers.permute({ dims: [2, 1, 3] }), on(L.layers.average(), [pooled, on(L.layers.activation({ activation: 'hardSigmoid' }), pooled)]))
    models.push(L.model({ inputs: img, outputs: on(L.layers.dense({ units: 5 }), on(L.layers.globalAveragePooling2d({}), head)) }))
    models.push(L.model({ inputs: img, outputs: head }))
    for (const m of models) {
      const { sig, want } = await realShapes(m)
      expect(sig.inputShape).toEqual(want.inputShape)
      // tfjs-layers leaves Reshape's free dimension null; a real prediction has it.
      expect(sig.outputShape).toEqual(want.outputShape.map((d, i) => d ?? sig.outputShape[i]))
      const y = m.predict(tf.zeros([2, ...sig.inputShape])) as ReturnType<typeof tf.zeros>
      expect(y.shape).toEqual([2, ...sig.outputShape])
      y.dispose()
    }
  })

  it('refuses what it cannot follow, naming the layer', async () => {
    const conv1d = L.sequential({ layers: [L.layers.conv1d({ filters: 2, kernelSize: 3, inputShape: [8, 2] })] })
    const art = await artifactsOf(tf, conv1d)
    expect(codeOf(() => modelSignature(art.modelTopology))).toBe('ERR_UNSUPPORTED_MODEL')
    expect(() => modelSignature(art.modelTopology)).toThrow(/Conv1D/)
    const a = L.input({ shape: [3] })
    const b = L.input({ shape: [3] })
    const two = L.model({ inputs: [a, b], outputs: L.layers.add().apply([a, b]) as ReturnType<typeof L.input> })
    expect(codeOf(() => modelSignature((two.toJSON(null, false) as unknown) as Record<string, unknown>))).toBe('ERR_UNSUPPORTED_MODEL')
    expect(codeOf(() => modelSignature({ class_name: 'Sequential', config: { layers: [{ class_name: 'Dense', config: { units: 2 } }] } }))).toBe('ERR_UNSUPPORTED_MODEL') // no input shape
    expect(codeOf(() => modelSignature({ class_name: 'Sequential', config: { layers: [{ class_name: 'Dense', config: { units: 2, batch_input_shape: [8, 3] } }] } }))).toBe('ERR_UNSUPPORTED_MODEL') // fixed batch
    expect(codeOf(() => modelSignature({ class_name: 'GraphModel' }))).toBe('ERR_UNSUPPORTED_MODEL')
  })
})
