/**
 * Splitting a job's units among the peers that bid for it: each peer's share
 * is proportional to its bid's rate (capped at the units it offered, the rest
 * handed on), and each share is cut into `shardsPerPeer` shards so that a
 * peer that finishes early can pull another's not-yet-started shard.
 */

export interface SplitBid {
  peer: string
  unitsPerSecond: number
  /** Most units this peer takes of the job. */
  maxUnits: number
}

export interface PlannedShard {
  index: number
  start: number
  end: number
  /** The peer this shard was cut for; others may take it when they run out. */
  preferred: string
}

/** DESIGN: more shards than peers so fast peers pull more; two each is the least that allows it. */
export const DEFAULT_SHARDS_PER_PEER = 2

/** Units per peer, proportional to rate, capped by maxUnits, summing to `units` when the caps allow. */
export function apportion (units: number, bids: SplitBid[]): number[] {
  const shares = bids.map(() => 0)
  let open = bids.map((_, i) => i).filter(i => (bids[i]?.unitsPerSecond ?? 0) > 0 && (bids[i]?.maxUnits ?? 0) > 0)
  let left = units
  // Water-filling: give proportional shares; peers that hit their cap drop out and the rest share what is left.
  while (left > 0 && open.length > 0) {
    const rate = open.reduce((s, i) => s + (bids[i]?.unitsPerSecond ?? 0), 0)
    const ideal = open.map(i => left * (bids[i]?.unitsPerSecond ?? 0) / rate)
    const capped = open.filter((i, k) => (ideal[k] ?? 0) >= (bids[i]?.maxUnits ?? 0) - (shares[i] ?? 0))
    if (capped.length > 0) {
      for (const i of capped) {
        const give = (bids[i]?.maxUnits ?? 0) - (shares[i] ?? 0)
        shares[i] = (shares[i] ?? 0) + give
        left -= give
      }
      open = open.filter(i => !capped.includes(i))
      continue
    }
    // Largest remainder, so integer shares sum exactly to what is left.
    const floors = ideal.map(Math.floor)
    let rest = left - floors.reduce((a, b) => a + b, 0)
    const order = open.map((_i, k) => ({ k, frac: (ideal[k] ?? 0) - (floors[k] ?? 0) })).sort((a, b) => b.frac - a.frac)
    for (const { k } of order) {
      if (rest <= 0) break
      floors[k] = (floors[k] ?? 0) + 1
      rest--
    }
    open.forEach((i, k) => { shares[i] = (shares[i] ?? 0) + (floors[k] ?? 0) })
    left = 0
  }
  return shares
}

/**
 * Contiguous shards covering [0, units) exactly once. Returns fewer shards when
 * units are few; throws when the bids cannot cover the job.
 */
export function planShards (units: number, bids: SplitBid[], shardsPerPeer = DEFAULT_SHARDS_PER_PEER): PlannedShard[] {
  const shares = apportion(units, bids)
  const covered = shares.reduce((a, b) => a + b, 0)
  if (covered < units) throw new RangeError(`bids cover ${covered} of ${units} units`)
  const shards: PlannedShard[] = []
  let start = 0
  bids.forEach((bid, i) => {
    const share = shares[i] ?? 0
    const pieces = Math.min(share, shardsPerPeer)
    for (let p = 0; p < pieces; p++) {
      // Even cut of the share into `pieces` parts.
      const size = Math.floor(share / pieces) + (p < share % pieces ? 1 : 0)
      shards.push({ index: shards.length, start, end: start + size, preferred: bid.peer })
      start += size
    }
  })
  return shards
}
