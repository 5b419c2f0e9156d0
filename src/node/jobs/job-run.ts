import { peerIdFromString } from '@libp2p/peer-id'
import { TensormeshError, errorCode, errorMessage } from '../../errors.ts'
import { RemoteShardError, sendShard } from '../../protocol/shard/index.ts'
import type { ShardSessions } from '../../protocol/shard/session.ts'
import type { OutgoingShard, RefPublisher, ShardOutcome } from '../../protocol/shard/index.ts'
import type { BulkServer } from '../../protocol/bulk/index.ts'
import { peerText } from '../../protocol/sanitize.ts'
import type { Job, ShardAttempt, ShardRecord } from './job.ts'
import type { ExecutorPool } from '../../compute/index.ts'
import type { HostTensor } from '../../compute/tensor.ts'
import type { Operator, Reducer, Tensors } from '../../compute/operators/types.ts'
import type { WireLimits } from '../../protocol/limits.ts'
import type { Logger } from '../log.ts'
import type { PeerDirectory } from '../peer-directory.ts'
import type { Libp2p } from '@libp2p/interface'
import { PaceModel } from './pace.ts'
import type { LinkMeter } from './links.ts'

/** DESIGN: a failed shard goes to another peer, up to three attempts in all. */
export const MAX_SHARD_ATTEMPTS = 3

/**
 * Shards in flight to one peer: its slots plus one, so the next shard's
 * inputs travel while the current ones compute. Capped so one peer's
 * advertised slots cannot make us hold the whole job in send buffers.
 */
export const MAX_INFLIGHT_PER_PEER = 8

/**
 * A copy is late when it takes this many times its bidder's own estimate,
 * plus the slack below. Four times covers a noisy shared machine; a peer that
 * is that far off its word is better treated as failed.
 */
export const DEADLINE_FACTOR = 4
/** Added to every deadline: first-use kernel compilation, a busy machine, transfer on a slow link. */
export const DEADLINE_SLACK_MS = 10_000
/** Transfer rate assumed for deadlines (a slow LAN); loopback is ~240 MB/s with noise. */
export const DEADLINE_BYTES_PER_SECOND = 20e6

/**
 * Backup copies (MapReduce's "backup tasks"): once no shard waits, an idle
 * peer re-runs a running copy that has taken this many times what the same
 * work costs on its own peer, transfer included (`pace.ts`). 1.5x lets
 * ordinary jitter finish first.
 */
export const BACKUP_SLOWDOWN = 1.5
/** Shards over its in-flight limit a peer may be given to restart a failed shard at once. */
export const RETRY_OVERCOMMIT = 1

/**
 * A tail backup (a copy on a slower peer, on its own pace) must save at
 * least this much: below it the work thrown away on the slow peer costs
 * more than the time won, and a copy that is slower only by its transfer is
 * left alone.
 */
export const TAIL_MIN_GAIN_MS = 1000

/** Never back up a shard younger than this: for tiny shards a copy costs more than waiting. */
export const BACKUP_MIN_MS = 300
/** How often stragglers are looked for while copies run. */
export const BACKUP_CHECK_MS = 100

/**
 * Verification compares partials from different peers with this relative
 * tolerance (max |a - b| / max |b|). Backends round differently: wasm and
 * native TF differ around 1e-6 for float32 matmul; a liar is off by far more.
 */
export const DEFAULT_VERIFY_RTOL = 1e-3
/** Replicas that disagree get at most this many tie-breaking copies before the shard fails. */
export const MAX_TIEBREAKS = 2

export interface VerifyPolicy {
  /** Distinct peers that must return the same partial for each shard (1: no replication). */
  replicas: number
  /** Fraction of remotely run shards that the coordinator re-runs itself to check. */
  spotCheck: number
  rtol: number
}

export interface Participant {
  peer: string
  local: boolean
  /** When a copy on this peer last settled (performance.now()). */
  lastSettledAt?: number
  /** Units per second this peer bid for the job (whole peer). */
  rate: number
  slots: number
  limit: number
  inflight: number
  excluded: boolean
}

interface Copy {
  participant: Participant
  ctl: AbortController
  attempt: ShardAttempt
  startedAt: number
  /** Sent while all the peer's slots were busy: it waits in the peer's queue first. */
  queued: boolean
  /** Shared inputs this copy waits for: every copy sent before the peer returned its first partial. */
  fixedBytes: number
}

interface ShardRun {
  rec: ShardRecord
  copies: Set<Copy>
  results: Array<{ peer: string, partial: Tensors }>
  /** Peers that ran or run this shard: replicas and backups go to others. */
  ran: Set<string>
  /** Agreeing results needed before the shard counts. */
  needed: number
  failures: number
  /** Spot-checked: one of the results must be the coordinator's own. */
  spot: boolean
  backups: number
  done: boolean
  causes: string[]
}

interface Want {
  index: number
  /** Only this peer may take it (spot checks run on the coordinator). */
  only?: string
}

export interface JobRunComponents {
  libp2p: Libp2p
  directory: PeerDirectory
  pool: ExecutorPool
  log: Logger
  /** Gives this job's shared inputs and blobs CIDs and serves them to peers. */
  shares?: RefPublisher
  /** Link rates measured to each peer across jobs (deadlines, backups). */
  links?: LinkMeter
  /** Serves large shard inputs over the bulk channel. */
  bulk?: BulkServer
  /** A peer's bulk port from its advert: where to push to a peer we dialed. */
  bulkPortOf?: (peer: string) => number | undefined
  /** One session stream per peer for small shards. */
  sessions?: ShardSessions
  /** How a shard reaches a remote peer; `/tensormesh/shard/1.0.0` unless a test stands in for the network. */
  send?: (peer: string, shard: OutgoingShard, signal: AbortSignal) => Promise<ShardOutcome>
}

export interface JobRunInit {
  job: Job
  op: Operator
  inputs: Tensors
  participants: Participant[]
  /** Peer each shard was cut for ('' when any may take it). */
  preferred: string[]
  verify: VerifyPolicy
  /** Start backup copies of stragglers once nothing waits. */
  backups: boolean
  limits: WireLimits
  /** Partials already reduced (a job resumed from the journal). */
  completed?: Map<number, Tensors>
  /** Called when a shard's partial is accepted (the journal keeps it). */
  onShardDone?: (index: number, partial: Tensors) => void
  /** Called when a peer's partial lost a vote. */
  onOutvoted?: (peer: string, index: number) => void
  random?: () => number
}

/**
 * One job's dispatch: which shard runs where, retries, backup copies,
 * replicas and spot checks, and the streaming reduce. Settles once.
 */
export class JobRun {
  private readonly c: JobRunComponents
  private readonly i: JobRunInit
  private readonly reducer: Reducer
  private readonly runs: ShardRun[]
  private readonly participants = new Map<string, Participant>()
  private readonly wants: Want[] = []
  private readonly selfId: string
  private readonly random: () => number
  /** What a copy should cost on each peer, learned from this job's finished copies. */
  private readonly pace: PaceModel
  /**
   * Peers that have returned a partial of this job, and so hold its shared
   * inputs. Every copy sent before that waits on the one fetch of them.
   */
  private readonly holding = new Set<string>()
  private settled = false
  private timer?: NodeJS.Timeout
  private resolve: (t: HostTensor) => void = () => {}
  private reject: (err: Error) => void = () => {}

  constructor (components: JobRunComponents, init: JobRunInit) {
    this.c = components
    this.i = init
    this.selfId = components.libp2p.peerId.toString()
    this.random = init.random ?? Math.random
    const plan = init.job.plan
    if (plan === undefined) throw new Error('job has no plan')
    this.reducer = init.op.reducer(plan)
    for (const p of init.participants) this.participants.set(p.peer, p)
    this.pace = new PaceModel(this.participants, (peer) => this.c.links?.measured(peer))
    this.runs = init.job.shards.map(rec => ({
      rec, copies: new Set(), results: [], ran: new Set(), needed: init.verify.replicas,
      failures: 0, spot: false, backups: 0, done: false, causes: []
    }))
    for (const run of this.runs) {
      const partial = init.completed?.get(run.rec.index)
      if (partial !== undefined) {
        this.reducer.add(range(run.rec), partial)
        run.done = true
        run.rec.state = 'done'
      } else {
        run.rec.state = 'pending'
        for (let k = 0; k < run.needed; k++) this.wants.push({ index: run.rec.index })
      }
    }
  }

  async run (): Promise<HostTensor> {
    const job = this.i.job
    const done = new Promise<HostTensor>((resolve, reject) => {
      this.resolve = resolve
      this.reject = reject
    })
    const onCancel = (): void => { this.fail(job.controller.signal.reason instanceof Error ? job.controller.signal.reason : new Error('cancelled')) }
    const onLeave = (evt: CustomEvent<{ peerId: string, reason: string }>): void => {
      const p = this.participants.get(evt.detail.peerId)
      if (p === undefined) return
      this.abortCopies(c => c.participant === p, new TensormeshError('ERR_PEER_GONE', `peer left the mesh (${evt.detail.reason})`))
    }
    job.controller.signal.addEventListener('abort', onCancel)
    this.c.directory.addEventListener('peer:leave', onLeave)
    this.timer = setInterval(() => { this.pump() }, BACKUP_CHECK_MS)
    try {
      this.pump()
      return await done
    } finally {
      clearInterval(this.timer)
      job.controller.signal.removeEventListener('abort', onCancel)
      this.c.directory.removeEventListener('peer:leave', onLeave)
    }
  }

  private fail (err: Error): void {
    if (this.settled) return
    this.settled = true
    this.abortCopies(() => true, err)
    this.reject(err)
  }

  private abortCopies (match: (c: Copy) => boolean, reason: Error): void {
    for (const run of this.runs) for (const copy of run.copies) if (match(copy)) copy.ctl.abort(reason)
  }

  private pump (): void {
    if (this.settled) return
    if (this.runs.every(r => r.done)) {
      this.settled = true
      try {
        this.resolve(this.reducer.result())
      } catch (err) {
        this.reject(err instanceof Error ? err : new Error(String(err)))
      }
      return
    }
    // Every peer takes its own shards before any peer takes another's: a
    // coordinator with idle workers must not take a shard cut for a peer
    // that has not yet had the chance to start it.
    for (const steal of [false, true]) {
      for (const p of this.participants.values()) {
        while (!p.excluded && p.inflight < p.limit) {
          const want = this.pick(p, steal)
          if (want === undefined) break
          const run = this.runs[want.index] as ShardRun
          this.launch(p, want.index, want.only !== undefined ? 'check' : run.failures > 0 ? 'retry' : run.ran.size > 0 ? 'replica' : 'first')
        }
      }
    }
    this.restartFailed()
    if (this.wants.length === 0 && this.i.backups) this.backups()
    const running = this.runs.some(r => r.copies.size > 0)
    if (!running && this.wants.length > 0) {
      const want = this.wants[0] as Want
      const run = this.runs[want.index] as ShardRun
      this.fail(new TensormeshError('ERR_SHARD_FAILED', `shard ${want.index} (units ${run.rec.start}..${run.rec.end}) has no peer left to run it${want.only !== undefined ? ` (it must run on ${short(want.only)})` : ''}; causes: ${run.causes.join('; ') || 'no eligible peer'}`))
    }
  }

  /**
   * The next shard copy for this peer: its own first; then, when stealing
   * and it has an idle slot, another peer's that that peer could not take.
   */
  private pick (p: Participant, steal: boolean): Want | undefined {
    const eligible = (w: Want): boolean => {
      const run = this.runs[w.index]
      if (run === undefined || run.done || run.ran.has(p.peer)) return false
      return w.only === undefined || w.only === p.peer
    }
    let k = this.wants.findIndex(w => eligible(w) && (w.only === p.peer || this.i.preferred[w.index] === p.peer))
    if (k < 0 && steal && p.inflight < p.slots) {
      // Take from the end: the shards others will reach last.
      for (let j = this.wants.length - 1; j >= 0; j--) {
        if (eligible(this.wants[j] as Want)) { k = j; break }
      }
    }
    if (k < 0) return undefined
    return this.wants.splice(k, 1)[0]
  }

  /**
   * A shard whose copy failed does not wait for a free slot: it starts at
   * once on the least loaded peer that may take it, up to RETRY_OVERCOMMIT
   * over that peer's limit, and queues there behind the work it has.
   */
  private restartFailed (): void {
    for (const want of [...this.wants]) {
      const run = this.runs[want.index]
      if (run === undefined || run.failures === 0 || run.done) continue
      let best: Participant | undefined
      for (const p of this.participants.values()) {
        if (p.excluded || run.ran.has(p.peer) || p.inflight >= p.limit + RETRY_OVERCOMMIT) continue
        if (want.only !== undefined && want.only !== p.peer) continue
        if (best === undefined || p.inflight / p.slots < best.inflight / best.slots || (p.inflight / p.slots === best.inflight / best.slots && p.rate > best.rate)) best = p
      }
      if (best === undefined) continue
      this.wants.splice(this.wants.indexOf(want), 1)
      this.launch(best, want.index, 'retry')
    }
  }

  /**
   * The job's tail: nothing waits, `p` is idle, and a copy on a slower peer
   * is on its own pace (no straggler) but would still finish far later than
   * a fresh copy here. Backups judged by a copy's own peer never catch a
   * peer that is slow by design, and at 1,000 shards the last few on slow
   * peers doubled the makespan (the scale simulator's finding). The run
   * with the most time to gain, if a copy here gains BACKUP_SLOWDOWN x.
   */
  private tailCandidate (p: Participant, startOf: (c: Copy) => number | undefined, expected: (run: ShardRun, c: Copy) => number, now: number): ShardRun | undefined {
    let best: ShardRun | undefined
    let gain = 0
    for (const run of this.runs) {
      if (run.done || run.copies.size === 0 || run.backups > 0 || run.ran.has(p.peer) || run.needed > 1 || run.spot) continue
      // The soonest any copy of it should finish.
      let remaining = Infinity
      for (const c of run.copies) {
        const start = startOf(c)
        const left = expected(run, c) - (start === undefined ? 0 : now - start)
        remaining = Math.min(remaining, left)
      }
      if (!Number.isFinite(remaining) || now - Math.min(...[...run.copies].map(c => c.startedAt)) < BACKUP_MIN_MS) continue
      const mine = this.pace.estimate(p.peer, run.rec.end - run.rec.start, this.bytesFor(run, this.fixedBytesFor(p))).totalMs
      if (mine * BACKUP_SLOWDOWN >= remaining || remaining - mine < TAIL_MIN_GAIN_MS || remaining - mine <= gain) continue
      gain = remaining - mine
      best = run
    }
    return best
  }

  /** Bytes a copy of `run` moves to and from `p`: its slice, and the shared inputs on the peer's first copy. */
  private bytesFor (run: ShardRun, fixedBytes: number): number {
    const cost = this.i.job.plan?.cost
    if (cost === undefined) return 0
    return (run.rec.end - run.rec.start) * (cost.bytesInPerUnit + cost.bytesOutPerUnit) + (cost.bytesOutFixed ?? 0) + fixedBytes
  }

  private fixedBytesFor (p: Participant): number {
    return this.holding.has(p.peer) || p.local ? 0 : this.i.job.plan?.cost.bytesInFixed ?? 0
  }

  /**
   * Idle peers re-run stragglers; the first result wins. A straggler is a
   * copy that has taken BACKUP_SLOWDOWN times what the same work costs on
   * its own peer, transfer included, and that the idle peer would have
   * finished in the time it has already taken.
   */
  private backups (): void {
    const now = performance.now()
    const expected = (run: ShardRun, c: Copy): number =>
      this.pace.estimate(c.participant.peer, run.rec.end - run.rec.start, this.bytesFor(run, c.fixedBytes)).totalMs
    const ratioOf = (run: ShardRun, c: Copy, start: number): number =>
      now - start < BACKUP_MIN_MS ? 0 : (now - start) / Math.max(expected(run, c), 1)
    // Peers with a computing copy that straggles: whatever waits in their queue is late too.
    const slowPeers = new Set<Participant>()
    for (const run of this.runs) {
      for (const c of run.copies) if (!c.queued && ratioOf(run, c, c.startedAt) > BACKUP_SLOWDOWN) slowPeers.add(c.participant)
    }
    // When a copy began computing: a copy sent into a busy peer's queue began when the copy ahead
    // of it settled, unless that peer is itself slow, when its whole wait counts.
    const startOf = (c: Copy): number | undefined => {
      if (!c.queued || slowPeers.has(c.participant)) return c.startedAt
      const settled = c.participant.lastSettledAt
      return settled !== undefined && settled > c.startedAt ? settled : undefined
    }
    for (const p of this.participants.values()) {
      if (p.excluded || p.inflight >= p.slots) continue
      let best: ShardRun | undefined
      let worst = BACKUP_SLOWDOWN
      for (const run of this.runs) {
        if (run.done || run.copies.size === 0 || run.backups > 0 || run.ran.has(p.peer)) continue
        if (run.needed > 1 || run.spot) continue // replicated shards already run on several peers
        // The shard's most promising copy decides: it is late only if every copy is.
        let ratio = Infinity
        let elapsed = Infinity
        for (const c of run.copies) {
          const start = startOf(c)
          if (start === undefined) { ratio = 0; continue }
          const r = ratioOf(run, c, start)
          if (r < ratio) { ratio = r; elapsed = now - start }
        }
        if (!(ratio > worst) || ratio === Infinity) continue
        // A copy here must plausibly win: the same work on p, transfer included, within the time already taken.
        const mine = this.pace.estimate(p.peer, run.rec.end - run.rec.start, this.bytesFor(run, this.fixedBytesFor(p))).totalMs
        if (mine >= elapsed) continue
        worst = ratio
        best = run
      }
      best ??= this.tailCandidate(p, startOf, expected, now)
      if (best === undefined) continue
      best.backups++
      this.c.log.info({ job: this.i.job.id, shard: best.rec.index, peer: p.peer, slowdown: Math.round(worst * 10) / 10 }, 'backup copy started')
      this.launch(p, best.rec.index, 'backup')
    }
  }

  private launch (p: Participant, index: number, kind: ShardAttempt['kind']): void {
    const run = this.runs[index] as ShardRun
    const rec = run.rec
    const plan = this.i.job.plan
    if (plan === undefined) return
    rec.attempts++
    rec.state = 'running'
    const attempt: ShardAttempt = { peer: p.peer, startedAt: Date.now(), kind }
    rec.history.push(attempt)
    const copy: Copy = { participant: p, ctl: new AbortController(), attempt, startedAt: performance.now(), queued: p.inflight >= p.slots, fixedBytes: this.fixedBytesFor(p) }
    run.copies.add(copy)
    run.ran.add(p.peer)
    p.inflight++
    this.i.job.progressed()

    const units = rec.end - rec.start
    const bytes = plan.cost.bytesInFixed + units * (plan.cost.bytesInPerUnit + plan.cost.bytesOutPerUnit) + (plan.cost.bytesOutFixed ?? 0)
    // Transfer at the link's measured rate, with the same margin as compute; unmeasured, at a slow LAN's.
    const link = p.local ? undefined : this.c.links?.measured(p.peer)
    const transferMs = p.local ? 0 : link !== undefined ? bytes / link * 1000 * DEADLINE_FACTOR : bytes / DEADLINE_BYTES_PER_SECOND * 1000
    // A copy runs on one of the peer's slots: its rate is the bid's whole-peer rate over the slots.
    // One sent into a full peer waits for a copy ahead of it first.
    const computeMs = units * Math.max(p.slots, 1) / p.rate * 1000 * (copy.queued ? 2 : 1)
    const deadlineMs = computeMs * DEADLINE_FACTOR + transferMs + DEADLINE_SLACK_MS
    const timer = setTimeout(() => {
      copy.ctl.abort(new TensormeshError('ERR_SHARD_DEADLINE', `no result within ${Math.round(deadlineMs)} ms (${DEADLINE_FACTOR}x the bid's estimate plus slack)`))
    }, deadlineMs)
    const task = this.i.op.shard(plan, this.i.inputs, range(rec), this.i.job.blobs)
    const signal = copy.ctl.signal
    const attemptNo = rec.attempts
    const work = p.local
      ? this.c.pool.run(task, { signal, transfer: false }).then(out => ({ ...out, bytesIn: 0, bytesOut: 0 }))
      : this.send(p.peer, { jobId: this.i.job.id, index, attempt: attemptNo, start: rec.start, end: rec.end, task, resultBytes: units * plan.cost.bytesOutPerUnit + (plan.cost.bytesOutFixed ?? 0) }, signal)

    work.then(outcome => {
      attempt.ms = Math.round(performance.now() - copy.startedAt)
      attempt.computeMs = Math.round(outcome.computeMs)
      const sample = { peer: p.peer, units, bytes: outcome.bytesIn + outcome.bytesOut + copy.fixedBytes, ms: performance.now() - copy.startedAt, computeMs: outcome.computeMs, queued: copy.queued }
      this.pace.record(sample)
      if (!p.local) this.c.links?.record(sample)
      this.holding.add(p.peer)
      this.settleCopy(run, copy, () => { this.succeeded(run, copy, outcome.partial, outcome) })
    }, (err: unknown) => {
      attempt.ms = Math.round(performance.now() - copy.startedAt)
      const reason = signal.aborted && signal.reason instanceof Error ? signal.reason : err
      this.settleCopy(run, copy, () => { this.failed(run, copy, reason) })
    }).catch((err: unknown) => {
      this.fail(err instanceof Error ? err : new Error(String(err)))
    }).finally(() => {
      clearTimeout(timer)
    })
  }

  private async send (peer: string, shard: OutgoingShard, signal: AbortSignal): Promise<ShardOutcome> {
    if (this.c.send !== undefined) return await this.c.send(peer, shard, signal)
    return await sendShard(this.c.libp2p, peerIdFromString(peer), shard, signal, { limits: this.i.limits, publisher: this.c.shares, bulk: this.c.bulk, bulkPortOf: this.c.bulkPortOf, sessions: this.c.sessions })
  }

  private settleCopy (run: ShardRun, copy: Copy, then: () => void): void {
    run.copies.delete(copy)
    copy.participant.inflight--
    copy.participant.lastSettledAt = performance.now()
    if (!this.settled) then()
    this.i.job.progressed()
    this.pump()
  }

  private failed (run: ShardRun, copy: Copy, err: unknown): void {
    const p = copy.participant
    copy.attempt.error = { code: errorCode(err), message: peerText(errorMessage(err)) }
    if (run.done) return // a losing backup, cancelled
    if (copy.attempt.error.code === 'ERR_SUPERSEDED') return
    if (err instanceof RemoteShardError && err.remoteCode === 'ERR_PEER_OVER_LIMIT' && p.limit > 1) {
      // The peer is full of other coordinators' shards, or of our other jobs':
      // a refusal, not a fault. Send it fewer at once; at one, it counts as a failure.
      p.limit--
      run.ran.delete(p.peer)
      this.c.log.debug({ job: this.i.job.id, shard: run.rec.index, peer: p.peer, limit: p.limit }, 'peer over its limit, sending it fewer shards at once')
      this.topUp(run, true)
      return
    }
    run.failures++
    run.causes.push(`attempt on ${short(p.peer)}: ${copy.attempt.error.code} ${copy.attempt.error.message}`)
    // The peer that failed gets no more of this job's shards.
    p.excluded = true
    this.c.log.warn({ job: this.i.job.id, shard: run.rec.index, peer: p.peer, code: copy.attempt.error.code }, 'shard copy failed')
    if (run.failures >= MAX_SHARD_ATTEMPTS) {
      this.fail(new TensormeshError('ERR_SHARD_FAILED', `shard ${run.rec.index} (units ${run.rec.start}..${run.rec.end}) failed ${run.failures} times: ${run.causes.join('; ')}`))
      return
    }
    this.topUp(run, true)
  }

  /** Queues copies until running + agreeing results can reach what the shard needs. */
  private topUp (run: ShardRun, front: boolean): void {
    const queued = this.wants.filter(w => w.index === run.rec.index).length
    const missing = run.needed - run.results.length - run.copies.size - queued
    for (let k = 0; k < missing; k++) {
      const want: Want = { index: run.rec.index }
      if (run.spot && !run.results.some(r => r.peer === this.selfId) && ![...run.copies].some(c => c.participant.local)) want.only = this.selfId
      if (front) this.wants.unshift(want)
      else this.wants.push(want)
    }
    if (run.rec.state !== 'done') run.rec.state = run.copies.size > 0 ? 'running' : 'pending'
  }

  private succeeded (run: ShardRun, copy: Copy, partial: Tensors, outcome: { bytesIn: number, bytesOut: number, relayed?: boolean }): void {
    if (run.done) return
    run.results.push({ peer: copy.participant.peer, partial })
    // Spot check: a shard that ran elsewhere is, with probability p, run once more here.
    if (run.needed === 1 && !run.spot && !copy.participant.local && this.i.verify.spotCheck > 0 && this.random() < this.i.verify.spotCheck && !this.participants.get(this.selfId)?.excluded) {
      run.spot = true
      run.needed = 2
    }
    const winner = this.vote(run)
    if (winner === undefined) {
      if (run.results.length >= run.needed) {
        // Disagreement: ask one more distinct peer to break the tie.
        if (run.needed >= this.i.verify.replicas + (run.spot ? 1 : 0) + MAX_TIEBREAKS) {
          this.fail(new TensormeshError('ERR_VERIFY_FAILED', `shard ${run.rec.index}: ${run.results.length} peers returned partials that do not agree within rtol ${this.i.verify.rtol}`))
          return
        }
        if (!run.spot) run.needed++
      }
      this.topUp(run, true)
      return
    }
    try {
      this.reducer.add(range(run.rec), winner.partial)
    } catch (err) {
      // A malformed partial: its peer failed this copy.
      run.results = run.results.filter(r => r !== winner)
      this.failed(run, copy, new TensormeshError('ERR_BAD_PARTIAL', errorMessage(err)))
      return
    }
    run.done = true
    const rec = run.rec
    rec.state = 'done'
    rec.peer = winner.peer
    const winning = [...rec.history].reverse().find(h => h.peer === winner.peer && h.error === undefined)
    rec.ms = winning?.ms ?? copy.attempt.ms
    rec.computeMs = winning?.computeMs ?? copy.attempt.computeMs
    rec.bytesIn = outcome.bytesIn
    rec.bytesOut = outcome.bytesOut
    if (!copy.participant.local) rec.via = outcome.relayed === true ? 'relay' : 'direct'
    else delete rec.via
    for (const r of run.results) {
      if (r !== winner && !agree(r.partial, winner.partial, this.i.verify.rtol)) {
        this.i.job.outvoted.push({ shard: rec.index, peer: r.peer })
        this.i.onOutvoted?.(r.peer, rec.index)
      }
    }
    if (run.results.length > 1) this.i.job.verified++
    // First result wins: the other copies stop on their peers.
    for (const other of run.copies) other.ctl.abort(new TensormeshError('ERR_SUPERSEDED', 'another copy of this shard finished first'))
    this.i.onShardDone?.(rec.index, winner.partial)
    run.results = []
  }

  /** The result that enough others agree with, or undefined while there is none. */
  private vote (run: ShardRun): { peer: string, partial: Tensors } | undefined {
    if (run.results.length < run.needed) return undefined
    if (run.spot) {
      // The coordinator trusts its own result over the peer's.
      const own = run.results.find(r => r.peer === this.selfId)
      return own
    }
    for (const r of run.results) {
      const agreeing = run.results.filter(o => agree(o.partial, r.partial, this.i.verify.rtol)).length
      if (agreeing >= this.i.verify.replicas) return r
    }
    return undefined
  }
}

/** Same names, shapes and dtypes, and values within rtol of the larger magnitude. */
export function agree (a: Tensors, b: Tensors, rtol: number): boolean {
  const names = Object.keys(a)
  if (names.length !== Object.keys(b).length) return false
  for (const name of names) {
    const x = a[name]
    const y = b[name]
    if (x === undefined || y === undefined || x.dtype !== y.dtype || x.shape.join() !== y.shape.join()) return false
    let diff = 0
    let scale = 0
    for (let k = 0; k < x.data.length; k++) {
      const u = x.data[k] ?? 0
      const v = y.data[k] ?? 0
      if (Number.isNaN(u) !== Number.isNaN(v)) return false
      diff = Math.max(diff, Math.abs(u - v))
      scale = Math.max(scale, Math.abs(v))
    }
    if (diff > rtol * Math.max(scale, Number.MIN_VALUE)) return false
  }
  return true
}

function range (rec: ShardRecord): { index: number, start: number, end: number } {
  return { index: rec.index, start: rec.start, end: rec.end }
}

export function short (peer: string): string {
  return peer.length > 12 ? `…${peer.slice(-8)}` : peer
}
