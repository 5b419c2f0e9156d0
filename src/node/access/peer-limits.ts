/**
 * Fair limits per peer: a token bucket per peer and protocol for bid, shard
 * and blob requests, strikes for malformed frames and adverts, and a
 * cool-down ban once a peer collects too many. Bounded: at most
 * MAX_TRACKED_PEERS peers have buckets and strikes, at most
 * MAX_BANNED_PEERS are banned at once; the least recently seen go first.
 *
 * The ban is enforced three ways: the peer's connections are closed when it
 * is banned (and any new one as soon as it opens), the protocol handlers
 * drop its streams (`admit` answers 'banned'), and the capacity validator
 * ignores its adverts. `isBanned` is also what a connection gater calls to
 * refuse it before the muxer.
 */
import { TypedEventEmitter } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { errorMessage } from '../../errors.ts'
import type { Admission, GuardedProtocol, PeerGuard, StrikeSource } from '../../protocol/peer-guard.ts'
import type { Logger } from '../log.ts'
import type { PeerDirectory } from '../peer-directory.ts'
import type { Connection, Libp2p } from '@libp2p/interface'

/** A bucket's size (requests in a burst) and refill rate (requests per second, sustained). */
export interface RateLimit {
  burst: number
  perSecond: number
}

/**
 * Per peer and protocol. Where the numbers come from:
 * These bound the cost of a flood (each refused request is a stream the
 * node opens and closes), not honest throughput; how much work one
 * coordinator holds here at once is the JobManager's admission.
 * - bid: an honest coordinator asks a peer once per job (a training job
 *   once per round). A one-row job takes ~4 ms from submit to result on
 *   loopback (the overhead benchmark), so one coordinator running
 *   MAX_RUNNING_JOBS (4) of them back to back asks ~1,000 times a second:
 *   1,024/s with a burst of 2,048.
 * - shard: the tiny-shard benchmark moves ~1,400 shards a second to one
 *   peer today, and the goal for that path is ~3,000: 4,096/s with a burst
 *   of 4,096 (16 jobs' worth of MAX_SHARDS_PER_PEER).
 * - blob: a peer fetches each CID of a job once (SharedCache); a job names
 *   a handful (matmul's b, a model, a training round's weights), so tiny
 *   jobs back to back ask ~250 a second: 512/s with a burst of 1,024.
 * - allreduce: a round opens 2 (k - 1) part streams to each member plus its
 *   START; a 64-member group of step-mode rounds at ~20 a second is ~2,500
 *   a second from one peer: 4,096/s with a burst of 4,096.
 */
export const DEFAULT_RATE_LIMITS: Readonly<Record<GuardedProtocol, RateLimit>> = {
  bid: { burst: 2048, perSecond: 1024 },
  shard: { burst: 4096, perSecond: 4096 },
  blob: { burst: 1024, perSecond: 512 },
  allreduce: { burst: 4096, perSecond: 4096 }
}

/**
 * Malformed frames or adverts within STRIKE_WINDOW_MS that get a peer
 * banned. An honest peer of the same version sends none; a few are
 * tolerated so one corrupted frame from a buggy build does not cut a peer
 * off, while a peer that sends garbage on purpose is out within a second.
 */
export const STRIKE_THRESHOLD = 8

/** Strikes older than this are forgotten: a minute is ~30 advert intervals. */
export const STRIKE_WINDOW_MS = 60_000

/**
 * How long a banned peer is refused. Ten minutes: long enough that a peer
 * flooding garbage costs its operator a restart with a new key to get back
 * in (its old id stays refused), short enough that a fixed peer returns
 * without anyone having to intervene.
 */
export const BAN_MS = 10 * 60_000

/**
 * Peers with buckets and strikes at once. js-libp2p keeps at most 300
 * connections by default; 1,024 leaves room for churn, and a peer that is
 * evicted only gets a fresh (full) bucket, never a way around a ban.
 */
export const MAX_TRACKED_PEERS = 1024

/** Peers banned at once; past it the ban closest to expiry is dropped first. */
export const MAX_BANNED_PEERS = 1024

/** A classic token bucket on an injected clock (milliseconds). */
export class TokenBucket {
  private readonly burst: number
  private readonly perMs: number
  private tokens: number
  private last: number

  constructor (limit: RateLimit, now: number) {
    this.burst = limit.burst
    this.perMs = limit.perSecond / 1000
    this.tokens = limit.burst
    this.last = now
  }

  /** Takes one token if there is one. */
  take (now: number): boolean {
    // A clock that went backwards refills nothing, and never drains.
    this.tokens = Math.min(this.burst, this.tokens + Math.max(0, now - this.last) * this.perMs)
    this.last = Math.max(this.last, now)
    if (this.tokens < 1) return false
    this.tokens -= 1
    return true
  }
}

export interface PeerLimitsInit {
  rates?: Partial<Record<GuardedProtocol, RateLimit>>
  strikeThreshold?: number
  strikeWindowMs?: number
  banMs?: number
  maxPeers?: number
  maxBanned?: number
  /** Monotonic milliseconds; performance.now() by default. Tests inject one. */
  clock?: () => number
  /** Wall-clock milliseconds, only to report when a ban ends; Date.now() by default. */
  wallClock?: () => number
  log?: Logger
}

export interface PeerLimitsEvents {
  /** A peer collected too many strikes; `untilMs` is wall-clock time. */
  'peer:banned': CustomEvent<{ peer: string, untilMs: number, source: StrikeSource }>
}

/** What GET /v1/node shows as `misbehaving`. */
export interface MisbehaviourInfo {
  /** Malformed frames and adverts counted against peers, by where they arrived. */
  strikes: Record<StrikeSource, number>
  /** Peers refused now, with the wall-clock time their cool-down ends. */
  banned: Array<{ peer: string, untilMs: number }>
  /** Bans imposed since start. */
  bans: number
  /** Streams, connections and adverts of banned peers that were dropped. */
  refused: number
  /** Requests refused by the per-peer rate limits, by protocol. */
  rateLimited: Record<GuardedProtocol, number>
  /** Shards refused because their coordinator already held its share of this node. */
  overLimit: number
}

interface PeerState {
  buckets: Partial<Record<GuardedProtocol, TokenBucket>>
  /** Times of recent strikes, oldest first, at most strikeThreshold of them. */
  strikes: number[]
}

/**
 * The node's per-peer admission state. Implements the protocol handlers'
 * PeerGuard, and the JobManager reports shards it refused for being over a
 * coordinator's share through `overLimit`.
 */
export class PeerLimits extends TypedEventEmitter<PeerLimitsEvents> implements PeerGuard {
  private readonly rates: Record<GuardedProtocol, RateLimit>
  private readonly strikeThreshold: number
  private readonly strikeWindowMs: number
  private readonly banMs: number
  private readonly maxPeers: number
  private readonly maxBanned: number
  private readonly clock: () => number
  private readonly wallClock: () => number
  private readonly log?: Logger
  /** Least recently seen first (a Map keeps insertion order; a touch re-inserts). */
  private readonly peers = new Map<string, PeerState>()
  /** Peer -> monotonic time its ban ends. */
  private readonly bannedUntil = new Map<string, number>()
  private libp2p?: Libp2p
  private directory?: PeerDirectory
  readonly counters = {
    strikes: { bid: 0, shard: 0, blob: 0, allreduce: 0, advert: 0 } satisfies Record<StrikeSource, number>,
    bans: 0,
    refused: 0,
    rateLimited: { bid: 0, shard: 0, blob: 0, allreduce: 0 } satisfies Record<GuardedProtocol, number>,
    overLimit: 0
  }

  private readonly onConnection = (evt: CustomEvent<Connection>): void => {
    const conn = evt.detail
    if (!this.isBanned(conn.remotePeer.toString())) return
    this.counters.refused++
    conn.abort(new Error('peer is banned'))
  }

  constructor (init: PeerLimitsInit = {}) {
    super()
    this.rates = { ...DEFAULT_RATE_LIMITS, ...init.rates }
    this.strikeThreshold = init.strikeThreshold ?? STRIKE_THRESHOLD
    this.strikeWindowMs = init.strikeWindowMs ?? STRIKE_WINDOW_MS
    this.banMs = init.banMs ?? BAN_MS
    this.maxPeers = init.maxPeers ?? MAX_TRACKED_PEERS
    this.maxBanned = init.maxBanned ?? MAX_BANNED_PEERS
    this.clock = init.clock ?? (() => performance.now())
    this.wallClock = init.wallClock ?? Date.now
    this.log = init.log
  }

  /**
   * Enforces bans on a running host: a banned peer's connections are closed
   * at once and any new one as soon as it opens, and it leaves the directory
   * (so nothing here dials it again or sends it work).
   */
  attach (libp2p: Libp2p, directory?: PeerDirectory): void {
    this.libp2p = libp2p
    this.directory = directory
    libp2p.addEventListener('connection:open', this.onConnection)
  }

  detach (): void {
    this.libp2p?.removeEventListener('connection:open', this.onConnection)
    this.libp2p = undefined
    this.directory = undefined
  }

  admit (peer: string, protocol: GuardedProtocol): Admission {
    if (this.isBanned(peer)) {
      this.counters.refused++
      return 'banned'
    }
    const now = this.clock()
    const state = this.touch(peer)
    let bucket = state.buckets[protocol]
    if (bucket === undefined) {
      bucket = new TokenBucket(this.rates[protocol], now)
      state.buckets[protocol] = bucket
    }
    if (bucket.take(now)) return 'ok'
    this.counters.rateLimited[protocol]++
    return 'limited'
  }

  strike (peer: string, source: StrikeSource): void {
    this.counters.strikes[source]++
    if (this.isBanned(peer)) return
    const now = this.clock()
    const state = this.touch(peer)
    const recent = state.strikes.filter(t => now - t < this.strikeWindowMs)
    recent.push(now)
    state.strikes = recent.slice(-this.strikeThreshold)
    this.log?.debug({ peer, source, strikes: state.strikes.length }, 'peer strike')
    if (state.strikes.length >= this.strikeThreshold) this.ban(peer, source)
  }

  isBanned (peer: string): boolean {
    const until = this.bannedUntil.get(peer)
    if (until === undefined) return false
    if (this.clock() < until) return true
    this.bannedUntil.delete(peer)
    return false
  }

  dropped (): void {
    this.counters.refused++
  }

  /** Shards refused for being over a coordinator's share (counted by the JobManager). */
  overLimit (): void {
    this.counters.overLimit++
  }

  info (): MisbehaviourInfo {
    const now = this.clock()
    const wall = this.wallClock()
    const banned: MisbehaviourInfo['banned'] = []
    for (const [peer, until] of this.bannedUntil) {
      if (until > now) banned.push({ peer, untilMs: Math.round(wall + until - now) })
      else this.bannedUntil.delete(peer)
    }
    const c = this.counters
    return { strikes: { ...c.strikes }, banned, bans: c.bans, refused: c.refused, rateLimited: { ...c.rateLimited }, overLimit: c.overLimit }
  }

  private ban (peer: string, source: StrikeSource): void {
    const until = this.clock() + this.banMs
    this.bannedUntil.set(peer, until)
    this.counters.bans++
    this.peers.delete(peer)
    while (this.bannedUntil.size > this.maxBanned) {
      let soonest: string | undefined
      let at = Infinity
      for (const [p, u] of this.bannedUntil) if (u < at) { at = u; soonest = p }
      if (soonest === undefined) break
      this.bannedUntil.delete(soonest)
    }
    const untilMs = Math.round(this.wallClock() + this.banMs)
    this.log?.warn({ peer, source, untilMs }, 'peer banned')
    this.directory?.remove(peer, 'banned')
    const libp2p = this.libp2p
    if (libp2p !== undefined) {
      try {
        libp2p.hangUp(peerIdFromString(peer)).catch((err: unknown) => {
          this.log?.debug({ peer, err: errorMessage(err) }, 'hang-up failed')
        })
      } catch {}
    }
    this.safeDispatchEvent('peer:banned', { detail: { peer, untilMs, source } })
  }

  private touch (peer: string): PeerState {
    let state = this.peers.get(peer)
    if (state !== undefined) {
      this.peers.delete(peer)
    } else {
      state = { buckets: {}, strikes: [] }
    }
    this.peers.set(peer, state)
    while (this.peers.size > this.maxPeers) {
      const oldest = this.peers.keys().next()
      if (oldest.done === true) break
      this.peers.delete(oldest.value)
    }
    return state
  }
}
