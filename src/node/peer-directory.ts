import { TypedEventEmitter } from '@libp2p/interface'
import type { PeerCapacity } from '../protocol/capacity/validate.ts'

/** A peer as this node sees it: its last advert and when it arrived. */
export interface PeerEntry {
  capacity: PeerCapacity
  /** Our monotonic clock (performance.now()) when the last advert arrived. */
  seenAt: number
}

export interface PeerDirectoryEvents {
  'peer:join': CustomEvent<PeerEntry>
  'peer:update': CustomEvent<PeerEntry>
  'peer:leave': CustomEvent<{ peerId: string, reason: string }>
}

/**
 * Most peers a directory holds. The full regime holds at most ~80 and the
 * sampled one about FULL_DIRECTORY_MAX plus the connected peers; the cap only
 * stops a flood of adverts from made-up identities from growing the map.
 */
export const MAX_DIRECTORY_ENTRIES = 1024

export interface PeerDirectoryInit {
  /** A peer whose last advert is older than this is gone. */
  expiryMs: number
  /** One entry's expiry, when it differs (a sampled advert lives a sample window); default expiryMs. */
  expiryOf?: (capacity: PeerCapacity) => number
  /**
   * Whether a peer is still there by other means (an open connection). A
   * sampled entry past its window stays while this holds: its author is
   * alive, only not picked to advertise, and a job may be using it.
   */
  alive?: (peerId: string) => boolean
  maxEntries?: number
  /** How often to look for expired peers; well under expiryMs so a dead peer leaves on time. */
  sweepMs?: number
  now?: () => number
}

/**
 * The peers this node has heard from. It holds only checked adverts; expiry
 * runs on a monotonic clock so a peer's wall clock cannot keep it alive.
 */
export class PeerDirectory extends TypedEventEmitter<PeerDirectoryEvents> {
  private readonly peers = new Map<string, PeerEntry>()
  private readonly expiryMs: number
  private readonly expiryOf?: (capacity: PeerCapacity) => number
  private readonly alive?: (peerId: string) => boolean
  private readonly maxEntries: number
  private readonly sweepMs: number
  private readonly now: () => number
  private timer?: NodeJS.Timeout

  constructor (init: PeerDirectoryInit) {
    super()
    this.expiryMs = init.expiryMs
    this.expiryOf = init.expiryOf
    this.alive = init.alive
    this.maxEntries = init.maxEntries ?? MAX_DIRECTORY_ENTRIES
    this.sweepMs = init.sweepMs ?? Math.max(50, Math.floor(init.expiryMs / 12))
    this.now = init.now ?? (() => performance.now())
  }

  start (): void {
    this.timer = setInterval(() => { this.sweep() }, this.sweepMs)
    this.timer.unref()
  }

  stop (): void {
    clearInterval(this.timer)
    this.timer = undefined
  }

  /** Highest sequence number accepted from a peer, for replay checks. */
  lastSeq (peerId: string): number | undefined {
    return this.peers.get(peerId)?.capacity.seq
  }

  upsert (capacity: PeerCapacity): void {
    const existing = this.peers.get(capacity.peerId)
    if (existing === undefined && this.peers.size >= this.maxEntries) this.evictOldest()
    const entry: PeerEntry = { capacity, seenAt: this.now() }
    this.peers.set(capacity.peerId, entry)
    this.safeDispatchEvent(existing === undefined ? 'peer:join' : 'peer:update', { detail: entry })
  }

  remove (peerId: string, reason: string): void {
    if (this.peers.delete(peerId)) {
      this.safeDispatchEvent('peer:leave', { detail: { peerId, reason } })
    }
  }

  get (peerId: string): PeerEntry | undefined {
    return this.peers.get(peerId)
  }

  has (peerId: string): boolean {
    return this.peers.has(peerId)
  }

  get size (): number {
    return this.peers.size
  }

  list (): PeerEntry[] {
    return [...this.peers.values()]
  }

  /** Milliseconds since a peer's last advert arrived. */
  ageMs (entry: PeerEntry): number {
    return this.now() - entry.seenAt
  }

  /** How long this entry lives after its last advert. */
  expiryFor (entry: PeerEntry): number {
    return this.expiryOf?.(entry.capacity) ?? this.expiryMs
  }

  /** Drops every peer whose last advert is older than its expiry (a sampled one only once its peer is gone too). */
  sweep (): void {
    const now = this.now()
    for (const [peerId, entry] of this.peers) {
      const expiry = this.expiryFor(entry)
      if (now - entry.seenAt <= expiry) continue
      if (expiry > this.expiryMs && this.alive?.(peerId) === true) continue
      this.remove(peerId, 'expired')
    }
  }

  private evictOldest (): void {
    let oldest: string | undefined
    let at = Infinity
    for (const [peerId, entry] of this.peers) {
      if (entry.seenAt < at) { at = entry.seenAt; oldest = peerId }
    }
    if (oldest !== undefined) this.remove(oldest, 'evicted')
  }
}
