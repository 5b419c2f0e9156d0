import { describe, expect, it } from 'vitest'
import { BAN_MS, DEFAULT_RATE_LIMITS, PeerLimits, STRIKE_THRESHOLD, STRIKE_WINDOW_MS, TokenBucket } from '../../src/node/access/peer-limits.ts'
import { JobManager, OWN_JOBS_RESERVE, PEER_QUEUE_ALLOWANCE } from '../../src/node/jobs/job-manager.ts'
import { PeerDirectory } from '../../src/node/peer-directory.ts'
import { silentLogger } from '../../src/node/log.ts'
import { DEFAULT_MAX_QUEUE } from '../../src/compute/index.ts'
import { DEFAULT_WIRE_LIMITS } from '../../src/protocol/limits.ts'
import { codeOf } from '../helpers/codes.ts'
import type { ExecutorPool } from '../../src/compute/index.ts'
import type { BlobStore } from '../../src/node/blob-store.ts'
import type { BidRequest } from '../../src/protocol/bid/index.ts'
import type { Libp2p } from '@libp2p/interface'

/** A clock the test moves by hand (milliseconds). */
function manualClock (start = 1000): { now: () => number, advance: (ms: number) => void } {
  let t = start
  return { now: () => t, advance: (ms) => { t += ms } }
}

describe('TokenBucket', () => {
  it('gives a burst, then one token per 1/rate seconds, never more than the burst', () => {
    const clock = manualClock()
    const bucket = new TokenBucket({ burst: 3, perSecond: 2 }, clock.now())
    expect([1, 2, 3, 4].map(() => bucket.take(clock.now()))).toEqual([true, true, true, false])
    clock.advance(499)
    expect(bucket.take(clock.now())).toBe(false)
    clock.advance(1)
    expect(bucket.take(clock.now())).toBe(true)
    expect(bucket.take(clock.now())).toBe(false)
    // A long idle spell refills to the burst, not beyond.
    clock.advance(60_000)
    expect([1, 2, 3, 4].map(() => bucket.take(clock.now()))).toEqual([true, true, true, false])
  })

  it('refills nothing when the clock goes backwards, and does not drain either', () => {
    const clock = manualClock(10_000)
    const bucket = new TokenBucket({ burst: 1, perSecond: 1 }, clock.now())
    expect(bucket.take(clock.now())).toBe(true)
    expect(bucket.take(clock.now() - 5000)).toBe(false)
    // Time is measured from the latest reading, so the refill comes a second after 10 000, not after 5 000.
    expect(bucket.take(clock.now() + 999)).toBe(false)
    expect(bucket.take(clock.now() + 1000)).toBe(true)
  })
})

describe('PeerLimits', () => {
  it('rate-limits each peer and protocol on its own bucket, and counts the refusals', () => {
    const clock = manualClock()
    const limits = new PeerLimits({ clock: clock.now, rates: { bid: { burst: 2, perSecond: 1 } } })
    expect(['a', 'a', 'a'].map(p => limits.admit(p, 'bid'))).toEqual(['ok', 'ok', 'limited'])
    // Another peer, and another protocol of the same peer, are untouched.
    expect(limits.admit('b', 'bid')).toBe('ok')
    expect(limits.admit('a', 'blob')).toBe('ok')
    clock.advance(1000)
    expect(limits.admit('a', 'bid')).toBe('ok')
    expect(limits.info().rateLimited).toEqual({ bid: 1, shard: 0, blob: 0, allreduce: 0 })
  })

  it('defaults to the named rates', () => {
    const limits = new PeerLimits({ clock: manualClock().now })
    const burst = DEFAULT_RATE_LIMITS.shard.burst
    const answers = Array.from({ length: burst + 1 }, () => limits.admit('a', 'shard'))
    expect(answers.filter(a => a === 'ok')).toHaveLength(burst)
    expect(answers.at(-1)).toBe('limited')
  })

  it('bans a peer at the strike threshold within the window, for the cool-down, then lets it back', () => {
    const clock = manualClock()
    const wall = 1_700_000_000_000
    const limits = new PeerLimits({ clock: clock.now, wallClock: () => wall + clock.now() })
    const banned: Array<{ peer: string, untilMs: number }> = []
    limits.addEventListener('peer:banned', (evt) => { banned.push({ peer: evt.detail.peer, untilMs: evt.detail.untilMs }) })
    for (let k = 0; k < STRIKE_THRESHOLD - 1; k++) limits.strike('bad', 'shard')
    expect(limits.isBanned('bad')).toBe(false)
    limits.strike('bad', 'advert')
    expect(limits.isBanned('bad')).toBe(true)
    expect(banned).toEqual([{ peer: 'bad', untilMs: wall + clock.now() + BAN_MS }])
    expect(limits.info().banned).toEqual([{ peer: 'bad', untilMs: wall + clock.now() + BAN_MS }])
    expect(limits.info().strikes).toEqual({ bid: 0, shard: STRIKE_THRESHOLD - 1, blob: 0, allreduce: 0, advert: 1 })

    // Banned: every protocol drops it, and the refusals are counted; other peers go on.
    expect(limits.admit('bad', 'bid')).toBe('banned')
    expect(limits.admit('bad', 'blob')).toBe('banned')
    expect(limits.admit('good', 'bid')).toBe('ok')
    expect(limits.info().refused).toBe(2)

    clock.advance(BAN_MS - 1)
    expect(limits.isBanned('bad')).toBe(true)
    clock.advance(1)
    expect(limits.isBanned('bad')).toBe(false)
    expect(limits.info().banned).toEqual([])
    expect(limits.admit('bad', 'bid')).toBe('ok')
    // It starts over with no strikes: one more is not a second ban.
    limits.strike('bad', 'bid')
    expect(limits.isBanned('bad')).toBe(false)
    expect(limits.info().bans).toBe(1)
  })

  it('forgets strikes older than the window', () => {
    const clock = manualClock()
    const limits = new PeerLimits({ clock: clock.now })
    for (let k = 0; k < STRIKE_THRESHOLD - 1; k++) limits.strike('p', 'blob')
    clock.advance(STRIKE_WINDOW_MS)
    for (let k = 0; k < STRIKE_THRESHOLD - 1; k++) limits.strike('p', 'blob')
    expect(limits.isBanned('p')).toBe(false)
    limits.strike('p', 'blob')
    expect(limits.isBanned('p')).toBe(true)
  })

  it('keeps at most maxPeers peers: the least recently seen loses its bucket (a fresh one), never a ban', () => {
    const clock = manualClock()
    const limits = new PeerLimits({ clock: clock.now, maxPeers: 2, strikeThreshold: 1, rates: { bid: { burst: 1, perSecond: 0.001 } } })
    expect(limits.admit('a', 'bid')).toBe('ok')
    expect(limits.admit('a', 'bid')).toBe('limited')
    expect(limits.admit('b', 'bid')).toBe('ok')
    expect(limits.admit('c', 'bid')).toBe('ok') // evicts a
    expect(limits.admit('a', 'bid')).toBe('ok') // a fresh bucket
    limits.strike('x', 'shard')
    for (const p of ['d', 'e', 'f']) limits.admit(p, 'bid')
    expect(limits.isBanned('x')).toBe(true)
  })

  it('keeps at most maxBanned bans, dropping the one closest to its end', () => {
    const clock = manualClock()
    const limits = new PeerLimits({ clock: clock.now, maxBanned: 2, strikeThreshold: 1 })
    limits.strike('first', 'shard')
    clock.advance(10)
    limits.strike('second', 'shard')
    clock.advance(10)
    limits.strike('third', 'shard')
    expect(['first', 'second', 'third'].map(p => limits.isBanned(p))).toEqual([false, true, true])
  })
})

describe('JobManager admission per coordinator', () => {
  const slots = 1
  const pool = { slots, gflops: 10, queued: 0, operators: ['map'] } as unknown as ExecutorPool
  const request: BidRequest = { jobId: 'job-1', op: 'map', units: 10, flopsPerUnit: 1e6, bytesInPerUnit: 4, bytesInFixed: 0, bytesOutPerUnit: 4 }

  function manager (peers = new PeerLimits()): JobManager {
    return new JobManager(
      { libp2p: {} as Libp2p, directory: new PeerDirectory({ expiryMs: 1000 }), pool, log: silentLogger(), blobs: {} as BlobStore },
      { limits: DEFAULT_WIRE_LIMITS, serve: true, peers }
    )
  }

  it('admits the slots it bids plus the queue allowance per coordinator, then refuses with ERR_PEER_OVER_LIMIT', () => {
    const peers = new PeerLimits()
    const jobs = manager(peers)
    const share = slots + PEER_QUEUE_ALLOWANCE
    expect(jobs.shareOf()).toBe(share)
    const releases = Array.from({ length: share }, () => jobs.admitShard('flooder'))
    expect(codeOf(() => jobs.admitShard('flooder'))).toBe('ERR_PEER_OVER_LIMIT')
    expect(jobs.inflightFrom('flooder')).toBe(share)
    expect(peers.info().overLimit).toBe(1)
    // Another coordinator is not affected.
    const other = jobs.admitShard('other')
    expect(jobs.inflightFrom('other')).toBe(1)
    // Its bids decline while it holds its share, and accept once a shard is done.
    expect(jobs.bid(request, 'flooder')).toMatchObject({ accept: false })
    expect(jobs.bid(request, 'other')).toMatchObject({ accept: true })
    releases[0]?.()
    releases[0]?.() // a second release does nothing
    expect(jobs.inflightFrom('flooder')).toBe(share - 1)
    expect(jobs.bid(request, 'flooder')).toMatchObject({ accept: true })
    expect(() => jobs.admitShard('flooder')).not.toThrow()
    other()
    expect(jobs.inflightFrom('other')).toBe(0)
  })

  it('keeps OWN_JOBS_RESERVE of the pool free of remote shards, however many coordinators ask', () => {
    const jobs = manager()
    const capacity = slots + DEFAULT_MAX_QUEUE - OWN_JOBS_RESERVE
    expect(jobs.remoteCapacity()).toBe(capacity)
    let admitted = 0
    let refused = 0
    for (let p = 0; admitted + refused < capacity + 10; p++) {
      for (let k = 0; k < jobs.shareOf(); k++) {
        try { jobs.admitShard(`peer-${p}`); admitted++ } catch { refused++ }
      }
    }
    expect(admitted).toBe(capacity)
    expect(refused).toBeGreaterThan(0)
  })

  it('declines a banned coordinator\'s call for bids', () => {
    const peers = new PeerLimits({ strikeThreshold: 1 })
    const jobs = manager(peers)
    peers.strike('bad', 'shard')
    expect(jobs.bid(request, 'bad')).toMatchObject({ accept: false })
    expect(jobs.bid(request)).toMatchObject({ accept: true })
  })
})
