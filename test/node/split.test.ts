import { describe, expect, it } from 'vitest'
import { apportion, planShards } from '../../src/node/jobs/split.ts'
import type { PlannedShard, SplitBid } from '../../src/node/jobs/split.ts'

function covers (shards: PlannedShard[], units: number): void {
  const seen = new Uint8Array(units)
  for (const s of shards) {
    expect(s.end).toBeGreaterThan(s.start)
    for (let u = s.start; u < s.end; u++) seen[u]!++
  }
  expect([...seen].every(c => c === 1)).toBe(true)
  expect(shards.map(s => s.index)).toEqual(shards.map((_, i) => i))
}

const bid = (peer: string, unitsPerSecond: number, maxUnits = Infinity): SplitBid => ({ peer, unitsPerSecond, maxUnits })

describe('split', () => {
  it('covers every unit exactly once for many sizes and bid mixes', () => {
    const mixes: SplitBid[][] = [
      [bid('a', 1)],
      [bid('a', 1), bid('b', 1), bid('c', 1)],
      [bid('a', 10), bid('b', 1), bid('c', 3.7)],
      [bid('a', 0.001), bid('b', 1000)],
      [bid('a', 5, 3), bid('b', 1), bid('c', 1, 10)]
    ]
    for (const bids of mixes) {
      for (const units of [1, 2, 3, 5, 7, 37, 100, 1001, 4097]) {
        const cap = bids.reduce((s, b) => s + b.maxUnits, 0)
        if (cap < units) continue
        covers(planShards(units, bids), units)
      }
    }
  })

  it('follows the bids: shares proportional to rate within one unit', () => {
    const shares = apportion(1000, [bid('a', 3), bid('b', 1), bid('c', 1)])
    expect(shares).toEqual([600, 200, 200])
    const odd = apportion(1001, [bid('a', 2), bid('b', 1)])
    expect(odd.reduce((a, b) => a + b)).toBe(1001)
    expect(Math.abs((odd[0] ?? 0) - 2 * 1001 / 3)).toBeLessThan(1)
  })

  it('makes at least two shards per peer when units allow, each cut for its bidder', () => {
    const shards = planShards(37, [bid('a', 1), bid('b', 2), bid('c', 1)])
    expect(shards).toHaveLength(6)
    for (const p of ['a', 'b', 'c']) expect(shards.filter(s => s.preferred === p)).toHaveLength(2)
    const units = (p: string): number => shards.filter(s => s.preferred === p).reduce((n, s) => n + s.end - s.start, 0)
    expect(units('b')).toBeGreaterThan(units('a'))
  })

  it('respects a cap and hands the rest to the others', () => {
    const shares = apportion(100, [bid('a', 100, 10), bid('b', 1), bid('c', 1)])
    expect(shares).toEqual([10, 45, 45])
  })

  it('gives a peer that bid nothing no shard, and fails when the bids cannot cover the job', () => {
    const shards = planShards(10, [bid('a', 1), bid('b', 0)])
    expect(shards.every(s => s.preferred === 'a')).toBe(true)
    expect(() => planShards(10, [bid('a', 1, 4), bid('b', 1, 5)])).toThrow(RangeError)
  })
})
