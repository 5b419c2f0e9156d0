/**
 * /tensormesh/bid/1.0.0: a coordinator's call for bids. One request, one
 * answer, then the stream closes. A peer answers from its own state only,
 * without running anything, so a bid costs a round trip and no compute.
 */
import { lpStream } from '@libp2p/utils'
import { ProtocolError, errorCode, errorMessage } from '../../errors.ts'
import { directConnection } from '../connections.ts'
import { messageCodec } from '../codec.ts'
import { peerText } from '../sanitize.ts'
import { OPEN_GUARD, isMalformed } from '../peer-guard.ts'
import type { PeerGuard } from '../peer-guard.ts'
import type { Libp2p, PeerId, Stream, Connection } from '@libp2p/interface'
import type { Logger } from 'pino'

export const BID_PROTOCOL = '/tensormesh/bid/1.0.0'

/** A bid is a round trip on an open connection: a second on loopback would be pathological. */
export const BID_TIMEOUT_MS = 3000
export const MAX_BID_MESSAGE_BYTES = 4096

/** Most bid streams one connection may have open at once; a call for bids holds one per job. */
export const MAX_INBOUND_BID_STREAMS = 64

/** The reason of a bid declined because its coordinator asked too often (stable: coordinators may match on it). */
export const RATE_LIMITED_REASON = 'rate limited: too many calls for bids from this coordinator'

export interface BidRequest {
  jobId: string
  op: string
  /** Work units the whole job has. */
  units: number
  flopsPerUnit: number
  bytesInPerUnit: number
  bytesInFixed: number
  bytesOutPerUnit: number
}

export interface BidAnswer {
  accept: boolean
  /** Most units this peer takes of the job. */
  units: number
  /** This peer's own estimate of its rate for this operator. */
  unitsPerSecond: number
  /** Expected wait before a new shard starts (its queue). */
  startDelayMs: number
  /** Shards it runs at once. */
  slots: number
  /** Why it declined (plain text, for the job record). */
  reason: string
}

export const BidRequestCodec = messageCodec<BidRequest>('BidRequest', {
  jobId: { no: 1, kind: 'string', maxBytes: 64 },
  op: { no: 2, kind: 'string', maxBytes: 64 },
  units: { no: 3, kind: 'uint64' },
  flopsPerUnit: { no: 4, kind: 'double' },
  bytesInPerUnit: { no: 5, kind: 'double' },
  bytesInFixed: { no: 6, kind: 'double' },
  bytesOutPerUnit: { no: 7, kind: 'double' }
}, MAX_BID_MESSAGE_BYTES)

export const BidAnswerCodec = messageCodec<BidAnswer>('BidAnswer', {
  accept: { no: 1, kind: 'bool' },
  units: { no: 2, kind: 'uint64' },
  unitsPerSecond: { no: 3, kind: 'double' },
  startDelayMs: { no: 4, kind: 'double' },
  slots: { no: 5, kind: 'uint32' },
  reason: { no: 6, kind: 'string', maxBytes: 512 }
}, MAX_BID_MESSAGE_BYTES)

const finiteNonNegative = (n: number): boolean => Number.isFinite(n) && n >= 0

export function validateBidRequest (req: BidRequest): BidRequest {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(req.jobId)) throw new ProtocolError('bid request: job id is not a plain id', 'ERR_BAD_BID')
  if (req.units < 1) throw new ProtocolError('bid request: a job has at least one unit', 'ERR_BAD_BID')
  for (const k of ['flopsPerUnit', 'bytesInPerUnit', 'bytesInFixed', 'bytesOutPerUnit'] as const) {
    if (!finiteNonNegative(req[k])) throw new ProtocolError(`bid request: ${k} is not a finite non-negative number`, 'ERR_BAD_BID')
  }
  return req
}

export function validateBidAnswer (a: BidAnswer): BidAnswer {
  if (a.accept && (!(a.unitsPerSecond > 0) || !Number.isFinite(a.unitsPerSecond) || a.units < 1 || a.slots < 1 || !finiteNonNegative(a.startDelayMs))) {
    throw new ProtocolError('bid answer: an accepting bid needs units >= 1, slots >= 1 and a finite positive rate', 'ERR_BAD_BID')
  }
  return { ...a, reason: peerText(a.reason) }
}

export type Bidder = (req: BidRequest, from: PeerId) => BidAnswer

/** Answers one call for bids on an open stream (the protocol handler's body). */
export async function handleBidStream (stream: Stream, from: PeerId, bidder: Bidder, log: Logger, guard: PeerGuard = OPEN_GUARD): Promise<void> {
  const peer = from.toString()
  const admission = guard.admit(peer, 'bid')
  if (admission === 'banned') {
    stream.abort(new ProtocolError('peer is banned', 'ERR_PEER_BANNED'))
    return
  }
  const lp = lpStream(stream, { maxDataLength: MAX_BID_MESSAGE_BYTES })
  const signal = AbortSignal.timeout(BID_TIMEOUT_MS)
  try {
    const frame = await lp.read({ signal })
    // Over its rate: a declining answer, without decoding the request or asking the bidder.
    const answer = admission === 'limited'
      ? { accept: false, units: 0, unitsPerSecond: 0, startDelayMs: 0, slots: 0, reason: RATE_LIMITED_REASON }
      : bidder(validateBidRequest(BidRequestCodec.decode(frame.subarray())), from)
    await lp.write(BidAnswerCodec.encode(answer), { signal })
    await stream.close({ signal })
  } catch (err) {
    log.debug({ peer, code: errorCode(err), err: errorMessage(err) }, 'bid request dropped')
    if (isMalformed(err)) guard.strike(peer, 'bid')
    stream.abort(err instanceof Error ? err : new Error(String(err)))
  }
}

/** Serves bids from the node's own state through `bidder`. */
export async function registerBidHandler (libp2p: Libp2p, bidder: Bidder, log: Logger, guard?: PeerGuard): Promise<void> {
  await libp2p.handle(BID_PROTOCOL, async (stream: Stream, connection: Connection) => {
    await handleBidStream(stream, connection.remotePeer, bidder, log, guard)
  }, { maxInboundStreams: MAX_INBOUND_BID_STREAMS, runOnLimitedConnection: true })
}

/** Sends a call for bids on an open stream and reads the answer. */
export async function bidOverStream (stream: Stream, req: BidRequest, signal?: AbortSignal): Promise<BidAnswer> {
  const timeout = AbortSignal.timeout(BID_TIMEOUT_MS)
  const sig = signal === undefined ? timeout : AbortSignal.any([signal, timeout])
  try {
    const lp = lpStream(stream, { maxDataLength: MAX_BID_MESSAGE_BYTES })
    await lp.write(BidRequestCodec.encode(req), { signal: sig })
    const answer = validateBidAnswer(BidAnswerCodec.decode((await lp.read({ signal: sig })).subarray()))
    await stream.close({ signal: sig }).catch(() => {})
    return answer
  } catch (err) {
    stream.abort(err instanceof Error ? err : new Error(String(err)))
    throw err
  }
}

/** Asks one peer for a bid; throws on a failed, slow or malformed answer. */
export async function requestBid (libp2p: Libp2p, peer: PeerId, req: BidRequest, signal?: AbortSignal): Promise<BidAnswer> {
  const timeout = AbortSignal.timeout(BID_TIMEOUT_MS)
  const sig = signal === undefined ? timeout : AbortSignal.any([signal, timeout])
  // Over the direct connection where there is one (a NATed peer has dialed us), else through a relay.
  const connection = await directConnection(libp2p, peer, sig)
  const stream = await connection.newStream(BID_PROTOCOL, { signal: sig, runOnLimitedConnection: true })
  return await bidOverStream(stream, req, signal)
}
