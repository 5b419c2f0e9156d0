/**
 * The simulator's records in bench/scale.json (beside the real bench's),
 * their comparison with the real ones, and the table printed at the end.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { wantedPeers } from '../../src/node/jobs/bid-sample.ts'
import type { ScenarioResult, WindowFigures } from './run.ts'
import type { Calibration } from './model.ts'

/** A record of either kind, as bench/scale.json holds it. */
export interface ScaleRecord {
  n: number
  kind: 'real' | 'simulated'
  controlBytesPerNodePerSec: number
  connectionsPerNode: number
  bidsPerJob: number
  shardsPerJob: number
  makespanRatio: number
  jobsLost: number
  [extra: string]: unknown
}

export interface SimulatedRecord extends ScaleRecord {
  kind: 'simulated'
  /** scale: the internet model with churn; calibration: the real bench's setting. */
  mode: 'scale' | 'calibration'
  seed: number
  regime: 'full' | 'sampled'
  meshEstimate: number
  meshEstimateRatio: number
  advertsPublishedPerSec: number
  advertsReceivedPerNodePerSec: number
  advertsHeardPerNodePerSec: number
  ihaveIdsPerNodePerSec: number
  hellosPerNodePerSec: number
  bidRequestsPerNodePerSec: number
  controlBytesBreakdown: WindowFigures['controlBytes']
  connectionsP99: number
  connectionsMax: number
  connectionsTotalMean: number
  connectionsTotalP99: number
  connectionsTotalMax: number
  directorySize: number
  gossipMeshDegree: number
  dialsPerNodePerSec: number
  wantedPeers: number
  bidAnswersPerJob: number
  acceptedPerJob: number
  jobs: number
  jobsAbandoned: number
  makespanRatioMax: number
  makespanRatioDispatch: number
  /** Makespan against the whole mesh's capacity (every live node's GFLOPS), not the accepting peers'. */
  makespanRatioVsWholeMesh: number
  /** The split's own prediction over the ideal (a shard runs on one slot). */
  splitRatio: number
  bidPhaseMs: number
  retriesPerJob: number
  backupsPerJob: number
  participantsLostPerJob: number
  failedCopies: Record<string, number>
  jobDetails: Array<Record<string, unknown>>
  churnPerMinute: number
  leaves: number
  joins: number
  secondsSimulated: number
  measuredSeconds: number
  wallSeconds: number
  calibration: Calibration & { source: string }
  modelDescription: string[]
  calibrationError?: Record<string, number>
}

const r0 = (x: number): number => Math.round(x)
const r1 = (x: number): number => Math.round(x * 10) / 10
const r2 = (x: number): number => Math.round(x * 100) / 100
const mean = (xs: number[]): number => xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length

export function toRecord (res: ScenarioResult, mode: 'scale' | 'calibration', calibration: Calibration & { source: string }, modelDescription: string[], churnPerMinute: number): SimulatedRecord {
  // The calibration mode reads the control plane from its quiet window, as the real bench does.
  const w = mode === 'calibration' && res.quiet !== undefined ? res.quiet : res.window
  const jobs = res.jobs
  const ok = jobs.filter(j => j.state === 'succeeded')
  const counted = jobs.filter(j => j.state !== 'abandoned')
  const failed: Record<string, number> = {}
  for (const j of jobs) for (const [k, v] of Object.entries(j.failedCopies)) failed[k] = (failed[k] ?? 0) + v
  return {
    n: res.n,
    kind: 'simulated',
    controlBytesPerNodePerSec: r0(w.controlBytesPerNodePerSec),
    connectionsPerNode: r1(w.connectionsOutsideJobs.mean),
    bidsPerJob: r1(mean(counted.map(j => j.bidRequests))),
    shardsPerJob: r1(mean(ok.map(j => j.shards))),
    makespanRatio: r2(mean(ok.map(j => j.ratio))),
    jobsLost: jobs.filter(j => j.state === 'lost').length,
    mode,
    seed: res.seed,
    regime: w.sampledShare > 0.5 ? 'sampled' : 'full',
    meshEstimate: r0(w.meshEstimateMean),
    meshEstimateRatio: r2(w.meshEstimateRatioMean),
    advertsPublishedPerSec: r2(w.advertsPublishedPerSec),
    advertsReceivedPerNodePerSec: r2(w.advertsReceivedPerNodePerSec),
    advertsHeardPerNodePerSec: r2(w.advertsAcceptedPerNodePerSec),
    ihaveIdsPerNodePerSec: r1(w.ihaveIdsPerNodePerSec),
    hellosPerNodePerSec: r2(w.hellosPerNodePerSec),
    bidRequestsPerNodePerSec: Math.round(w.bidRequestsPerNodePerSec * 1e4) / 1e4,
    controlBytesBreakdown: { adverts: r0(w.controlBytes.adverts), ihave: r0(w.controlBytes.ihave), baseline: r0(w.controlBytes.baseline), hello: r0(w.controlBytes.hello), bids: r0(w.controlBytes.bids) },
    connectionsP99: w.connectionsOutsideJobs.p99,
    connectionsMax: w.connectionsOutsideJobs.max,
    connectionsTotalMean: r1(w.connectionsTotal.mean),
    connectionsTotalP99: w.connectionsTotal.p99,
    connectionsTotalMax: w.connectionsTotal.max,
    directorySize: r1(w.directoryMean),
    gossipMeshDegree: r1(w.gossipMeshDegreeMean),
    dialsPerNodePerSec: Math.round(w.dialsPerNodePerSec * 1000) / 1000,
    wantedPeers: wantedPeers(1000),
    bidAnswersPerJob: r1(mean(counted.map(j => j.bidAnswers))),
    acceptedPerJob: r1(mean(counted.map(j => j.accepted))),
    jobs: jobs.length,
    jobsAbandoned: jobs.filter(j => j.state === 'abandoned').length,
    makespanRatioMax: r2(Math.max(0, ...ok.map(j => j.ratio))),
    makespanRatioDispatch: r2(mean(ok.map(j => j.ratioDispatch))),
    makespanRatioVsWholeMesh: r2(mean(ok.map(j => j.ratioMesh))),
    splitRatio: r2(mean(ok.map(j => j.splitMs / j.idealMs))),
    bidPhaseMs: r0(mean(counted.map(j => j.bidMs))),
    retriesPerJob: r1(mean(counted.map(j => j.retries))),
    backupsPerJob: r1(mean(counted.map(j => j.backups))),
    participantsLostPerJob: r2(mean(counted.map(j => j.participantsLost))),
    failedCopies: failed,
    jobDetails: jobs.map(j => ({
      state: j.state,
      ...(j.error !== undefined ? { error: j.error.code } : {}),
      candidates: j.candidates,
      bidRequests: j.bidRequests,
      bidAnswers: j.bidAnswers,
      accepted: j.accepted,
      shards: j.shards,
      copies: j.copies,
      retries: j.retries,
      backups: j.backups,
      participantsLost: j.participantsLost,
      bidMs: r0(j.bidMs),
      dispatchMs: r0(j.dispatchMs),
      idealMs: r0(j.idealMs),
      splitMs: r0(j.splitMs),
      doneMs: j.doneMs,
      ratio: r2(j.ratio)
    })),
    churnPerMinute,
    leaves: res.window.leaves,
    joins: res.window.joins,
    secondsSimulated: r0(res.secondsSimulated),
    measuredSeconds: r0(w.seconds),
    wallSeconds: r1(res.wallSeconds),
    calibration,
    modelDescription
  }
}

export const SCALE_JSON = new URL('../../bench/scale.json', import.meta.url)

export function readRecords (file: URL | string = SCALE_JSON): ScaleRecord[] {
  if (!existsSync(file)) return []
  const raw = JSON.parse(readFileSync(file, 'utf8')) as unknown
  return Array.isArray(raw) ? raw.filter((r): r is ScaleRecord => typeof r === 'object' && r !== null && typeof (r as ScaleRecord).n === 'number') : []
}

/** Replaces simulated records of the same N; keeps every real one. */
export function writeRecords (fresh: SimulatedRecord[], file: URL | string = SCALE_JSON): ScaleRecord[] {
  const ns = new Set(fresh.map(r => r.n))
  const kept = readRecords(file).filter(r => !(r.kind === 'simulated' && ns.has(r.n)))
  const all: ScaleRecord[] = [...kept, ...fresh].sort((a, b) => a.n - b.n || a.kind.localeCompare(b.kind))
  writeFileSync(file, JSON.stringify(all, null, 2) + '\n')
  return all
}

/** The figures compared with the real bench, and the real record's name for each. */
export const CALIBRATED_FIGURES: Array<{ sim: keyof SimulatedRecord, real: string[], label: string }> = [
  { sim: 'advertsHeardPerNodePerSec', real: ['advertsHeardPerNodePerSec', 'advertsReceivedPerNodePerSec', 'advertsPerNodePerSec'], label: 'adverts heard per node per s' },
  { sim: 'bidsPerJob', real: ['bidsPerJob'], label: 'bid requests per job' },
  { sim: 'connectionsPerNode', real: ['connectionsPerNode'], label: 'connections per node' }
]

/** Relative error (sim - real) / real per calibrated figure, where a real record of the same N has it. */
export function calibrationErrors (sim: SimulatedRecord, real: ScaleRecord[]): Record<string, number> | undefined {
  const r = real.find(x => x.kind === 'real' && x.n === sim.n)
  if (r === undefined) return undefined
  const out: Record<string, number> = {}
  for (const f of CALIBRATED_FIGURES) {
    const key = f.real.find(k => typeof r[k] === 'number')
    const rv = key !== undefined ? r[key] as number : undefined
    const sv = sim[f.sim] as number
    if (rv === undefined || rv === 0) continue
    out[f.sim] = Math.round((sv - rv) / rv * 1000) / 1000
  }
  return out
}

/** The figures table printed when a run ends. */
export function table (records: SimulatedRecord[]): string {
  const head = ['N', 'regime', 'control B/s/node', 'adverts/s/node', 'IHAVE ids/s', 'conns/node (p99, max)', 'total conns (max)', 'bids/job', 'shards/job', 'makespan/ideal (max)', 'vs whole mesh', 'jobs lost', 'abandoned', 'sim s', 'wall s']
  const rows = records.map(r => [
    String(r.n), r.regime, String(r.controlBytesPerNodePerSec), String(r.advertsHeardPerNodePerSec), String(r.ihaveIdsPerNodePerSec),
    `${r.connectionsPerNode} (${r.connectionsP99}, ${r.connectionsMax})`, `${r.connectionsTotalMean} (${r.connectionsTotalMax})`,
    String(r.bidsPerJob), String(r.shardsPerJob), `${r.makespanRatio} (${r.makespanRatioMax})`, String(r.makespanRatioVsWholeMesh),
    String(r.jobsLost), String(r.jobsAbandoned), String(r.secondsSimulated), String(r.wallSeconds)
  ])
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map(r => (r[i] ?? '').length)))
  const line = (cells: string[]): string => cells.map((c, i) => c.padStart(widths[i] ?? 0)).join('  ')
  return [line(head), ...rows.map(line)].join('\n')
}
