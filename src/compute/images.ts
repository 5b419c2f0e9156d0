import { createRequire } from 'node:module'
import { inflateSync } from 'node:zlib'
import jpeg from 'jpeg-js'
import { InvalidInputError, LimitExceededError, TensormeshError, errorMessage } from '../errors.ts'
import { DEFAULT_MAX_TENSOR_BYTES } from './limits.ts'
import { BYTES_PER_ELEMENT, hostTensor } from './tensor.ts'
import type { HostTensor } from './tensor.ts'

/**
 * Images as job input (issue 14): JPEG and PNG bytes decoded, resized and
 * scaled into a float32 [n, h, w, 3] tensor on the peer that runs the map.
 *
 * Pure JS (jpeg-js, pngjs): TF.js's wasm and cpu backends have no image
 * decoder (`tf.node.decodeImage` is tfjs-node's, an optional native backend
 * that most peers lack), and the same code then runs in every worker
 * whatever its backend.
 *
 * Hostile bytes are the expected case: the header is read first (JPEG
 * SOFn, PNG IHDR) and an image over the pixel limit is refused before the
 * decoder allocates anything; a file that is cut short, corrupt in its
 * structure, or neither format throws an InvalidInputError
 * (ERR_BAD_IMAGE) that names the file. Corruption inside JPEG
 * entropy-coded data that still parses decodes to wrong pixels, as it
 * does in libjpeg and browsers: there is nothing to check it against.
 *
 * CPU-bound (JPEG decode: about 85 ms per megapixel; the resize to 224x224
 * is about 1 ms whatever the source): run it inside an executor worker,
 * never on the event loop that serves libp2p.
 */

/**
 * Largest image (width x height) decoded: 25 MP. Phone and camera photos
 * are 12-24 MP (some phones save 48-50 MP, high-resolution camera bodies
 * 45-61 MP; those are refused with a clear error: resize them first). The bound is on memory:
 * jpeg-js keeps an Int32Array(64) per 8x8 block per component, and a
 * 12 MP 4:4:4 JPEG was measured to peak about 500 MB above the process's
 * baseline (~40 bytes a pixel), so a 25 MP one takes about 1 GB
 * (4:2:0, as cameras write, about two thirds of that), one decode per
 * worker at a time: a node of two workers stays near 2 GB. pngjs should need about as much for a 16-bit RGBA PNG
 * (estimated, not measured: the inflated rows twice, 16- and 8-bit RGBA).
 */
export const MAX_IMAGE_PIXELS = 25_000_000

export const JPEG_MAGIC: readonly number[] = [0xff, 0xd8, 0xff]
export const PNG_MAGIC: readonly number[] = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]

export type ImageFormat = 'jpeg' | 'png'

export interface ImageLimits {
  /** Largest width x height to decode (default MAX_IMAGE_PIXELS). */
  maxPixels?: number
  /** Largest output tensor of imageTensor, in bytes (default DEFAULT_MAX_TENSOR_BYTES). */
  maxTensorBytes?: number
}

export interface ImageHeader {
  format: ImageFormat
  width: number
  height: number
}

/** An 8-bit RGB image, row-major HWC. */
export interface RgbImage {
  width: number
  height: number
  channels: 3
  data: Uint8Array
}

/** Any HWC image resizeBilinear reads: `channels` defaults to 3. */
export interface PixelGrid {
  width: number
  height: number
  channels?: number
  data: Uint8Array | Float32Array
}

export interface NamedImage {
  name: string
  bytes: Uint8Array
}

const BAD_IMAGE = 'ERR_BAD_IMAGE'
const FORMATS_ALLOWED = 'JPEG (baseline or progressive) or PNG'

function bad (name: string, what: string, cause?: unknown): InvalidInputError {
  return new InvalidInputError(`${name}: ${what}`, BAD_IMAGE, cause === undefined ? undefined : { cause })
}

/** A library's message, made safe to pass on: pngjs puts chunk names (file bytes) in its messages. */
function libraryMessage (err: unknown): string {
  return errorMessage(err).replace(/[^\x20-\x7e]/g, '?').slice(0, 200)
}

function hasMagic (bytes: Uint8Array, magic: readonly number[]): boolean {
  if (bytes.length < magic.length) return false
  for (let i = 0; i < magic.length; i++) if (bytes[i] !== magic[i]) return false
  return true
}

/** The format the magic bytes say, or undefined. */
export function imageFormat (bytes: Uint8Array): ImageFormat | undefined {
  if (hasMagic(bytes, JPEG_MAGIC)) return 'jpeg'
  if (hasMagic(bytes, PNG_MAGIC)) return 'png'
  return undefined
}

function checkPixels (name: string, width: number, height: number, maxPixels: number): void {
  const pixels = width * height
  if (pixels > maxPixels) {
    throw new LimitExceededError(`${name}: image of ${width}x${height} (${(pixels / 1e6).toFixed(1)} MP) is above the limit of ${maxPixels} pixels (${(maxPixels / 1e6).toFixed(1)} MP)`)
  }
}

function maxPixelsOf (limits: ImageLimits): number {
  const max = limits.maxPixels ?? MAX_IMAGE_PIXELS
  if (!(Number.isSafeInteger(max) && max >= 1)) throw new InvalidInputError(`maxPixels is ${max}; it must be a positive integer`, 'ERR_BAD_PARAMS')
  return max
}

// ---------------------------------------------------------------- JPEG

interface JpegFrame {
  width: number
  height: number
  /** Component ids, in frame order. */
  ids: number[]
}

/** Huffman-coded processes jpeg-js decodes: baseline, extended sequential, progressive. */
const JPEG_SOF_SUPPORTED = new Set([0xc0, 0xc1, 0xc2])
/** SOF3 lossless, SOF5-7 hierarchical, SOF9-11 and SOF13-15 arithmetic coding. */
const JPEG_SOF_OTHER = new Set([0xc3, 0xc5, 0xc6, 0xc7, 0xc9, 0xca, 0xcb, 0xcd, 0xce, 0xcf])
const JPEG_SOS = 0xda
const JPEG_EOI = 0xd9

/**
 * Walks a JPEG's marker segments (ITU T.81 B.1) from SOI to EOI, skipping
 * over entropy-coded data, without decoding anything: dimensions and
 * limits come from the frame header (SOFn), and a file cut short is caught
 * here with a clear message. Cheap: one indexOf pass over the scan bytes.
 */
function probeJpeg (b: Uint8Array, name: string, maxPixels: number): JpegFrame {
  const n = b.length
  const truncated = (where: string): InvalidInputError => bad(name, `is a truncated JPEG: the file (${n} bytes) ends ${where}, before the end-of-image marker`)
  let i = 2
  let frame: JpegFrame | undefined
  let scans = 0
  for (;;) {
    if (i >= n) throw truncated('between segments')
    if (b[i] !== 0xff) throw bad(name, `is not a valid JPEG: expected a marker at byte ${i}, found 0x${(b[i] as number).toString(16).padStart(2, '0')}`)
    while (i < n && b[i] === 0xff) i++ // fill bytes may pad any marker
    if (i >= n) throw truncated('inside a marker')
    const m = b[i++] as number
    if (m === JPEG_EOI) {
      if (frame === undefined || scans === 0) throw bad(name, 'is a JPEG without image data (end-of-image before any scan)')
      return frame
    }
    if ((m >= 0xd0 && m <= 0xd7) || m === 0x01) continue // RSTn, TEM: no length
    if (m === 0xd8 || m === 0x00) throw bad(name, `is not a valid JPEG: unexpected marker 0xff${m.toString(16).padStart(2, '0')} at byte ${i - 2}`)
    if (i + 2 > n) throw truncated('inside a segment length')
    const len = ((b[i] as number) << 8) | (b[i + 1] as number)
    if (len < 2) throw bad(name, `is not a valid JPEG: segment at byte ${i - 2} has length ${len}`)
    const end = i + len
    const isFrame = JPEG_SOF_SUPPORTED.has(m) || JPEG_SOF_OTHER.has(m)
    // The limit comes first, as soon as the dimensions are in: it is what
    // keeps a forged header from costing anything.
    if (isFrame && frame === undefined && i + 7 <= n) {
      checkPixels(name, ((b[i + 5] as number) << 8) | (b[i + 6] as number), ((b[i + 3] as number) << 8) | (b[i + 4] as number), maxPixels)
    }
    if (end > n) throw truncated(`inside a segment (0xff${m.toString(16)} at byte ${i - 2} declares ${len} bytes)`)
    if (isFrame) {
      if (frame !== undefined) throw bad(name, 'is a JPEG with more than one frame header (hierarchical), which is not supported')
      if (len < 8) throw bad(name, 'is not a valid JPEG: frame header too short')
      const precision = b[i + 2] as number
      const height = ((b[i + 3] as number) << 8) | (b[i + 4] as number)
      const width = ((b[i + 5] as number) << 8) | (b[i + 6] as number)
      const components = b[i + 7] as number
      if (JPEG_SOF_OTHER.has(m)) throw bad(name, `uses JPEG coding SOF${m - 0xc0} (lossless, hierarchical or arithmetic), which is not supported; allowed: ${FORMATS_ALLOWED}`)
      if (precision !== 8) throw bad(name, `is a ${precision}-bit JPEG; only 8-bit samples are supported`)
      if (width === 0 || height === 0) throw bad(name, `is a JPEG of ${width}x${height} pixels (a height set later by a DNL marker is not supported)`)
      if (components !== 1 && components !== 3 && components !== 4) throw bad(name, `is a JPEG with ${components} colour components; supported: 1 (grey), 3 (YCbCr/RGB), 4 (CMYK/YCCK)`)
      if (len !== 8 + 3 * components) throw bad(name, 'is not a valid JPEG: frame header length does not match its component count')
      const ids: number[] = []
      for (let c = 0; c < components; c++) {
        const id = b[i + 8 + 3 * c] as number
        const hv = b[i + 9 + 3 * c] as number
        const h = hv >> 4
        const v = hv & 15
        if (ids.includes(id)) throw bad(name, `is not a valid JPEG: component id ${id} appears twice in the frame header`)
        if (h < 1 || h > 4 || v < 1 || v > 4) throw bad(name, `is not a valid JPEG: component ${c} has sampling factors ${h}x${v} (allowed 1-4)`)
        ids.push(id)
      }
      frame = { width, height, ids }
    } else if (m === JPEG_SOS) {
      if (frame === undefined) throw bad(name, 'is not a valid JPEG: a scan comes before the frame header')
      const count = b[i + 2] as number
      if (count < 1 || count > 4 || len !== 6 + 2 * count) throw bad(name, 'is not a valid JPEG: malformed scan header')
      for (let c = 0; c < count; c++) {
        const id = b[i + 3 + 2 * c] as number
        if (!frame.ids.includes(id)) throw bad(name, `is not a valid JPEG: a scan names component ${id}, which the frame does not have`)
      }
      scans++
      // Entropy-coded data: 0xff is followed by 0x00 (a stuffed byte), RSTn,
      // or 0xff (fill); anything else starts the next marker.
      let j = end
      for (;;) {
        j = b.indexOf(0xff, j)
        if (j < 0 || j + 1 >= n) throw truncated('inside its image data')
        const next = b[j + 1] as number
        if (next === 0x00 || (next >= 0xd0 && next <= 0xd7)) j += 2
        else if (next === 0xff) j += 1
        else break
      }
      i = j
      continue
    }
    i = end
  }
}

/**
 * The allocation budget jpeg-js enforces (`maxMemoryUsageInMB`, counting
 * the typed arrays it asks for) for an image of maxPixels: per pixel and
 * component (4 at most) 4 bytes of coefficient blocks, 1 of component
 * plane and 1 of colour-converted copy, plus 3 of RGB output; +10% for
 * blocks padded to whole MCUs, +16 MB for tables. It refuses past this,
 * which also covers what a header check cannot see.
 */
function jpegMemoryMB (maxPixels: number): number {
  return Math.ceil(maxPixels * 1.1 * (4 * (4 + 1 + 1) + 3) / 2 ** 20) + 16
}

function decodeJpeg (bytes: Uint8Array, name: string, maxPixels: number): RgbImage {
  const frame = probeJpeg(bytes, name, maxPixels)
  let out: { width: number, height: number, data: Uint8Array }
  try {
    out = jpeg.decode(bytes, {
      useTArray: true,
      formatAsRGBA: false,
      // Our header check is the limit; jpeg-js's own (in MP, a float) gets a pixel of slack.
      maxResolutionInMP: (maxPixels + 1) / 1e6,
      maxMemoryUsageInMB: jpegMemoryMB(maxPixels)
    })
  } catch (err) {
    throw bad(name, `is not a valid JPEG (${libraryMessage(err)})`, err)
  }
  if (out.width !== frame.width || out.height !== frame.height || out.data.length !== frame.width * frame.height * 3) {
    throw bad(name, `is not a valid JPEG (decoded ${out.width}x${out.height}, header says ${frame.width}x${frame.height})`)
  }
  // Grey (one component) comes out of jpeg-js already replicated to RGB.
  return { width: out.width, height: out.height, channels: 3, data: out.data }
}

// ----------------------------------------------------------------- PNG

interface PngMetadata {
  width: number
  height: number
  depth: number
  colorType: number
  transColor?: number[]
  /** RGBA, 8 bits a sample, whatever the file's format. */
  data: Uint8Array
}
interface PngModule { PNG: { sync: { read: (buffer: Buffer, options?: { checkCRC?: boolean }) => PngMetadata } } }
const require = createRequire(import.meta.url)
const { PNG } = require('pngjs') as PngModule

/** Samples a pixel per colour type (PNG spec 11.2.2), and the bit depths each allows. */
const PNG_CHANNELS: Record<number, { channels: number, depths: number[] }> = {
  0: { channels: 1, depths: [1, 2, 4, 8, 16] },
  2: { channels: 3, depths: [8, 16] },
  3: { channels: 1, depths: [1, 2, 4, 8] },
  4: { channels: 2, depths: [8, 16] },
  6: { channels: 4, depths: [8, 16] }
}
const PNG_IHDR = 0x49484452
const PNG_IDAT = 0x49444154
const PNG_IEND = 0x49454e44
/** Adam7 passes: x start, y start, x step, y step. */
const ADAM7 = [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [0, 1, 1, 2]] as const

interface PngHeader {
  width: number
  height: number
  depth: number
  colorType: number
  interlaced: boolean
  /** Where each IDAT chunk's data lies. */
  idat: Array<[number, number]>
}

/** Filtered scanline bytes the header implies (what IDAT must inflate to). */
function pngRawBytes (h: PngHeader): number {
  const bits = (PNG_CHANNELS[h.colorType] as { channels: number }).channels * h.depth
  const rows = (w: number, hh: number): number => w === 0 || hh === 0 ? 0 : hh * (1 + Math.ceil(w * bits / 8))
  if (!h.interlaced) return rows(h.width, h.height)
  let total = 0
  for (const [x0, y0, dx, dy] of ADAM7) total += rows(Math.max(0, Math.ceil((h.width - x0) / dx)), Math.max(0, Math.ceil((h.height - y0) / dy)))
  return total
}

/** Walks a PNG's chunks (length, type, data, CRC) to IEND; reads IHDR and checks the limit before anything is inflated. */
function probePng (b: Uint8Array, name: string, maxPixels: number): PngHeader {
  const n = b.length
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength)
  const truncated = (where: string): InvalidInputError => bad(name, `is a truncated PNG: the file (${n} bytes) ends ${where}, before the IEND chunk`)
  let i = PNG_MAGIC.length
  let header: PngHeader | undefined
  for (;;) {
    if (i + 8 > n) throw truncated(header === undefined ? 'inside its header' : 'between chunks')
    const len = view.getUint32(i)
    const type = view.getUint32(i + 4)
    if (len > 0x7fffffff) throw bad(name, `is not a valid PNG: chunk at byte ${i} declares ${len} bytes (at most 2^31-1)`)
    const start = i + 8
    const end = start + len + 4 // data, then the CRC
    if (header === undefined) {
      if (type !== PNG_IHDR || len !== 13) throw bad(name, 'is not a valid PNG: it does not start with a 13-byte IHDR chunk')
      if (start + 13 > n) throw truncated('inside its header')
      const width = view.getUint32(start)
      const height = view.getUint32(start + 4)
      const depth = b[start + 8] as number
      const colorType = b[start + 9] as number
      if (width === 0 || height === 0 || width > 0x7fffffff || height > 0x7fffffff) throw bad(name, `is not a valid PNG: it declares ${width}x${height} pixels`)
      // The limit comes first: it is what keeps a forged header from costing anything.
      checkPixels(name, width, height, maxPixels)
      if (end > n) throw truncated('inside its header')
      const format = PNG_CHANNELS[colorType]
      if (format === undefined || !format.depths.includes(depth)) throw bad(name, `is not a valid PNG: colour type ${colorType} with bit depth ${depth} does not exist`)
      if (b[start + 10] !== 0 || b[start + 11] !== 0 || (b[start + 12] as number) > 1) throw bad(name, 'is not a valid PNG: unknown compression, filter or interlace method')
      header = { width, height, depth, colorType, interlaced: b[start + 12] === 1, idat: [] }
    } else {
      if (end > n) throw truncated(`inside a chunk (at byte ${i}, declaring ${len} bytes)`)
      if (type === PNG_IDAT) header.idat.push([start, len])
      else if (type === PNG_IEND) break
    }
    i = end
  }
  if (header.idat.length === 0) throw bad(name, 'is a PNG without image data (no IDAT chunk)')
  return header
}

/** 8-bit value of a tRNS sample, scaled as pngjs scales samples of `depth` bits. */
function scaleSample (v: number, depth: number): number {
  return depth === 8 ? v : Math.floor(v * 255 / (2 ** depth - 1) + 0.5)
}

/**
 * Inflates the image data once, bounded, and checks it is exactly the size
 * the header implies. pngjs checks neither: it inflates interlaced data
 * with no bound at all (a small file could inflate to gigabytes), and
 * fills rows missing from short data with garbage instead of failing. The
 * cost is a second inflate, a fraction of what pngjs's unfiltering takes.
 */
function checkPngData (bytes: Uint8Array, name: string, header: PngHeader): void {
  const expected = pngRawBytes(header)
  const parts = header.idat.map(([s, l]) => bytes.subarray(s, s + l))
  let raw: Buffer
  try {
    raw = inflateSync(parts.length === 1 ? (parts[0] as Uint8Array) : Buffer.concat(parts), { maxOutputLength: expected })
  } catch (err) {
    if (err instanceof RangeError) throw bad(name, `is not a valid PNG: its image data inflates to more than the ${expected} bytes its header declares`, err)
    throw bad(name, `is not a valid PNG: its compressed image data is corrupt or cut short (${libraryMessage(err)})`, err)
  }
  if (raw.length !== expected) throw bad(name, `is not a valid PNG: its image data inflates to ${raw.length} bytes, its header declares ${expected}`)
}

function decodePng (bytes: Uint8Array, name: string, maxPixels: number): RgbImage {
  const header = probePng(bytes, name, maxPixels)
  checkPngData(bytes, name, header)
  let meta: PngMetadata
  try {
    meta = PNG.sync.read(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), { checkCRC: true })
  } catch (err) {
    throw bad(name, `is not a valid PNG (${libraryMessage(err)})`, err)
  }
  const { width, height, data } = meta
  const pixels = width * height
  if (width !== header.width || height !== header.height || data.length !== pixels * 4) {
    throw bad(name, `is not a valid PNG (decoded ${width}x${height}, header says ${header.width}x${header.height})`)
  }
  // Alpha is dropped, not composited: what TF's decode_png(channels=3) and
  // PIL's convert('RGB') give, so pixels match what models were trained on.
  const rgb = new Uint8Array(pixels * 3)
  for (let p = 0, q = 0; q < rgb.length; p += 4, q += 3) {
    rgb[q] = data[p] as number
    rgb[q + 1] = data[p + 1] as number
    rgb[q + 2] = data[p + 2] as number
  }
  // A tRNS colour key (grey or RGB) is alpha too, but pngjs blacks out the
  // keyed pixels; put the key colour back so dropping alpha is consistent.
  const key = meta.transColor
  if (key !== undefined && (meta.colorType === 0 || meta.colorType === 2)) {
    const r = scaleSample(key[0] ?? 0, meta.depth)
    const g = meta.colorType === 2 ? scaleSample(key[1] ?? 0, meta.depth) : r
    const bl = meta.colorType === 2 ? scaleSample(key[2] ?? 0, meta.depth) : r
    for (let p = 3, q = 0; q < rgb.length; p += 4, q += 3) {
      if (data[p] === 0) { rgb[q] = r; rgb[q + 1] = g; rgb[q + 2] = bl }
    }
  }
  return { width, height, channels: 3, data: rgb }
}

// ----------------------------------------------------------- public API

/**
 * Reads format and dimensions from the header alone, checks them against
 * the pixel limit, and walks the file's structure to its end marker, so a
 * truncated file fails here. Decodes nothing.
 */
export function readImageHeader (bytes: Uint8Array, name: string, limits: ImageLimits = {}): ImageHeader {
  const maxPixels = maxPixelsOf(limits)
  const format = detect(bytes, name)
  const { width, height } = format === 'jpeg' ? probeJpeg(bytes, name, maxPixels) : probePng(bytes, name, maxPixels)
  return { format, width, height }
}

function detect (bytes: Uint8Array, name: string): ImageFormat {
  const format = imageFormat(bytes)
  if (format !== undefined) return format
  if (bytes.length === 0) throw bad(name, `is empty; expected ${FORMATS_ALLOWED}`)
  throw bad(name, `is neither JPEG nor PNG (no JPEG FF D8 FF or PNG signature in its first bytes); expected ${FORMATS_ALLOWED}`)
}

/**
 * Decodes JPEG or PNG bytes (told apart by their magic bytes) to 8-bit
 * RGB. Grey JPEGs and grey, palette and 16-bit PNGs all become RGB (16-bit
 * samples scaled to 8 bits with rounding); alpha, including a tRNS colour
 * key, is dropped (not composited). No gamma or colour-profile correction
 * and no EXIF rotation, as TF's decode_jpeg/decode_png. `name` names the
 * file in errors: ERR_BAD_IMAGE for bytes that are not a whole, valid
 * image, ERR_LIMIT_EXCEEDED for one over `maxPixels`, found in the header
 * before anything is allocated.
 */
export function decodeImage (bytes: Uint8Array, name: string, limits: ImageLimits = {}): RgbImage {
  const maxPixels = maxPixelsOf(limits)
  const format = detect(bytes, name)
  try {
    return format === 'jpeg' ? decodeJpeg(bytes, name, maxPixels) : decodePng(bytes, name, maxPixels)
  } catch (err) {
    if (err instanceof TensormeshError) throw err
    throw bad(name, `could not be decoded as ${format.toUpperCase()} (${libraryMessage(err)})`, err)
  }
}

/** Source index pair and weight of each output position along one axis. */
interface Axis { lo: Int32Array, hi: Int32Array, frac: Float64Array }

/**
 * Half-pixel centres (TF's HalfPixelScaler): output i samples the input at
 * (i + 0.5) * in/out - 0.5, clamped to the edge pixels. Same arithmetic
 * as TF's compute_interpolation_weights, in float64 rather than float32.
 */
function axisWeights (inSize: number, outSize: number, stride: number): Axis {
  const scale = inSize / outSize
  const lo = new Int32Array(outSize)
  const hi = new Int32Array(outSize)
  const frac = new Float64Array(outSize)
  for (let i = 0; i < outSize; i++) {
    const src = (i + 0.5) * scale - 0.5
    const f = Math.floor(src)
    lo[i] = Math.max(f, 0) * stride
    hi[i] = Math.min(Math.ceil(src), inSize - 1) * stride
    frac[i] = src - f
  }
  return { lo, hi, frac }
}

function checkSide (what: string, v: unknown): number {
  if (!Number.isSafeInteger(v) || (v as number) < 1) throw new InvalidInputError(`${what} is ${JSON.stringify(v) ?? String(v)}; it must be a positive integer`, 'ERR_BAD_PARAMS')
  return v as number
}

function checkGrid (img: PixelGrid): number {
  const c = img.channels ?? 3
  checkSide('image width', img.width)
  checkSide('image height', img.height)
  checkSide('image channels', c)
  if (img.data.length !== img.width * img.height * c) {
    throw new InvalidInputError(`image data of ${img.data.length} values does not fit ${img.width}x${img.height}x${c}`, 'ERR_BAD_SHAPE')
  }
  return c
}

function checkOutBytes (elements: number, maxBytes: number, what: string): void {
  const bytes = elements * BYTES_PER_ELEMENT
  if (!(bytes <= maxBytes)) throw new LimitExceededError(`${what} takes ${bytes} bytes; the limit is ${maxBytes}`)
}

/** Resizes into out[offset...], each value divided by `divisor`. Validated arguments only. */
function resizeInto (img: PixelGrid, c: number, outH: number, outW: number, out: Float32Array, offset: number, divisor: number): void {
  const d = img.data
  const ys = axisWeights(img.height, outH, img.width * c)
  const xs = axisWeights(img.width, outW, c)
  let o = offset
  for (let y = 0; y < outH; y++) {
    const r0 = ys.lo[y] as number
    const r1 = ys.hi[y] as number
    const fy = ys.frac[y] as number
    for (let x = 0; x < outW; x++) {
      const c0 = xs.lo[x] as number
      const c1 = xs.hi[x] as number
      const fx = xs.frac[x] as number
      const tl = r0 + c0
      const tr = r0 + c1
      const bl = r1 + c0
      const br = r1 + c1
      for (let k = 0; k < c; k++) {
        const a = d[tl + k] as number
        const b = d[bl + k] as number
        const top = a + ((d[tr + k] as number) - a) * fx
        const bottom = b + ((d[br + k] as number) - b) * fx
        out[o++] = (top + (bottom - top) * fy) / divisor
      }
    }
  }
}

/**
 * Bilinear resize of an HWC image to outH x outW, float32 HWC out. The
 * semantics of `tf.image.resizeBilinear(x, [outH, outW], alignCorners =
 * false, halfPixelCenters = true)`, which is also TF2's
 * `tf.image.resize(x, size, 'bilinear', antialias=False)`: output pixel
 * centres map onto input pixel centres ((i + 0.5) * in/out - 0.5), samples
 * beyond the edge clamp to it, and there is no antialiasing filter, so a
 * large downscale samples (and can alias) rather than averaging.
 */
export function resizeBilinear (img: PixelGrid, outH: number, outW: number): Float32Array {
  const c = checkGrid(img)
  checkSide('output height', outH)
  checkSide('output width', outW)
  checkOutBytes(outH * outW * c, DEFAULT_MAX_TENSOR_BYTES, `a resized image of ${outH}x${outW}x${c}`)
  const out = new Float32Array(outH * outW * c)
  resizeInto(img, c, outH, outW, out, 0, 1)
  return out
}

/**
 * Images -> float32 [n, h, w, 3]: each decoded (decodeImage), resized to
 * size = [h, w] (resizeBilinear's semantics), divided by `scale` (255 ->
 * [0, 1], 1 -> raw 0-255), in the order of the list. The output's size is
 * checked before any image is decoded, and one decoded image at a time is
 * held. An empty list gives [0, h, w, 3]; whether that is an error is the
 * caller's to say.
 */
export function imageTensor (images: readonly NamedImage[], size: readonly [number, number], scale: number, limits: ImageLimits = {}): HostTensor {
  if (!Array.isArray(size) || size.length !== 2) throw new InvalidInputError(`size must be [height, width], got ${JSON.stringify(size) ?? String(size)}`, 'ERR_BAD_PARAMS')
  const h = checkSide('size[0] (height)', size[0])
  const w = checkSide('size[1] (width)', size[1])
  if (typeof scale !== 'number' || !Number.isFinite(scale) || scale <= 0) throw new InvalidInputError(`scale is ${JSON.stringify(scale) ?? String(scale)}; it must be a positive finite number (255 maps 0-255 to 0-1, 1 keeps 0-255)`, 'ERR_BAD_PARAMS')
  const per = h * w * 3
  checkOutBytes(images.length * per, limits.maxTensorBytes ?? DEFAULT_MAX_TENSOR_BYTES, `float32[${images.length}, ${h}, ${w}, 3]`)
  const out = new Float32Array(images.length * per)
  images.forEach((image, i) => {
    const img = decodeImage(image.bytes, image.name, limits)
    resizeInto(img, 3, h, w, out, i * per, scale)
  })
  return hostTensor('float32', [images.length, h, w, 3], out)
}

// ---------------------------------------------------------------- image packs

/**
 * Images travel to peers as one blob per shard, an image pack: the magic
 * `TMIMGS1\0`, a little-endian uint32 count, then per image a uint16 name
 * length, the name (UTF-8, the file name the user listed: errors name it),
 * a uint32 byte length and the file's bytes, unchanged. The coordinator
 * cuts a job's pack into one per shard (`slicePack`); the peer reads it
 * without copying (`unpackImages`) and decodes in its worker.
 */
export const IMAGE_PACK_MAGIC = new TextEncoder().encode('TMIMGS1\0')

/** Images one pack holds at most (a job's rows when its input is images). */
export const MAX_PACK_IMAGES = 1_000_000

/** An image's name in a pack: a file name, cut to this many bytes. */
export const MAX_IMAGE_NAME_BYTES = 255

const utf8 = new TextEncoder()
const utf8Strict = new TextDecoder('utf-8', { fatal: true })

function cutName (name: string): Uint8Array {
  let bytes = utf8.encode(name)
  // Cut on a character boundary: drop continuation bytes left at the end.
  if (bytes.byteLength > MAX_IMAGE_NAME_BYTES) {
    let end = MAX_IMAGE_NAME_BYTES
    while (end > 0 && ((bytes[end] ?? 0) & 0xc0) === 0x80) end--
    bytes = bytes.subarray(0, end)
  }
  return bytes
}

/** Packs images, in order, into one blob. */
export function packImages (images: readonly NamedImage[]): Uint8Array {
  if (images.length > MAX_PACK_IMAGES) throw new InvalidInputError(`${images.length} images; a job takes at most ${MAX_PACK_IMAGES}`, 'ERR_LIMIT_EXCEEDED')
  const names = images.map(i => cutName(i.name))
  const total = IMAGE_PACK_MAGIC.byteLength + 4 + images.reduce((n, img, k) => n + 2 + (names[k]?.byteLength ?? 0) + 4 + img.bytes.byteLength, 0)
  const out = new Uint8Array(total)
  const view = new DataView(out.buffer)
  out.set(IMAGE_PACK_MAGIC, 0)
  let off = IMAGE_PACK_MAGIC.byteLength
  view.setUint32(off, images.length, true)
  off += 4
  images.forEach((img, k) => {
    const name = names[k] as Uint8Array
    view.setUint16(off, name.byteLength, true)
    out.set(name, off + 2)
    off += 2 + name.byteLength
    view.setUint32(off, img.bytes.byteLength, true)
    out.set(img.bytes, off + 4)
    off += 4 + img.bytes.byteLength
  })
  return out
}

/** The images of a pack, as views into it (no copy); any inconsistency is ERR_BAD_IMAGE_PACK. */
export function unpackImages (pack: Uint8Array): NamedImage[] {
  const bad = (why: string): InvalidInputError => new InvalidInputError(`image pack: ${why}`, 'ERR_BAD_IMAGE_PACK')
  const magic = IMAGE_PACK_MAGIC.byteLength
  if (pack.byteLength < magic + 4 || !IMAGE_PACK_MAGIC.every((b, i) => pack[i] === b)) throw bad('not an image pack (no TMIMGS1 magic)')
  const view = new DataView(pack.buffer, pack.byteOffset, pack.byteLength)
  const count = view.getUint32(magic, true)
  if (count > MAX_PACK_IMAGES) throw bad(`${count} images, more than ${MAX_PACK_IMAGES}`)
  // Each entry takes at least 6 bytes: a count the bytes cannot hold is refused before any allocation.
  if (count * 6 > pack.byteLength - magic - 4) throw bad(`${count} images do not fit in ${pack.byteLength} bytes`)
  const out: NamedImage[] = []
  let off = magic + 4
  for (let k = 0; k < count; k++) {
    if (off + 2 > pack.byteLength) throw bad(`image ${k}: cut short`)
    const nameLength = view.getUint16(off, true)
    if (nameLength > MAX_IMAGE_NAME_BYTES || off + 2 + nameLength + 4 > pack.byteLength) throw bad(`image ${k}: name cut short or longer than ${MAX_IMAGE_NAME_BYTES} bytes`)
    let name: string
    try {
      name = utf8Strict.decode(pack.subarray(off + 2, off + 2 + nameLength))
    } catch {
      throw bad(`image ${k}: name is not UTF-8`)
    }
    off += 2 + nameLength
    const bytes = view.getUint32(off, true)
    if (off + 4 + bytes > pack.byteLength) throw bad(`image ${k} (${name}): ${bytes} bytes announced, fewer left`)
    out.push({ name, bytes: pack.subarray(off + 4, off + 4 + bytes) })
    off += 4 + bytes
  }
  if (off !== pack.byteLength) throw bad(`${pack.byteLength - off} bytes after the last image`)
  return out
}

/** A pack of images [start, end) of `pack`, in order (a shard's). */
export function slicePack (pack: Uint8Array, start: number, end: number): Uint8Array {
  return packImages(unpackImages(pack).slice(start, end))
}
