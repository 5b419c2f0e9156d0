/**
 * One job as a node's Coordinator runs it (src/node/jobs/coordinator.ts,
 * `run` and `collectBids`), with the network between the coordinator and
 * its peers modelled: the call for bids through the real bidOrder and
 * gatherBids, the split through planShards, and dispatch through a real
 * JobRun whose `send` seam resolves after the modelled transfer and compute
 * times, or fails when the connection to the peer goes.
 */
import { JobRun } from '../../src/node/jobs/job-run.ts'
import { Job } from '../../src/node/jobs/job.ts'
import { bidOrder, gatherBids, wantedPeers } from '../../src/node/jobs/bid-sample.ts'
import { planShards } from '../../src/node/jobs/split.ts'
import { LinkMeter, linkAdjustedRate } from '../../src/node/jobs/links.ts'
import { inflightLimit, isSmallJob, seedOf } from '../../src/node/jobs/coordinator.ts'
import { PEER_QUEUE_ALLOWANCE, OWN_JOBS_RESERVE } from '../../src/node/jobs/job-manager.ts'
import { DEFAULT_MAX_QUEUE } from '../../src/compute/pool.ts'
import { getOperator } from '../../src/compute/operators/index.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { BID_PROTOCOL, BID_TIMEOUT_MS } from '../../src/protocol/bid/index.ts'
import { RemoteShardError, SHARD_PROTOCOL } from '../../src/protocol/shard/index.ts'
import { DEFAULT_WIRE_LIMITS } from '../../src/protocol/limits.ts'
import { TensormeshError, errorCode, errorMessage } from '../../src/errors.ts'
import type { Mesh, SimNode, Task } from './mesh.ts'
import type { Participant } from '../../src/node/jobs/job-run.ts'
import type { SplitBid } from '../../src/node/jobs/split.ts'
import type { BidAnswer, BidRequest } from '../../src/protocol/bid/index.ts'
import type { OutgoingShard, ShardOutcome } from '../../src/protocol/shard/index.ts'
import type { ExecutorPool } from '../../src/compute/index.ts'
import type { RunOptions, RunResult } from '../../src/compute/pool.ts'
import type { ShardTask, Tensors } from '../../src/compute/operators/types.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'
import type { Libp2p } from '@libp2p/interface'

export interface JobOutcome {
  index: number
  id: string
  coordinator: string
  /** succeeded, lost (JobRun rejected) or abandoned (its coordinator left: the client's node is gone). */
  state: 'succeeded' | 'lost' | 'abandoned'
  error?: { code: string, message: string }
  wanted: number
  candidates: number
  bidRequests: number
  bidAnswers: number
  accepted: number
  shards: number
  copies: number
  retries: number
  backups: number
  failedCopies: Record<string, number>
  participantsLost: number
  /** Dispatch time by which half, 90%, 99% and all of the shards were done. */
  doneMs: { p50: number, p90: number, p99: number, all: number }
  /**
   * What the split itself predicts: each accepting peer runs its planned
   * shards one per slot, a shard at the peer's rate over its slots (the
   * slowest peer's share decides). Above idealMs when a slow peer's share is
   * fewer shards than it has slots.
   */
  splitMs: number
  bidMs: number
  dispatchMs: number
  totalMs: number
  /** Total work over the accepting peers' bid rates (their advertised GFLOPS), and over every live node's. */
  idealMs: number
  idealMeshMs: number
  ratio: number
  ratioDispatch: number
  ratioMesh: number
}

export interface JobHooks {
  /** Called once dispatch starts, with the participants (the test kills one mid-job). */
  onDispatch?: (participants: Participant[], coordinator: SimNode) => void
}


/** JobManager.shareOf / remoteCapacity, from the node's slots. */
const shareOf = (n: SimNode): number => Math.max(n.slots, 1) + PEER_QUEUE_ALLOWANCE
const remoteCapacity = (n: SimNode): number => Math.max(n.slots + DEFAULT_MAX_QUEUE - OWN_JOBS_RESERVE, 1)

/** JobManager.bid: a serving node's answer from its own state. */
function bidAnswer (peer: SimNode, req: BidRequest, from: string): BidAnswer {
  const decline = (reason: string): BidAnswer => ({ accept: false, units: 0, unitsPerSecond: 0, startDelayMs: 0, slots: 0, reason })
  if ((peer.serving.get(from) ?? 0) >= shareOf(peer)) return decline(`you already have ${shareOf(peer)} shards here`)
  const unitsPerSecond = Math.max(peer.gflops, 1e-9) * 1e9 / Math.max(req.flopsPerUnit, 1e3)
  const slots = Math.max(peer.slots, 1)
  return { accept: true, units: req.units, unitsPerSecond, startDelayMs: (peer.exec.queued / slots) * 1000, slots, reason: '' }
}

const partialOf = (units: number): Tensors => ({ out: hostTensor('float32', [units, 1], new Float32Array(units)) })

interface Ctx {
  mesh: Mesh
  coord: SimNode
  req: BidRequest
  counts: { requests: number, answers: number }
}

/** One candidate's answer to a call for bids: a round trip, or nothing from a peer that is gone. */
function ask (ctx: Ctx, candidate: string): Promise<{ peer: string, answer?: BidAnswer, error?: string }> {
  const { mesh, coord, req } = ctx
  const clock = mesh.clock
  ctx.counts.requests++
  if (mesh.measuring) mesh.stats.bidRequests++
  return new Promise(resolve => {
    const peer = mesh.nodes.get(candidate)
    const fail = (ms: number, error: string): void => { clock.setTimeout(() => { resolve({ peer: candidate, error }) }, ms) }
    if (peer === undefined) { fail(0, 'unknown peer'); return }
    const lat = mesh.latency(coord, peer)
    // A gone host never answers (requestBid's BID_TIMEOUT_MS); a crashed process's host refuses at once.
    const goneMs = peer.leave === 'crash' ? 2 * lat : BID_TIMEOUT_MS
    let link = coord.links.get(candidate)
    let setup = 0
    if (link === undefined) {
      if (!peer.alive) { fail(Math.min(goneMs, mesh.o.model.dialTimeoutMs), 'dial failed'); return }
      link = mesh.dial(coord, candidate)
      if (link === undefined) { fail(0, 'dial failed'); return }
      setup = mesh.o.model.dialRtts * 2 * lat
    }
    // The bid stream is open for the round trip: the keeper sees the connection in use by a job meanwhile.
    const closeStream = mesh.openStream(link, BID_PROTOCOL)
    const answered = (value: { peer: string, answer?: BidAnswer, error?: string }): void => { closeStream(); resolve(value) }
    if (!peer.alive) { clock.setTimeout(() => { answered({ peer: candidate, error: 'no answer' }) }, goneMs); return }
    const t0 = mesh.now
    clock.setTimeout(() => {
      if (!peer.alive) { clock.setTimeout(() => { answered({ peer: candidate, error: 'no answer' }) }, Math.max(0, t0 + goneMs - mesh.now)); return }
      const answer = bidAnswer(peer, req, coord.id)
      clock.setTimeout(() => {
        ctx.counts.answers++
        if (mesh.measuring) mesh.stats.bidAnswers++
        answered({ peer: candidate, answer })
      }, lat)
    }, setup + lat)
  })
}

/**
 * The shard protocol as the coordinator sees it: inputs over the link, the
 * peer's admission (its share per coordinator) and queue, compute, the
 * partial back. The connection closing fails the stream.
 */
function send (ctx: Ctx, peerId: string, shard: OutgoingShard, signal: AbortSignal): Promise<ShardOutcome> {
  const { mesh, coord } = ctx
  const clock = mesh.clock
  const m = mesh.o.model
  const units = shard.end - shard.start
  const bytesIn = units * m.bytesInPerUnit
  const bytesOut = shard.resultBytes ?? units * m.bytesOutPerUnit
  return new Promise<ShardOutcome>((resolve, reject) => {
    const peer = mesh.nodes.get(peerId)
    if (peer === undefined) { reject(new TensormeshError('ERR_DIAL_FAILED', 'unknown peer')); return }
    let link = coord.links.get(peerId)
    let setup = 0
    if (link === undefined) {
      if (!peer.alive) {
        const ms = peer.leave === 'crash' ? 2 * mesh.latency(coord, peer) : m.dialTimeoutMs
        clock.setTimeout(() => { reject(new TensormeshError('ERR_DIAL_FAILED', 'the peer does not answer dials')) }, ms)
        return
      }
      link = mesh.dial(coord, peerId)
      if (link === undefined) { reject(new TensormeshError('ERR_DIAL_FAILED', 'dial failed')); return }
      setup = m.dialRtts * 2 * mesh.latency(coord, peer)
    }
    const conn = link
    let done = false
    let task: Task | undefined
    let admitted = false
    const release = (): void => {
      if (!admitted) return
      admitted = false
      peer.serving.set(coord.id, (peer.serving.get(coord.id) ?? 1) - 1)
      peer.remoteInflight--
    }
    const finish = (settle: () => void): void => {
      if (done) return
      done = true
      closeStream()
      signal.removeEventListener('abort', onAbort)
      if (task !== undefined && peer.alive) peer.exec.cancel(task)
      release()
      settle()
    }
    const failStream = (err: Error): void => { finish(() => { reject(err) }) }
    const onAbort = (): void => { finish(() => { reject(signal.reason instanceof Error ? signal.reason : new Error('aborted')) }) }
    if (signal.aborted) { reject(signal.reason instanceof Error ? signal.reason : new Error('aborted')); return }
    const closeStream = mesh.openStream(conn, SHARD_PROTOCOL, failStream)
    signal.addEventListener('abort', onAbort)
    clock.setTimeout(() => {
      if (done || !peer.alive) return // a gone peer's stream fails when its connection does
      const arrive = mesh.transfer(coord, peer, bytesIn)
      clock.setTimeout(() => {
        if (done || !peer.alive) return
        if ((peer.serving.get(coord.id) ?? 0) >= shareOf(peer) || peer.remoteInflight >= remoteCapacity(peer)) {
          const lat = mesh.latency(coord, peer)
          clock.setTimeout(() => { finish(() => { reject(new RemoteShardError('ERR_PEER_OVER_LIMIT', 'peer over its limit')) }) }, lat)
          return
        }
        admitted = true
        peer.serving.set(coord.id, (peer.serving.get(coord.id) ?? 0) + 1)
        peer.remoteInflight++
        task = peer.exec.submit(units * m.unitGflop * 1e9, (computeMs) => {
          task = undefined
          release()
          const back = mesh.transfer(peer, coord, bytesOut)
          clock.setTimeout(() => {
            finish(() => { resolve({ partial: partialOf(units), computeMs, bytesIn, bytesOut }) })
          }, back)
        })
      }, arrive)
    }, setup)
  })
}

/** The coordinator's own pool: its executor under the same clock. */
function localPool (mesh: Mesh, coord: SimNode): ExecutorPool {
  const m = mesh.o.model
  const pool = {
    run: (task: ShardTask, options: RunOptions = {}): Promise<RunResult> => new Promise<RunResult>((resolve, reject) => {
      const units = (task.inputs.x as HostTensor).shape[0] ?? 0
      const signal = options.signal
      if (signal?.aborted === true) { reject(new TensormeshError('ERR_ABORTED', 'aborted')); return }
      const t = coord.exec.submit(units * m.unitGflop * 1e9, (computeMs) => {
        signal?.removeEventListener('abort', onAbort)
        resolve({ partial: partialOf(units), computeMs })
      })
      const onAbort = (): void => { coord.exec.cancel(t); reject(new TensormeshError('ERR_ABORTED', 'aborted')) }
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }
  return pool as unknown as ExecutorPool
}

/** Link rates each coordinator has measured, across its jobs (as a node keeps them). */
const meters = new WeakMap<SimNode, LinkMeter>()

/** Runs one job from `coord`, as Coordinator.run does, and says how it went. */
export async function runJob (mesh: Mesh, coord: SimNode, index: number, hooks: JobHooks = {}): Promise<JobOutcome> {
  const m = mesh.o.model
  const t0 = mesh.now
  const id = `sim-${mesh.o.seed}-${mesh.o.n}-${index}`
  const inputs = { x: hostTensor('float32', [m.units, 1], new Float32Array(m.units)) }
  const job = new Job({ id, op: 'map', params: { ops: [{ op: 'relu' }] }, inputs, verify: { replicas: 1, spotCheck: 0, rtol: 1e-3 }, schedule: { shardsPerPeer: m.shardsPerPeer } })
  const op = getOperator(job.op)
  const plan = op.plan(inputs, job.params)
  // The modelled work: each row is `unitGflop` of compute and a few KB each way.
  plan.cost = { flopsPerUnit: m.unitGflop * 1e9, bytesInPerUnit: m.bytesInPerUnit, bytesInFixed: 0, bytesOutPerUnit: m.bytesOutPerUnit }
  job.plan = plan
  const req: BidRequest = { jobId: job.id, op: job.op, units: plan.units, ...plan.cost }
  const ctx: Ctx = { mesh, coord, req, counts: { requests: 0, answers: 0 } }
  const links = meters.get(coord) ?? new LinkMeter()
  meters.set(coord, links)
  const out: JobOutcome = {
    index, id, coordinator: coord.id, state: 'succeeded', wanted: wantedPeers(plan.units), candidates: 0, bidRequests: 0, bidAnswers: 0, accepted: 0,
    shards: 0, copies: 0, retries: 0, backups: 0, failedCopies: {}, participantsLost: 0, doneMs: { p50: 0, p90: 0, p99: 0, all: 0 }, splitMs: 0, bidMs: 0, dispatchMs: 0, totalMs: 0,
    idealMs: 0, idealMeshMs: 0, ratio: 0, ratioDispatch: 0, ratioMesh: 0
  }
  const meshRate = mesh.live.reduce((s, n) => s + n.gflops, 0) * 1e9 / plan.cost.flopsPerUnit
  out.idealMeshMs = plan.units / meshRate * 1000
  // The client's node is the coordinator: if it goes, so does the job (not a loss to churn).
  const onCoordinatorGone = (): void => { job.controller.abort(new TensormeshError('ERR_COORDINATOR_GONE', 'the coordinator left')) }
  coord.onDeath.add(onCoordinatorGone)
  // A node sweeps its directory every expiry / 12: the coordinator's sweeps are what make a gone peer leave mid-job.
  coord.directory.start()
  job.setState('running')
  let participants: Participant[] = []
  try {
    const candidates = coord.directory.list().map(e => e.capacity).filter(c => c.operators.includes(job.op) && c.slots > 0)
    out.candidates = candidates.length
    const remote = await gatherBids(bidOrder(candidates, seedOf(job.id)), wantedPeers(plan.units), async (c) => await ask(ctx, c.peerId), (c) => ({ peer: c.peerId, error: 'no answer in time' }))
    if (!coord.alive) throw new TensormeshError('ERR_COORDINATOR_GONE', 'the coordinator left')
    const self = { peer: coord.id, answer: bidAnswer(coord, req, '') }
    const all = [self, ...remote]
    job.bids = all.map(b => ({ peer: b.peer, accept: b.answer?.accept === true, ...(b.answer?.accept === true ? { unitsPerSecond: b.answer.unitsPerSecond } : { reason: b.answer?.reason ?? 'no answer' }) }))
    out.bidMs = mesh.now - t0
    const accepted = all.filter(b => b.answer?.accept === true)
    out.accepted = accepted.length
    const bytesPerUnit = plan.cost.bytesInPerUnit + plan.cost.bytesOutPerUnit
    const split: SplitBid[] = accepted.map(b => ({
      peer: b.peer,
      unitsPerSecond: b.peer === coord.id ? b.answer?.unitsPerSecond ?? 0 : linkAdjustedRate(b.answer?.unitsPerSecond ?? 0, bytesPerUnit, links.estimate(b.peer)),
      maxUnits: b.answer?.units ?? 0
    }))
    const rate = accepted.reduce((s, b) => s + (b.answer?.unitsPerSecond ?? 0), 0)
    out.idealMs = plan.units / rate * 1000
    const planned = planShards(plan.units, split, job.schedule.shardsPerPeer ?? m.shardsPerPeer)
    job.shards = planned.map(s => ({ index: s.index, start: s.start, end: s.end, state: 'pending', attempts: 0, bytesIn: 0, bytesOut: 0, history: [] }))
    const preferred = planned.map(s => s.preferred)
    out.shards = job.shards.length
    for (const b of accepted) {
      const planned = preferred.filter(p => p === b.peer).length
      const slots = Math.max(b.answer?.slots ?? 1, 1)
      const perShardMs = slots / Math.max(b.answer?.unitsPerSecond ?? 1e-9, 1e-9) * 1000
      out.splitMs = Math.max(out.splitMs, Math.ceil(planned / slots) * perShardMs)
    }
    const small = isSmallJob(plan.cost, job.shards)
    participants = accepted.map(b => {
      const local = b.peer === coord.id
      const slots = b.answer?.slots ?? 1
      return { peer: b.peer, local, rate: b.answer?.unitsPerSecond ?? 1, slots, limit: inflightLimit(slots, local, small), inflight: 0, excluded: false }
    })
    const d0 = mesh.now
    const doneAt: number[] = []
    const run = new JobRun({
      libp2p: { peerId: coord.peerId } as unknown as Libp2p,
      directory: coord.directory,
      pool: localPool(mesh, coord),
      log: mesh.log,
      links,
      send: async (peer, shard, signal) => await send(ctx, peer, shard, signal)
    }, {
      job, op, inputs, participants, preferred, verify: job.verify, backups: job.schedule.backups !== false, limits: DEFAULT_WIRE_LIMITS,
      onShardDone: () => { doneAt.push(mesh.now - d0) }
    })
    const ids = new Set(participants.map(p => p.peer))
    const lost = new Set<string>()
    const watchers: Array<[SimNode, () => void]> = []
    for (const p of participants) {
      const node = mesh.nodes.get(p.peer)
      if (node === undefined || node === coord) continue
      const w = (): void => { lost.add(p.peer) }
      node.onDeath.add(w)
      watchers.push([node, w])
    }
    hooks.onDispatch?.(participants, coord)
    try {
      job.finish('succeeded', await run.run())
    } finally {
      for (const [node, w] of watchers) node.onDeath.delete(w)
      out.participantsLost = [...lost].filter(p => ids.has(p)).length
      out.dispatchMs = mesh.now - d0
      const q = (f: number): number => Math.round(doneAt[Math.min(doneAt.length - 1, Math.max(0, Math.ceil(f * doneAt.length) - 1))] ?? 0)
      out.doneMs = { p50: q(0.5), p90: q(0.9), p99: q(0.99), all: q(1) }
    }
  } catch (err) {
    job.finish('failed', undefined, { code: errorCode(err), message: errorMessage(err) })
    out.state = coord.alive ? 'lost' : 'abandoned'
    out.error = { code: errorCode(err), message: errorMessage(err).slice(0, 300) }
  } finally {
    coord.onDeath.delete(onCoordinatorGone)
    coord.directory.stop()
  }
  out.totalMs = mesh.now - t0
  out.bidRequests = ctx.counts.requests
  out.bidAnswers = ctx.counts.answers
  for (const s of job.shards) {
    for (const h of s.history) {
      out.copies++
      if (h.kind === 'retry') out.retries++
      if (h.kind === 'backup') out.backups++
      if (h.error !== undefined && h.error.code !== 'ERR_SUPERSEDED') out.failedCopies[h.error.code] = (out.failedCopies[h.error.code] ?? 0) + 1
    }
  }
  if (out.state === 'succeeded' && out.idealMs > 0) {
    out.ratio = out.totalMs / out.idealMs
    out.ratioDispatch = out.dispatchMs / out.idealMs
    out.ratioMesh = out.totalMs / out.idealMeshMs
  }
  return out
}
