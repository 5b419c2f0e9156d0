import { describe, expect, it } from 'vitest'
import { LINK_MIN_SAMPLE_BYTES, LinkMeter, linkAdjustedRate } from '../../src/node/jobs/links.ts'
import { apportion } from '../../src/node/jobs/split.ts'

const MB = 1e6

describe('link meter', () => {
  it('measures bytes over wall time less compute, and ignores copies too small or queued to say anything', () => {
    const m = new LinkMeter()
    m.record({ peer: 'a', units: 10, bytes: 100 * MB, ms: 1200, computeMs: 200, queued: false })
    expect(m.measured('a')).toBeCloseTo(100 * MB, -3)
    m.record({ peer: 'b', units: 10, bytes: LINK_MIN_SAMPLE_BYTES - 1, ms: 1000, computeMs: 0, queued: false })
    m.record({ peer: 'c', units: 10, bytes: 100 * MB, ms: 9000, computeMs: 0, queued: true })
    expect(m.measured('b')).toBeUndefined()
    expect(m.measured('c')).toBeUndefined()
    // A peer not measured yet is estimated from the others.
    expect(m.estimate('b')).toBeCloseTo(100 * MB, -3)
  })

  it('follows a link that changed within a few copies, not at once', () => {
    const m = new LinkMeter()
    m.record({ peer: 'a', units: 1, bytes: 100 * MB, ms: 1000, computeMs: 0, queued: false })
    m.record({ peer: 'a', units: 1, bytes: 10 * MB, ms: 1000, computeMs: 0, queued: false })
    const once = m.measured('a') ?? 0
    expect(once).toBeLessThan(100 * MB)
    expect(once).toBeGreaterThan(10 * MB)
    for (let i = 0; i < 10; i++) m.record({ peer: 'a', units: 1, bytes: 10 * MB, ms: 1000, computeMs: 0, queued: false })
    // 0.7^11 of the 90 MB/s step is left: under 2 MB/s.
    expect(m.measured('a')).toBeLessThan(12 * MB)
  })
})

describe('the split counts links', () => {
  it('a peer behind 100 Mbit gets fewer rows of a transfer-heavy job than one behind 10 Gbit with equal compute', () => {
    // A 16384x4096 @ 4096x4096 matmul row: 16 KiB in and 16 KiB out; both peers compute 1000 rows/s.
    const bytesPerRow = 2 * 4096 * 4
    const slow = linkAdjustedRate(1000, bytesPerRow, 12.5 * MB)
    const fast = linkAdjustedRate(1000, bytesPerRow, 1250 * MB)
    // Transfer overlaps compute: 2.6 ms a row on the slow link sets its pace; 0.026 ms on the fast one costs nothing.
    expect(1000 / slow).toBeCloseTo(bytesPerRow / 12.5e3, 5)
    expect(fast).toBe(1000)
    const [toSlow, toFast] = apportion(16384, [{ peer: 's', unitsPerSecond: slow, maxUnits: 16384 }, { peer: 'f', unitsPerSecond: fast, maxUnits: 16384 }])
    expect((toSlow ?? 0) + (toFast ?? 0)).toBe(16384)
    expect(toFast ?? 0).toBeGreaterThan(2.5 * (toSlow ?? 0))
  })

  it('leaves the rate alone without a measured link or without bytes per unit', () => {
    expect(linkAdjustedRate(1000, 32768, undefined)).toBe(1000)
    expect(linkAdjustedRate(1000, 0, 1 * MB)).toBe(1000)
  })
})
