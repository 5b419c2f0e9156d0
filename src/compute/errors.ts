import { TensormeshError } from '../errors.ts'

/**
 * Failures of the compute layer. One class per failure, each with a stable
 * `code`; callers (the shard protocol, the HTTP API) map codes to answers.
 */

/** The requested TF.js backend does not load on this machine. */
export class BackendUnavailableError extends TensormeshError {
  constructor (message: string, options?: ErrorOptions) {
    super('ERR_BACKEND_UNAVAILABLE', message, options)
  }
}

/** The backend loaded but would not initialise (e.g. wasm failed to instantiate). */
export class BackendInitError extends TensormeshError {
  constructor (message: string, options?: ErrorOptions) {
    super('ERR_BACKEND_INIT', message, options)
  }
}

/** The pool's queue is at its bound; the caller should decline or retry later. */
export class QueueFullError extends TensormeshError {
  constructor (message: string) {
    super('ERR_QUEUE_FULL', message)
  }
}

/** The caller's AbortSignal fired before the task finished. */
export class AbortedError extends TensormeshError {
  constructor (message: string, options?: ErrorOptions) {
    super('ERR_ABORTED', message, options)
  }
}

/** The pool is not started, or was stopped while the task waited or ran. */
export class PoolNotRunningError extends TensormeshError {
  constructor (message: string) {
    super('ERR_POOL_NOT_RUNNING', message)
  }
}

/** The worker thread running the task died (crash, out of memory, exit). */
export class WorkerCrashedError extends TensormeshError {
  constructor (message: string) {
    super('ERR_WORKER_CRASHED', message)
  }
}

/** An operator's `map` threw inside a worker. */
export class MapFailedError extends TensormeshError {
  constructor (message: string) {
    super('ERR_MAP_FAILED', message)
  }
}
