import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { loadBackend } from '../../src/compute/backend.ts'
import { encodeNpy, readNpyFile } from '../../src/compute/npy.ts'
import { prng, shuffleInPlace } from '../../src/compute/random.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { ERR_WASM_KERNEL_UNSUPPORTED, WASM_GRAD_KERNELS, registerWasmGradKernels } from '../../src/compute/wasm-kernels.ts'
import { codeOf } from '../helpers/codes.ts'
import { python, relError, tempDir } from '../helpers/numpy.ts'
import { loadLayers, seedWeights } from './layers.ts'
import type { Layers } from './layers.ts'
import type { TF } from '../../src/compute/operators/types.ts'
import { backend_util } from '@tensorflow/tfjs-core'
import type { Scalar, Tensor, Tensor4D, Variable } from '@tensorflow/tfjs-core'
import type { SymbolicTensor, layers as layerFactories } from '@tensorflow/tfjs-layers'

/**
 * The gradient kernels registered for wasm (src/compute/wasm-kernels.ts)
 * against three independent references: numpy (float64, written here from
 * the definitions, window geometry included), TF.js's own `cpu` kernels,
 * and finite differences of the forward op on wasm.
 *
 * Tolerances, all as max |got - want| / max |want| over the whole tensor:
 * - kernel vs numpy, cpu and finite differences: 1e-5. float32 sums of at
 *   most a few hundred terms against float64 err by about 1e-7 here; the
 *   finite differences are of linear functionals (or of max pooling on a
 *   grid of exact binary fractions), taken in float64 from the forward's
 *   float32 output, so they are as exact as the forward itself.
 * - layer gradients and training steps, wasm vs cpu: 1e-4, since both
 *   backends compose many float32 kernels (batch norm's input gradient
 *   cancels sums, and lands near 1e-5 on its own).
 */
const KERNEL_TOL = 1e-5
const MODEL_TOL = 1e-4

type Pad = 'same' | 'valid' | [[number, number], [number, number], [number, number], [number, number]]
type Pair = [number, number]
type Shape4 = [number, number, number, number]

interface Arr { shape: number[], data: Float32Array | Int32Array }

interface Geometry {
  name: string
  x: Shape4
  k: Pair
  strides: number | Pair
  pad: Pad
  dilations?: number | Pair
  /** Depthwise channel multiplier. */
  m: number
}

/** Shapes, strides, paddings and filters the forward ops see in real models, and their edges (asymmetric 'same', leftover rows under 'valid', explicit pads, even and 1x1 filters). */
const GEOMETRIES: Geometry[] = [
  { name: '8x8, 3x3, stride 2, same (asymmetric pad)', x: [2, 8, 8, 3], k: [3, 3], strides: 2, pad: 'same', m: 2 },
  { name: '7x6, 2x2, stride 2, valid (a row left over)', x: [2, 7, 6, 3], k: [2, 2], strides: 2, pad: 'valid', m: 2 },
  { name: '6x5, 3x2, stride 1, explicit pads', x: [1, 6, 5, 2], k: [3, 2], strides: 1, pad: [[0, 0], [1, 2], [0, 1], [0, 0]], m: 3 },
  { name: '9x9, 4x4, stride 3, same', x: [3, 9, 9, 2], k: [4, 4], strides: 3, pad: 'same', m: 2 },
  { name: '5x5, 1x1, strides [1, 2], valid', x: [2, 5, 5, 4], k: [1, 1], strides: [1, 2], pad: 'valid', m: 1 },
  { name: '7x7, 3x3, stride 1, same', x: [2, 7, 7, 3], k: [3, 3], strides: 1, pad: 'same', m: 2 },
  { name: '6x9, 2x3, strides [2, 3], valid (windows tile x exactly)', x: [2, 6, 9, 3], k: [2, 3], strides: [2, 3], pad: 'valid', m: 2 }
]

/** Depthwise kernels take dilations (Conv2DBackpropFilter and MaxPoolGrad have none). */
const DILATED: Geometry[] = [
  { name: '9x9, 3x3, dilation 2, same', x: [2, 9, 9, 2], k: [3, 3], strides: 1, pad: 'same', dilations: 2, m: 2 },
  { name: '9x8, 3x2, dilations [2, 1], valid', x: [2, 9, 8, 2], k: [3, 2], strides: 1, pad: 'valid', dilations: [2, 1], m: 2 }
]

const CONV_OUT_CHANNELS = 4

const { dir, cleanup } = tempDir()
afterAll(cleanup)

let tf: TF
let layers: Layers

beforeAll(async () => {
  // Gradients come with the union package; loading cpu once through the
  // production path also silences its banner.
  await import('@tensorflow/tfjs')
  await loadBackend('cpu')
  tf = (await loadBackend('wasm')).tf
  layers = await loadLayers()
})

function seeded (shape: readonly number[], seed: number, scale = 1): Float32Array {
  const u = prng(seed)
  return Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => (2 * u() - 1) * scale)
}

function pair (v: number | Pair | undefined): Pair {
  return v === undefined ? [1, 1] : typeof v === 'number' ? [v, v] : v
}

async function on<T> (backend: 'cpu' | 'wasm', fn: () => T): Promise<T> {
  await tf.setBackend(backend)
  try {
    return fn()
  } finally {
    await tf.setBackend('wasm')
  }
}

function tensor (a: Arr): Tensor {
  return tf.tensor(a.data, a.shape, a.data instanceof Int32Array ? 'int32' : 'float32')
}

/**
 * Runs one kernel on a backend and returns its output. On wasm also checks
 * that no intermediate outlives the call and that the kernel never reads
 * its data back into JS (the math stays in wasm memory).
 */
async function runKernel (backend: 'cpu' | 'wasm', kernel: string, inputs: Record<string, Arr>, attrs: object): Promise<Arr> {
  return await on(backend, () => {
    const ins = Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, tensor(v)]))
    const tensorsBefore = tf.memory().numTensors
    const b = tf.engine().backend
    const dataBefore = b.numDataIds()
    const reads = vi.spyOn(b, 'readSync')
    const asyncReads = vi.spyOn(b, 'read')
    let out: Tensor
    let readsBack: number
    try {
      out = tf.engine().runKernel(kernel, ins, attrs as never) as Tensor
    } finally {
      // Counted before restoring: mockRestore clears the calls.
      readsBack = reads.mock.calls.length + asyncReads.mock.calls.length
      reads.mockRestore()
      asyncReads.mockRestore()
    }
    if (backend === 'wasm') {
      expect(readsBack, `${kernel} reads nothing back into JS`).toBe(0)
      expect(tf.memory().numTensors - tensorsBefore, `${kernel} leaves only its output`).toBe(1)
      expect(b.numDataIds() - dataBefore, `${kernel} frees every intermediate buffer`).toBe(1)
    }
    const data = out.dataSync() as Float32Array | Int32Array
    const shape = [...out.shape]
    tf.dispose([out, ...Object.values(ins)])
    return { shape, data }
  })
}

/** dy's shape by TF's own geometry; numpy recomputes it from the definitions and checks. */
function outShape (g: Geometry, depthwise: boolean, channels: number): Shape4 {
  const filter: Shape4 = [g.k[0], g.k[1], g.x[3], channels]
  return backend_util.computeConv2DInfo(g.x, filter, g.strides, g.dilations ?? 1, g.pad, undefined, depthwise).outShape
}

/**
 * d/dθ of L(θ) = Σ forward(θ) · w, element by element, by central
 * differences of the forward op on wasm, summed in float64.
 */
function finiteDifferences (forward: (theta: Tensor) => Tensor, theta: Arr, w: Float32Array, eps: number): Float64Array {
  const loss = (data: Float32Array): number => tf.tidy(() => {
    const y = forward(tf.tensor(data, theta.shape)).dataSync()
    let s = 0
    for (let i = 0; i < y.length; i++) s += (y[i] as number) * (w[i] as number)
    return s
  })
  const base = Float32Array.from(theta.data)
  const out = new Float64Array(base.length)
  for (let i = 0; i < base.length; i++) {
    const v = base[i] as number
    base[i] = v + eps
    const up = loss(base)
    base[i] = v - eps
    const down = loss(base)
    base[i] = v
    out[i] = (up - down) / (2 * eps)
  }
  return out
}

// ---- numpy: one python process computes every reference -------------------

interface NumpySpec {
  id: string
  kind: 'conv_filter' | 'dw_filter' | 'dw_input' | 'maxpool' | 'segsum'
  inputs: string[]
  k?: Pair
  strides?: Pair
  dilations?: Pair
  pad?: Pad
  inputShape?: number[]
  numSegments?: number
}

const specs: NumpySpec[] = []
let computed = false

/** Writes a case's inputs for numpy (at collection time, so that one python run serves every case) and returns its id. */
function numpyCase (spec: Omit<NumpySpec, 'inputs'>, inputs: Record<string, Arr>): string {
  specs.push({ ...spec, inputs: Object.keys(inputs) })
  for (const [name, a] of Object.entries(inputs)) {
    const t = a.data instanceof Int32Array ? hostTensor('int32', a.shape, a.data) : hostTensor('float32', a.shape, a.data)
    writeFileSync(join(dir, `${spec.id}_${name}.npy`), encodeNpy(t))
  }
  return spec.id
}

async function reference (id: string): Promise<Arr> {
  if (!computed) {
    writeFileSync(join(dir, 'specs.json'), JSON.stringify(specs))
    python(NUMPY_REFERENCE, dir)
    computed = true
  }
  const t = await readNpyFile(join(dir, `${id}_ref.npy`))
  return { shape: t.shape, data: t.data }
}

/**
 * Written from the definitions, in float64: TF's window geometry for
 * 'same' (total pad = max((out-1)*s + (k-1)*d + 1 - size, 0), the smaller
 * half before), 'valid' and explicit pads; each window tap as a strided
 * slice of the padded input; max pooling's gradient to the first maximum of
 * each window (argmax), padding at -inf.
 */
const NUMPY_REFERENCE = `
specs = json.load(open(f'{d}/specs.json'))
def geom(size, k, s, dl, pad, axis):
    ke = (k - 1) * dl + 1
    if pad == 'same':
        o = -(-size // s); before = max((o - 1) * s + ke - size, 0) // 2
    elif pad == 'valid':
        o = (size - ke) // s + 1; before = 0
    else:
        before, after = pad[axis + 1]; o = (size + before + after - ke) // s + 1
    return o, before, ke
for sp in specs:
    a = {n: np.load(f"{d}/{sp['id']}_{n}.npy") for n in sp['inputs']}
    kind = sp['kind']
    if kind == 'segsum':
        x, ids = a['x'], a['segmentIds'].ravel()
        rows = x.reshape((len(ids),) + x.shape[a['segmentIds'].ndim:])
        out = np.zeros((sp['numSegments'],) + rows.shape[1:], dtype=np.float64 if x.dtype.kind == 'f' else np.int64)
        keep = (ids >= 0) & (ids < sp['numSegments'])
        np.add.at(out, ids[keep], rows[keep])
        np.save(f"{d}/{sp['id']}_ref.npy", out.astype(np.float32 if x.dtype.kind == 'f' else np.int32))
        continue
    kh, kw = sp['k']; sh, sw = sp['strides']; dh, dw = sp['dilations']
    shape = sp['inputShape'] if kind == 'dw_input' else list(a['x' if kind != 'maxpool' else 'input'].shape)
    n, h, w, c = shape
    oh, bh, keh = geom(h, kh, sh, dh, sp['pad'], 0)
    ow, bw, kew = geom(w, kw, sw, dw, sp['pad'], 1)
    dy = a['dy'].astype(np.float64)
    assert dy.shape[1:3] == (oh, ow), (sp['id'], dy.shape, oh, ow)
    H = max((oh - 1) * sh + keh, bh + h); W = max((ow - 1) * sw + kew, bw + w)
    def tap(f, i, j):
        return (slice(None), slice(i * dh, i * dh + (oh - 1) * sh + 1, sh), slice(j * dw, j * dw + (ow - 1) * sw + 1, sw))
    def framed(x, fill):
        f = np.full((n, H, W, c), fill, dtype=np.float64); f[:, bh:bh + h, bw:bw + w] = x; return f
    if kind == 'conv_filter':
        f = framed(a['x'], 0.0)
        out = np.stack([np.stack([np.einsum('nhwi,nhwo->io', f[tap(f, i, j)], dy) for j in range(kw)]) for i in range(kh)])
    elif kind == 'dw_filter':
        f = framed(a['x'], 0.0); dy5 = dy.reshape(n, oh, ow, c, -1)
        out = np.stack([np.stack([np.einsum('nhwc,nhwcm->cm', f[tap(f, i, j)], dy5) for j in range(kw)]) for i in range(kh)])
    elif kind == 'dw_input':
        g = np.zeros((n, H, W, c)); dy5 = dy.reshape(n, oh, ow, c, -1); filt = a['filter'].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                g[tap(g, i, j)] += np.einsum('nhwcm,cm->nhwc', dy5, filt[i, j])
        out = g[:, bh:bh + h, bw:bw + w]
    else:
        f = framed(a['input'], -np.inf); g = np.zeros((n, H, W, c))
        nn, cc = np.meshgrid(np.arange(n), np.arange(c), indexing='ij')
        for i in range(oh):
            for j in range(ow):
                win = f[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :].reshape(n, kh * kw, c)
                first = win.argmax(1)
                np.add.at(g, (nn, i * sh + first // kw, j * sw + first % kw, cc), dy[:, i, j, :])
        out = g[:, bh:bh + h, bw:bw + w]
    np.save(f"{d}/{sp['id']}_ref.npy", out.astype(np.float32))
`

/** Measured errors, printed at the end when TENSORMESH_REPORT_ERRORS is set (for reports; never part of pass/fail). */
const measured: Array<[string, number]> = []
afterAll(() => {
  if (process.env.TENSORMESH_REPORT_ERRORS === undefined) return
  for (const [what, err] of measured) process.stdout.write(`${err.toExponential(2)}  ${what}\n`)
})

function within (what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: number): void {
  const err = relError(got, want)
  measured.push([what, err])
  expect(err, what).toBeLessThanOrEqual(tol)
}

function geometryAttrs (g: Geometry): { strides: number | Pair, pad: Pad } {
  return { strides: g.strides, pad: g.pad }
}

describe('wasm gradient kernels: registration', () => {
  it('the wasm candidate\'s load() registers them, and registering again changes nothing', () => {
    for (const name of WASM_GRAD_KERNELS) expect(tf.getKernel(name, 'wasm'), name).toBeDefined()
    const before = WASM_GRAD_KERNELS.map(name => tf.getKernel(name, 'wasm').kernelFunc)
    expect(registerWasmGradKernels(tf)).toEqual([])
    expect(WASM_GRAD_KERNELS.map(name => tf.getKernel(name, 'wasm').kernelFunc)).toEqual(before)
  })

  it('refuses NCHW, shapes that do not fit the attributes and non-float inputs, by code', async () => {
    const x = { shape: [1, 4, 4, 2], data: seeded([1, 4, 4, 2], 1) }
    const dy = { shape: [1, 2, 2, 3], data: seeded([1, 2, 2, 3], 2) }
    const attrs = { strides: 2, pad: 'same', filterShape: [3, 3, 2, 3] }
    const run = (kernel: string, inputs: Record<string, Arr>, a: object) => codeOf(() => {
      const ins = Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, tensor(v)]))
      try { tf.engine().runKernel(kernel, ins, a as never) } finally { tf.dispose(Object.values(ins)) }
    })
    expect(run('Conv2DBackpropFilter', { x, dy }, { ...attrs, dataFormat: 'NCHW' })).toBe(ERR_WASM_KERNEL_UNSUPPORTED)
    expect(run('Conv2DBackpropFilter', { x, dy }, { ...attrs, strides: 1, dataFormat: 'NHWC' })).toBe(ERR_WASM_KERNEL_UNSUPPORTED)
    expect(run('DepthwiseConv2dNativeBackpropInput', { dy, filter: { shape: [3, 3, 2, 2], data: seeded([3, 3, 2, 2], 3) } },
      { strides: 2, pad: 'same', dilations: 1, inputShape: [1, 4, 4, 2] })).toBe(ERR_WASM_KERNEL_UNSUPPORTED)
    expect(run('UnsortedSegmentSum', { x, segmentIds: { shape: [2], data: Int32Array.from([0, 1]) } }, { numSegments: 2 })).toBe(ERR_WASM_KERNEL_UNSUPPORTED)
    expect(run('DepthwiseConv2dNativeBackpropFilter', { x: { shape: [1, 4, 4, 2], data: Int32Array.from({ length: 32 }) }, dy: { shape: [1, 2, 2, 4], data: seeded([1, 2, 2, 4], 4) } },
      { strides: 2, pad: 'same', dilations: 1, filterShape: [3, 3, 2, 2] })).toBe(ERR_WASM_KERNEL_UNSUPPORTED)
  })
})

describe('Conv2DBackpropFilter on wasm', () => {
  for (const g of GEOMETRIES) {
    const filterShape: Shape4 = [g.k[0], g.k[1], g.x[3], CONV_OUT_CHANNELS]
    const x = { shape: g.x, data: seeded(g.x, 11) }
    const dyShape = outShape(g, false, CONV_OUT_CHANNELS)
    const dy = { shape: dyShape, data: seeded(dyShape, 12) }
    const id = numpyCase({ id: `cbf${GEOMETRIES.indexOf(g)}`, kind: 'conv_filter', k: g.k, strides: pair(g.strides), dilations: [1, 1], pad: g.pad }, { x, dy })

    it(`${g.name}: matches numpy, the cpu kernel and finite differences of wasm's Conv2D`, async () => {
      const attrs = { ...geometryAttrs(g), dataFormat: 'NHWC', filterShape }
      const got = await runKernel('wasm', 'Conv2DBackpropFilter', { x, dy }, attrs)
      expect(got.shape).toEqual(filterShape)
      within(`Conv2DBackpropFilter ${g.name} vs numpy`, got.data, (await reference(id)).data, KERNEL_TOL)
      within(`Conv2DBackpropFilter ${g.name} vs cpu`, got.data, (await runKernel('cpu', 'Conv2DBackpropFilter', { x, dy }, attrs)).data, KERNEL_TOL)
      const xT = tensor(x) as Tensor4D
      const fd = finiteDifferences(f => tf.conv2d(xT, f as Tensor4D, g.strides, g.pad), { shape: filterShape, data: seeded(filterShape, 13) }, dy.data as Float32Array, 1)
      xT.dispose()
      within(`Conv2DBackpropFilter ${g.name} vs finite differences`, got.data, fd, KERNEL_TOL)
    })
  }
})

describe('DepthwiseConv2dNativeBackpropFilter and BackpropInput on wasm', () => {
  for (const g of [...GEOMETRIES, ...DILATED]) {
    const dilated = g.dilations !== undefined
    const filterShape: Shape4 = [g.k[0], g.k[1], g.x[3], g.m]
    const x = { shape: g.x, data: seeded(g.x, 21) }
    const filter = { shape: filterShape, data: seeded(filterShape, 22) }
    const attrs = { ...geometryAttrs(g), dilations: g.dilations ?? 1 }
    const dyShape = outShape(g, true, g.m)
    const dy = { shape: dyShape, data: seeded(dyShape, 23) }
    const id = `dw${[...GEOMETRIES, ...DILATED].indexOf(g)}`
    const common = { k: g.k, strides: pair(g.strides), dilations: pair(g.dilations), pad: g.pad }
    const filterId = numpyCase({ id: `${id}f`, kind: 'dw_filter', ...common }, { x, dy })
    const inputId = numpyCase({ id: `${id}i`, kind: 'dw_input', ...common, inputShape: g.x }, { dy, filter })
    const forward = (xT: Tensor, fT: Tensor): Tensor => tf.depthwiseConv2d(xT as Tensor4D, fT as Tensor4D, g.strides, g.pad, 'NHWC', g.dilations ?? 1)
    // tfjs-core's gradient refuses dilations > 1, so only direct calls meet
    // them; the cpu kernels ignore dilations there, so numpy and finite
    // differences are the references for those cases.
    const cpuToo = dilated ? '' : ', the cpu kernel'

    it(`filter, ${g.name}, multiplier ${g.m}: matches numpy${cpuToo} and finite differences of wasm's forward`, async () => {
      const a = { ...attrs, filterShape }
      const got = await runKernel('wasm', 'DepthwiseConv2dNativeBackpropFilter', { x, dy }, a)
      expect(got.shape).toEqual(filterShape)
      within(`DepthwiseBackpropFilter ${g.name} vs numpy`, got.data, (await reference(filterId)).data, KERNEL_TOL)
      if (!dilated) within(`DepthwiseBackpropFilter ${g.name} vs cpu`, got.data, (await runKernel('cpu', 'DepthwiseConv2dNativeBackpropFilter', { x, dy }, a)).data, KERNEL_TOL)
      const xT = tensor(x)
      const fd = finiteDifferences(f => forward(xT, f), filter, dy.data as Float32Array, 1)
      xT.dispose()
      within(`DepthwiseBackpropFilter ${g.name} vs finite differences`, got.data, fd, KERNEL_TOL)
    })

    it(`input, ${g.name}, multiplier ${g.m}: matches numpy${cpuToo} and finite differences of wasm's forward`, async () => {
      const a = { ...attrs, inputShape: g.x }
      const got = await runKernel('wasm', 'DepthwiseConv2dNativeBackpropInput', { dy, filter }, a)
      expect(got.shape).toEqual(g.x)
      within(`DepthwiseBackpropInput ${g.name} vs numpy`, got.data, (await reference(inputId)).data, KERNEL_TOL)
      if (!dilated) within(`DepthwiseBackpropInput ${g.name} vs cpu`, got.data, (await runKernel('cpu', 'DepthwiseConv2dNativeBackpropInput', { dy, filter }, a)).data, KERNEL_TOL)
      const fT = tensor(filter)
      const fd = finiteDifferences(xT => forward(xT, fT), x, dy.data as Float32Array, 1)
      fT.dispose()
      within(`DepthwiseBackpropInput ${g.name} vs finite differences`, got.data, fd, KERNEL_TOL)
    })
  }
})

/**
 * Distinct values on a grid of 1/64, centred on zero so that many windows
 * hold only negative values (where wasm's shipped MaxPoolGrad fails): with
 * a step of 1/1024 every perturbed value stays exact in float32 and no
 * window's maximum moves, so the finite differences are exact.
 */
function poolInput (shape: readonly number[], seed: number): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1)
  const order = shuffleInPlace(Array.from({ length: n }, (_, i) => i), prng(seed))
  return Float32Array.from(order, v => (v - n / 2) / 64)
}

/** The forward output MaxPoolGrad takes, from wasm's own (XNNPACK) MaxPool, which is right. */
async function maxPoolOnWasm (x: Arr, k: number | Pair, strides: number | Pair, pad: Pad): Promise<Arr> {
  return await on('wasm', () => tf.tidy(() => {
    const out = tf.maxPool(tensor(x) as Tensor4D, k, strides, pad)
    return { shape: [...out.shape], data: out.dataSync() as Float32Array }
  }))
}

describe('MaxPoolGrad on wasm (replaces the shipped kernel)', () => {
  for (const g of GEOMETRIES) {
    const x = { shape: g.x, data: poolInput(g.x, 31) }
    const attrs = { filterSize: g.k, ...geometryAttrs(g) }
    const dyShape = backend_util.computePool2DInfo(g.x, g.k, g.strides, 1, g.pad).outShape
    const dy = { shape: dyShape, data: seeded(dyShape, 32) }
    const id = numpyCase({ id: `mp${GEOMETRIES.indexOf(g)}`, kind: 'maxpool', k: g.k, strides: pair(g.strides), dilations: [1, 1], pad: g.pad }, { input: x, dy })

    it(`${g.name}: matches numpy, the cpu kernel and finite differences of wasm's MaxPool`, async () => {
      const y = await maxPoolOnWasm(x, g.k, g.strides, g.pad)
      const got = await runKernel('wasm', 'MaxPoolGrad', { dy, input: x, output: y }, attrs)
      expect(got.shape).toEqual(g.x)
      within(`MaxPoolGrad ${g.name} vs numpy`, got.data, (await reference(id)).data, KERNEL_TOL)
      within(`MaxPoolGrad ${g.name} vs cpu`, got.data, (await runKernel('cpu', 'MaxPoolGrad', { dy, input: x, output: y }, attrs)).data, KERNEL_TOL)
      const fd = finiteDifferences(xT => tf.maxPool(xT as Tensor4D, g.k, g.strides, g.pad), x, dy.data as Float32Array, 1 / 1024)
      within(`MaxPoolGrad ${g.name} vs finite differences`, got.data, fd, KERNEL_TOL)
    })
  }

  it('windows of only negative values and ties (ReLU zeros) go to the first maximum, as on cpu', async () => {
    // 5 x 5 takes the per-tap path; 6 x 6 with 2 x 2 windows tiles exactly and takes the reshape path.
    for (const shape of [[2, 5, 5, 2], [2, 6, 6, 3]] as Shape4[]) {
    const negative = { shape, data: poolInput(shape, 33).map(v => -Math.abs(v) - 0.5) }
    const ties = { shape, data: Float32Array.from(seeded(shape, 34), v => Math.max(0, Math.round(v * 2))) }
    for (const [what, x] of [['negative', negative], ['ties', ties]] as const) {
      for (const pad of ['same', 'valid'] as const) {
        const y = await maxPoolOnWasm(x, 2, 2, pad)
        const dy = { shape: y.shape, data: seeded(y.shape, 35) }
        const attrs = { filterSize: 2, strides: 2, pad }
        const got = await runKernel('wasm', 'MaxPoolGrad', { dy, input: x, output: y }, attrs)
        within(`MaxPoolGrad ${what} ${pad} [${shape.join(', ')}] vs cpu`, got.data, (await runKernel('cpu', 'MaxPoolGrad', { dy, input: x, output: y }, attrs)).data, KERNEL_TOL)
      }
    }
    }
  })
})

describe('UnsortedSegmentSum on wasm', () => {
  const x94 = { shape: [9, 4], data: seeded([9, 4], 41) }
  const cases: Array<{ name: string, x: Arr, ids: Arr, numSegments: number, cpu: boolean }> = [
    { name: 'float rows, duplicate ids, empty segments', x: x94, ids: { shape: [9], data: Int32Array.from([0, 3, 3, 5, 0, 3, 1, 5, 5]) }, numSegments: 7, cpu: true },
    { name: 'ids out of range (negative, too large) are dropped', x: x94, ids: { shape: [9], data: Int32Array.from([-1, 2, 9, 2, 0, -5, 1, 8, 3]) }, numSegments: 4, cpu: true },
    { name: 'int32 rows of rank 3', x: { shape: [7, 2, 3], data: Int32Array.from({ length: 42 }, (_, i) => (i * 37) % 19 - 9) }, ids: { shape: [7], data: Int32Array.from([2, 0, 2, 1, 1, 2, 0]) }, numSegments: 3, cpu: false },
    // TF semantics for segmentIds of rank 2; the cpu kernel sums only over axis 0 there.
    { name: 'segmentIds of rank 2', x: { shape: [3, 4, 2], data: seeded([3, 4, 2], 42) }, ids: { shape: [3, 4], data: Int32Array.from([0, 1, 2, 1, 4, 4, 0, 3, 2, 2, 1, 0]) }, numSegments: 5, cpu: false }
  ]
  const ids = cases.map((c, i) => numpyCase({ id: `uss${i}`, kind: 'segsum', numSegments: c.numSegments }, { x: c.x, segmentIds: c.ids }))

  cases.forEach((c, i) => {
    it(`${c.name}: matches numpy's add.at${c.cpu ? ' and the cpu kernel' : ''}`, async () => {
      const got = await runKernel('wasm', 'UnsortedSegmentSum', { x: c.x, segmentIds: c.ids }, { numSegments: c.numSegments })
      expect(got.shape).toEqual([c.numSegments, ...c.x.shape.slice(c.ids.shape.length)])
      expect(got.data instanceof Int32Array).toBe(c.x.data instanceof Int32Array)
      const ref = await reference(ids[i] as string)
      if (c.x.data instanceof Int32Array) expect([...got.data]).toEqual([...ref.data])
      else within(`UnsortedSegmentSum ${c.name} vs numpy`, got.data, ref.data, KERNEL_TOL)
      if (c.cpu) within(`UnsortedSegmentSum ${c.name} vs cpu`, got.data, (await runKernel('cpu', 'UnsortedSegmentSum', { x: c.x, segmentIds: c.ids }, { numSegments: c.numSegments })).data, KERNEL_TOL)
    })
  })

  it('is the gradient of gather: matches finite differences of wasm\'s GatherV2', async () => {
    const c = cases[0] as (typeof cases)[number]
    const got = await runKernel('wasm', 'UnsortedSegmentSum', { x: c.x, segmentIds: c.ids }, { numSegments: c.numSegments })
    const idsT = tensor(c.ids)
    const fd = finiteDifferences(p => tf.gather(p, idsT), { shape: [c.numSegments, 4], data: seeded([c.numSegments, 4], 43) }, c.x.data as Float32Array, 1)
    idsT.dispose()
    within('UnsortedSegmentSum vs finite differences of gather', got.data, fd, KERNEL_TOL)
  })

  it('empty ids give zeros', async () => {
    const got = await runKernel('wasm', 'UnsortedSegmentSum', { x: { shape: [0, 3], data: new Float32Array(0) }, segmentIds: { shape: [0], data: new Int32Array(0) } }, { numSegments: 2 })
    expect(got.shape).toEqual([2, 3])
    expect([...got.data]).toEqual([0, 0, 0, 0, 0, 0])
  })
})

describe('training through layers on wasm', () => {
  type Case = [string, () => layerFactories.Layer, number[], 'float' | 'int']
  const LAYERS: Case[] = [
    ['Conv2D, stride 2, same', () => layers.layers.conv2d({ filters: 3, kernelSize: 3, strides: 2, padding: 'same' }), [2, 7, 7, 2], 'float'],
    ['Conv2D, valid, relu', () => layers.layers.conv2d({ filters: 4, kernelSize: [2, 3], padding: 'valid', activation: 'relu' }), [2, 6, 7, 3], 'float'],
    ['Conv1D, stride 2, same', () => layers.layers.conv1d({ filters: 3, kernelSize: 3, strides: 2, padding: 'same' }), [2, 9, 2], 'float'],
    ['Conv2DTranspose, stride 2, same', () => layers.layers.conv2dTranspose({ filters: 3, kernelSize: 3, strides: 2, padding: 'same' }), [2, 5, 5, 2], 'float'],
    ['DepthwiseConv2D, multiplier 2, stride 2, same', () => layers.layers.depthwiseConv2d({ kernelSize: 3, depthMultiplier: 2, strides: 2, padding: 'same' }), [2, 7, 7, 2], 'float'],
    ['DepthwiseConv2D, valid', () => layers.layers.depthwiseConv2d({ kernelSize: 2, padding: 'valid' }), [2, 6, 5, 3], 'float'],
    ['SeparableConv2D, multiplier 2', () => layers.layers.separableConv2d({ filters: 3, kernelSize: 3, depthMultiplier: 2, padding: 'same' }), [2, 6, 6, 2], 'float'],
    ['MaxPooling2D, 2x2, same, odd size', () => layers.layers.maxPooling2d({ poolSize: 2, strides: 2, padding: 'same' }), [2, 7, 7, 2], 'float'],
    ['MaxPooling2D, 3x3, stride 2, valid', () => layers.layers.maxPooling2d({ poolSize: 3, strides: 2, padding: 'valid' }), [2, 7, 7, 2], 'float'],
    ['AveragePooling2D, 3x3, stride 2, same', () => layers.layers.averagePooling2d({ poolSize: 3, strides: 2, padding: 'same' }), [2, 7, 7, 2], 'float'],
    ['Embedding', () => layers.layers.embedding({ inputDim: 10, outputDim: 4 }), [3, 5], 'int'],
    ['Dense, relu', () => layers.layers.dense({ units: 4, activation: 'relu' }), [3, 6], 'float'],
    ['BatchNormalization (training)', () => layers.layers.batchNormalization({}), [4, 3, 3, 2], 'float'],
    ['Dropout (training, seeded)', () => layers.layers.dropout({ rate: 0.5, seed: 1 }), [4, 6], 'float']
  ]

  /** Gradients of Σ layer(x)² for every trainable weight and (float inputs) for x. */
  async function gradsOn (backend: 'cpu' | 'wasm', [, make, shape, kind]: Case): Promise<Float32Array[]> {
    return await on(backend, () => tf.tidy(() => {
      const n = shape.reduce((a, b) => a * b, 1)
      const x = kind === 'int' ? tf.tensor(Int32Array.from({ length: n }, (_, i) => (i * 7) % 10), shape, 'int32') : tf.tensor(seeded(shape, 51), shape)
      const layer = make()
      layer.apply(x)
      layer.setWeights(layer.getWeights().map((w, j) => tf.tensor(seeded(w.shape, 60 + j, 0.7), w.shape)))
      const f = (input: Tensor): Tensor => tf.sum(tf.square(layer.apply(input, { training: true }) as Tensor))
      // LayerVariable keeps its tf.Variable in `val`; variableGrads wants those.
      const vars = layer.trainableWeights.map(w => (w as unknown as { val: Variable }).val)
      const out: Float32Array[] = vars.length === 0 ? [] : Object.values(tf.variableGrads(() => f(x) as Scalar, vars).grads).map(g => g.dataSync() as Float32Array)
      if (kind === 'float') out.push(tf.grad(f)(x).dataSync() as Float32Array)
      layer.dispose()
      return out
    }))
  }

  for (const c of LAYERS) {
    it(`${c[0]}: tf.grad on wasm matches cpu`, async () => {
      const cpu = await gradsOn('cpu', c)
      const wasm = await gradsOn('wasm', c)
      expect(wasm.length).toBe(cpu.length)
      wasm.forEach((g, i) => { within(`layer ${c[0]} grad ${i} vs cpu`, g, cpu[i] as Float32Array, MODEL_TOL) })
    })
  }

  it('a Conv2D + DepthwiseConv2D + MaxPooling2D + Embedding model: two model.fit steps on wasm update the weights as on cpu', async () => {
    const batch = 6
    const images = seeded([batch, 8, 8, 2], 71)
    const tokens = Float32Array.from({ length: batch * 5 }, (_, i) => (i * 5 + 3) % 12)
    const labels = Float32Array.from({ length: batch * 3 }, (_, i) => (i % 3) === (Math.floor(i / 3) % 3) ? 1 : 0)
    const train = async (backend: 'cpu' | 'wasm'): Promise<{ before: Float32Array[], after: Float32Array[], loss: number[] }> => {
      await tf.setBackend(backend)
      try {
        const L = layers.layers
        const image = layers.input({ shape: [8, 8, 2] })
        const tokenIn = layers.input({ shape: [5] })
        const apply = (layer: layerFactories.Layer, input: SymbolicTensor | SymbolicTensor[]): SymbolicTensor => layer.apply(input) as SymbolicTensor
        let a = apply(L.conv2d({ filters: 4, kernelSize: 3, strides: 2, padding: 'same' }), image)
        a = apply(L.depthwiseConv2d({ kernelSize: 3, depthMultiplier: 2, padding: 'same' }), a)
        // No ReLU before pooling: windows of only negative values must pass their gradient on.
        a = apply(L.maxPooling2d({ poolSize: 2, strides: 2, padding: 'same' }), a)
        const e = apply(L.embedding({ inputDim: 12, outputDim: 3 }), tokenIn)
        const joined = apply(L.concatenate(), [apply(L.flatten(), a), apply(L.flatten(), e)])
        const model = layers.model({ inputs: [image, tokenIn], outputs: apply(L.dense({ units: 3, activation: 'softmax' }), joined) })
        seedWeights(tf, model, 72)
        model.compile({ optimizer: tf.train.sgd(0.5), loss: 'categoricalCrossentropy' })
        const before = model.getWeights().map(w => w.dataSync() as Float32Array)
        const xs = [tf.tensor(images, [batch, 8, 8, 2]), tf.tensor(tokens, [batch, 5])]
        const ys = tf.tensor(labels, [batch, 3])
        const history = await model.fit(xs, ys, { epochs: 2, batchSize: batch, shuffle: false, verbose: 0 })
        const after = model.getWeights().map(w => w.dataSync() as Float32Array)
        tf.dispose([...xs, ys])
        model.dispose()
        return { before, after, loss: history.history.loss as number[] }
      } finally {
        await tf.setBackend('wasm')
      }
    }
    const cpu = await train('cpu')
    const wasm = await train('wasm')
    expect(wasm.after.length).toBe(cpu.after.length)
    // Same starting weights; then the updates themselves (not just the weights, which barely move) must agree.
    wasm.before.forEach((w, i) => { expect([...w]).toEqual([...cpu.before[i] as Float32Array]) })
    const update = (run: typeof cpu, i: number): Float32Array => (run.after[i] as Float32Array).map((v, k) => v - ((run.before[i] as Float32Array)[k] as number))
    wasm.after.forEach((_, i) => {
      const want = update(cpu, i)
      expect(want.some(v => v !== 0), `weight ${i} moved on cpu`).toBe(true)
      within(`model.fit weight ${i} update vs cpu`, update(wasm, i), want, MODEL_TOL)
    })
    within('model.fit loss vs cpu', wasm.loss, cpu.loss, MODEL_TOL)
  })
})
