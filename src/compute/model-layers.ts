import { InvalidInputError, LimitExceededError } from '../errors.ts'
import { isPlainObject } from './operators/common.ts'
import { sizeOf } from './tensor.ts'

/**
 * TF.js layers-models (Keras JSON) read as data: every layer's class and
 * config checked against what tfjs-layers runs, and the shape of every
 * layer's output computed through the graph, Sequential or functional
 * (inbound_nodes, merges, shared layers), so the coordinator can check a
 * job without loading TF.js. Nothing outside SHAPE_RULES is accepted: no
 * Lambda layers, no custom classes, no nested models.
 */

/** Rank of a model's input or output beyond the batch dimension; conv nets on images use 3. */
export const MAX_MODEL_IO_RANK = 6

/** Layers a topology may hold; ResNet152 has ~500 layers. */
export const MAX_MODEL_LAYERS = 4096

/** Times one layer may be called (inbound nodes); a shared layer in a siamese net is called a few times. */
export const MAX_LAYER_CALLS = 64

/** Tensors one call may take in: merges of a DenseNet block take tens. */
export const MAX_LAYER_INPUTS = 256

/** Shapes without the batch dimension, and what a model reads: input, output, and the work per row. */
export interface ModelSignature {
  inputShape: number[]
  outputShape: number[]
}

export interface LayersSignature extends ModelSignature {
  /** Floating point operations per row (multiply-adds count two), summed over the layers. */
  flopsPerRow: number
  /** Every layer's name, in the order the topology lists them. */
  layers: string[]
}

export interface SignatureOptions {
  /** Read this layer's output instead of the model's (an embedding, say). */
  outputLayer?: string
}

function unsupported (what: string): InvalidInputError {
  return new InvalidInputError(`model: ${what}`, 'ERR_UNSUPPORTED_MODEL')
}

type Config = Record<string, unknown>

interface Rule {
  /** Output shape (no batch dim) from the input shapes, checking the config on the way. */
  shape: (ins: number[][], c: Config, layer: string) => number[]
  /** Flops per row of one call; the output's size if absent. */
  flops?: (ins: number[][], out: number[], c: Config) => number
  /** Least and most inputs per call; exactly one if absent. */
  arity?: [number, number]
}

const fmt = (s: readonly number[]): string => `[${s.join(', ')}]`

/** tfjs-layers camel-cases every string in a Keras config before it looks names up ('hard_sigmoid' -> 'hardSigmoid'). */
const camel = (s: string): string => s.replace(/_(\w)/g, (_, ch: string) => ch.toUpperCase())

/** Activation names tfjs-layers 4 registers (activations.ts), camel-cased. */
export const LAYER_ACTIVATIONS = ['linear', 'relu', 'relu6', 'elu', 'selu', 'sigmoid', 'hardSigmoid', 'softplus', 'softsign', 'tanh', 'softmax', 'logSoftmax', 'gelu', 'mish', 'swish'] as const

function checkActivation (c: Config, l: string, key = 'activation'): void {
  const a = c[key]
  if (a === undefined || a === null) return
  if (typeof a !== 'string' || !(LAYER_ACTIVATIONS as readonly string[]).includes(camel(a))) {
    throw unsupported(`layer ${l}: ${key} ${JSON.stringify(a) ?? ''} is not supported; allowed: ${LAYER_ACTIVATIONS.join(', ')}`)
  }
}

function positiveInt (v: unknown, what: string): number {
  if (!Number.isSafeInteger(v) || (v as number) <= 0) throw unsupported(`${what} must be a positive integer`)
  return v as number
}

function intList (v: unknown, n: number, what: string, min = 1): number[] {
  const list = typeof v === 'number' ? Array<number>(n).fill(v) : v
  if (!Array.isArray(list) || list.length !== n || !list.every(d => Number.isSafeInteger(d) && d >= min)) throw unsupported(`${what} must be ${n} integers >= ${min}`)
  return list as number[]
}

function channelsLast (c: Config, l: string): void {
  const f = c.data_format
  if (f !== undefined && f !== null && f !== 'channels_last') throw unsupported(`layer ${l}: only data_format channels_last is supported`)
}

function rank (s: number[], r: number, l: string, what = '[h, w, c]'): void {
  if (s.length !== r) throw unsupported(`layer ${l} needs a ${what} input, got ${fmt(s)}`)
}

/** Output [h, w] of a 2-D window (conv or pool) over [h, w, c]. */
function window2d (s: number[], c: Config, l: string, kernelKey: string): { out: number[], k: number[] } {
  channelsLast(c, l)
  rank(s, 3, l)
  const k = intList(c[kernelKey], 2, `layer ${l} ${kernelKey}`)
  const isPool = kernelKey === 'pool_size'
  const st = c.strides === undefined || c.strides === null ? (isPool ? k : [1, 1]) : intList(c.strides, 2, `layer ${l} strides`)
  const d = c.dilation_rate === undefined || c.dilation_rate === null ? [1, 1] : intList(c.dilation_rate, 2, `layer ${l} dilation_rate`)
  if ((d[0] !== 1 || d[1] !== 1) && (st[0] !== 1 || st[1] !== 1)) throw unsupported(`layer ${l}: dilation_rate > 1 with strides > 1 is not supported (tfjs-layers refuses it)`)
  const padding = c.padding ?? 'valid'
  const out = [0, 1].map(i => {
    const size = s[i] as number
    const eff = ((k[i] as number) - 1) * (d[i] as number) + 1
    if (padding === 'same') return Math.ceil(size / (st[i] as number))
    if (padding === 'valid') return Math.floor((size - eff) / (st[i] as number)) + 1
    throw unsupported(`layer ${l}: padding ${JSON.stringify(padding) ?? ''} is not supported; allowed: same, valid`)
  })
  if (out.some(v => v <= 0)) throw unsupported(`layer ${l}: input ${fmt(s)} is too small for its ${kernelKey}`)
  return { out, k }
}

/** [[top, bottom], [left, right]] from Keras's int | [sym_h, sym_w] | [[t, b], [l, r]] forms. */
function pairs2d (v: unknown, what: string): [[number, number], [number, number]] {
  const ok = (d: unknown): d is number => Number.isSafeInteger(d) && (d as number) >= 0
  if (ok(v)) return [[v, v], [v, v]]
  if (Array.isArray(v) && v.length === 2) {
    const [a, b] = v as unknown[]
    if (ok(a) && ok(b)) return [[a, a], [b, b]]
    if (Array.isArray(a) && Array.isArray(b) && a.length === 2 && b.length === 2 && [...a, ...b].every(ok)) return [[a[0], a[1]], [b[0], b[1]]] as [[number, number], [number, number]]
  }
  throw unsupported(`${what} must be an integer, [h, w] or [[top, bottom], [left, right]] of integers >= 0`)
}

/** Keras axis over the shape with batch dim (negative from the end) to an index into the shape without it. */
function featureAxis (axis: unknown, r: number, l: string, fallback = -1): number {
  const a = axis === undefined || axis === null ? fallback : axis
  if (!Number.isSafeInteger(a)) throw unsupported(`layer ${l}: axis must be an integer`)
  const full = (a as number) < 0 ? r + 1 + (a as number) : (a as number)
  if (full < 1 || full > r) throw unsupported(`layer ${l}: axis ${a as number} is not a feature axis of a rank-${r} input (axis 0 is the batch)`)
  return full - 1
}

/** tfjs-layers' elementwise merge: shapes aligned from the right, 1 broadcasts. */
function broadcast (ins: number[][], l: string): number[] {
  const r = Math.max(...ins.map(s => s.length))
  const out: number[] = []
  for (let i = 0; i < r; i++) {
    let d = 1
    for (const s of ins) {
      const v = s[s.length - r + i] ?? 1
      if (v === 1) continue
      if (d !== 1 && d !== v) throw unsupported(`layer ${l}: inputs ${ins.map(fmt).join(', ')} do not broadcast together`)
      d = v
    }
    out.push(d)
  }
  return out
}

const one = (ins: number[][]): number[] => ins[0] as number[]
const same: Rule = { shape: one }
const merge: Rule = { shape: (ins, _c, l) => broadcast(ins, l), arity: [2, MAX_LAYER_INPUTS] }

const globalPool: Rule = {
  shape: ([s], c, l) => {
    channelsLast(c, l)
    rank(s as number[], 3, l)
    const ch = (s as number[])[2] as number
    return c.keepdims === true ? [1, 1, ch] : [ch]
  },
  flops: ([s]) => sizeOf(s as number[])
}

/** GlobalAveragePooling1D / GlobalMaxPooling1D: [steps, channels] -> [channels]. */
const globalPool1d: Rule = {
  shape: ([s], c, l) => {
    channelsLast(c, l)
    rank(s as number[], 2, l, '[steps, channels]')
    const ch = (s as number[])[1] as number
    return c.keepdims === true ? [1, ch] : [ch]
  },
  flops: ([s]) => sizeOf(s as number[])
}

/** How each supported layer class maps its input shapes (no batch dim) to its output shape. */
const SHAPE_RULES: Record<string, Rule> = {
  Dense: {
    shape: ([s], c, l) => {
      const units = positiveInt(c.units, `layer ${l} units`)
      checkActivation(c, l)
      if ((s as number[]).length === 0) throw unsupported(`layer ${l}: Dense needs an input of rank >= 1`)
      return [...(s as number[]).slice(0, -1), units]
    },
    flops: ([s], out) => 2 * ((s as number[]).at(-1) as number) * sizeOf(out)
  },
  Flatten: { shape: ([s]) => [sizeOf(s as number[])], flops: () => 0 },
  Reshape: {
    shape: ([s], c, l) => {
      const from = s as number[]
      // TF.js writes the free dimension (-1) as null.
      const target = Array.isArray(c.target_shape) ? c.target_shape.map(d => d === null ? -1 : d) : undefined
      if (target === undefined || target.length === 0 || !target.every(d => Number.isSafeInteger(d) && (d > 0 || d === -1)) || target.filter(d => d === -1).length > 1) {
        throw unsupported(`layer ${l}: target_shape must be positive integers with at most one free (-1 or null) dimension`)
      }
      const dims = target as number[]
      const known = dims.filter(d => d !== -1).reduce((a, b) => a * b, 1)
      const out = dims.map(d => d === -1 ? sizeOf(from) / known : d)
      if (sizeOf(out) !== sizeOf(from) || out.some(d => !Number.isSafeInteger(d))) throw unsupported(`layer ${l}: cannot reshape ${fmt(from)} to ${fmt(dims)}`)
      return out
    },
    flops: () => 0
  },
  Permute: {
    shape: ([s], c, l) => {
      const from = s as number[]
      const dims = c.dims
      if (!Array.isArray(dims) || dims.length !== from.length || [...dims].sort((a, b) => (a as number) - (b as number)).some((d, i) => d !== i + 1)) {
        throw unsupported(`layer ${l}: dims must be a permutation of 1..${from.length}`)
      }
      return (dims as number[]).map(d => from[d - 1] as number)
    }
  },
  Conv2D: {
    shape: ([s], c, l) => {
      const filters = positiveInt(c.filters, `layer ${l} filters`)
      if (c.groups !== undefined && c.groups !== null && c.groups !== 1) throw unsupported(`layer ${l}: grouped convolutions (groups ${JSON.stringify(c.groups) ?? ''}) are not supported`)
      checkActivation(c, l)
      return [...window2d(s as number[], c, l, 'kernel_size').out, filters]
    },
    flops: ([s], out, c) => 2 * sizeOf(intList(c.kernel_size, 2, 'kernel_size')) * ((s as number[])[2] as number) * sizeOf(out)
  },
  DepthwiseConv2D: {
    shape: ([s], c, l) => {
      const m = c.depth_multiplier === undefined ? 1 : positiveInt(c.depth_multiplier, `layer ${l} depth_multiplier`)
      checkActivation(c, l)
      return [...window2d(s as number[], c, l, 'kernel_size').out, ((s as number[])[2] as number) * m]
    },
    flops: (_ins, out, c) => 2 * sizeOf(intList(c.kernel_size, 2, 'kernel_size')) * sizeOf(out)
  },
  SeparableConv2D: {
    shape: ([s], c, l) => {
      positiveInt(c.filters, `layer ${l} filters`)
      if (c.depth_multiplier !== undefined) positiveInt(c.depth_multiplier, `layer ${l} depth_multiplier`)
      checkActivation(c, l)
      return [...window2d(s as number[], c, l, 'kernel_size').out, c.filters as number]
    },
    flops: ([s], out, c) => {
      const cin = (s as number[])[2] as number
      const m = (c.depth_multiplier as number | undefined) ?? 1
      const pixels = sizeOf(out.slice(0, 2))
      return 2 * pixels * (sizeOf(intList(c.kernel_size, 2, 'kernel_size')) * cin * m + cin * m * (c.filters as number))
    }
  },
  MaxPooling2D: { shape: ([s], c, l) => [...window2d(s as number[], c, l, 'pool_size').out, (s as number[])[2] as number] },
  AveragePooling2D: { shape: ([s], c, l) => [...window2d(s as number[], c, l, 'pool_size').out, (s as number[])[2] as number] },
  Embedding: {
    // Token ids [..., steps] -> [..., steps, output_dim]; a lookup, one copy per output value.
    shape: ([s], c, l) => {
      positiveInt(c.input_dim, `layer ${l} input_dim`)
      const dim = positiveInt(c.output_dim, `layer ${l} output_dim`)
      if (c.mask_zero === true) throw unsupported(`layer ${l}: mask_zero is not supported (masks do not travel between layers here)`)
      return [...(s as number[]), dim]
    },
    flops: (_, out) => sizeOf(out)
  },
  GlobalAveragePooling1D: globalPool1d,
  GlobalMaxPooling1D: globalPool1d,
  GlobalAveragePooling2D: globalPool,
  GlobalMaxPooling2D: globalPool,
  ZeroPadding2D: {
    shape: ([s], c, l) => {
      channelsLast(c, l)
      rank(s as number[], 3, l)
      const [[t, b], [le, r]] = pairs2d(c.padding ?? 1, `layer ${l} padding`)
      const [h, w, ch] = s as [number, number, number]
      return [h + t + b, w + le + r, ch]
    },
    flops: () => 0
  },
  Cropping2D: {
    shape: ([s], c, l) => {
      channelsLast(c, l)
      rank(s as number[], 3, l)
      const [[t, b], [le, r]] = pairs2d(c.cropping ?? 0, `layer ${l} cropping`)
      const [h, w, ch] = s as [number, number, number]
      if (h - t - b <= 0 || w - le - r <= 0) throw unsupported(`layer ${l}: cropping leaves nothing of ${fmt(s as number[])}`)
      return [h - t - b, w - le - r, ch]
    },
    flops: () => 0
  },
  UpSampling2D: {
    shape: ([s], c, l) => {
      channelsLast(c, l)
      rank(s as number[], 3, l)
      const k = intList(c.size ?? 2, 2, `layer ${l} size`)
      const interp = c.interpolation ?? 'nearest'
      if (interp !== 'nearest' && interp !== 'bilinear') throw unsupported(`layer ${l}: interpolation ${JSON.stringify(interp) ?? ''} is not supported; allowed: nearest, bilinear`)
      const [h, w, ch] = s as [number, number, number]
      return [h * (k[0] as number), w * (k[1] as number), ch]
    }
  },
  Add: merge,
  Multiply: merge,
  Average: merge,
  Maximum: merge,
  Minimum: merge,
  Concatenate: {
    shape: (ins, c, l) => {
      const r = (ins[0] as number[]).length
      if (ins.some(s => s.length !== r)) throw unsupported(`layer ${l}: inputs ${ins.map(fmt).join(', ')} differ in rank`)
      const axis = featureAxis(c.axis, r, l)
      const out = [...(ins[0] as number[])]
      out[axis] = 0
      for (const s of ins) {
        if (s.some((d, i) => i !== axis && d !== out[i])) throw unsupported(`layer ${l}: inputs ${ins.map(fmt).join(', ')} differ outside axis ${axis + 1}`)
        out[axis] = (out[axis] as number) + (s[axis] as number)
      }
      return out
    },
    arity: [2, MAX_LAYER_INPUTS],
    flops: () => 0
  },
  BatchNormalization: {
    shape: ([s], c, l) => {
      const axes = Array.isArray(c.axis) ? c.axis : [c.axis]
      for (const a of axes) featureAxis(a, (s as number[]).length, l)
      return s as number[]
    }
  },
  LayerNormalization: {
    shape: ([s], c, l) => {
      const axes = Array.isArray(c.axis) ? c.axis : [c.axis]
      for (const a of axes) featureAxis(a, (s as number[]).length, l)
      return s as number[]
    }
  },
  Activation: {
    shape: ([s], c, l) => {
      if (c.activation === undefined || c.activation === null) throw unsupported(`layer ${l}: Activation needs an activation`)
      checkActivation(c, l)
      return s as number[]
    }
  },
  ReLU: {
    shape: ([s], c, l) => {
      // tfjs-layers' ReLU implements max_value only; refuse Keras's other knobs rather than ignore them.
      if (c.max_value !== undefined && c.max_value !== null && !(typeof c.max_value === 'number' && c.max_value >= 0)) throw unsupported(`layer ${l}: max_value must be a number >= 0 or null`)
      for (const key of ['negative_slope', 'threshold']) {
        if (c[key] !== undefined && c[key] !== null && c[key] !== 0) throw unsupported(`layer ${l}: ReLU with ${key} ${JSON.stringify(c[key]) ?? ''} is not supported (tfjs-layers implements max_value only)`)
      }
      return s as number[]
    }
  },
  Softmax: { shape: ([s], c, l) => { featureAxis(c.axis, (s as number[]).length, l); return s as number[] } },
  LeakyReLU: same,
  PReLU: same,
  ELU: same,
  ThresholdedReLU: same,
  // Inactive at inference: predict runs with training false.
  Dropout: { ...same, flops: () => 0 },
  SpatialDropout1D: { ...same, flops: () => 0 },
  GaussianNoise: { ...same, flops: () => 0 },
  GaussianDropout: { ...same, flops: () => 0 },
  AlphaDropout: { ...same, flops: () => 0 }
}

export const SUPPORTED_LAYERS = Object.keys(SHAPE_RULES)

/** Why some classes are refused, beyond "not in the list". */
const REFUSED_BECAUSE: Record<string, string> = {
  Lambda: 'Lambda layers hold Python code; a model on the mesh is data only',
  TFOpLambda: 'TFOpLambda layers hold TensorFlow ops by name; convert the model to a graph-model instead',
  Model: 'nested models are not supported; flatten the model',
  Functional: 'nested models are not supported; flatten the model',
  Sequential: 'nested models are not supported; flatten the model'
}

interface Ref { layer: string, node: number, tensor: number }

interface LayerJson {
  className: string
  name: string
  config: Config
  /** One list of input refs per call. */
  calls: Ref[][]
}

function refOf (v: unknown, where: string): Ref {
  if (!Array.isArray(v) || v.length < 3 || v.length > 4 || typeof v[0] !== 'string' || !Number.isSafeInteger(v[1]) || !Number.isSafeInteger(v[2]) || v[1] < 0 || v[2] < 0) {
    throw unsupported(`${where}: an input must be [layer, node, tensor, {kwargs}] (Keras 2 / TF.js format)`)
  }
  if (v[3] !== undefined && !(isPlainObject(v[3]) && Object.keys(v[3]).length === 0)) throw unsupported(`${where}: call arguments (${Object.keys(v[3] as object).join(', ')}) are not supported`)
  if (v[2] !== 0) throw unsupported(`${where}: refers to output ${v[2] as number} of ${v[0]}; every supported layer has one output`)
  return { layer: v[0], node: v[1], tensor: v[2] }
}

function layerOf (v: unknown, i: number, functional: boolean): LayerJson {
  if (!isPlainObject(v) || typeof v.class_name !== 'string' || !isPlainObject(v.config)) throw unsupported(`topology layer ${i} must be {class_name, config}`)
  const name = typeof v.name === 'string' ? v.name : typeof v.config.name === 'string' ? v.config.name : `#${i}`
  if (name.length > 256) throw unsupported(`topology layer ${i} has a name longer than 256 characters`)
  const calls: Ref[][] = []
  if (functional) {
    const nodes = v.inbound_nodes ?? []
    if (!Array.isArray(nodes)) throw unsupported(`layer ${name}: inbound_nodes must be a list`)
    if (nodes.length > MAX_LAYER_CALLS) throw new LimitExceededError(`model: layer ${name} is called ${nodes.length} times; at most ${MAX_LAYER_CALLS}`)
    for (const [k, node] of nodes.entries()) {
      if (!Array.isArray(node) || node.length === 0) throw unsupported(`layer ${name}: inbound node ${k} must be a non-empty list of inputs`)
      if (node.length > MAX_LAYER_INPUTS) throw new LimitExceededError(`model: layer ${name} takes ${node.length} inputs; at most ${MAX_LAYER_INPUTS}`)
      calls.push(node.map((r: unknown) => refOf(r, `layer ${name}`)))
    }
  }
  return { className: v.class_name, name, config: v.config, calls }
}

function batchShape (config: Config, layer: string): number[] | undefined {
  const b = config.batch_input_shape ?? config.batch_shape
  if (b === undefined || b === null) return undefined
  if (!Array.isArray(b) || b.length < 2 || b.length > MAX_MODEL_IO_RANK + 1 || b[0] !== null || !b.slice(1).every(d => Number.isSafeInteger(d) && d > 0)) {
    throw unsupported(`layer ${layer}: batch_input_shape must be [null, ...positive integers] of rank 2..${MAX_MODEL_IO_RANK + 1} (a fixed batch size or unknown feature dims are not supported)`)
  }
  return b.slice(1) as number[]
}

/** Every class in the topology that SHAPE_RULES lacks, named with its layers, in one error. */
function checkClasses (layers: LayerJson[]): void {
  const bad = new Map<string, string[]>()
  for (const l of layers) {
    if (l.className === 'InputLayer' || SHAPE_RULES[l.className] !== undefined) continue
    bad.set(l.className, [...bad.get(l.className) ?? [], l.name])
  }
  if (bad.size === 0) return
  const list = [...bad].map(([cls, names]) => `${cls} (${names.slice(0, 3).join(', ')}${names.length > 3 ? `, +${names.length - 3}` : ''})${REFUSED_BECAUSE[cls] === undefined ? '' : `: ${REFUSED_BECAUSE[cls]}`}`)
  throw unsupported(`unsupported layers: ${list.join('; ')}. Supported: InputLayer, ${SUPPORTED_LAYERS.join(', ')}`)
}

function apply (layer: LayerJson, ins: number[][]): { shape: number[], flops: number } {
  const rule = SHAPE_RULES[layer.className] as Rule
  const [lo, hi] = rule.arity ?? [1, 1]
  if (ins.length < lo || ins.length > hi) throw unsupported(`layer ${layer.name} (${layer.className}) takes ${lo === hi ? lo : `${lo}..${hi}`} inputs, got ${ins.length}`)
  const shape = rule.shape(ins, layer.config, layer.name)
  if (shape.length === 0 || !shape.every(d => Number.isSafeInteger(d) && d > 0)) throw unsupported(`layer ${layer.name}: output ${fmt(shape)} is not a shape of positive integers`)
  return { shape, flops: rule.flops?.(ins, shape, layer.config) ?? sizeOf(shape) }
}

/** Keras wraps the model in {keras_version, backend, model_config, training_config}; TF.js reads model_config. */
function modelConfig (topology: Record<string, unknown>): Record<string, unknown> {
  const inner = topology.model_config
  return isPlainObject(inner) ? inner : topology
}

function checkOutputRank (shape: number[], what: string): void {
  if (shape.length === 0 || shape.length > MAX_MODEL_IO_RANK) throw unsupported(`${what} has rank ${shape.length}; 1..${MAX_MODEL_IO_RANK} beyond the batch is supported`)
}

function sequential (all: LayerJson[], options: SignatureOptions): LayersSignature {
  const first = all[0] as LayerJson
  const inputShape = batchShape(first.config, first.name)
  if (inputShape === undefined) throw unsupported('the first layer declares no batch_input_shape')
  const chain = first.className === 'InputLayer' ? all.slice(1) : all
  if (chain.some(l => l.className === 'InputLayer')) throw unsupported('a Sequential model may hold an InputLayer only first')
  let shape = inputShape
  let flops = 0
  let found = options.outputLayer === undefined || options.outputLayer === first.name
  for (const layer of chain) {
    const r = apply(layer, [shape])
    shape = r.shape
    flops += r.flops
    if (layer.name === options.outputLayer) { found = true; break }
  }
  if (!found) throw new InvalidInputError(`infer: params.outputLayer '${options.outputLayer ?? ''}' is not a layer of this model; its layers: ${all.map(l => l.name).slice(0, 50).join(', ')}`, 'ERR_BAD_PARAMS')
  checkOutputRank(shape, options.outputLayer === undefined ? 'the output' : `layer ${options.outputLayer}'s output`)
  return { inputShape, outputShape: shape, flopsPerRow: flops, layers: all.map(l => l.name) }
}

function functional (config: Record<string, unknown>, all: LayerJson[], options: SignatureOptions): LayersSignature {
  const ins = config.input_layers
  const outs = config.output_layers
  if (!Array.isArray(ins) || ins.length !== 1 || !Array.isArray(outs) || outs.length !== 1) throw unsupported('only models with one input and one output are supported')
  const input = refOf(ins[0], 'input_layers')
  const output = refOf(outs[0], 'output_layers')
  const byName = new Map<string, LayerJson>()
  for (const l of all) {
    if (byName.has(l.name)) throw unsupported(`two layers are called ${l.name}`)
    byName.set(l.name, l)
  }
  const inputLayer = byName.get(input.layer)
  if (inputLayer?.className !== 'InputLayer') throw unsupported(`input_layers names ${input.layer}, which is not an InputLayer of the model`)
  for (const l of all) {
    if (l.className === 'InputLayer' && l !== inputLayer) throw unsupported(`InputLayer ${l.name} is not the model's input; only models with one input are supported`)
    if (l.className !== 'InputLayer' && l.calls.length === 0) throw unsupported(`layer ${l.name} is never called (no inbound_nodes)`)
  }
  const inputShape = batchShape(inputLayer.config, inputLayer.name)
  if (inputShape === undefined) throw unsupported(`input layer ${inputLayer.name} declares no batch_input_shape`)

  // Depth-first over layers (an explicit stack: a 4096-layer chain must not overflow the call stack), so each
  // layer's calls are shaped after every layer they read.
  const mark = new Map<string, 'active' | 'done'>()
  const order: LayerJson[] = []
  const deps = (l: LayerJson): string[] => l.calls.flat().map(r => r.layer)
  for (const root of all) {
    if (mark.has(root.name)) continue
    mark.set(root.name, 'active')
    const stack = [{ layer: root, deps: deps(root), i: 0 }]
    while (stack.length > 0) {
      const top = stack[stack.length - 1] as { layer: LayerJson, deps: string[], i: number }
      if (top.i < top.deps.length) {
        const d = top.deps[top.i++] as string
        const m = mark.get(d)
        if (m === 'done') continue
        if (m === 'active') throw unsupported(`layer ${top.layer.name} reads ${d}, which depends on it: the layers form a cycle (shared layers fed their own output are not supported)`)
        const next = byName.get(d)
        if (next === undefined) throw unsupported(`layer ${top.layer.name} reads ${d}, which is not a layer of the model`)
        mark.set(d, 'active')
        stack.push({ layer: next, deps: deps(next), i: 0 })
      } else {
        mark.set(top.layer.name, 'done')
        order.push(top.layer)
        stack.pop()
      }
    }
  }

  const shapes = new Map<string, number[][]>([[inputLayer.name, [inputShape]]])
  const flopsOf = new Map<string, number>()
  const shapeAt = (r: Ref, reader: string): number[] => {
    const s = shapes.get(r.layer)?.[r.node]
    if (s === undefined) throw unsupported(`layer ${reader} reads call ${r.node} of ${r.layer}, which has ${shapes.get(r.layer)?.length ?? 0}`)
    return s
  }
  for (const layer of order) {
    if (layer === inputLayer) continue
    const out: number[][] = []
    let flops = 0
    for (const call of layer.calls) {
      const r = apply(layer, call.map(ref => shapeAt(ref, layer.name)))
      out.push(r.shape)
      flops += r.flops
    }
    shapes.set(layer.name, out)
    flopsOf.set(layer.name, flops)
  }

  let outputShape: number[]
  let needed: Set<string>
  if (options.outputLayer === undefined) {
    outputShape = shapeAt(output, 'output_layers')
    needed = ancestors(output.layer, byName)
  } else {
    const l = byName.get(options.outputLayer)
    if (l === undefined) throw new InvalidInputError(`infer: params.outputLayer '${options.outputLayer}' is not a layer of this model; its layers: ${all.map(l => l.name).slice(0, 50).join(', ')}${all.length > 50 ? ', ...' : ''}`, 'ERR_BAD_PARAMS')
    if (l.calls.length > 1) throw new InvalidInputError(`infer: params.outputLayer '${options.outputLayer}' is called ${l.calls.length} times in the model; name a layer called once`, 'ERR_BAD_PARAMS')
    outputShape = shapeAt({ layer: l.name, node: 0, tensor: 0 }, 'params.outputLayer')
    needed = ancestors(l.name, byName)
  }
  checkOutputRank(outputShape, options.outputLayer === undefined ? 'the output' : `layer ${options.outputLayer}'s output`)
  let flopsPerRow = 0
  for (const name of needed) flopsPerRow += flopsOf.get(name) ?? 0
  return { inputShape, outputShape, flopsPerRow, layers: all.map(l => l.name) }
}

/** The layers a layer's output depends on, itself included. */
function ancestors (name: string, byName: Map<string, LayerJson>): Set<string> {
  const seen = new Set<string>([name])
  const todo = [name]
  while (todo.length > 0) {
    const l = byName.get(todo.pop() as string)
    for (const r of l?.calls.flat() ?? []) {
      if (!seen.has(r.layer)) { seen.add(r.layer); todo.push(r.layer) }
    }
  }
  return seen
}

/**
 * Input and output shapes (without the batch dimension) of a layers-model
 * topology, computed from the JSON alone, with the flops per row. With
 * `outputLayer`, the output is that layer's. Throws InvalidInputError
 * ERR_UNSUPPORTED_MODEL naming what it cannot run, or ERR_BAD_PARAMS for an
 * outputLayer the model lacks. Workers check the loaded model against it.
 */
export function layersSignature (topology: Record<string, unknown>, options: SignatureOptions = {}): LayersSignature {
  const model = modelConfig(topology)
  const className = model.class_name
  const config = model.config
  const rawLayers = Array.isArray(config) ? config : isPlainObject(config) ? config.layers : undefined
  if (!Array.isArray(rawLayers) || rawLayers.length === 0) throw unsupported('modelTopology.config has no layers')
  if (rawLayers.length > MAX_MODEL_LAYERS) throw new LimitExceededError(`model: ${rawLayers.length} layers; at most ${MAX_MODEL_LAYERS}`)
  if (className === 'Sequential') {
    const all = rawLayers.map((v, i) => layerOf(v, i, false))
    checkClasses(all)
    return sequential(all, options)
  }
  if (className === 'Model' || className === 'Functional') {
    if (!isPlainObject(config)) throw unsupported('modelTopology.config must be an object')
    const all = rawLayers.map((v, i) => layerOf(v, i, true))
    checkClasses(all)
    return functional(config, all, options)
  }
  throw unsupported(`modelTopology.class_name is ${JSON.stringify(className) ?? 'missing'}; supported: Sequential, Model, Functional`)
}
