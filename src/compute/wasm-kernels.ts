import { InvalidInputError } from '../errors.ts'
import type {
  Conv2DBackpropFilterAttrs, DepthwiseConv2dNativeBackpropFilterAttrs, DepthwiseConv2dNativeBackpropInputAttrs,
  KernelFunc, MaxPoolGradAttrs, NamedAttrMap, NamedTensorInfoMap, Tensor, Tensor4D, TensorInfo, UnsortedSegmentSumAttrs
} from '@tensorflow/tfjs-core'
import type { TF } from './operators/types.ts'

/**
 * Gradient kernels for TF.js's wasm backend. `@tensorflow/tfjs-backend-wasm`
 * 4.22 has no Conv2DBackpropFilter, DepthwiseConv2dNativeBackpropFilter/Input
 * or UnsortedSegmentSum (tfjs #8474, #8082), so Conv2D, DepthwiseConv2D,
 * SeparableConv2D, Conv1D, Conv2DTranspose and Embedding cannot train on it;
 * and its MaxPoolGrad is wrong whenever a pooling window holds no value above
 * +1.2e-38 (its C++ seeds the running max with numeric_limits<float>::min(),
 * the smallest positive float, not the lowest), which silently corrupts
 * MaxPooling2D gradients on anything not passed through a ReLU first.
 *
 * Each kernel here is composed of kernels wasm has in C++ (Conv2D,
 * DepthwiseConv2dNative, Transpose, StridedSlice, PadV2, Reverse, AddN,
 * ScatterNd, elementwise ops and reductions) through tf ops inside tf.tidy:
 * the math stays in wasm memory, nothing goes through the JS cpu backend or
 * a readSync, and every intermediate is disposed before the kernel returns.
 * wasm's Slice and Concat (and so stack, and StridedSlice with unit
 * strides) are written in JS over a copy of the whole input out of the wasm
 * heap, so they are avoided (see `window`). Ops run inside a kernel are not
 * taped (the engine records only at kernel depth 0), so this does not
 * disturb autodiff.
 */

const BACKEND = 'wasm'

/** Code of the error for attributes these kernels do not implement (NCHW, ranks, dtypes). */
export const ERR_WASM_KERNEL_UNSUPPORTED = 'ERR_WASM_KERNEL_UNSUPPORTED'

type Conv2DInfo = ReturnType<TF['backend_util']['computeConv2DInfo']>
type Shape4 = [number, number, number, number]

interface KernelArgs { inputs: NamedTensorInfoMap, attrs?: NamedAttrMap }

interface WasmKernel {
  kernelName: string
  /** Replace a kernel wasm already registers (because that one is wrong), rather than only fill a gap. */
  replaces: boolean
  make: (tf: TF) => KernelFunc
}

/** Every kernel function this module made, so that registering again can tell ours from the package's. */
const ours = new WeakSet<KernelFunc>()

function unsupported (kernel: string, what: string): InvalidInputError {
  return new InvalidInputError(`${kernel} on the wasm backend: ${what}`, ERR_WASM_KERNEL_UNSUPPORTED)
}

/** Inputs arrive as Tensors when called through ops; a bare TensorInfo gets a Tensor view (the enclosing tidy disposes it). */
function tensorOf (tf: TF, info: TensorInfo | undefined, kernel: string, name: string): Tensor {
  if (info === undefined) throw unsupported(kernel, `input '${name}' is missing`)
  return info instanceof tf.Tensor ? info : tf.engine().makeTensorFromTensorInfo(info)
}

function rank4 (kernel: string, name: string, t: Tensor): Tensor4D {
  if (t.rank !== 4) throw unsupported(kernel, `'${name}' must be rank 4 (NHWC), got shape [${t.shape.join(', ')}]`)
  return t as Tensor4D
}

function float32 (kernel: string, name: string, t: Tensor): void {
  if (t.dtype !== 'float32') throw unsupported(kernel, `'${name}' must be float32, got ${t.dtype}`)
}

function sameShape (kernel: string, name: string, got: readonly number[], want: readonly number[]): void {
  if (got.length !== want.length || got.some((d, i) => d !== want[i])) {
    throw unsupported(kernel, `'${name}' has shape [${got.join(', ')}] but the forward op's attributes give [${want.join(', ')}]`)
  }
}

/**
 * t[:, top : top + (h-1)*sh + 1 : sh, left : ... : sw, :], h x w of it, on
 * wasm's C++ StridedSlice. With unit strides tfjs routes a slice to wasm's
 * Slice kernel, which copies the whole tensor out of the wasm heap into JS
 * and back; a stride of 2 on an added axis of size 1 selects the same
 * elements and keeps the copy inside wasm. float32 only: that C++ path
 * declares its output float32 whatever the input (every caller here is).
 */
function window (tf: TF, t: Tensor4D, top: number, left: number, h: number, w: number, sh = 1, sw = 1): Tensor4D {
  const [n, , , c] = t.shape
  const cut = tf.stridedSlice(tf.reshape(t, [...t.shape, 1]), [0, top, left, 0, 0],
    [n, top + (h - 1) * sh + 1, left + (w - 1) * sw + 1, c, 1], [1, sh, sw, 1, 2])
  return tf.reshape(cut, [n, h, w, c])
}

/**
 * Places t's row 0 / column 0 at (top, left) of an outH x outW frame filled
 * with `value`: negative offsets and rows past the frame are cut off. One
 * helper for padding x before a window scan, cropping what no window reads,
 * and shifting a spread dy for a transposed convolution.
 */
function shiftInto (tf: TF, t: Tensor4D, top: number, left: number, outH: number, outW: number, value = 0): Tensor4D {
  const [, h, w] = t.shape
  const cropTop = Math.max(0, -top)
  const cropLeft = Math.max(0, -left)
  const keepH = Math.max(0, Math.min(h - cropTop, outH - Math.max(0, top)))
  const keepW = Math.max(0, Math.min(w - cropLeft, outW - Math.max(0, left)))
  let out = t
  if (cropTop > 0 || cropLeft > 0 || keepH < h || keepW < w) out = window(tf, out, cropTop, cropLeft, keepH, keepW)
  const padTop = Math.max(0, top)
  const padLeft = Math.max(0, left)
  const padBottom = outH - padTop - keepH
  const padRight = outW - padLeft - keepW
  if (padTop > 0 || padLeft > 0 || padBottom > 0 || padRight > 0) {
    out = tf.pad(out, [[0, 0], [padTop, padBottom], [padLeft, padRight], [0, 0]], value)
  }
  return out
}

/** Spreads rows and columns apart: row i moves to row i*sh, zeros between (and sh-1 zero rows after the last). */
function spread (tf: TF, t: Tensor4D, sh: number, sw: number): Tensor4D {
  if (sh === 1 && sw === 1) return t
  const [n, h, w, c] = t.shape
  const apart = tf.pad(tf.reshape(t, [n, h, 1, w, 1, c]), [[0, 0], [0, 0], [0, sh - 1], [0, 0], [0, sw - 1], [0, 0]])
  return tf.reshape(apart, [n, h * sh, w * sw, c])
}

/**
 * The rows and columns of x that the forward windows read, padding
 * included, as one frame: window (i, j) starts at (i*sh, j*sw).
 */
function windowFrame (tf: TF, x: Tensor4D, info: Conv2DInfo, value = 0): Tensor4D {
  const h = (info.outHeight - 1) * info.strideHeight + info.effectiveFilterHeight
  const w = (info.outWidth - 1) * info.strideWidth + info.effectiveFilterWidth
  return shiftInto(tf, x, info.padInfo.top, info.padInfo.left, h, w, value)
}

/** What tap (a, b) of every window reads from the frame: [N, outH, outW, C]. */
function tap (tf: TF, frame: Tensor4D, info: Conv2DInfo, a: number, b: number): Tensor4D {
  return window(tf, frame, a * info.dilationHeight, b * info.dilationWidth, info.outHeight, info.outWidth, info.strideHeight, info.strideWidth)
}

/**
 * dx of a depthwise convolution: the transposed convolution, done as a
 * forward depthwise convolution (which wasm has, dilations included) of dy
 * spread by the strides and shifted by the padding, with the filter
 * rotated 180 degrees; each input channel then sums its multiplier's
 * output channels.
 */
function depthwiseInputGrad (tf: TF, dy: Tensor4D, filter: Tensor4D, info: Conv2DInfo): Tensor4D {
  const [kh, kw, c, m] = filter.shape
  const n = dy.shape[0]
  const dh = info.dilationHeight
  const dw = info.dilationWidth
  const spreadDy = spread(tf, dy, info.strideHeight, info.strideWidth)
  const framed = shiftInto(tf, spreadDy, (kh - 1) * dh - info.padInfo.top, (kw - 1) * dw - info.padInfo.left,
    info.inHeight + (kh - 1) * dh, info.inWidth + (kw - 1) * dw)
  const rotated = tf.reshape(tf.reverse(filter, [0, 1]), [kh, kw, c * m, 1]) as Tensor4D
  const z = tf.depthwiseConv2d(framed, rotated, 1, 'valid', 'NHWC', [dh, dw])
  return m === 1 ? z : tf.sum(tf.reshape(z, [n, info.inHeight, info.inWidth, c, m]), 4) as Tensor4D
}

/**
 * dW of Conv2D (NHWC) as one wasm Conv2D: with batch and channels swapped,
 * x becomes the image ([Ci, H, W, N]) and dy the filter ([outH, outW, N, Co])
 * dilated by the forward strides; the output is [Ci, kh, kw, Co]. XNNPACK
 * does the whole contraction over batch and positions; only x's frame, two
 * transposes and the result's transpose are extra.
 */
function conv2DBackpropFilter (tf: TF): KernelFunc {
  const kernel = 'Conv2DBackpropFilter'
  return ({ inputs, attrs }: KernelArgs) => tf.tidy(() => {
    const a = attrs as unknown as Conv2DBackpropFilterAttrs
    if (a.dataFormat === 'NCHW') throw unsupported(kernel, "dataFormat 'NCHW' is not supported (wasm's Conv2D is NHWC only); use 'NHWC'")
    const x = rank4(kernel, 'x', tensorOf(tf, inputs.x, kernel, 'x'))
    const dy = rank4(kernel, 'dy', tensorOf(tf, inputs.dy, kernel, 'dy'))
    float32(kernel, 'x', x)
    float32(kernel, 'dy', dy)
    // Conv2D's gradient refuses dilations above 1, so this kernel has no dilations attribute.
    const info = tf.backend_util.computeConv2DInfo(x.shape, a.filterShape, a.strides, 1, a.pad, a.dimRoundingMode, false, 'channelsLast')
    sameShape(kernel, 'dy', dy.shape, info.outShape)
    const frame = windowFrame(tf, x, info)
    const image = tf.transpose(frame, [3, 1, 2, 0])
    const dyFilter = tf.transpose(dy, [1, 2, 0, 3])
    const g = tf.conv2d(image, dyFilter, 1, 'valid', 'NHWC', [info.strideHeight, info.strideWidth])
    return tf.transpose(g, [1, 2, 0, 3])
  })
}

/**
 * dW of a depthwise convolution, tap by tap: for tap (a, b), what it read
 * of x ([P, C, 1]) times dy ([P, C, M]) summed over the P = N*outH*outW
 * positions. No single wasm kernel contracts over positions per channel
 * (a conv would sum over channels too, C times the work), so kh*kw small
 * passes; each tap's intermediates go before the next. The tiny per-tap
 * results are padded into their row and added, not stacked (wasm's stack
 * is JS).
 */
function depthwiseBackpropFilter (tf: TF): KernelFunc {
  const kernel = 'DepthwiseConv2dNativeBackpropFilter'
  return ({ inputs, attrs }: KernelArgs) => tf.tidy(() => {
    const a = attrs as unknown as DepthwiseConv2dNativeBackpropFilterAttrs
    const x = rank4(kernel, 'x', tensorOf(tf, inputs.x, kernel, 'x'))
    const dy = rank4(kernel, 'dy', tensorOf(tf, inputs.dy, kernel, 'dy'))
    float32(kernel, 'x', x)
    float32(kernel, 'dy', dy)
    const info = tf.backend_util.computeConv2DInfo(x.shape, a.filterShape, a.strides, a.dilations ?? 1, a.pad, a.dimRoundingMode, true, 'channelsLast')
    sameShape(kernel, 'dy', dy.shape, info.outShape)
    const [kh, kw, c, m] = a.filterShape
    const positions = info.batchSize * info.outHeight * info.outWidth
    const frame = windowFrame(tf, x, info)
    const dyByChannel = tf.reshape(dy, [positions, c, m])
    const taps = kh * kw
    const rows: Tensor[] = []
    for (let i = 0; i < kh; i++) {
      for (let j = 0; j < kw; j++) {
        const t = i * kw + j
        rows.push(tf.tidy(() => {
          const g = tf.sum(tf.mul(tf.reshape(tap(tf, frame, info, i, j), [positions, c, 1]), dyByChannel), 0)
          return tf.pad(tf.reshape(g, [1, c * m]), [[t, taps - 1 - t], [0, 0]])
        }))
      }
    }
    return tf.reshape(taps === 1 ? rows[0] as Tensor : tf.addN(rows), [kh, kw, c, m])
  })
}

function depthwiseBackpropInput (tf: TF): KernelFunc {
  const kernel = 'DepthwiseConv2dNativeBackpropInput'
  return ({ inputs, attrs }: KernelArgs) => tf.tidy(() => {
    const a = attrs as unknown as DepthwiseConv2dNativeBackpropInputAttrs
    const dy = rank4(kernel, 'dy', tensorOf(tf, inputs.dy, kernel, 'dy'))
    const filter = rank4(kernel, 'filter', tensorOf(tf, inputs.filter, kernel, 'filter'))
    float32(kernel, 'dy', dy)
    float32(kernel, 'filter', filter)
    const inputShape = a.inputShape as readonly number[]
    if (inputShape.length !== 4) throw unsupported(kernel, `inputShape must be rank 4 (NHWC), got [${inputShape.join(', ')}]`)
    if (inputShape[3] !== filter.shape[2]) throw unsupported(kernel, `inputShape has ${inputShape[3]} channels but the filter takes ${filter.shape[2]}`)
    const info = tf.backend_util.computeConv2DInfo(inputShape as Shape4, filter.shape, a.strides, a.dilations ?? 1, a.pad, a.dimRoundingMode, true, 'channelsLast')
    sameShape(kernel, 'dy', dy.shape, info.outShape)
    return depthwiseInputGrad(tf, dy, filter, info)
  })
}

/**
 * Segment sums as wasm's ScatterNd, which adds duplicate indices (TF's
 * scatter_nd semantics). Ids outside [0, numSegments) are dropped, as TF
 * does, by zeroing their rows and sending them to segment 0: ScatterNd does
 * not bound-check. segmentIds of any rank whose shape prefixes x's.
 */
function unsortedSegmentSum (tf: TF): KernelFunc {
  const kernel = 'UnsortedSegmentSum'
  return ({ inputs, attrs }: KernelArgs) => tf.tidy(() => {
    const { numSegments } = attrs as unknown as UnsortedSegmentSumAttrs
    const x = tensorOf(tf, inputs.x, kernel, 'x')
    const ids = tensorOf(tf, inputs.segmentIds, kernel, 'segmentIds')
    if (!Number.isSafeInteger(numSegments) || numSegments < 0) throw unsupported(kernel, `numSegments must be a non-negative integer, got ${numSegments}`)
    if (ids.dtype !== 'int32') throw unsupported(kernel, `segmentIds must be int32, got ${ids.dtype}`)
    if (x.dtype !== 'float32' && x.dtype !== 'int32') throw unsupported(kernel, `x must be float32 or int32, got ${x.dtype}`)
    if (ids.rank > x.rank || ids.shape.some((d, i) => d !== x.shape[i])) {
      throw unsupported(kernel, `segmentIds shape [${ids.shape.join(', ')}] must be a prefix of x's [${x.shape.join(', ')}]`)
    }
    const rest = x.shape.slice(ids.rank)
    const outShape = [numSegments, ...rest]
    if (ids.size === 0 || numSegments === 0 || rest.includes(0)) return tf.zeros(outShape, x.dtype)
    const flatIds = tf.reshape(ids, [ids.size])
    const valid = tf.logicalAnd(tf.greaterEqual(flatIds, 0), tf.less(flatIds, numSegments))
    const safeIds = tf.where(valid, flatIds, tf.zerosLike(flatIds))
    const rows = tf.reshape(x, [ids.size, ...rest])
    const safeRows = tf.where(tf.reshape(valid, [ids.size, ...rest.map(() => 1)]), rows, tf.zerosLike(rows))
    return tf.scatterND(tf.reshape(safeIds, [ids.size, 1]), safeRows, outShape)
  })
}

/**
 * MaxPoolGrad, replacing wasm's (see the top of this file). Each tap of each
 * window is compared with the forward output y; the first tap in row-major
 * order that equals it takes dy (as TF and the cpu backend do, ties
 * included). Each tap's picks go back to their input positions by spreading
 * them by the strides and shifting them by the tap's offset, summed in the
 * padded frame, which is cut back to x's rows at the end.
 */
function maxPoolGrad (tf: TF): KernelFunc {
  const kernel = 'MaxPoolGrad'
  return ({ inputs, attrs }: KernelArgs) => tf.tidy(() => {
    const a = attrs as unknown as MaxPoolGradAttrs
    const dy = rank4(kernel, 'dy', tensorOf(tf, inputs.dy, kernel, 'dy'))
    const x = rank4(kernel, 'input', tensorOf(tf, inputs.input, kernel, 'input'))
    const y = rank4(kernel, 'output', tensorOf(tf, inputs.output, kernel, 'output'))
    float32(kernel, 'dy', dy)
    float32(kernel, 'input', x)
    const info = tf.backend_util.computePool2DInfo(x.shape, a.filterSize, a.strides, 1, a.pad, a.dimRoundingMode)
    sameShape(kernel, 'dy', dy.shape, info.outShape)
    sameShape(kernel, 'output', y.shape, info.outShape)
    const sh = info.strideHeight
    const sw = info.strideWidth
    if (tilesExactly(info)) return tiledMaxPoolGrad(tf, x, dy, info)
    // Padding never wins: -Infinity is below every value a window can hold.
    const frame = windowFrame(tf, x, info, -Infinity)
    const [, frameH, frameW] = frame.shape
    const zeros = tf.zerosLike(dy)
    let claimed: Tensor | undefined
    let sum: Tensor4D | undefined
    for (let i = 0; i < info.filterHeight; i++) {
      for (let j = 0; j < info.filterWidth; j++) {
        const [nowClaimed, nowSum] = tf.tidy(() => {
          const isMax = tf.equal(tap(tf, frame, info, i, j), y)
          const first = claimed === undefined ? isMax : tf.logicalAnd(isMax, tf.logicalNot(claimed))
          const placed = shiftInto(tf, spread(tf, tf.where(first, dy, zeros) as Tensor4D, sh, sw), i, j, frameH, frameW)
          return [claimed === undefined ? isMax : tf.logicalOr(claimed, isMax), sum === undefined ? placed : tf.add(sum, placed)]
        }) as [Tensor, Tensor4D]
        claimed?.dispose()
        sum?.dispose()
        claimed = nowClaimed
        sum = nowSum
      }
    }
    if (sum === undefined) throw unsupported(kernel, 'the pooling window is empty')
    // Back to x's rows: drop the padding, and zeros where no window reached (valid pooling's leftover rows).
    return shiftInto(tf, sum, -info.padInfo.top, -info.padInfo.left, info.inHeight, info.inWidth)
  })
}

/** Windows that tile x exactly: as wide as their stride, no padding, no leftover rows or columns (MaxPooling2D's default 2x2 on an even size). */
function tilesExactly (info: Conv2DInfo): boolean {
  const p = info.padInfo
  return info.filterHeight === info.strideHeight && info.filterWidth === info.strideWidth &&
    info.dilationHeight === 1 && info.dilationWidth === 1 && p.top === 0 && p.left === 0 && p.bottom === 0 && p.right === 0 &&
    info.outHeight * info.filterHeight === info.inHeight && info.outWidth * info.filterWidth === info.inWidth
}

/**
 * MaxPoolGrad for windows that tile x exactly, without a slice: each window's
 * taps become one row (a reshape and a transpose, both C++ in wasm), ArgMax
 * picks its first maximum in row-major order (TF's tie rule, as above; that
 * maximum is y, so y itself is not needed), and
 * OneHot times dy puts the gradient there before the inverse transpose
 * (OneHot as int32, then cast: wasm's OneHot with a float32 dtype writes
 * the int bits, 1 as 1.4e-45). On
 * a 64 x 24 x 24 x 16 ReLU map this is ~100x faster than the per-tap path,
 * whose StridedSlices run in JS.
 */
function tiledMaxPoolGrad (tf: TF, x: Tensor4D, dy: Tensor4D, info: Conv2DInfo): Tensor4D {
  const [n, , , c] = x.shape
  const { outHeight: oh, outWidth: ow, filterHeight: fh, filterWidth: fw } = info
  const taps = fh * fw
  const windows = n * oh * ow * c
  const rows = tf.reshape(tf.transpose(tf.reshape(x, [n, oh, fh, ow, fw, c]), [0, 1, 3, 5, 2, 4]), [windows, taps])
  const picked = tf.mul(tf.cast(tf.oneHot(tf.argMax(rows, 1), taps), 'float32'), tf.reshape(dy, [windows, 1]))
  return tf.reshape(tf.transpose(tf.reshape(picked, [n, oh, ow, c, fh, fw]), [0, 1, 4, 2, 5, 3]), [n, oh * fh, ow * fw, c])
}

const KERNELS: readonly WasmKernel[] = [
  { kernelName: 'Conv2DBackpropFilter', replaces: false, make: conv2DBackpropFilter },
  { kernelName: 'DepthwiseConv2dNativeBackpropFilter', replaces: false, make: depthwiseBackpropFilter },
  { kernelName: 'DepthwiseConv2dNativeBackpropInput', replaces: false, make: depthwiseBackpropInput },
  { kernelName: 'UnsortedSegmentSum', replaces: false, make: unsortedSegmentSum },
  { kernelName: 'MaxPoolGrad', replaces: true, make: maxPoolGrad }
]

/** The kernel names this module provides for wasm. */
export const WASM_GRAD_KERNELS: readonly string[] = KERNELS.map(k => k.kernelName)

/**
 * Registers the kernels above for the wasm backend in tf's (global) kernel
 * registry. Idempotent: a kernel already ours is left alone, and one the
 * wasm package itself provides is kept unless it is one we replace, so a
 * later tfjs-backend-wasm that ships a missing kernel wins. Returns the
 * names registered by this call.
 */
export function registerWasmGradKernels (tf: TF): string[] {
  const registered: string[] = []
  for (const k of KERNELS) {
    // getKernel is typed as always returning a config but gives undefined for an unknown pair.
    const current = tf.getKernel(k.kernelName, BACKEND) as ReturnType<TF['getKernel']> | undefined
    if (current !== undefined && (ours.has(current.kernelFunc) || !k.replaces)) continue
    // Unregistering first: registerKernel warns on (and keeps working over) a duplicate.
    if (current !== undefined) tf.unregisterKernel(k.kernelName, BACKEND)
    const kernelFunc = k.make(tf)
    ours.add(kernelFunc)
    tf.registerKernel({ kernelName: k.kernelName, backendName: BACKEND, kernelFunc })
    registered.push(k.kernelName)
  }
  return registered
}
