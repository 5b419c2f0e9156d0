import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises'
import { dirname, isAbsolute, join, normalize, sep } from 'node:path'
import { InvalidInputError, LimitExceededError } from '../errors.ts'
import { isPlainObject } from './operators/common.ts'
import { BYTES_PER_ELEMENT, sizeOf } from './tensor.ts'

/**
 * TF.js Layers models as data: the bytes a job carries as `blobs.model`, and
 * the `model.json` + weight files TF.js itself writes (`model.save()`).
 * Nothing here loads TF.js: the coordinator validates a model on its main
 * thread, and only workers ever turn it into a LayersModel.
 *
 * Packed layout (all integers little-endian):
 *
 *   0   8 bytes  magic "TMMODEL1"
 *   8   uint32   header length H
 *   12  H bytes  UTF-8 JSON {modelTopology, weightSpecs, format?, generatedBy?, convertedBy?}
 *   ..  0-3 zero bytes, so the weights start at a multiple of 4
 *   ..  weight bytes: each spec's tensor in spec order, C order, little-endian
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

/** Weight dtypes a packed model may hold: the two the rest of the mesh carries. No quantized weights. */
export const MODEL_WEIGHT_DTYPES = ['float32', 'int32'] as const

export interface WeightSpec {
  name: string
  shape: number[]
  dtype: typeof MODEL_WEIGHT_DTYPES[number]
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

/** Weight specs checked one by one; returns them and the bytes they need. */
export function checkWeightSpecs (specs: unknown): { specs: WeightSpec[], bytes: number } {
  if (!Array.isArray(specs)) throw bad('weightSpecs must be a list')
  if (specs.length > MAX_MODEL_WEIGHTS) throw new LimitExceededError(`model: ${specs.length} weight specs; at most ${MAX_MODEL_WEIGHTS} are allowed`)
  let bytes = 0
  const out = specs.map((s: unknown, i): WeightSpec => {
    if (!isPlainObject(s)) throw bad(`weightSpecs[${i}] is not an object`)
    for (const key of Object.keys(s)) {
      // 'quantization' and 'group' change how bytes map to values; refuse rather than misread.
      if (key !== 'name' && key !== 'shape' && key !== 'dtype') throw bad(`weightSpecs[${i}] has key '${key}'; allowed: name, shape, dtype (no quantized weights)`)
    }
    const { name, shape, dtype } = s
    if (typeof name !== 'string' || name.length === 0 || name.length > MAX_WEIGHT_NAME_LENGTH) throw bad(`weightSpecs[${i}].name must be a non-empty string of at most ${MAX_WEIGHT_NAME_LENGTH} characters`)
    if (!(MODEL_WEIGHT_DTYPES as readonly unknown[]).includes(dtype)) throw bad(`weightSpecs[${i}] (${name}) has dtype ${JSON.stringify(dtype) ?? 'undefined'}; allowed: ${MODEL_WEIGHT_DTYPES.join(', ')}`, 'ERR_BAD_DTYPE')
    if (!Array.isArray(shape) || shape.length > MAX_WEIGHT_RANK || !shape.every((d: unknown) => Number.isSafeInteger(d) && (d as number) >= 0)) {
      throw bad(`weightSpecs[${i}] (${name}) shape must be a list of at most ${MAX_WEIGHT_RANK} non-negative integers`)
    }
    const dims = shape as number[]
    bytes += sizeOf(dims) * BYTES_PER_ELEMENT
    if (!(bytes <= MAX_MODEL_WEIGHT_BYTES)) throw new LimitExceededError(`model: weights need more than ${MAX_MODEL_WEIGHT_BYTES} bytes (at weightSpecs[${i}])`)
    return { name, shape: [...dims], dtype: dtype as WeightSpec['dtype'] }
  })
  return { specs: out, bytes }
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
  if (!isPlainObject(t)) throw bad('modelTopology must be a JSON object (a Layers model; graph models are not supported)')
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

/**
 * Packed bytes back to artifacts (weightData is a fresh ArrayBuffer). Every
 * length is checked before it is used: magic, header length against
 * MAX_MODEL_HEADER_BYTES and the bytes present, JSON, weight specs, and the
 * weight bytes against the specs exactly. Throws InvalidInputError
 * (ERR_BAD_MODEL, ERR_BAD_DTYPE) or LimitExceededError.
 */
export function unpackModel (bytes: Uint8Array): ModelArtifacts {
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
  const out: ModelArtifacts = {
    modelTopology,
    weightSpecs: specs,
    // A copy into a buffer of exactly the weights' size. Not bytes.slice(): on a
    // Node Buffer that is a view, and its .buffer the whole (pooled) allocation.
    weightData: new Uint8Array(bytes.subarray(dataAt)).buffer
  }
  const format = checkString(header.format, 'format')
  const generatedBy = checkString(header.generatedBy, 'generatedBy')
  const convertedBy = checkString(header.convertedBy, 'convertedBy')
  if (format !== undefined) out.format = format
  if (generatedBy !== undefined) out.generatedBy = generatedBy
  if (convertedBy !== undefined) out.convertedBy = convertedBy
  return out
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
  const info = await stat(modelJsonPath)
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
    const size = (await stat(file)).size
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
    format: a.format ?? 'layers-model',
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

/** Rank of a model's input or output beyond the batch dimension; conv nets on images use 3. */
export const MAX_MODEL_IO_RANK = 6

/** Layers deep a topology may be; ResNet152 has ~500 layers. */
export const MAX_MODEL_LAYERS = 4096

/**
 * The input and output shapes (without the batch dimension) of a Layers
 * topology, computed from the JSON alone so the coordinator can check a job
 * without loading TF.js. Supports Sequential models and functional models
 * that are a single chain (one input, one output, one inbound tensor per
 * layer) built from the layers in SHAPE_RULES; anything else is refused
 * with ERR_UNSUPPORTED_MODEL naming the layer. Workers check the loaded
 * model's real shapes against these.
 */
export interface ModelSignature {
  inputShape: number[]
  outputShape: number[]
}

type ShapeRule = (shape: number[], config: Record<string, unknown>, layer: string) => number[]

const same: ShapeRule = (s) => s

function intList (v: unknown, n: number, what: string): number[] {
  const list = typeof v === 'number' ? Array<number>(n).fill(v) : v
  if (!Array.isArray(list) || list.length !== n || !list.every(d => Number.isSafeInteger(d) && d > 0)) throw bad(`${what} must be ${n} positive integers`, 'ERR_UNSUPPORTED_MODEL')
  return list as number[]
}

function channelsLast (config: Record<string, unknown>, layer: string): void {
  if (config.data_format !== undefined && config.data_format !== 'channels_last') throw bad(`layer ${layer}: only data_format channels_last is supported`, 'ERR_UNSUPPORTED_MODEL')
}

function spatial2d (shape: number[], config: Record<string, unknown>, layer: string, kernelKey: string, channels: number | undefined): number[] {
  channelsLast(config, layer)
  if (shape.length !== 3) throw bad(`layer ${layer} needs a [h, w, c] input, got [${shape.join(', ')}]`, 'ERR_UNSUPPORTED_MODEL')
  const k = intList(config[kernelKey], 2, `layer ${layer} ${kernelKey}`)
  const s = config.strides === undefined || config.strides === null ? (kernelKey === 'pool_size' ? k : [1, 1]) : intList(config.strides, 2, `layer ${layer} strides`)
  const d = config.dilation_rate === undefined ? [1, 1] : intList(config.dilation_rate, 2, `layer ${layer} dilation_rate`)
  const padding = config.padding ?? 'valid'
  const out = [0, 1].map(i => {
    const size = shape[i] as number
    const eff = ((k[i] as number) - 1) * (d[i] as number) + 1
    if (padding === 'same') return Math.ceil(size / (s[i] as number))
    if (padding === 'valid') return Math.floor((size - eff) / (s[i] as number)) + 1
    throw bad(`layer ${layer}: padding ${JSON.stringify(padding) ?? ''} is not supported; allowed: same, valid`, 'ERR_UNSUPPORTED_MODEL')
  })
  if (out.some(v => v <= 0)) throw bad(`layer ${layer}: input [${shape.join(', ')}] is too small for its kernel`, 'ERR_UNSUPPORTED_MODEL')
  return [...out, channels ?? shape[2] as number]
}

/** How each supported layer class maps its input shape (no batch dim) to its output shape. */
const SHAPE_RULES: Record<string, ShapeRule> = {
  Dense: (s, c, l) => {
    const units = c.units
    if (!Number.isSafeInteger(units) || (units as number) <= 0) throw bad(`layer ${l}: units must be a positive integer`, 'ERR_UNSUPPORTED_MODEL')
    if (s.length === 0) throw bad(`layer ${l}: Dense needs an input of rank >= 1`, 'ERR_UNSUPPORTED_MODEL')
    return [...s.slice(0, -1), units as number]
  },
  Flatten: (s) => [sizeOf(s)],
  Reshape: (s, c, l) => {
    // TF.js writes the free dimension (-1) as null.
    const target = Array.isArray(c.target_shape) ? c.target_shape.map(d => d === null ? -1 : d) : undefined
    if (target === undefined || !target.every(d => Number.isSafeInteger(d) && (d > 0 || d === -1)) || target.filter(d => d === -1).length > 1) {
      throw bad(`layer ${l}: target_shape must be positive integers with at most one free (-1 or null) dimension`, 'ERR_UNSUPPORTED_MODEL')
    }
    const dims = target as number[]
    const known = dims.filter(d => d !== -1).reduce((a, b) => a * b, 1)
    const out = dims.map(d => d === -1 ? sizeOf(s) / known : d)
    if (sizeOf(out) !== sizeOf(s) || out.some(d => !Number.isSafeInteger(d))) throw bad(`layer ${l}: cannot reshape [${s.join(', ')}] to [${dims.join(', ')}]`, 'ERR_UNSUPPORTED_MODEL')
    return out
  },
  Conv2D: (s, c, l) => {
    const filters = c.filters
    if (!Number.isSafeInteger(filters) || (filters as number) <= 0) throw bad(`layer ${l}: filters must be a positive integer`, 'ERR_UNSUPPORTED_MODEL')
    return spatial2d(s, c, l, 'kernel_size', filters as number)
  },
  MaxPooling2D: (s, c, l) => spatial2d(s, c, l, 'pool_size', undefined),
  AveragePooling2D: (s, c, l) => spatial2d(s, c, l, 'pool_size', undefined),
  GlobalAveragePooling2D: (s, c, l) => { channelsLast(c, l); if (s.length !== 3) throw bad(`layer ${l} needs a [h, w, c] input`, 'ERR_UNSUPPORTED_MODEL'); return [s[2] as number] },
  GlobalMaxPooling2D: (s, c, l) => { channelsLast(c, l); if (s.length !== 3) throw bad(`layer ${l} needs a [h, w, c] input`, 'ERR_UNSUPPORTED_MODEL'); return [s[2] as number] },
  Dropout: same,
  SpatialDropout1D: same,
  GaussianNoise: same,
  GaussianDropout: same,
  AlphaDropout: same,
  Activation: same,
  ReLU: same,
  LeakyReLU: same,
  PReLU: same,
  ELU: same,
  ThresholdedReLU: same,
  Softmax: same,
  BatchNormalization: same,
  LayerNormalization: same
}

export const SUPPORTED_LAYERS = Object.keys(SHAPE_RULES)

interface LayerJson { className: string, name: string, config: Record<string, unknown>, inbound: unknown }

function layerOf (v: unknown, i: number): LayerJson {
  if (!isPlainObject(v) || typeof v.class_name !== 'string' || !isPlainObject(v.config)) throw bad(`topology layer ${i} must be {class_name, config}`, 'ERR_UNSUPPORTED_MODEL')
  const name = typeof v.name === 'string' ? v.name : typeof v.config.name === 'string' ? v.config.name : `#${i}`
  return { className: v.class_name, name, config: v.config, inbound: v.inbound_nodes }
}

function batchShape (config: Record<string, unknown>, layer: string): number[] | undefined {
  const b = config.batch_input_shape
  if (b === undefined || b === null) return undefined
  if (!Array.isArray(b) || b.length < 2 || b.length > MAX_MODEL_IO_RANK + 1 || b[0] !== null || !b.slice(1).every(d => Number.isSafeInteger(d) && d > 0)) {
    throw bad(`layer ${layer}: batch_input_shape must be [null, ...positive integers] of rank 2..${MAX_MODEL_IO_RANK + 1} (a fixed batch size or unknown feature dims are not supported)`, 'ERR_UNSUPPORTED_MODEL')
  }
  return b.slice(1) as number[]
}

function applyLayer (shape: number[], layer: LayerJson): number[] {
  const rule = SHAPE_RULES[layer.className]
  if (rule === undefined) throw bad(`layer ${layer.name} is a ${layer.className}; supported: InputLayer, ${SUPPORTED_LAYERS.join(', ')}`, 'ERR_UNSUPPORTED_MODEL')
  return rule(shape, layer.config, layer.name)
}

/** Input and output shapes of a Layers topology (see ModelSignature). */
export function modelSignature (topology: Record<string, unknown>): ModelSignature {
  const className = topology.class_name
  const config = topology.config
  const rawLayers = Array.isArray(config) ? config : isPlainObject(config) ? config.layers : undefined
  if (!Array.isArray(rawLayers) || rawLayers.length === 0) throw bad('modelTopology.config has no layers', 'ERR_UNSUPPORTED_MODEL')
  if (rawLayers.length > MAX_MODEL_LAYERS) throw new LimitExceededError(`model: ${rawLayers.length} layers; at most ${MAX_MODEL_LAYERS}`)
  const all = rawLayers.map(layerOf)
  let chain: LayerJson[]
  let inputShape: number[] | undefined
  if (className === 'Sequential') {
    chain = all
    const first = chain[0] as LayerJson
    inputShape = batchShape(first.config, first.name)
    if (first.className === 'InputLayer') chain = chain.slice(1)
  } else if (className === 'Model' || className === 'Functional') {
    if (!isPlainObject(config)) throw bad('modelTopology.config must be an object', 'ERR_UNSUPPORTED_MODEL')
    const ins = config.input_layers
    const outs = config.output_layers
    if (!Array.isArray(ins) || ins.length !== 1 || !Array.isArray(outs) || outs.length !== 1) throw bad('only models with one input and one output are supported', 'ERR_UNSUPPORTED_MODEL')
    const byName = new Map(all.map(l => [l.name, l]))
    const nameAt = (ref: unknown): string | undefined => Array.isArray(ref) && typeof ref[0] === 'string' ? ref[0] : undefined
    // Walk back from the output along each layer's single inbound tensor.
    chain = []
    let at = byName.get(nameAt(outs[0]) ?? '')
    while (at !== undefined && at.className !== 'InputLayer') {
      if (chain.length > all.length) throw bad('topology has a cycle', 'ERR_UNSUPPORTED_MODEL')
      chain.unshift(at)
      const nodes = at.inbound
      const node = Array.isArray(nodes) && nodes.length === 1 ? nodes[0] : undefined
      if (!Array.isArray(node) || node.length !== 1) throw bad(`layer ${at.name} is not a single-input layer called once; only chains of layers are supported`, 'ERR_UNSUPPORTED_MODEL')
      at = byName.get(nameAt(node[0]) ?? '')
    }
    if (at === undefined || at.name !== nameAt(ins[0])) throw bad('the output does not lead back to the input layer', 'ERR_UNSUPPORTED_MODEL')
    inputShape = batchShape(at.config, at.name)
  } else {
    throw bad(`modelTopology.class_name is ${JSON.stringify(className) ?? 'missing'}; supported: Sequential, Model`, 'ERR_UNSUPPORTED_MODEL')
  }
  if (inputShape === undefined) throw bad('the first layer declares no batch_input_shape', 'ERR_UNSUPPORTED_MODEL')
  let shape = inputShape
  for (const layer of chain) shape = applyLayer(shape, layer)
  if (shape.length === 0 || shape.length > MAX_MODEL_IO_RANK) throw bad(`output rank ${shape.length} is not supported`, 'ERR_UNSUPPORTED_MODEL')
  return { inputShape, outputShape: shape }
}
