import type { BackendChoice, BackendName, GpuInfo } from './backend.ts'
import type { ShardTask, Tensors } from './operators/types.ts'

/**
 * Messages between the executor pool (main thread) and its workers. Internal
 * to src/compute: both ends are this build's own code.
 */

export interface WorkerInit {
  backend: BackendChoice
}

/** An error as it crosses the thread boundary (Error objects lose their class and code). */
export interface WireError {
  /** 'task': the task's own validation; 'map': the operator's map threw; 'init': backend load. */
  stage: 'init' | 'task' | 'map'
  code: string
  message: string
}

export type ToWorker =
  | { type: 'run', id: number, task: ShardTask }
  | { type: 'calibrate', id: number, size: number, budgetMs: number }

export type FromWorker =
  | { type: 'ready', backend: BackendName, gpu?: GpuInfo, operators: string[] }
  | { type: 'init-failed', error: WireError }
  | { type: 'result', id: number, partial: Tensors, computeMs: number }
  | { type: 'failed', id: number, error: WireError }
  | { type: 'calibrated', id: number, gflops: number }
