/**
 * Every message codec on the wire (bid request and answer, shard and result
 * headers with their nested tensor descriptors, content refs and bulk
 * tickets) and the bid validators: valid values round-trip, arbitrary and
 * mutated bytes give a typed error or a value within the declared bounds.
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { BidAnswerCodec, BidRequestCodec, validateBidAnswer, validateBidRequest } from '../../src/protocol/bid/index.ts'
import { BulkTicketCodec } from '../../src/protocol/bulk/index.ts'
import { MAX_PARAMS_BYTES, MAX_RANK, MAX_TENSORS_PER_FRAME } from '../../src/protocol/limits.ts'
import { MAX_PEER_TEXT } from '../../src/protocol/sanitize.ts'
import { ResultHeaderCodec, ShardHeaderCodec } from '../../src/protocol/shard/index.ts'
import { TensorDescCodec } from '../../src/protocol/tensor-frames.ts'
import { fuzzParams, fuzzTimeout, hostile, inContainer, plain, typed, utf8Bytes } from '../helpers/fuzz.ts'
import { bidAnswerArb, bidRequestArb, bulkTicketArb, resultHeaderArb, shardHeaderArb, tensorDescArb } from './arbitraries.ts'
import type { MessageCodec } from '../../src/protocol/codec.ts'
import type { BulkTicket } from '../../src/protocol/bulk/index.ts'
import type { ContentRef } from '../../src/protocol/shard/index.ts'
import type { TensorDesc } from '../../src/protocol/tensor-frames.ts'

const isUint32 = (n: number): boolean => Number.isInteger(n) && n >= 0 && n <= 0xffffffff
const isUint64 = (n: number): boolean => Number.isSafeInteger(n) && n >= 0

const descOk = (d: TensorDesc): boolean => utf8Bytes(d.name) <= 64 && utf8Bytes(d.dtype) <= 16 && d.shape.length <= MAX_RANK && d.shape.every(isUint64)
const refOk = (r: ContentRef): boolean => utf8Bytes(r.name) <= 64 && utf8Bytes(r.cid) <= 128
const ticketOk = (t: BulkTicket | undefined): boolean => t === undefined || (isUint32(t.port) && t.id.byteLength <= 16 && t.key.byteLength <= 16 && isUint64(t.bytes))

/** Registers the two codec properties for one message. */
function fuzzCodec<T extends object> (codec: MessageCodec<T>, arb: fc.Arbitrary<T>, bounded: (v: T) => boolean): void {
  describe(codec.name, () => {
    it('round-trips valid values, from any container', () => {
      fc.assert(fc.property(arb.chain(v => fc.tuple(fc.constant(v), inContainer(codec.encode(v)))), ([v, bytes]) => {
        expect(plain(codec.decode(bytes))).toEqual(plain(v))
      }), fuzzParams())
    }, fuzzTimeout())

    it('answers arbitrary and mutated bytes with ProtocolError or a value within bounds', () => {
      fc.assert(fc.property(hostile(arb.map(v => codec.encode(v))), (bytes) => {
        const out = typed(() => codec.decode(bytes))
        if (out.ok) expect(bounded(out.value)).toBe(true)
        else expect(out.error.name).toBe('ProtocolError')
      }), fuzzParams())
    }, fuzzTimeout())
  })
}

describe('wire messages (fuzz)', () => {
  fuzzCodec(BidRequestCodec, bidRequestArb, v => utf8Bytes(v.jobId) <= 64 && utf8Bytes(v.op) <= 64 && isUint64(v.units))
  fuzzCodec(BidAnswerCodec, bidAnswerArb, v => typeof v.accept === 'boolean' && isUint64(v.units) && isUint32(v.slots) && utf8Bytes(v.reason) <= 512)
  fuzzCodec(ShardHeaderCodec, shardHeaderArb, v => utf8Bytes(v.jobId) <= 64 && utf8Bytes(v.op) <= 64 && utf8Bytes(v.params) <= MAX_PARAMS_BYTES &&
    isUint32(v.index) && isUint32(v.attempt) && isUint64(v.start) && isUint64(v.end) &&
    v.tensors.length <= MAX_TENSORS_PER_FRAME && v.tensors.every(descOk) &&
    v.refs.length <= MAX_TENSORS_PER_FRAME && v.refs.every(refOk) &&
    v.blobs.length <= MAX_TENSORS_PER_FRAME && v.blobs.every(refOk) && ticketOk(v.bulk))
  fuzzCodec(ResultHeaderCodec, resultHeaderArb, v => utf8Bytes(v.errorCode) <= 64 && utf8Bytes(v.errorMessage) <= 2048 &&
    v.tensors.length <= MAX_TENSORS_PER_FRAME && v.tensors.every(descOk) && ticketOk(v.bulk))
  fuzzCodec(TensorDescCodec, tensorDescArb, descOk)
  fuzzCodec(BulkTicketCodec, bulkTicketArb, ticketOk)

  it('validates bid requests: a typed refusal, or a request that meets every rule', () => {
    fc.assert(fc.property(hostile(bidRequestArb.map(v => BidRequestCodec.encode(v))), (bytes) => {
      const out = typed(() => validateBidRequest(BidRequestCodec.decode(bytes)))
      if (!out.ok) return
      const r = out.value
      expect(r.jobId).toMatch(/^[A-Za-z0-9_-]{1,64}$/)
      expect(r.units).toBeGreaterThanOrEqual(1)
      for (const n of [r.flopsPerUnit, r.bytesInPerUnit, r.bytesInFixed, r.bytesOutPerUnit]) {
        expect(Number.isFinite(n) && n >= 0).toBe(true)
      }
    }), fuzzParams())
  }, fuzzTimeout())

  it('validates bid answers: an accepted bid is usable, the reason is safe to log', () => {
    fc.assert(fc.property(hostile(bidAnswerArb.map(v => BidAnswerCodec.encode(v))), (bytes) => {
      const out = typed(() => validateBidAnswer(BidAnswerCodec.decode(bytes)))
      if (!out.ok) return
      const a = out.value
      if (a.accept) {
        expect(a.units >= 1 && a.slots >= 1 && a.unitsPerSecond > 0 && Number.isFinite(a.unitsPerSecond)).toBe(true)
        expect(Number.isFinite(a.startDelayMs) && a.startDelayMs >= 0).toBe(true)
      }
      // eslint-disable-next-line no-control-regex
      expect(a.reason).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/)
      expect(a.reason.length).toBeLessThanOrEqual(MAX_PEER_TEXT + 1)
    }), fuzzParams())
  }, fuzzTimeout())
})
