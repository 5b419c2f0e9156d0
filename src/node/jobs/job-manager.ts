import { randomUUID } from 'node:crypto'
import { InvalidInputError, NotFoundError, TensormeshError, errorCode, errorMessage } from '../../errors.ts'
import { getOperator } from '../../compute/operators/index.ts'
import { DEFAULT_MAX_QUEUE } from '../../compute/index.ts'
import { describe as describeTensor } from '../../compute/tensor.ts'
import { Coordinator } from './coordinator.ts'
import { DEFAULT_VERIFY_RTOL } from './job-run.ts'
import { checkTrainInputs, checkTrainParams, runTraining } from './train.ts'
import { checkModelTrainJob, checkModelTrainParams, runModelTraining } from './train-model.ts'
import type { AllReduce } from '../../protocol/allreduce/index.ts'
import { mlpParamCount } from '../../compute/operators/mlp.ts'
import { FILE_OVERHEAD_BYTES, jobOwner } from '../storage.ts'
import type { ShardSessions } from '../../protocol/shard/session.ts'
import type { StorageBudget } from '../storage.ts'
import type { TrainCheckpoint } from './train.ts'
import { Job, TERMINAL_STATES } from './job.ts'
import type { JobSpec, ScheduleSpec } from './job.ts'
import type { JobHooks } from './coordinator.ts'
import type { Journal } from './journal.ts'
import type { BlobStore } from '../blob-store.ts'
import type { BulkServer } from '../../protocol/bulk/index.ts'
import { LinkMeter } from './links.ts'
import type { ExecutorPool } from '../../compute/index.ts'
import type { Tensors } from '../../compute/operators/types.ts'
import type { BidAnswer, BidRequest } from '../../protocol/bid/index.ts'
import type { WireLimits } from '../../protocol/limits.ts'
import type { IncomingShard } from '../../protocol/shard/index.ts'
import type { Logger } from '../log.ts'
import type { PeerDirectory } from '../peer-directory.ts'
import type { Libp2p } from '@libp2p/interface'

/**
 * Finished jobs kept in memory with their results. The oldest finished job is
 * dropped past this; the journal (data directory) is where results outlive it.
 */
export const MAX_RETAINED_JOBS = 256

/** Jobs this node coordinates at once; more wait in 'queued'. */
export const MAX_RUNNING_JOBS = 4

/**
 * A peer whose partials lose this many votes is no longer asked for bids by
 * this node. Two, not one: a single bad partial can be a flipped bit.
 */
export const MAX_OUTVOTES = 2

/** Largest verify.replicas: each replica is a full copy of the job's work. */
export const MAX_REPLICAS = 8

/** Most shards per peer a job may ask for: each costs a round trip and, for matmul, a copy of b. */
export const MAX_SHARDS_PER_PEER = 256

/**
 * Shards one remote coordinator may have here beyond the slots this node
 * bids (its workers). One of its jobs keeps slots + 1 in flight (the next
 * shard's inputs travel while the others compute) and may restart a failed
 * shard one over that (job-run.ts: MAX_INFLIGHT_PER_PEER, RETRY_OVERCOMMIT):
 * slots + 2. Four lets two of its jobs pipeline here at once; the rest wait
 * at the coordinator, or go to other peers, instead of in our queue.
 */
export const PEER_QUEUE_ALLOWANCE = 4

/**
 * Places in the executor pool (workers + its queue of DEFAULT_MAX_QUEUE)
 * that remote coordinators together never fill, so this node's own jobs
 * always get in: MAX_RUNNING_JOBS (4) own jobs, each with a local copy and
 * a restarted one waiting, on a single-worker node.
 */
export const OWN_JOBS_RESERVE = 8

/** A shard refused because its coordinator already holds its share of this node (or remote work fills it). */
export class PeerOverLimitError extends TensormeshError {
  constructor (message: string) {
    super('ERR_PEER_OVER_LIMIT', message)
  }
}

/** What the JobManager needs from the node's per-peer limits (src/node/access/peer-limits.ts). */
export interface PeerAdmission {
  isBanned: (peer: string) => boolean
  /** A shard was refused with ERR_PEER_OVER_LIMIT (counted). */
  overLimit: () => void
}

export interface JobManagerComponents {
  libp2p: Libp2p
  directory: PeerDirectory
  pool: ExecutorPool
  log: Logger
  blobs: BlobStore
  /** The bulk channel for large shard inputs and results, when enabled. */
  bulk?: BulkServer
  /** A peer's bulk port from its advert: where to push to a peer we dialed. */
  bulkPortOf?: (peer: string) => number | undefined
  /** One session stream per peer for small shards. */
  sessions?: ShardSessions
}

/**
 * Faults a node injects into the shards it runs for others. For tests and
 * the testnet only; nothing turns them on by default.
 */
export interface FaultInjection {
  /** Take this many times as long as the computation did (sleeping, not burning CPU). */
  slowFactor?: number
  /** Return partials with every element off by one. */
  wrong?: boolean
}

/** Watches jobs and served shards for metrics; it must never change them. */
export interface JobObserver {
  /** A job this node coordinates, new or restored from the journal. */
  jobTracked: (job: Job) => void
  /** A shard this node ran for another coordinator. */
  shardServed: (op: string, outcome: 'ok' | 'error') => void
}

export interface JobManagerInit {
  faults?: FaultInjection
  observer?: JobObserver
  /** Where jobs, partials and results outlive the process; none for a memory-only node. */
  journal?: Journal
  limits: WireLimits
  /** Whether this node runs shards for others (and for itself). */
  serve: boolean
  shardsPerPeer?: number
  hooks?: JobHooks
  /** Bans (a banned peer is neither asked for bids nor given a bid) and the over-limit counter. */
  peers?: PeerAdmission
  /** The data directory's budget: a job reserves what it will write before it is taken. */
  storage?: StorageBudget
}

/** What a job submitted over the API named besides its bytes. */
export interface SubmitRefs {
  /** CIDs of the stored blobs the spec named (`"blobs": {NAME: {"cid"}}`): kept on disk while the job is unfinished. */
  blobCids?: string[]
}

/**
 * Bytes of a trained model's packed header beyond its weights (magic,
 * topology JSON, weight specs): a Sequential of up to MAX_MLP_LAYERS Dense
 * layers describes itself in a few KiB; 64 KiB is ample.
 */
const MODEL_HEADER_ALLOWANCE = 64 * 1024

/**
 * The jobs this node coordinates, and its answers to other coordinators:
 * bids from its own state, shards run in its pool.
 */
export class JobManager {
  private readonly c: JobManagerComponents
  private readonly init: JobManagerInit
  private readonly jobs = new Map<string, Job>()
  private readonly coordinator: Coordinator
  private readonly waiting: Job[] = []
  private running = 0
  private allreduce?: AllReduce
  private accepting = true
  private readonly journal?: Journal
  /** Training checkpoints read back from the journal. */
  private readonly checkpoints = new Map<string, TrainCheckpoint>()
  /** Partials read back from the journal for jobs that resume. */
  private readonly resumed = new Map<string, Map<number, Tensors>>()
  /** Stored blobs each kept job's spec named by CID. */
  private readonly named = new Map<string, string[]>()
  /** Shards this node is running for coordinators (its own jobs' local shards excluded). */
  servingShards = 0
  /** Votes each peer's partials lost, across this node's jobs. */
  readonly outvotes = new Map<string, number>()
  /** Shards each remote coordinator has on this node now, from stream open to close. */
  private readonly inflight = new Map<string, number>()
  private inflightTotal = 0
  /** Link rates to peers, measured by this node's jobs. */
  readonly links = new LinkMeter()

  constructor (components: JobManagerComponents, init: JobManagerInit) {
    this.c = components
    this.init = init
    this.journal = init.journal
    this.coordinator = new Coordinator({
      ...components,
      links: this.links,
      bid: (req) => this.bid(req),
      distrusted: (peer) => (this.outvotes.get(peer) ?? 0) >= MAX_OUTVOTES || this.init.peers?.isBanned(peer) === true,
      onOutvoted: (peer, job, shard) => {
        this.outvotes.set(peer, (this.outvotes.get(peer) ?? 0) + 1)
        this.c.log.warn({ job: job.id, shard, peer, outvotes: this.outvotes.get(peer) }, 'peer outvoted')
      }
    }, { limits: init.limits, shardsPerPeer: init.shardsPerPeer, hooks: init.hooks })
  }

  /**
   * Validates and starts a job. Throws InvalidInputError (nothing started)
   * when the operator, an input or a param is wrong.
   */
  submit (spec: JobSpec, refs: SubmitRefs = {}): Job {
    if (!this.accepting) throw new InvalidInputError('node is shutting down', 'ERR_SHUTTING_DOWN')
    if (spec.op === 'train') return this.submitTraining(spec, refs)
    const op = getOperator(spec.op)
    this.checkInputLimits(spec.inputs)
    const plan = op.plan(spec.inputs, spec.params ?? {}, spec.blobs)
    const job = new Job({ id: randomUUID(), op: spec.op, params: spec.params, inputs: spec.inputs, blobs: spec.blobs, verify: checkVerify(spec.verify), schedule: checkSchedule(spec.schedule) })
    job.plan = plan
    // Partials and the result coexist until the result is safe, so the output counts twice.
    const output = plan.output.shape.reduce((a, b) => a * b, 1) * 4 + FILE_OVERHEAD_BYTES
    this.reserveStorage(job, this.journal === undefined ? 0 : inputBytes(spec) + 2 * output)
    this.remember(job, refs)
    this.track(job)
    if (this.journal !== undefined) job.journaled = this.journal.submitted(job, spec.inputs, spec.blobs, refs.blobCids)
    this.c.log.info({ job: job.id, op: spec.op, units: plan.units }, 'job submitted')
    this.enqueue(job)
    return job
  }

  private submitTraining (spec: JobSpec, refs: SubmitRefs): Job {
    if (spec.blobs?.model !== undefined) return this.submitModelTraining(spec, refs)
    const params = checkTrainParams(spec.params ?? {})
    this.checkInputLimits(spec.inputs)
    checkTrainInputs(spec.inputs, params)
    const job = new Job({ id: randomUUID(), op: 'train', params: { ...params }, inputs: spec.inputs, verify: checkVerify(spec.verify), schedule: checkSchedule(spec.schedule) })
    // The model goes to the blob store with or without a journal; the journal adds the inputs,
    // one checkpoint file (w, m, v; the next round's is written before the last one goes) and the result (w).
    const weights = mlpParamCount(params.layers) * 4
    const model = weights + MODEL_HEADER_ALLOWANCE
    this.reserveStorage(job, this.journal === undefined ? model : model + inputBytes(spec) + 2 * (3 * weights + FILE_OVERHEAD_BYTES) + weights + FILE_OVERHEAD_BYTES)
    this.remember(job, refs)
    this.track(job)
    if (this.journal !== undefined) job.journaled = this.journal.submitted(job, spec.inputs, undefined, refs.blobCids)
    this.c.log.info({ job: job.id, op: 'train', rounds: params.rounds }, 'job submitted')
    this.enqueue(job)
    return job
  }

  /** The node's allreduce service: butterfly train rounds use it. */
  useAllReduce (service: AllReduce): void {
    this.allreduce = service
  }

  /** `train` with a model (params.model, sent as blobs.model): checked whole before it is queued; its storage is held once its size is known. */
  private submitModelTraining (spec: JobSpec, refs: SubmitRefs): Job {
    const verify = checkVerify(spec.verify)
    const params = checkModelTrainParams(spec.params ?? {}, verifies(verify))
    this.checkInputLimits(spec.inputs)
    checkModelTrainJob(spec.inputs, spec.blobs, params)
    const job = new Job({ id: randomUUID(), op: 'train', params: { ...params }, inputs: spec.inputs, blobs: spec.blobs, verify, schedule: checkSchedule(spec.schedule) })
    this.reserveStorage(job, this.journal === undefined ? 0 : inputBytes(spec))
    this.remember(job, refs)
    this.track(job)
    if (this.journal !== undefined) job.journaled = this.journal.submitted(job, spec.inputs, spec.blobs, refs.blobCids)
    this.c.log.info({ job: job.id, op: 'train', epochs: params.epochs, sync: params.sync.mode }, 'job submitted')
    this.enqueue(job)
    return job
  }

  /**
   * Holds what the job will write against the storage budget (given back
   * once its last journal write is done); throws StorageFullError, nothing
   * started, when even evicting unreferenced blobs leaves too little room.
   */
  private reserveStorage (job: Job, bytes: number): void {
    if (bytes > 0) this.init.storage?.reserve(jobOwner(job.id), bytes, `job ${job.op} (${job.id})`)
  }

  private remember (job: Job, refs: SubmitRefs): void {
    if (refs.blobCids !== undefined && refs.blobCids.length > 0) this.named.set(job.id, [...refs.blobCids])
  }

  /**
   * The on-disk blobs eviction must leave alone: those an unfinished job's
   * spec named (it was taken against them; they are the user's to reuse
   * while it runs), and the model of every train job whose record this
   * node keeps, finished or not, since GET /v1/jobs/:id/model serves it
   * for as long as the job is listed. A finished job's inputs are gone
   * from the journal, so the blobs it named are no longer held for it.
   */
  blobsInUse (): Set<string> {
    const cids = new Set<string>()
    for (const job of this.jobs.values()) {
      if (job.model !== undefined) cids.add(job.model.cid)
      if (!job.finished) for (const cid of this.named.get(job.id) ?? []) cids.add(cid)
    }
    return cids
  }

  /**
   * Brings back the journal's jobs after a restart: finished ones are served
   * as before (results read from disk when asked for); unfinished ones resume
   * with the partials already accepted, or fail when their inputs are gone.
   */
  async restore (): Promise<void> {
    const journal = this.journal
    if (journal === undefined) return
    for (const stored of journal.load()) {
      const job = new Job({ id: stored.id, op: stored.op, params: stored.spec.params, inputDescs: stored.spec.inputs, verify: stored.spec.verify, schedule: stored.spec.schedule, createdAt: stored.createdAt })
      job.startedAt = stored.startedAt
      if (stored.record !== undefined) {
        job.bids = stored.record.bids
        job.shards = stored.record.shards
        job.outvoted = stored.record.verification.outvoted
        job.verified = stored.record.verification.verified
      }
      this.track(job)
      if (TERMINAL_STATES.includes(stored.state)) {
        const path = stored.resultPath
        job.resultPath = path
        job.restoreFinished(stored.state, stored.finishedAt, stored.error, path === undefined ? undefined : async () => await journal.readResult(path))
        job.outputDesc = stored.record?.output
        job.metrics = stored.record?.metrics
        job.model = stored.record?.model
        continue
      }
      if (stored.spec.blobCids !== undefined) this.remember(job, { blobCids: stored.spec.blobCids })
      const inputs = await journal.readInputs(stored)
      if ('missing' in inputs) {
        job.finish('failed', undefined, { code: 'ERR_INPUTS_GONE', message: `job ${job.id} cannot resume after a restart: its input ${inputs.missing} is gone` })
        continue
      }
      try {
        job.inputs = inputs.tensors
        job.blobs = inputs.blobs
        if (job.op === 'train') {
          job.metrics = stored.record?.metrics
          const checkpoint = await journal.readCheckpoint(stored)
          // Without a checkpoint the rounds start over, so drop their metrics too.
          if (checkpoint === undefined) job.metrics = undefined
          else {
            // A record written at stop can be ahead of the last checkpoint that reached the disk.
            if (job.metrics !== undefined && job.metrics.rounds.length > checkpoint.round) {
              job.metrics.rounds = job.metrics.rounds.slice(0, checkpoint.round)
              job.metrics.accuracy = job.metrics.rounds.at(-1)?.accuracy
            }
            this.checkpoints.set(job.id, checkpoint)
          }
          this.c.log.info({ job: job.id, round: checkpoint?.round ?? 0 }, 'training resumed from the journal')
          this.enqueue(job)
          continue
        }
        job.plan = getOperator(job.op).plan(inputs.tensors, job.params, inputs.blobs)
        // Partials only make sense against the split they were cut by.
        const completed = job.shards.length > 0 ? await journal.readPartials(stored) : new Map<number, Tensors>()
        for (const s of job.shards) {
          if (!completed.has(s.index)) s.state = 'pending'
        }
        this.resumed.set(job.id, completed)
        this.c.log.info({ job: job.id, done: completed.size, total: job.shards.length }, 'job resumed from the journal')
        this.enqueue(job)
      } catch (err) {
        job.finish('failed', undefined, { code: errorCode(err), message: `job ${job.id} cannot resume: ${errorMessage(err)}` })
      }
    }
  }

  private track (job: Job): void {
    this.jobs.set(job.id, job)
    this.evict()
    this.init.observer?.jobTracked(job)
    const journal = this.journal
    job.addEventListener('state', () => {
      // A node that stops leaves its unfinished jobs as they are in the journal, to resume at the next start.
      if (journal !== undefined && this.accepting) {
        if (job.finished) {
          this.persist(job, async () => { await journal.finished(job) })
        } else {
          job.journaled.then(() => { journal.updated(job) }).catch(() => {})
        }
      }
      // Its writes are done once the last one is: what it reserved and did not use goes back.
      if (job.finished) void job.persisted.then(() => { this.init.storage?.release(jobOwner(job.id)) })
    })
  }

  /**
   * Journal writes of one job run one after another, after its inputs: a
   * result never lands before the partials it replaces, nor a row before
   * the files it names.
   */
  private persist (job: Job, write: () => Promise<void>): void {
    job.persisted = job.persisted.then(async () => { await job.journaled }).then(write).catch((err: unknown) => {
      this.c.log.error({ job: job.id, code: errorCode(err), err: errorMessage(err) }, 'journal write failed')
    })
  }

  /**
   * The job's record to the journal, now. A failure (a full disk) leaves
   * the journal's older record, which is consistent: the job goes on in
   * memory, and a restart resumes from what the journal has.
   */
  private record (job: Job): void {
    try {
      this.journal?.updated(job)
    } catch (err) {
      this.c.log.error({ job: job.id, code: errorCode(err), err: errorMessage(err) }, 'journal write failed')
    }
  }

  private enqueue (job: Job): void {
    this.waiting.push(job)
    this.next()
  }

  get (id: string): Job {
    const job = this.jobs.get(id)
    if (job === undefined) throw new NotFoundError(`no job with id ${id}`, 'ERR_JOB_NOT_FOUND')
    return job
  }

  list (): Job[] {
    return [...this.jobs.values()]
  }

  cancel (id: string): Job {
    const job = this.get(id)
    job.cancel()
    return job
  }

  /** This node's answer to a call for bids, from its own state only; `from` is the remote coordinator (none: this node's own call). */
  bid (req: BidRequest, from?: string): BidAnswer {
    const pool = this.c.pool
    const decline = (reason: string): BidAnswer => ({ accept: false, units: 0, unitsPerSecond: 0, startDelayMs: 0, slots: 0, reason })
    if (!this.accepting) return decline('node is shutting down')
    if (!this.init.serve) return decline('this node does not run shards')
    if (from !== undefined && this.init.peers?.isBanned(from) === true) return decline('this node refuses your shards for now')
    if (from !== undefined && (this.inflight.get(from) ?? 0) >= this.shareOf()) return decline(`you already have ${this.shareOf()} shards here, as many as this node takes from one coordinator`)
    if (!pool.operators.includes(req.op)) return decline(`operator ${req.op} is not supported here`)
    const smallest = req.bytesInFixed + req.bytesInPerUnit
    if (smallest > this.init.limits.maxShardBytes) return decline(`one unit needs ${Math.round(smallest)} bytes of inputs, more than this node's ${this.init.limits.maxShardBytes}-byte shard limit`)
    // Whole-pool rate: all slots at once. A unit with no flops (pure data movement) still costs something.
    // The pool's own calibrated rate however slow: the floor only keeps an uncalibrated 0 from bidding nothing.
    const unitsPerSecond = Math.max(pool.gflops, 1e-9) * 1e9 / Math.max(req.flopsPerUnit, 1e3)
    const slots = Math.max(pool.slots, 1)
    return {
      accept: true,
      units: req.units,
      unitsPerSecond,
      startDelayMs: (pool.queued / slots) * 1000,
      slots,
      reason: ''
    }
  }

  /** Shards one remote coordinator may have here at once: the slots this node bids plus PEER_QUEUE_ALLOWANCE. */
  shareOf (): number {
    return Math.max(this.c.pool.slots, 1) + PEER_QUEUE_ALLOWANCE
  }

  /** Shards remote coordinators together may have here: the pool's workers and queue, less OWN_JOBS_RESERVE. */
  remoteCapacity (): number {
    return Math.max(this.c.pool.slots + DEFAULT_MAX_QUEUE - OWN_JOBS_RESERVE, 1)
  }

  /** Shards `peer` has on this node now (its streams open), for tests and the API. */
  inflightFrom (peer: string): number {
    return this.inflight.get(peer) ?? 0
  }

  /**
   * Admits one more shard from a remote coordinator, as its stream opens
   * (before a byte of it is read), and returns the release for when the
   * stream ends. Throws PeerOverLimitError past the coordinator's share or
   * past what remote coordinators may hold together; the coordinator gets
   * the code in the error answer, a remote failure like any other.
   */
  admitShard (peer: string): () => void {
    const mine = this.inflight.get(peer) ?? 0
    const share = this.shareOf()
    if (mine >= share || this.inflightTotal >= this.remoteCapacity()) {
      this.init.peers?.overLimit()
      throw new PeerOverLimitError(mine >= share
        ? `this node already runs or queues ${mine} shards for you, its limit per coordinator (${share})`
        : `this node already runs or queues ${this.inflightTotal} shards for other coordinators, all it keeps for them`)
    }
    this.inflight.set(peer, mine + 1)
    this.inflightTotal++
    let released = false
    return () => {
      if (released) return
      released = true
      this.inflightTotal--
      const n = (this.inflight.get(peer) ?? 1) - 1
      if (n > 0) this.inflight.set(peer, n)
      else this.inflight.delete(peer)
    }
  }

  /** Runs a shard another coordinator sent; the signal is its lease. */
  async execute (shard: IncomingShard, signal: AbortSignal): Promise<{ partial: Tensors, computeMs: number }> {
    if (!this.accepting || !this.init.serve) throw new InvalidInputError('this node does not run shards now', 'ERR_NOT_SERVING')
    const op = getOperator(shard.task.op)
    const units = op.validateTask(shard.task)
    if (units !== shard.end - shard.start) throw new InvalidInputError(`shard declares units ${shard.start}..${shard.end} but carries ${units}`, 'ERR_BAD_RANGE')
    this.servingShards++
    let outcome: 'ok' | 'error' = 'error'
    try {
      const out = await this.runForPeer(shard, signal)
      outcome = 'ok'
      return out
    } finally {
      this.servingShards--
      this.init.observer?.shardServed(shard.task.op, outcome)
    }
  }

  private async runForPeer (shard: IncomingShard, signal: AbortSignal): Promise<{ partial: Tensors, computeMs: number }> {
    const out = await this.c.pool.run(shard.task, { signal, transfer: true })
    const faults = this.init.faults
    if (faults?.slowFactor !== undefined && faults.slowFactor > 1) {
      const extra = out.computeMs * (faults.slowFactor - 1)
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(resolve, extra)
        signal.addEventListener('abort', () => { clearTimeout(timer); reject(signal.reason) }, { once: true })
      })
      out.computeMs += extra
    }
    if (faults?.wrong === true) {
      for (const t of Object.values(out.partial)) for (let k = 0; k < t.data.length; k++) t.data[k] = (t.data[k] ?? 0) + 1
    }
    return out
  }

  /**
   * Stops taking work and stops the jobs this node coordinates (their shards
   * stop on the peers); the journal keeps them as they were, so they resume
   * at the next start.
   */
  stop (): void {
    this.accepting = false
    for (const job of this.jobs.values()) {
      // The record as it stands (attempts in flight included) is what a restart resumes from.
      if (!job.finished) this.record(job)
      job.cancel()
    }
  }

  private checkInputLimits (inputs: Tensors): void {
    for (const [name, t] of Object.entries(inputs)) {
      if (t.data.byteLength > this.init.limits.maxTensorBytes) {
        throw new InvalidInputError(`input ${name} (${describeTensor(t)}) is ${t.data.byteLength} bytes, more than the ${this.init.limits.maxTensorBytes}-byte tensor limit`, 'ERR_LIMIT_EXCEEDED')
      }
    }
  }

  /** Peers whose partials lost MAX_OUTVOTES votes or more. */
  distrusted (): string[] {
    return [...this.outvotes].filter(([, n]) => n >= MAX_OUTVOTES).map(([peer]) => peer)
  }

  private next (): void {
    while (this.running < MAX_RUNNING_JOBS && this.waiting.length > 0) {
      const job = this.waiting.shift()
      if (job === undefined || job.finished) continue
      this.running++
      const completed = this.resumed.get(job.id)
      this.resumed.delete(job.id)
      const journal = this.journal
      job.journaled.then(async () => {
        if (job.op === 'train') {
          const resume = this.checkpoints.get(job.id)
          this.checkpoints.delete(job.id)
          const components = { coordinator: this.coordinator, pool: this.c.pool, blobs: this.c.blobs, log: this.c.log }
          const onRound = journal === undefined ? undefined : async (cp: TrainCheckpoint): Promise<void> => { this.persist(job, async () => { await journal.checkpoint(job, cp) }); await job.persisted }
          if (job.blobs?.model !== undefined) {
            const peers = (): number => this.c.directory.size + (this.init.serve ? 1 : 0)
            await runModelTraining({ ...components, peers, allreduce: this.allreduce, reserve: (bytes) => { this.reserveStorage(job, bytes) } }, job, checkModelTrainParams(job.params, verifies(job.verify)), resume, onRound)
            return
          }
          await runTraining(components, job, checkTrainParams(job.params), resume, onRound)
          return
        }
        await this.coordinator.run(job, {
          completed,
          onPlanned: (j) => { this.record(j) },
          onShardDone: journal === undefined
            ? undefined
            : (index, partial) => { this.persist(job, async () => { await journal.shardDone(job, index, partial) }) }
        })
      }, (err: unknown) => {
        job.finish('failed', undefined, { code: errorCode(err) === 'ERR_STORAGE_FULL' ? 'ERR_STORAGE_FULL' : 'ERR_JOURNAL', message: `cannot write job ${job.id} to the journal: ${errorMessage(err)}` })
      }).catch((err: unknown) => {
        // A bug, not an input: fail the job rather than leave it running for ever.
        this.c.log.error({ job: job.id, err: errorMessage(err) }, 'job crashed')
        job.finish('failed', undefined, { code: 'ERR_INTERNAL', message: errorMessage(err) })
      }).finally(() => {
        this.running--
        this.c.log.info({ job: job.id, state: job.state, ms: (job.finishedAt ?? Date.now()) - job.createdAt }, 'job finished')
        this.next()
      })
    }
  }

  private evict (): void {
    if (this.jobs.size <= MAX_RETAINED_JOBS) return
    for (const [id, job] of this.jobs) {
      if (this.jobs.size <= MAX_RETAINED_JOBS) break
      if (job.finished) {
        this.jobs.delete(id)
        this.named.delete(id)
        this.journal?.remove(id).catch(() => {})
      }
    }
  }
}

/** Whether a job's verify asks for anything beyond one copy of each shard. */
function verifies (v: { replicas?: number, spotCheck?: number }): boolean {
  return (v.replicas ?? 1) > 1 || (v.spotCheck ?? 0) > 0
}

/** What a job's inputs and blobs take in the journal. */
function inputBytes (spec: JobSpec): number {
  let bytes = 0
  for (const t of Object.values(spec.inputs)) bytes += t.data.byteLength + FILE_OVERHEAD_BYTES
  for (const b of Object.values(spec.blobs ?? {})) bytes += b.byteLength + FILE_OVERHEAD_BYTES
  return bytes
}

function checkVerify (v: unknown): { replicas: number, spotCheck: number, rtol: number } {
  if (v === undefined || v === null) return { replicas: 1, spotCheck: 0, rtol: DEFAULT_VERIFY_RTOL }
  if (typeof v !== 'object' || Array.isArray(v)) throw new InvalidInputError('verify must be an object {replicas, spotCheck, rtol}', 'ERR_BAD_VERIFY')
  const o = v as Record<string, unknown>
  const extra = Object.keys(o).filter(k => !['replicas', 'spotCheck', 'rtol'].includes(k))
  if (extra.length > 0) throw new InvalidInputError(`verify has unknown field ${extra.join(', ')}; allowed: replicas, spotCheck, rtol`, 'ERR_BAD_VERIFY')
  const replicas = o.replicas ?? 1
  if (typeof replicas !== 'number' || !Number.isInteger(replicas) || replicas < 1 || replicas > MAX_REPLICAS) throw new InvalidInputError(`verify.replicas must be an integer from 1 to ${MAX_REPLICAS}`, 'ERR_BAD_VERIFY')
  const spotCheck = o.spotCheck ?? 0
  if (typeof spotCheck !== 'number' || !(spotCheck >= 0 && spotCheck <= 1)) throw new InvalidInputError('verify.spotCheck must be a fraction from 0 to 1', 'ERR_BAD_VERIFY')
  const rtol = o.rtol ?? DEFAULT_VERIFY_RTOL
  if (typeof rtol !== 'number' || !(rtol > 0 && rtol < 1)) throw new InvalidInputError('verify.rtol must be a number between 0 and 1', 'ERR_BAD_VERIFY')
  return { replicas, spotCheck, rtol }
}


function checkSchedule (v: unknown): ScheduleSpec {
  if (v === undefined || v === null) return {}
  if (typeof v !== 'object' || Array.isArray(v)) throw new InvalidInputError('schedule must be an object {shardsPerPeer, backups}', 'ERR_BAD_SCHEDULE')
  const o = v as Record<string, unknown>
  const extra = Object.keys(o).filter(k => !['shardsPerPeer', 'backups'].includes(k))
  if (extra.length > 0) throw new InvalidInputError(`schedule has unknown field ${extra.join(', ')}; allowed: shardsPerPeer, backups`, 'ERR_BAD_SCHEDULE')
  const out: ScheduleSpec = {}
  if (o.shardsPerPeer !== undefined) {
    if (typeof o.shardsPerPeer !== 'number' || !Number.isInteger(o.shardsPerPeer) || o.shardsPerPeer < 1 || o.shardsPerPeer > MAX_SHARDS_PER_PEER) throw new InvalidInputError(`schedule.shardsPerPeer must be an integer from 1 to ${MAX_SHARDS_PER_PEER}`, 'ERR_BAD_SCHEDULE')
    out.shardsPerPeer = o.shardsPerPeer
  }
  if (o.backups !== undefined) {
    if (typeof o.backups !== 'boolean') throw new InvalidInputError('schedule.backups must be true or false', 'ERR_BAD_SCHEDULE')
    out.backups = o.backups
  }
  return out
}
