import { availableParallelism } from 'node:os'
import { Worker } from 'node:worker_threads'
import { InvalidInputError, LimitExceededError } from '../errors.ts'
import { AbortedError, BackendInitError, BackendUnavailableError, MapFailedError, PoolNotRunningError, QueueFullError, WorkerCrashedError } from './errors.ts'
import { ownsBuffer } from './tensor.ts'
import type { TensorData } from './tensor.ts'
import type { TensormeshError } from '../errors.ts'
import type { BackendChoice, BackendName, GpuInfo } from './backend.ts'
import type { ShardTask, Tensors } from './operators/types.ts'
import type { FromWorker, ToWorker, WireError, WorkerInit } from './worker-protocol.ts'

/**
 * The executor pool: one worker thread per core, each with its own TF.js
 * backend, running one shard task at a time. The main thread serves libp2p,
 * so every TF.js kernel (calibration included) runs in a worker; tensors
 * cross the boundary as transferred ArrayBuffers where that is safe.
 */

/**
 * Tasks waiting for a free worker. Each holds its input tensors in memory, so
 * the bound is a memory bound as much as a latency one: 32 is a few shards
 * per core on the machines we target, enough to keep every worker fed while
 * the coordinator streams the next shard, and an answer of ERR_QUEUE_FULL
 * tells a coordinator to send its shards elsewhere.
 */
export const DEFAULT_MAX_QUEUE = 32

/**
 * Calibration: n x n float32 matmuls. 256 keeps the per-call overhead (a few
 * tens of microseconds) small against one product on wasm (~2 ms at
 * 20 GFLOPS), while one product on the plain JS cpu backend (~1.5 GFLOPS)
 * still takes only ~25 ms.
 */
export const CALIBRATION_SIZE = 256

/** Timed matmuls run for this long on every worker at once: a steady reading, and start stays well under a second. */
export const CALIBRATION_BUDGET_MS = 200

/**
 * A worker must load its backend within this time. wasm takes ~0.1 s and
 * tfjs-node loads libtensorflow in a second or two; 30 s covers a cold disk
 * and a slow CUDA init while still failing a hung driver.
 */
export const WORKER_START_TIMEOUT_MS = 30_000

export interface ExecutorPoolInit {
  /** Worker threads; one per core (os.availableParallelism()) by default. */
  workers?: number
  backend?: BackendChoice
  /** Tasks that may wait for a worker; DEFAULT_MAX_QUEUE by default. */
  maxQueue?: number
  /** Measure GFLOPS at start (default true); false leaves `gflops` at 0. */
  calibrate?: boolean
  /** The worker entry module; ./worker.ts by default. Tests pass one with extra operators. */
  workerUrl?: URL
}

export interface RunOptions {
  signal?: AbortSignal
  /**
   * Move input buffers to the worker instead of copying them. Only arrays
   * that own their whole buffer are moved (and are detached for the
   * caller); views of a larger tensor are always copied. Use it for tensors
   * no one else needs, such as a task decoded from a peer's stream; never
   * for a job's own tensors, which its other shards still read (matmul's b).
   */
  transfer?: boolean
}

export interface RunResult {
  partial: Tensors
  /** Time the operator's map took inside the worker. */
  computeMs: number
}

/** Load counters, the detail of every 'change' event. */
export interface PoolLoad {
  slots: number
  busy: number
  queued: number
}

interface Job {
  task: ShardTask
  transfer: ArrayBuffer[]
  resolve: (r: RunResult) => void
  reject: (err: Error) => void
  signal?: AbortSignal
  onAbort?: () => void
}

/** One outstanding request to a worker: a task or a calibration. */
interface Pending {
  id: number
  job?: Job
  resolve: (msg: FromWorker) => void
  reject: (err: Error) => void
}

interface Slot {
  worker: Worker
  state: 'starting' | 'idle' | 'busy'
  pending?: Pending
  /** Set before a deliberate terminate, so its exit is not taken for a crash. */
  retired: boolean
}

type Ready = Extract<FromWorker, { type: 'ready' }>

function fromWire (op: string, e: WireError): TensormeshError {
  if (e.stage === 'map') return new MapFailedError(`${op}: ${e.message}`)
  if (e.stage === 'init') return e.code === 'ERR_BACKEND_UNAVAILABLE' ? new BackendUnavailableError(e.message) : new BackendInitError(e.message)
  if (e.code === 'ERR_LIMIT_EXCEEDED') return new LimitExceededError(e.message)
  return new InvalidInputError(e.message, e.code)
}

/**
 * Shared inputs at least this large cross to workers in shared memory
 * rather than by copy. Below it a copy costs less than a SharedArrayBuffer's
 * set-up; above it (a training job's 188 MB of MNIST, sent with every step)
 * the copy dominates the task.
 */
export const SHARED_MEMORY_MIN_BYTES = 64 * 1024

/**
 * The SharedArrayBuffer copy of each large shared input, keyed by the
 * caller's array: a job passes the same array (its own, or the peer's
 * SharedCache entry) with every shard, so it is copied once, and every later
 * task posts a view that no worker copies. The entry lives as long as the
 * caller's array does. Workers only read their inputs.
 */
const sharedCopies = new WeakMap<TensorData, TensorData>()

function sharedView (data: TensorData): TensorData {
  let view = sharedCopies.get(data)
  if (view === undefined) {
    const sab = new SharedArrayBuffer(data.byteLength)
    view = data instanceof Float32Array ? new Float32Array(sab) : new Int32Array(sab)
    view.set(data)
    sharedCopies.set(data, view)
  }
  return view
}

/**
 * Inputs as they will cross to the worker: arrays the caller lets us move
 * and that own their buffer go as they are; large shared inputs go in
 * shared memory (sharedView); arrays on shared memory already go as they
 * are; anything else is copied now, so after run() returns the pool never
 * reads the caller's arrays again.
 */
function prepareInputs (inputs: Tensors, transfer: boolean, shared: readonly string[] = []): { inputs: Tensors, transfer: ArrayBuffer[] } {
  const out: Tensors = {}
  const buffers = new Set<ArrayBuffer>()
  for (const [name, t] of Object.entries(inputs)) {
    let data = t.data
    // `detached` is ES2024 (Node 22 has it; the configured lib does not type it).
    if ((data.buffer as { detached?: boolean }).detached === true) {
      throw new InvalidInputError(`input '${name}' was transferred away already (its buffer is detached); run tensors that other tasks share with transfer: false`, 'ERR_DETACHED_INPUT')
    }
    // Already shared memory (a received shard's reused buffer): the worker reads it where it is.
    // The caller keeps it intact until run() settles.
    if (data.buffer instanceof SharedArrayBuffer) {
      out[name] = { dtype: t.dtype, shape: [...t.shape], data }
      continue
    }
    if (shared.includes(name) && data.byteLength >= SHARED_MEMORY_MIN_BYTES) {
      out[name] = { dtype: t.dtype, shape: [...t.shape], data: sharedView(data) }
      continue
    }
    // A buffer listed twice in a transfer list is an error, so a second
    // input on the same buffer is copied.
    // Shared inputs (the same tensor for every shard, often cached) are never moved.
    if (!transfer || shared.includes(name) || !ownsBuffer(data) || buffers.has(data.buffer as ArrayBuffer)) data = data.slice()
    buffers.add(data.buffer as ArrayBuffer)
    out[name] = { dtype: t.dtype, shape: [...t.shape], data }
  }
  return { inputs: out, transfer: [...buffers] }
}

export class ExecutorPool extends EventTarget {
  private readonly init: ExecutorPoolInit
  private readonly workerCount: number
  private readonly maxQueue: number
  private readonly workerUrl: URL
  private state: 'stopped' | 'starting' | 'running' | 'stopping' = 'stopped'
  private slotList: Slot[] = []
  private readonly queue: Job[] = []
  private nextId = 1
  private resolved?: BackendName
  private gpuInfo?: GpuInfo
  private operatorList: string[] = []
  private calibrated = 0
  private restartCount = 0
  /** Replacement workers still loading; stop() waits for them to end too. */
  private readonly spawning = new Set<Promise<void>>()
  private starting?: Promise<void>

  constructor (init: ExecutorPoolInit = {}) {
    super()
    this.init = init
    this.workerCount = init.workers ?? availableParallelism()
    this.maxQueue = init.maxQueue ?? DEFAULT_MAX_QUEUE
    if (!Number.isSafeInteger(this.workerCount) || this.workerCount < 1) {
      throw new InvalidInputError(`workers must be a positive integer, got ${String(init.workers)}`, 'ERR_BAD_OPTION')
    }
    if (!Number.isSafeInteger(this.maxQueue) || this.maxQueue < 0) {
      throw new InvalidInputError(`maxQueue must be a non-negative integer, got ${String(init.maxQueue)}`, 'ERR_BAD_OPTION')
    }
    // Run from source the entry is worker.ts; from the built package (dist/), worker.js.
    this.workerUrl = init.workerUrl ?? new URL(import.meta.url.endsWith('.ts') ? './worker.ts' : './worker.js', import.meta.url)
  }

  /** The backend every worker runs; known after start(). */
  get backend (): BackendName {
    if (this.resolved === undefined) throw new PoolNotRunningError('the pool has not started; its backend is not chosen yet')
    return this.resolved
  }

  get gpu (): GpuInfo | undefined {
    return this.gpuInfo
  }

  /** Workers, including any being restarted. */
  get slots (): number {
    return this.slotList.length
  }

  get busy (): number {
    return this.slotList.filter(s => s.state === 'busy').length
  }

  get queued (): number {
    return this.queue.length
  }

  /** Whole-pool matmul GFLOPS measured at start (all workers at once), 0 when not calibrated. */
  get gflops (): number {
    return this.calibrated
  }

  /** Operator names the workers can run. */
  get operators (): string[] {
    return [...this.operatorList]
  }

  /** Workers replaced after a crash or an aborted task. */
  get restarts (): number {
    return this.restartCount
  }

  get load (): PoolLoad {
    return { slots: this.slots, busy: this.busy, queued: this.queued }
  }

  async start (): Promise<void> {
    if (this.state === 'starting' && this.starting !== undefined) return await this.starting
    if (this.state !== 'stopped') return
    this.state = 'starting'
    this.starting = this.startWorkers()
    try {
      await this.starting
    } finally {
      this.starting = undefined
    }
    this.changed()
  }

  private async startWorkers (): Promise<void> {
    try {
      // The first worker resolves 'auto'; the rest load that same backend so
      // the pool is uniform and its GFLOPS mean one thing.
      const first = await this.spawn(this.init.backend ?? 'auto')
      this.slotList.push(first.slot)
      this.checkNotStopped()
      this.resolved = first.ready.backend
      if (first.ready.gpu !== undefined) this.gpuInfo = first.ready.gpu
      this.operatorList = first.ready.operators
      const rest = await Promise.allSettled(Array.from({ length: this.workerCount - 1 }, async () => await this.spawn(first.ready.backend)))
      for (const r of rest) if (r.status === 'fulfilled') this.slotList.push(r.value.slot)
      const failed = rest.find(r => r.status === 'rejected')
      if (failed !== undefined) throw failed.reason
      this.checkNotStopped()
      if (this.init.calibrate !== false) this.calibrated = await this.calibrate()
      this.checkNotStopped()
      this.state = 'running'
    } catch (err) {
      await this.terminateAll()
      this.resolved = undefined
      // A concurrent stop() owns the state from here.
      if ((this.state as string) === 'starting') this.state = 'stopped'
      throw err
    }
  }

  /** stop() during start() wins: start gives up at its next step. */
  private checkNotStopped (): void {
    if ((this.state as string) !== 'starting') throw new PoolNotRunningError('the executor pool was stopped while starting')
  }

  /** Terminates every worker; queued and running tasks reject with ERR_POOL_NOT_RUNNING. */
  async stop (): Promise<void> {
    if (this.state === 'stopped' || this.state === 'stopping') return
    // A start() in progress sees the new state at its next step, ends what
    // it spawned and rejects; wait for that so no worker outlives stop().
    const starting = this.starting
    this.state = 'stopping'
    if (starting !== undefined) await starting.catch(() => {})
    for (const job of this.queue.splice(0)) this.settle(job, new PoolNotRunningError('the executor pool stopped before the task ran'))
    await this.terminateAll()
    this.state = 'stopped'
    this.changed()
  }

  run (task: ShardTask, options: RunOptions = {}): Promise<RunResult> {
    return new Promise<RunResult>((resolve, reject) => {
      const { signal } = options
      if (this.state !== 'running') { reject(new PoolNotRunningError('the executor pool is not running')); return }
      if (this.slotList.length === 0) { reject(new WorkerCrashedError('the executor pool has no worker left (restarts failed)')); return }
      if (!this.operatorList.includes(task.op)) {
        reject(new InvalidInputError(`unknown operator ${JSON.stringify(task.op)}; known: ${this.operatorList.join(', ')}`, 'ERR_UNKNOWN_OPERATOR'))
        return
      }
      if (signal?.aborted === true) { reject(new AbortedError('the task was aborted before it was queued', { cause: signal.reason })); return }
      if (this.queue.length >= this.maxQueue && this.idleSlot() === undefined) {
        reject(new QueueFullError(`the executor queue is full (${this.maxQueue} tasks waiting)`))
        return
      }
      let prepared: ReturnType<typeof prepareInputs>
      try {
        prepared = prepareInputs(task.inputs, options.transfer === true, task.shared)
      } catch (err) {
        reject(err as Error)
        return
      }
      const job: Job = { task: { op: task.op, params: task.params, inputs: prepared.inputs, ...(task.blobs !== undefined ? { blobs: task.blobs } : {}) }, transfer: prepared.transfer, resolve, reject }
      if (signal !== undefined) {
        job.signal = signal
        job.onAbort = () => { this.abort(job) }
        signal.addEventListener('abort', job.onAbort, { once: true })
      }
      this.queue.push(job)
      this.dispatch()
      this.changed()
    })
  }

  private changed (): void {
    this.dispatchEvent(new CustomEvent<PoolLoad>('change', { detail: this.load }))
  }

  private idleSlot (): Slot | undefined {
    return this.slotList.find(s => s.state === 'idle')
  }

  /** Hands queued jobs to idle workers, oldest first. */
  private dispatch (): void {
    for (let slot = this.idleSlot(); slot !== undefined && this.queue.length > 0; slot = this.idleSlot()) {
      const job = this.queue.shift() as Job
      const id = this.nextId++
      slot.state = 'busy'
      slot.pending = {
        id,
        job,
        resolve: (msg) => {
          if (msg.type === 'result') this.settle(job, undefined, { partial: msg.partial, computeMs: msg.computeMs })
          else if (msg.type === 'failed') this.settle(job, fromWire(job.task.op, msg.error))
        },
        reject: (err) => { this.settle(job, err) }
      }
      const msg: ToWorker = { type: 'run', id, task: job.task }
      try {
        // The job's copies and moved buffers now belong to the worker.
        slot.worker.postMessage(msg, job.transfer)
      } catch (err) {
        // Nothing reached the worker (e.g. a buffer could not be cloned): the
        // slot is still free and only this job fails.
        slot.pending = undefined
        slot.state = 'idle'
        this.settle(job, new InvalidInputError(`${job.task.op}: the task could not be sent to a worker: ${(err as Error).message}`, 'ERR_TASK_NOT_SENT'))
      }
    }
  }

  private settle (job: Job, err?: Error, result?: RunResult): void {
    if (job.signal !== undefined && job.onAbort !== undefined) job.signal.removeEventListener('abort', job.onAbort)
    if (err !== undefined) job.reject(err)
    else if (result !== undefined) job.resolve(result)
  }

  private abort (job: Job): void {
    const reason = job.signal?.reason
    const queuedAt = this.queue.indexOf(job)
    if (queuedAt >= 0) {
      this.queue.splice(queuedAt, 1)
      this.settle(job, new AbortedError('the task was aborted while queued', { cause: reason }))
      this.changed()
      return
    }
    const slot = this.slotList.find(s => s.pending?.job === job)
    if (slot === undefined) return
    // A kernel cannot be interrupted from outside; ending the thread is the
    // only way to make sure a cancelled shard stops using the core.
    slot.pending = undefined
    this.settle(job, new AbortedError('the task was aborted while running; its worker was restarted', { cause: reason }))
    this.replace(slot)
  }

  /** Starts a worker and waits for its backend; rejects (and ends the thread) if it does not come up. */
  private async spawn (backend: BackendChoice): Promise<{ slot: Slot, ready: Ready }> {
    const init: WorkerInit = { backend }
    const worker = new Worker(this.workerUrl, { workerData: init, name: 'tensormesh-executor' })
    const slot: Slot = { worker, state: 'starting', retired: false }
    try {
      const ready = await new Promise<Ready>((resolve, reject) => {
        const timer = setTimeout(() => { reject(new BackendInitError(`worker did not load backend '${backend}' within ${WORKER_START_TIMEOUT_MS} ms`)) }, WORKER_START_TIMEOUT_MS)
        const done = (): void => {
          clearTimeout(timer)
          worker.off('message', onMessage)
          worker.off('error', onError)
          worker.off('exit', onExit)
        }
        const onMessage = (msg: FromWorker): void => {
          if (msg.type === 'ready') { done(); resolve(msg) }
          if (msg.type === 'init-failed') { done(); reject(fromWire('', msg.error)) }
        }
        const onError = (err: Error): void => { done(); reject(new BackendInitError(`worker failed while loading backend '${backend}': ${err.message}`, { cause: err })) }
        const onExit = (code: number): void => { done(); reject(new BackendInitError(`worker exited with code ${code} while loading backend '${backend}'`)) }
        worker.on('message', onMessage)
        worker.on('error', onError)
        worker.on('exit', onExit)
      })
      slot.state = 'idle'
      worker.on('message', (msg: FromWorker) => { this.onMessage(slot, msg) })
      worker.on('error', (err: Error) => { this.onCrash(slot, `worker crashed: ${err.message}`) })
      worker.on('exit', (code: number) => { this.onCrash(slot, `worker exited with code ${code}`) })
      return { slot, ready }
    } catch (err) {
      slot.retired = true
      await worker.terminate()
      throw err
    }
  }

  private onMessage (slot: Slot, msg: FromWorker): void {
    const pending = slot.pending
    if (pending === undefined || !('id' in msg) || msg.id !== pending.id) return
    slot.pending = undefined
    slot.state = 'idle'
    pending.resolve(msg)
    this.dispatch()
    this.changed()
  }

  private onCrash (slot: Slot, why: string): void {
    if (slot.retired) return
    const pending = slot.pending
    slot.pending = undefined
    pending?.reject(new WorkerCrashedError(pending.job === undefined ? why : `${pending.job.task.op}: ${why}`))
    this.replace(slot)
  }

  /** Ends a slot's worker and starts a fresh one in its place. */
  private replace (slot: Slot): void {
    slot.retired = true
    slot.state = 'starting'
    void slot.worker.terminate()
    this.changed()
    if (this.state !== 'running' || this.resolved === undefined) return
    this.restartCount++
    const spawning = this.spawn(this.resolved).then(
      async ({ slot: fresh }) => {
        const at = this.slotList.indexOf(slot)
        if (this.state !== 'running' || at < 0) {
          fresh.retired = true
          await fresh.worker.terminate()
          return
        }
        this.slotList[at] = fresh
        this.dispatch()
        this.changed()
      },
      () => {
        // The backend loaded before and does not now: give the slot up rather
        // than loop on restarts. With no worker left, nothing queued can run.
        this.slotList = this.slotList.filter(s => s !== slot)
        if (this.slotList.length === 0) {
          for (const job of this.queue.splice(0)) this.settle(job, new WorkerCrashedError('no executor worker could be restarted'))
        }
        this.changed()
      }
    ).finally(() => { this.spawning.delete(spawning) })
    this.spawning.add(spawning)
  }

  /** All workers at once, as the pool runs in practice; the sum of each worker's rate. */
  private async calibrate (): Promise<number> {
    const rates = await Promise.all(this.slotList.map(async (slot) => {
      const id = this.nextId++
      const msg = await new Promise<FromWorker>((resolve, reject) => {
        slot.state = 'busy'
        slot.pending = { id, resolve, reject }
        const req: ToWorker = { type: 'calibrate', id, size: CALIBRATION_SIZE, budgetMs: CALIBRATION_BUDGET_MS }
        slot.worker.postMessage(req)
      })
      if (msg.type !== 'calibrated') throw new BackendInitError(`calibration failed: ${msg.type === 'failed' ? msg.error.message : msg.type}`)
      return msg.gflops
    }))
    return rates.reduce((a, b) => a + b, 0)
  }

  private async terminateAll (): Promise<void> {
    const slots = this.slotList
    this.slotList = []
    await Promise.all(slots.map(async (slot) => {
      slot.retired = true
      const pending = slot.pending
      slot.pending = undefined
      pending?.reject(new PoolNotRunningError('the executor pool stopped while the task ran'))
      await slot.worker.terminate()
    }))
    await Promise.allSettled([...this.spawning])
  }
}
