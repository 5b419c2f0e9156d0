/**
 * Issue 16: the mesh at 1,000, 3,000 and 10,000 nodes, simulated with the
 * node's own planner code (src/), on a virtual clock.
 *
 *   node scripts/scale-sim.ts                                  # 1000, 3000, 10000; writes bench/scale.json
 *   node scripts/scale-sim.ts --sizes 1000 --minutes 3 --seed 7
 *   node scripts/scale-sim.ts --calibrate                      # 25, 50, 100, 200 as the real bench runs them
 *   node scripts/scale-report.ts                               # bench/scale.md and bench/scale-*.svg
 *
 * Real code, per node: CapacityService (regimes, publish decisions, the
 * mesh-size estimate, hello admission, advert validation) over a stand-in
 * pubsub, PeerDirectory (expiry as MeshNode configures it), ConnectionKeeper
 * (its timers, its own set, planConnections, sample) over a stand-in libp2p;
 * per job, as Coordinator.run does it: bidOrder and gatherBids, planShards,
 * inflightLimit, and a JobRun whose `send` seam and pool the network model
 * answers, with operator `map` and its reducer. Time is virtual
 * (scale-sim/clock.ts): setTimeout, setInterval, performance.now, Date.now
 * and AbortSignal.timeout run on it. Written here, not taken from src/:
 * the shard and bid wire (latency, bandwidth, a gone peer's silence),
 * JobManager.bid's answer and its per-coordinator share, gossipsub's mesh
 * and IHAVE counts, the executor pool (slots, a queue), churn.
 *
 * Modelled (scale-sim/model.ts, printed with every run):
 *  - one-way latency per pair: lognormal, median 20 ms, sigma 0.6, capped
 *    at 500 ms, drawn once per pair;
 *  - bandwidth per node: 30% 10 Mbit/s, 50% 100 Mbit/s, 20% 1 Gbit/s; a
 *    transfer takes bytes / min(both ends) + latency, each end's link
 *    serialising its own transfers;
 *  - GFLOPS per node (whole node, advertised): lognormal, median 20, sigma
 *    0.8, clipped to [2, 500]; real speed x lognormal(0.2), each task x
 *    lognormal(0.1); slots 1, 2, 4 or 8, a shard on one slot at GFLOPS/slots;
 *  - churn: 5% of the nodes a minute leave without goodbye and as many join
 *    with new ids (Poisson); half the leaves are crashed processes (peers
 *    notice after one link latency), half hosts gone (10-20 s: libp2p's
 *    connection monitor; a dial to one fails after 4 s, MeshNode's dial
 *    timeout); a newcomer dials one random live bootstrap node;
 *  - gossip: every advert reaches every live node, `copiesPerAdvert` copies
 *    each; IHAVE ids of the last 3 heartbeats to max(6, 0.25 x non-mesh)
 *    peers every 1 s; a gossipsub mesh per node (D 6, D_lo 4, D_hi 12);
 *  - the job: 1,000 units of 20 GFLOP, 4 KiB in and out each, 1,000 shards
 *    (shardsPerPeer 1000), 5 jobs one after another from random live
 *    coordinators after a warm-up of two sample windows (128 s).
 * Wire sizes come from bench/scale-calibration.json when the real bench has
 * written it, else from the defaults in scale-sim/model.ts.
 */
import { parseArgs } from 'node:util'
import { fileURLToPath } from 'node:url'
import { INTERNET_MODEL, LOOPBACK_MODEL, describeModel, loadCalibration } from './scale-sim/model.ts'
import { runScenario } from './scale-sim/run.ts'
import { CALIBRATED_FIGURES, SCALE_JSON, calibrationErrors, readRecords, table, toRecord, writeRecords } from './scale-sim/report.ts'
import type { SimulatedRecord } from './scale-sim/report.ts'
import type { ModelParams } from './scale-sim/model.ts'

const { values } = parseArgs({
  options: {
    sizes: { type: 'string' },
    minutes: { type: 'string' },
    seed: { type: 'string' },
    calibrate: { type: 'boolean' },
    out: { type: 'string' },
    jobs: { type: 'string' },
    'unit-gflop': { type: 'string' },
    quiet: { type: 'boolean' }
  }
})

function number (flag: string, v: string | undefined, fallback: number, min: number): number {
  if (v === undefined) return fallback
  const x = Number(v)
  if (!Number.isFinite(x) || x < min) throw new Error(`--${flag}: ${JSON.stringify(v)} is not a number >= ${min}`)
  return x
}

const calibrate = values.calibrate === true
const sizes = values.sizes !== undefined
  ? values.sizes.split(',').map(s => number('sizes', s.trim(), 0, 2))
  : calibrate ? [25, 50, 100, 200] : [1000, 3000, 10000]
const seed = number('seed', values.seed, 1, 0)
const minutes = number('minutes', values.minutes, calibrate ? 0.5 : 2, 0)
const jobs = number('jobs', values.jobs, calibrate ? 1 : 5, 0)
const out = values.out !== undefined ? new URL(values.out, `file://${process.cwd()}/`) : SCALE_JSON
const base: ModelParams = calibrate ? LOOPBACK_MODEL : INTERNET_MODEL
const model: ModelParams = { ...base, unitGflop: number('unit-gflop', values['unit-gflop'], base.unitGflop, 1e-6) }
const { calibration, source } = loadCalibration()
const modelDescription = describeModel(model, calibration)
const say = (line: string): void => { if (values.quiet !== true) process.stderr.write(line + '\n') }

say(`scale-sim: ${calibrate ? 'calibration (the real bench\'s setting: loopback, no churn, cold start)' : 'scale'} runs at N = ${sizes.join(', ')}, seed ${seed}; wire sizes from ${source}`)
for (const line of modelDescription) say(`  model: ${line}`)

const real = readRecords(out)
const records: SimulatedRecord[] = []
const t0 = performance.now()
for (const n of sizes) {
  const res = await runScenario({
    n,
    seed,
    model,
    calibration,
    churn: !calibrate,
    start: calibrate ? 'cold' : undefined,
    // The real bench: a 20 s window without jobs, then one job.
    quietMs: calibrate ? 20_000 : 0,
    measureMs: minutes * 60_000,
    jobs,
    progress: say
  })
  const rec = toRecord(res, calibrate ? 'calibration' : 'scale', { ...calibration, source }, modelDescription, calibrate ? 0 : model.churnPerMinute)
  const errors = calibrationErrors(rec, real)
  if (errors !== undefined) {
    rec.calibrationError = errors
    for (const f of CALIBRATED_FIGURES) {
      const e = errors[f.sim]
      if (e !== undefined) say(`n=${n}: ${f.label}: simulated ${String(rec[f.sim])}, relative error ${(e * 100).toFixed(1)}% against the real bench`)
    }
  } else if (calibrate) {
    say(`n=${n}: no real record of this N in ${fileURLToPath(out)} to compare with (run npm run bench -- --only scale)`)
  }
  records.push(rec)
  say(`n=${n}: ${res.secondsSimulated.toFixed(0)} s simulated in ${res.wallSeconds.toFixed(1)} s`)
}
writeRecords(records, out)
process.stdout.write(table(records) + '\n')
say(`scale-sim: ${((performance.now() - t0) / 1000).toFixed(1)} s in all; records in ${fileURLToPath(out)} (node scripts/scale-report.ts renders them)`)
