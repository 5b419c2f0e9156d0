/**
 * What the protocol handlers ask of the node before they serve a peer, and
 * what they tell it about the peer afterwards. The node's implementation is
 * `PeerLimits` (src/node/access/peer-limits.ts); the handlers see only this,
 * so the protocol layer does not import the daemon.
 */
import { ProtocolError, TensormeshError } from '../errors.ts'

/** The request/response protocols that are rate-limited per peer. */
export type GuardedProtocol = 'bid' | 'shard' | 'blob' | 'allreduce'

/** Where a peer's malformed bytes showed up. */
export type StrikeSource = GuardedProtocol | 'advert'

/**
 * `ok`: serve it (a token was taken). `banned`: the peer is in its
 * cool-down; drop the stream without a word. `limited`: over its rate;
 * answer with the protocol's refusal.
 */
export type Admission = 'ok' | 'banned' | 'limited'

export interface PeerGuard {
  /** Called once per new stream, before anything is read from it. */
  admit: (peer: string, protocol: GuardedProtocol) => Admission
  /** The peer sent something malformed (see `isMalformed`). */
  strike: (peer: string, source: StrikeSource) => void
  isBanned: (peer: string) => boolean
  /** Something of a banned peer's was dropped without a stream to refuse (a gossiped advert). */
  dropped: (peer: string) => void
}

/** Lets everyone in and counts nothing: what a handler uses when no guard is given (unit tests). */
export const OPEN_GUARD: PeerGuard = {
  admit: () => 'ok',
  strike: () => {},
  isBanned: () => false,
  dropped: () => {}
}

/**
 * Whether a handler's failure is the peer's malformed bytes, and so a
 * strike against it: our decoders' and validators' ProtocolErrors (bad
 * header, oversize field, garbage) and the length-prefix decoder's frames
 * over the size limit. Not strikes: timeouts, resets and closed streams
 * (a peer that died or cancelled), declared sizes over this node's own
 * limits (LimitExceededError: an honest peer with other limits sends them),
 * and failures of a bulk transfer already under way (ERR_BULK*: a
 * coordinator that drops a losing backup copy cuts its transfer short).
 */
export function isMalformed (err: unknown): boolean {
  if (err instanceof ProtocolError) return !err.code.startsWith('ERR_BULK')
  const name = err instanceof Error ? err.name : ''
  return name === 'InvalidDataLengthError' || name === 'InvalidDataLengthLengthError'
}

/** The peer asked more often than its rate limit allows (bids, shards, blobs). */
export class RateLimitedError extends TensormeshError {
  constructor (message: string) {
    super('ERR_RATE_LIMITED', message)
  }
}
