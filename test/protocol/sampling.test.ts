import { describe, expect, it } from 'vitest'
import { prng } from '../../src/compute/random.ts'
import {
  FULL_DIRECTORY_MAX, SAMPLED_ADVERTS_PER_SEC, SAMPLED_ENTER, SAMPLE_WINDOW_MS, MeshSizeEstimator,
  entryExpiryMs, impliedEstimate, meanGapMs, publishProbability, publishesEveryTick, regimeFor
} from '../../src/protocol/capacity/sampling.ts'

const T = 2000

describe('advert regimes', () => {
  it('switches to sampled above SAMPLED_ENTER and back only below FULL_DIRECTORY_MAX', () => {
    expect(regimeFor(SAMPLED_ENTER, 'full')).toBe('full')
    expect(regimeFor(SAMPLED_ENTER + 1, 'full')).toBe('sampled')
    expect(regimeFor(FULL_DIRECTORY_MAX, 'sampled')).toBe('sampled')
    expect(regimeFor(FULL_DIRECTORY_MAX - 1, 'sampled')).toBe('full')
  })

  it('publishes every tick in the full regime, and a mesh-wide rate independent of N in the sampled one', () => {
    expect(publishProbability('full', 50, T)).toBe(1)
    for (const n of [100, 1000, 10_000]) {
      const p = publishProbability('sampled', n, T)
      expect(n * p / (T / 1000)).toBeCloseTo(SAMPLED_ADVERTS_PER_SEC, 9)
    }
  })

  it('reads an author\'s regime and its mesh estimate back from its advert', () => {
    const p = publishProbability('sampled', 5000, T)
    const author = { meanGapMs: meanGapMs(T, p), intervalMs: T }
    expect(publishesEveryTick(author)).toBe(false)
    expect(impliedEstimate(author)).toBeCloseTo(5000, -1)
    expect(publishesEveryTick({ meanGapMs: T, intervalMs: T })).toBe(true)
    expect(publishesEveryTick({ meanGapMs: 0, intervalMs: 0 })).toBe(true) // an older node
    expect(impliedEstimate({ meanGapMs: T, intervalMs: T })).toBe(0)
  })

  it('keeps a full-regime entry three intervals and a sampled one a window', () => {
    expect(entryExpiryMs({ meanGapMs: T, intervalMs: T }, T, 3)).toBe(3 * T)
    expect(entryExpiryMs({ meanGapMs: 0, intervalMs: 0 }, T, 3)).toBe(3 * T)
    expect(entryExpiryMs({ meanGapMs: 1e6, intervalMs: T }, T, 3)).toBe(SAMPLE_WINDOW_MS)
    // A slower author's own interval counts.
    expect(entryExpiryMs({ meanGapMs: 10_000, intervalMs: 10_000 }, T, 3)).toBe(30_000)
  })
})

describe('mesh size estimate', () => {
  it('counts every-tick authors once each, however often they are heard', () => {
    const est = new MeshSizeEstimator(SAMPLE_WINDOW_MS, 0)
    for (let t = 0; t < 20_000; t += T) for (let a = 0; a < 30; a++) est.observe(`a${a}`, { meanGapMs: T, intervalMs: T }, t + a)
    expect(est.estimate(20_000)).toBe(31)
  })

  it('estimates a sampled mesh within 15% (Horvitz-Thompson over a window), and forgets authors past it', () => {
    const u = prng(9)
    for (const n of [500, 5000]) {
      const p = publishProbability('sampled', n, T)
      const est = new MeshSizeEstimator(SAMPLE_WINDOW_MS, 0)
      const end = 3 * SAMPLE_WINDOW_MS
      for (let t = 0; t < end; t += T) for (let a = 0; a < n; a++) if (u() < p) est.observe(`a${a}`, { meanGapMs: meanGapMs(T, p), intervalMs: T }, t)
      expect(Math.abs(est.estimate(end) - n) / n).toBeLessThan(0.15)
      // Nothing heard for a whole window: only this node is left.
      expect(est.estimate(end + SAMPLE_WINDOW_MS + 1)).toBe(1)
    }
  })

  it('takes the prior as a floor only while its first window fills', () => {
    const est = new MeshSizeEstimator(SAMPLE_WINDOW_MS, 0)
    expect(est.estimate(1000, 4000)).toBe(4000)
    expect(est.estimate(SAMPLE_WINDOW_MS + 1, 4000)).toBe(1)
  })
})
