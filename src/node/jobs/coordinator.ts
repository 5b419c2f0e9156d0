import { peerIdFromString } from '@libp2p/peer-id'
import { TensormeshError, errorCode, errorMessage } from '../../errors.ts'
import { getOperator } from '../../compute/operators/index.ts'
import { requestBid } from '../../protocol/bid/index.ts'
import { sendShard } from '../../protocol/shard/index.ts'
import { peerText } from '../../protocol/sanitize.ts'
import { planShards, DEFAULT_SHARDS_PER_PEER } from './split.ts'
import type { Job, ShardAttempt, ShardRecord } from './job.ts'
import type { SplitBid } from './split.ts'
import type { ExecutorPool } from '../../compute/index.ts'
import type { Operator, Reducer, ShardTask, Tensors } from '../../compute/operators/types.ts'
import type { BidAnswer, BidRequest } from '../../protocol/bid/index.ts'
import type { WireLimits } from '../../protocol/limits.ts'
import type { Logger } from '../log.ts'
import type { PeerDirectory } from '../peer-directory.ts'
import type { Libp2p } from '@libp2p/interface'

/** DESIGN: a failed shard goes to another peer, up to three attempts in all. */
export const MAX_SHARD_ATTEMPTS = 3

/**
 * Shards in flight to one peer: its slots plus one, so the next shard's
 * inputs travel while the current ones compute. Capped so one peer's
 * advertised slots cannot make us hold the whole job in send buffers.
 */
export const MAX_INFLIGHT_PER_PEER = 8

/**
 * A shard is late when it takes this many times its bidder's own estimate,
 * plus the slack below. Four times covers a noisy shared machine; a peer that
 * is that far off its word is better treated as failed.
 */
export const DEADLINE_FACTOR = 4
/** Added to every deadline: process start-up, first-use kernel compilation, transfer on a slow link. */
export const DEADLINE_SLACK_MS = 10_000
/** Transfer rate assumed for deadlines (a slow LAN); loopback is ~240 MB/s with noise. */
export const DEADLINE_BYTES_PER_SECOND = 20e6

export interface CoordinatorComponents {
  libp2p: Libp2p
  directory: PeerDirectory
  pool: ExecutorPool
  log: Logger
  /** This node's own answer to a call for bids (the same as its peers get). */
  bid: (req: BidRequest) => BidAnswer
}

/**
 * Seams for tests and fault injection: called at fixed points of a job's
 * life and awaited, so a test can stop a peer between bid and shard.
 */
export interface JobHooks {
  afterBids?: (job: Job) => Promise<void> | void
}

export interface CoordinatorInit {
  shardsPerPeer?: number
  limits: WireLimits
  hooks?: JobHooks
}

interface Worker {
  peer: string
  local: boolean
  rate: number
  slots: number
  limit: number
  inflight: number
  excluded: boolean
  attempts: Map<AbortController, number>
}

/**
 * Runs one job as its coordinator: calls for bids, splits by the bids,
 * streams shards to peers (itself included), retries failures elsewhere and
 * reduces partials as they arrive.
 */
export class Coordinator {
  private readonly c: CoordinatorComponents
  private readonly init: CoordinatorInit

  constructor (components: CoordinatorComponents, init: CoordinatorInit) {
    this.c = components
    this.init = init
  }

  get selfId (): string {
    return this.c.libp2p.peerId.toString()
  }

  async run (job: Job): Promise<void> {
    const plan = job.plan
    const inputs = job.inputs
    if (plan === undefined || inputs === undefined) throw new Error('job has no plan')
    const op = getOperator(job.op)
    job.setState('running')
    try {
      const bids = await this.collectBids(job)
      await this.init.hooks?.afterBids?.(job)
      if (job.finished) return
      const accepted = bids.filter(b => b.answer?.accept === true)
      if (accepted.length === 0) {
        throw new TensormeshError('ERR_NO_CAPACITY', `no peer accepted job ${job.id}: ${bids.map(b => `${short(b.peer)}: ${b.answer?.reason ?? 'no answer'}`).join('; ') || 'no candidates'}`)
      }
      const split: SplitBid[] = accepted.map(b => ({ peer: b.peer, unitsPerSecond: b.answer?.unitsPerSecond ?? 0, maxUnits: b.answer?.units ?? 0 }))
      const planned = planShards(plan.units, split, this.init.shardsPerPeer ?? DEFAULT_SHARDS_PER_PEER)
      job.shards = planned.map(s => ({ index: s.index, start: s.start, end: s.end, state: 'pending', attempts: 0, bytesIn: 0, bytesOut: 0, history: [] }))
      const workers = new Map<string, Worker>(accepted.map(b => {
        const local = b.peer === this.selfId
        const slots = b.answer?.slots ?? 1
        return [b.peer, { peer: b.peer, local, rate: b.answer?.unitsPerSecond ?? 1, slots, limit: Math.min(local ? slots : slots + 1, MAX_INFLIGHT_PER_PEER), inflight: 0, excluded: false, attempts: new Map() }]
      }))
      job.progressed()
      const result = await this.dispatch(job, op, inputs, planned.map(s => s.preferred), workers)
      job.finish('succeeded', result)
    } catch (err) {
      if (job.finished) return // cancelled meanwhile
      job.finish('failed', undefined, { code: errorCode(err), message: errorMessage(err) })
    }
  }

  private async collectBids (job: Job): Promise<Array<{ peer: string, answer?: BidAnswer }>> {
    const plan = job.plan
    if (plan === undefined) return []
    const req: BidRequest = { jobId: job.id, op: job.op, units: plan.units, ...plan.cost }
    const candidates = this.c.directory.list()
      .map(e => e.capacity)
      .filter(c => c.operators.includes(job.op) && c.slots > 0)
    const remote = await Promise.all(candidates.map(async c => {
      try {
        return { peer: c.peerId, answer: await requestBid(this.c.libp2p, peerIdFromString(c.peerId), req, job.controller.signal) }
      } catch (err) {
        return { peer: c.peerId, error: errorMessage(err) }
      }
    }))
    const self = { peer: this.selfId, answer: this.c.bid(req) }
    const all = [self, ...remote]
    job.bids = all.map(b => ({
      peer: b.peer,
      accept: b.answer?.accept === true,
      ...(b.answer?.accept === true ? { unitsPerSecond: b.answer.unitsPerSecond } : { reason: b.answer?.reason ?? `no answer: ${'error' in b ? String(b.error) : ''}` })
    }))
    return all
  }

  private async dispatch (job: Job, op: Operator, inputs: Tensors, preferred: string[], workers: Map<string, Worker>): Promise<Tensors[string]> {
    const plan = job.plan
    if (plan === undefined) throw new Error('job has no plan')
    const reducer: Reducer = op.reducer(plan)
    const pending: number[] = job.shards.map(s => s.index)
    const causes = new Map<number, string[]>()

    return await new Promise((resolve, reject) => {
      let settled = false
      const fail = (err: Error): void => {
        if (settled) return
        settled = true
        cleanup()
        for (const w of workers.values()) for (const ctl of w.attempts.keys()) ctl.abort(err)
        reject(err)
      }
      const onCancel = (): void => { fail(job.controller.signal.reason instanceof Error ? job.controller.signal.reason : new Error('cancelled')) }
      const onLeave = (evt: CustomEvent<{ peerId: string, reason: string }>): void => {
        const w = workers.get(evt.detail.peerId)
        if (w === undefined) return
        for (const ctl of w.attempts.keys()) ctl.abort(new TensormeshError('ERR_PEER_GONE', `peer left the mesh (${evt.detail.reason})`))
      }
      const cleanup = (): void => {
        job.controller.signal.removeEventListener('abort', onCancel)
        this.c.directory.removeEventListener('peer:leave', onLeave)
      }
      job.controller.signal.addEventListener('abort', onCancel)
      this.c.directory.addEventListener('peer:leave', onLeave)

      const pick = (w: Worker): number | undefined => {
        // Its own shards first, in order.
        const own = pending.findIndex(i => preferred[i] === w.peer)
        if (own >= 0) return pending.splice(own, 1)[0]
        // Otherwise, when it has an idle slot, take the last shard cut for someone else.
        if (w.inflight >= w.slots || pending.length === 0) return undefined
        return pending.pop()
      }

      const pump = (): void => {
        if (settled) return
        if (pending.length === 0 && job.shards.every(s => s.state === 'done')) {
          settled = true
          cleanup()
          try {
            resolve(reducer.result())
          } catch (err) {
            reject(err instanceof Error ? err : new Error(String(err)))
          }
          return
        }
        for (const w of workers.values()) {
          while (!w.excluded && w.inflight < w.limit) {
            const index = pick(w)
            if (index === undefined) break
            launch(w, index)
          }
        }
        const active = [...workers.values()].some(w => w.inflight > 0)
        if (!active && pending.length > 0) {
          const index = pending[0] ?? 0
          fail(new TensormeshError('ERR_SHARD_FAILED', `shard ${index} has no peer left to run it; causes: ${(causes.get(index) ?? ['every peer failed']).join('; ')}`))
        }
      }

      const launch = (w: Worker, index: number): void => {
        const shard = job.shards[index] as ShardRecord
        shard.attempts++
        shard.state = 'running'
        const attempt: ShardAttempt = { peer: w.peer, startedAt: Date.now(), kind: shard.attempts > 1 ? 'retry' : 'first' }
        shard.history.push(attempt)
        const ctl = new AbortController()
        w.attempts.set(ctl, index)
        w.inflight++
        job.progressed()
        const units = shard.end - shard.start
        const task = op.shard(plan, inputs, { index, start: shard.start, end: shard.end })
        const bytes = plan.cost.bytesInFixed + units * (plan.cost.bytesInPerUnit + plan.cost.bytesOutPerUnit)
        const deadlineMs = (units / w.rate) * 1000 * DEADLINE_FACTOR + (w.local ? 0 : bytes / DEADLINE_BYTES_PER_SECOND * 1000) + DEADLINE_SLACK_MS
        const timer = setTimeout(() => { ctl.abort(new TensormeshError('ERR_SHARD_DEADLINE', `no result within ${Math.round(deadlineMs)} ms (${DEADLINE_FACTOR}x the bid's estimate plus slack)`)) }, deadlineMs)
        const t0 = performance.now()
        this.runAttempt(w, job, index, task, ctl.signal).then(outcome => {
          attempt.ms = Math.round(performance.now() - t0)
          attempt.computeMs = Math.round(outcome.computeMs)
          if (settled || shard.state === 'done') return
          reducer.add({ index, start: shard.start, end: shard.end }, outcome.partial)
          shard.state = 'done'
          shard.peer = w.peer
          shard.ms = attempt.ms
          shard.computeMs = attempt.computeMs
          shard.bytesIn = outcome.bytesIn
          shard.bytesOut = outcome.bytesOut
        }, (err: unknown) => {
          attempt.ms = Math.round(performance.now() - t0)
          const reason = ctl.signal.aborted && ctl.signal.reason instanceof Error ? ctl.signal.reason : err
          attempt.error = { code: errorCode(reason), message: peerText(errorMessage(reason)) }
          if (settled || shard.state === 'done') return
          const list = causes.get(index) ?? []
          list.push(`attempt ${shard.attempts} on ${short(w.peer)}: ${attempt.error.code} ${attempt.error.message}`)
          causes.set(index, list)
          // The peer that failed gets no more of this job's shards.
          w.excluded = true
          this.c.log.warn({ job: job.id, shard: index, peer: w.peer, code: attempt.error.code }, 'shard attempt failed')
          if (shard.attempts >= MAX_SHARD_ATTEMPTS) {
            fail(new TensormeshError('ERR_SHARD_FAILED', `shard ${index} (units ${shard.start}..${shard.end}) failed ${shard.attempts} times: ${list.join('; ')}`))
            return
          }
          shard.state = 'pending'
          // Retried next, by whichever peer is free first.
          preferred[index] = ''
          pending.unshift(index)
          for (const other of pending) if (preferred[other] === w.peer) preferred[other] = ''
        }).finally(() => {
          clearTimeout(timer)
          w.inflight--
          w.attempts.delete(ctl)
          job.progressed()
          pump()
        })
      }

      pump()
    })
  }

  private async runAttempt (w: Worker, job: Job, index: number, task: ShardTask, signal: AbortSignal): Promise<{ partial: Tensors, computeMs: number, bytesIn: number, bytesOut: number }> {
    const shard = job.shards[index] as ShardRecord
    if (w.local) {
      const out = await this.c.pool.run(task, { signal, transfer: false })
      return { ...out, bytesIn: 0, bytesOut: 0 }
    }
    return await sendShard(this.c.libp2p, peerIdFromString(w.peer), {
      jobId: job.id, index, attempt: shard.attempts, start: shard.start, end: shard.end, task
    }, signal, this.init.limits)
  }
}

function short (peer: string): string {
  return peer.length > 12 ? `…${peer.slice(-8)}` : peer
}
