import { createHash } from 'node:crypto'
import { InvalidInputError } from '../../errors.ts'
import { modelSignature, parameterCount, unpackModel } from '../model.ts'
import { BYTES_PER_ELEMENT, describe, hostTensor, rowSize, rowSlice, sizeOf } from '../tensor.ts'
import { checkDType, checkInputs, checkMinRank, checkOutputSize, checkParams, isPlainObject, requireInput, rowsReducer } from './common.ts'
import type { LayersModel } from '@tensorflow/tfjs-layers'
import type { Tensor } from '@tensorflow/tfjs-core'
import type { ModelSignature } from '../model.ts'
import type { HostTensor } from '../tensor.ts'
import type { JobPlan, Operator, ShardTask, Tensors, TF } from './types.ts'

/**
 * Batched inference of a TF.js Layers model: x [n, ...features] (float32, or
 * int32 cast to float32) -> float32 [n, ...outputs], sharded by rows.
 *
 * The model is data, never code: `blobs.model` holds its artifacts packed by
 * `packModel` (src/compute/model.ts). The coordinator's plan unpacks and
 * validates it and reads its input and output shapes from the topology
 * JSON (no TF.js on the main thread); x's feature shape must equal the
 * model's input shape. A job file names the model as a path
 * (`params.model`); the client reads that folder (`readModelDir`), packs it
 * into `blobs.model` and drops the param, so the operator never sees paths.
 *
 * params: {batchSize?} rows per predict() call inside a shard (default
 * DEFAULT_INFER_BATCH). Shards carry {batchSize, inputShape, outputShape};
 * a worker checks the loaded model's real shapes against the last two.
 *
 * Workers load the model with tfjs-layers' loadLayersModel(io.fromMemory)
 * on the same tfjs-core instance as their backend (one copy in
 * node_modules), and keep it by the SHA-256 of the blob, so a worker parses
 * each model once however many shards it runs.
 */

const NAME = 'infer'

/** Rows per predict() call when the job does not say: TF.js's own default for predict is 32; larger batches amortise kernel overhead on wasm. */
export const DEFAULT_INFER_BATCH = 256

/** Largest batchSize: one batch's activations live at once; 65536 rows of a 784-wide MLP is ~200 MiB in the first layer alone. */
export const MAX_INFER_BATCH = 65_536

/**
 * Models a worker keeps loaded. Each holds its weights as backend tensors
 * (up to MAX_MODEL_WEIGHT_BYTES); two covers a job alternating between a
 * pair of models without letting a stream of models fill the worker's heap.
 */
export const MAX_CACHED_MODELS = 2

export interface InferParams {
  batchSize: number
  /** The model's input shape without the batch dimension. */
  inputShape: number[]
  /** The model's output shape without the batch dimension. */
  outputShape: number[]
}

function checkBlob (blobs: unknown): Uint8Array {
  if (!isPlainObject(blobs)) throw new InvalidInputError(`${NAME}: blobs.model is missing; it must hold a packed TF.js Layers model (packModel)`, 'ERR_MISSING_MODEL')
  for (const key of Object.keys(blobs)) {
    if (key !== 'model') throw new InvalidInputError(`${NAME}: unexpected blob '${key}'; expected: model`, 'ERR_BAD_INPUT')
  }
  const model = blobs.model
  if (!(model instanceof Uint8Array)) throw new InvalidInputError(`${NAME}: blobs.model is missing; it must hold a packed TF.js Layers model (packModel)`, 'ERR_MISSING_MODEL')
  return model
}

function checkBatch (value: unknown): number {
  if (value === undefined) return DEFAULT_INFER_BATCH
  if (!Number.isSafeInteger(value) || (value as number) < 1 || (value as number) > MAX_INFER_BATCH) {
    throw new InvalidInputError(`${NAME}: params.batchSize is ${JSON.stringify(value) ?? 'undefined'}; it must be an integer in [1, ${MAX_INFER_BATCH}]`, 'ERR_BAD_PARAMS')
  }
  return value as number
}

function checkX (inputs: unknown, sig: ModelSignature): HostTensor {
  const x = requireInput(checkInputs(NAME, inputs, ['x']), 'x')
  checkDType(NAME, 'x', x, ['float32', 'int32'])
  checkMinRank(NAME, 'x', x, 1)
  const features = x.shape.slice(1)
  if (features.length !== sig.inputShape.length || features.some((d, i) => d !== sig.inputShape[i])) {
    throw new InvalidInputError(`${NAME}: x is ${describe(x)} but the model takes [n, ${sig.inputShape.join(', ')}]; x's shape after the first (row) dimension must equal the model's input shape`, 'ERR_SHAPE_MISMATCH')
  }
  return x
}

function shapeList (value: unknown, what: string): number[] {
  if (!Array.isArray(value) || value.length === 0 || value.length > 8 || !value.every(d => Number.isSafeInteger(d) && d > 0)) {
    throw new InvalidInputError(`${NAME}: params.${what} must be a list of positive integers`, 'ERR_BAD_PARAMS')
  }
  return value as number[]
}

/** A task's params and blob, checked against each other: the shapes it carries must be the model's. */
function checkTask (task: ShardTask): { x: HostTensor, bytes: Uint8Array, params: InferParams } {
  const p = checkParams(NAME, task.params, ['batchSize', 'inputShape', 'outputShape'])
  const params: InferParams = { batchSize: checkBatch(p.batchSize), inputShape: shapeList(p.inputShape, 'inputShape'), outputShape: shapeList(p.outputShape, 'outputShape') }
  const bytes = checkBlob(task.blobs)
  const sig = modelSignature(unpackModel(bytes).modelTopology)
  const eq = (a: number[], b: number[]): boolean => a.length === b.length && a.every((d, i) => d === b[i])
  if (!eq(sig.inputShape, params.inputShape) || !eq(sig.outputShape, params.outputShape)) {
    throw new InvalidInputError(`${NAME}: the task's shapes do not match its model's ([${sig.inputShape.join(', ')}] -> [${sig.outputShape.join(', ')}])`, 'ERR_MODEL_MISMATCH')
  }
  return { x: checkX(task.inputs, sig), bytes, params }
}

// Per worker: every worker thread has its own module instance, hence its own cache.
const cache = new Map<string, LayersModel>()

async function loadModel (tf: TF, bytes: Uint8Array, params: InferParams): Promise<LayersModel> {
  const key = createHash('sha256').update(bytes).digest('hex')
  const hit = cache.get(key)
  if (hit !== undefined) {
    // Most recently used last.
    cache.delete(key)
    cache.set(key, hit)
    return hit
  }
  // Loaded here, in the worker, never at module load: the main thread imports this file too.
  const layers = await import('@tensorflow/tfjs-layers')
  const model = await layers.loadLayersModel(tf.io.fromMemory(unpackModel(bytes)))
  const dims = (s: ReadonlyArray<number | null> | undefined): string => `[${(s ?? []).slice(1).join(', ')}]`
  const want = (s: number[]): string => `[${s.join(', ')}]`
  // tfjs-layers leaves some dimensions it could infer as null (Reshape's free one); those match anything here,
  // and map checks the real output's size against outputShape.
  const fits = (s: ReadonlyArray<number | null> | undefined, w: number[]): boolean => s !== undefined && s.length === w.length + 1 && s.slice(1).every((d, i) => d === null || d === w[i])
  if (model.inputs.length !== 1 || model.outputs.length !== 1 ||
    !fits(model.inputs[0]?.shape, params.inputShape) || !fits(model.outputs[0]?.shape, params.outputShape)) {
    model.dispose()
    throw new InvalidInputError(`${NAME}: the loaded model maps ${dims(model.inputs[0]?.shape)} -> ${dims(model.outputs[0]?.shape)}, not ${want(params.inputShape)} -> ${want(params.outputShape)} as its topology says`, 'ERR_MODEL_MISMATCH')
  }
  cache.set(key, model)
  while (cache.size > MAX_CACHED_MODELS) {
    const [oldest, old] = cache.entries().next().value as [string, LayersModel]
    cache.delete(oldest)
    old.dispose()
  }
  return model
}

/** Models this worker holds (for tests). */
export function cachedModelCount (): number {
  return cache.size
}

export const infer: Operator<InferParams> = {
  name: NAME,

  plan (inputs, params, blobs): JobPlan<InferParams> {
    if (isPlainObject(params) && 'model' in params) {
      throw new InvalidInputError(`${NAME}: params.model is a job file's path to a model.json; the client loads it (readModelDir + packModel) into blobs.model`, 'ERR_BAD_PARAMS')
    }
    const p = checkParams(NAME, params, ['batchSize'])
    const batchSize = checkBatch(p.batchSize)
    const bytes = checkBlob(blobs)
    const artifacts = unpackModel(bytes)
    const sig = modelSignature(artifacts.modelTopology)
    const x = checkX(inputs, sig)
    const n = x.shape[0] as number
    if (n === 0) throw new InvalidInputError(`${NAME}: x is ${describe(x)}; it needs at least one row`, 'ERR_EMPTY_INPUT')
    const outShape = [n, ...sig.outputShape]
    checkOutputSize(NAME, outShape)
    return {
      op: NAME,
      units: n,
      // A multiply and an add per weight per row: exact for dense layers, a lower bound for convolutions.
      cost: { flopsPerUnit: 2 * parameterCount(artifacts.weightSpecs), bytesInPerUnit: rowSize(x) * BYTES_PER_ELEMENT, bytesInFixed: bytes.byteLength, bytesOutPerUnit: sizeOf(sig.outputShape) * BYTES_PER_ELEMENT },
      params: { batchSize, inputShape: sig.inputShape, outputShape: sig.outputShape },
      output: { dtype: 'float32', shape: outShape }
    }
  },

  shard (plan, inputs, range, blobs) {
    const x = requireInput(inputs, 'x')
    const { batchSize, inputShape, outputShape } = plan.params
    return { op: NAME, params: { batchSize, inputShape, outputShape }, inputs: { x: rowSlice(x, range.start, range.end) }, blobs: { model: checkBlob(blobs) } }
  },

  validateTask (task) {
    return checkTask(task).x.shape[0] as number
  },

  async map (tf, task): Promise<Tensors> {
    const { x, bytes, params } = checkTask(task)
    const model = await loadModel(tf, bytes, params)
    const y = tf.tidy(() => {
      let t: Tensor = tf.tensor(x.data, x.shape, x.dtype)
      if (t.dtype !== 'float32') t = tf.cast(t, 'float32')
      const out = model.predict(t, { batchSize: params.batchSize })
      if (Array.isArray(out)) throw new InvalidInputError(`${NAME}: the model has ${out.length} outputs; one is supported`, 'ERR_UNSUPPORTED_MODEL')
      return out
    })
    try {
      const data = await y.data<'float32'>()
      return { out: hostTensor('float32', [x.shape[0] as number, ...params.outputShape], data) }
    } finally {
      y.dispose()
    }
  },

  reducer (plan) {
    return rowsReducer(NAME, plan.output.shape)
  }
}
