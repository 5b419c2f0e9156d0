import { open, stat, writeFile } from 'node:fs/promises'
import { InvalidInputError, LimitExceededError } from '../errors.ts'
import { DEFAULT_MAX_TENSOR_BYTES } from './limits.ts'
import { BYTES_PER_ELEMENT, hostTensor, sizeOf } from './tensor.ts'
import type { DType, HostTensor, TensorData } from './tensor.ts'

/**
 * NumPy `.npy` files (format versions 1.0, 2.0 and 3.0), the format tensors
 * take in and out of the CLI. Reading is strict: anything we cannot map to a
 * HostTensor exactly (Fortran order, big-endian, objects, pickles, structured
 * dtypes) is refused with a message naming the input and what is allowed,
 * never read into a wrong result.
 *
 * Spec: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
 */

export { DEFAULT_MAX_TENSOR_BYTES }

export interface NpyLimits {
  /** Largest data section (declared shape x item size) to accept. */
  maxTensorBytes?: number
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59] // \x93NUMPY
/** Magic (6) + version (2); the header length field follows. */
const PREAMBLE_BYTES = 8

/**
 * numpy itself refuses headers above 10000 bytes unless asked not to
 * (`max_header_size` in numpy.lib.format, added against header-parsing
 * DoS); a real header for any shape we accept is well under 200 bytes.
 */
export const MAX_NPY_HEADER_BYTES = 10_000

/** Headers are padded so the data starts at a multiple of 64 bytes (format 1.0+ as numpy writes it). */
const HEADER_ALIGN = 64

/**
 * The descrs we read, what they become, and how to read one item. Two-byte
 * and narrower types have no byte order issue for '|'; numpy writes '|' for
 * them. 64-bit and 16-bit ints and float64 are narrowed with range checks.
 */
interface Descr { dtype: DType, itemSize: number, read: (v: DataView, offset: number) => number }
const DESCRS: Record<string, Descr> = {
  '<f4': { dtype: 'float32', itemSize: 4, read: (v, o) => v.getFloat32(o, true) },
  '<f8': { dtype: 'float32', itemSize: 8, read: (v, o) => v.getFloat64(o, true) },
  '<i4': { dtype: 'int32', itemSize: 4, read: (v, o) => v.getInt32(o, true) },
  '<i8': { dtype: 'int32', itemSize: 8, read: (v, o) => Number(v.getBigInt64(o, true)) },
  '<i2': { dtype: 'int32', itemSize: 2, read: (v, o) => v.getInt16(o, true) },
  '<u2': { dtype: 'int32', itemSize: 2, read: (v, o) => v.getUint16(o, true) },
  '|i1': { dtype: 'int32', itemSize: 1, read: (v, o) => v.getInt8(o) },
  '|u1': { dtype: 'int32', itemSize: 1, read: (v, o) => v.getUint8(o) },
  '|b1': { dtype: 'int32', itemSize: 1, read: (v, o) => v.getUint8(o) === 0 ? 0 : 1 }
}
const ALLOWED_DESCRS = Object.keys(DESCRS).join(', ')

const INT32_MIN = -(2 ** 31)
const INT32_MAX = 2 ** 31 - 1
/** Largest finite float32; a float64 beyond it would silently become Infinity. */
const FLOAT32_MAX = 3.4028234663852886e38

const IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1

function bad (name: string, what: string): InvalidInputError {
  return new InvalidInputError(`${name}: ${what}`, 'ERR_BAD_NPY')
}

interface Header { descr: string, fortranOrder: boolean, shape: number[] }

/**
 * Parses the header, a Python dict literal such as
 * `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`. A small
 * strict parser for exactly that grammar: strings, True/False, tuples of
 * ints. Anything else (a list descr for structured dtypes...) is refused.
 */
function parseHeader (text: string, name: string): Header {
  let i = 0
  const ws = (): void => { while (i < text.length && ' \t\r\n'.includes(text[i] as string)) i++ }
  const expect = (c: string): void => {
    ws()
    if (text[i] !== c) throw bad(name, `malformed .npy header (expected '${c}' at ${i}); only plain descr strings are allowed: ${ALLOWED_DESCRS}`)
    i++
  }
  const str = (): string => {
    ws()
    const q = text[i]
    if (q !== '\'' && q !== '"') throw bad(name, `malformed .npy header (expected a string at ${i}); only plain descr strings are allowed: ${ALLOWED_DESCRS}`)
    const end = text.indexOf(q, i + 1)
    if (end < 0) throw bad(name, 'malformed .npy header (unterminated string)')
    const s = text.slice(i + 1, end)
    i = end + 1
    return s
  }
  const value = (): string | boolean | number[] => {
    ws()
    if (text.startsWith('True', i)) { i += 4; return true }
    if (text.startsWith('False', i)) { i += 5; return false }
    if (text[i] === '(') {
      i++
      const dims: number[] = []
      for (;;) {
        ws()
        if (text[i] === ')') { i++; return dims }
        const m = /^\d+L?/.exec(text.slice(i, i + 32))
        if (m === null) throw bad(name, 'malformed .npy header (shape must be a tuple of non-negative integers)')
        const d = Number(m[0].replace('L', ''))
        if (!Number.isSafeInteger(d)) throw bad(name, `shape dimension ${m[0]} is too large`)
        dims.push(d)
        i += m[0].length
        ws()
        if (text[i] === ',') i++
        else if (text[i] !== ')') throw bad(name, 'malformed .npy header (shape tuple)')
      }
    }
    return str()
  }

  const fields = new Map<string, string | boolean | number[]>()
  expect('{')
  for (;;) {
    ws()
    if (text[i] === '}') { i++; break }
    const key = str()
    expect(':')
    if (fields.has(key)) throw bad(name, `.npy header repeats '${key}'`)
    fields.set(key, value())
    ws()
    if (text[i] === ',') i++
    else if (text[i] !== '}') throw bad(name, 'malformed .npy header (expected , or })')
  }
  ws()
  if (i !== text.length) throw bad(name, 'malformed .npy header (text after the dict)')
  const keys = [...fields.keys()].sort().join(',')
  if (keys !== 'descr,fortran_order,shape') throw bad(name, `.npy header has keys ${keys}; expected descr, fortran_order, shape`)
  const descr = fields.get('descr')
  const fortranOrder = fields.get('fortran_order')
  const shape = fields.get('shape')
  if (typeof descr !== 'string') throw bad(name, `dtype is not a plain type (structured arrays are not supported); allowed: ${ALLOWED_DESCRS}`)
  if (typeof fortranOrder !== 'boolean') throw bad(name, 'fortran_order must be True or False')
  if (!Array.isArray(shape)) throw bad(name, 'shape must be a tuple')
  return { descr, fortranOrder, shape }
}

function describeDescr (descr: string): string {
  if (descr.includes('O')) return `dtype '${descr}' is an object array (pickled Python objects), which is never loaded`
  if (descr.startsWith('>')) return `dtype '${descr}' is big-endian; save it little-endian (arr.astype(arr.dtype.newbyteorder('<')))`
  return `dtype '${descr}' is not supported`
}

/**
 * Decodes `.npy` bytes into a HostTensor that owns its buffer. `name` names
 * the input in errors (a path, a job input name). The declared size is
 * checked against `maxTensorBytes` before any tensor memory is allocated.
 */
export function decodeNpy (bytes: Uint8Array, name: string, limits: NpyLimits = {}): HostTensor {
  const maxBytes = limits.maxTensorBytes ?? DEFAULT_MAX_TENSOR_BYTES
  if (bytes.length < PREAMBLE_BYTES + 2 || MAGIC.some((b, i) => bytes[i] !== b)) {
    throw bad(name, 'is not a .npy file (no \\x93NUMPY magic); save arrays with numpy.save')
  }
  const major = bytes[6] as number
  const minor = bytes[7] as number
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  let headerLen: number
  let headerStart: number
  if (major === 1 && minor === 0) {
    headerLen = view.getUint16(8, true)
    headerStart = 10
  } else if ((major === 2 || major === 3) && minor === 0) {
    if (bytes.length < 12) throw bad(name, 'is truncated inside the .npy header')
    headerLen = view.getUint32(8, true)
    headerStart = 12
  } else {
    throw bad(name, `has .npy format version ${major}.${minor}; supported: 1.0, 2.0, 3.0`)
  }
  if (headerLen > MAX_NPY_HEADER_BYTES) throw bad(name, `has a ${headerLen}-byte .npy header; at most ${MAX_NPY_HEADER_BYTES} are allowed`)
  const dataStart = headerStart + headerLen
  if (bytes.length < dataStart) throw bad(name, 'is truncated inside the .npy header')
  const headerBytes = bytes.subarray(headerStart, dataStart)
  // 1.0 and 2.0 headers are latin1 (ASCII in practice); 3.0 allows utf8.
  const text = new TextDecoder(major === 3 ? 'utf-8' : 'latin1').decode(headerBytes)
  const header = parseHeader(text, name)

  const descr = DESCRS[header.descr]
  if (descr === undefined) throw bad(name, `${describeDescr(header.descr)}; allowed: ${ALLOWED_DESCRS}`)
  if (header.fortranOrder && header.shape.filter(d => d > 1).length > 1) {
    // A Fortran-order array is laid out column-major; reading it as C order
    // would transpose the data silently.
    throw bad(name, 'is stored in Fortran order; save it in C order (numpy.ascontiguousarray)')
  }
  const n = sizeOf(header.shape)
  const dataBytes = n * descr.itemSize
  const outBytes = n * BYTES_PER_ELEMENT
  if (!(Math.max(dataBytes, outBytes) <= maxBytes)) {
    throw new LimitExceededError(`${name}: ${header.descr}[${header.shape.join(', ')}] takes ${Math.max(dataBytes, outBytes)} bytes; the limit is ${maxBytes}`)
  }
  const available = bytes.length - dataStart
  if (available < dataBytes) throw bad(name, `is truncated: shape (${header.shape.join(', ')}) of ${header.descr} needs ${dataBytes} data bytes, the file has ${available}`)
  if (available > dataBytes) throw bad(name, `has ${available - dataBytes} bytes after the data that shape (${header.shape.join(', ')}) of ${header.descr} declares`)

  let data: TensorData
  if (descr.itemSize === 4 && IS_LITTLE_ENDIAN) {
    // Fast path: copy the bytes into a buffer of our own (which also aligns
    // them) and view it. Not bytes.slice(): on a Node Buffer that is a view.
    const copy = new Uint8Array(dataBytes)
    copy.set(bytes.subarray(dataStart, dataStart + dataBytes))
    const buf = copy.buffer
    data = descr.dtype === 'float32' ? new Float32Array(buf) : new Int32Array(buf)
  } else {
    data = descr.dtype === 'float32' ? new Float32Array(n) : new Int32Array(n)
    for (let k = 0; k < n; k++) {
      const v = descr.read(view, dataStart + k * descr.itemSize)
      if (descr.dtype === 'int32' && (v < INT32_MIN || v > INT32_MAX)) {
        throw bad(name, `element ${k} (${v}) of ${header.descr} does not fit int32`)
      }
      if (descr.dtype === 'float32' && Number.isFinite(v) && Math.abs(v) > FLOAT32_MAX) {
        throw bad(name, `element ${k} (${v}) of ${header.descr} is beyond float32's range`)
      }
      data[k] = v
    }
  }
  return hostTensor(descr.dtype, header.shape, data)
}

function shapeLiteral (shape: readonly number[]): string {
  if (shape.length === 1) return `(${shape[0]},)`
  return `(${shape.join(', ')})`
}

/**
 * The `.npy` preamble and header (version 1.0, or 2.0 if the header needs it)
 * for a C-order, little-endian tensor: what comes before the data, so that a
 * writer can stream data larger than it wants to hold twice.
 */
export function encodeNpyHeader (dtype: DType, shape: readonly number[]): Uint8Array {
  const descr = dtype === 'float32' ? '<f4' : '<i4'
  const dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shapeLiteral(shape)}, }`
  let lenBytes = 2
  let major = 1
  let pad = HEADER_ALIGN - ((PREAMBLE_BYTES + lenBytes + dict.length + 1) % HEADER_ALIGN)
  if (dict.length + 1 + pad > 0xffff) {
    lenBytes = 4
    major = 2
    pad = HEADER_ALIGN - ((PREAMBLE_BYTES + lenBytes + dict.length + 1) % HEADER_ALIGN)
  }
  if (pad === HEADER_ALIGN) pad = 0
  const header = dict + ' '.repeat(pad) + '\n'
  const out = new Uint8Array(PREAMBLE_BYTES + lenBytes + header.length)
  out.set(MAGIC)
  out[6] = major
  out[7] = 0
  const view = new DataView(out.buffer)
  if (lenBytes === 2) view.setUint16(8, header.length, true)
  else view.setUint32(8, header.length, true)
  out.set(new TextEncoder().encode(header), PREAMBLE_BYTES + lenBytes)
  return out
}

/** Encodes a HostTensor as `.npy` (version 1.0, or 2.0 if the header needs it), C order, little-endian. */
export function encodeNpy (t: HostTensor): Uint8Array {
  const head = encodeNpyHeader(t.dtype, t.shape)
  const dataStart = head.length
  const out = new Uint8Array(dataStart + t.data.length * BYTES_PER_ELEMENT)
  out.set(head)
  const view = new DataView(out.buffer)
  if (IS_LITTLE_ENDIAN) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), dataStart)
  } else {
    for (let k = 0; k < t.data.length; k++) {
      const o = dataStart + k * BYTES_PER_ELEMENT
      if (t.dtype === 'float32') view.setFloat32(o, t.data[k] as number, true)
      else view.setInt32(o, t.data[k] as number, true)
    }
  }
  return out
}

/**
 * Reads a `.npy` file. The file size is checked against the limit before the
 * file is read, so an oversized file is never loaded into memory.
 */
export async function readNpyFile (path: string, limits: NpyLimits = {}): Promise<HostTensor> {
  const maxBytes = limits.maxTensorBytes ?? DEFAULT_MAX_TENSOR_BYTES
  // Allow for the header and for float64/int64 files that narrow to 4 bytes an item.
  const maxFileBytes = 2 * maxBytes + PREAMBLE_BYTES + 4 + MAX_NPY_HEADER_BYTES
  const size = (await stat(path)).size
  if (size > maxFileBytes) throw new LimitExceededError(`${path}: file of ${size} bytes is above the limit for a tensor of ${maxBytes} bytes`)
  const fh = await open(path, 'r')
  try {
    const bytes = new Uint8Array(size)
    let at = 0
    while (at < size) {
      const { bytesRead } = await fh.read(bytes, at, size - at, at)
      if (bytesRead === 0) break
      at += bytesRead
    }
    return decodeNpy(bytes.subarray(0, at), path, limits)
  } finally {
    await fh.close()
  }
}

export async function writeNpyFile (path: string, t: HostTensor): Promise<void> {
  await writeFile(path, encodeNpy(t))
}
