/**
 * What one copy of a shard should cost on a given peer, learned from this
 * job's finished copies. Backups judge a running copy against this, not
 * against the job's fastest copies: a remote copy carries its inputs and
 * its result over a link that a local copy never touches, so measuring it
 * against the coordinator's own pace makes every healthy remote shard look
 * like a straggler.
 *
 * A copy's cost is compute plus transfer:
 * - compute: the peer's bid (per slot), scaled by how far the job's
 *   finished copies were from their bids (calibration is noisy, and peers
 *   sharing cores run slower than they measured alone); before any copy
 *   finished, the bid. Not the peer's own past pace: a peer that has turned
 *   slow would then look on time, and its later copies would never get a
 *   backup. The median over all the job's copies is the healthy pace.
 * - transfer (remote peers only): bytes at the rate measured on that peer's
 *   finished copies (wall time less compute); before that, at the rate the
 *   job's other remote peers showed; before any, at an assumed slow LAN.
 */

/**
 * The link rate assumed before any copy of the job has come back from a
 * peer: a slow LAN (100 Mb/s-class links and Wi-Fi give 10-40 MB/s).
 * Erring slow delays a backup by one copy's time at worst; erring fast
 * backs up healthy copies on every real link.
 */
export const ASSUMED_LINK_BYTES_PER_SECOND = 20e6

/** A finished copy, as the coordinator saw it. */
export interface CopySample {
  peer: string
  units: number
  /** Bytes it moved: inputs out, partial back, and shared inputs fetched for it. */
  bytes: number
  /** From send to partial. */
  ms: number
  /** What the peer reported it spent computing. */
  computeMs: number
  /** Sent while the peer's slots were busy: its wall time includes a wait, so it says nothing of the link. */
  queued: boolean
}

/** What the model needs to know of a peer from its bid. */
export interface PeerTerms {
  /** Units per second for the whole peer (all slots). */
  rate: number
  slots: number
  local: boolean
}

export interface CopyEstimate {
  computeMs: number
  transferMs: number
  totalMs: number
}

/** Bytes moved and transfer time over some finished copies. */
interface LinkSum { bytes: number, ms: number, copies: number }

/**
 * Folds each finished copy in as it arrives: backups ask for estimates
 * every BACKUP_CHECK_MS for every running copy and idle peer, on the event
 * loop, so an estimate reads running sums and a cached median, never the
 * job's whole history.
 */
export class PaceModel {
  private readonly peers: ReadonlyMap<string, PeerTerms>
  /** Each finished copy's ms per unit over what its peer's bid promised. */
  private readonly factors: number[] = []
  private factor?: number
  private readonly links = new Map<string, LinkSum>()
  private readonly allLinks: LinkSum = { bytes: 0, ms: 0, copies: 0 }

  /** What earlier jobs measured of a peer's link, bytes per second (used before this job has its own figure). */
  private readonly prior: (peer: string) => number | undefined

  constructor (peers: ReadonlyMap<string, PeerTerms>, prior: (peer: string) => number | undefined = () => undefined) {
    this.peers = peers
    this.prior = prior
  }

  record (sample: CopySample): void {
    if (sample.units <= 0 || !(sample.ms >= 0) || !(sample.computeMs >= 0)) return
    const terms = this.peers.get(sample.peer)
    const expected = this.bidMsPerUnit(terms)
    if (expected > 0) {
      this.factors.push((sample.computeMs / sample.units) / expected)
      this.factor = undefined
    }
    if (sample.queued || terms?.local === true || sample.bytes <= 0) return
    const link = this.links.get(sample.peer) ?? { bytes: 0, ms: 0, copies: 0 }
    this.links.set(sample.peer, link)
    for (const sum of [link, this.allLinks]) {
      sum.bytes += sample.bytes
      sum.ms += Math.max(sample.ms - sample.computeMs, 0)
      sum.copies++
    }
  }

  /** What `units` units moving `bytes` bytes should take on `peer`. */
  estimate (peer: string, units: number, bytes: number): CopyEstimate {
    const terms = this.peers.get(peer)
    const computeMs = units * this.bidMsPerUnit(terms) * this.jobFactor()
    const transferMs = terms?.local === true ? 0 : bytes / this.bytesPerMs(peer)
    return { computeMs, transferMs, totalMs: computeMs + transferMs }
  }

  /** A single shard runs on one slot: the bid's whole-peer rate divided by its slots. */
  private bidMsPerUnit (terms: PeerTerms | undefined): number {
    if (terms === undefined || !(terms.rate > 0)) return 0
    return 1000 * Math.max(terms.slots, 1) / terms.rate
  }

  /** How far finished copies were from what their peers bid: one factor for the job (1 before any finished). */
  private jobFactor (): number {
    if (this.factors.length === 0) return 1
    this.factor ??= median(this.factors)
    return this.factor
  }

  private bytesPerMs (peer: string): number {
    // A copy whose transfer took no measurable time still took a millisecond.
    const rate = (sum: LinkSum): number => sum.bytes / Math.max(sum.ms, sum.copies)
    const own = this.links.get(peer)
    if (own !== undefined) return rate(own)
    const before = this.prior(peer)
    if (before !== undefined && before > 0) return before / 1000
    if (this.allLinks.copies > 0) return rate(this.allLinks)
    return ASSUMED_LINK_BYTES_PER_SECOND / 1000
  }
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? (sorted[mid] ?? 0) : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2
}
