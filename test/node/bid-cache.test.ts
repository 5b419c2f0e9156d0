import { describe, expect, it } from 'vitest'
import { BID_CACHE_MS, BidCache } from '../../src/node/jobs/coordinator.ts'
import type { BidAnswer, BidRequest } from '../../src/protocol/bid/index.ts'

const req: BidRequest = { jobId: 'j1', op: 'map', units: 512, flopsPerUnit: 2e3, bytesInPerUnit: 4, bytesInFixed: 0, bytesOutPerUnit: 4 }
const accept: BidAnswer = { accept: true, units: 512, unitsPerSecond: 1e6, startDelayMs: 0, slots: 2, reason: '' }

describe('BidCache', () => {
  it('reuses a fresh acceptance for the same operator, at the bid rate scaled by flops per unit', () => {
    const cache = new BidCache()
    cache.record('p', req, accept, 1000)
    const again = cache.reuse('p', { ...req, jobId: 'j2', units: 8, flopsPerUnit: 4e3 }, 1000 + BID_CACHE_MS)
    expect(again).toMatchObject({ accept: true, units: 8, slots: 2 })
    expect(again?.unitsPerSecond).toBeCloseTo(5e5, 6)
  })

  it('asks again after BID_CACHE_MS, for another operator, for bigger shards, after a decline or an error', () => {
    const cache = new BidCache()
    cache.record('p', req, accept, 0)
    expect(cache.reuse('p', req, BID_CACHE_MS + 1)).toBeUndefined()
    expect(cache.reuse('p', { ...req, op: 'sort' }, 1)).toBeUndefined()
    expect(cache.reuse('p', { ...req, bytesInFixed: 1 }, 1)).toBeUndefined()
    expect(cache.reuse('q', req, 1)).toBeUndefined()
    cache.record('p', req, { ...accept, accept: false, reason: 'busy' }, 2)
    expect(cache.reuse('p', req, 3)).toBeUndefined()
    cache.record('p', req, accept, 4)
    cache.forget('p')
    expect(cache.reuse('p', req, 5)).toBeUndefined()
  })
})
