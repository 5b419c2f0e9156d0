/**
 * How many adverts the mesh publishes as it grows.
 *
 * Every advert on the topic reaches every node, and each node receives about
 * D copies of it (gossipsub forwards along its mesh of degree D). With N nodes
 * publishing every interval T, a node therefore receives N x D adverts per T:
 * 200 nodes at 2 s, ~300 B and D = 6 is 180 KB/s of adverts per node, 10,000
 * nodes 9 MB/s. Stretching T does not help once joins dominate: at 5% churn
 * a minute, 10,000 nodes see 8 joins a second, and a broadcast per join alone
 * costs each node 8 x 300 x 6 = 14 KB/s.
 *
 * So the mesh has two regimes:
 *
 *  - full (up to FULL_DIRECTORY_MAX nodes, as before): every node publishes
 *    every interval and every node holds every other; a dead peer leaves after
 *    EXPIRY_INTERVALS intervals.
 *  - sampled (above SAMPLED_ENTER): the whole mesh publishes about
 *    SAMPLED_ADVERTS_PER_SEC adverts a second, whatever its size. Each node
 *    publishes at each tick with probability p = rate x T / N, so every node
 *    hears a fresh uniform random sample of the mesh: the peers heard in the
 *    last SAMPLE_WINDOW_MS, about FULL_DIRECTORY_MAX of them. A newcomer is
 *    known at once to the peers it connects to (the hello protocol), and to
 *    the rest of the mesh when a tick picks it.
 *
 * Nodes agree on p without coordination: each advert carries its author's
 * mean gap between adverts (T / p), and a node estimates N from the adverts
 * it heard in the window (a Horvitz-Thompson estimate: each advert counts
 * gap / window nodes), so the estimate is unbiased in either regime.
 */

/** The full directory's size: every node hears every other every interval. */
export const FULL_DIRECTORY_MAX = 64

/** Estimated mesh size above which a node switches to sampled adverts; back below FULL_DIRECTORY_MAX (hysteresis). */
export const SAMPLED_ENTER = 80

/**
 * Adverts per second the whole mesh publishes in the sampled regime. Each
 * costs every node about GOSSIP_D copies of ~330 B on the wire (the advert,
 * its signature, key and framing) plus an IHAVE id (~50 B) to each of
 * GOSSIP_D_LAZY peers in each of 3 gossip windows: ~1.8 KB per advert per
 * node. Half an advert a second keeps adverts under 1 KB/s per node, which
 * leaves room in the 2 KB/s that the scale goal allows for all control
 * traffic (connections' keep-alives, hellos, bids). Measured:
 * `npm run bench -- --only scale`; at 10,000 nodes: `scripts/scale-sim.ts`.
 */
export const SAMPLED_ADVERTS_PER_SEC = 0.5

/**
 * Gossipsub's mesh degree for the capacity topic, and its bounds: 4 (Dlo 3,
 * Dhi 8) rather than libp2p's 6, since every copy beyond the first is
 * redundancy a control message of a few hundred bytes needs little of, and
 * the publisher floods its own to every topic peer anyway.
 */
export const GOSSIP_D = 4
export const GOSSIP_D_LO = 3
export const GOSSIP_D_HI = 8
/** Peers each heartbeat's IHAVE gossip goes to (libp2p: 6). */
export const GOSSIP_D_LAZY = 3
/**
 * Share of the non-mesh peers that get IHAVE gossip besides (libp2p: 0.25,
 * which at 30 connections is ~7 peers a heartbeat, ~40% of a quiet node's
 * traffic in the bench). 0: exactly GOSSIP_D_LAZY. A publisher floods its
 * own advert to every topic peer, so gossip only repairs the rare loss.
 */
export const GOSSIP_FACTOR = 0

/**
 * How long a sampled advert stays in the directory: long enough that the
 * window holds about FULL_DIRECTORY_MAX peers at the sampled rate.
 */
export const SAMPLE_WINDOW_MS = Math.round(FULL_DIRECTORY_MAX / SAMPLED_ADVERTS_PER_SEC * 1000)

export type AdvertRegime = 'full' | 'sampled'

/** The regime a node with this mesh-size estimate should be in, given its current one. */
export function regimeFor (estimate: number, current: AdvertRegime): AdvertRegime {
  if (current === 'full') return estimate > SAMPLED_ENTER ? 'sampled' : 'full'
  return estimate < FULL_DIRECTORY_MAX ? 'full' : 'sampled'
}

/** Probability that a node publishes at one tick of its interval. */
export function publishProbability (regime: AdvertRegime, estimate: number, intervalMs: number): number {
  if (regime === 'full') return 1
  return Math.min(1, SAMPLED_ADVERTS_PER_SEC * intervalMs / 1000 / Math.max(estimate, 1))
}

/** An advert's mean gap: the time between its author's adverts on average. */
export function meanGapMs (intervalMs: number, p: number): number {
  return Math.round(intervalMs / Math.max(p, 1e-9))
}

/** What an advert says of its author's publishing: its mean gap and its interval (0s from older nodes: every tick). */
export interface AuthorRate {
  meanGapMs: number
  intervalMs: number
}

/** Whether the author publishes at every tick (the full regime). */
export function publishesEveryTick (a: AuthorRate): boolean {
  return a.meanGapMs === 0 || a.intervalMs === 0 || a.meanGapMs <= a.intervalMs * 1.01
}

/**
 * The mesh size an advert's author worked from: a sampled author publishes
 * with p = rate x T / N, so its gap T / p is N / rate. Zero for an author
 * that publishes every tick (it only says the mesh is small).
 */
export function impliedEstimate (a: AuthorRate): number {
  return publishesEveryTick(a) ? 0 : SAMPLED_ADVERTS_PER_SEC * a.meanGapMs / 1000
}

/**
 * How long a directory entry lives after its last advert: EXPIRY_INTERVALS of
 * its author's interval when it publishes every tick, the sample window when
 * it publishes rarely; never less than EXPIRY_INTERVALS of ours.
 */
export function entryExpiryMs (a: AuthorRate, ownIntervalMs: number, expiryIntervals: number): number {
  const full = expiryIntervals * Math.max(ownIntervalMs, a.intervalMs)
  return publishesEveryTick(a) ? full : Math.max(full, SAMPLE_WINDOW_MS)
}

/**
 * Mesh size from the adverts heard within a window, plus this node. An
 * author that publishes every tick counts once (distinct authors); a sampled
 * advert counts gap / window (its author is heard window / gap times on
 * average: a Horvitz-Thompson estimate). Memory is O(adverts in window).
 */
export class MeshSizeEstimator {
  private readonly heard: Array<{ at: number, weight: number }> = []
  private readonly everyTick = new Map<string, number>()
  private readonly windowMs: number
  private readonly startedAt: number

  constructor (windowMs = SAMPLE_WINDOW_MS, now = 0) {
    this.windowMs = windowMs
    this.startedAt = now
  }

  observe (author: string, a: AuthorRate, at: number): void {
    if (publishesEveryTick(a)) {
      this.everyTick.delete(author)
      this.everyTick.set(author, at)
    } else {
      this.heard.push({ at, weight: a.meanGapMs })
    }
    this.trim(at)
  }

  /**
   * The estimate at `now`. Before a whole window has passed the elapsed time
   * stands for it, and `prior` (what the peers we met said) is the floor,
   * since a window that has barely begun has heard few sampled authors.
   */
  estimate (now: number, prior = 0): number {
    this.trim(now)
    const elapsed = now - this.startedAt
    const span = Math.max(1, Math.min(this.windowMs, elapsed))
    let sum = this.everyTick.size
    for (const h of this.heard) sum += h.weight / span
    return elapsed >= this.windowMs ? sum + 1 : Math.max(sum + 1, prior)
  }

  private trim (now: number): void {
    let drop = 0
    while (drop < this.heard.length && (this.heard[drop]?.at ?? now) < now - this.windowMs) drop++
    if (drop > 0) this.heard.splice(0, drop)
    // Insertion order is arrival order (observe re-inserts), so the stale ones lead.
    for (const [author, at] of this.everyTick) {
      if (at >= now - this.windowMs) break
      this.everyTick.delete(author)
    }
  }
}
