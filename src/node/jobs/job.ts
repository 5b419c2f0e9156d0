import { TypedEventEmitter } from '@libp2p/interface'
import { TensormeshError } from '../../errors.ts'
import type { HostTensor } from '../../compute/tensor.ts'
import type { JobPlan, Params, Tensors } from '../../compute/operators/types.ts'

export type JobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled'

export const TERMINAL_STATES: readonly JobState[] = ['succeeded', 'failed', 'cancelled']

/** Per-job verification: every shard on `replicas` distinct peers, and/or a fraction spot-checked by the coordinator. */
export interface VerifySpec {
  replicas?: number
  spotCheck?: number
  /** Relative tolerance when comparing partials (default 1e-3). */
  rtol?: number
}

/** How a job is cut and run; every field has a default. */
export interface ScheduleSpec {
  /** Shards cut per accepting peer (default 2); more lets fast peers pull more, at a cost per shard. */
  shardsPerPeer?: number
  /** Start backup copies of stragglers near the end (default true). */
  backups?: boolean
}

/** What a caller submits: an operator name, named input tensors, params. */
export interface JobSpec {
  op: string
  inputs: Tensors
  params?: Params
  verify?: VerifySpec
  schedule?: ScheduleSpec
  /** Non-tensor data by name (a packed TF.js model); sent to peers by content address. */
  blobs?: Record<string, Uint8Array>
}

/** One try of a shard on one peer. */
export interface ShardAttempt {
  peer: string
  startedAt: number
  ms?: number
  computeMs?: number
  /** Why it failed, when it did. */
  error?: { code: string, message: string }
  /**
   * first: the shard's first copy; retry: after a failure; backup: a copy of a
   * straggler started while it still ran; replica: verification on another
   * peer; check: the coordinator's spot check.
   */
  kind: 'first' | 'retry' | 'backup' | 'replica' | 'check'
}

export interface ShardRecord {
  index: number
  start: number
  end: number
  state: 'pending' | 'running' | 'done' | 'failed'
  /** The peer whose partial was used. */
  peer?: string
  attempts: number
  /** Wall time of the winning attempt, ms, from send to partial. */
  ms?: number
  computeMs?: number
  bytesIn: number
  bytesOut: number
  /** How the winning copy's bytes moved: over a direct connection or through a relay (absent: ran on the coordinator). */
  via?: 'direct' | 'relay'
  history: ShardAttempt[]
}

export interface BidRecord {
  peer: string
  accept: boolean
  unitsPerSecond?: number
  /** The acceptance is the peer's answer to an earlier small job, reused (BidCache): no call for bids went out. */
  cached?: boolean
  /** Why it declined or gave no answer. */
  reason?: string
  /** Accepting peers: shards the split cut for it (absent for a job resumed with its old split). */
  planned?: number
  /** Accepting peers, once the job ends: shards whose partial it supplied. */
  ran?: number
  /** An accepting peer that supplied no partial: why. */
  unused?: string
}

/** The JSON form of a job (GET /v1/jobs/:id). */
export interface JobView {
  id: string
  op: string
  params: Params
  inputs: Record<string, { dtype: string, shape: number[] }>
  state: JobState
  createdAt: string
  startedAt?: string
  finishedAt?: string
  elapsedMs?: number
  progress: { done: number, total: number }
  output?: { dtype: string, shape: number[] }
  error?: { code: string, message: string }
  bids: BidRecord[]
  verification: { replicas: number, spotCheck: number, verified: number, outvoted: Array<{ shard: number, peer: string }> }
  shards: ShardRecord[]
  /** Training jobs: `{rounds: [{round, loss, accuracy, testLoss, ms, peers}], accuracy}`. */
  metrics?: Job['metrics']
  /** Training jobs: the trained model's CID and size (GET /v1/jobs/:id/model). */
  model?: { cid: string, bytes: number }
}

export interface JobInit {
  id: string
  op: string
  params?: Params
  /** The inputs; absent for a finished job restored from the journal. */
  inputs?: Tensors
  inputDescs?: Record<string, { dtype: string, shape: number[] }>
  blobs?: Record<string, Uint8Array>
  verify: { replicas: number, spotCheck: number, rtol: number }
  schedule?: ScheduleSpec
  createdAt?: number
}

export interface JobEvents {
  progress: CustomEvent<{ done: number, total: number }>
  state: CustomEvent<JobState>
}

/** The job's failure, with a stable code; the message names the shard and each cause. */
export class JobFailedError extends TensormeshError {}

/**
 * A job and its record. The coordinator drives it; callers watch it through
 * events and `result()`.
 */
export class Job extends TypedEventEmitter<JobEvents> {
  readonly id: string
  readonly op: string
  readonly params: Params
  readonly inputDescs: Record<string, { dtype: string, shape: number[] }>
  readonly createdAt: number
  /** Where the journal keeps the result of a job restored after a restart (not loaded until asked for). */
  resultPath?: string
  /** Resolves once the journal holds the job's inputs (a job only starts after that). */
  journaled: Promise<void> = Promise.resolve()
  /** Resolves once the journal holds the job's final state (and result). */
  persisted: Promise<void> = Promise.resolve()
  readonly controller = new AbortController()
  plan?: JobPlan
  inputs?: Tensors
  blobs?: Record<string, Uint8Array>
  state: JobState = 'queued'
  startedAt?: number
  finishedAt?: number
  shards: ShardRecord[] = []
  bids: BidRecord[] = []
  output?: HostTensor
  error?: { code: string, message: string }
  /** Training jobs: loss and held-out accuracy per round. */
  metrics?: {
    /** One per round of the MLP shorthand; one per epoch of a model's training. */
    rounds: Array<{ round: number, loss: number, accuracy: number, testLoss: number, ms: number, peers: number }>
    accuracy?: number
    /** A model's training: optimizer steps (step mode) or outer rounds (local mode) done of all. */
    progress?: { done: number, total: number, unit: 'steps' | 'rounds' }
    /** A model's training: bytes of weights, shard frames and partials moved between this node and its peers so far. */
    wireBytes?: number
  }
  /** Training jobs: the trained model, packed, in the node's blob store. */
  model?: { cid: string, bytes: number }
  /** Output shape of a restored job whose result is on disk. */
  outputDesc?: { dtype: string, shape: number[] }
  readonly verify: { replicas: number, spotCheck: number, rtol: number }
  readonly schedule: ScheduleSpec
  /** Shards whose partial was compared across peers. */
  verified = 0
  /** Peers whose partial lost a vote, by shard. */
  outvoted: Array<{ shard: number, peer: string }> = []
  private readonly settled: Promise<HostTensor>
  private readResult?: () => Promise<HostTensor>
  private resolveResult: (t: HostTensor) => void = () => {}
  private rejectResult: (err: Error) => void = () => {}

  constructor (init: JobInit) {
    super()
    this.id = init.id
    this.verify = init.verify
    this.schedule = init.schedule ?? {}
    this.op = init.op
    this.params = init.params ?? {}
    this.inputs = init.inputs
    this.blobs = init.blobs
    this.createdAt = init.createdAt ?? Date.now()
    this.inputDescs = init.inputDescs ?? Object.fromEntries(Object.entries(init.inputs ?? {}).map(([k, t]) => [k, { dtype: t.dtype, shape: [...t.shape] }]))
    this.settled = new Promise<HostTensor>((resolve, reject) => {
      this.resolveResult = resolve
      this.rejectResult = reject
    })
    // A caller that never asks for result() must not see an unhandled rejection.
    this.settled.catch(() => {})
  }

  get done (): number {
    return this.shards.filter(s => s.state === 'done').length
  }

  /** Shards done of total; for a training job, rounds done of total. */
  get progress (): { done: number, total: number } {
    const p = this.metrics?.progress
    if (this.op === 'train' && p !== undefined) return { done: p.done, total: p.total }
    if (this.op === 'train') return { done: this.metrics?.rounds.length ?? 0, total: Number(this.params.rounds ?? 0) }
    return { done: this.done, total: this.shards.length }
  }

  get finished (): boolean {
    return TERMINAL_STATES.includes(this.state)
  }

  /** The result tensor once the job succeeds; rejects with the job's error otherwise. */
  async result (): Promise<HostTensor> {
    if (this.output === undefined && this.readResult !== undefined) return await this.readResult()
    return await this.settled
  }

  cancel (): boolean {
    if (this.finished) return false
    this.controller.abort(new TensormeshError('ERR_CANCELLED', `job ${this.id} was cancelled`))
    this.finish('cancelled', undefined, { code: 'ERR_CANCELLED', message: 'cancelled by the user' })
    return true
  }

  setState (state: JobState): void {
    this.state = state
    if (state === 'running') this.startedAt = Date.now()
    this.safeDispatchEvent('state', { detail: state })
  }

  progressed (): void {
    this.safeDispatchEvent('progress', { detail: this.progress })
  }

  /**
   * Puts a job restored from the journal into its finished state, without
   * events. A succeeded job's result stays on disk until someone asks.
   */
  restoreFinished (state: JobState, finishedAt: number | undefined, error: { code: string, message: string } | undefined, readResult?: () => Promise<HostTensor>): void {
    this.state = state
    this.finishedAt = finishedAt
    this.error = error
    this.inputs = undefined
    if (state === 'succeeded' && readResult !== undefined) this.readResult = readResult
    else this.rejectResult(new JobFailedError(error?.code ?? 'ERR_JOB_FAILED', error?.message ?? state))
  }

  finish (state: 'succeeded' | 'failed' | 'cancelled', output?: HostTensor, error?: { code: string, message: string }): void {
    if (this.finished) return
    this.finishedAt = Date.now()
    this.output = output
    this.error = error
    // Inputs are only needed while shards may still be retried.
    this.inputs = undefined
    this.blobs = undefined
    this.setState(state)
    if (output !== undefined) this.resolveResult(output)
    else this.rejectResult(new JobFailedError(error?.code ?? 'ERR_JOB_FAILED', error?.message ?? state))
  }

  toJSON (): JobView {
    const view: JobView = {
      id: this.id,
      op: this.op,
      params: this.params,
      inputs: this.inputDescs,
      state: this.state,
      createdAt: new Date(this.createdAt).toISOString(),
      progress: this.progress,
      bids: this.bids,
      verification: { replicas: this.verify.replicas, spotCheck: this.verify.spotCheck, verified: this.verified, outvoted: this.outvoted },
      shards: this.shards
    }
    if (this.startedAt !== undefined) view.startedAt = new Date(this.startedAt).toISOString()
    if (this.finishedAt !== undefined) {
      view.finishedAt = new Date(this.finishedAt).toISOString()
      view.elapsedMs = this.finishedAt - this.createdAt
    }
    if (this.output !== undefined) view.output = { dtype: this.output.dtype, shape: this.output.shape }
    else if (this.outputDesc !== undefined) view.output = this.outputDesc
    else if (this.plan !== undefined) view.output = { dtype: this.plan.output.dtype, shape: this.plan.output.shape }
    if (this.error !== undefined) view.error = this.error
    if (this.metrics !== undefined) view.metrics = this.metrics
    if (this.model !== undefined) view.model = this.model
    return view
  }
}
