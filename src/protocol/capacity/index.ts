import { TopicValidatorResult } from '@libp2p/gossipsub'
import { errorMessage } from '../../errors.ts'
import { ADVERT_VERSION, AdvertCodec } from './advert.ts'
import { validateAdvert } from './validate.ts'
import { OPEN_GUARD } from '../peer-guard.ts'
import { CAPACITY_TOPIC } from './topic.ts'
import { MeshSizeEstimator, SAMPLE_WINDOW_MS, impliedEstimate, meanGapMs, publishProbability, regimeFor } from './sampling.ts'
import type { AdvertRegime } from './sampling.ts'
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
export { FULL_DIRECTORY_MAX, SAMPLED_ENTER, SAMPLED_ADVERTS_PER_SEC, GOSSIP_D, GOSSIP_D_LO, GOSSIP_D_HI, GOSSIP_D_LAZY, GOSSIP_FACTOR, SAMPLE_WINDOW_MS, MeshSizeEstimator, entryExpiryMs, impliedEstimate, meanGapMs, publishProbability, publishesEveryTick, regimeFor } from './sampling.ts'
export type { AdvertRegime, AuthorRate } from './sampling.ts'

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
  /** Draws for the sampled regime's publish decisions (tests fix them). */
  random?: () => number
}

export interface AdvertCounters {
  published: number
  accepted: number
  rejected: Record<RejectReason, number>
  lastAdvertBytes: number
  /** Ticks at which the sampled regime did not pick this node to publish. */
  skipped: number
  /** Adverts taken straight from a connected peer (the hello protocol). */
  direct: number
  /** 'full' (everyone hears everyone every interval) or 'sampled' (sampling.ts). */
  regime: AdvertRegime
  /** This node's estimate of the mesh's size, itself included. */
  meshEstimate: number
  /** The chance that this node publishes at a tick. */
  publishProbability: number
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
    lastAdvertBytes: 0,
    skipped: 0,
    direct: 0,
    regime: 'full',
    meshEstimate: 1,
    publishProbability: 1
  }

  private readonly components: CapacityServiceComponents
  private readonly intervalMs: number
  private readonly local: () => LocalCapacity
  private seq = 0
  private timer?: NodeJS.Timeout
  private changeTimer?: NodeJS.Timeout
  private lastPublishAt = 0
  private running = false
  private readonly random: () => number
  private estimator = new MeshSizeEstimator(SAMPLE_WINDOW_MS, performance.now())
  /** What the peers we met directly said the mesh's size is (their mean gaps); the estimate's floor while its window fills. */
  private readonly priors = new Map<string, number>()
  /** Set once this node has either met a peer directly or ticked once: until then it does not know its regime. */
  private settled = false
  /** Whether one of our adverts has reached a peer: until then this node is a newcomer the mesh has not heard. */
  private heard = false
  /** Slots and operators as last advertised (poolChanged). */
  private poolSignature = ''

  constructor (components: CapacityServiceComponents, init: CapacityServiceInit) {
    this.components = components
    this.intervalMs = init.intervalMs ?? DEFAULT_ADVERT_INTERVAL_MS
    this.local = init.local
    this.random = init.random ?? Math.random
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
    this.estimator = new MeshSizeEstimator(SAMPLE_WINDOW_MS, performance.now())
    this.timer = setInterval(() => { this.tick() }, this.intervalMs)
    // No advert at start: nobody is subscribed yet to hear it, and a newcomer to a
    // large mesh must not broadcast before it knows the regime. The peers it connects
    // to learn it by hello, the rest from the first tick that picks it.
  }

  /** The mesh's size as this node sees it, itself included. */
  meshEstimate (): number {
    const now = performance.now()
    const priors = [...this.priors.values()].sort((a, b) => a - b)
    const prior = priors.length > 0 ? priors[Math.floor(priors.length / 2)] ?? 0 : 0
    const fromAdverts = this.estimator.estimate(now, prior)
    return this.counters.regime === 'full' ? Math.max(fromAdverts, this.components.directory.size + 1) : fromAdverts
  }

  /** The regime and publish probability for the next tick, from the current estimate. */
  private assess (): number {
    const estimate = this.meshEstimate()
    this.counters.meshEstimate = Math.round(estimate)
    this.counters.regime = regimeFor(estimate, this.counters.regime)
    this.counters.publishProbability = publishProbability(this.counters.regime, estimate, this.intervalMs)
    return this.counters.publishProbability
  }

  private tick (): void {
    this.settled = true
    const p = this.assess()
    if (p >= 1 || this.random() < p) this.publish()
    else this.counters.skipped++
  }

  /**
   * An advert a connected peer handed us itself (the hello protocol): the
   * connection proves its author, so it passes the same checks as a gossiped
   * one with the connection's peer as signer.
   */
  admitDirect (from: PeerId, bytes: Uint8Array): TopicValidatorResult {
    if ((this.components.guard ?? OPEN_GUARD).isBanned(from.toString())) return TopicValidatorResult.Ignore
    const verdict = validateAdvert(bytes, { from, now: Date.now(), lastSeq: this.components.directory.lastSeq(from.toString()) })
    if (!verdict.ok) {
      if (verdict.reason === 'replayed') return TopicValidatorResult.Ignore
      return this.rejected(verdict.reason, from, verdict.message)
    }
    this.counters.direct++
    const prior = impliedEstimate(verdict.capacity)
    this.priors.set(verdict.capacity.peerId, prior)
    if (this.priors.size > 64) this.priors.delete(this.priors.keys().next().value as string)
    this.settled = true
    this.components.directory.upsert(verdict.capacity)
    // A newcomer's first neighbour can carry its advert to the whole mesh now (full regime only;
    // the sampled one waits for its tick). The neighbour itself has nothing new to tell the mesh.
    if (!this.heard) this.changed()
    return TopicValidatorResult.Accept
  }

  /**
   * A newcomer's first advert reaches nobody until a peer has subscribed, and
   * the next is up to an interval away. In the full regime, advertise as soon
   * as the first subscriber is there (coalesced like any change), so the mesh
   * knows a newcomer within a round trip. The peers it connects to have its
   * advert by hello, and it theirs, so they need not advertise for it (that
   * was a broadcast per connection per join). The sampled regime waits for
   * its tick.
   */
  private readonly onSubscription = (evt: CustomEvent<{ subscriptions: Array<{ topic: string, subscribe: boolean }> }>): void => {
    // Only our own first advert waits on a subscriber: a newcomer that subscribes got ours by hello.
    if (!this.heard && evt.detail.subscriptions.some(s => s.topic === CAPACITY_TOPIC && s.subscribe)) this.changed()
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

  /**
   * The pool changed. Only what the node can do is worth gossip now: its
   * slots (a worker died or came back) and its operators. Its load is not:
   * every shard start and end flips it, at 25 busy nodes that was hundreds of
   * adverts a second, each checked by every node, and a call for bids reads
   * the fresh load anyway. The next tick carries the load.
   */
  poolChanged (pool?: { slots: number, operators: readonly string[] }): void {
    // Every shard start and end lands here: the caller passes what it has rather than the whole capacity (addresses and all).
    const c = pool ?? this.local()
    const signature = `${c.slots}/${c.operators.join(',')}`
    if (signature === this.poolSignature) return
    const first = this.poolSignature === ''
    this.poolSignature = signature
    if (!first) this.changed()
  }

  /** Something in the local capacity changed: advertise soon, coalescing bursts. */
  changed (): void {
    // Only the full regime advertises changes; a sampled mesh's bids carry the fresh load.
    if (!this.running || !this.settled || this.counters.regime !== 'full' || this.changeTimer !== undefined) return
    const wait = Math.max(0, this.lastPublishAt + MIN_CHANGE_PUBLISH_GAP_MS - performance.now())
    this.changeTimer = setTimeout(() => {
      this.changeTimer = undefined
      if (this.assess() >= 1) this.publish()
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
      bulkPort: c.bulkPort ?? 0,
      meanGapMs: meanGapMs(this.intervalMs, this.counters.publishProbability),
      intervalMs: this.intervalMs
    })
  }

  private publish (): void {
    if (!this.running) return
    this.lastPublishAt = performance.now()
    const bytes = this.encodeAdvert()
    this.counters.lastAdvertBytes = bytes.byteLength
    this.components.pubsub.publish(CAPACITY_TOPIC, bytes).then((result) => {
      this.counters.published++
      if (result.recipients.length > 0) this.heard = true
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
    this.estimator.observe(verdict.capacity.peerId, verdict.capacity, performance.now())
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
