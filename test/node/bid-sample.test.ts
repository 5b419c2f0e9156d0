import { describe, expect, it } from 'vitest'
import { BID_OVERSAMPLE, BID_ROUNDS, MAX_JOB_PEERS, bidOrder, candidateWeight, gatherBids, nextRound, wantedPeers } from '../../src/node/jobs/bid-sample.ts'
import type { BidCandidate } from '../../src/node/jobs/bid-sample.ts'

const peer = (i: number, gflops: number, busy = 0): BidCandidate => ({ peerId: `p${i}`, gflops, slots: 4, busy, queued: 0 })

describe('bid sampling', () => {
  it('wants as many peers as the job has units, up to MAX_JOB_PEERS, whatever the mesh size', () => {
    expect(wantedPeers(1)).toBe(1)
    expect(wantedPeers(7)).toBe(7)
    expect(wantedPeers(1e6)).toBe(MAX_JOB_PEERS)
    expect(BID_OVERSAMPLE * wantedPeers(1e6)).toBeLessThan(100)
  })

  it('orders every candidate once, the same way for the same seed, and widens past those asked', () => {
    const cands = Array.from({ length: 500 }, (_, i) => peer(i, 10 + (i % 7)))
    const a = bidOrder(cands, 42)
    expect(new Set(a.map(c => c.peerId)).size).toBe(500)
    expect(bidOrder(cands, 42).map(c => c.peerId)).toEqual(a.map(c => c.peerId))
    expect(bidOrder(cands, 43).map(c => c.peerId)).not.toEqual(a.map(c => c.peerId))
    const asked = new Set(a.slice(0, 10).map(c => c.peerId))
    expect(nextRound(a, asked, 5).map(c => c.peerId)).toEqual(a.slice(10, 15).map(c => c.peerId))
  })

  it('draws fast idle peers first in proportion to their weight, and still reaches busy ones', () => {
    // 100 fast idle peers (weight 100), 100 slow ones (10), 100 fast but full (100 x 0.05 = 5).
    const cands = [
      ...Array.from({ length: 100 }, (_, i) => peer(i, 100)),
      ...Array.from({ length: 100 }, (_, i) => peer(100 + i, 10)),
      ...Array.from({ length: 100 }, (_, i) => peer(200 + i, 100, 4))
    ]
    expect(candidateWeight(cands[250] as BidCandidate)).toBeCloseTo(5, 6)
    const firsts = { fast: 0, slow: 0, full: 0 }
    const runs = 400
    for (let seed = 0; seed < runs; seed++) {
      const first = Number((bidOrder(cands, seed)[0] as BidCandidate).peerId.slice(1))
      if (first < 100) firsts.fast++
      else if (first < 200) firsts.slow++
      else firsts.full++
    }
    // P(first is from a group) = its weight share: 100/115, 10/115, 5/115 (binomial, 400 draws: +-5 sigma).
    expect(firsts.fast / runs).toBeGreaterThan(0.87 - 0.09)
    expect(firsts.slow / runs).toBeLessThan(0.087 + 0.08)
    expect(firsts.slow).toBeGreaterThan(0)
    expect(firsts.full / runs).toBeLessThan(0.043 + 0.06)
  })
})

describe('gatherBids', () => {
  const answer = (accept: boolean): { answer: { accept: boolean } } => ({ answer: { accept } })

  it('asks everyone in a directory smaller than the sample, once each', async () => {
    const cands = Array.from({ length: 5 }, (_, i) => peer(i, 10))
    const asked: string[] = []
    const got = await gatherBids(bidOrder(cands, 1), 32, async (c) => { asked.push(c.peerId); return answer(true) }, () => answer(false))
    expect(asked.sort()).toEqual(cands.map(c => c.peerId).sort())
    expect(got).toHaveLength(5)
  })

  it('widens to the next candidates while too few accept, and never asks one twice', async () => {
    const cands = Array.from({ length: 100 }, (_, i) => peer(i, 10))
    const asked: string[] = []
    // Only every tenth candidate accepts.
    const got = await gatherBids(bidOrder(cands, 7), 4, async (c) => { asked.push(c.peerId); return answer(Number(c.peerId.slice(1)) % 10 === 0) }, () => answer(false))
    expect(new Set(asked).size).toBe(asked.length)
    expect(asked.length).toBeGreaterThan((4 + 1 - 1) * BID_OVERSAMPLE) // more than the first round
    expect(asked.length).toBeLessThanOrEqual(BID_ROUNDS * BID_OVERSAMPLE * 4)
    expect(got.filter(g => g.answer?.accept === true).length).toBeGreaterThanOrEqual(1)
  })

  it('does not wait for a candidate that never answers once enough have accepted', async () => {
    const cands = Array.from({ length: 4 }, (_, i) => peer(i, 10))
    type Answer = { answer?: { accept: boolean }, late?: string }
    const never = new Promise<Answer>(() => {})
    const got = await gatherBids(bidOrder(cands, 3), 2, async (c): Promise<Answer> => c.peerId === 'p0' ? await never : answer(true), (c): Answer => ({ late: c.peerId }))
    expect(got).toHaveLength(4)
    expect(got.filter(g => g.late !== undefined)).toEqual([{ late: 'p0' }])
  })
})
