/**
 * The bulk channel's receiver (bulkFetch) against a TCP server on 127.0.0.1
 * that sends what each run says: honest sealed frames, the same bytes
 * mutated, or frame sequences sealed with the right key but cut and flagged
 * any way (a hostile peer holds the key of its own offer). Each run is a
 * real connection, so these properties take a tenth of the runs the pure
 * decoders get (200 at the default).
 */
import { createCipheriv } from 'node:crypto'
import { createServer } from 'node:net'
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BULK_FRAME_BYTES, BulkServer, bulkFetch } from '../../src/protocol/bulk/index.ts'
import { fuzzParams, fuzzTimeout, hostile, typedAsync } from '../helpers/fuzz.ts'
import type { Server } from 'node:net'

/** Connections are costly next to in-memory decoding: a tenth of the runs. */
const SOCKET_SHARE = 0.1
const HELLO_BYTES = 16 + 32
const TAG_BYTES = 16

/** A frame as the sender seals it: the plaintext, and the final flag its associated data carries. */
interface Frame { plain: Uint8Array, final: boolean }

/** The sealing the format documents (src/protocol/bulk/index.ts), written again here as the reference. */
function seal (key: Uint8Array, frames: Frame[]): Uint8Array {
  const out: Uint8Array[] = []
  frames.forEach((f, i) => {
    const nonce = Buffer.alloc(12)
    nonce.writeUInt32LE(i >>> 0, 4)
    const cipher = createCipheriv('aes-128-gcm', key, nonce, { authTagLength: TAG_BYTES })
    cipher.setAAD(Uint8Array.of(f.final ? 1 : 0))
    const header = Buffer.alloc(4)
    header.writeUInt32LE(f.plain.byteLength)
    out.push(header, cipher.update(f.plain))
    cipher.final()
    out.push(cipher.getAuthTag())
  })
  return Buffer.concat(out)
}

/** An honest transfer: the payload cut into frames anywhere (never empty unless it is the only one). */
function honestFrames (payload: Uint8Array, cuts: number[]): Frame[] {
  const at = [...new Set(cuts.map(c => Math.floor(c * payload.byteLength)))].filter(p => p > 0 && p < payload.byteLength).sort((a, b) => a - b)
  const frames: Frame[] = []
  let prev = 0
  for (const p of [...at, payload.byteLength]) { if (p > prev) frames.push({ plain: payload.subarray(prev, p), final: false }); prev = p }
  if (frames.length === 0) frames.push({ plain: new Uint8Array(0), final: false })
  const last = frames[frames.length - 1] as Frame
  last.final = true
  return frames
}

/** Targets of the sizes given by cutting `total` at `cuts`. */
function targetsFor (total: number, cuts: number[]): Uint8Array[] {
  const at = [...cuts.map(c => Math.floor(c * total)), 0, total].sort((a, b) => a - b)
  const out: Uint8Array[] = []
  for (let i = 1; i < at.length; i++) out.push(new Uint8Array((at[i] ?? 0) - (at[i - 1] ?? 0)))
  return out
}

const KEY = new Uint8Array(16).fill(7)
const ID = new Uint8Array(16).fill(9)

let server: Server
let port = 0
/** What the server sends on the next connection, after it has read the client's hello. */
let next: Uint8Array = new Uint8Array(0)

beforeAll(async () => {
  server = createServer((socket) => {
    socket.on('error', () => {})
    let seen = 0
    const raw = next
    socket.on('data', (chunk: Buffer) => {
      seen += chunk.byteLength
      if (seen >= HELLO_BYTES && seen - chunk.byteLength < HELLO_BYTES) socket.end(raw)
    })
  })
  await new Promise<void>(resolve => { server.listen(0, '127.0.0.1', () => { resolve() }) })
  const addr = server.address()
  port = typeof addr === 'object' && addr !== null ? addr.port : 0
})
afterAll(async () => {
  await new Promise<void>(resolve => { server.close(() => { resolve() }) })
})

async function fetchFrom (raw: Uint8Array, targets: Uint8Array[]): Promise<void> {
  next = raw
  const bytes = targets.reduce((n, t) => n + t.byteLength, 0)
  await bulkFetch('127.0.0.1', { port, id: ID, key: KEY, bytes }, targets, AbortSignal.timeout(5000))
}

const transfer = fc.record({
  payload: fc.uint8Array({ maxLength: 4096 }),
  frameCuts: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 6 }),
  targetCuts: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 4 })
})

describe('bulk channel receiver (fuzz, 127.0.0.1 sockets)', () => {
  it('fills the targets with exactly what an honest sender sealed, however frames and targets are cut', async () => {
    await fc.assert(fc.asyncProperty(transfer, async ({ payload, frameCuts, targetCuts }) => {
      const targets = targetsFor(payload.byteLength, targetCuts)
      await fetchFrom(seal(KEY, honestFrames(payload, frameCuts)), targets)
      expect(Buffer.compare(Buffer.concat(targets), payload)).toBe(0)
    }), fuzzParams(SOCKET_SHARE))
  }, fuzzTimeout(SOCKET_SHARE, 100))

  it('refuses any mutation of a sealed transfer with a typed error, or delivers the exact payload', async () => {
    const arb = transfer.chain(t => fc.tuple(fc.constant(t), hostile(fc.constant(seal(KEY, honestFrames(t.payload, t.frameCuts))), 64)))
    await fc.assert(fc.asyncProperty(arb, async ([{ payload, targetCuts }, raw]) => {
      const targets = targetsFor(payload.byteLength, targetCuts)
      const out = await typedAsync(fetchFrom(raw, targets))
      if (out.ok) expect(Buffer.compare(Buffer.concat(targets), payload)).toBe(0)
      else expect((out.error as { code?: string }).code).toMatch(/^ERR_BULK(_AUTH)?$/)
    }), fuzzParams(SOCKET_SHARE))
  }, fuzzTimeout(SOCKET_SHARE, 100))

  it('bounds what a sender holding the key can make it do: frames within size, count and total', async () => {
    // Frames sealed correctly but sized at will, flagged final on the last one
    // (mostly: a random flag would rarely let a transfer through) or at random.
    const frames = fc.tuple(
      fc.array(fc.oneof({ arbitrary: fc.uint8Array({ maxLength: 64 }), weight: 4 }, { arbitrary: fc.constant(new Uint8Array(0)), weight: 2 }), { minLength: 1, maxLength: 12 }),
      fc.oneof({ arbitrary: fc.constant(undefined), weight: 4 }, { arbitrary: fc.array(fc.boolean(), { minLength: 12, maxLength: 12 }), weight: 1 })
    ).map(([plains, flags]): Frame[] => plains.map((plain, i) => ({ plain, final: flags?.[i] ?? i === plains.length - 1 })))
    // Mostly the total the frames add up to, so that the sizes alone do not give them away.
    const announced = fc.oneof({ arbitrary: fc.constant(undefined), weight: 4 }, { arbitrary: fc.nat({ max: 400 }), weight: 1 })
    await fc.assert(fc.asyncProperty(frames, announced, async (fs, declared) => {
      const total = declared ?? fs.reduce((n, f) => n + f.plain.byteLength, 0)
      const targets = [new Uint8Array(total)]
      const out = await typedAsync(fetchFrom(seal(KEY, fs), targets))
      if (!out.ok) {
        expect((out.error as { code?: string }).code).toMatch(/^ERR_BULK(_AUTH)?$/)
        return
      }
      const sent = Buffer.concat(fs.map(f => f.plain))
      expect(Buffer.compare(targets[0] ?? new Uint8Array(0), sent)).toBe(0)
      // One final frame, last; and no more frames than bytes (+1 for an empty
      // transfer): a sender must not hold the receiver with frames that carry nothing.
      expect(fs.filter(f => f.final).length).toBe(1)
      expect(fs[fs.length - 1]?.final).toBe(true)
      expect(fs.length).toBeLessThanOrEqual(Math.max(1, total))
    }), fuzzParams(SOCKET_SHARE))
  }, fuzzTimeout(SOCKET_SHARE, 100))

  it('round-trips through the real BulkServer', async () => {
    const bulk = new BulkServer('127.0.0.1')
    await bulk.start()
    try {
      await fc.assert(fc.asyncProperty(fc.array(fc.uint8Array({ maxLength: 2048 }), { maxLength: 4 }), fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 4 }), async (parts, cuts) => {
        const payload = Buffer.concat(parts)
        const targets = targetsFor(payload.byteLength, cuts)
        await bulkFetch('127.0.0.1', bulk.offer(parts), targets, AbortSignal.timeout(5000))
        expect(Buffer.compare(Buffer.concat(targets), payload)).toBe(0)
      }), fuzzParams(SOCKET_SHARE / 2))
    } finally {
      await bulk.stop()
    }
  }, fuzzTimeout(SOCKET_SHARE, 100))

  it('refuses a frame declared larger than BULK_FRAME_BYTES before reading it', async () => {
    await fc.assert(fc.asyncProperty(fc.integer({ min: BULK_FRAME_BYTES + 1, max: 0xffffffff }), async (len) => {
      const header = Buffer.alloc(4)
      header.writeUInt32LE(len)
      const out = await typedAsync(fetchFrom(header, [new Uint8Array(BULK_FRAME_BYTES * 4)]))
      expect(out.ok ? 'accepted' : (out.error as { code?: string }).code).toBe('ERR_BULK')
    }), fuzzParams(SOCKET_SHARE / 2))
  }, fuzzTimeout(SOCKET_SHARE, 100))
})
