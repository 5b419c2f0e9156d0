/**
 * /tensormesh/blob/1.0.0: both messages, the serving handler fed arbitrary
 * requests, and the fetcher (blobOverStream) fed arbitrary answers and chunk
 * streams over an in-memory stream pair. Whatever a peer sends, the fetcher
 * returns the bytes of the CID it asked for or a typed error, and never
 * allocates beyond its limit.
 */
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import fc from 'fast-check'
import { beforeAll, describe, expect, it } from 'vitest'
import { cidOf, parseCid } from '../../src/node/blob-store.ts'
import { silentLogger } from '../../src/node/log.ts'
import { BlobAnswerCodec, BlobRequestCodec, blobOverStream, handleBlobStream } from '../../src/protocol/blob/index.ts'
import { fuzzParams, lpEncode, fuzzTimeout, hostile, inContainer, memoryPair, plain, STREAM_ERRORS, typed, typedAsync, utf8Bytes, utf8String } from '../helpers/fuzz.ts'
import { bulkTicketArb, uint64 } from './arbitraries.ts'
import type { BlobStore } from '../../src/node/blob-store.ts'
import type { BlobAnswer } from '../../src/protocol/blob/index.ts'
import type { PeerId } from '@libp2p/interface'

const log = silentLogger()
/** The fetcher's limit in these runs: small, so that a refused size is cheap to tell from an allocation. */
const MAX_BYTES = 8192

let peer: PeerId
beforeAll(async () => {
  peer = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
})

const blobAnswerArb: fc.Arbitrary<BlobAnswer> = fc.record({
  ok: fc.boolean(),
  size: uint64,
  error: utf8String(512),
  bulk: bulkTicketArb
}, { requiredKeys: ['ok', 'size', 'error'] })

/** A blob and the stream an honest server answers it with: the answer, then chunks cut anywhere. */
const servedBlob = fc.record({
  bytes: fc.uint8Array({ maxLength: 3000 }),
  cuts: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 5 })
}).map(({ bytes, cuts }) => {
  const at = [...new Set(cuts.map(c => Math.floor(c * bytes.byteLength)))].filter(p => p > 0 && p < bytes.byteLength).sort((a, b) => a - b)
  const chunks: Uint8Array[] = []
  let prev = 0
  for (const p of [...at, bytes.byteLength]) { if (p > prev) chunks.push(bytes.subarray(prev, p)); prev = p }
  return { bytes, stream: lpEncode([BlobAnswerCodec.encode({ ok: true, size: bytes.byteLength, error: '' }), ...chunks]) }
})

/** Runs blobOverStream against a server that reads the request and sends `raw`, then closes. */
async function fetchFrom (raw: Uint8Array, cid: string): Promise<Uint8Array> {
  const [client, server] = await memoryPair()
  const serverLp = lpStream(server)
  const served = (async () => {
    try {
      await serverLp.read()
      if (!server.send(raw)) await server.onDrain()
      await server.close()
    } catch {
      // The fetcher may hang up first.
    }
  })()
  try {
    return await blobOverStream(client, cid, AbortSignal.timeout(5000), MAX_BYTES)
  } finally {
    await served
    server.abort(new Error('done'))
  }
}

describe('blob protocol (fuzz)', () => {
  it('BlobRequest and BlobAnswer round-trip and refuse garbage with ProtocolError', () => {
    const requestArb = fc.record({ cid: utf8String(128) })
    fc.assert(fc.property(requestArb, blobAnswerArb, hostile(fc.oneof(requestArb.map(r => BlobRequestCodec.encode(r)), blobAnswerArb.map(a => BlobAnswerCodec.encode(a)))), (req, answer, bytes) => {
      expect(BlobRequestCodec.decode(BlobRequestCodec.encode(req))).toEqual(req)
      expect(plain(BlobAnswerCodec.decode(BlobAnswerCodec.encode(answer)))).toEqual(plain(answer))
      const r = typed(() => BlobRequestCodec.decode(bytes))
      if (r.ok) expect(utf8Bytes(r.value.cid)).toBeLessThanOrEqual(128)
      else expect(r.error.name).toBe('ProtocolError')
      const a = typed(() => BlobAnswerCodec.decode(bytes))
      if (a.ok) expect(utf8Bytes(a.value.error) <= 512 && Number.isSafeInteger(a.value.size)).toBe(true)
      else expect(a.error.name).toBe('ProtocolError')
    }), fuzzParams())
  }, fuzzTimeout())

  it('the handler looks up only strings that are CIDs, and answers or drops every request', async () => {
    // A CID of the empty blob: mutations of it come close to other valid CIDs.
    const someCid = await cidOf(new Uint8Array(0))
    const text = fc.oneof(utf8String(128), fc.constant(someCid))
    const requests = fc.oneof(
      // Real CIDs, of bytes the store may have.
      fc.uint8Array({ maxLength: 32 }).map(b => ({ real: b })),
      hostile(text.map(t => lpEncode([BlobRequestCodec.encode({ cid: t })]))).map(raw => ({ raw }))
    )
    await fc.assert(fc.asyncProperty(requests, fc.boolean(), async (req, granted) => {
      const looked: string[] = []
      let raw: Uint8Array
      let held: { cid: string, bytes: Uint8Array } | undefined
      if ('real' in req) {
        held = { cid: await cidOf(req.real), bytes: req.real }
        raw = lpEncode([BlobRequestCodec.encode({ cid: held.cid })])
      } else {
        raw = req.raw
      }
      const store = {
        servable: (_peer: string, cid: string) => granted && cid === held?.cid,
        get: async (cid: string) => { looked.push(cid); return cid === held?.cid ? held.bytes : undefined }
      } as unknown as BlobStore
      const [client, server] = await memoryPair()
      const lp = lpStream(client)
      const handled = handleBlobStream(server, peer, store, log)
      try {
        if (!client.send(raw)) await client.onDrain()
        await client.close()
      } catch {}
      await handled
      for (const cid of looked) expect(() => parseCid(cid)).not.toThrow()
      if (held !== undefined) {
        const answer = BlobAnswerCodec.decode((await lp.read()).subarray())
        expect(answer.ok).toBe(granted)
        if (granted) expect(answer.size).toBe(held.bytes.byteLength)
      }
      client.abort(new Error('done'))
    }), fuzzParams())
  }, fuzzTimeout())

  it('the fetcher returns exactly the blob an honest peer serves, however it is chunked', async () => {
    await fc.assert(fc.asyncProperty(servedBlob, async ({ bytes, stream }) => {
      const got = await fetchFrom(stream, await cidOf(bytes))
      expect(Buffer.compare(got, bytes)).toBe(0)
    }), fuzzParams())
  }, fuzzTimeout())

  it('the fetcher answers arbitrary and mutated answers with a typed error or the right bytes, within its limit', async () => {
    const arb = servedBlob.chain(s => fc.tuple(fc.constant(s.bytes), fc.oneof(
      hostile(fc.constant(s.stream)),
      // Any answer header, chunks or not: declared sizes up to 2^53, bulk tickets, refusals.
      fc.tuple(blobAnswerArb, fc.boolean()).map(([a, chunks]) => lpEncode([BlobAnswerCodec.encode(a), ...(chunks ? [s.bytes] : [])])),
      inContainer(s.stream)
    )))
    await fc.assert(fc.asyncProperty(arb, async ([bytes, raw]) => {
      const cid = await cidOf(bytes)
      const out = await typedAsync(fetchFrom(raw, cid), STREAM_ERRORS)
      if (out.ok) {
        expect(Buffer.compare(out.value, bytes)).toBe(0)
        return
      }
      const code = (out.error as { code?: string }).code ?? out.error.name
      expect(['ERR_BLOB_NOT_FOUND', 'ERR_RATE_LIMITED', 'ERR_LIMIT_EXCEEDED', 'ERR_BULK', 'ERR_BAD_CHUNK', 'ERR_BLOB_HASH',
        'ERR_FIELD_TOO_LONG', 'ERR_TRUNCATED', 'ERR_BAD_UTF8', 'ERR_FIELD_RANGE', 'ERR_BAD_WIRE_TYPE', 'ERR_MESSAGE_TOO_LONG', 'ERR_DECODE',
        ...STREAM_ERRORS, 'ERR_INVALID_MSG_LENGTH', 'ERR_MSG_DATA_TOO_LONG', 'ERR_MSG_LENGTH_TOO_LONG']).toContain(code)
    }), fuzzParams())
  }, fuzzTimeout())

  it('the fetcher refuses a declared size over its limit before allocating it', async () => {
    await fc.assert(fc.asyncProperty(fc.integer({ min: MAX_BYTES + 1, max: Number.MAX_SAFE_INTEGER }), async (size) => {
      // A size of up to 2^53 bytes: allocating it would throw RangeError, not this.
      const raw = lpEncode([BlobAnswerCodec.encode({ ok: true, size, error: '' })])
      const out = await typedAsync(fetchFrom(raw, await cidOf(new Uint8Array(0))))
      expect(out.ok ? 'fetched' : (out.error as { code?: string }).code).toBe('ERR_LIMIT_EXCEEDED')
    }), fuzzParams(0.25))
  }, fuzzTimeout())
})
