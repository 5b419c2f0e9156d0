import { TopicValidatorResult } from '@libp2p/gossipsub'
import { errorMessage } from '../../errors.ts'
import { ADVERT_VERSION, AdvertCodec } from './advert.ts'
import { validateAdvert } from './validate.ts'
import { OPEN_GUARD } from '../peer-guard.ts'
import { CAPACITY_TOPIC } from './topic.ts'
import type { PeerGuard } from '../peer-guard.ts'
import type { RejectReason } from './validate.ts'
import type { PeerDirectory } from '../../node/peer-directory.ts'
import type { GossipSub, Message } from '@libp2p/gossipsub'
import type { PeerId, Startable } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'
import type { Logger } from 'pino'

export { AdvertCodec, ADVERT_VERSION, MAX_ADVERT_BYTES } from './advert.ts'
export type { Advert } from './advert.ts'
export { validateAdvert, MAX_CLOCK_SKEW_MS } from './validate.ts'
export { CAPACITY_TOPIC } from './topic.ts'
export { capacityScoreParams, capacityTopicScoreParams, capacityScoreThresholds, SubnetSet, COLOCATION_WHITELIST, INVALID_ADVERT_WEIGHT, INVALID_ADVERT_HALF_LIFE_MS, GOSSIP_THRESHOLD, PUBLISH_THRESHOLD, GRAYLIST_THRESHOLD, CAPACITY_TOPIC_SCORE_CAP } from './score.ts'
export type { PeerCapacity, RejectReason, AdvertVerdict } from './validate.ts'

/**
 * Rejected adverts that are the sender's fault and count as strikes against
 * it (a ban past STRIKE_THRESHOLD). Not strikes: 'clock' (either side's
 * clock may be the wrong one: a node whose own clock is off would otherwise
 * ban the whole mesh), 'version' (a rolling upgrade is not an attack) and
 * 'replayed' (reordering is normal on a gossip mesh; it is only ignored).
 */
export const STRIKE_REASONS: ReadonlySet<RejectReason> = new Set<RejectReason>(['oversized', 'garbage', 'spoofed', 'invalid'])

/** DESIGN: adverts go out "every couple of seconds". */
export const DEFAULT_ADVERT_INTERVAL_MS = 2000

/** A peer is gone when its last advert is older than this many intervals. */
export const EXPIRY_INTERVALS = 3

/**
 * Change-driven adverts (a slot became busy) are coalesced over this window
 * so a burst of tiny shards does not become a burst of gossip.
 */
export const MIN_CHANGE_PUBLISH_GAP_MS = 100

/** What this node knows about itself, read fresh for every advert. */
export interface LocalCapacity {
  backend: string
  cores: number
  memTotalBytes: number
  memFreeBytes: number
  gpu?: { name: string, memoryBytes?: number }
  gflops: number
  slots: number
  busy: number
  queued: number
  operators: string[]
  addrs: Multiaddr[]
  /** The bulk channel's port; 0 or absent when this node has none. */
  bulkPort?: number
}

export interface CapacityServiceComponents {
  peerId: PeerId
  pubsub: GossipSub
  directory: PeerDirectory
  log: Logger
  /** Strikes for malformed adverts, and bans: a banned peer's adverts are ignored. */
  guard?: PeerGuard
}

export interface CapacityServiceInit {
  intervalMs?: number
  local: () => LocalCapacity
}

export interface AdvertCounters {
  published: number
  accepted: number
  rejected: Record<RejectReason, number>
  lastAdvertBytes: number
}

/**
 * Publishes this node's capacity on the gossip topic and admits other
 * peers' adverts into the directory through gossipsub's topic validator, so
 * a bad advert is neither delivered nor forwarded.
 */
export class CapacityService implements Startable {
  readonly counters: AdvertCounters = {
    published: 0,
    accepted: 0,
    rejected: { oversized: 0, garbage: 0, spoofed: 0, version: 0, invalid: 0, clock: 0, replayed: 0 },
    lastAdvertBytes: 0
  }

  private readonly components: CapacityServiceComponents
  private readonly intervalMs: number
  private readonly local: () => LocalCapacity
  private seq = 0
  private timer?: NodeJS.Timeout
  private changeTimer?: NodeJS.Timeout
  private lastPublishAt = 0
  private running = false

  constructor (components: CapacityServiceComponents, init: CapacityServiceInit) {
    this.components = components
    this.intervalMs = init.intervalMs ?? DEFAULT_ADVERT_INTERVAL_MS
    this.local = init.local
  }

  get expiryMs (): number {
    return this.intervalMs * EXPIRY_INTERVALS
  }

  start (): void {
    const { pubsub } = this.components
    pubsub.topicValidators.set(CAPACITY_TOPIC, (from, msg) => this.validate(from, msg))
    pubsub.subscribe(CAPACITY_TOPIC)
    pubsub.addEventListener('subscription-change', this.onSubscription)
    this.running = true
    this.timer = setInterval(() => { this.publish() }, this.intervalMs)
    this.publish()
  }

  /**
   * A peer that just subscribed to the topic has seen none of our adverts:
   * the one published at start reached nobody, and the next is up to an
   * interval away. Advertise now (coalesced like any change), so a newcomer
   * and the mesh know each other within a round trip of its subscription.
   */
  private readonly onSubscription = (evt: CustomEvent<{ subscriptions: Array<{ topic: string, subscribe: boolean }> }>): void => {
    if (evt.detail.subscriptions.some(s => s.topic === CAPACITY_TOPIC && s.subscribe)) this.changed()
  }

  stop (): void {
    this.running = false
    clearInterval(this.timer)
    clearTimeout(this.changeTimer)
    const { pubsub } = this.components
    pubsub.removeEventListener('subscription-change', this.onSubscription)
    pubsub.topicValidators.delete(CAPACITY_TOPIC)
    pubsub.unsubscribe(CAPACITY_TOPIC)
  }

  /** Something in the local capacity changed: advertise soon, coalescing bursts. */
  changed (): void {
    if (!this.running || this.changeTimer !== undefined) return
    const wait = Math.max(0, this.lastPublishAt + MIN_CHANGE_PUBLISH_GAP_MS - performance.now())
    this.changeTimer = setTimeout(() => {
      this.changeTimer = undefined
      this.publish()
    }, wait)
  }

  /** The advert this node would publish now (also used by tests and the API). */
  encodeAdvert (): Uint8Array {
    const c = this.local()
    // Wall-clock based so a restarted node (same key) is not taken for a replay.
    this.seq = Math.max(this.seq + 1, Date.now())
    return AdvertCodec.encode({
      version: ADVERT_VERSION,
      peerId: this.components.peerId.toMultihash().bytes,
      seq: this.seq,
      timestampMs: Date.now(),
      backend: c.backend,
      cores: c.cores,
      memTotalBytes: c.memTotalBytes,
      memFreeBytes: c.memFreeBytes,
      gpuName: c.gpu?.name ?? '',
      gpuMemBytes: c.gpu?.memoryBytes ?? 0,
      gflops: c.gflops,
      slots: c.slots,
      busy: c.busy,
      queued: c.queued,
      operators: c.operators,
      addrs: c.addrs.slice(0, 8).map(a => a.bytes),
      bulkPort: c.bulkPort ?? 0
    })
  }

  private publish (): void {
    if (!this.running) return
    this.lastPublishAt = performance.now()
    const bytes = this.encodeAdvert()
    this.counters.lastAdvertBytes = bytes.byteLength
    this.components.pubsub.publish(CAPACITY_TOPIC, bytes).then(() => {
      this.counters.published++
    }, (err: unknown) => {
      this.components.log.debug({ err: errorMessage(err) }, 'advert publish failed')
    })
  }

  private validate (from: PeerId, msg: Message): TopicValidatorResult {
    const guard = this.components.guard ?? OPEN_GUARD
    // A banned peer's adverts, first-hand or forwarded, neither enter the directory nor travel on.
    if (guard.isBanned(from.toString()) || (msg.type === 'signed' && guard.isBanned(msg.from.toString()))) {
      guard.dropped(from.toString())
      return TopicValidatorResult.Ignore
    }
    if (msg.type !== 'signed') {
      return this.rejected('spoofed', from, 'unsigned advert')
    }
    const verdict = validateAdvert(msg.data, {
      from: msg.from,
      now: Date.now(),
      lastSeq: this.components.directory.lastSeq(msg.from.toString())
    })
    if (!verdict.ok) {
      this.rejected(verdict.reason, from, verdict.message)
      // A reordered advert is normal on a gossip mesh; everything else is a fault of its sender.
      return verdict.reason === 'replayed' ? TopicValidatorResult.Ignore : TopicValidatorResult.Reject
    }
    this.counters.accepted++
    this.components.directory.upsert(verdict.capacity)
    return TopicValidatorResult.Accept
  }

  private rejected (reason: RejectReason, from: PeerId, message: string): TopicValidatorResult {
    this.counters.rejected[reason]++
    // The peer that delivered it: gossipsub forwards only what its own validator accepted.
    if (STRIKE_REASONS.has(reason)) this.components.guard?.strike(from.toString(), 'advert')
    this.components.log.debug({ reason, from: from.toString(), detail: message }, 'advert rejected')
    return TopicValidatorResult.Reject
  }
}
