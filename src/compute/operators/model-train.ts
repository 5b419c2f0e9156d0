import { createHash } from 'node:crypto'
import { InvalidInputError } from '../../errors.ts'
import { describeModel, packModel, parameterCount, unpackModel, viewPackedModel } from '../model.ts'
import { prng, shuffleInPlace } from '../random.ts'
import { BYTES_PER_ELEMENT, describe, hostTensor, rowSize, sizeOf } from '../tensor.ts'
import { checkDType, checkInputs, checkParams, isPlainObject, requireInput, sumReducer } from './common.ts'
import type { LayersModel, LayerVariable } from '@tensorflow/tfjs-layers'
import type { Optimizer, Scalar, Tensor, Variable } from '@tensorflow/tfjs-core'
import type { ModelArtifactsInput, ModelInfo, WeightSpec } from '../model.ts'
import type { HostTensor } from '../tensor.ts'
import type { JobPlan, Operator, ShardTask, Tensors, TF } from './types.ts'

/**
 * Training any TF.js layers-model, as shards. One operator with four modes,
 * so a worker loads a model once (kept by the SHA-256 of its packed bytes)
 * whatever it is asked to do with it:
 *
 * - `init` (the coordinator's own pool, once per job): loads `blobs.model`,
 *   gives every layer's initialiser a seed when the model has no weights,
 *   and returns the canonical packed model (float32 weights, in the order
 *   every later flat vector uses) and which weights are trainable.
 * - `grad` (synchronous data parallelism, one job per optimizer step): the
 *   loss summed over the shard's rows of the step's batch, and its gradient
 *   summed the same way, so partials of uneven shards add up exactly.
 *   Non-trainable weights (batch norm's moving statistics) carry
 *   rows x their change during the forward pass instead of a gradient.
 * - `local` (DiLoCo's inner loop, one job per outer round): each replica (a
 *   fixed, contiguous part of the rows) starts from `w`, takes `steps`
 *   optimizer steps on minibatches of its own rows with a fresh optimizer,
 *   and returns rows x (its weights - w): summed over replicas and divided
 *   by the rows, that is the row-weighted mean change.
 * - `eval`: summed loss and correct predictions over rows of held-out data.
 *
 * Every output is float32 `out`: the vector, then the summed loss, then the
 * rows it covers (grad, local: [P + 2]; eval: [loss, correct, rows]; init:
 * the packed model as bytes in `model` and a mask in `trainable`).
 *
 * Losses follow Keras: the model's output is probabilities (softmax or
 * sigmoid last), clipped to [1e-7, 1 - 1e-7] before a log. Rows of a batch
 * are picked by index from x and y, which are shared by every shard and
 * every round (sent once by content address): `grad` walks a permutation of
 * all rows drawn from (seed, epoch); `local` walks, per replica, a
 * permutation of its rows drawn from (seed, replica, pass). Nothing but
 * numbers and names travels; the model is data (a layers-model topology
 * checked against describeModel's allow-list).
 */

const NAME = 'model-train'

export const TRAIN_LOSSES = ['sparseCategoricalCrossentropy', 'categoricalCrossentropy', 'binaryCrossentropy', 'meanSquaredError'] as const
export type TrainLoss = typeof TRAIN_LOSSES[number]

export const MODEL_OPTIMIZERS = ['adam', 'sgd', 'rmsprop'] as const
export type ModelOptimizerName = typeof MODEL_OPTIMIZERS[number]

/** An optimizer and its usual params, Keras' defaults where absent (see checkOptimizer). */
export interface OptimizerSpec {
  name: ModelOptimizerName
  learningRate: number
  /** adam */
  beta1?: number
  beta2?: number
  /** adam, rmsprop */
  epsilon?: number
  /** sgd, rmsprop */
  momentum?: number
  /** sgd */
  nesterov?: boolean
  /** rmsprop's discounting factor */
  rho?: number
}

export const TRAIN_MODES = ['init', 'grad', 'local', 'eval'] as const
export type TrainMode = typeof TRAIN_MODES[number]

/** Keras' clip before a log. */
export const LOSS_EPSILON = 1e-7

/** Most optimizer steps one local round may take; DiLoCo uses 500. */
export const MAX_LOCAL_STEPS = 10_000

/** Most rows in one minibatch. */
export const MAX_TRAIN_BATCH = 65_536

/** Most replicas of one local round (rows are split among them). */
export const MAX_REPLICAS = 1024

/** Rows per forward pass when evaluating. */
export const EVAL_BATCH = 256

/** What each shard's params say, checked on both sides. */
export interface ModelTrainParams {
  mode: TrainMode
  loss: TrainLoss
  /** Length of the flat weight vector (init: absent). */
  paramCount?: number
  /** grad: the permutation's seed and epoch, and where the step's batch starts in it. */
  seed?: number
  epoch?: number
  offset?: number
  /** local: replicas the rows are split into, the round (1-based), steps per round, rows per step, the inner optimizer. */
  replicas?: number
  round?: number
  steps?: number
  batchSize?: number
  optimizer?: OptimizerSpec
  /** Units of this shard: rows of the batch (grad), replicas (local), rows (eval). */
  start?: number
  end?: number
}

const bad = (message: string): InvalidInputError => new InvalidInputError(`${NAME}: ${message}`, 'ERR_BAD_PARAMS')

function int (v: unknown, what: string, min: number, max: number): number {
  if (!Number.isSafeInteger(v) || (v as number) < min || (v as number) > max) throw bad(`${what} must be an integer in [${min}, ${max}], got ${JSON.stringify(v) ?? 'nothing'}`)
  return v as number
}

export function checkLoss (v: unknown, op = NAME): TrainLoss {
  if (!(TRAIN_LOSSES as readonly unknown[]).includes(v)) {
    throw new InvalidInputError(`${op}: loss ${JSON.stringify(v) ?? 'nothing'} is not supported; allowed: ${TRAIN_LOSSES.join(', ')}`, 'ERR_BAD_PARAMS')
  }
  return v as TrainLoss
}

/** `{name, learningRate, ...}` (or a bare name) with Keras' defaults filled in; unknown keys are refused. */
export function checkOptimizer (v: unknown, op = NAME): Required<Pick<OptimizerSpec, 'name' | 'learningRate'>> & OptimizerSpec {
  const spec = typeof v === 'string' ? { name: v } : v
  if (!isPlainObject(spec)) throw new InvalidInputError(`${op}: optimizer must be {"name": one of ${MODEL_OPTIMIZERS.join(', ')}, "learningRate": ...}`, 'ERR_BAD_PARAMS')
  const name = spec.name
  if (!(MODEL_OPTIMIZERS as readonly unknown[]).includes(name)) {
    throw new InvalidInputError(`${op}: optimizer.name ${JSON.stringify(name) ?? 'nothing'} is not supported; allowed: ${MODEL_OPTIMIZERS.join(', ')}`, 'ERR_BAD_PARAMS')
  }
  const allowed: Record<ModelOptimizerName, string[]> = {
    adam: ['name', 'learningRate', 'beta1', 'beta2', 'epsilon'],
    sgd: ['name', 'learningRate', 'momentum', 'nesterov'],
    rmsprop: ['name', 'learningRate', 'rho', 'momentum', 'epsilon']
  }
  const keys = allowed[name as ModelOptimizerName]
  for (const k of Object.keys(spec)) {
    if (!keys.includes(k)) throw new InvalidInputError(`${op}: optimizer ${String(name)} takes ${keys.join(', ')}; not '${k}'`, 'ERR_BAD_PARAMS')
  }
  const field = (k: string, d: number, min: number, max: number, open = true): number => {
    const x = spec[k] ?? d
    if (typeof x !== 'number' || !Number.isFinite(x) || (open ? !(x > min && x < max) : !(x >= min && x < max))) {
      throw new InvalidInputError(`${op}: optimizer.${k} must be a number in ${open ? '(' : '['}${min}, ${max}), got ${JSON.stringify(spec[k])}`, 'ERR_BAD_PARAMS')
    }
    return x
  }
  if (name === 'adam') return { name, learningRate: field('learningRate', 0.001, 0, 10), beta1: field('beta1', 0.9, 0, 1, false), beta2: field('beta2', 0.999, 0, 1, false), epsilon: field('epsilon', 1e-7, 0, 1) }
  if (name === 'rmsprop') return { name, learningRate: field('learningRate', 0.001, 0, 10), rho: field('rho', 0.9, 0, 1, false), momentum: field('momentum', 0, 0, 1, false), epsilon: field('epsilon', 1e-7, 0, 1) }
  const nesterov = spec.nesterov ?? false
  if (typeof nesterov !== 'boolean') throw new InvalidInputError(`${op}: optimizer.nesterov must be true or false`, 'ERR_BAD_PARAMS')
  return { name: 'sgd', learningRate: field('learningRate', 0.01, 0, 10), momentum: field('momentum', 0, 0, 1, false), nesterov }
}

function checkTaskParams (params: unknown): ModelTrainParams {
  const p = checkParams(NAME, params, ['mode', 'loss', 'paramCount', 'seed', 'epoch', 'offset', 'replicas', 'round', 'steps', 'batchSize', 'optimizer', 'start', 'end'])
  if (!(TRAIN_MODES as readonly unknown[]).includes(p.mode)) throw bad(`mode must be one of ${TRAIN_MODES.join(', ')}`)
  const mode = p.mode as TrainMode
  const out: ModelTrainParams = { mode, loss: checkLoss(p.loss) }
  const allowed: Record<TrainMode, string[]> = {
    init: ['mode', 'loss', 'seed'],
    grad: ['mode', 'loss', 'paramCount', 'seed', 'epoch', 'offset', 'start', 'end'],
    local: ['mode', 'loss', 'paramCount', 'seed', 'replicas', 'round', 'steps', 'batchSize', 'optimizer', 'start', 'end'],
    eval: ['mode', 'loss', 'paramCount', 'start', 'end']
  }
  for (const k of Object.keys(p)) if (!allowed[mode].includes(k)) throw bad(`mode ${mode} takes ${allowed[mode].join(', ')}; not '${k}'`)
  if (p.seed !== undefined) out.seed = int(p.seed, 'seed', -(2 ** 31), 2 ** 32)
  if (mode === 'init') return out
  out.paramCount = int(p.paramCount, 'paramCount', 1, 2 ** 28)
  out.start = int(p.start, 'start', 0, Number.MAX_SAFE_INTEGER)
  out.end = int(p.end, 'end', out.start + 1, Number.MAX_SAFE_INTEGER)
  if (mode === 'grad') {
    out.seed = int(p.seed, 'seed', -(2 ** 31), 2 ** 32)
    out.epoch = int(p.epoch, 'epoch', 0, 2 ** 31)
    out.offset = int(p.offset, 'offset', 0, Number.MAX_SAFE_INTEGER)
  }
  if (mode === 'local') {
    out.seed = int(p.seed, 'seed', -(2 ** 31), 2 ** 32)
    out.replicas = int(p.replicas, 'replicas', 1, MAX_REPLICAS)
    out.round = int(p.round, 'round', 1, 2 ** 31)
    out.steps = int(p.steps, 'steps', 1, MAX_LOCAL_STEPS)
    out.batchSize = int(p.batchSize, 'batchSize', 1, MAX_TRAIN_BATCH)
    out.optimizer = checkOptimizer(p.optimizer)
    if (out.end > out.replicas) throw bad(`replicas [${out.start}, ${out.end}) are not within the ${out.replicas} replicas`)
  }
  return out
}

/** The model blob, as a layers-model (graph-models have no trainable form here). */
function checkModelBlob (blobs: unknown): { bytes: Uint8Array, info: ModelInfo, specs: WeightSpec[] } {
  const model = isPlainObject(blobs) ? blobs.model : undefined
  if (!(model instanceof Uint8Array)) throw new InvalidInputError(`${NAME}: blobs.model is missing; it must hold a packed TF.js layers-model`, 'ERR_MISSING_MODEL')
  if (isPlainObject(blobs) && Object.keys(blobs).some(k => k !== 'model')) throw new InvalidInputError(`${NAME}: unexpected blob; expected: model`, 'ERR_BAD_INPUT')
  const view = viewPackedModel(model)
  const info = describeModel(view)
  if (info.format !== 'layers-model') throw new InvalidInputError(`${NAME}: the model is a ${info.format}; training takes a layers-model (a Keras or TF.js model.json with model_config)`, 'ERR_UNSUPPORTED_MODEL')
  return { bytes: model, info, specs: view.weightSpecs }
}

/**
 * Checks x and y against the model and the loss; returns the rows. Labels
 * are checked by value (every one) so a bad label fails here, naming it,
 * not as a NaN after the first step.
 */
export function checkTrainData (op: string, x: HostTensor, y: HostTensor, info: Pick<ModelInfo, 'inputShape' | 'outputShape'>, loss: TrainLoss, names: [string, string] = ['x', 'y']): number {
  const [xn, yn] = names
  checkDType(op, xn, x, ['float32', 'int32'])
  const features = x.shape.slice(1)
  if (x.shape.length < 1 || features.length !== info.inputShape.length || features.some((d, i) => d !== info.inputShape[i])) {
    throw new InvalidInputError(`${op}: ${xn} is ${describe(x)} but the model takes [n, ${info.inputShape.join(', ')}]; ${xn}'s rows must fit the model's input`, 'ERR_SHAPE_MISMATCH')
  }
  const n = x.shape[0] as number
  if (y.shape[0] !== n) throw new InvalidInputError(`${op}: ${xn} has ${n} rows but ${yn} is ${describe(y)}`, 'ERR_SHAPE_MISMATCH')
  const out = info.outputShape
  if (loss === 'sparseCategoricalCrossentropy') {
    if (out.length !== 1) throw new InvalidInputError(`${op}: sparseCategoricalCrossentropy needs a model output of [n, classes], not [n, ${out.join(', ')}]`, 'ERR_SHAPE_MISMATCH')
    checkDType(op, yn, y, ['int32'])
    if (!(y.shape.length === 1 || (y.shape.length === 2 && y.shape[1] === 1))) throw new InvalidInputError(`${op}: ${yn} is ${describe(y)}; class labels are int32 [n] (or [n, 1])`, 'ERR_SHAPE_MISMATCH')
    const classes = out[0] as number
    const labels = y.data
    for (let i = 0; i < labels.length; i++) {
      const v = labels[i] as number
      if (!(v >= 0 && v < classes)) throw new InvalidInputError(`${op}: ${yn}[${i}] is ${v}, out of range for the model's ${classes} classes [0, ${classes})`, 'ERR_BAD_LABEL')
    }
    return n
  }
  const want = sizeOf(out)
  if (rowSize(y) !== want || !(y.shape.length === out.length + 1 || (want === 1 && y.shape.length === 1))) {
    throw new InvalidInputError(`${op}: ${yn} is ${describe(y)} but ${loss} compares it with the model's output [n, ${out.join(', ')}]`, 'ERR_SHAPE_MISMATCH')
  }
  if (loss === 'binaryCrossentropy' || loss === 'categoricalCrossentropy') {
    const values = y.data
    for (let i = 0; i < values.length; i++) {
      const v = values[i] as number
      if (!(v >= 0 && v <= 1)) throw new InvalidInputError(`${op}: ${yn} holds ${v} at ${i}; ${loss} targets are in [0, 1]`, 'ERR_BAD_LABEL')
    }
  }
  return n
}

function checkTask (task: ShardTask): { p: ModelTrainParams, bytes: Uint8Array, info: ModelInfo, x?: HostTensor, y?: HostTensor, w?: HostTensor, rows: number } {
  const p = checkTaskParams(task.params)
  const { bytes, info, specs } = checkModelBlob(task.blobs)
  if (p.mode === 'init') {
    checkInputs(NAME, task.inputs, [])
    return { p, bytes, info, rows: 1 }
  }
  const t = checkInputs(NAME, task.inputs, ['x', 'y', 'w'])
  const x = requireInput(t, 'x')
  const y = requireInput(t, 'y')
  const w = requireInput(t, 'w')
  checkDType(NAME, 'w', w, ['float32'])
  const count = parameterCount(specs)
  if (w.shape.length !== 1 || w.shape[0] !== p.paramCount || count !== p.paramCount) {
    throw new InvalidInputError(`${NAME}: w is ${describe(w)}, paramCount ${p.paramCount ?? 0}, and the model holds ${count} weights; all three must agree`, 'ERR_MODEL_MISMATCH')
  }
  const rows = checkTrainData(NAME, x, y, info, p.loss)
  const start = p.start ?? 0
  const end = p.end ?? 0
  if (p.mode === 'eval' && end > rows) throw bad(`rows [${start}, ${end}) are not within x's ${rows}`)
  if (p.mode === 'grad' && (p.offset ?? 0) + end > rows) throw bad(`batch rows ${(p.offset ?? 0) + start}..${(p.offset ?? 0) + end} of the permutation are not within x's ${rows}`)
  if (p.mode === 'local' && rows < (p.replicas ?? 1)) throw bad(`${p.replicas ?? 1} replicas need at least as many rows; x has ${rows}`)
  return { p, bytes, info, x, y, w, rows: end - start }
}

/** The seed for layer i's k-th initialiser: distinct per layer, from the job's seed. */
function initSeed (seed: number, layer: number, k: number): number {
  return ((seed >>> 0) * 7919 + layer * 131 + k) % 2 ** 31
}

/** Initialisers that take a seed in tfjs-layers. */
const SEEDED_INITIALIZERS = ['RandomUniform', 'RandomNormal', 'TruncatedNormal', 'VarianceScaling', 'GlorotUniform', 'GlorotNormal', 'HeUniform', 'HeNormal', 'LeCunUniform', 'LeCunNormal', 'Orthogonal']

/** A copy of the topology with a seed in every seedable initialiser, so `init` builds the same weights for the same seed. */
export function seedInitializers (topology: Record<string, unknown>, seed: number): Record<string, unknown> {
  const copy = structuredClone(topology)
  const config = (isPlainObject(copy.model_config) ? copy.model_config.config : copy.config) as unknown
  const list = isPlainObject(config) && Array.isArray(config.layers) ? config.layers : Array.isArray(config) ? config : []
  list.forEach((layer: unknown, i: number) => {
    const c = isPlainObject(layer) && isPlainObject(layer.config) ? layer.config : undefined
    if (c === undefined) return
    let k = 0
    for (const [key, value] of Object.entries(c)) {
      if (!key.endsWith('initializer') && !key.endsWith('Initializer')) continue
      if (isPlainObject(value) && typeof value.class_name === 'string' && SEEDED_INITIALIZERS.includes(value.class_name)) {
        value.config = { ...(isPlainObject(value.config) ? value.config : {}), seed: initSeed(seed, i, k++) }
      }
    }
  })
  return copy
}

/**
 * Runs `f` with Math.random drawn from prng(seed). A layer whose config
 * names no initialiser (Keras' defaults: glorotUniform kernels, say) gets
 * one with no seed, and TF.js seeds those from Math.random; so a model.json
 * written by hand builds the same weights for the same seed too. Only the
 * init task, in a worker, with nothing else running on its thread.
 */
async function seededRandom<T> (seed: number, f: () => Promise<T>): Promise<T> {
  const original = Math.random
  Math.random = prng(initSeed(seed, 1 << 20, 0))
  try {
    return await f()
  } finally {
    Math.random = original
  }
}

interface Loaded {
  model: LayersModel
  /** The model's weights in the packed model's weightSpecs order: the flat vector's order. */
  order: LayerVariable[]
  sizes: number[]
}

// Per worker thread: its own module instance, so its own cache.
const cache = new Map<string, Loaded>()
const MAX_CACHED = 2

let gradients: Promise<unknown> | undefined
async function registerGradients (): Promise<void> {
  // tfjs-core registers no gradients; the union package's Node bundle does, on the same tfjs-core.
  gradients ??= import('@tensorflow/tfjs')
  await gradients
}

async function loadModel (tf: TF, bytes: Uint8Array, specs: WeightSpec[], seed?: number): Promise<Loaded> {
  const key = createHash('sha256').update(bytes).update(String(seed ?? '')).digest('hex')
  const hit = cache.get(key)
  if (hit !== undefined) {
    cache.delete(key)
    cache.set(key, hit)
    return hit
  }
  const layers = await import('@tensorflow/tfjs-layers')
  const artifacts = unpackModel(bytes)
  const bare = specs.length === 0
  if (bare) artifacts.modelTopology = seedInitializers(artifacts.modelTopology, seed ?? 1)
  // Without weights the loader keeps the initialisers' values; with them, its strict check refuses names the topology lacks and vice versa.
  const source = bare ? { modelTopology: artifacts.modelTopology } : artifacts
  const model = bare
    ? await seededRandom(seed ?? 1, async () => await layers.loadLayersModel(tf.io.fromMemory(source as unknown as Parameters<typeof tf.io.fromMemory>[0])))
    : await layers.loadLayersModel(tf.io.fromMemory(source as unknown as Parameters<typeof tf.io.fromMemory>[0]))
  if (model.inputs.length !== 1 || model.outputs.length !== 1) {
    model.dispose()
    throw new InvalidInputError(`${NAME}: the model has ${model.inputs.length} inputs and ${model.outputs.length} outputs; one of each is supported`, 'ERR_UNSUPPORTED_MODEL')
  }
  let order = model.weights
  if (specs.length > 0) {
    const byName = new Map(model.weights.map(v => [v.originalName, v]))
    order = specs.map((s) => {
      const v = byName.get(s.name)
      if (v === undefined) throw new InvalidInputError(`${NAME}: weight ${s.name} is not one of the model's`, 'ERR_MODEL_MISMATCH')
      return v
    })
  }
  const loaded: Loaded = { model, order, sizes: order.map(v => sizeOf(v.shape as number[])) }
  cache.set(key, loaded)
  while (cache.size > MAX_CACHED) {
    const [oldest, old] = cache.entries().next().value as [string, Loaded]
    cache.delete(oldest)
    old.model.dispose()
  }
  return loaded
}

function setWeights (tf: TF, m: Loaded, w: Float32Array): void {
  let off = 0
  m.order.forEach((v, i) => {
    const size = m.sizes[i] as number
    const t = tf.tensor(w.subarray(off, off + size), v.shape as number[], 'float32')
    v.write(t)
    t.dispose()
    off += size
  })
}

async function readWeights (m: Loaded, total: number): Promise<Float32Array> {
  const out = new Float32Array(total)
  let off = 0
  for (const v of m.order) {
    const data = await v.read().data<'float32'>()
    out.set(data, off)
    off += data.length
  }
  return out
}

/** Rows `idx` of a tensor's host data as a batch tensor (x cast to float32, as infer does). */
function gather (tf: TF, t: HostTensor, idx: ArrayLike<number>, shape: number[], dtype: 'float32' | 'int32'): Tensor {
  const row = rowSize(t)
  const out = dtype === 'int32' ? new Int32Array(idx.length * row) : new Float32Array(idx.length * row)
  for (let i = 0; i < idx.length; i++) {
    const r = idx[i] as number
    out.set(t.data.subarray(r * row, (r + 1) * row), i * row)
  }
  return tf.tensor(out, [idx.length, ...shape], dtype)
}

function batch (tf: TF, x: HostTensor, y: HostTensor, idx: ArrayLike<number>, info: ModelInfo, loss: TrainLoss): { xs: Tensor, ys: Tensor } {
  const xs = gather(tf, x, idx, info.inputShape, 'float32')
  const ys = loss === 'sparseCategoricalCrossentropy' ? gather(tf, y, idx, [], 'int32') : gather(tf, y, idx, info.outputShape, 'float32')
  return { xs, ys }
}

/** Per-row loss [b] of probabilities p against targets ys, Keras' definitions (call inside tidy). */
export function rowLoss (tf: TF, loss: TrainLoss, p: Tensor, ys: Tensor): Tensor {
  const rows = p.shape[0] as number
  const flat = (t: Tensor): Tensor => tf.reshape(t, [rows, -1])
  if (loss === 'meanSquaredError') return tf.mean(tf.square(tf.sub(flat(p), flat(tf.cast(ys, 'float32')))), 1)
  const q = tf.clipByValue(flat(p), LOSS_EPSILON, 1 - LOSS_EPSILON)
  if (loss === 'binaryCrossentropy') {
    const t = flat(tf.cast(ys, 'float32'))
    return tf.neg(tf.mean(tf.add(tf.mul(t, tf.log(q)), tf.mul(tf.sub(1, t), tf.log(tf.sub(1, q)))), 1))
  }
  const t = loss === 'sparseCategoricalCrossentropy' ? tf.oneHot(tf.reshape(ys, [rows]), q.shape[1] as number) : flat(ys)
  return tf.neg(tf.sum(tf.mul(tf.cast(t, 'float32'), tf.log(q)), 1))
}

/** Rows predicted right: the arg max for categorical losses, each unit's side of 0.5 for binary (averaged over units), none for mse. */
function correct (tf: TF, loss: TrainLoss, p: Tensor, ys: Tensor): Tensor {
  const rows = p.shape[0] as number
  if (loss === 'meanSquaredError') return tf.scalar(0)
  if (loss === 'binaryCrossentropy') return tf.sum(tf.mean(tf.cast(tf.equal(tf.greater(tf.reshape(p, [rows, -1]), 0.5), tf.greater(tf.reshape(ys, [rows, -1]), 0.5)), 'float32'), 1))
  const guess = tf.argMax(tf.reshape(p, [rows, -1]), 1)
  const truth = loss === 'sparseCategoricalCrossentropy' ? tf.reshape(ys, [rows]) : tf.argMax(tf.reshape(ys, [rows, -1]), 1)
  return tf.sum(tf.cast(tf.equal(guess, tf.cast(truth, 'int32')), 'float32'))
}

function optimizerOf (tf: TF, o: OptimizerSpec): Optimizer {
  if (o.name === 'adam') return tf.train.adam(o.learningRate, o.beta1, o.beta2, o.epsilon)
  if (o.name === 'rmsprop') return tf.train.rmsprop(o.learningRate, o.rho, o.momentum, o.epsilon)
  if ((o.momentum ?? 0) > 0) return tf.train.momentum(o.learningRate, o.momentum ?? 0, o.nesterov)
  return tf.train.sgd(o.learningRate)
}

// Permutations a worker keeps: the last few (seed, epoch) or (seed, replica, pass) keys.
const perms = new Map<string, Int32Array>()
const MAX_PERMS = 8

/** A permutation of [lo, hi) drawn from `key`'s seed, kept for the next shard of the same step or round. */
function permutation (lo: number, hi: number, seed: number, key: string): Int32Array {
  const k = `${key}:${lo}:${hi}`
  let p = perms.get(k)
  if (p === undefined) {
    const list = Array.from({ length: hi - lo }, (_, i) => lo + i)
    p = Int32Array.from(shuffleInPlace(list, prng(seed)))
    perms.set(k, p)
    if (perms.size > MAX_PERMS) perms.delete(perms.keys().next().value as string)
  }
  return p
}

/** The permutation of all n rows for an epoch (grad mode). */
export function epochOrder (n: number, seed: number, epoch: number): Int32Array {
  return permutation(0, n, (seed ^ Math.imul(epoch + 1, 0x9e3779b1)) >>> 0, `e${seed}:${epoch}`)
}

/** Replica r's rows of n: a contiguous, near-equal part. */
export function replicaRows (n: number, replicas: number, r: number): [number, number] {
  return [Math.floor(r * n / replicas), Math.floor((r + 1) * n / replicas)]
}

/**
 * The `count` row indices at position `from` of replica r's stream: its
 * rows in a fresh permutation per pass, pass after pass.
 */
export function replicaBatch (n: number, replicas: number, r: number, seed: number, from: number, count: number): Int32Array {
  const [lo, hi] = replicaRows(n, replicas, r)
  const m = hi - lo
  const out = new Int32Array(count)
  for (let i = 0; i < count; i++) {
    const at = from + i
    const pass = Math.floor(at / m)
    const perm = permutation(lo, hi, (seed ^ Math.imul(r + 1, 0x85ebca6b) ^ Math.imul(pass + 1, 0xc2b2ae35)) >>> 0, `r${seed}:${r}:${pass}`)
    out[i] = perm[at % m] as number
  }
  return out
}

async function runInit (tf: TF, c: ReturnType<typeof checkTask>, specs: WeightSpec[]): Promise<Tensors> {
  const m = await loadModel(tf, c.bytes, specs, c.p.seed ?? 1)
  const artifacts = unpackModel(c.bytes)
  const w = await readWeights(m, m.sizes.reduce((a, b) => a + b, 0))
  const weightSpecs = m.order.map(v => ({ name: v.originalName, shape: [...(v.shape as number[])], dtype: 'float32' as const }))
  const canonical: ModelArtifactsInput = { modelTopology: artifacts.modelTopology, weightSpecs, weightData: w.buffer as ArrayBuffer, format: 'layers-model', generatedBy: artifacts.generatedBy ?? 'tensormesh', convertedBy: null }
  const packed = packModel(canonical)
  // Bytes travel as int32 words (tensors are float32 or int32); the length says where they end.
  const words = new Int32Array(Math.ceil(packed.byteLength / 4))
  new Uint8Array(words.buffer).set(packed)
  return {
    model: hostTensor('int32', [words.length], words),
    length: hostTensor('int32', [1], Int32Array.of(packed.byteLength)),
    trainable: hostTensor('int32', [m.order.length], Int32Array.from(m.order, v => v.trainable ? 1 : 0))
  }
}

/** The task that builds a job's canonical model (run on the coordinator's own pool). */
export function initTask (model: Uint8Array, loss: TrainLoss, seed: number): ShardTask {
  return { op: NAME, params: { mode: 'init', loss, seed }, inputs: {}, blobs: { model } }
}

/** The packed model an `init` task returned. */
export function initModelBytes (out: Tensors): { model: Uint8Array, trainable: boolean[] } {
  const words = out.model
  const length = out.length?.data[0]
  const mask = out.trainable
  if (words?.dtype !== 'int32' || length === undefined || mask?.dtype !== 'int32' || length > words.data.byteLength) throw new InvalidInputError(`${NAME}: init returned no model`, 'ERR_BAD_PARTIAL')
  return { model: new Uint8Array(words.data.buffer, words.data.byteOffset, length).slice(), trainable: Array.from(mask.data, v => v === 1) }
}

/** What grad and local start from: the gradients registered, the checked data, the loaded model. */
async function training (tf: TF, c: ReturnType<typeof checkTask>, specs: WeightSpec[]): Promise<{ p: ModelTrainParams, info: ModelInfo, x: HostTensor, y: HostTensor, w: Float32Array, m: Loaded }> {
  await registerGradients()
  const w = (c.w as HostTensor).data as Float32Array
  return { p: c.p, info: c.info, x: c.x as HostTensor, y: c.y as HostTensor, w, m: await loadModel(tf, c.bytes, specs) }
}

async function runGrad (tf: TF, c: ReturnType<typeof checkTask>, specs: WeightSpec[]): Promise<Float32Array> {
  const { p, info, x, y, w, m } = await training(tf, c, specs)
  const P = w.length
  setWeights(tf, m, w)
  const order = epochOrder(x.shape[0] as number, p.seed ?? 0, p.epoch ?? 0)
  const from = (p.offset ?? 0) + (p.start ?? 0)
  const idx = order.subarray(from, (p.offset ?? 0) + (p.end ?? 0))
  const out = new Float32Array(P + 2)
  const trainable = m.order.filter(v => v.trainable).map(v => v.read() as Variable)
  const { value, grads } = tf.tidy(() => {
    const { xs, ys } = batch(tf, x, y, idx, info, p.loss)
    return tf.variableGrads(() => tf.sum(rowLoss(tf, p.loss, m.model.apply(xs, { training: true }) as Tensor, ys)) as Scalar, trainable)
  })
  try {
    let off = 0
    for (const [i, v] of m.order.entries()) {
      const size = m.sizes[i] as number
      if (v.trainable) {
        const g = grads[(v.read() as Variable).name]
        if (g !== undefined) out.set(await g.data<'float32'>(), off)
      } else {
        // Moving statistics moved during the forward pass: their change, times the rows.
        const now = await v.read().data<'float32'>()
        for (let j = 0; j < size; j++) out[off + j] = ((now[j] as number) - (w[off + j] as number)) * idx.length
      }
      off += size
    }
    out[P] = (await value.data())[0] ?? 0
    out[P + 1] = idx.length
  } finally {
    value.dispose()
    for (const g of Object.values(grads)) g.dispose()
  }
  return out
}

async function runLocal (tf: TF, c: ReturnType<typeof checkTask>, specs: WeightSpec[]): Promise<Float32Array> {
  const { p, info, x, y, w, m } = await training(tf, c, specs)
  const P = w.length
  const n = x.shape[0] as number
  const out = new Float64Array(P + 2)
  const steps = p.steps ?? 1
  const B = p.batchSize ?? 1
  const trainable = m.order.filter(v => v.trainable).map(v => v.read() as Variable)
  for (let r = p.start ?? 0; r < (p.end ?? 0); r++) {
    setWeights(tf, m, w)
    const [lo, hi] = replicaRows(n, p.replicas ?? 1, r)
    const rows = hi - lo
    const opt = optimizerOf(tf, p.optimizer as OptimizerSpec)
    let lossSum = 0
    try {
      for (let s = 0; s < steps; s++) {
        const idx = replicaBatch(n, p.replicas ?? 1, r, p.seed ?? 0, ((p.round ?? 1) - 1) * steps * B + s * B, Math.min(B, rows))
        const cost = opt.minimize(() => tf.tidy(() => {
          const { xs, ys } = batch(tf, x, y, idx, info, p.loss)
          return tf.mean(rowLoss(tf, p.loss, m.model.apply(xs, { training: true }) as Tensor, ys)) as Scalar
        }), true, trainable)
        if (cost !== null) {
          lossSum += (await cost.data())[0] ?? 0
          cost.dispose()
        }
      }
    } finally {
      opt.dispose()
    }
    const now = await readWeights(m, P)
    for (let i = 0; i < P; i++) out[i] = (out[i] as number) + rows * ((now[i] as number) - (w[i] as number))
    out[P] = (out[P] as number) + rows * lossSum / steps
    out[P + 1] = (out[P + 1] as number) + rows
  }
  return Float32Array.from(out)
}

async function runEval (tf: TF, c: ReturnType<typeof checkTask>, specs: WeightSpec[]): Promise<Float32Array> {
  const { p, info } = c
  const x = c.x as HostTensor
  const y = c.y as HostTensor
  const m = await loadModel(tf, c.bytes, specs)
  setWeights(tf, m, (c.w as HostTensor).data as Float32Array)
  let loss = 0
  let right = 0
  const start = p.start ?? 0
  const end = p.end ?? 0
  for (let at = start; at < end; at += EVAL_BATCH) {
    const idx = Int32Array.from({ length: Math.min(EVAL_BATCH, end - at) }, (_, i) => at + i)
    const [l, k] = tf.tidy(() => {
      const { xs, ys } = batch(tf, x, y, idx, info, p.loss)
      const pr = m.model.apply(xs, { training: false }) as Tensor
      return [tf.sum(rowLoss(tf, p.loss, pr, ys)), correct(tf, p.loss, pr, ys)]
    })
    loss += (await l.data())[0] ?? 0
    right += (await k.data())[0] ?? 0
    l.dispose()
    k.dispose()
  }
  return Float32Array.of(loss, right, end - start)
}

/** The output length per mode: [P + 2] for grad and local, 3 for eval. */
function outLength (p: ModelTrainParams): number {
  return p.mode === 'eval' ? 3 : (p.paramCount ?? 0) + 2
}

export const modelTrain: Operator<ModelTrainParams> = {
  name: NAME,

  plan (inputs, params, blobs): JobPlan<ModelTrainParams> {
    const raw = isPlainObject(params) ? { ...params } : {}
    const batchRows = raw.batchRows
    delete raw.batchRows
    if (raw.mode === 'init') throw bad('init runs on the coordinator\'s own pool, not as a job')
    // Checked as a shard's params would be; the shard's own range is cut later.
    const { start: _s, end: _e, ...p } = checkTaskParams({ ...raw, start: 0, end: 1 })
    void _s
    void _e
    const { bytes, info, specs } = checkModelBlob(blobs)
    const t = checkInputs(NAME, inputs, ['x', 'y', 'w'])
    const x = requireInput(t, 'x')
    const y = requireInput(t, 'y')
    const rows = checkTrainData(NAME, x, y, info, p.loss)
    const P = parameterCount(specs)
    if (P !== p.paramCount || requireInput(t, 'w').data.length !== P) throw new InvalidInputError(`${NAME}: w and paramCount must match the model's ${P} weights`, 'ERR_MODEL_MISMATCH')
    let units: number
    if (p.mode === 'local') {
      units = p.replicas ?? 1
      if (rows < units) throw bad(`${units} replicas need at least as many rows; x has ${rows}`)
    } else if (p.mode === 'eval') {
      units = rows
    } else {
      units = int(batchRows, 'batchRows (rows in this step)', 1, rows - (p.offset ?? 0))
    }
    const flops = 3 * Math.max(info.flopsPerRow, 2 * P)
    return {
      op: NAME,
      units,
      cost: {
        flopsPerUnit: p.mode === 'local' ? flops * (p.steps ?? 1) * Math.min(p.batchSize ?? 1, rows) : p.mode === 'eval' ? flops / 3 : flops,
        bytesInPerUnit: 0,
        // x, y, the weights and the model, each fetched once by content address.
        bytesInFixed: x.data.byteLength + y.data.byteLength + P * BYTES_PER_ELEMENT + bytes.byteLength,
        bytesOutPerUnit: 0,
        // Every shard returns one whole vector, however few its rows.
        bytesOutFixed: outLength(p) * BYTES_PER_ELEMENT
      },
      params: p,
      output: { dtype: 'float32', shape: [outLength(p)] }
    }
  },

  shard (plan, inputs, range, blobs): ShardTask {
    const model = checkModelBlob(blobs).bytes
    const t = inputs as Record<string, HostTensor>
    return {
      op: NAME,
      params: { ...plan.params, start: range.start, end: range.end },
      inputs: { x: requireInput(t, 'x'), y: requireInput(t, 'y'), w: requireInput(t, 'w') },
      // x and y are the same for every round; w for every shard of a round; the model for the whole job.
      shared: ['x', 'y', 'w'],
      blobs: { model }
    }
  },

  validateTask (task) {
    return checkTask(task).rows
  },

  async map (tf, task): Promise<Tensors> {
    const c = checkTask(task)
    const specs = viewPackedModel(c.bytes).weightSpecs
    if (c.p.mode === 'init') return await runInit(tf, c, specs)
    const data = c.p.mode === 'grad' ? await runGrad(tf, c, specs) : c.p.mode === 'local' ? await runLocal(tf, c, specs) : await runEval(tf, c, specs)
    return { out: hostTensor('float32', [data.length], data) }
  },

  reducer (plan) {
    return sumReducer(NAME, plan.units, outLength(plan.params))
  }
}
