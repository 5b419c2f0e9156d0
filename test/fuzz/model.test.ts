/**
 * Packed models (TMMODEL1): unpackModel reads the bytes a job carries as
 * `blobs.model`, on the coordinator and in every worker. Valid packs come
 * from packModel and from a writer of the documented layout with arbitrary
 * JSON headers; the weights always match their specs exactly.
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { MAX_MODEL_HEADER_BYTES, MAX_MODEL_WEIGHT_BYTES, MAX_MODEL_WEIGHTS, packModel, unpackModel } from '../../src/compute/model.ts'
import { fuzzParams, fuzzTimeout, hostile, inContainer, typed } from '../helpers/fuzz.ts'
import type { ModelArtifacts, WeightSpec } from '../../src/compute/model.ts'

const specArb: fc.Arbitrary<WeightSpec> = fc.record({
  name: fc.string({ minLength: 1, maxLength: 24 }),
  shape: fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 4 }),
  dtype: fc.constantFrom('float32' as const, 'int32' as const)
})

const bytesOfSpecs = (specs: WeightSpec[]): number => specs.reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1) * 4, 0)

const artifactsArb: fc.Arbitrary<ModelArtifacts> = fc.record({
  modelTopology: fc.dictionary(fc.string({ maxLength: 10 }), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 5 }),
  weightSpecs: fc.array(specArb, { maxLength: 6 }),
  format: fc.string({ maxLength: 20 }),
  generatedBy: fc.string({ maxLength: 20 }),
  convertedBy: fc.string({ maxLength: 20 })
}, { requiredKeys: ['modelTopology', 'weightSpecs'] }).chain(a => {
  const n = bytesOfSpecs(a.weightSpecs)
  return fc.uint8Array({ minLength: n, maxLength: n }).map((w): ModelArtifacts => ({ ...a, weightData: w.slice().buffer }))
})

/** The packed layout written directly: magic, header length, JSON, padding to 4, weights. */
function pack (header: unknown, weights: Uint8Array, declaredLength?: number): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header))
  const dataAt = (12 + json.byteLength + 3) & ~3
  const out = new Uint8Array(dataAt + weights.byteLength)
  out.set(new TextEncoder().encode('TMMODEL1'))
  new DataView(out.buffer).setUint32(8, declaredLength ?? json.byteLength, true)
  out.set(json, 12)
  out.set(weights, dataAt)
  return out
}

/** Headers with any JSON in any place, so checkWeightSpecs and the key checks see everything. */
const wildHeader = fc.record({
  modelTopology: fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.dictionary(fc.string(), fc.jsonValue({ maxDepth: 2 }))),
  weightSpecs: fc.oneof(
    fc.array(specArb),
    fc.array(fc.oneof(
      fc.dictionary(fc.constantFrom('name', 'shape', 'dtype', 'quantization', 'group', '__proto__'), fc.jsonValue({ maxDepth: 2 })),
      fc.record({ name: fc.jsonValue({ maxDepth: 1 }), shape: fc.array(fc.oneof(fc.integer({ min: -2, max: 9 }), fc.double(), fc.constant(2 ** 53), fc.constant(2 ** 31))), dtype: fc.constantFrom('float32', 'int32', 'float16', 'string') })
    ), { maxLength: 6 }),
    fc.jsonValue({ maxDepth: 2 })
  ),
  format: fc.jsonValue({ maxDepth: 1 }),
  extra: fc.jsonValue({ maxDepth: 1 })
}, { requiredKeys: [] })

function checkArtifacts (a: ModelArtifacts): void {
  expect(a.modelTopology !== null && typeof a.modelTopology === 'object' && !Array.isArray(a.modelTopology)).toBe(true)
  expect(a.weightSpecs.length).toBeLessThanOrEqual(MAX_MODEL_WEIGHTS)
  for (const s of a.weightSpecs) {
    expect(['float32', 'int32']).toContain(s.dtype)
    expect(s.shape.every(d => Number.isSafeInteger(d) && d >= 0)).toBe(true)
  }
  // Exactly the bytes the specs describe, in a buffer of exactly that size.
  expect(a.weightData.byteLength).toBe(bytesOfSpecs(a.weightSpecs))
  expect(a.weightData.byteLength).toBeLessThanOrEqual(MAX_MODEL_WEIGHT_BYTES)
}

describe('unpackModel (fuzz)', () => {
  it('unpacks what packModel packed, from any container, to the same artifacts', () => {
    fc.assert(fc.property(artifactsArb.chain(a => fc.tuple(fc.constant(a), inContainer(packModel(a)))), ([a, bytes]) => {
      const back = unpackModel(bytes)
      checkArtifacts(back)
      // The topology travels as JSON, so it comes back as JSON reads it (-0 as 0).
      expect(back.modelTopology).toEqual(JSON.parse(JSON.stringify(a.modelTopology)))
      expect(back.weightSpecs).toEqual(a.weightSpecs)
      expect({ format: back.format, generatedBy: back.generatedBy, convertedBy: back.convertedBy })
        .toEqual({ format: a.format, generatedBy: a.generatedBy, convertedBy: a.convertedBy })
      expect(Buffer.compare(Buffer.from(back.weightData), Buffer.from(a.weightData))).toBe(0)
    }), fuzzParams())
  }, fuzzTimeout())

  it('answers arbitrary, mutated and oddly-headed packs with InvalidInputError or LimitExceededError, or consistent artifacts', () => {
    const valid = fc.oneof(
      artifactsArb.map(a => packModel(a)),
      fc.tuple(wildHeader, fc.uint8Array({ maxLength: 256 })).map(([h, w]) => pack(h, w))
    )
    fc.assert(fc.property(hostile(valid, 512), (bytes) => {
      const out = typed(() => unpackModel(bytes))
      if (out.ok) checkArtifacts(out.value)
      else expect(['InvalidInputError', 'LimitExceededError']).toContain(out.error.name)
    }), fuzzParams())
  }, fuzzTimeout())

  it('refuses declared sizes over the limits before allocating or parsing', () => {
    const oversized = fc.oneof(
      // A header length over MAX_MODEL_HEADER_BYTES, with nothing behind it.
      fc.integer({ min: MAX_MODEL_HEADER_BYTES + 1, max: 0xffffffff }).map(len => pack({}, new Uint8Array(0), len)),
      // Weight specs that need more than MAX_MODEL_WEIGHT_BYTES: no weight bytes at all follow.
      fc.array(fc.integer({ min: 1, max: 2 ** 20 }), { minLength: 2, maxLength: 4 })
        .filter(shape => shape.reduce((a, b) => a * b, 1) * 4 > MAX_MODEL_WEIGHT_BYTES)
        .map(shape => pack({ modelTopology: {}, weightSpecs: [{ name: 'w', shape, dtype: 'float32' }] }, new Uint8Array(0))),
      // More weight specs than MAX_MODEL_WEIGHTS.
      fc.integer({ min: 1, max: 50 }).map(extra => pack({ modelTopology: {}, weightSpecs: Array.from({ length: MAX_MODEL_WEIGHTS + extra }, (_, i) => ({ name: `w${i}`, shape: [0], dtype: 'float32' })) }, new Uint8Array(0)))
    )
    fc.assert(fc.property(oversized, (bytes) => {
      const out = typed(() => unpackModel(bytes))
      expect(out.ok ? 'unpacked' : out.error.code).toBe('ERR_LIMIT_EXCEEDED')
    }), fuzzParams(0.25))
  }, fuzzTimeout(0.25))
})
