import { describe, expect, it } from 'vitest'
import { runScenario } from '../../scripts/scale-sim/run.ts'
import { DEFAULT_CALIBRATION, INTERNET_MODEL } from '../../scripts/scale-sim/model.ts'
import { VirtualClock } from '../../scripts/scale-sim/clock.ts'
import { DEFAULT_CONNECTION_BOUNDS } from '../../src/node/connection-keeper.ts'
import { SAMPLED_ADVERTS_PER_SEC } from '../../src/protocol/capacity/sampling.ts'
import { wantedPeers } from '../../src/node/jobs/bid-sample.ts'
import type { Mesh, SimNode } from '../../scripts/scale-sim/mesh.ts'
import type { JobHooks } from '../../scripts/scale-sim/jobs.ts'

const model = { ...INTERNET_MODEL, churnPerMinute: 0 }

/** Kills one remote participant of the job `afterMs` into its dispatch, and watches the coordinator's directory for its leaving. */
function killOne (kind: 'crash' | 'gone', afterMs: number, seen: { victim?: string, left: boolean }): (job: number, mesh: Mesh) => JobHooks {
  return (_job, mesh) => ({
    onDispatch: (participants, coord: SimNode) => {
      const remote = participants.filter(p => !p.local)
      const target = mesh.nodes.get(remote[0]?.peer ?? '')
      if (target === undefined) throw new Error('no remote participant to kill')
      seen.victim = target.id
      coord.directory.addEventListener('peer:leave', (evt) => { if (evt.detail.peerId === target.id) seen.left = true })
      mesh.clock.setTimeout(() => { mesh.kill(target, kind) }, afterMs)
    }
  })
}

describe('virtual clock', () => {
  it('fires timers in order, intervals repeatedly, and lets promise chains settle at their instant', async () => {
    const clock = new VirtualClock()
    const seen: string[] = []
    clock.install()
    try {
      setTimeout(() => { seen.push(`b@${performance.now()}`) }, 20)
      setTimeout(() => { seen.push(`a@${performance.now()}`) }, 10)
      const iv = setInterval(() => { seen.push(`i@${performance.now()}`) }, 15)
      const cancelled = setTimeout(() => { seen.push('never') }, 5)
      clearTimeout(cancelled)
      setTimeout(() => { clearInterval(iv) }, 40)
      const chained = (async () => {
        await new Promise<void>(resolve => { setTimeout(resolve, 25) })
        seen.push(`chain@${performance.now()}`)
        await Promise.resolve()
        setTimeout(() => { seen.push(`after@${performance.now()}`) }, 1)
      })()
      await clock.run(100)
      await chained
      expect(Date.now() - performance.now()).toBeGreaterThan(1e12)
    } finally {
      clock.uninstall()
    }
    expect(seen).toEqual(['a@10', 'i@15', 'b@20', 'chain@25', 'after@26', 'i@30'])
  })
})

describe('scale simulator', () => {
  it('full regime (N = 40): each node hears (N - 1) / 2 adverts a second, and keeps its connections within bounds', async () => {
    const n = 40
    const res = await runScenario({ n, seed: 3, model, calibration: DEFAULT_CALIBRATION, churn: false, jobs: 0, warmupMs: 60_000, measureMs: 60_000 })
    const w = res.window
    expect(w.sampledShare).toBe(0)
    expect(w.advertsAcceptedPerNodePerSec).toBeGreaterThan((n - 1) / 2 * 0.9)
    expect(w.advertsAcceptedPerNodePerSec).toBeLessThan((n - 1) / 2 * 1.1)
    expect(w.meshEstimateMean).toBeGreaterThan(n * 0.9)
    expect(w.connectionsOutsideJobs.max).toBeLessThanOrEqual(DEFAULT_CONNECTION_BOUNDS.max)
    expect(w.connectionsOutsideJobs.mean).toBeGreaterThanOrEqual(DEFAULT_CONNECTION_BOUNDS.min)
  })

  it('sampled regime (N = 120): the mesh publishes about SAMPLED_ADVERTS_PER_SEC and estimates its size', async () => {
    const n = 120
    const res = await runScenario({ n, seed: 5, model, calibration: DEFAULT_CALIBRATION, churn: false, jobs: 0, warmupMs: 100_000, measureMs: 150_000 })
    const w = res.window
    expect(w.sampledShare).toBe(1)
    expect(w.advertsPublishedPerSec).toBeGreaterThan(SAMPLED_ADVERTS_PER_SEC * 0.7)
    expect(w.advertsPublishedPerSec).toBeLessThan(SAMPLED_ADVERTS_PER_SEC * 1.3)
    expect(w.meshEstimateRatioMean).toBeGreaterThan(0.7)
    expect(w.meshEstimateRatioMean).toBeLessThan(1.3)
    expect(w.connectionsOutsideJobs.max).toBeLessThanOrEqual(DEFAULT_CONNECTION_BOUNDS.max)
    // Control traffic follows from the counts and the wire sizes.
    expect(w.controlBytesPerNodePerSec).toBeCloseTo(Object.values(w.controlBytes).reduce((a, b) => a + b, 0), 6)
  })

  it('a 1,000-shard job survives a participant crashing mid-job: its shards are retried elsewhere', async () => {
    const seen: { victim?: string, left: boolean } = { left: false }
    const res = await runScenario({ n: 120, seed: 7, model, calibration: DEFAULT_CALIBRATION, churn: false, jobs: 1, warmupMs: 80_000, measureMs: 0, hooks: killOne('crash', 3000, seen) })
    const job = res.jobs[0]
    expect(job?.state).toBe('succeeded')
    expect(job?.shards).toBe(1000)
    expect(job?.participantsLost).toBe(1)
    expect(job?.retries).toBeGreaterThan(0)
    expect(job?.failedCopies.ERR_PEER_GONE).toBeGreaterThan(0)
    expect(job?.bidRequests).toBeLessThanOrEqual(4 * wantedPeers(1000))
    expect(job?.bidRequests).toBeGreaterThan(0)
    expect(job?.doneMs.all).toBeGreaterThan(3000)
  })

  it('full regime: a participant whose host is gone leaves the coordinator\'s directory (peer:leave) and the job still completes', async () => {
    const seen: { victim?: string, left: boolean } = { left: false }
    const res = await runScenario({ n: 40, seed: 11, model, calibration: DEFAULT_CALIBRATION, churn: false, jobs: 1, warmupMs: 60_000, measureMs: 0, hooks: killOne('gone', 2000, seen) })
    const job = res.jobs[0]
    expect(seen.victim).toBeDefined()
    expect(seen.left).toBe(true)
    expect(job?.state).toBe('succeeded')
    expect(job?.shards).toBe(1000)
    expect(job?.retries).toBeGreaterThan(0)
    expect(job?.failedCopies.ERR_PEER_GONE).toBeGreaterThan(0)
    expect(job?.bidRequests).toBeLessThanOrEqual(4 * wantedPeers(1000))
  })
})
