import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { beforeAll, describe, expect, it } from 'vitest'
import { ADVERT_VERSION, AdvertCodec, MAX_ADVERT_BYTES, MAX_CLOCK_SKEW_MS, validateAdvert } from '../../src/protocol/capacity/index.ts'
import type { Advert } from '../../src/protocol/capacity/index.ts'
import type { PeerId } from '@libp2p/interface'

let alice: PeerId
let mallory: PeerId

beforeAll(async () => {
  alice = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
  mallory = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
})

function advert (overrides: Partial<Advert> = {}): Advert {
  return {
    version: ADVERT_VERSION,
    peerId: alice.toMultihash().bytes,
    seq: 42,
    timestampMs: Date.now(),
    backend: 'wasm',
    cores: 2,
    memTotalBytes: 24 * 2 ** 30,
    memFreeBytes: 20 * 2 ** 30,
    gpuName: '',
    gpuMemBytes: 0,
    gflops: 38.5,
    slots: 2,
    busy: 1,
    queued: 0,
    operators: ['matmul', 'map', 'reduce'],
    addrs: [multiaddr('/ip4/127.0.0.1/tcp/40001').bytes],
    bulkPort: 40002,
    meanGapMs: 0,
    intervalMs: 2000,
    ...overrides
  }
}

describe('advert codec', () => {
  it('round-trips every field', () => {
    const a = advert({ gpuName: 'NVIDIA A100-SXM4-80GB', gpuMemBytes: 80 * 2 ** 30 })
    const decoded = AdvertCodec.decode(AdvertCodec.encode(a))
    expect(decoded).toEqual(a)
  })

  it('stays well under the size limit', () => {
    const bytes = AdvertCodec.encode(advert({
      gpuName: 'NVIDIA A100-SXM4-80GB',
      addrs: [1, 2, 3, 4].map(i => multiaddr(`/ip4/192.168.1.${i}/tcp/4001`).bytes)
    }))
    expect(bytes.byteLength).toBeLessThan(MAX_ADVERT_BYTES / 2)
  })

  it('accepts a good advert and maps it to strings', () => {
    const verdict = validateAdvert(AdvertCodec.encode(advert()), { from: alice, now: Date.now() })
    expect(verdict.ok).toBe(true)
    if (!verdict.ok) return
    expect(verdict.capacity.peerId).toBe(alice.toString())
    expect(verdict.capacity.addrs).toEqual(['/ip4/127.0.0.1/tcp/40001'])
    expect(verdict.capacity.gpu).toBeUndefined()
  })
})

describe('advert rejection rules', () => {
  const reason = (bytes: Uint8Array, from: PeerId, lastSeq?: number): string => {
    const v = validateAdvert(bytes, { from, now: Date.now(), lastSeq })
    return v.ok ? 'accepted' : v.reason
  }

  it('rejects an advert about another peer (wrong author)', () => {
    expect(reason(AdvertCodec.encode(advert()), mallory)).toBe('spoofed')
  })

  it('rejects a replayed or reordered sequence number', () => {
    const bytes = AdvertCodec.encode(advert({ seq: 42 }))
    expect(reason(bytes, alice, 42)).toBe('replayed')
    expect(reason(bytes, alice, 43)).toBe('replayed')
    expect(reason(bytes, alice, 41)).toBe('accepted')
  })

  it('rejects an oversized advert before decoding it', () => {
    expect(reason(new Uint8Array(MAX_ADVERT_BYTES + 1), alice)).toBe('oversized')
  })

  it('rejects garbage bytes', () => {
    expect(reason(Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), alice)).toBe('garbage')
    expect(reason(new TextEncoder().encode('{"backend":"wasm"}'), alice)).toBe('garbage')
    // a length prefix that runs past the end
    expect(reason(Uint8Array.from([0x2a, 0x7f, 0x61]), alice)).toBe('garbage')
  })

  it('rejects fields that break a limit while decoding', () => {
    const many = AdvertCodec.encode(advert({ operators: Array.from({ length: 40 }, (_, i) => `op${i}`) }))
    expect(reason(many, alice)).toBe('garbage')
  })

  it('rejects a timestamp far from our clock', () => {
    expect(reason(AdvertCodec.encode(advert({ timestampMs: Date.now() + MAX_CLOCK_SKEW_MS + 5000 })), alice)).toBe('clock')
    expect(reason(AdvertCodec.encode(advert({ timestampMs: Date.now() - MAX_CLOCK_SKEW_MS - 5000 })), alice)).toBe('clock')
  })

  it('rejects values out of range', () => {
    expect(reason(AdvertCodec.encode(advert({ busy: 3, slots: 2 })), alice)).toBe('invalid')
    expect(reason(AdvertCodec.encode(advert({ gflops: Number.NaN })), alice)).toBe('invalid')
    expect(reason(AdvertCodec.encode(advert({ cores: 0 })), alice)).toBe('invalid')
    expect(reason(AdvertCodec.encode(advert({ backend: 'wasm\u001b[31m' })), alice)).toBe('invalid')
    expect(reason(AdvertCodec.encode(advert({ addrs: [Uint8Array.from([0xff, 0x01])] })), alice)).toBe('invalid')
    expect(reason(AdvertCodec.encode(advert({ version: 99 })), alice)).toBe('version')
  })
})
