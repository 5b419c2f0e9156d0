/**
 * /tensormesh/blob/1.0.0: fetch a blob by its CID from a peer that has it.
 * One request (the CID), one answer header (size or error), then the bytes
 * in chunks of at most 1 MiB. The fetcher checks the size against its limit
 * before allocating and the bytes against the CID's hash before using them.
 */
import { lpStream } from '@libp2p/utils'
import { ProtocolError, LimitExceededError, TensormeshError, errorCode, errorMessage } from '../../errors.ts'
import { cidOf, parseCid } from '../../node/blob-store.ts'
import { messageCodec } from '../codec.ts'
import { CHUNK_BYTES } from '../limits.ts'
import { BulkError, BulkTicketCodec, bulkFetch, bulkOffer, bulkPush, bulkRoute, hostOf } from '../bulk/index.ts'
import { directConnection } from '../connections.ts'
import type { BulkRoute, BulkServer, BulkTicket } from '../bulk/index.ts'
import { peerText } from '../sanitize.ts'
import { OPEN_GUARD, RateLimitedError, isMalformed } from '../peer-guard.ts'
import type { PeerGuard } from '../peer-guard.ts'
import type { BlobStore } from '../../node/blob-store.ts'
import type { Libp2p, PeerId, Stream, Connection } from '@libp2p/interface'
import type { Logger } from 'pino'

export const BLOB_PROTOCOL = '/tensormesh/blob/1.0.0'

/** A 1 GiB tensor as .npy plus its header: the largest thing a job shares. */
export const MAX_BLOB_BYTES = 1024 * 1024 * 1024 + 64 * 1024

/** How long a peer may take to start answering and between chunks. */
export const BLOB_FRAME_TIMEOUT_MS = 30_000

/** Most blob streams one connection may have open at once: a shard waits on a handful of CIDs. */
export const MAX_INBOUND_BLOB_STREAMS = 64

/**
 * The one answer for a CID this node will not serve to the asking peer:
 * the same bytes whether it does not have it or the peer has no grant for
 * it, so a peer cannot probe what this node holds.
 */
export const BLOB_NOT_HERE = 'not here'

/** The answer to a peer over its blob rate limit (it says nothing about the CID). */
export const BLOB_RATE_LIMITED = 'rate limited'

export interface BlobRequest { cid: string }
export interface BlobAnswer { ok: boolean, size: number, error: string, bulk?: BulkTicket }

export const BlobRequestCodec = messageCodec<BlobRequest>('BlobRequest', { cid: { no: 1, kind: 'string', maxBytes: 128 } }, 256)
export const BlobAnswerCodec = messageCodec<BlobAnswer>('BlobAnswer', {
  ok: { no: 1, kind: 'bool' },
  size: { no: 2, kind: 'uint64' },
  error: { no: 3, kind: 'string', maxBytes: 512 },
  bulk: { no: 4, kind: 'message', codec: BulkTicketCodec }
}, 1024)

export class BlobNotFoundError extends TensormeshError {
  constructor (message: string) {
    super('ERR_BLOB_NOT_FOUND', message)
  }
}

/**
 * Serves one blob request on an open stream: only a CID the store has
 * granted to this peer (a job of this node sent it a shard naming the CID);
 * anything else gets BLOB_NOT_HERE, decided before the store is looked at.
 */
export async function handleBlobStream (stream: Stream, from: PeerId, store: BlobStore, log: Logger, bulk?: BulkServer, guard: PeerGuard = OPEN_GUARD, route?: BulkRoute): Promise<void> {
  const peer = from.toString()
  const admission = guard.admit(peer, 'blob')
  if (admission === 'banned') {
    stream.abort(new ProtocolError('peer is banned', 'ERR_PEER_BANNED'))
    return
  }
  const lp = lpStream(stream, { maxDataLength: CHUNK_BYTES })
  const timeout = (): AbortSignal => AbortSignal.timeout(BLOB_FRAME_TIMEOUT_MS)
  try {
    const frame = await lp.read({ signal: timeout() })
    if (admission === 'limited') {
      await lp.write(BlobAnswerCodec.encode({ ok: false, size: 0, error: BLOB_RATE_LIMITED }), { signal: timeout() })
      await stream.close({ signal: timeout() })
      return
    }
    const req = BlobRequestCodec.decode(frame.subarray())
    try {
      parseCid(req.cid)
    } catch (err) {
      throw new ProtocolError('blob request: not a CIDv1 raw sha-256 address', 'ERR_BAD_CID', { cause: err })
    }
    // Not granted and not held take the same path: one map lookup, then the same answer.
    const bytes = store.servable(peer, req.cid) ? await store.get(req.cid) : undefined
    const offer = bytes === undefined ? undefined : bulkOffer(route, bulk, [bytes])
    if (bytes === undefined) {
      await lp.write(BlobAnswerCodec.encode({ ok: false, size: 0, error: BLOB_NOT_HERE }), { signal: timeout() })
    } else if (offer !== undefined) {
      // Large blobs go over the bulk channel; the ticket travels on this encrypted stream.
      await lp.write(BlobAnswerCodec.encode({ ok: true, size: bytes.byteLength, error: '', bulk: offer.ticket }), { signal: timeout() })
      if (offer.push !== undefined) await bulkPush(offer.push.host, offer.push.port, offer.ticket, offer.parts, undefined, bulk)
    } else {
      await lp.write(BlobAnswerCodec.encode({ ok: true, size: bytes.byteLength, error: '' }), { signal: timeout() })
      for (let off = 0; off < bytes.byteLength; off += CHUNK_BYTES) {
        await lp.write(bytes.subarray(off, Math.min(off + CHUNK_BYTES, bytes.byteLength)), { signal: timeout() })
      }
    }
    await stream.close({ signal: timeout() })
  } catch (err) {
    log.debug({ peer, code: errorCode(err), err: errorMessage(err) }, 'blob request dropped')
    if (isMalformed(err)) guard.strike(peer, 'blob')
    stream.abort(err instanceof Error ? err : new Error(String(err)))
  }
}

/** `bulkPortOf`: a peer's bulk port from its advert, for pushing to a peer that dialed us. */
export async function registerBlobHandler (libp2p: Libp2p, store: BlobStore, log: Logger, bulk?: BulkServer, guard?: PeerGuard, bulkPortOf?: (peer: string) => number | undefined): Promise<void> {
  await libp2p.handle(BLOB_PROTOCOL, async (stream: Stream, connection: Connection) => {
    const route = bulkRoute(connection, bulkPortOf?.(connection.remotePeer.toString()))
    await handleBlobStream(stream, connection.remotePeer, store, log, bulk, guard, route)
  }, { maxInboundStreams: MAX_INBOUND_BLOB_STREAMS, runOnLimitedConnection: true })
}

/** Reads one blob from an open stream and checks it against its CID. */
export async function blobOverStream (stream: Stream, cid: string, signal?: AbortSignal, maxBytes = MAX_BLOB_BYTES, remoteHost?: string, bulk?: BulkServer): Promise<Uint8Array> {
  const sig = (): AbortSignal => signal === undefined ? AbortSignal.timeout(BLOB_FRAME_TIMEOUT_MS) : AbortSignal.any([signal, AbortSignal.timeout(BLOB_FRAME_TIMEOUT_MS)])
  try {
    const lp = lpStream(stream, { maxDataLength: CHUNK_BYTES })
    await lp.write(BlobRequestCodec.encode({ cid }), { signal: sig() })
    const answer = BlobAnswerCodec.decode((await lp.read({ signal: sig() })).subarray())
    if (!answer.ok && answer.error === BLOB_RATE_LIMITED) throw new RateLimitedError(`peer refused blob ${cid}: over its rate limit`)
    if (!answer.ok) throw new BlobNotFoundError(`peer does not have blob ${cid}: ${peerText(answer.error)}`)
    if (answer.size > maxBytes) throw new LimitExceededError(`blob ${cid} is ${answer.size} bytes, more than the ${maxBytes}-byte limit`)
    const bytes = new Uint8Array(answer.size)
    if (answer.bulk !== undefined) {
      if (answer.bulk.bytes !== answer.size || answer.bulk.id.byteLength !== 16 || answer.bulk.key.byteLength !== 16) throw new ProtocolError(`blob ${cid}: unusable bulk ticket`, 'ERR_BULK')
      if (answer.bulk.push === true) {
        if (bulk === undefined) throw new BulkError(`blob ${cid}: the peer pushes over the bulk channel, and this node has none`)
        await bulk.receive(answer.bulk, [bytes], signal)
      } else {
        if (remoteHost === undefined) throw new ProtocolError(`blob ${cid}: bulk ticket but no address to pull from`, 'ERR_BULK')
        await bulkFetch(remoteHost, answer.bulk, [bytes], signal)
      }
    }
    let off = answer.bulk !== undefined ? bytes.byteLength : 0
    while (off < bytes.byteLength) {
      const frame = await lp.read({ signal: sig() })
      if (frame.byteLength === 0 || off + frame.byteLength > bytes.byteLength) throw new ProtocolError(`blob ${cid}: chunk runs past the declared size`, 'ERR_BAD_CHUNK')
      for (const part of frame) {
        bytes.set(part, off)
        off += part.byteLength
      }
    }
    if (await cidOf(bytes) !== cid) throw new ProtocolError(`blob ${cid}: the bytes do not hash to their CID`, 'ERR_BLOB_HASH')
    await stream.close({ signal: sig() }).catch(() => {})
    return bytes
  } catch (err) {
    stream.abort(err instanceof Error ? err : new Error(String(err)))
    throw err
  }
}

/**
 * Fetches blobs for this node: from its own store first, else from the
 * given peers in turn; one fetch per CID however many shards wait for it,
 * and what arrives is kept in the store's memory cache.
 */
export class BlobFetcher {
  private readonly libp2p: Libp2p
  private readonly store: BlobStore
  private readonly pending = new Map<string, Promise<Uint8Array>>()
  /** Bytes fetched from peers, by CID: the figure the issue asks each peer to report. */
  fetchedBytes = 0

  private readonly bulk?: BulkServer

  /** `bulk`: where peers that cannot be pulled from push large blobs to us. */
  constructor (libp2p: Libp2p, store: BlobStore, bulk?: BulkServer) {
    this.libp2p = libp2p
    this.store = store
    this.bulk = bulk
  }

  /** `remember`: keep the bytes in the store's memory cache (callers that cache a decoded form pass false). */
  async get (cid: string, providers: PeerId[], signal?: AbortSignal, remember = true): Promise<Uint8Array> {
    parseCid(cid)
    const local = await this.store.get(cid)
    if (local !== undefined) return local
    let p = this.pending.get(cid)
    if (p === undefined) {
      p = this.fetch(cid, providers, signal, remember).finally(() => { this.pending.delete(cid) })
      this.pending.set(cid, p)
    }
    return await p
  }

  private async fetch (cid: string, providers: PeerId[], signal: AbortSignal | undefined, remember: boolean): Promise<Uint8Array> {
    const causes: string[] = []
    for (const peer of providers) {
      try {
        const connection = await directConnection(this.libp2p, peer, signal ?? AbortSignal.timeout(BLOB_FRAME_TIMEOUT_MS))
        const stream = await connection.newStream(BLOB_PROTOCOL, { signal, runOnLimitedConnection: true })
        const bytes = await blobOverStream(stream, cid, signal, MAX_BLOB_BYTES, hostOf(connection.remoteAddr), this.bulk)
        this.fetchedBytes += bytes.byteLength
        if (remember) this.store.remember(cid, bytes)
        return bytes
      } catch (err) {
        causes.push(`${peer.toString().slice(-8)}: ${errorMessage(err)}`)
      }
    }
    throw new BlobNotFoundError(`blob ${cid} could not be fetched (${causes.join('; ') || 'no provider'})`)
  }
}
