/**
 * The bounded protobuf codec itself, on a schema that uses every field kind
 * (scalars, strings, bytes, nested and repeated messages) with tight bounds,
 * so that arbitrary and mutated bytes reach every branch of the reader.
 */
import fc from 'fast-check'
import { reader as createReader, writer as createWriter } from 'protons-runtime'
import { describe, expect, it } from 'vitest'
import { messageCodec } from '../../src/protocol/codec.ts'
import { fuzzParams, fuzzTimeout, hostile, inContainer, plain, typed, utf8Bytes, utf8String } from '../helpers/fuzz.ts'

interface Inner {
  label: string
  values: number[]
}

interface Everything {
  u32: number
  u64: number
  dbl: number
  flag: boolean
  text: string
  blob: Uint8Array
  inner?: Inner
  texts: string[]
  blobs: Uint8Array[]
  inners: Inner[]
  u64s: number[]
  dbls: number[]
}

const INNER_LABEL_BYTES = 8
const INNER_VALUES = 4
const TEXT_BYTES = 24
const BLOB_BYTES = 16
const REPEATS = 3
const MAX_MESSAGE_BYTES = 1024

const InnerCodec = messageCodec<Inner>('Inner', {
  label: { no: 1, kind: 'string', maxBytes: INNER_LABEL_BYTES },
  values: { no: 2, kind: 'uint32', repeated: true, maxCount: INNER_VALUES }
}, 64)

const EverythingCodec = messageCodec<Everything>('Everything', {
  u32: { no: 1, kind: 'uint32' },
  u64: { no: 2, kind: 'uint64' },
  dbl: { no: 3, kind: 'double' },
  flag: { no: 4, kind: 'bool' },
  text: { no: 5, kind: 'string', maxBytes: TEXT_BYTES },
  blob: { no: 6, kind: 'bytes', maxBytes: BLOB_BYTES },
  inner: { no: 7, kind: 'message', codec: InnerCodec },
  texts: { no: 8, kind: 'string', maxBytes: TEXT_BYTES, repeated: true, maxCount: REPEATS },
  blobs: { no: 9, kind: 'bytes', maxBytes: BLOB_BYTES, repeated: true, maxCount: REPEATS },
  inners: { no: 10, kind: 'message', codec: InnerCodec, repeated: true, maxCount: REPEATS },
  u64s: { no: 11, kind: 'uint64', repeated: true, maxCount: REPEATS },
  dbls: { no: 12, kind: 'double', repeated: true, maxCount: REPEATS }
}, MAX_MESSAGE_BYTES)

const uint32 = fc.integer({ min: 0, max: 0xffffffff })
const uint64 = fc.maxSafeNat()
const innerArb: fc.Arbitrary<Inner> = fc.record({
  label: utf8String(INNER_LABEL_BYTES),
  values: fc.array(uint32, { maxLength: INNER_VALUES })
})
const everythingArb: fc.Arbitrary<Everything> = fc.record({
  u32: uint32,
  u64: uint64,
  dbl: fc.double(),
  flag: fc.boolean(),
  text: utf8String(TEXT_BYTES),
  blob: fc.uint8Array({ maxLength: BLOB_BYTES }),
  inner: innerArb,
  texts: fc.array(utf8String(TEXT_BYTES), { maxLength: REPEATS }),
  blobs: fc.array(fc.uint8Array({ maxLength: BLOB_BYTES }), { maxLength: REPEATS }),
  inners: fc.array(innerArb, { maxLength: REPEATS }),
  u64s: fc.array(uint64, { maxLength: REPEATS }),
  dbls: fc.array(fc.double(), { maxLength: REPEATS })
}, { requiredKeys: ['u32', 'u64', 'dbl', 'flag', 'text', 'blob', 'texts', 'blobs', 'inners', 'u64s', 'dbls'] })

/**
 * What a value decodes to: proto3 does not send a default scalar, so a lone
 * -0 arrives as 0 (repeated fields send every element, -0 included).
 */
function canonical (v: Everything): Everything {
  return { ...v, dbl: Object.is(v.dbl, -0) ? 0 : v.dbl }
}

/** Every bound of the schema, checked on whatever the decoder returned. */
function withinBounds (v: Everything): boolean {
  const inner = (i: Inner): boolean => utf8Bytes(i.label) <= INNER_LABEL_BYTES && i.values.length <= INNER_VALUES &&
    i.values.every(x => Number.isInteger(x) && x >= 0 && x <= 0xffffffff)
  return Number.isInteger(v.u32) && v.u32 >= 0 && v.u32 <= 0xffffffff &&
    Number.isSafeInteger(v.u64) && v.u64 >= 0 &&
    typeof v.dbl === 'number' && typeof v.flag === 'boolean' &&
    utf8Bytes(v.text) <= TEXT_BYTES && v.blob.byteLength <= BLOB_BYTES &&
    (v.inner === undefined || inner(v.inner)) &&
    v.texts.length <= REPEATS && v.texts.every(t => utf8Bytes(t) <= TEXT_BYTES) &&
    v.blobs.length <= REPEATS && v.blobs.every(b => b.byteLength <= BLOB_BYTES) &&
    v.inners.length <= REPEATS && v.inners.every(inner) &&
    v.u64s.length <= REPEATS && v.u64s.every(x => Number.isSafeInteger(x) && x >= 0) &&
    v.dbls.length <= REPEATS
}

const validBytes = everythingArb.map(v => EverythingCodec.encode(v))

describe('messageCodec (fuzz)', () => {
  it('round-trips every value within its bounds, from any container', () => {
    fc.assert(fc.property(everythingArb.chain(v => fc.tuple(fc.constant(v), inContainer(EverythingCodec.encode(v)))), ([v, bytes]) => {
      const back = EverythingCodec.decode(bytes)
      expect(plain(back)).toEqual(canonical(v))
      // The encoding is canonical: decoding and encoding again gives the same bytes.
      expect(Buffer.from(EverythingCodec.encode(back)).equals(Buffer.from(bytes))).toBe(true)
    }), fuzzParams())
  }, fuzzTimeout())

  it('answers arbitrary and mutated bytes with a typed error or a value within bounds', () => {
    fc.assert(fc.property(hostile(validBytes), (bytes) => {
      const out = typed(() => EverythingCodec.decode(bytes))
      if (out.ok) expect(withinBounds(out.value)).toBe(true)
      else expect(out.error.name).toBe('ProtocolError')
    }), fuzzParams())
  }, fuzzTimeout())

  it('skips unknown fields of every skippable wire type, wherever they sit', () => {
    const unknownField = fc.oneof(
      fc.record({ wt: fc.constant(0), value: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }),
      fc.record({ wt: fc.constant(1), value: fc.double() }),
      fc.record({ wt: fc.constant(2), value: fc.uint8Array({ maxLength: 32 }) }),
      fc.record({ wt: fc.constant(5), value: fc.integer({ min: 0, max: 0xffffffff }) })
    ).chain(f => fc.tuple(fc.integer({ min: 13, max: 1000 }), fc.constant(f)))
    fc.assert(fc.property(everythingArb, fc.array(unknownField, { maxLength: 4 }), fc.nat(), (v, unknown, where) => {
      const known = EverythingCodec.encode(v)
      // Field boundaries of the known encoding, found with the library's own reader.
      const r = createReader(known)
      const bounds = [0]
      while (r.pos < known.byteLength) { r.skipType(r.uint32() & 7); bounds.push(r.pos) }
      const at = bounds[where % bounds.length] ?? 0
      const w = createWriter()
      for (const [no, f] of unknown) {
        w.uint32((no << 3) | f.wt)
        if (f.wt === 0) w.uint64(f.value as bigint)
        else if (f.wt === 1) w.double(f.value as number)
        else if (f.wt === 2) w.bytes(f.value as Uint8Array)
        else w.fixed32(f.value as number)
      }
      const extra = w.finish()
      const bytes = Buffer.concat([known.subarray(0, at), extra, known.subarray(at)])
      if (bytes.byteLength > MAX_MESSAGE_BYTES) return
      expect(plain(EverythingCodec.decode(bytes))).toEqual(canonical(v))
    }), fuzzParams())
  }, fuzzTimeout())

  it('refuses every bound broken by one element, with the bound\'s code', () => {
    const broken = fc.oneof(
      fc.constant('text'), fc.constant('blob'), fc.constant('label'), fc.constant('texts'),
      fc.constant('inners'), fc.constant('values'), fc.constant('size')
    )
    fc.assert(fc.property(everythingArb, broken, fc.integer({ min: 1, max: 40 }), (v, which, over) => {
      let bad: Everything
      let code: string
      switch (which) {
        case 'text': bad = { ...v, text: 'x'.repeat(TEXT_BYTES + over) }; code = 'ERR_FIELD_TOO_LONG'; break
        case 'blob': bad = { ...v, blob: new Uint8Array(BLOB_BYTES + over) }; code = 'ERR_FIELD_TOO_LONG'; break
        case 'label': bad = { ...v, inner: { label: 'é'.repeat(INNER_LABEL_BYTES / 2 + over), values: [] } }; code = 'ERR_FIELD_TOO_LONG'; break
        case 'texts': bad = { ...v, texts: Array<string>(REPEATS + over).fill('') }; code = 'ERR_TOO_MANY'; break
        case 'inners': bad = { ...v, inners: Array<Inner>(REPEATS + Math.min(over, 8)).fill({ label: '', values: [] }) }; code = 'ERR_TOO_MANY'; break
        case 'values': bad = { ...v, inner: { label: '', values: Array<number>(INNER_VALUES + over).fill(7) } }; code = 'ERR_TOO_MANY'; break
        default: bad = { ...v, blobs: [new Uint8Array(MAX_MESSAGE_BYTES)] }; code = 'ERR_MESSAGE_TOO_LONG'
      }
      const out = typed(() => EverythingCodec.decode(EverythingCodec.encode(bad)))
      expect(out.ok ? 'decoded' : out.error.code).toBe(code)
    }), fuzzParams())
  }, fuzzTimeout())
})
