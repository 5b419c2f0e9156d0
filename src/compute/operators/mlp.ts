import { InvalidInputError } from '../../errors.ts'
import { prng } from '../random.ts'
import { hostTensor } from '../tensor.ts'
import { checkDType, checkInputs, checkParams, requireInput, sumReducer } from './common.ts'
import type { HostTensor } from '../tensor.ts'
import type { JobPlan, Operator, Params, TF, Tensors } from './types.ts'

/**
 * A multilayer perceptron as data: layer widths, one activation for the
 * hidden layers, softmax on the last. Its parameters travel as one flat
 * float32 vector in TF.js Layers order: for each Dense layer its kernel
 * [in, out] (row-major) then its bias [out]. Two operators use it:
 *
 * - `mlp-grad`: over rows [start, end) of x (shared, whole training set) and
 *   labels y, the summed gradient of the cross-entropy loss, the summed loss
 *   and the row count, as one vector [P + 2]. Sums, so partials add exactly;
 *   the coordinator divides once by the total count.
 * - `mlp-eval`: over rows of a held-out set, [correct predictions, summed loss].
 *
 * Data-parallel training is rounds of `mlp-grad` across the mesh with an
 * optimizer step on the coordinator between them (src/node/jobs/train.ts).
 */

export const MLP_ACTIVATIONS = ['relu', 'tanh', 'sigmoid'] as const
export type MlpActivation = typeof MLP_ACTIVATIONS[number]

/** Widths per layer: 2..8 layers of 1..65536 units; MNIST's MLP is [784, 128, 10]. */
export const MAX_MLP_LAYERS = 8
export const MAX_MLP_WIDTH = 65_536
/** 64M parameters (256 MiB of float32): a weight vector travels to every peer each round. */
export const MAX_MLP_PARAMS = 64 * 1024 * 1024

export interface MlpSpec {
  layers: number[]
  activation: MlpActivation
}

interface GradParams extends MlpSpec {
  /** Rows of the shared x this shard covers (set per shard). */
  start?: number
  end?: number
}

export function mlpParamCount (layers: readonly number[]): number {
  let n = 0
  for (let i = 0; i + 1 < layers.length; i++) n += (layers[i] ?? 0) * (layers[i + 1] ?? 0) + (layers[i + 1] ?? 0)
  return n
}

export function checkMlpSpec (op: string, value: unknown): MlpSpec {
  const p = value as Record<string, unknown>
  const layers = p.layers
  if (!Array.isArray(layers) || layers.length < 2 || layers.length > MAX_MLP_LAYERS || !layers.every(w => Number.isSafeInteger(w) && w >= 1 && w <= MAX_MLP_WIDTH)) {
    throw new InvalidInputError(`${op}: params.layers must list 2 to ${MAX_MLP_LAYERS} layer widths from 1 to ${MAX_MLP_WIDTH}, e.g. [784, 128, 10]`, 'ERR_BAD_PARAMS')
  }
  const activation = p.activation ?? 'relu'
  if (!(MLP_ACTIVATIONS as readonly unknown[]).includes(activation)) {
    throw new InvalidInputError(`${op}: params.activation must be one of ${MLP_ACTIVATIONS.join(', ')}`, 'ERR_BAD_PARAMS')
  }
  if (mlpParamCount(layers as number[]) > MAX_MLP_PARAMS) throw new InvalidInputError(`${op}: the model has more than ${MAX_MLP_PARAMS} parameters`, 'ERR_BAD_PARAMS')
  return { layers: layers as number[], activation: activation as MlpActivation }
}

function checkData (op: string, inputs: unknown, spec: MlpSpec): { x: HostTensor, y: HostTensor, w: HostTensor } {
  const t = checkInputs(op, inputs, ['x', 'y', 'w'])
  const x = requireInput(t, 'x')
  const y = requireInput(t, 'y')
  const w = requireInput(t, 'w')
  checkDType(op, 'x', x, ['float32'])
  checkDType(op, 'y', y, ['int32'])
  checkDType(op, 'w', w, ['float32'])
  const features = spec.layers[0] ?? 0
  if (x.shape.length !== 2 || x.shape[1] !== features) throw new InvalidInputError(`${op}: x must be [rows, ${features}] for layers [${spec.layers.join(', ')}], got [${x.shape.join(', ')}]`, 'ERR_SHAPE_MISMATCH')
  if (y.shape.length !== 1 || y.shape[0] !== x.shape[0]) throw new InvalidInputError(`${op}: y must be int32 [${x.shape[0] ?? 0}] (one label per row of x), got [${y.shape.join(', ')}]`, 'ERR_SHAPE_MISMATCH')
  const p = mlpParamCount(spec.layers)
  if (w.shape.length !== 1 || w.shape[0] !== p) throw new InvalidInputError(`${op}: w must be float32 [${p}] for layers [${spec.layers.join(', ')}], got [${w.shape.join(', ')}]`, 'ERR_SHAPE_MISMATCH')
  const classes = spec.layers.at(-1) ?? 0
  for (const label of y.data) {
    if (!(label >= 0 && label < classes)) throw new InvalidInputError(`${op}: label ${label} is outside 0..${classes - 1}`, 'ERR_BAD_LABEL')
  }
  return { x, y, w }
}

function rowRange (op: string, params: GradParams, rows: number): [number, number] {
  const start = params.start ?? 0
  const end = params.end ?? rows
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end > rows || start >= end) {
    throw new InvalidInputError(`${op}: rows [${start}, ${end}) are not within x's ${rows} rows`, 'ERR_BAD_RANGE')
  }
  return [start, end]
}

/** Forward pass on rows [start, end); returns logits. Variables are the weights as tensors. */
function logits (tf: TF, spec: MlpSpec, x: import('@tensorflow/tfjs-core').Tensor2D, weights: Array<import('@tensorflow/tfjs-core').Tensor>): import('@tensorflow/tfjs-core').Tensor2D {
  let h = x
  const n = spec.layers.length - 1
  for (let i = 0; i < n; i++) {
    const W = weights[2 * i] as import('@tensorflow/tfjs-core').Tensor2D
    const b = weights[2 * i + 1] as import('@tensorflow/tfjs-core').Tensor1D
    const z: import('@tensorflow/tfjs-core').Tensor2D = tf.add(tf.matMul(h, W), b)
    h = i === n - 1 ? z : (spec.activation === 'relu' ? tf.relu(z) : spec.activation === 'tanh' ? tf.tanh(z) : tf.sigmoid(z))
  }
  return h
}

/** The flat vector as per-layer tensors (kernel, bias, kernel, bias ...). */
function unflatten (tf: TF, spec: MlpSpec, w: Float32Array): Array<import('@tensorflow/tfjs-core').Tensor> {
  const out: Array<import('@tensorflow/tfjs-core').Tensor> = []
  let off = 0
  for (let i = 0; i + 1 < spec.layers.length; i++) {
    const a = spec.layers[i] ?? 0
    const b = spec.layers[i + 1] ?? 0
    out.push(tf.tensor2d(w.subarray(off, off + a * b), [a, b]))
    off += a * b
    out.push(tf.tensor1d(w.subarray(off, off + b)))
    off += b
  }
  return out
}

function planFor (op: string, inputs: Tensors, params: unknown, outLength: number, flopsFactor: number): JobPlan<GradParams> {
  const p = checkParams(op, params, ['layers', 'activation'])
  const spec = checkMlpSpec(op, p)
  const { x } = checkData(op, inputs, spec)
  const rows = x.shape[0] ?? 0
  if (rows === 0) throw new InvalidInputError(`${op}: x has no rows`, 'ERR_BAD_SHAPE')
  const n = mlpParamCount(spec.layers)
  return {
    op,
    units: rows,
    // Forward is ~2 flops per weight per row; backward about twice that.
    cost: { flopsPerUnit: flopsFactor * 2 * n, bytesInPerUnit: 0, bytesInFixed: (x.data.byteLength + n * 4), bytesOutPerUnit: 0, bytesOutFixed: outLength * 4 },
    params: spec,
    output: { dtype: 'float32', shape: [outLength] }
  }
}

function shardTask (op: string, plan: JobPlan<GradParams>, inputs: Tensors, range: { start: number, end: number }): { op: string, params: Params, inputs: Tensors, shared: string[] } {
  const { layers, activation } = plan.params
  return {
    op,
    params: { layers, activation, start: range.start, end: range.end },
    inputs: { x: requireInput(inputs as Record<string, HostTensor>, 'x'), y: requireInput(inputs as Record<string, HostTensor>, 'y'), w: requireInput(inputs as Record<string, HostTensor>, 'w') },
    // x and y are the same for every shard and every round; w for every shard of a round.
    shared: ['x', 'y', 'w']
  }
}

function checkTask (op: string, params: Params, inputs: Tensors): { spec: MlpSpec, x: HostTensor, y: HostTensor, w: HostTensor, start: number, end: number } {
  const p = checkParams(op, params, ['layers', 'activation', 'start', 'end']) as unknown as GradParams
  const spec = checkMlpSpec(op, p)
  const { x, y, w } = checkData(op, inputs, spec)
  const [start, end] = rowRange(op, p, x.shape[0] ?? 0)
  return { spec, x, y, w, start, end }
}

let gradients: Promise<unknown> | undefined

/**
 * tfjs-core registers no gradients of its own; the union package's Node
 * bundle does, on the same tfjs-core instance (every TF.js package resolves
 * to its CommonJS main here). Loaded on first use: only training needs it.
 */
async function registerGradients (): Promise<void> {
  gradients ??= import('@tensorflow/tfjs')
  await gradients
}

type Checked = ReturnType<typeof checkTask>

/**
 * The two MLP operators differ only in what a shard computes over its rows
 * and how long that vector is; planning, sharding, validation and the
 * summing reducer are the same.
 */
function mlpOperator (name: string, length: (spec: MlpSpec) => number, flopsFactor: number, compute: (tf: TF, c: Checked) => Promise<Float32Array>): Operator<GradParams> {
  return {
    name,
    plan (inputs, params) {
      return planFor(name, inputs, params, length(checkMlpSpec(name, params)), flopsFactor)
    },
    shard (plan, inputs, range) {
      return shardTask(name, plan, inputs, range)
    },
    validateTask (task) {
      const { start, end } = checkTask(name, task.params, task.inputs)
      return end - start
    },
    async map (tf, task) {
      const c = checkTask(name, task.params, task.inputs)
      return { out: hostTensor('float32', [length(c.spec)], await compute(tf, c)) }
    },
    reducer (plan) {
      return sumReducer(name, plan.units, plan.output.shape[0] ?? 0)
    }
  }
}

/** Rows [start, end) of x and y as tensors (call inside tf.tidy). */
function rows (tf: TF, { spec, x, y, start, end }: Checked): { xs: import('@tensorflow/tfjs-core').Tensor2D, ys: import('@tensorflow/tfjs-core').Tensor1D } {
  const features = spec.layers[0] ?? 0
  return {
    xs: tf.tensor2d((x.data as Float32Array).subarray(start * features, end * features), [end - start, features]),
    ys: tf.tensor1d((y.data as Int32Array).subarray(start, end), 'int32')
  }
}

/** [summed gradient (P), summed loss, row count]. Forward and backward: ~3x the forward's flops. */
export const mlpGrad = mlpOperator('mlp-grad', spec => mlpParamCount(spec.layers) + 2, 3, async (tf, c) => {
  await registerGradients()
  const classes = c.spec.layers.at(-1) ?? 0
  const n = mlpParamCount(c.spec.layers)
  const out = new Float32Array(n + 2)
  const weights = unflatten(tf, c.spec, c.w.data as Float32Array)
  try {
    const { value, grads } = tf.tidy(() => {
      const { xs, ys } = rows(tf, c)
      const labels = tf.oneHot(ys, classes)
      // Summed (not mean) cross-entropy, so partials from uneven shards add up exactly.
      const f = (...ws: Array<import('@tensorflow/tfjs-core').Tensor>): import('@tensorflow/tfjs-core').Scalar =>
        tf.sum(tf.losses.softmaxCrossEntropy(labels, logits(tf, c.spec, xs, ws), undefined, undefined, tf.Reduction.NONE))
      return tf.valueAndGrads(f)(weights)
    })
    let off = 0
    for (const g of grads) {
      const data = await g.data<'float32'>()
      out.set(data, off)
      off += data.length
      g.dispose()
    }
    out[n] = (await value.data())[0] ?? 0
    out[n + 1] = c.end - c.start
    value.dispose()
  } finally {
    for (const t of weights) t.dispose()
  }
  return out
})

/** [correct predictions, summed loss] over held-out rows. */
export const mlpEval = mlpOperator('mlp-eval', () => 2, 1, async (tf, c) => {
  const classes = c.spec.layers.at(-1) ?? 0
  const weights = unflatten(tf, c.spec, c.w.data as Float32Array)
  try {
    const [correct, loss] = tf.tidy(() => {
      const { xs, ys } = rows(tf, c)
      const z = logits(tf, c.spec, xs, weights)
      const hits = tf.sum(tf.cast(tf.equal(tf.argMax(z, 1), ys), 'float32'))
      const l = tf.sum(tf.losses.softmaxCrossEntropy(tf.oneHot(ys, classes), z, undefined, undefined, tf.Reduction.NONE))
      return [hits, l]
    })
    const out = Float32Array.from([(await correct.data())[0] ?? 0, (await loss.data())[0] ?? 0])
    correct.dispose()
    loss.dispose()
    return out
  } finally {
    for (const t of weights) t.dispose()
  }
})

/** Glorot-uniform kernels and zero biases from a seeded generator, as TF.js's Dense defaults to (uniform variant). */
export function initMlp (spec: MlpSpec, seed: number): Float32Array {
  const w = new Float32Array(mlpParamCount(spec.layers))
  const random = prng(seed)
  let off = 0
  for (let i = 0; i + 1 < spec.layers.length; i++) {
    const a = spec.layers[i] ?? 0
    const b = spec.layers[i + 1] ?? 0
    const limit = Math.sqrt(6 / (a + b))
    for (let k = 0; k < a * b; k++) w[off + k] = (random() * 2 - 1) * limit
    off += a * b + b
  }
  return w
}

/** TF.js Layers artifacts (model.json's topology and weight specs, plus the weight bytes) for the MLP. */
export function mlpArtifacts (spec: MlpSpec, w: Float32Array): { modelTopology: Record<string, unknown>, weightSpecs: Array<{ name: string, shape: number[], dtype: 'float32' }>, weightData: ArrayBuffer, format: string, generatedBy: string, convertedBy: null } {
  const layers: Array<Record<string, unknown>> = []
  const weightSpecs: Array<{ name: string, shape: number[], dtype: 'float32' }> = []
  for (let i = 0; i + 1 < spec.layers.length; i++) {
    const name = `dense_Dense${i + 1}`
    const last = i + 2 === spec.layers.length
    const config: Record<string, unknown> = {
      units: spec.layers[i + 1],
      activation: last ? 'softmax' : spec.activation,
      use_bias: true,
      kernel_initializer: { class_name: 'VarianceScaling', config: { scale: 1, mode: 'fan_avg', distribution: 'uniform', seed: null } },
      bias_initializer: { class_name: 'Zeros', config: {} },
      kernel_regularizer: null,
      bias_regularizer: null,
      activity_regularizer: null,
      kernel_constraint: null,
      bias_constraint: null,
      name,
      trainable: true
    }
    if (i === 0) {
      config.batch_input_shape = [null, spec.layers[0]]
      config.dtype = 'float32'
    }
    layers.push({ class_name: 'Dense', config })
    weightSpecs.push({ name: `${name}/kernel`, shape: [spec.layers[i] ?? 0, spec.layers[i + 1] ?? 0], dtype: 'float32' })
    weightSpecs.push({ name: `${name}/bias`, shape: [spec.layers[i + 1] ?? 0], dtype: 'float32' })
  }
  return {
    modelTopology: { class_name: 'Sequential', config: { name: 'tensormesh_mlp', layers }, keras_version: 'tfjs-layers 4.22.0', backend: 'tensor_flow.js' },
    weightSpecs,
    weightData: w.slice().buffer,
    format: 'layers-model',
    generatedBy: 'tensormesh',
    convertedBy: null
  }
}
