/**
 * Inputs the fuzz suite found that broke a decoder, replayed exactly as
 * plain unit tests, so that each bug stays fixed whatever the generators
 * and seeds of later campaigns explore.
 */
import { createServer } from 'node:net'
import { Readable } from 'node:stream'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import { describe, expect, it } from 'vitest'
import { packModel, unpackModel } from '../../src/compute/model.ts'
import { encodeNpy } from '../../src/compute/npy.ts'
import { readJobRequest } from '../../src/node/api/job-request.ts'
import { silentLogger } from '../../src/node/log.ts'
import { bulkFetch } from '../../src/protocol/bulk/index.ts'
import { ResultHeaderCodec, handleShardStream } from '../../src/protocol/shard/index.ts'
import { allocateTensors } from '../../src/protocol/tensor-frames.ts'
import { asyncCodeOf, codeOf } from '../helpers/codes.ts'
import { memoryPair } from '../helpers/fuzz.ts'
import type { IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'

const SMALL = { maxTensorBytes: 4096, maxShardBytes: 16384, frameTimeoutMs: 5000 }

/** The answer handleShardStream gives to one length-prefixed header frame, and whether it ran the shard. */
async function shardAnswer (header: Uint8Array): Promise<{ code: string, executed: boolean }> {
  const peer = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
  const [client, server] = await memoryPair()
  const lp = lpStream(client)
  let executed = false
  const handled = handleShardStream(server, peer, async (shard) => { executed = true; return { partial: shard.task.inputs, computeMs: 0 } }, silentLogger(), {
    limits: SMALL,
    resolve: async (refs) => ({ tensors: Object.fromEntries(refs.tensors.map(r => [r.name, { dtype: 'int32' as const, shape: [1], data: Int32Array.of(5) }])), blobs: {} })
  })
  await lp.write(header)
  await client.close()
  await handled
  const answer = ResultHeaderCodec.decode((await lp.read()).subarray())
  client.abort(new Error('done'))
  return { code: answer.errorCode, executed }
}

function jsonRequest (body: string): IncomingMessage {
  return Object.assign(Readable.from([Buffer.from(body)]), { headers: { 'content-type': 'application/json' } }) as unknown as IncomingMessage
}

const noBlobs = async (): Promise<Uint8Array> => new Uint8Array(0)

describe('fuzz regressions', () => {
  // Was: the codec's TextDecoder dropped a leading byte order mark, so a
  // string field starting with U+FEFF decoded to a different string.
  it('keeps a leading U+FEFF in a string field (messageCodec)', () => {
    // ResultHeader {errorMessage: '\uFEFF'}: field 3, length 3, EF BB BF.
    const bytes = Uint8Array.from([26, 3, 239, 187, 191])
    expect(ResultHeaderCodec.decode(bytes).errorMessage).toBe('\uFEFF')
  })

  // Was: `__proto__` passed the identifier check and `tensors[name] = t` set
  // the tensor map's prototype, so the tensor vanished (its bytes were still
  // read into it) and the map's dtype/shape/data resolved to it.
  it('refuses a tensor named __proto__ (tensor-frames allocateTensors)', () => {
    expect(codeOf(() => allocateTensors([{ name: '__proto__', dtype: 'float32', shape: [] }], SMALL, 'fuzz'))).toBe('ERR_BAD_TENSOR')
  })

  it('refuses a shard header with a tensor named __proto__ (shard handler)', async () => {
    // ShardHeader {jobId:'_', op:'map', params:'{}', tensors:[{name:'__proto__', dtype:'float32', shape:[]}]}
    const header = Uint8Array.from([10, 1, 95, 34, 3, 109, 97, 112, 42, 2, 123, 125, 66, 20, 10, 9, 95, 95, 112, 114, 111, 116, 111, 95, 95, 18, 7, 102, 108, 111, 97, 116, 51, 50])
    expect(await shardAnswer(header)).toEqual({ code: 'ERR_BAD_TENSOR', executed: false })
  })

  // Was: a content ref named `__proto__` passed checkRefs, and
  // Object.assign(task.inputs, resolved.tensors) set the executor's inputs'
  // prototype to the ref's tensor instead of adding the input.
  it('refuses a shard header with a content ref named __proto__ (shard handler)', async () => {
    // ShardHeader {jobId:'_', op:'map', params:'{}', refs:[{name:'__proto__', cid:'cid-0'}]}
    const header = Uint8Array.from([10, 1, 95, 34, 3, 109, 97, 112, 42, 2, 123, 125, 74, 18, 10, 9, 95, 95, 112, 114, 111, 116, 111, 95, 95, 18, 5, 99, 105, 100, 45, 48])
    expect(await shardAnswer(header)).toEqual({ code: 'ERR_BAD_REF', executed: false })
  })

  // Was: an empty frame that is not the last was accepted; each resets the
  // idle timer, so a sender holding the ticket's key could keep the receiver
  // in the transfer forever with 20-byte frames.
  it('refuses an empty bulk frame before the end of the transfer (bulkFetch)', async () => {
    // Key 16 x 0x07: frame 0 empty and not final, frame 1 one zero byte and final.
    const sealed = Buffer.from('00000000b47d5f78d78811960223d8dcc05c91ba0100000096e1341434b1bb608da3c54c3470cc5e05', 'hex')
    const server = createServer((socket) => {
      socket.on('error', () => {})
      socket.once('data', () => { socket.end(sealed) })
    })
    await new Promise<void>(resolve => { server.listen(0, '127.0.0.1', () => { resolve() }) })
    try {
      const ticket = { port: (server.address() as AddressInfo).port, id: new Uint8Array(16).fill(9), key: new Uint8Array(16).fill(7), bytes: 1 }
      expect(await asyncCodeOf(bulkFetch('127.0.0.1', ticket, [new Uint8Array(1)], AbortSignal.timeout(5000)))).toBe('ERR_BULK')
    } finally {
      await new Promise<void>(resolve => { server.close(() => { resolve() }) })
    }
  })

  // Was: weightData was bytes.slice(dataAt).buffer; for a Node Buffer slice()
  // is a view, so weightData was the whole pooled allocation (8192 bytes of
  // other Buffers' memory) instead of the model's 8 weight bytes.
  it('unpacks a model from a pooled Node Buffer to exactly its weights (unpackModel)', () => {
    const packed = packModel({ modelTopology: {}, weightSpecs: [{ name: 'w', shape: [2], dtype: 'float32' }], weightData: Float32Array.of(1, 2).buffer })
    const a = unpackModel(Buffer.from(packed))
    expect(a.weightData.byteLength).toBe(8)
    expect(Array.from(new Float32Array(a.weightData))).toEqual([1, 2])
  })

  // Was: Float32Array.from / Int32Array.from turned 1e39 into Infinity,
  // 2^31 into -2^31 and 1.5 into 1 without a word; .npy parts were refused
  // for the same values.
  it('refuses inline JSON data its dtype cannot hold (readJobRequest)', async () => {
    const float = '{"op":"","params":{},"inputs":{"A":{"dtype":"float32","shape":[3,2],"data":[0,2147483647,0,0,0,1e+39]}}}'
    expect(await asyncCodeOf(readJobRequest(jsonRequest(float), 4096, noBlobs))).toBe('ERR_BAD_SPEC')
    for (const x of ['2147483648', '1.5']) {
      const int = `{"op":"map","inputs":{"a":{"dtype":"int32","shape":[1],"data":[${x}]}}}`
      expect(await asyncCodeOf(readJobRequest(jsonRequest(int), 4096, noBlobs))).toBe('ERR_BAD_SPEC')
    }
  })

  // Was: `__proto__` matched INPUT_NAME, and `inputs[name] = t` /
  // `blobs[name] = b` set the map's prototype: the input or blob vanished.
  it('refuses inputs and blobs named __proto__, in JSON and in multipart (readJobRequest)', async () => {
    const json = '{"op":"map","inputs":{"__proto__":{"dtype":"float32","shape":[1],"data":[1]}}}'
    expect(await asyncCodeOf(readJobRequest(jsonRequest(json), 4096, noBlobs))).toBe('ERR_BAD_SPEC')
    const blobRef = '{"op":"map","blobs":{"__proto__":{"cid":"x"}}}'
    expect(await asyncCodeOf(readJobRequest(jsonRequest(blobRef), 4096, noBlobs))).toBe('ERR_BAD_SPEC')
    for (const part of ['blob.__proto__', '__proto__']) {
      const form = new FormData()
      form.append('spec', '{"op":"","params":{}}')
      // The blob part exactly as found (empty); the input part a valid .npy.
      form.append(part, new Blob(part.startsWith('blob.') ? [] : [encodeNpy({ dtype: 'float32', shape: [1], data: Float32Array.of(1) })]), 'x.npy')
      const res = new Response(form)
      const req = Object.assign(Readable.from([Buffer.from(await res.arrayBuffer())]), { headers: { 'content-type': res.headers.get('content-type') ?? '' } }) as unknown as IncomingMessage
      expect(await asyncCodeOf(readJobRequest(req, 4096, noBlobs))).toBe('ERR_BAD_SPEC')
    }
  })
})
