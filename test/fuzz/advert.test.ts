/**
 * Capacity adverts: the codec and validateAdvert, which every gossip message
 * on the capacity topic goes through. validateAdvert never throws: whatever
 * arrives becomes a verdict, and an accepted advert meets every rule.
 */
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import fc from 'fast-check'
import { beforeAll, describe, expect, it } from 'vitest'
import { ADVERT_VERSION, AdvertCodec, MAX_ADDR_BYTES, MAX_ADVERT_ADDRS, MAX_ADVERT_BYTES, MAX_ADVERT_OPERATORS, MAX_GFLOPS, MAX_GPU_NAME_BYTES, MAX_NAME_BYTES, MAX_SLOTS } from '../../src/protocol/capacity/advert.ts'
import { MAX_CLOCK_SKEW_MS, validateAdvert } from '../../src/protocol/capacity/validate.ts'
import { fuzzParams, fuzzTimeout, hostile, inContainer, plain, utf8String } from '../helpers/fuzz.ts'
import { uint32, uint64, wireDouble } from './arbitraries.ts'
import type { Advert } from '../../src/protocol/capacity/advert.ts'
import type { RejectReason } from '../../src/protocol/capacity/validate.ts'
import type { PeerId } from '@libp2p/interface'

const NOW = 1_790_000_000_000
const REASONS: RejectReason[] = ['oversized', 'garbage', 'spoofed', 'version', 'invalid', 'clock', 'replayed']

let author: PeerId
let other: PeerId
beforeAll(async () => {
  author = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
  other = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
})

const name = fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,20}$/)
const addrText = fc.oneof(
  fc.tuple(fc.ipV4(), fc.integer({ min: 1, max: 65535 })).map(([ip, port]) => `/ip4/${ip}/tcp/${port}`),
  fc.tuple(fc.ipV6(), fc.integer({ min: 1, max: 65535 })).map(([ip, port]) => `/ip6/${ip}/tcp/${port}`)
)

/** Any advert the codec can carry, valid or not. */
const anyAdvert = (peerId: () => Uint8Array): fc.Arbitrary<Advert> => fc.record({
  version: uint32,
  peerId: fc.oneof(fc.constant(null).map(() => peerId()), fc.uint8Array({ maxLength: 64 })),
  seq: uint64,
  timestampMs: uint64,
  backend: utf8String(MAX_NAME_BYTES),
  cores: uint32,
  memTotalBytes: uint64,
  memFreeBytes: uint64,
  gpuName: utf8String(MAX_GPU_NAME_BYTES),
  gpuMemBytes: uint64,
  gflops: wireDouble,
  slots: uint32,
  busy: uint32,
  queued: uint32,
  operators: fc.array(fc.oneof(name, utf8String(MAX_NAME_BYTES)), { maxLength: MAX_ADVERT_OPERATORS }),
  addrs: fc.array(fc.oneof(addrText.map(a => multiaddr(a).bytes), fc.uint8Array({ maxLength: MAX_ADDR_BYTES })), { maxLength: MAX_ADVERT_ADDRS }),
  bulkPort: uint32,
  meanGapMs: fc.integer({ min: 0, max: 2 ** 40 }),
  intervalMs: uint32
})

/** An advert that follows every rule, from `author`, against our clock at NOW. */
const validAdvert = (): fc.Arbitrary<{ advert: Advert, addrs: string[] }> => fc.record({
  seq: fc.integer({ min: 1, max: 2 ** 40 }),
  skew: fc.integer({ min: -MAX_CLOCK_SKEW_MS, max: MAX_CLOCK_SKEW_MS }),
  backend: name,
  cores: fc.integer({ min: 1, max: MAX_SLOTS }),
  mem: fc.tuple(uint64, uint64).map(([a, b]) => a < b ? [b, a] : [a, b]),
  gpuName: utf8String(MAX_GPU_NAME_BYTES),
  gpuMemBytes: uint64,
  gflops: fc.double({ min: 0, max: MAX_GFLOPS, noNaN: true }).map(d => Object.is(d, -0) ? 0 : d),
  slotsBusy: fc.integer({ min: 0, max: MAX_SLOTS }).chain(s => fc.tuple(fc.constant(s), fc.integer({ min: 0, max: s }))),
  queued: uint32,
  operators: fc.array(name, { maxLength: 12 }),
  addrs: fc.array(addrText, { maxLength: 4 }),
  bulkPort: fc.integer({ min: 0, max: 65535 }),
  gap: fc.integer({ min: 0, max: 7 * 24 * 3600_000 }).chain(g => fc.tuple(fc.constant(g), fc.integer({ min: 0, max: g === 0 ? 600_000 : Math.min(g, 600_000) })))
}).map(v => ({
  advert: {
    version: ADVERT_VERSION,
    peerId: author.toMultihash().bytes,
    seq: v.seq,
    timestampMs: NOW + v.skew,
    backend: v.backend,
    cores: v.cores,
    memTotalBytes: v.mem[0] ?? 0,
    memFreeBytes: v.mem[1] ?? 0,
    gpuName: v.gpuName,
    gpuMemBytes: v.gpuMemBytes,
    gflops: v.gflops,
    slots: v.slotsBusy[0],
    busy: v.slotsBusy[1],
    queued: v.queued,
    operators: v.operators,
    addrs: v.addrs.map(a => multiaddr(a).bytes),
    bulkPort: v.bulkPort,
    meanGapMs: v.gap[0],
    intervalMs: v.gap[1]
  },
  addrs: v.addrs.map(a => multiaddr(a).toString())
})).filter(v => AdvertCodec.encode(v.advert).byteLength <= MAX_ADVERT_BYTES)

describe('capacity adverts (fuzz)', () => {
  it('AdvertCodec round-trips any advert it can carry', () => {
    fc.assert(fc.property(anyAdvert(() => author.toMultihash().bytes).filter(a => AdvertCodec.encode(a).byteLength <= MAX_ADVERT_BYTES), (a) => {
      expect(plain(AdvertCodec.decode(AdvertCodec.encode(a)))).toEqual(plain(a))
    }), fuzzParams())
  }, fuzzTimeout())

  it('accepts every valid advert and reports exactly what it said', () => {
    fc.assert(fc.property(validAdvert().chain(v => fc.tuple(fc.constant(v), inContainer(AdvertCodec.encode(v.advert)))), ([{ advert, addrs }, bytes]) => {
      const verdict = validateAdvert(bytes, { from: author, now: NOW, lastSeq: advert.seq - 1 })
      if (!verdict.ok) throw new Error(`valid advert refused: ${verdict.reason}: ${verdict.message}`)
      const c = verdict.capacity
      expect(c.peerId).toBe(author.toString())
      expect({ seq: c.seq, timestampMs: c.timestampMs, backend: c.backend, cores: c.cores, slots: c.slots, busy: c.busy, gflops: c.gflops, operators: c.operators, addrs: c.addrs })
        .toEqual({ seq: advert.seq, timestampMs: advert.timestampMs, backend: advert.backend, cores: advert.cores, slots: advert.slots, busy: advert.busy, gflops: advert.gflops, operators: advert.operators, addrs })
      expect(c.gpu).toEqual(advert.gpuName === '' ? undefined : { name: advert.gpuName, memoryBytes: advert.gpuMemBytes })
    }), fuzzParams())
  }, fuzzTimeout())

  it('turns arbitrary and mutated adverts into a verdict, never an exception; what it accepts meets every rule', () => {
    const valid = fc.oneof(
      validAdvert().map(v => AdvertCodec.encode(v.advert)),
      anyAdvert(() => author.toMultihash().bytes).map(a => AdvertCodec.encode(a))
    )
    fc.assert(fc.property(hostile(valid, MAX_ADVERT_BYTES + 64), fc.option(fc.integer({ min: 0, max: 2 ** 40 })), fc.boolean(), (bytes, lastSeq, fromOther) => {
      const from = fromOther ? other : author
      const verdict = validateAdvert(bytes, { from, now: NOW, ...(lastSeq !== null ? { lastSeq } : {}) })
      if (!verdict.ok) {
        expect(REASONS).toContain(verdict.reason)
        if (bytes.byteLength > MAX_ADVERT_BYTES) expect(verdict.reason).toBe('oversized')
        return
      }
      const c = verdict.capacity
      expect(c.peerId).toBe(from.toString())
      expect(c.version).toBe(ADVERT_VERSION)
      expect(Math.abs(c.timestampMs - NOW)).toBeLessThanOrEqual(MAX_CLOCK_SKEW_MS)
      if (lastSeq !== null) expect(c.seq).toBeGreaterThan(lastSeq)
      expect(c.backend).toMatch(/^[a-z0-9][a-z0-9._-]*$/)
      for (const op of c.operators) expect(op).toMatch(/^[a-z0-9][a-z0-9._-]*$/)
      expect(c.operators.length).toBeLessThanOrEqual(MAX_ADVERT_OPERATORS)
      expect(c.addrs.length).toBeLessThanOrEqual(MAX_ADVERT_ADDRS)
      expect(c.cores >= 1 && c.cores <= MAX_SLOTS && c.slots <= MAX_SLOTS && c.busy <= c.slots).toBe(true)
      expect(Number.isFinite(c.gflops) && c.gflops >= 0 && c.gflops <= MAX_GFLOPS).toBe(true)
      expect(c.memFreeBytes).toBeLessThanOrEqual(c.memTotalBytes)
    }), fuzzParams())
  }, fuzzTimeout())
})
