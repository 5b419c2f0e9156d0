import { describe, expect, it } from 'vitest'
import { DEFAULT_CONNECTION_BOUNDS, checkConnectionBounds, planConnections, sample } from '../../src/node/connection-keeper.ts'
import type { PeerConnections } from '../../src/node/connection-keeper.ts'

const bounds = { min: 4, max: 8, idleMs: 1000 }
const NOW = 100_000

/** A peer connected for a while, idle, in no job. */
const peer = (i: number, over: Partial<PeerConnections> = {}): PeerConnections => ({
  peer: `p${i}`, outbound: false, inbound: true, own: false, busy: false, since: NOW - 60_000 + i, mesh: false, pinned: false, ...over
})

describe('connection bounds', () => {
  it('takes the defaults and refuses bounds out of range with a code', () => {
    expect(checkConnectionBounds({})).toEqual(DEFAULT_CONNECTION_BOUNDS)
    for (const bad of [{ min: 0 }, { max: 1 }, { min: 20, max: 10 }, { idleMs: 10 }, { min: 1.5 }]) {
      expect(() => checkConnectionBounds(bad)).toThrow(expect.objectContaining({ code: 'ERR_BAD_CONNECTION_BOUNDS' }))
    }
  })

  it('dials up to min own connections, counting bootstrap peers and fresh ones', () => {
    expect(planConnections([], bounds, NOW)).toEqual({ close: [], dial: 4, outsideJobs: 0 })
    const conns = [peer(1, { own: true, outbound: true, inbound: false }), peer(2, { pinned: true, outbound: true, inbound: false }), peer(3, { own: true, outbound: true, inbound: false, since: NOW - 10 })]
    expect(planConnections(conns, bounds, NOW).dial).toBe(1)
  })

  it('keeps a small mesh whole: nothing closes at or below max', () => {
    const conns = Array.from({ length: 8 }, (_, i) => peer(i, i < 4 ? { own: true, outbound: true, inbound: false } : {}))
    expect(planConnections(conns, bounds, NOW)).toEqual({ close: [], dial: 0, outsideJobs: 8 })
  })

  it('past max closes the newest inbound first, never a mesh or bootstrap peer, and never a job connection', () => {
    const conns = [
      ...Array.from({ length: 4 }, (_, i) => peer(i, { own: true, outbound: true, inbound: false })),
      ...Array.from({ length: 8 }, (_, i) => peer(10 + i)),
      peer(30, { mesh: true, since: NOW - 5 }),
      peer(31, { pinned: true, since: NOW - 5 }),
      peer(32, { busy: true, since: NOW - 5 }),
      peer(33, { lastJobUseAt: NOW - 500, since: NOW - 4 })
    ]
    const plan = planConnections(conns, bounds, NOW)
    // 14 outside jobs (two are in jobs); 6 must go. The bootstrap peer counts in the own set,
    // so one own peer is beyond min (the youngest, p3); then the five newest plain inbound ones.
    expect(plan.close.sort()).toEqual(['p13', 'p14', 'p15', 'p16', 'p17', 'p3'])
    expect(plan.outsideJobs).toBe(8)
    expect(plan.dial).toBe(0)
  })

  it("closes a finished job's connections once idle, but not while fresh or in use", () => {
    const own = Array.from({ length: 4 }, (_, i) => peer(i, { own: true, outbound: true, inbound: false }))
    const jobDone = peer(20, { outbound: true, inbound: false, lastJobUseAt: NOW - 5000 })
    const jobRecent = peer(21, { outbound: true, inbound: false, lastJobUseAt: NOW - 10 })
    const jobFresh = peer(22, { outbound: true, inbound: false, lastJobUseAt: NOW - 5000, since: NOW - 10 })
    const dialedByBoth = peer(23, { outbound: true, inbound: true, lastJobUseAt: NOW - 5000 })
    expect(planConnections([...own, jobDone, jobRecent, jobFresh, dialedByBoth], bounds, NOW).close).toEqual(['p20'])
  })

  it('samples without duplicates, at most what there is', () => {
    let seed = 1
    const random = (): number => { seed = (seed * 16807) % 2147483647; return seed / 2147483647 }
    const picked = sample(Array.from({ length: 50 }, (_, i) => i), 10, random)
    expect(new Set(picked).size).toBe(10)
    expect(sample([1, 2, 3], 10, random).sort()).toEqual([1, 2, 3])
  })
})
