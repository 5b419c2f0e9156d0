/**
 * decodeNpy, the reader for every .npy that enters a node (CLI files, job
 * parts, shared inputs). Valid files are generated here by a small writer of
 * our own for every descr the reader takes, every format version and the
 * header spellings numpy and hand-written files use, so the round trip does
 * not lean on encodeNpy alone.
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { DEFAULT_MAX_TENSOR_BYTES, MAX_NPY_HEADER_BYTES, decodeNpy, encodeNpy } from '../../src/compute/npy.ts'
import { fuzzParams, fuzzTimeout, hostile, inContainer, typed } from '../helpers/fuzz.ts'

interface DescrSpec { itemSize: number, dtype: 'float32' | 'int32', values: fc.Arbitrary<number>, write: (v: DataView, o: number, x: number) => void, expect: (x: number) => number }

const DESCRS: Record<string, DescrSpec> = {
  '<f4': { itemSize: 4, dtype: 'float32', values: fc.float(), write: (v, o, x) => { v.setFloat32(o, x, true) }, expect: x => x },
  '<f8': { itemSize: 8, dtype: 'float32', values: fc.double({ min: -3.4e38, max: 3.4e38 }), write: (v, o, x) => { v.setFloat64(o, x, true) }, expect: Math.fround },
  '<i4': { itemSize: 4, dtype: 'int32', values: fc.integer(), write: (v, o, x) => { v.setInt32(o, x, true) }, expect: x => x },
  '<i8': { itemSize: 8, dtype: 'int32', values: fc.integer(), write: (v, o, x) => { v.setBigInt64(o, BigInt(x), true) }, expect: x => x },
  '<i2': { itemSize: 2, dtype: 'int32', values: fc.integer({ min: -32768, max: 32767 }), write: (v, o, x) => { v.setInt16(o, x, true) }, expect: x => x },
  '<u2': { itemSize: 2, dtype: 'int32', values: fc.integer({ min: 0, max: 65535 }), write: (v, o, x) => { v.setUint16(o, x, true) }, expect: x => x },
  '|i1': { itemSize: 1, dtype: 'int32', values: fc.integer({ min: -128, max: 127 }), write: (v, o, x) => { v.setInt8(o, x) }, expect: x => x },
  '|u1': { itemSize: 1, dtype: 'int32', values: fc.integer({ min: 0, max: 255 }), write: (v, o, x) => { v.setUint8(o, x) }, expect: x => x },
  '|b1': { itemSize: 1, dtype: 'int32', values: fc.integer({ min: 0, max: 255 }), write: (v, o, x) => { v.setUint8(o, x) }, expect: x => x === 0 ? 0 : 1 }
}

interface NpyFile {
  descr: string
  shape: number[]
  values: number[]
  bytes: Uint8Array
}

interface Spelling { order: number[], quote: string, space: string, trailingComma: boolean, longSuffix: boolean, pad: number, version: number, fortran: boolean }

/** How a header may spell the same dict: key order, quotes, spaces, trailing commas, `L` suffixes, padding. */
const spelling: fc.Arbitrary<Spelling> = fc.record({
  order: fc.constantFrom([0, 1, 2], [2, 1, 0], [1, 0, 2], [0, 2, 1]),
  quote: fc.constantFrom('\'', '"'),
  space: fc.constantFrom('', ' ', '  ', '\t'),
  trailingComma: fc.boolean(),
  longSuffix: fc.boolean(),
  pad: fc.integer({ min: 0, max: 80 }),
  version: fc.constantFrom(1, 2, 3),
  fortran: fc.boolean()
})

function writeNpy (descr: string, shape: number[], values: number[], sp: Spelling, spec: DescrSpec): Uint8Array {
  const q = sp.quote
  const dims = shape.map(d => `${d}${sp.longSuffix ? 'L' : ''}`)
  const tuple = shape.length === 1 ? `(${dims[0] ?? ''},)` : `(${dims.join(`,${sp.space}`)})`
  // Fortran order is only readable when at most one dimension exceeds 1 (then it is the same layout).
  const fortran = sp.fortran && shape.filter(d => d > 1).length <= 1
  const entries = [`${q}descr${q}:${sp.space}${q}${descr}${q}`, `${q}fortran_order${q}:${sp.space}${fortran ? 'True' : 'False'}`, `${q}shape${q}:${sp.space}${tuple}`]
  const dict = `{${sp.order.map(i => entries[i] ?? '').join(`,${sp.space}`)}${sp.trailingComma ? ',' : ''}${sp.space}}`
  const header = new TextEncoder().encode(dict + ' '.repeat(sp.pad) + '\n')
  const lenBytes = sp.version === 1 ? 2 : 4
  const out = new Uint8Array(8 + lenBytes + header.byteLength + values.length * spec.itemSize)
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, sp.version, 0])
  const view = new DataView(out.buffer)
  if (lenBytes === 2) view.setUint16(8, header.byteLength, true)
  else view.setUint32(8, header.byteLength, true)
  out.set(header, 8 + lenBytes)
  const dataAt = 8 + lenBytes + header.byteLength
  values.forEach((x, k) => { spec.write(view, dataAt + k * spec.itemSize, x) })
  return out
}

const npyFile: fc.Arbitrary<NpyFile> = fc.record({
  descr: fc.constantFrom(...Object.keys(DESCRS)),
  shape: fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 4 }),
  spelling
}).chain(({ descr, shape, spelling: sp }) => {
  const spec = DESCRS[descr] as DescrSpec
  const n = shape.reduce((a, b) => a * b, 1)
  return fc.array(spec.values, { minLength: n, maxLength: n }).map(values => ({ descr, shape, values, bytes: writeNpy(descr, shape, values, sp, spec) }))
})

/** Tensors as encodeNpy writes them (the CLI's and the client's own files). */
const encoded = fc.record({
  dtype: fc.constantFrom('float32' as const, 'int32' as const),
  shape: fc.array(fc.integer({ min: 0, max: 6 }), { maxLength: 4 })
}).chain(({ dtype, shape }) => {
  const n = shape.reduce((a, b) => a * b, 1)
  const data = dtype === 'float32' ? fc.float32Array({ minLength: n, maxLength: n }) : fc.int32Array({ minLength: n, maxLength: n })
  return data.map(d => ({ dtype, shape, data: d }))
})

describe('decodeNpy (fuzz)', () => {
  it('reads every descr, version and header spelling it supports back to the values written', () => {
    fc.assert(fc.property(npyFile.chain(f => fc.tuple(fc.constant(f), inContainer(f.bytes))), ([f, bytes]) => {
      const spec = DESCRS[f.descr] as DescrSpec
      const t = decodeNpy(bytes, 'fuzz')
      expect(t.dtype).toBe(spec.dtype)
      expect(t.shape).toEqual(f.shape)
      expect(Array.from(t.data)).toEqual(f.values.map(spec.expect))
      // The tensor owns its memory: no view into the input, which the caller may reuse.
      expect(t.data.buffer).not.toBe(bytes.buffer)
    }), fuzzParams())
  }, fuzzTimeout())

  it('round-trips what encodeNpy writes', () => {
    fc.assert(fc.property(encoded, (t) => {
      const back = decodeNpy(encodeNpy(t), 'fuzz')
      expect(back.dtype).toBe(t.dtype)
      expect(back.shape).toEqual(t.shape)
      expect(Buffer.compare(Buffer.from(back.data.buffer, back.data.byteOffset, back.data.byteLength), Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength))).toBe(0)
    }), fuzzParams())
  }, fuzzTimeout())

  it('answers arbitrary and mutated files with InvalidInputError or LimitExceededError, or a consistent tensor', () => {
    const valid = fc.oneof(npyFile.map(f => f.bytes), encoded.map(t => encodeNpy(t)))
    fc.assert(fc.property(hostile(valid), fc.constantFrom(64, 4096, DEFAULT_MAX_TENSOR_BYTES), (bytes, maxTensorBytes) => {
      const out = typed(() => decodeNpy(bytes, 'fuzz', { maxTensorBytes }))
      if (!out.ok) {
        expect(['InvalidInputError', 'LimitExceededError']).toContain(out.error.name)
        return
      }
      const t = out.value
      expect(['float32', 'int32']).toContain(t.dtype)
      expect(t.shape.every(d => Number.isSafeInteger(d) && d >= 0)).toBe(true)
      expect(t.data.length).toBe(t.shape.reduce((a, b) => a * b, 1))
      expect(t.data.byteLength).toBeLessThanOrEqual(maxTensorBytes)
      expect(t.data instanceof (t.dtype === 'float32' ? Float32Array : Int32Array)).toBe(true)
    }), fuzzParams())
  }, fuzzTimeout())

  it('refuses a declared shape over the limit before allocating, whatever follows the header', () => {
    // Over the limit in the file (item size) or once read (4 bytes an element), whichever is larger.
    const huge = fc.tuple(fc.constantFrom(...Object.keys(DESCRS)), fc.array(fc.oneof(fc.integer({ min: 1, max: 1 << 20 }), fc.constantFrom(2 ** 31, 2 ** 40, 2 ** 53 - 1)), { minLength: 1, maxLength: 6 }))
      .filter(([descr, shape]) => shape.reduce((a, b) => a * b, 1) * Math.max((DESCRS[descr] as DescrSpec).itemSize, 4) > DEFAULT_MAX_TENSOR_BYTES)
    fc.assert(fc.property(huge, spelling, fc.uint8Array({ maxLength: 64 }), ([descr, shape], sp, tail) => {
      // No data at all (or a little): a reader that allocated first would run out of memory or throw RangeError.
      const header = writeNpy(descr, shape, [], sp, DESCRS[descr] as DescrSpec)
      const bytes = Buffer.concat([header, tail])
      const out = typed(() => decodeNpy(bytes, 'fuzz'))
      expect(out.ok ? 'decoded' : out.error.code).toBe('ERR_LIMIT_EXCEEDED')
    }), fuzzParams())
  }, fuzzTimeout())

  it('refuses a header longer than MAX_NPY_HEADER_BYTES without parsing it', () => {
    fc.assert(fc.property(fc.integer({ min: MAX_NPY_HEADER_BYTES + 1, max: 0xffffffff }), fc.constantFrom(2, 3), (len, version) => {
      const bytes = new Uint8Array(12 + 16)
      bytes.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, version, 0])
      new DataView(bytes.buffer).setUint32(8, len, true)
      const out = typed(() => decodeNpy(bytes, 'fuzz'))
      expect(out.ok ? 'decoded' : out.error.code).toBe('ERR_BAD_NPY')
    }), fuzzParams(0.25))
  }, fuzzTimeout(0.25))
})
