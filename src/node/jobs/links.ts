/**
 * What this node has measured of its links to each peer, across jobs: the
 * transfer rate of finished shard copies (bytes over wall time less compute).
 * Deadlines, backups and the split read it, so a peer behind 100 Mbit gets
 * fewer rows of a large matmul than one behind 10 Gbit with equal GFLOPS,
 * and a shard on a slow link is not cut off by a deadline meant for a LAN.
 */
import type { CopySample } from './pace.ts'

/**
 * Copies that moved less than this say more about round trips than about
 * bandwidth (a 64 KiB shard is one window): they are not measurements.
 */
export const LINK_MIN_SAMPLE_BYTES = 1024 * 1024

/** Weight of the newest sample in the moving average: a few shards follow a change of link, one outlier does not. */
export const LINK_EWMA_WEIGHT = 0.3

export class LinkMeter {
  private readonly rates = new Map<string, number>()

  /** Folds in one finished remote copy (queued copies waited for a slot: their time says nothing of the link). */
  record (sample: CopySample): void {
    if (sample.queued || sample.bytes < LINK_MIN_SAMPLE_BYTES || !(sample.ms >= 0) || !(sample.computeMs >= 0)) return
    // A transfer that took no measurable time still took a millisecond.
    const bps = sample.bytes / (Math.max(sample.ms - sample.computeMs, 1) / 1000)
    const old = this.rates.get(sample.peer)
    this.rates.set(sample.peer, old === undefined ? bps : old + LINK_EWMA_WEIGHT * (bps - old))
  }

  /** Bytes per second measured to `peer`, if any copy has told us. */
  measured (peer: string): number | undefined {
    return this.rates.get(peer)
  }

  /** Measured to `peer`, else the median of what other peers' links measured, else undefined. */
  estimate (peer: string): number | undefined {
    const own = this.rates.get(peer)
    if (own !== undefined) return own
    if (this.rates.size === 0) return undefined
    const sorted = [...this.rates.values()].sort((a, b) => a - b)
    const mid = Math.floor(sorted.length / 2)
    return sorted.length % 2 === 1 ? sorted[mid] : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2
  }

  /** Every measured link, bytes per second by peer id (GET /v1/node). */
  snapshot (): Record<string, number> {
    return Object.fromEntries([...this.rates].map(([peer, bps]) => [peer, Math.round(bps)]))
  }

  forget (peer: string): void {
    this.rates.delete(peer)
  }
}

/**
 * A peer's units per second for the split once its link is counted. A peer
 * holds one shard more than it has slots (one moving while the others
 * compute), so transfer overlaps compute: time per unit is the larger of
 * compute (1 / rate) and the unit's bytes over the link. A link faster than
 * the peer computes costs nothing; a slower one sets the pace. (The sum, as
 * first written, gave a peer on a fast veth 40% of a 2-node matmul instead
 * of half: 1.35x instead of 1.7x.)
 */
export function linkAdjustedRate (unitsPerSecond: number, bytesPerUnit: number, linkBytesPerSecond: number | undefined): number {
  if (!(unitsPerSecond > 0) || linkBytesPerSecond === undefined || !(linkBytesPerSecond > 0) || !(bytesPerUnit > 0)) return unitsPerSecond
  return 1 / Math.max(1 / unitsPerSecond, bytesPerUnit / linkBytesPerSecond)
}
