import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises'
import { dirname, isAbsolute, join, normalize, sep } from 'node:path'
import { InvalidInputError, LimitExceededError } from '../errors.ts'
import { isPlainObject } from './operators/common.ts'
import { graphSignature } from './model-graph.ts'
import { layersSignature } from './model-layers.ts'
import { BYTES_PER_ELEMENT, sizeOf } from './tensor.ts'
import type { ModelSignature, SignatureOptions } from './model-layers.ts'

/**
 * TF.js models as data: the bytes a job carries as `blobs.model`, and the
 * `model.json` + weight files TF.js itself writes (`model.save()`) or
 * tensorflowjs_converter writes (layers-models and graph-models, weights
 * float32, int32, or quantised to uint8 / uint16 / float16). Nothing here
 * loads TF.js: the coordinator validates a model on its main thread
 * (describeModel: model-layers.ts and model-graph.ts), and only workers
 * ever turn it into a LayersModel or GraphModel.
 *
 * Packed layout (all integers little-endian):
 *
 *   0   8 bytes  magic "TMMODEL1"
 *   8   uint32   header length H
 *   12  H bytes  UTF-8 JSON {modelTopology, weightSpecs, format?, generatedBy?, convertedBy?}
 *   ..  0-3 zero bytes, so the weights start at a multiple of 4
 *   ..  weight bytes: each spec's tensor in spec order, C order, little-endian,
 *       4 bytes per element or its quantised width (storedBytes)
 *
 * The total length must be exactly that: no trailing bytes.
 */

export const MODEL_MAGIC = 'TMMODEL1'
const MAGIC_BYTES = new TextEncoder().encode(MODEL_MAGIC)
const PREAMBLE_BYTES = MAGIC_BYTES.length + 4

/**
 * The JSON header (topology + weight specs). A Layers model.json is a few
 * KiB for an MLP and ~100-300 KiB for MobileNet/ResNet-sized graphs
 * (topology ~1 KiB per layer, ~100 bytes per weight spec); 4 MiB leaves an
 * order of magnitude while keeping JSON.parse of a hostile header cheap.
 */
export const MAX_MODEL_HEADER_BYTES = 4 * 1024 * 1024

/**
 * Weight bytes. The largest Layers models people run in TF.js (ResNet50,
 * ~100 MB) fit well; every worker holds a model twice (the blob and its
 * backend tensors) and a peer runs one worker per core, so 256 MiB is also
 * where a 2-4 core commodity machine would start to swap.
 */
export const MAX_MODEL_WEIGHT_BYTES = 256 * 1024 * 1024

/** Weight tensors; ResNet152 has ~900. 8192 bounds the per-spec work of a hostile header. */
export const MAX_MODEL_WEIGHTS = 8192

/** A weight's name (e.g. `dense_Dense1/kernel`); Keras names are well under 100 characters. */
export const MAX_WEIGHT_NAME_LENGTH = 512

/** Rank of a weight tensor; conv kernels are rank 4 (5 for 3-D convs). */
export const MAX_WEIGHT_RANK = 8

/** Weight dtypes a packed model may hold: the two the rest of the mesh carries. */
export const MODEL_WEIGHT_DTYPES = ['float32', 'int32'] as const

/**
 * How tensorflowjs_converter stores a quantised weight (`--quantize_uint8`,
 * `--quantize_uint16`, `--quantize_float16`): value = stored * scale + min
 * for the integer forms (rounded for int32 weights), an IEEE half for
 * float16 (float32 weights only). TF.js dequantises when it loads.
 */
export type WeightQuantization =
  | { dtype: 'uint8' | 'uint16', scale: number, min: number }
  | { dtype: 'float16' }

/** Bytes per stored element of each quantised dtype (tfjs-core's DTYPE_VALUE_SIZE_MAP). */
export const QUANTIZED_BYTES = { uint8: 1, uint16: 2, float16: 2 } as const

export interface WeightSpec {
  name: string
  shape: number[]
  dtype: typeof MODEL_WEIGHT_DTYPES[number]
  quantization?: WeightQuantization
}

/** TF.js `ModelArtifacts` as far as a Layers model uses them. */
export interface ModelArtifacts {
  modelTopology: Record<string, unknown>
  weightSpecs: WeightSpec[]
  /** One buffer: TF.js 4 accepts an ArrayBuffer as `weightData`. */
  weightData: ArrayBuffer
  format?: string
  generatedBy?: string
  convertedBy?: string | null
}

/** What packModel accepts: TF.js may hand weights as one buffer, a list of buffers, or a view. */
export interface ModelArtifactsInput extends Omit<ModelArtifacts, 'weightData' | 'weightSpecs'> {
  weightSpecs: readonly unknown[]
  weightData: ArrayBuffer | ArrayBuffer[] | Uint8Array
}

function bad (what: string, code = 'ERR_BAD_MODEL'): InvalidInputError {
  return new InvalidInputError(`model: ${what}`, code)
}

function checkString (value: unknown, what: string, maxLength = 256): string | undefined {
  if (value === undefined) return undefined
  if (typeof value !== 'string' || value.length > maxLength) throw bad(`${what} must be a string of at most ${maxLength} characters`)
  return value
}

function checkQuantization (q: unknown, dtype: WeightSpec['dtype'], what: string): WeightQuantization {
  if (!isPlainObject(q)) throw bad(`${what}.quantization must be {dtype, scale?, min?}`)
  // original_dtype: written by some converter versions; the spec's own dtype says the same.
  for (const key of Object.keys(q)) {
    if (!['dtype', 'scale', 'min', 'original_dtype'].includes(key)) throw bad(`${what}.quantization has key '${key}'; allowed: dtype, scale, min`)
  }
  if (q.dtype === 'uint8' || q.dtype === 'uint16') {
    if (typeof q.scale !== 'number' || !Number.isFinite(q.scale) || typeof q.min !== 'number' || !Number.isFinite(q.min)) throw bad(`${what} is ${q.dtype}-quantised and needs finite numbers scale and min`)
    return { dtype: q.dtype, scale: q.scale, min: q.min }
  }
  if (q.dtype === 'float16') {
    if (dtype !== 'float32') throw bad(`${what} is a ${dtype} weight; float16 quantisation applies to float32 weights only`)
    return { dtype: 'float16' }
  }
  throw bad(`${what}.quantization.dtype is ${JSON.stringify(q.dtype) ?? 'undefined'}; allowed: uint8, uint16, float16`, 'ERR_BAD_DTYPE')
}

/** Bytes one spec's weight takes in the packed data: 4 per element, or its quantised width. */
export function storedBytes (spec: Pick<WeightSpec, 'shape' | 'quantization'>): number {
  return sizeOf(spec.shape) * (spec.quantization === undefined ? BYTES_PER_ELEMENT : QUANTIZED_BYTES[spec.quantization.dtype])
}

/**
 * Weight specs checked one by one; returns them, the bytes they take packed
 * (`bytes`, quantised weights at their stored width) and the bytes they take
 * once TF.js has dequantised them to 4-byte elements (`decodedBytes`). Both
 * must fit MAX_MODEL_WEIGHT_BYTES: a worker holds the first as the blob and
 * the second as backend tensors.
 */
export function checkWeightSpecs (specs: unknown): { specs: WeightSpec[], bytes: number, decodedBytes: number } {
  if (!Array.isArray(specs)) throw bad('weightSpecs must be a list')
  if (specs.length > MAX_MODEL_WEIGHTS) throw new LimitExceededError(`model: ${specs.length} weight specs; at most ${MAX_MODEL_WEIGHTS} are allowed`)
  let bytes = 0
  let decodedBytes = 0
  const out = specs.map((s: unknown, i): WeightSpec => {
    if (!isPlainObject(s)) throw bad(`weightSpecs[${i}] is not an object`)
    for (const key of Object.keys(s)) {
      // 'group' (optimizer weights) and anything newer change how bytes map to values; refuse rather than misread.
      if (key !== 'name' && key !== 'shape' && key !== 'dtype' && key !== 'quantization') throw bad(`weightSpecs[${i}] has key '${key}'; allowed: name, shape, dtype, quantization`)
    }
    const { name, shape, dtype } = s
    if (typeof name !== 'string' || name.length === 0 || name.length > MAX_WEIGHT_NAME_LENGTH) throw bad(`weightSpecs[${i}].name must be a non-empty string of at most ${MAX_WEIGHT_NAME_LENGTH} characters`)
    if (!(MODEL_WEIGHT_DTYPES as readonly unknown[]).includes(dtype)) throw bad(`weightSpecs[${i}] (${name}) has dtype ${JSON.stringify(dtype) ?? 'undefined'}; allowed: ${MODEL_WEIGHT_DTYPES.join(', ')}`, 'ERR_BAD_DTYPE')
    if (!Array.isArray(shape) || shape.length > MAX_WEIGHT_RANK || !shape.every((d: unknown) => Number.isSafeInteger(d) && (d as number) >= 0)) {
      throw bad(`weightSpecs[${i}] (${name}) shape must be a list of at most ${MAX_WEIGHT_RANK} non-negative integers`)
    }
    const spec: WeightSpec = { name, shape: [...shape as number[]], dtype: dtype as WeightSpec['dtype'] }
    if (s.quantization !== undefined) spec.quantization = checkQuantization(s.quantization, spec.dtype, `weightSpecs[${i}] (${name})`)
    bytes += storedBytes(spec)
    decodedBytes += sizeOf(spec.shape) * BYTES_PER_ELEMENT
    if (!(decodedBytes <= MAX_MODEL_WEIGHT_BYTES)) throw new LimitExceededError(`model: weights need more than ${MAX_MODEL_WEIGHT_BYTES} bytes as float32 (at weightSpecs[${i}])`)
    return spec
  })
  return { specs: out, bytes, decodedBytes }
}

function weightBytes (data: ModelArtifactsInput['weightData']): Uint8Array {
  if (data instanceof Uint8Array) return data
  if (data instanceof ArrayBuffer) return new Uint8Array(data)
  if (Array.isArray(data)) {
    const total = data.reduce((n, b) => n + b.byteLength, 0)
    const out = new Uint8Array(total)
    let at = 0
    for (const b of data) { out.set(new Uint8Array(b), at); at += b.byteLength }
    return out
  }
  throw bad('weightData must be an ArrayBuffer, a list of them, or a Uint8Array')
}

function checkTopology (t: unknown): Record<string, unknown> {
  if (!isPlainObject(t)) throw bad('modelTopology must be a JSON object (a layers-model\'s Keras JSON or a graph-model\'s GraphDef)')
  return t
}

const align4 = (n: number): number => (n + 3) & ~3

/** Artifacts to the packed bytes above. Validates as unpackModel would, so a packed model always unpacks. */
export function packModel (artifacts: ModelArtifactsInput): Uint8Array {
  const modelTopology = checkTopology(artifacts.modelTopology)
  const { specs, bytes } = checkWeightSpecs(artifacts.weightSpecs)
  const weights = weightBytes(artifacts.weightData)
  if (weights.byteLength !== bytes) throw bad(`weightSpecs describe ${bytes} bytes but weightData has ${weights.byteLength}`)
  const header: Record<string, unknown> = { modelTopology, weightSpecs: specs }
  const format = checkString(artifacts.format, 'format')
  const generatedBy = checkString(artifacts.generatedBy, 'generatedBy')
  if (format !== undefined) header.format = format
  if (generatedBy !== undefined) header.generatedBy = generatedBy
  if (artifacts.convertedBy !== undefined && artifacts.convertedBy !== null) header.convertedBy = checkString(artifacts.convertedBy, 'convertedBy')
  const json = new TextEncoder().encode(JSON.stringify(header))
  if (json.byteLength > MAX_MODEL_HEADER_BYTES) throw new LimitExceededError(`model: header is ${json.byteLength} bytes; the limit is ${MAX_MODEL_HEADER_BYTES}`)
  const dataAt = align4(PREAMBLE_BYTES + json.byteLength)
  const out = new Uint8Array(dataAt + weights.byteLength)
  out.set(MAGIC_BYTES, 0)
  new DataView(out.buffer).setUint32(MAGIC_BYTES.length, json.byteLength, true)
  out.set(json, PREAMBLE_BYTES)
  out.set(weights, dataAt)
  return out
}

/** A packed model's parts, checked, with the weights as a view into the packed bytes (no copy). */
export interface PackedModelView extends Omit<ModelArtifacts, 'weightData'> {
  weights: Uint8Array
}

/**
 * Packed bytes to their parts without copying the weights. Every length is
 * checked before it is used: magic, header length against
 * MAX_MODEL_HEADER_BYTES and the bytes present, JSON, weight specs, and the
 * weight bytes against the specs exactly. Throws InvalidInputError
 * (ERR_BAD_MODEL, ERR_BAD_DTYPE) or LimitExceededError.
 */
export function viewPackedModel (bytes: Uint8Array): PackedModelView {
  if (!(bytes instanceof Uint8Array)) throw bad('a packed model must be a Uint8Array')
  if (bytes.byteLength < PREAMBLE_BYTES || MAGIC_BYTES.some((b, i) => bytes[i] !== b)) throw bad(`not a packed model (no '${MODEL_MAGIC}' magic)`)
  const headerBytes = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(MAGIC_BYTES.length, true)
  if (headerBytes > MAX_MODEL_HEADER_BYTES) throw new LimitExceededError(`model: header declares ${headerBytes} bytes; the limit is ${MAX_MODEL_HEADER_BYTES}`)
  if (PREAMBLE_BYTES + headerBytes > bytes.byteLength) throw bad(`header declares ${headerBytes} bytes but only ${bytes.byteLength - PREAMBLE_BYTES} follow`)
  let header: unknown
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(PREAMBLE_BYTES, PREAMBLE_BYTES + headerBytes)))
  } catch {
    throw bad('header is not UTF-8 JSON')
  }
  if (!isPlainObject(header)) throw bad('header is not a JSON object')
  for (const key of Object.keys(header)) {
    if (!['modelTopology', 'weightSpecs', 'format', 'generatedBy', 'convertedBy'].includes(key)) throw bad(`header has unknown key '${key}'`)
  }
  const modelTopology = checkTopology(header.modelTopology)
  const { specs, bytes: need } = checkWeightSpecs(header.weightSpecs)
  const dataAt = align4(PREAMBLE_BYTES + headerBytes)
  if (bytes.byteLength !== dataAt + need) throw bad(`weightSpecs describe ${need} weight bytes but ${bytes.byteLength - dataAt} follow the header`)
  const out: PackedModelView = { modelTopology, weightSpecs: specs, weights: bytes.subarray(dataAt) }
  const format = checkString(header.format, 'format')
  const generatedBy = checkString(header.generatedBy, 'generatedBy')
  const convertedBy = checkString(header.convertedBy, 'convertedBy')
  if (format !== undefined) out.format = format
  if (generatedBy !== undefined) out.generatedBy = generatedBy
  if (convertedBy !== undefined) out.convertedBy = convertedBy
  return out
}

/** Packed bytes back to artifacts, checked as viewPackedModel checks them; weightData is a fresh ArrayBuffer. */
export function unpackModel (bytes: Uint8Array): ModelArtifacts {
  const { weights, ...rest } = viewPackedModel(bytes)
  // A copy into a buffer of exactly the weights' size. Not bytes.slice(): on a
  // Node Buffer that is a view, and its .buffer the whole (pooled) allocation.
  return { ...rest, weightData: new Uint8Array(weights).buffer }
}

/** Weight manifest files a model.json may list; TF.js shards weights in 4 MiB files, so 256 MiB of weights is 64 of them. */
export const MAX_WEIGHT_FILES = 1024

/**
 * Reads a Layers model as TF.js writes it (`model.save('file://dir')`, or the
 * tfjs converter): `model.json` with `modelTopology` and `weightsManifest`
 * [{paths, weights}], and the weight files it lists, relative to its folder.
 * Paths leaving that folder are refused.
 */
export async function readModelDir (modelJsonPath: string): Promise<ModelArtifacts> {
  let info
  try {
    info = await stat(modelJsonPath)
  } catch (err) {
    throw bad(`${modelJsonPath} cannot be read: ${(err as Error).message}`)
  }
  if (info.size > MAX_MODEL_HEADER_BYTES) throw new LimitExceededError(`model: ${modelJsonPath} is ${info.size} bytes; the limit is ${MAX_MODEL_HEADER_BYTES}`)
  let json: unknown
  try {
    json = JSON.parse(await readFile(modelJsonPath, 'utf8'))
  } catch (err) {
    throw bad(`${modelJsonPath} is not JSON: ${(err as Error).message}`)
  }
  if (!isPlainObject(json)) throw bad(`${modelJsonPath} is not a JSON object`)
  const manifest = json.weightsManifest ?? []
  if (!Array.isArray(manifest)) throw bad(`${modelJsonPath}: weightsManifest must be a list`)
  const dir = dirname(modelJsonPath)
  const specs: unknown[] = []
  const paths: string[] = []
  for (const [i, group] of manifest.entries()) {
    if (!isPlainObject(group) || !Array.isArray(group.paths) || !Array.isArray(group.weights)) throw bad(`${modelJsonPath}: weightsManifest[${i}] must be {paths: [...], weights: [...]}`)
    for (const p of group.paths) {
      if (typeof p !== 'string' || p === '' || isAbsolute(p) || normalize(p).split(sep).includes('..')) throw bad(`${modelJsonPath}: weight path ${JSON.stringify(p)} must be a relative path inside the model's folder`)
      paths.push(p)
    }
    specs.push(...group.weights)
  }
  if (paths.length > MAX_WEIGHT_FILES) throw new LimitExceededError(`model: ${paths.length} weight files; at most ${MAX_WEIGHT_FILES}`)
  const { bytes } = checkWeightSpecs(specs)
  const weights = new Uint8Array(bytes)
  let at = 0
  for (const p of paths) {
    const file = join(dir, p)
    let size: number
    try {
      size = (await stat(file)).size
    } catch (err) {
      throw bad(`${modelJsonPath} names weight file ${p}, which cannot be read: ${(err as Error).message}`)
    }
    if (at + size > bytes) throw bad(`weight files hold more than the ${bytes} bytes the specs describe (at ${p})`)
    const data = await readFile(file)
    weights.set(data, at)
    at += data.byteLength
  }
  if (at !== bytes) throw bad(`weight files hold ${at} bytes but the specs describe ${bytes}`)
  // packModel validates the rest (topology, spec fields, strings).
  const input: ModelArtifactsInput = { modelTopology: json.modelTopology as Record<string, unknown>, weightSpecs: specs, weightData: weights }
  if (typeof json.format === 'string') input.format = json.format
  if (typeof json.generatedBy === 'string') input.generatedBy = json.generatedBy
  if (typeof json.convertedBy === 'string') input.convertedBy = json.convertedBy
  return unpackModel(packModel(input))
}

/** Weight file name, as tfjs-node's file:// handler names it. */
export const WEIGHTS_FILE = 'weights.bin'

/**
 * Writes `model.json` + `weights.bin` into `dir` in TF.js's own format, so
 * `tf.loadLayersModel('file://dir/model.json')` (tfjs-node) and readModelDir
 * read it back. Each file is written to a temp name and renamed.
 * Returns the model.json path.
 */
export async function writeModelDir (dir: string, artifacts: ModelArtifactsInput): Promise<string> {
  // Validate (and normalise the weights to one buffer) through a pack round trip.
  const a = unpackModel(packModel(artifacts))
  await mkdir(dir, { recursive: true })
  const modelJson: Record<string, unknown> = {
    modelTopology: a.modelTopology,
    format: a.format ?? modelFormat(a.modelTopology),
    generatedBy: a.generatedBy ?? 'tensormesh',
    convertedBy: a.convertedBy ?? null,
    weightsManifest: [{ paths: [WEIGHTS_FILE], weights: a.weightSpecs }]
  }
  const weightsPath = join(dir, WEIGHTS_FILE)
  const jsonPath = join(dir, 'model.json')
  await writeFile(`${weightsPath}.tmp`, new Uint8Array(a.weightData))
  await rename(`${weightsPath}.tmp`, weightsPath)
  await writeFile(`${jsonPath}.tmp`, JSON.stringify(modelJson))
  await rename(`${jsonPath}.tmp`, jsonPath)
  return jsonPath
}

/** Parameters of a model (elements over all weights): the infer operator's cost model. */
export function parameterCount (specs: readonly WeightSpec[]): number {
  return specs.reduce((n, s) => n + sizeOf(s.shape), 0)
}


export { MAX_MODEL_IO_RANK, MAX_MODEL_LAYERS, SUPPORTED_LAYERS, LAYER_ACTIVATIONS } from './model-layers.ts'
export { MAX_GRAPH_NODES, SUPPORTED_GRAPH_OPS } from './model-graph.ts'
export type { ModelSignature, SignatureOptions } from './model-layers.ts'

/** The two kinds of TF.js model the mesh runs. */
export const MODEL_FORMATS = ['layers-model', 'graph-model'] as const
export type ModelFormat = typeof MODEL_FORMATS[number]

/**
 * Which kind of model a topology is: the `format` TF.js and the converter
 * write when there is one, else its shape (a GraphDef has `node`, Keras JSON
 * has `class_name` or `model_config`).
 */
export function modelFormat (topology: Record<string, unknown>, format?: string): ModelFormat {
  if (format === 'layers-model' || format === 'graph-model') return format
  if (format !== undefined && format !== '') throw new InvalidInputError(`model: format '${format}' is not supported; allowed: ${MODEL_FORMATS.join(', ')}`, 'ERR_UNSUPPORTED_MODEL')
  return Array.isArray(topology.node) && topology.class_name === undefined && topology.model_config === undefined ? 'graph-model' : 'layers-model'
}

/** What the coordinator and the workers know of a model before TF.js loads it. */
export interface ModelInfo extends ModelSignature {
  format: ModelFormat
  /** Floating point operations per row, from the layer or op shapes (multiply-adds count two). */
  flopsPerRow: number
  /** Graph-models: the Placeholder to feed and the node whose output is returned. */
  inputName?: string
  outputName?: string
}

/** Largest int32 Const read for shapes (a Reshape's target, a Pad's paddings): a rank-8 shape's worth and then some. */
const MAX_CONST_INTS = 64

/** Each weight's byte range in the packed data and the int32 values of the small unquantised-or-integer ones. */
function weightTable (specs: readonly WeightSpec[], weights: Uint8Array): { shapes: Map<string, number[]>, ints: (name: string) => number[] | undefined } {
  const shapes = new Map<string, number[]>()
  const at = new Map<string, { spec: WeightSpec, offset: number }>()
  let offset = 0
  for (const spec of specs) {
    shapes.set(spec.name, spec.shape)
    at.set(spec.name, { spec, offset })
    offset += storedBytes(spec)
  }
  const ints = (name: string): number[] | undefined => {
    const w = at.get(name)
    if (w === undefined || w.spec.dtype !== 'int32') return undefined
    const n = sizeOf(w.spec.shape)
    if (n > MAX_CONST_INTS) return undefined
    const view = new DataView(weights.buffer, weights.byteOffset + w.offset, storedBytes(w.spec))
    const q = w.spec.quantization
    return Array.from({ length: n }, (_, i) => {
      if (q === undefined) return view.getInt32(4 * i, true)
      if (q.dtype === 'uint8') return Math.round(view.getUint8(i) * q.scale + q.min)
      if (q.dtype === 'uint16') return Math.round(view.getUint16(2 * i, true) * q.scale + q.min)
      return NaN
    })
  }
  return { shapes, ints }
}

/**
 * Reads a model as data, the way the coordinator checks a job: its kind,
 * its input and output shapes (without the batch dimension), its flops per
 * row, and for a graph-model the nodes to feed and fetch. With
 * `outputLayer`, the output is that layer's (layers-models) or node's
 * (graph-models). Throws InvalidInputError ERR_UNSUPPORTED_MODEL naming
 * every layer class or op it cannot run, or ERR_BAD_PARAMS for an
 * outputLayer the model lacks.
 */
export function describeModel (model: Pick<PackedModelView, 'modelTopology' | 'weightSpecs' | 'format'> & { weights?: Uint8Array, weightData?: ArrayBuffer }, options: SignatureOptions = {}): ModelInfo {
  const format = modelFormat(model.modelTopology, model.format)
  if (format === 'layers-model') {
    const sig = layersSignature(model.modelTopology, options)
    return { format, inputShape: sig.inputShape, outputShape: sig.outputShape, flopsPerRow: sig.flopsPerRow }
  }
  const weights = model.weights ?? new Uint8Array(model.weightData ?? new ArrayBuffer(0))
  const table = weightTable(model.weightSpecs, weights)
  const sig = graphSignature(model.modelTopology, table.shapes, table.ints, options)
  return { format, ...sig }
}

/** describeModel of packed bytes, without copying the weights. */
export function describePackedModel (bytes: Uint8Array, options: SignatureOptions = {}): ModelInfo {
  return describeModel(viewPackedModel(bytes), options)
}

/** Input and output shapes of a layers-model topology (see layersSignature). */
export function modelSignature (topology: Record<string, unknown>, options: SignatureOptions = {}): ModelSignature {
  const { inputShape, outputShape } = layersSignature(topology, options)
  return { inputShape, outputShape }
}
