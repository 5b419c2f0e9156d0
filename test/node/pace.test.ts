import { describe, expect, it } from 'vitest'
import { ASSUMED_LINK_BYTES_PER_SECOND, PaceModel } from '../../src/node/jobs/pace.ts'
import type { PeerTerms } from '../../src/node/jobs/pace.ts'

const peers = new Map<string, PeerTerms>([
  ['self', { rate: 2000, slots: 2, local: true }], // 1 ms per unit on one slot
  ['b', { rate: 500, slots: 1, local: false }], // 2 ms per unit
  ['c', { rate: 500, slots: 1, local: false }]
])

describe('pace model', () => {
  it('before any copy finished: the bid per slot, and bytes at the assumed link rate', () => {
    const m = new PaceModel(peers)
    expect(m.estimate('self', 100, 1e6)).toEqual({ computeMs: 100, transferMs: 0, totalMs: 100 })
    const b = m.estimate('b', 100, 20e6)
    expect(b.computeMs).toBeCloseTo(200, 9)
    expect(b.transferMs).toBeCloseTo(20e6 / ASSUMED_LINK_BYTES_PER_SECOND * 1000, 9)
  })

  it('scales a peer without copies by how far finished copies were from their bids', () => {
    const m = new PaceModel(peers)
    // The coordinator's copy took 3x its bid: peers sharing cores run slower than they measured alone.
    m.record({ peer: 'self', units: 100, bytes: 0, ms: 300, computeMs: 300, queued: false })
    expect(m.estimate('b', 100, 0).computeMs).toBeCloseTo(600, 9)
  })

  it('uses a peer\'s measured link once it has finished a copy, and the job\'s pace for compute; queued copies say nothing of the link', () => {
    const m = new PaceModel(peers)
    m.record({ peer: 'b', units: 100, bytes: 10e6, ms: 1100, computeMs: 100, queued: false }) // 10 MB in 1 s
    m.record({ peer: 'b', units: 100, bytes: 10e6, ms: 9100, computeMs: 100, queued: true }) // waited in b's queue
    const b = m.estimate('b', 50, 5e6)
    expect(b.computeMs).toBeCloseTo(50, 9)
    expect(b.transferMs).toBeCloseTo(500, 9)
    // c has no copy yet: b's measured link is the best guess for it, and b's 0.5x-of-bid pace.
    const c = m.estimate('c', 50, 5e6)
    expect(c.transferMs).toBeCloseTo(500, 9)
    expect(c.computeMs).toBeCloseTo(50, 9)
  })
})

describe('pace model and a peer that turned slow', () => {
  it('keeps judging its compute by the job\'s healthy pace, so its later copies still look late', () => {
    const m = new PaceModel(peers)
    // self and c compute at their bids; b took 5x its bid (a fault, a busy machine).
    m.record({ peer: 'self', units: 100, bytes: 0, ms: 100, computeMs: 100, queued: false })
    m.record({ peer: 'c', units: 100, bytes: 0, ms: 200, computeMs: 200, queued: false })
    m.record({ peer: 'b', units: 100, bytes: 0, ms: 1000, computeMs: 1000, queued: false })
    expect(m.estimate('b', 100, 0).computeMs).toBeCloseTo(200, 9)
  })
})
