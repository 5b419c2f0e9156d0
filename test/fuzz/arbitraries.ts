/**
 * fast-check arbitraries for the values that travel on the wire, each within
 * the bounds its codec declares, so that their encodings are valid inputs to
 * round-trip and to mutate.
 */
import fc from 'fast-check'
import { MAX_RANK, MAX_TENSORS_PER_FRAME } from '../../src/protocol/limits.ts'
import { utf8String } from '../helpers/fuzz.ts'
import type { BidAnswer, BidRequest } from '../../src/protocol/bid/index.ts'
import type { BulkTicket } from '../../src/protocol/bulk/index.ts'
import type { ContentRef, ResultHeader, ShardHeader } from '../../src/protocol/shard/index.ts'
import type { TensorDesc } from '../../src/protocol/tensor-frames.ts'

export const uint32 = fc.integer({ min: 0, max: 0xffffffff })
export const uint64 = fc.maxSafeNat()
/** Any double but a lone -0, which proto3 sends as the default and so reads back as 0. */
export const wireDouble = fc.double().map(d => Object.is(d, -0) ? 0 : d)

/**
 * Identifiers, the names tensors, refs and job inputs take; the dictionary
 * adds those that are also Object.prototype's own names, which an object
 * used as a map treats specially.
 */
export const PROTOTYPE_NAMES = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf'] as const
export const identifier = fc.oneof(
  { arbitrary: fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_]{0,15}$/), weight: 12 },
  { arbitrary: fc.constantFrom(...PROTOTYPE_NAMES), weight: 1 }
)

export const tensorDescArb: fc.Arbitrary<TensorDesc> = fc.record({
  name: fc.oneof(identifier, utf8String(64)),
  dtype: fc.oneof(fc.constantFrom('float32', 'int32'), utf8String(16)),
  shape: fc.array(fc.oneof(fc.integer({ min: 0, max: 64 }), uint64), { maxLength: MAX_RANK })
})

export const contentRefArb: fc.Arbitrary<ContentRef> = fc.record({
  name: fc.oneof(identifier, utf8String(64)),
  cid: utf8String(128)
})

export const bulkTicketArb: fc.Arbitrary<BulkTicket> = fc.record({
  port: uint32,
  id: fc.uint8Array({ maxLength: 16 }),
  key: fc.uint8Array({ maxLength: 16 }),
  bytes: uint64,
  // A bool decodes to false when absent, so a round trip always has it.
  push: fc.boolean()
})

export const shardHeaderArb: fc.Arbitrary<ShardHeader> = fc.record({
  jobId: utf8String(64),
  index: uint32,
  attempt: uint32,
  op: utf8String(64),
  params: fc.oneof(fc.json({ maxDepth: 3 }), utf8String(256)),
  start: uint64,
  end: uint64,
  tensors: fc.array(tensorDescArb, { maxLength: MAX_TENSORS_PER_FRAME }),
  refs: fc.array(contentRefArb, { maxLength: 4 }),
  blobs: fc.array(contentRefArb, { maxLength: 4 }),
  bulk: bulkTicketArb
}, { requiredKeys: ['jobId', 'index', 'attempt', 'op', 'params', 'start', 'end', 'tensors', 'refs', 'blobs'] })

export const resultHeaderArb: fc.Arbitrary<ResultHeader> = fc.record({
  ok: fc.boolean(),
  errorCode: utf8String(64),
  errorMessage: utf8String(2048),
  computeMs: wireDouble,
  tensors: fc.array(tensorDescArb, { maxLength: MAX_TENSORS_PER_FRAME }),
  bulk: bulkTicketArb
}, { requiredKeys: ['ok', 'errorCode', 'errorMessage', 'computeMs', 'tensors'] })

export const bidRequestArb: fc.Arbitrary<BidRequest> = fc.record({
  jobId: fc.oneof(fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/), utf8String(64)),
  op: utf8String(64),
  units: uint64,
  flopsPerUnit: wireDouble,
  bytesInPerUnit: wireDouble,
  bytesInFixed: wireDouble,
  bytesOutPerUnit: wireDouble
})

export const bidAnswerArb: fc.Arbitrary<BidAnswer> = fc.record({
  accept: fc.boolean(),
  units: uint64,
  unitsPerSecond: wireDouble,
  startDelayMs: wireDouble,
  slots: uint32,
  reason: utf8String(512)
})
