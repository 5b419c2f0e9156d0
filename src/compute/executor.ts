import { parentPort, workerData } from 'node:worker_threads'
import { errorCode, errorMessage } from '../errors.ts'
import { loadBackend } from './backend.ts'
import { getOperator, operatorNames, OPERATORS } from './operators/index.ts'
import { ownsBuffer } from './tensor.ts'
import type { FromWorker, ToWorker, WireError, WorkerInit } from './worker-protocol.ts'
import type { Operator, Tensors, TF } from './operators/types.ts'

/**
 * The code that runs inside an executor worker thread: load the backend,
 * then run one message at a time (the pool never sends a second task before
 * the first answered). TF.js kernels run here, never on the main thread.
 */

export interface ServeWorkerOptions {
  /** The operators this worker runs; the build's registry unless a test adds its own. */
  operators?: ReadonlyMap<string, Operator>
}

function wire (stage: WireError['stage'], err: unknown): WireError {
  return { stage, code: errorCode(err), message: errorMessage(err) }
}

/** Buffers to transfer back: results always move, copying only a view that does not own its buffer. */
function ownedForTransfer (partial: Tensors): { partial: Tensors, transfer: ArrayBuffer[] } {
  const out: Tensors = {}
  const transfer = new Set<ArrayBuffer>()
  for (const [name, t] of Object.entries(partial)) {
    let data = t.data
    if (!ownsBuffer(data) || transfer.has(data.buffer as ArrayBuffer)) data = data.slice()
    transfer.add(data.buffer as ArrayBuffer)
    out[name] = { dtype: t.dtype, shape: t.shape, data }
  }
  return { partial: out, transfer: [...transfer] }
}

/**
 * Matmul throughput of this worker's backend in GFLOPS (2 n^3 per product).
 * One untimed product first, so wasm compilation and kernel setup are not
 * counted, then as many as fit in the budget (at least two).
 */
async function calibrate (tf: TF, size: number, budgetMs: number): Promise<number> {
  const a = tf.randomUniform([size, size], -1, 1, 'float32', 1)
  const b = tf.randomUniform([size, size], -1, 1, 'float32', 2)
  try {
    const product = async (): Promise<void> => {
      const c = tf.matMul(a, b)
      try { await c.data() } finally { c.dispose() }
    }
    await product()
    let count = 0
    const t0 = performance.now()
    let elapsed = 0
    do {
      await product()
      count++
      elapsed = performance.now() - t0
    } while (elapsed < budgetMs || count < 2)
    return 2 * size ** 3 * count / (elapsed / 1000) / 1e9
  } finally {
    a.dispose()
    b.dispose()
  }
}

export function serveWorker (options: ServeWorkerOptions = {}): void {
  const port = parentPort
  if (port === null) throw new Error('serveWorker must run in a worker thread')
  const registry = options.operators ?? OPERATORS
  const init = workerData as WorkerInit
  const post = (msg: FromWorker, transfer: ArrayBuffer[] = []): void => { port.postMessage(msg, transfer) }

  const ready = loadBackend(init.backend)
  ready.then(
    (loaded) => { post({ type: 'ready', backend: loaded.name, ...(loaded.gpu === undefined ? {} : { gpu: loaded.gpu }), operators: operatorNames(registry) }) },
    (err: unknown) => { post({ type: 'init-failed', error: wire('init', err) }) }
  )

  port.on('message', (msg: ToWorker) => {
    handle(msg).catch((err: unknown) => { post({ type: 'failed', id: msg.id, error: wire('map', err) }) })
  })

  async function handle (msg: ToWorker): Promise<void> {
    const { tf } = await ready
    if (msg.type === 'calibrate') {
      post({ type: 'calibrated', id: msg.id, gflops: await calibrate(tf, msg.size, msg.budgetMs) })
      return
    }
    let op: Operator
    try {
      // Re-checked here as well as by the caller: map must never see a task
      // whose shapes and params do not hold together.
      op = getOperator(msg.task.op, registry)
      op.validateTask(msg.task)
    } catch (err) {
      post({ type: 'failed', id: msg.id, error: wire('task', err) })
      return
    }
    const t0 = performance.now()
    const partial = await op.map(tf, msg.task)
    const computeMs = performance.now() - t0
    const owned = ownedForTransfer(partial)
    post({ type: 'result', id: msg.id, partial: owned.partial, computeMs }, owned.transfer)
  }
}
