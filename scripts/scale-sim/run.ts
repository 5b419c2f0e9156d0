/**
 * One simulated run: build the mesh, let it settle, measure a window (a
 * quiet one without jobs, then one with the jobs), and sum it up as the
 * figures of issue 16.
 */
import { DEFAULT_CONNECTION_BOUNDS } from '../../src/node/connection-keeper.ts'
import { SAMPLED_ENTER } from '../../src/protocol/capacity/sampling.ts'
import { VirtualClock, realNow } from './clock.ts'
import { Mesh, histStats } from './mesh.ts'
import { runJob } from './jobs.ts'
import { DEFAULT_WARMUP_MS } from './model.ts'
import type { MeshStats, SimNode } from './mesh.ts'
import type { JobHooks, JobOutcome } from './jobs.ts'
import type { Calibration, ModelParams } from './model.ts'
import type { ConnectionBounds } from '../../src/node/connection-keeper.ts'

export interface ScenarioOptions {
  n: number
  seed: number
  model: ModelParams
  calibration: Calibration
  bounds?: ConnectionBounds
  /** Default: warm above SAMPLED_ENTER nodes, cold (one by one) at or below. */
  start?: 'warm' | 'cold'
  churn?: boolean
  warmupMs?: number
  /** A window without jobs, measured on its own before the jobs (the real bench's quiet window). */
  quietMs?: number
  /** The window with the jobs lasts at least this long. */
  measureMs?: number
  jobs?: number
  jobGapMs?: number
  coldGapMs?: number
  /** Called with each job's participants when its dispatch starts. */
  hooks?: (job: number, mesh: Mesh) => JobHooks
  progress?: (line: string) => void
}

/** Rates of one window. */
export interface WindowFigures {
  seconds: number
  nodes: number
  advertsPublishedPerSec: number
  advertsReceivedPerNodePerSec: number
  advertsAcceptedPerNodePerSec: number
  ihaveIdsPerNodePerSec: number
  hellosPerNodePerSec: number
  bidRequestsPerNodePerSec: number
  connectionsPerNodeTimeAvg: number
  controlBytesPerNodePerSec: number
  controlBytes: { adverts: number, ihave: number, baseline: number, hello: number, bids: number }
  connectionsOutsideJobs: { mean: number, p99: number, max: number }
  connectionsTotal: { mean: number, p99: number, max: number }
  meshEstimateMean: number
  meshEstimateRatioMean: number
  meshEstimateWithin30: number
  sampledShare: number
  directoryMean: number
  gossipMeshDegreeMean: number
  dialsPerNodePerSec: number
  failedDialsPerNodePerSec: number
  keeperClosesPerNodePerSec: number
  leaves: number
  joins: number
}

export interface ScenarioResult {
  n: number
  seed: number
  start: 'warm' | 'cold'
  churn: boolean
  secondsSimulated: number
  wallSeconds: number
  timersFired: number
  encodedAdvertBytes: number
  quiet?: WindowFigures
  window: WindowFigures
  jobs: JobOutcome[]
  liveAtEnd: number
}

export function figures (s: MeshStats, c: Calibration): WindowFigures {
  const seconds = (s.endedAt - s.startedAt) / 1000
  const nodeSec = Math.max(s.nodeMs / 1000, 1e-9)
  const per = (x: number): number => x / nodeSec
  const received = per(s.deliveries)
  const ihave = per(s.ihaveIds)
  const hellos = per(s.hellos)
  const bids = per(s.bidRequests)
  const conns = s.connMs / Math.max(s.nodeMs, 1e-9)
  const bytes = {
    adverts: received * c.copiesPerAdvert * c.advertWireBytes,
    ihave: ihave * c.ihaveBytesPerId,
    baseline: conns * c.baselineBytesPerConnPerSec,
    hello: hellos * (c.advertWireBytes + c.helloOverheadBytes),
    bids: bids * c.bidExchangeBytes
  }
  const outside = histStats(s.outside)
  const total = histStats(s.total)
  const ticks = Math.max(s.ticks, 1)
  return {
    seconds,
    nodes: nodeSec / Math.max(seconds, 1e-9),
    advertsPublishedPerSec: s.publishes / Math.max(seconds, 1e-9),
    advertsReceivedPerNodePerSec: received,
    advertsAcceptedPerNodePerSec: per(s.accepted),
    ihaveIdsPerNodePerSec: ihave,
    hellosPerNodePerSec: hellos,
    bidRequestsPerNodePerSec: bids,
    connectionsPerNodeTimeAvg: conns,
    controlBytesPerNodePerSec: bytes.adverts + bytes.ihave + bytes.baseline + bytes.hello + bytes.bids,
    controlBytes: bytes,
    connectionsOutsideJobs: { mean: outside.mean, p99: outside.p99, max: outside.max },
    connectionsTotal: { mean: total.mean, p99: total.p99, max: total.max },
    meshEstimateMean: s.estimateSum / Math.max(s.estimateSamples, 1),
    meshEstimateRatioMean: s.estimateRatioSum / Math.max(s.estimateSamples, 1),
    meshEstimateWithin30: s.estimateWithin30 / Math.max(s.estimateSamples, 1),
    sampledShare: s.sampledTicks / ticks,
    directoryMean: s.directorySum / ticks,
    gossipMeshDegreeMean: s.meshDegreeSum / ticks,
    dialsPerNodePerSec: per(s.dials),
    failedDialsPerNodePerSec: per(s.failedDials),
    keeperClosesPerNodePerSec: per(s.closedByKeeper),
    leaves: s.leaves,
    joins: s.joins
  }
}

export async function runScenario (o: ScenarioOptions): Promise<ScenarioResult> {
  const wall0 = realNow()
  const start = o.start ?? (o.n > SAMPLED_ENTER ? 'warm' : 'cold')
  const churn = o.churn ?? o.model.churnPerMinute > 0
  const coldGapMs = o.coldGapMs ?? 100
  const warmupMs = (o.warmupMs ?? DEFAULT_WARMUP_MS) + (start === 'cold' ? o.n * coldGapMs : 0)
  const quietMs = o.quietMs ?? 0
  const measureMs = o.measureMs ?? 120_000
  const jobCount = o.jobs ?? 5
  const jobGapMs = o.jobGapMs ?? 10_000
  const clock = new VirtualClock()
  const horizonMs = warmupMs + quietMs + Math.max(measureMs, jobCount * 120_000) + 60_000
  const mesh = await Mesh.create(clock, {
    n: o.n, seed: o.seed, model: o.model, calibration: o.calibration, bounds: o.bounds ?? DEFAULT_CONNECTION_BOUNDS,
    start, coldBootstraps: 3, coldGapMs, churn, horizonMs
  })
  const say = o.progress ?? (() => {})
  const jobs: JobOutcome[] = []
  let quiet: WindowFigures | undefined
  clock.install()
  try {
    mesh.build()
    // SCALE_SIM_TRACE=1: a line every 10 simulated seconds (connections, dials, adverts, wall time).
    if (process.env.SCALE_SIM_TRACE !== undefined) {
      clock.setInterval(() => {
        const rows = mesh.live.map(x => x.links.size)
        say(`trace t=${Math.round(clock.now / 1000)} links mean ${(rows.reduce((a, b) => a + b, 0) / rows.length).toFixed(1)} max ${Math.max(...rows)} dials ${mesh.stats.dials} pub ${mesh.stats.publishes} wall ${Math.round(realNow() - wall0)}`)
      }, 10_000)
    }
    await clock.run(warmupMs)
    say(`n=${o.n}: warm-up done at ${Math.round(clock.now / 1000)} s simulated (${Math.round((realNow() - wall0) / 1000)} s wall), ${mesh.live.length} live`)
    if (quietMs > 0) {
      mesh.beginMeasure()
      await clock.run(clock.now + quietMs)
      quiet = figures(mesh.endMeasure(), o.calibration)
    }
    mesh.beginMeasure()
    const windowEnd = clock.now + measureMs
    let driving = true
    const drive = async (): Promise<void> => {
      for (let k = 0; k < jobCount; k++) {
        await clock.sleep(jobGapMs)
        const coord: SimNode = mesh.randomLive()
        const outcome = await runJob(mesh, coord, k, o.hooks?.(k, mesh))
        jobs.push(outcome)
        say(`n=${o.n}: job ${k} ${outcome.state} in ${(outcome.totalMs / 1000).toFixed(1)} s (ideal ${(outcome.idealMs / 1000).toFixed(1)} s, ratio ${outcome.ratio.toFixed(2)}), ${outcome.bidRequests} bid requests, ${outcome.accepted} accepted, ${outcome.retries} retries, ${outcome.backups} backups, ${outcome.participantsLost} participants lost${outcome.error !== undefined ? `: ${outcome.error.code} ${outcome.error.message.slice(0, 120)}` : ''}`)
      }
    }
    const driver = drive().finally(() => { driving = false })
    await clock.run(windowEnd + jobCount * 600_000, () => !driving && clock.now >= windowEnd)
    await driver
    const window = figures(mesh.endMeasure(), o.calibration)
    mesh.stop()
    return {
      n: o.n,
      seed: o.seed,
      start,
      churn,
      secondsSimulated: clock.now / 1000,
      wallSeconds: (realNow() - wall0) / 1000,
      timersFired: clock.fired,
      encodedAdvertBytes: mesh.encodedAdvertBytes,
      quiet,
      window,
      jobs,
      liveAtEnd: mesh.live.length
    }
  } finally {
    clock.uninstall()
  }
}
