import { InvalidInputError, LimitExceededError } from '../errors.ts'
import { isPlainObject } from './operators/common.ts'
import { MAX_MODEL_IO_RANK } from './model-layers.ts'
import { sizeOf } from './tensor.ts'
import type { ModelSignature, SignatureOptions } from './model-layers.ts'

/**
 * TF.js graph-models (tensorflowjs_converter's `format: "graph-model"`:
 * `modelTopology` is a TensorFlow GraphDef as JSON, `{node: [{name, op,
 * input, attr}], versions, library}`) read as data: every node's op checked
 * against GRAPH_OPS before anything starts, and every node's output shape
 * computed from the attrs and the shapes of its inputs, so the coordinator
 * knows the model's input and output shapes without TF.js. Ops whose output
 * shape depends on values computed at run time (Shape, StridedSlice, Pack,
 * control flow) are refused: the plan must know the result's shape.
 *
 * Shapes here keep the batch dimension, as -1, at index 0.
 */

/** Nodes a graph may hold. MobileNetV2 has ~180 after the converter's folding, ResNet50 ~600, BERT-base a few thousand. */
export const MAX_GRAPH_NODES = 32_768

/** A node's inputs; ConcatV2 and AddN over a DenseNet block take tens. */
export const MAX_NODE_INPUTS = 1024

/** A node's name; converted Keras models nest names like `StatefulPartitionedCall/model/block_1/...`, a few hundred characters at most. */
export const MAX_NODE_NAME_LENGTH = 1024

export interface GraphSignature extends ModelSignature {
  /** The Placeholder to feed. */
  inputName: string
  /** The node whose output 0 is returned (the model's sink, or params.outputLayer). */
  outputName: string
  flopsPerRow: number
}

function unsupported (what: string): InvalidInputError {
  return new InvalidInputError(`model: ${what}`, 'ERR_UNSUPPORTED_MODEL')
}

const fmt = (s: readonly number[]): string => `[${s.map(d => d === -1 ? 'n' : String(d)).join(', ')}]`

type Attrs = Record<string, unknown>

interface GraphNode {
  name: string
  op: string
  /** Data inputs: node names (output 0). */
  inputs: string[]
  /** Control inputs (^name): ordering only. */
  control: string[]
  attr: Attrs
}

/** Values of int32 Const nodes (axes, shapes, paddings), read from the weights. */
export type ConstInts = (name: string) => number[] | undefined

interface Ctx {
  node: GraphNode
  ins: number[][]
  ints: (i: number, what: string) => number[]
}

interface Op {
  shape: (ctx: Ctx) => number[]
  /** Flops per row; the output's elements per row if absent. */
  flops?: (ctx: Ctx, out: number[]) => number
  /** Least and most data inputs; exactly one if absent. */
  arity?: [number, number]
}

// Attr values as the converter writes them: {i: "3"}, {f: 0.1}, {b: true}, {s: base64}, {type: "DT_FLOAT"},
// {list: {i: [...], s: [...]}}, {shape: {dim: [{size: "-1"}]}}.
function attr (node: GraphNode, key: string): Record<string, unknown> | undefined {
  const v = node.attr[key]
  return isPlainObject(v) ? v : undefined
}

function attrString (node: GraphNode, key: string): string | undefined {
  const s = attr(node, key)?.s
  if (s === undefined) return undefined
  if (typeof s !== 'string' || s.length > 256) throw unsupported(`node ${node.name}: attr ${key} must be a short base64 string`)
  return Buffer.from(s, 'base64').toString('latin1')
}

function attrInts (node: GraphNode, key: string): number[] | undefined {
  const list = attr(node, key)?.list
  if (list === undefined) return undefined
  const i = isPlainObject(list) ? (list.i ?? []) : undefined
  if (!Array.isArray(i) || i.length > MAX_MODEL_IO_RANK + 2) throw unsupported(`node ${node.name}: attr ${key} must be a short list of integers`)
  return i.map(v => {
    const n = typeof v === 'string' ? Number(v) : v
    if (!Number.isSafeInteger(n)) throw unsupported(`node ${node.name}: attr ${key} must be a list of integers`)
    return n as number
  })
}

function attrBool (node: GraphNode, key: string): boolean {
  return attr(node, key)?.b === true
}

function attrStrings (node: GraphNode, key: string): string[] {
  const list = attr(node, key)?.list
  const s = isPlainObject(list) ? (list.s ?? []) : []
  if (!Array.isArray(s) || s.length > 8 || !s.every(v => typeof v === 'string' && v.length <= 256)) throw unsupported(`node ${node.name}: attr ${key} must be a short list of strings`)
  return (s as string[]).map(v => Buffer.from(v, 'base64').toString('latin1'))
}

/** A TensorShapeProto as JSON to dims (-1 unknown); undefined for an unknown rank. */
function shapeProto (v: unknown, what: string): number[] | undefined {
  if (!isPlainObject(v)) return undefined
  if (v.unknownRank === true) return undefined
  const dim = v.dim ?? []
  if (!Array.isArray(dim) || dim.length > MAX_MODEL_IO_RANK + 2) throw unsupported(`${what}: shape must list at most ${MAX_MODEL_IO_RANK + 2} dims`)
  return dim.map((d: unknown) => {
    const size = isPlainObject(d) ? Number(d.size ?? 0) : NaN
    if (!Number.isSafeInteger(size) || size < -1) throw unsupported(`${what}: shape has a dim that is not an integer >= -1`)
    return size
  })
}

function dataFormat (node: GraphNode): void {
  const f = attrString(node, 'data_format')
  if (f !== undefined && f !== 'NHWC') throw unsupported(`node ${node.name} (${node.op}): data_format ${f} is not supported; only NHWC`)
}

function need (s: number[] | undefined, r: number, node: GraphNode, what = 'input'): number[] {
  if (s === undefined || s.length !== r) throw unsupported(`node ${node.name} (${node.op}) needs a rank-${r} ${what}, got ${s === undefined ? 'none' : fmt(s)}`)
  return s
}

/** A rank-4 NHWC window's output [n, h, w] (channels are the caller's). */
function window (ctx: Ctx, k: number[]): number[] {
  const { node } = ctx
  dataFormat(node)
  const x = need(ctx.ins[0], 4, node)
  const strides = attrInts(node, 'strides') ?? [1, 1, 1, 1]
  const dil = attrInts(node, 'dilations') ?? [1, 1, 1, 1]
  if (strides.length !== 4 || strides[0] !== 1 || strides[3] !== 1 || !strides.every(s => s > 0)) throw unsupported(`node ${node.name} (${node.op}): strides must be [1, sh, sw, 1]`)
  if (dil.length !== 4 || dil[0] !== 1 || dil[3] !== 1 || !dil.every(s => s > 0)) throw unsupported(`node ${node.name} (${node.op}): dilations must be [1, dh, dw, 1]`)
  const padding = attrString(node, 'padding')
  let pads = [0, 0, 0, 0]
  if (padding === 'EXPLICIT') {
    const e = attrInts(node, 'explicit_paddings')
    if (e?.length !== 8 || e.some(p => p < 0) || e[0] !== 0 || e[1] !== 0 || e[6] !== 0 || e[7] !== 0) throw unsupported(`node ${node.name} (${node.op}): explicit_paddings must pad h and w only`)
    pads = e.slice(2, 6)
  } else if (padding !== 'SAME' && padding !== 'VALID') {
    throw unsupported(`node ${node.name} (${node.op}): padding ${padding ?? 'missing'} is not supported; allowed: SAME, VALID, EXPLICIT`)
  }
  const out = [0, 1].map(i => {
    const size = (x[i + 1] as number) + (pads[2 * i] as number) + (pads[2 * i + 1] as number)
    const st = strides[i + 1] as number
    const eff = ((k[i] as number) - 1) * (dil[i + 1] as number) + 1
    return padding === 'SAME' ? Math.ceil(size / st) : Math.floor((size - eff) / st) + 1
  })
  if (out.some(v => !(v > 0))) throw unsupported(`node ${node.name} (${node.op}): input ${fmt(x)} is too small for its window`)
  return [x[0] as number, ...out]
}

/** What TF.js's fused kernels take after the conv or matmul (tfjs-converter: extra op, then activation). */
const FUSED_ACTIVATIONS = ['Relu', 'Relu6', 'Elu', 'Sigmoid', 'LeakyRelu', 'Prelu']

function fused (node: GraphNode, base: number): void {
  const ops = attrStrings(node, 'fused_ops')
  const [extra, act, ...rest] = ops
  if (extra !== 'BiasAdd' || rest.length > 0 || (act !== undefined && !FUSED_ACTIVATIONS.includes(act))) {
    throw unsupported(`node ${node.name} (${node.op}): fused_ops [${ops.join(', ')}] are not supported; allowed: BiasAdd, then optionally one of ${FUSED_ACTIVATIONS.join(', ')}`)
  }
  const args = base + 1 + (act === 'Prelu' ? 1 : 0)
  if (node.inputs.length !== args) throw unsupported(`node ${node.name} (${node.op}): fused_ops [${ops.join(', ')}] need ${args} inputs, got ${node.inputs.length}`)
}

function broadcast (ctx: Ctx): number[] {
  const r = Math.max(...ctx.ins.map(s => s.length))
  const out: number[] = []
  for (let i = 0; i < r; i++) {
    let d = 1
    for (const s of ctx.ins) {
      const v = s[s.length - r + i] ?? 1
      if (v === 1 || v === d) continue
      if (d !== 1) throw unsupported(`node ${ctx.node.name} (${ctx.node.op}): inputs ${ctx.ins.map(fmt).join(', ')} do not broadcast together`)
      d = v
    }
    out.push(d)
  }
  return out
}

/** Axes (possibly negative) over a rank-r shape; the batch axis 0 may not be one. */
function axes (list: number[], r: number, node: GraphNode): number[] {
  return list.map(a => {
    const ax = a < 0 ? a + r : a
    if (ax < 1 || ax >= r) throw unsupported(`node ${node.name} (${node.op}): axis ${a} is not a feature axis of a rank-${r} tensor (axis 0 is the batch)`)
    return ax
  })
}

const unary: Op = { shape: ({ ins }) => ins[0] as number[] }
const binary: Op = { shape: broadcast, arity: [2, 2] }

const conv: Op = {
  shape: (ctx) => {
    const f = need(ctx.ins[1], 4, ctx.node, 'filter [kh, kw, in, out]')
    const x = need(ctx.ins[0], 4, ctx.node)
    if (f[2] !== x[3]) throw unsupported(`node ${ctx.node.name} (${ctx.node.op}): filter ${fmt(f)} does not take ${x[3] as number} channels`)
    if (ctx.node.op === '_FusedConv2D') fused(ctx.node, 2)
    return [...window(ctx, f.slice(0, 2)), f[3] as number]
  },
  flops: ({ ins }, out) => 2 * sizeOf((ins[1] as number[]).slice(0, 3)) * sizeOf(out.slice(1)),
  arity: [2, 4]
}

const depthwise: Op = {
  shape: (ctx) => {
    const f = need(ctx.ins[1], 4, ctx.node, 'filter [kh, kw, in, multiplier]')
    const x = need(ctx.ins[0], 4, ctx.node)
    if (f[2] !== x[3]) throw unsupported(`node ${ctx.node.name} (${ctx.node.op}): filter ${fmt(f)} does not take ${x[3] as number} channels`)
    if (ctx.node.op === 'FusedDepthwiseConv2dNative') fused(ctx.node, 2)
    return [...window(ctx, f.slice(0, 2)), (f[2] as number) * (f[3] as number)]
  },
  flops: ({ ins }, out) => 2 * sizeOf((ins[1] as number[]).slice(0, 2)) * sizeOf(out.slice(1)),
  arity: [2, 4]
}

const matmul: Op = {
  shape: (ctx) => {
    const { node } = ctx
    const a = need(ctx.ins[0], 2, node)
    const b = need(ctx.ins[1], 2, node, 'weight matrix')
    if (attrBool(node, 'transpose_a')) throw unsupported(`node ${node.name} (${node.op}): transpose_a would move the batch dimension`)
    const [k, m] = attrBool(node, 'transpose_b') ? [b[1], b[0]] : [b[0], b[1]]
    if (k !== a[1]) throw unsupported(`node ${node.name} (${node.op}): ${fmt(a)} x ${fmt(b)} do not multiply`)
    if (node.op === '_FusedMatMul') fused(node, 2)
    return [a[0] as number, m as number]
  },
  flops: ({ ins }, out) => 2 * ((ins[0] as number[])[1] as number) * (out[1] as number),
  arity: [2, 4]
}

const pool: Op = {
  shape: (ctx) => {
    const k = attrInts(ctx.node, 'ksize')
    if (k?.length !== 4 || k[0] !== 1 || k[3] !== 1 || !k.every(v => v > 0)) throw unsupported(`node ${ctx.node.name} (${ctx.node.op}): ksize must be [1, kh, kw, 1]`)
    return [...window(ctx, k.slice(1, 3)), (need(ctx.ins[0], 4, ctx.node))[3] as number]
  }
}

const reduce: Op = {
  shape: (ctx) => {
    const x = ctx.ins[0] as number[]
    const ax = new Set(axes(ctx.ints(1, 'reduction axes'), x.length, ctx.node))
    const keep = attrBool(ctx.node, 'keep_dims')
    return x.flatMap((d, i) => ax.has(i) ? (keep ? [1] : []) : [d])
  },
  flops: ({ ins }) => sizeOf((ins[0] as number[]).slice(1)),
  arity: [2, 2]
}

const batchNorm: Op = {
  shape: (ctx) => {
    dataFormat(ctx.node)
    if (attrBool(ctx.node, 'is_training')) throw unsupported(`node ${ctx.node.name} (${ctx.node.op}): is_training batch norm is not inference`)
    return ctx.ins[0] as number[]
  },
  arity: [5, 5]
}

const pad: Op = {
  shape: (ctx) => {
    const x = ctx.ins[0] as number[]
    const p = ctx.ints(1, 'paddings')
    if (p.length !== 2 * x.length || p.some(v => v < 0) || p[0] !== 0 || p[1] !== 0) throw unsupported(`node ${ctx.node.name} (${ctx.node.op}): paddings must be [rank, 2] of integers >= 0 that leave the batch alone`)
    return x.map((d, i) => i === 0 ? d : d + (p[2 * i] as number) + (p[2 * i + 1] as number))
  },
  arity: [2, 3]
}

/** Each supported op's shape rule: the allow-list. Every name here is one tfjs-converter 4 executes. */
const GRAPH_OPS: Record<string, Op> = {
  Identity: unary,
  StopGradient: unary,
  Relu: unary,
  Relu6: unary,
  Elu: unary,
  Selu: unary,
  LeakyRelu: unary,
  Sigmoid: unary,
  Tanh: unary,
  Softplus: unary,
  Sqrt: unary,
  Rsqrt: unary,
  Square: unary,
  Exp: unary,
  Log: unary,
  Neg: unary,
  Abs: unary,
  Reciprocal: unary,
  Erf: unary,
  Softmax: unary,
  LogSoftmax: unary,
  ClipByValue: { shape: ({ ins }) => ins[0] as number[], arity: [3, 3] },
  Add: binary,
  AddV2: binary,
  Sub: binary,
  Mul: binary,
  RealDiv: binary,
  Div: binary,
  DivNoNan: binary,
  Maximum: binary,
  Minimum: binary,
  SquaredDifference: binary,
  Pow: binary,
  Prelu: binary,
  BiasAdd: {
    shape: (ctx) => {
      dataFormat(ctx.node)
      const [x, b] = ctx.ins as [number[], number[]]
      if (b.length !== 1 || b[0] !== x.at(-1)) throw unsupported(`node ${ctx.node.name} (BiasAdd): bias ${fmt(b)} does not match ${fmt(x)}`)
      return x
    },
    arity: [2, 2]
  },
  AddN: {
    shape: (ctx) => {
      const x = ctx.ins[0] as number[]
      if (ctx.ins.some(s => fmt(s) !== fmt(x))) throw unsupported(`node ${ctx.node.name} (AddN): inputs ${ctx.ins.map(fmt).join(', ')} differ`)
      return x
    },
    arity: [1, MAX_NODE_INPUTS]
  },
  Conv2D: conv,
  _FusedConv2D: conv,
  DepthwiseConv2dNative: depthwise,
  FusedDepthwiseConv2dNative: depthwise,
  MatMul: matmul,
  _FusedMatMul: matmul,
  AvgPool: pool,
  MaxPool: pool,
  Mean: reduce,
  Max: reduce,
  Min: reduce,
  Sum: reduce,
  Prod: reduce,
  FusedBatchNorm: batchNorm,
  FusedBatchNormV2: batchNorm,
  FusedBatchNormV3: batchNorm,
  Pad: pad,
  PadV2: pad,
  MirrorPad: { ...pad, arity: [2, 2] },
  Squeeze: {
    shape: (ctx) => {
      const x = ctx.ins[0] as number[]
      const dims = attrInts(ctx.node, 'squeeze_dims') ?? []
      if (dims.length === 0) throw unsupported(`node ${ctx.node.name} (Squeeze): squeeze_dims must be given (squeezing every 1 could take the batch)`)
      const ax = new Set(axes(dims, x.length, ctx.node))
      for (const a of ax) if (x[a] !== 1) throw unsupported(`node ${ctx.node.name} (Squeeze): dim ${a} of ${fmt(x)} is not 1`)
      return x.filter((_, i) => !ax.has(i))
    },
    flops: () => 0
  },
  ExpandDims: {
    shape: (ctx) => {
      const x = ctx.ins[0] as number[]
      const [a] = ctx.ints(1, 'axis')
      const ax = a === undefined ? NaN : a < 0 ? a + x.length + 1 : a
      if (!(ax >= 1 && ax <= x.length)) throw unsupported(`node ${ctx.node.name} (ExpandDims): axis ${a ?? 'missing'} would move the batch dimension`)
      return [...x.slice(0, ax), 1, ...x.slice(ax)]
    },
    flops: () => 0,
    arity: [2, 2]
  },
  Reshape: {
    shape: (ctx) => {
      const x = ctx.ins[0] as number[]
      const t = ctx.ints(1, 'shape')
      const rest = t.slice(1)
      // The batch is unknown, so it must stay the first dimension, free (-1) or fixed by the rest.
      if (t.length < 2 || t[0] !== -1 || !rest.every(d => d > 0) || sizeOf(rest) !== sizeOf(x.slice(1))) {
        throw unsupported(`node ${ctx.node.name} (Reshape): cannot reshape ${fmt(x)} to [${t.join(', ')}] keeping the batch first`)
      }
      return [-1, ...rest]
    },
    flops: () => 0,
    arity: [2, 2]
  },
  ConcatV2: {
    shape: (ctx) => {
      const xs = ctx.ins.slice(0, -1)
      const r = (xs[0] as number[]).length
      const [a] = ctx.ints(ctx.ins.length - 1, 'axis')
      const [ax] = axes([a ?? 0], r, ctx.node)
      const out = [...xs[0] as number[]]
      out[ax as number] = 0
      for (const s of xs) {
        if (s.length !== r || s.some((d, i) => i !== ax && d !== out[i])) throw unsupported(`node ${ctx.node.name} (ConcatV2): inputs ${xs.map(fmt).join(', ')} differ outside axis ${ax as number}`)
        out[ax as number] = (out[ax as number] as number) + (s[ax as number] as number)
      }
      return out
    },
    flops: () => 0,
    arity: [3, MAX_NODE_INPUTS]
  },
  Transpose: {
    shape: (ctx) => {
      const x = ctx.ins[0] as number[]
      const p = ctx.ints(1, 'perm')
      if (p.length !== x.length || p[0] !== 0 || [...p].sort((a, b) => a - b).some((v, i) => v !== i)) throw unsupported(`node ${ctx.node.name} (Transpose): perm [${p.join(', ')}] must be a permutation that keeps the batch first`)
      return p.map(i => x[i] as number)
    },
    arity: [2, 2]
  },
  ResizeBilinear: {
    shape: (ctx) => {
      const x = need(ctx.ins[0], 4, ctx.node)
      const size = ctx.ints(1, 'size')
      if (size.length !== 2 || !size.every(v => v > 0)) throw unsupported(`node ${ctx.node.name} (${ctx.node.op}): size must be [h, w]`)
      return [x[0] as number, ...size, x[3] as number]
    },
    arity: [2, 2]
  },
  ResizeNearestNeighbor: { shape: (ctx) => (GRAPH_OPS.ResizeBilinear as Op).shape(ctx), arity: [2, 2] }
}

/** Ops with no shape rule, handled by the graph walk itself. */
const STRUCTURAL_OPS = ['Const', 'Placeholder', 'PlaceholderWithDefault']

export const SUPPORTED_GRAPH_OPS = [...STRUCTURAL_OPS, ...Object.keys(GRAPH_OPS)]

function nodeOf (v: unknown, i: number): GraphNode {
  if (!isPlainObject(v) || typeof v.name !== 'string' || v.name === '' || v.name.length > MAX_NODE_NAME_LENGTH || typeof v.op !== 'string' || v.op.length > 256) {
    throw unsupported(`modelTopology.node[${i}] must be {name, op, input?, attr?} with a name of 1..${MAX_NODE_NAME_LENGTH} characters`)
  }
  const raw = v.input ?? []
  if (!Array.isArray(raw) || raw.length > MAX_NODE_INPUTS || !raw.every(s => typeof s === 'string' && s.length > 0 && s.length <= MAX_NODE_NAME_LENGTH + 8)) {
    throw unsupported(`node ${v.name}: input must be a list of at most ${MAX_NODE_INPUTS} node names`)
  }
  const inputs: string[] = []
  const control: string[] = []
  for (const s of raw as string[]) {
    if (s.startsWith('^')) { control.push(s.slice(1)); continue }
    const m = /^(.*?)(?::(\d+))?$/.exec(s) as RegExpExecArray
    if (m[2] !== undefined && m[2] !== '0') throw unsupported(`node ${v.name} reads output ${m[2]} of ${m[1] ?? ''}; only first outputs are supported`)
    inputs.push(m[1] as string)
  }
  if (v.attr !== undefined && !isPlainObject(v.attr)) throw unsupported(`node ${v.name}: attr must be an object`)
  return { name: v.name, op: v.op, inputs, control, attr: (v.attr ?? {}) as Attrs }
}

/** Every op in the graph that the allow-list lacks, with a node or two each, in one error. */
function checkOps (nodes: GraphNode[]): void {
  const bad = new Map<string, string[]>()
  for (const n of nodes) {
    if (STRUCTURAL_OPS.includes(n.op) || GRAPH_OPS[n.op] !== undefined) continue
    bad.set(n.op, [...bad.get(n.op) ?? [], n.name])
  }
  if (bad.size === 0) return
  const list = [...bad].map(([op, names]) => `${op} (${names.slice(0, 2).join(', ')}${names.length > 2 ? `, +${names.length - 2}` : ''})`)
  throw unsupported(`unsupported graph ops: ${list.join('; ')}. Supported: ${SUPPORTED_GRAPH_OPS.join(', ')}`)
}

function checkDtype (node: GraphNode, key: string): void {
  const t = attr(node, key)?.type
  if (t !== undefined && t !== 'DT_FLOAT') throw unsupported(`node ${node.name} (${node.op}) is ${JSON.stringify(t) ?? ''}; only DT_FLOAT inputs are supported`)
}

/**
 * Input and output shapes (without the batch dimension) of a graph-model
 * topology, its input and output node names, and its flops per row. With
 * `outputLayer`, the output is that node's first output. `constShapes`
 * gives each weight's shape by name (a Const's value lives in the weights)
 * and `constInts` the values of small int32 ones. Throws InvalidInputError
 * ERR_UNSUPPORTED_MODEL naming the ops or nodes it cannot run.
 */
export function graphSignature (topology: Record<string, unknown>, constShapes: ReadonlyMap<string, number[]>, constInts: ConstInts, options: SignatureOptions = {}): GraphSignature {
  const raw = topology.node
  if (!Array.isArray(raw) || raw.length === 0) throw unsupported('a graph-model topology needs a node list')
  if (raw.length > MAX_GRAPH_NODES) throw new LimitExceededError(`model: ${raw.length} graph nodes; at most ${MAX_GRAPH_NODES}`)
  const lib = topology.library
  if (isPlainObject(lib) && Array.isArray(lib.function) && lib.function.length > 0) throw unsupported('graph functions (control flow: While, If) are not supported')
  const nodes = raw.map(nodeOf)
  checkOps(nodes)
  const byName = new Map<string, GraphNode>()
  for (const n of nodes) {
    if (byName.has(n.name)) throw unsupported(`two graph nodes are called ${n.name}`)
    byName.set(n.name, n)
  }
  const consumed = new Set<string>()
  for (const n of nodes) {
    for (const d of [...n.inputs, ...n.control]) {
      if (!byName.has(d)) throw unsupported(`node ${n.name} reads ${d}, which is not a node of the graph`)
      consumed.add(d)
    }
  }
  const placeholders = nodes.filter(n => n.op === 'Placeholder')
  if (placeholders.length !== 1) throw unsupported(`the graph has ${placeholders.length} Placeholder inputs (${placeholders.slice(0, 5).map(n => n.name).join(', ')}); one is supported`)
  const input = placeholders[0] as GraphNode
  checkDtype(input, 'dtype')
  const inShape = shapeProto(attr(input, 'shape')?.shape, `input ${input.name}`)
  if (inShape === undefined || inShape.length < 2 || inShape[0] !== -1 || !inShape.slice(1).every(d => d > 0) || inShape.length > MAX_MODEL_IO_RANK + 1) {
    throw unsupported(`input ${input.name} has shape ${inShape === undefined ? 'unknown' : fmt(inShape)}; it must be [n, ...known dims] of rank 2..${MAX_MODEL_IO_RANK + 1}`)
  }

  let outputName: string
  if (options.outputLayer !== undefined) {
    const n = byName.get(options.outputLayer)
    if (n === undefined || n.op === 'Const' || n.op === 'Placeholder') {
      throw new InvalidInputError(`infer: params.outputLayer '${options.outputLayer}' is not a computed node of this graph`, 'ERR_BAD_PARAMS')
    }
    outputName = n.name
  } else {
    const sinks = nodes.filter(n => !consumed.has(n.name) && n.op !== 'Const')
    if (sinks.length !== 1) throw unsupported(`the graph has ${sinks.length} outputs (${sinks.slice(0, 5).map(n => n.name).join(', ')}); one is supported (or name one as params.outputLayer)`)
    outputName = (sinks[0] as GraphNode).name
  }

  // Shapes of what the output needs, depth first with an explicit stack.
  const shapes = new Map<string, number[]>()
  let flopsPerRow = 0
  const mark = new Set<string>()
  const stack: Array<{ node: GraphNode, i: number }> = [{ node: byName.get(outputName) as GraphNode, i: 0 }]
  mark.add(outputName)
  while (stack.length > 0) {
    const top = stack[stack.length - 1] as { node: GraphNode, i: number }
    const deps = top.node.inputs
    if (top.i < deps.length) {
      const d = deps[top.i++] as string
      if (shapes.has(d)) continue
      if (mark.has(d)) throw unsupported(`node ${top.node.name} reads ${d}, which depends on it: the graph has a cycle`)
      mark.add(d)
      stack.push({ node: byName.get(d) as GraphNode, i: 0 })
      continue
    }
    stack.pop()
    const node = top.node
    let shape: number[]
    if (node.op === 'Placeholder') {
      shape = inShape
    } else if (node.op === 'Const') {
      const s = constShapes.get(node.name)
      if (s === undefined) throw unsupported(`Const ${node.name} has no weight of that name in the weights manifest`)
      const declared = shapeProto(attr(node, 'value')?.tensor !== undefined ? (attr(node, 'value')?.tensor as Record<string, unknown>).tensorShape : undefined, `Const ${node.name}`)
      if (declared !== undefined && fmt(declared) !== fmt(s)) throw unsupported(`Const ${node.name} declares shape ${fmt(declared)} but its weight is ${fmt(s)}`)
      shape = s
    } else if (node.op === 'PlaceholderWithDefault') {
      if (node.inputs.length !== 1) throw unsupported(`node ${node.name} (PlaceholderWithDefault) needs one input`)
      shape = shapes.get(node.inputs[0] as string) as number[]
    } else {
      const op = GRAPH_OPS[node.op] as Op
      const [lo, hi] = op.arity ?? [1, 1]
      if (node.inputs.length < lo || node.inputs.length > hi) throw unsupported(`node ${node.name} (${node.op}) takes ${lo === hi ? lo : `${lo}..${hi}`} inputs, got ${node.inputs.length}`)
      const ins = node.inputs.map(d => shapes.get(d) as number[])
      const ctx: Ctx = {
        node,
        ins,
        ints: (i, what) => {
          const src = byName.get(node.inputs[i] ?? '')
          const v = src?.op === 'Const' ? constInts(src.name) : undefined
          if (v === undefined) throw unsupported(`node ${node.name} (${node.op}): its ${what} must be an int32 Const (${node.inputs[i] ?? 'missing'} is ${src?.op ?? 'missing'}); shapes computed at run time are not supported`)
          return v
        }
      }
      shape = op.shape(ctx)
      if (!shape.every((d, i) => (i === 0 && ins.some(s => s[0] === -1)) ? d === -1 : Number.isSafeInteger(d) && d > 0)) {
        throw unsupported(`node ${node.name} (${node.op}): output ${fmt(shape)} is not [n, ...positive dims]`)
      }
      flopsPerRow += op.flops?.(ctx, shape) ?? sizeOf(shape.slice(1))
    }
    shapes.set(node.name, shape)
  }
  const out = shapes.get(outputName) as number[]
  if (out[0] !== -1 || out.length < 2 || out.length > MAX_MODEL_IO_RANK + 1) {
    throw unsupported(`${options.outputLayer === undefined ? 'the output' : `node ${outputName}`} has shape ${fmt(out)}; it must be [n, ...] of rank 2..${MAX_MODEL_IO_RANK + 1}`)
  }
  return { inputShape: inShape.slice(1), outputShape: out.slice(1), inputName: input.name, outputName, flopsPerRow }
}
