import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadBackend } from '../../src/compute/backend.ts'
import { readModelDir } from '../../src/compute/model.ts'
import { writeNpyFile } from '../../src/compute/npy.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { MeshClient } from '../../src/node/client/index.ts'
import { TEST_TOKEN, startMesh, stopAll } from '../helpers/mesh.ts'
import { submitJson } from '../helpers/submit.ts'
import { artifactsOf, loadLayers } from '../compute/layers.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'
import type { MeshNode } from '../../src/node/mesh-node.ts'
import type { TF } from '../../src/compute/operators/types.ts'
import type { Layers } from '../compute/layers.ts'

/**
 * `train` with a model.json over a real 3-node mesh, through the CLI's
 * submit as a user runs it: a small CNN in step mode and an Embedding model
 * in local (DiLoCo) mode. The loss falls, the rounds run on more than one
 * peer, and the model `--out` writes loads in TF.js here and scores the
 * held-out rows as the job's last epoch says it did (the same weights,
 * evaluated independently: model.predict in this process, on this
 * process's own backend, against the labels).
 */

/** Held-out rows the two evaluations may disagree on: float32 sums in a different order can flip a row sitting on 0.5 or on a tie. */
const SLACK_ROWS = 1

const u = (i: number): number => Math.abs((Math.sin(i * 12.9898 + 1.1) * 43758.5453) % 1)

/** 8x8 images, 4 classes: the brightest quadrant. */
function quadrants (rows: number, seed: number): { x: HostTensor, y: HostTensor } {
  const x = new Float32Array(rows * 64)
  const y = new Int32Array(rows)
  for (let r = 0; r < rows; r++) {
    const c = Math.floor(u(seed + r) * 4)
    y[r] = c
    for (let p = 0; p < 64; p++) {
      const q = (Math.floor(p / 8) < 4 ? 0 : 2) + ((p % 8) < 4 ? 0 : 1)
      x[r * 64 + p] = u(seed * 977 + r * 64 + p) * (q === c ? 1 : 0.5)
    }
  }
  return { x: hostTensor('float32', [rows, 8, 8, 1], x), y: hostTensor('int32', [rows], y) }
}

/** Sequences of 10 tokens of 30; positive when tokens below 15 are the majority. */
function sentiment (rows: number, seed: number): { x: HostTensor, y: HostTensor } {
  const x = new Int32Array(rows * 10)
  const y = new Float32Array(rows)
  for (let r = 0; r < rows; r++) {
    const positive = u(seed + r) < 0.5
    let low = 0
    for (let t = 0; t < 10; t++) {
      const tok = Math.floor(u(seed * 31 + r * 10 + t) * 15) + ((u(seed * 17 + r * 10 + t) < 0.8) === positive ? 0 : 15)
      x[r * 10 + t] = tok
      if (tok < 15) low++
    }
    y[r] = low > 5 ? 1 : 0
  }
  return { x: hostTensor('int32', [rows, 10], x), y: hostTensor('float32', [rows, 1], y) }
}

describe('train a layers-model over the mesh', () => {
  let nodes: MeshNode[] = []
  let work: string
  let tf: TF
  let layers: Layers
  const quadTest = quadrants(128, 2)
  const sentTest = sentiment(128, 4)
  let quadFiles: Record<string, string>
  let sentFiles: Record<string, string>

  // Every test's models and data, written once: each test stands on its own.
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'tm-train-model-'))
    tf = (await loadBackend('wasm')).tf
    layers = await loadLayers()
    const L = layers.layers
    await writeModel('cnn', layers.sequential({
      layers: [
        L.conv2d({ inputShape: [8, 8, 1], filters: 4, kernelSize: 3, padding: 'same', activation: 'relu' }),
        L.maxPooling2d({ poolSize: 2 }),
        L.flatten(),
        L.dense({ units: 4, activation: 'softmax' })
      ]
    }))
    await writeModel('emb', layers.sequential({
      layers: [
        L.embedding({ inputDim: 30, outputDim: 8, inputLength: 10 }),
        L.globalAveragePooling1d(),
        L.dense({ units: 1, activation: 'sigmoid' })
      ]
    }))
    quadFiles = await writeData('quad', quadrants(384, 1), quadTest)
    sentFiles = await writeData('sent', sentiment(600, 3), sentTest)
    nodes = await startMesh(3, () => ({ workers: 1 }))
  })

  afterAll(async () => {
    await stopAll(nodes)
    await rm(work, { recursive: true, force: true })
  })

  /** model.json without weights: the job starts from the layers' seeded initialisers. */
  async function writeModel (name: string, model: ReturnType<Layers['sequential']>): Promise<void> {
    const a = await artifactsOf(tf, model)
    model.dispose()
    mkdirSync(join(work, name), { recursive: true })
    writeFileSync(join(work, name, 'model.json'), JSON.stringify({ format: 'layers-model', modelTopology: a.modelTopology }))
  }

  async function writeData (prefix: string, train: { x: HostTensor, y: HostTensor }, test: { x: HostTensor, y: HostTensor }): Promise<Record<string, string>> {
    const files: Record<string, string> = { x: `${prefix}-x.npy`, y: `${prefix}-y.npy`, xTest: `${prefix}-test-x.npy`, yTest: `${prefix}-test-y.npy` }
    await writeNpyFile(join(work, files.x as string), train.x)
    await writeNpyFile(join(work, files.y as string), train.y)
    await writeNpyFile(join(work, files.xTest as string), test.x)
    await writeNpyFile(join(work, files.yTest as string), test.y)
    return files
  }

  const submit = async (file: string, out: string): Promise<{ code: number, line: Record<string, unknown> }> => await submitJson(nodes[0]?.apiUrl ?? '', file, out)

  /** Right predictions of the saved model on the held-out rows, in this process. */
  async function heldOutRight (dir: string, test: { x: HostTensor, y: HostTensor }, binary: boolean): Promise<number> {
    const model = await layers.loadLayersModel(tf.io.fromMemory(await readModelDir(join(dir, 'model.json'))))
    const p = tf.tidy(() => (model.predict(tf.tensor(Float32Array.from(test.x.data), test.x.shape, 'float32')) as ReturnType<TF['tensor']>).dataSync())
    model.dispose()
    const rows = test.x.shape[0] as number
    let right = 0
    for (let r = 0; r < rows; r++) {
      if (binary) right += ((p[r] ?? 0) > 0.5) === ((test.y.data[r] ?? 0) > 0.5) ? 1 : 0
      else {
        const row = Array.from(p.subarray(r * 4, r * 4 + 4))
        right += row.indexOf(Math.max(...row)) === test.y.data[r] ? 1 : 0
      }
    }
    return right
  }

  interface Metrics { rounds: Array<{ round: number, loss: number, accuracy: number, testLoss: number, peers: number }>, progress: { done: number, total: number, unit: string }, wireBytes: number }

  it('a CNN in step mode: loss falls, steps spread over the peers, the saved model scores as the last epoch did', async () => {
    const test = quadTest
    writeFileSync(join(work, 'cnn.json'), JSON.stringify({
      op: 'train',
      inputs: quadFiles,
      params: { model: 'cnn/model.json', loss: 'sparseCategoricalCrossentropy', optimizer: { name: 'adam', learningRate: 0.02 }, batchSize: 32, epochs: 3, seed: 1, sync: { mode: 'step' } }
    }))
    const out = join(work, 'cnn-out')
    const { code, line } = await submit(join(work, 'cnn.json'), out)
    expect(line.error).toBeUndefined()
    expect(code).toBe(0)
    const metrics = line.metrics as Metrics
    expect(metrics.rounds.map(r => r.round)).toEqual([1, 2, 3])
    expect(metrics.progress).toEqual({ done: 36, total: 36, unit: 'steps' })
    const [first, , last] = metrics.rounds
    expect(last?.testLoss).toBeLessThan((first?.testLoss ?? 0) * 0.8)
    expect(last?.accuracy).toBeGreaterThan(0.6)
    expect(Math.max(...metrics.rounds.map(r => r.peers))).toBeGreaterThan(1)
    expect(metrics.wireBytes).toBeGreaterThan(0)
    const right = await heldOutRight(out, test, false)
    expect(Math.abs(right - (last?.accuracy ?? 0) * 128)).toBeLessThanOrEqual(SLACK_ROWS)
  })

  it('an Embedding model in local mode (DiLoCo): loss falls, rounds spread over the peers, the saved model scores as reported', async () => {
    const test = sentTest
    writeFileSync(join(work, 'emb.json'), JSON.stringify({
      op: 'train',
      inputs: sentFiles,
      params: { model: 'emb/model.json', loss: 'binaryCrossentropy', optimizer: { name: 'adam', learningRate: 0.02 }, batchSize: 20, epochs: 4, seed: 2, sync: { mode: 'local', steps: 5, replicas: 3, outerLearningRate: 0.7, outerMomentum: 0.9 } }
    }))
    const out = join(work, 'emb-out')
    const { code, line } = await submit(join(work, 'emb.json'), out)
    expect(line.error).toBeUndefined()
    expect(code).toBe(0)
    const metrics = line.metrics as Metrics
    // 600 rows / (3 replicas x 5 steps x 20 rows) = 2 rounds per epoch.
    expect(metrics.progress).toEqual({ done: 8, total: 8, unit: 'rounds' })
    const first = metrics.rounds[0]
    const last = metrics.rounds.at(-1)
    expect(last?.testLoss).toBeLessThan((first?.testLoss ?? 0) * 0.9)
    expect(last?.accuracy).toBeGreaterThan(0.75)
    expect(Math.max(...metrics.rounds.map(r => r.peers))).toBeGreaterThan(1)
    const right = await heldOutRight(out, test, true)
    expect(Math.abs(right - (last?.accuracy ?? 0) * 128)).toBeLessThanOrEqual(SLACK_ROWS)
  })

  it('refuses before anything starts: a batch larger than the data, labels out of range, x that does not fit, token ids past the Embedding, sync.steps < 1, butterfly with verify, an unsupported layer, a graph-model', async () => {
    const client = new MeshClient(nodes[0]?.apiUrl ?? '', { token: TEST_TOKEN })
    const base = { op: 'train', inputs: { x: 'quad-x.npy', y: 'quad-y.npy', xTest: 'quad-test-x.npy', yTest: 'quad-test-y.npy' } }
    const cases: Array<[string, Record<string, unknown>, string, RegExp]> = [
      ['big-batch', { ...base, params: { model: 'cnn/model.json', batchSize: 1000 } }, 'ERR_BAD_PARAMS', /batchSize is 1000 but x has 384 rows/],
      ['steps', { ...base, params: { model: 'cnn/model.json', sync: { mode: 'local', steps: 0 } } }, 'ERR_BAD_PARAMS', /sync.steps must be an integer from 1/],
      ['verified-butterfly', { ...base, verify: { replicas: 2 }, params: { model: 'cnn/model.json', sync: { mode: 'local', steps: 2, averaging: 'butterfly' } } }, 'ERR_BAD_PARAMS', /"butterfly" cannot be verified/],
      ['x-shape', { ...base, inputs: { ...base.inputs, x: 'sent-x.npy', y: 'sent-y.npy' }, params: { model: 'cnn/model.json' } }, 'ERR_SHAPE_MISMATCH', /x is int32\[600, 10\] but the model takes \[n, 8, 8, 1\]/],
      ['labels', { ...base, params: { model: 'emb/model.json', loss: 'sparseCategoricalCrossentropy' } }, 'ERR_SHAPE_MISMATCH', /x is float32\[384, 8, 8, 1\]/]
    ]
    // Labels out of range: 4 classes' labels against a 2-class copy of the CNN.
    const small = JSON.parse(JSON.stringify((await readModelDir(join(work, 'cnn', 'model.json'))).modelTopology).replace('"units":4', '"units":2')) as Record<string, unknown>
    mkdirSync(join(work, 'cnn2'), { recursive: true })
    writeFileSync(join(work, 'cnn2', 'model.json'), JSON.stringify({ format: 'layers-model', modelTopology: small }))
    cases.push(['range', { ...base, params: { model: 'cnn2/model.json' } }, 'ERR_BAD_LABEL', /y\[\d+\] is [23], out of range for the model's 2 classes/])
    const lambda = JSON.parse(JSON.stringify(small).replace('"class_name":"Flatten"', '"class_name":"Lambda"')) as Record<string, unknown>
    mkdirSync(join(work, 'lambda'), { recursive: true })
    writeFileSync(join(work, 'lambda', 'model.json'), JSON.stringify({ format: 'layers-model', modelTopology: lambda }))
    cases.push(['lambda', { ...base, params: { model: 'lambda/model.json' } }, 'ERR_UNSUPPORTED_MODEL', /Lambda/])
    // Token ids past the Embedding's input_dim (30): the sentiment data against a copy with input_dim 20.
    const emb20 = JSON.parse(JSON.stringify((await readModelDir(join(work, 'emb', 'model.json'))).modelTopology).replace('"input_dim":30', '"input_dim":20')) as Record<string, unknown>
    mkdirSync(join(work, 'emb20'), { recursive: true })
    writeFileSync(join(work, 'emb20', 'model.json'), JSON.stringify({ format: 'layers-model', modelTopology: emb20 }))
    cases.push(['ids', { ...base, inputs: { x: 'sent-x.npy', y: 'sent-y.npy', xTest: 'sent-test-x.npy', yTest: 'sent-test-y.npy' }, params: { model: 'emb20/model.json', loss: 'binaryCrossentropy' } }, 'ERR_BAD_INPUT', /x\[\d+, \d\] is 2\d, but Embedding layer 'embedding_Embedding\d+' takes integer ids in \[0, 20\)/])
    // A graph-model (tensorflowjs_converter's GraphDef JSON): inference only.
    mkdirSync(join(work, 'graph'), { recursive: true })
    writeFileSync(join(work, 'graph', 'model.json'), JSON.stringify({
      format: 'graph-model',
      modelTopology: { node: [{ name: 'x', op: 'Placeholder', attr: { dtype: { type: 'DT_FLOAT' }, shape: { shape: { dim: [{ size: '-1' }, { size: '2' }] } } } }, { name: 'y', op: 'Relu', input: ['x'], attr: { T: { type: 'DT_FLOAT' } } }] }
    }))
    cases.push(['graph', { ...base, params: { model: 'graph/model.json' } }, 'ERR_UNSUPPORTED_MODEL', /the model is a graph-model; training takes a layers-model/])
    for (const [name, job, code, message] of cases) {
      const file = join(work, `bad-${name}.json`)
      writeFileSync(file, JSON.stringify(job))
      const { line } = await submit(file, join(work, `bad-${name}.out`)).catch((err: unknown) => ({ line: { thrown: err } as Record<string, unknown> }))
      const err = (line.thrown ?? line.error) as { code?: string, message?: string } | undefined
      expect(err?.code, name).toBe(code)
      expect(err?.message, name).toMatch(message)
    }
    // The node is still serving.
    expect((await client.node()).peers).toBe(2)
  })
})
