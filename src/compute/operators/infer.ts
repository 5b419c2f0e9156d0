import { createHash } from 'node:crypto'
import { InvalidInputError } from '../../errors.ts'
import { describeModel, describePackedModel, parameterCount, unpackModel, viewPackedModel } from '../model.ts'
import { imageTensor, readImageHeader, slicePack, unpackImages } from '../images.ts'
import { BYTES_PER_ELEMENT, describe, hostTensor, rowSize, rowSlice, sizeOf } from '../tensor.ts'
import { checkDType, checkInputs, checkMinRank, checkOutputSize, checkParams, isPlainObject, requireInput, rowsReducer } from './common.ts'
import type { LayersModel } from '@tensorflow/tfjs-layers'
import type { GraphModel } from '@tensorflow/tfjs-converter'
import type { Tensor } from '@tensorflow/tfjs-core'
import type { ModelArtifacts, ModelInfo, ModelSignature } from '../model.ts'
import type { HostTensor } from '../tensor.ts'
import type { NamedImage } from '../images.ts'
import type { JobPlan, Operator, ShardTask, Tensors, TF } from './types.ts'

/**
 * Batched inference of a TF.js model: x [n, ...features] (float32, or int32
 * cast to float32) -> float32 [n, ...outputs], sharded by rows.
 *
 * The model is data, never code: `blobs.model` holds its artifacts packed by
 * `packModel` (src/compute/model.ts): a layers-model (Keras JSON, Sequential
 * or functional) or a graph-model (tensorflowjs_converter's GraphDef JSON),
 * weights float32, int32 or quantised. The coordinator's plan reads the
 * model as data (describeModel: every layer class or op checked against an
 * allow-list, shapes computed through the graph, no TF.js on the main
 * thread); x's feature shape must equal the model's input shape. A job file
 * names the model as a path (`params.model`); the client reads that folder
 * (`readModelDir`), packs it into `blobs.model` and drops the param, so the
 * operator never sees paths.
 *
 * params: {batchSize?, outputLayer?}. batchSize: rows per forward pass
 * inside a shard (default DEFAULT_INFER_BATCH). outputLayer: return that
 * layer's (layers-models) or node's (graph-models) activations instead of
 * the model's output, e.g. the pooled features of a classifier as an
 * embedding. Shards carry {batchSize, inputShape, outputShape,
 * outputLayer?}; a worker checks the loaded model's real shapes, and every
 * batch's output shape, against them.
 *
 * Workers load layers-models with tfjs-layers' loadLayersModel and
 * graph-models with tfjs-converter's loadGraphModel (io.fromMemory), on the
 * same tfjs-core instance as their backend (one copy in node_modules), and
 * keep them by the SHA-256 of the blob, so a worker parses each model once
 * however many shards it runs.
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

/** A layer or node name in params.outputLayer; Keras names are well under 100 characters, converted graph nodes a few hundred. */
export const MAX_OUTPUT_LAYER_LENGTH = 1024

export interface InferParams {
  batchSize: number
  /** The model's input shape without the batch dimension. */
  inputShape: number[]
  /** The model's (or outputLayer's) output shape without the batch dimension. */
  outputShape: number[]
  /** The layer (layers-model) or node (graph-model) whose output is returned; the model's output if absent. */
  outputLayer?: string
  /** The rows are images (`blobs.images`, an image pack), decoded and resized to `size`, divided by `scale`, in the worker. */
  images?: ImageParams
}

export interface ImageParams {
  size: [number, number]
  scale: number
}

function checkImageParams (value: unknown): ImageParams | undefined {
  if (value === undefined) return undefined
  const v = value as Record<string, unknown> | null
  const size = v?.size
  const side = (d: unknown): boolean => Number.isSafeInteger(d) && (d as number) >= 1 && (d as number) <= 8192
  if (v === null || typeof v !== 'object' || Array.isArray(v) || !Array.isArray(size) || size.length !== 2 || !size.every(side) ||
      typeof v.scale !== 'number' || !Number.isFinite(v.scale) || v.scale <= 0 || Object.keys(v).some(k => k !== 'size' && k !== 'scale')) {
    throw new InvalidInputError(`${NAME}: params.images must be {"size": [height, width] (1..8192 each), "scale": a positive number (255 maps pixels to [0, 1])}`, 'ERR_BAD_PARAMS')
  }
  return { size: [size[0] as number, size[1] as number], scale: v.scale }
}

/** A model taking images must take [h, w, 3] at the size the job resizes to. */
function checkImageModel (images: ImageParams, info: ModelInfo): void {
  const want = [images.size[0], images.size[1], 3]
  if (!eq(info.inputShape, want)) {
    throw new InvalidInputError(`${NAME}: the images are resized to ${dims(want)} but the model takes [n, ${info.inputShape.join(', ')}]; set params.images.size to the model's height and width`, 'ERR_SHAPE_MISMATCH')
  }
}

function checkBlob (blobs: unknown): Uint8Array {
  if (!isPlainObject(blobs)) throw new InvalidInputError(`${NAME}: blobs.model is missing; it must hold a packed TF.js model (packModel)`, 'ERR_MISSING_MODEL')
  for (const key of Object.keys(blobs)) {
    if (key !== 'model' && key !== 'images') throw new InvalidInputError(`${NAME}: unexpected blob '${key}'; expected: model, images`, 'ERR_BAD_INPUT')
  }
  const model = blobs.model
  if (!(model instanceof Uint8Array)) throw new InvalidInputError(`${NAME}: blobs.model is missing; it must hold a packed TF.js model (packModel)`, 'ERR_MISSING_MODEL')
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

function checkOutputLayer (value: unknown): string | undefined {
  if (value === undefined) return undefined
  if (typeof value !== 'string' || value.length === 0 || value.length > MAX_OUTPUT_LAYER_LENGTH) {
    throw new InvalidInputError(`${NAME}: params.outputLayer must be a layer or node name of 1..${MAX_OUTPUT_LAYER_LENGTH} characters`, 'ERR_BAD_PARAMS')
  }
  return value
}

const eq = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((d, i) => d === b[i])
const dims = (s: readonly number[]): string => `[${s.join(', ')}]`

/** The images blob of a job or task whose rows are images; refuses x beside it, and images without params.images. */
function imagePack (inputs: unknown, blobs: unknown, images: ImageParams | undefined): NamedImage[] | undefined {
  const pack = isPlainObject(blobs) ? blobs.images : undefined
  if (images === undefined) {
    if (pack !== undefined) throw new InvalidInputError(`${NAME}: blobs.images needs params.images {"size", "scale"}`, 'ERR_BAD_PARAMS')
    return undefined
  }
  if (!(pack instanceof Uint8Array)) throw new InvalidInputError(`${NAME}: params.images is given but there are no images (blobs.images)`, 'ERR_MISSING_INPUT')
  checkInputs(NAME, inputs, [])
  return unpackImages(pack)
}

/** A task's params and blob, checked against each other: the shapes it carries must be the model's. */
function checkTask (task: ShardTask): { x: HostTensor | NamedImage[], bytes: Uint8Array, params: InferParams, info: ModelInfo } {
  const p = checkParams(NAME, task.params, ['batchSize', 'inputShape', 'outputShape', 'outputLayer', 'images'])
  const params: InferParams = { batchSize: checkBatch(p.batchSize), inputShape: shapeList(p.inputShape, 'inputShape'), outputShape: shapeList(p.outputShape, 'outputShape') }
  const outputLayer = checkOutputLayer(p.outputLayer)
  if (outputLayer !== undefined) params.outputLayer = outputLayer
  const images = checkImageParams(p.images)
  if (images !== undefined) params.images = images
  const bytes = checkBlob(task.blobs)
  const info = describePackedModel(bytes, { outputLayer })
  if (!eq(info.inputShape, params.inputShape) || !eq(info.outputShape, params.outputShape)) {
    throw new InvalidInputError(`${NAME}: the task's shapes ${dims(params.inputShape)} -> ${dims(params.outputShape)} do not match its model's (${dims(info.inputShape)} -> ${dims(info.outputShape)})`, 'ERR_MODEL_MISMATCH')
  }
  const list = imagePack(task.inputs, task.blobs, images)
  if (images !== undefined) checkImageModel(images, info)
  return { x: list ?? checkX(task.inputs, info), bytes, params, info }
}

/** A model loaded in this worker, and the truncated views of it that outputLayer asked for. */
type Loaded =
  | { format: 'layers-model', model: LayersModel, views: Map<string, LayersModel> }
  | { format: 'graph-model', model: GraphModel }

// Per worker: every worker thread has its own module instance, hence its own cache.
const cache = new Map<string, Loaded>()

function mismatch (got: string, want: string): InvalidInputError {
  return new InvalidInputError(`${NAME}: the loaded model maps ${got}, not ${want} as its topology says`, 'ERR_MODEL_MISMATCH')
}

// tfjs leaves some dimensions it could infer as null (Reshape's free one); those match anything here,
// and every batch's real output is checked against outputShape.
const fits = (s: ReadonlyArray<number | null> | undefined, w: number[]): boolean => s !== undefined && s.length === w.length + 1 && s.slice(1).every((d, i) => d === null || d === -1 || d === w[i])
const shown = (s: ReadonlyArray<number | null> | undefined): string => `[${(s ?? []).slice(1).map(d => d ?? '?').join(', ')}]`

async function loadLayers (tf: TF, artifacts: ModelArtifacts, params: InferParams): Promise<Loaded> {
  // Loaded here, in the worker, never at module load: the main thread imports this file too.
  const layers = await import('@tensorflow/tfjs-layers')
  const model = await layers.loadLayersModel(tf.io.fromMemory(artifacts))
  const input = model.inputs[0]?.shape
  if (model.inputs.length !== 1 || model.outputs.length !== 1 || !fits(input, params.inputShape)) {
    const got = `${shown(input)} -> ${shown(model.outputs[0]?.shape)}`
    model.dispose()
    throw mismatch(got, `${dims(params.inputShape)} -> ...`)
  }
  return { format: 'layers-model', model, views: new Map() }
}

async function loadGraph (tf: TF, artifacts: ModelArtifacts, info: ModelInfo, params: InferParams): Promise<Loaded> {
  const converter = await import('@tensorflow/tfjs-converter')
  // tfjs-converter reads versions.producer; a GraphDef written without versions means none.
  const topology = { versions: {}, ...artifacts.modelTopology }
  const model = await converter.loadGraphModel(tf.io.fromMemory({ ...artifacts, modelTopology: topology }))
  const input = model.inputs.find(t => t.name === info.inputName || t.name === `${info.inputName ?? ''}:0`)
  if (input === undefined || !fits(input.shape, params.inputShape)) {
    const got = shown(input?.shape)
    model.dispose()
    throw mismatch(`${got} -> ...`, `${dims(params.inputShape)} -> ...`)
  }
  return { format: 'graph-model', model }
}

async function loadModel (tf: TF, bytes: Uint8Array, info: ModelInfo, params: InferParams): Promise<Loaded> {
  const key = createHash('sha256').update(bytes).digest('hex')
  let hit = cache.get(key)
  if (hit !== undefined) {
    // Most recently used last.
    cache.delete(key)
  } else {
    const artifacts = unpackModel(bytes)
    hit = info.format === 'graph-model' ? await loadGraph(tf, artifacts, info, params) : await loadLayers(tf, artifacts, params)
  }
  cache.set(key, hit)
  while (cache.size > MAX_CACHED_MODELS) {
    const [oldest, old] = cache.entries().next().value as [string, Loaded]
    cache.delete(oldest)
    // A view shares its layers' weights with the model: disposing the model frees them, views need nothing more.
    old.model.dispose()
  }
  return hit
}

/** The layers-model that returns outputLayer's activations (built once, kept with the model), or the model. */
function layersView (loaded: Loaded & { format: 'layers-model' }, params: InferParams, layers: typeof import('@tensorflow/tfjs-layers')): LayersModel {
  const name = params.outputLayer
  const model = name === undefined ? loaded.model : loaded.views.get(name) ?? (() => {
    const out = loaded.model.getLayer(name).output
    if (Array.isArray(out)) throw new InvalidInputError(`${NAME}: layer ${name} has ${out.length} outputs; one is supported`, 'ERR_UNSUPPORTED_MODEL')
    const view = layers.model({ inputs: loaded.model.inputs, outputs: out })
    loaded.views.set(name, view)
    return view
  })()
  if (!fits(model.outputs[0]?.shape, params.outputShape)) throw mismatch(`${shown(model.inputs[0]?.shape)} -> ${shown(model.outputs[0]?.shape)}`, `${dims(params.inputShape)} -> ${dims(params.outputShape)}`)
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
    const p = checkParams(NAME, params, ['batchSize', 'outputLayer', 'images'])
    const batchSize = checkBatch(p.batchSize)
    const outputLayer = checkOutputLayer(p.outputLayer)
    const images = checkImageParams(p.images)
    const bytes = checkBlob(blobs)
    const model = viewPackedModel(bytes)
    const info = describeModel(model, { outputLayer })
    const list = imagePack(inputs, blobs, images)
    let n: number
    let bytesPerRow: number
    if (list !== undefined && images !== undefined) {
      checkImageModel(images, info)
      // Every file's structure is walked here, so a truncated or mislabelled one fails before a shard starts, by name.
      for (const img of list) readImageHeader(img.bytes, img.name)
      n = list.length
      if (n === 0) throw new InvalidInputError(`${NAME}: params.images is given but the job names no image`, 'ERR_EMPTY_INPUT')
      bytesPerRow = list.reduce((sum, img) => sum + img.bytes.byteLength, 0) / n
    } else {
      const x = checkX(inputs, info)
      n = x.shape[0] as number
      if (n === 0) throw new InvalidInputError(`${NAME}: x is ${describe(x)}; it needs at least one row`, 'ERR_EMPTY_INPUT')
      bytesPerRow = rowSize(x) * BYTES_PER_ELEMENT
    }
    const outShape = [n, ...info.outputShape]
    checkOutputSize(NAME, outShape)
    const planParams: InferParams = { batchSize, inputShape: info.inputShape, outputShape: info.outputShape }
    if (outputLayer !== undefined) planParams.outputLayer = outputLayer
    if (images !== undefined) planParams.images = images
    return {
      op: NAME,
      units: n,
      // From the layer or op shapes; never below a multiply and an add per weight per row, the old (dense-only) estimate.
      cost: { flopsPerUnit: Math.max(info.flopsPerRow, 2 * parameterCount(model.weightSpecs)), bytesInPerUnit: bytesPerRow, bytesInFixed: bytes.byteLength, bytesOutPerUnit: sizeOf(info.outputShape) * BYTES_PER_ELEMENT },
      params: planParams,
      output: { dtype: 'float32', shape: outShape }
    }
  },

  shard (plan, inputs, range, blobs): ShardTask {
    const { batchSize, inputShape, outputShape, outputLayer, images } = plan.params
    const params: InferParams = { batchSize, inputShape, outputShape }
    if (outputLayer !== undefined) params.outputLayer = outputLayer
    const model = checkBlob(blobs)
    if (images !== undefined) {
      // The shard's own images only, as a pack of their file bytes: the peer decodes them.
      const pack = (blobs as Record<string, Uint8Array>).images as Uint8Array
      const none: Tensors = {}
      return { op: NAME, params: { ...params, images }, inputs: none, blobs: { model, images: slicePack(pack, range.start, range.end) } }
    }
    const x = requireInput(inputs, 'x')
    return { op: NAME, params: { ...params }, inputs: { x: rowSlice(x, range.start, range.end) }, blobs: { model } }
  },

  validateTask (task) {
    const { x } = checkTask(task)
    return Array.isArray(x) ? x.length : x.shape[0] as number
  },

  async map (tf, task): Promise<Tensors> {
    const checked = checkTask(task)
    const { bytes, params, info } = checked
    // Images are decoded here, in the worker: the map work the mesh shares out.
    const x = Array.isArray(checked.x) ? imageTensor(checked.x, params.images?.size ?? [0, 0], params.images?.scale ?? 1) : checked.x
    const loaded = await loadModel(tf, bytes, info, params)
    const layers = loaded.format === 'layers-model' ? await import('@tensorflow/tfjs-layers') : undefined
    const view = loaded.format === 'layers-model' ? layersView(loaded, params, layers as typeof import('@tensorflow/tfjs-layers')) : undefined
    const n = x.shape[0] as number
    const inRow = sizeOf(params.inputShape)
    const outRow = sizeOf(params.outputShape)
    const out = new Float32Array(n * outRow)
    // One batch at a time, each copied out before the next runs: a shard's activations never all live at once.
    for (let start = 0; start < n; start += params.batchSize) {
      const rows = Math.min(params.batchSize, n - start)
      const y = tf.tidy(() => {
        let t: Tensor = tf.tensor(x.data.subarray(start * inRow, (start + rows) * inRow), [rows, ...params.inputShape], x.dtype)
        if (t.dtype !== 'float32') t = tf.cast(t, 'float32')
        const r = view !== undefined
          ? view.predict(t, { batchSize: rows })
          : (loaded.model as GraphModel).execute({ [info.inputName as string]: t }, info.outputName)
        if (Array.isArray(r)) throw new InvalidInputError(`${NAME}: the model has ${r.length} outputs; one is supported`, 'ERR_UNSUPPORTED_MODEL')
        return r as Tensor
      })
      try {
        if (!eq(y.shape, [rows, ...params.outputShape])) throw mismatch(`${dims(params.inputShape)} -> ${dims(y.shape.slice(1))}`, `${dims(params.inputShape)} -> ${dims(params.outputShape)}`)
        if (y.dtype !== 'float32') throw new InvalidInputError(`${NAME}: the model returns ${y.dtype}; float32 is supported`, 'ERR_UNSUPPORTED_MODEL')
        out.set(await y.data<'float32'>(), start * outRow)
      } finally {
        y.dispose()
      }
    }
    return { out: hostTensor('float32', [n, ...params.outputShape], out) }
  },

  reducer (plan) {
    return rowsReducer(NAME, plan.output.shape)
  }
}
