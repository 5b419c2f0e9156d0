import { InvalidInputError } from '../errors.ts'

/** The dtypes that cross the wire and the worker boundary. */
export const DTYPES = ['float32', 'int32'] as const
export type DType = typeof DTYPES[number]
export type TensorData = Float32Array | Int32Array

/** Every dtype we carry is four bytes wide. */
export const BYTES_PER_ELEMENT = 4

/**
 * A tensor in host memory: dtype, shape and a C-order (row-major) typed array.
 * This is the one shape that tensors take between the network, the job store,
 * `.npy` files and the worker threads; TF.js tensors live only inside workers.
 */
export interface HostTensor {
  dtype: DType
  shape: number[]
  data: TensorData
}

export function isDType (value: unknown): value is DType {
  return value === 'float32' || value === 'int32'
}

/** Number of elements of a shape; the empty shape is a scalar of one element. */
export function sizeOf (shape: readonly number[]): number {
  let n = 1
  for (const d of shape) n *= d
  return n
}

export function allocate (dtype: DType, length: number): TensorData {
  return dtype === 'float32' ? new Float32Array(length) : new Int32Array(length)
}

/** Builds a HostTensor, checking that the data length matches the shape. */
export function hostTensor (dtype: DType, shape: number[], data?: TensorData): HostTensor {
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new InvalidInputError(`shape [${shape.join(', ')}] has a dimension that is not a non-negative integer`, 'ERR_BAD_SHAPE')
  }
  const n = sizeOf(shape)
  const buf = data ?? allocate(dtype, n)
  if (buf.length !== n) {
    throw new InvalidInputError(`data of ${buf.length} elements does not fit shape [${shape.join(', ')}] (${n} elements)`, 'ERR_BAD_SHAPE')
  }
  if ((dtype === 'float32') !== (buf instanceof Float32Array)) {
    throw new InvalidInputError(`data is not a ${dtype} array`, 'ERR_BAD_DTYPE')
  }
  return { dtype, shape: [...shape], data: buf }
}

/** Elements in one row (one index along axis 0). */
export function rowSize (t: HostTensor): number {
  return sizeOf(t.shape.slice(1))
}

/** Rows [start, end) of a tensor of rank >= 1, as a view that shares memory. */
export function rowSlice (t: HostTensor, start: number, end: number): HostTensor {
  const r = rowSize(t)
  return {
    dtype: t.dtype,
    shape: [end - start, ...t.shape.slice(1)],
    data: t.data.subarray(start * r, end * r)
  }
}

/** True when the typed array spans its whole ArrayBuffer, so it can be transferred without taking other data along. */
export function ownsBuffer (data: TensorData): boolean {
  return data.byteOffset === 0 && data.byteLength === data.buffer.byteLength && !(data.buffer instanceof SharedArrayBuffer)
}

export function describe (t: Pick<HostTensor, 'dtype' | 'shape'>): string {
  return `${t.dtype}[${t.shape.join(', ')}]`
}
