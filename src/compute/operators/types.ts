import type { HostTensor } from '../tensor.ts'

/** Named tensors: the inputs of a job or a shard, and the partial a shard returns. */
export type Tensors = Record<string, HostTensor>

/** Operator parameters as they arrive in a job file or a shard frame: plain JSON. */
export type Params = Record<string, unknown>

/**
 * What one work unit costs; the coordinator uses it to ask for bids and the
 * peers use it to estimate how long they would take.
 */
export interface CostModel {
  /** Floating point operations per unit of work. */
  flopsPerUnit: number
  /** Bytes sent to a peer per unit (the sharded part of the inputs). */
  bytesInPerUnit: number
  /** Bytes sent to every shard whatever its size (e.g. matmul's B). */
  bytesInFixed: number
  /** Bytes a shard returns per unit. */
  bytesOutPerUnit: number
  /** Bytes a shard returns whatever its size (a gradient: the model's length). */
  bytesOutFixed?: number
}

/** A job after validation: the number of work units, their cost, and the validated params. */
export interface JobPlan<P = Params> {
  op: string
  units: number
  cost: CostModel
  params: P
  /** Shape and dtype of the final result. */
  output: Pick<HostTensor, 'dtype' | 'shape'>
}

/** Work units [start, end) of a job, as shard number `index`. */
export interface ShardRange {
  index: number
  start: number
  end: number
}

/**
 * What travels to the peer that runs a shard: the operator's name, its params
 * (plain JSON) and the tensors this shard needs. Operators are data: a peer
 * looks the name up in its own registry and runs its own code.
 */
export interface ShardTask {
  op: string
  params: Params
  /** Every tensor the shard's map reads, shared ones included. */
  inputs: Tensors
  /**
   * Names of inputs that are the same for every shard of the job (matmul's
   * b, a model's weights). The transport sends these by content address, so
   * a peer fetches each once however many shards it runs.
   */
  shared?: string[]
  /**
   * Opaque data the job carries besides tensors, by name (a TF.js model's
   * artifacts, say); also sent by content address, and never code.
   */
  blobs?: Record<string, Uint8Array>
}

/** Combines partials on the coordinator as they arrive, in any order. */
export interface Reducer {
  add: (range: ShardRange, partial: Tensors) => void
  /** The final result; throws if a range is missing. */
  result: () => HostTensor
}

/** TF.js as a worker sees it (tfjs-core's namespace, whatever backend is active). */
export type TF = typeof import('@tensorflow/tfjs-core')

export interface Operator<P = Params> {
  readonly name: string
  /**
   * Validates a whole job on the coordinator before anything starts. Throws
   * InvalidInputError whose message names the input or param and what was
   * expected.
   */
  plan: (inputs: Tensors, params: unknown, blobs?: Record<string, Uint8Array>) => JobPlan<P>
  /** The task for one range of units: views of the inputs, no copy. */
  shard: (plan: JobPlan<P>, inputs: Tensors, range: ShardRange, blobs?: Record<string, Uint8Array>) => ShardTask
  /**
   * Validates a task that arrived from a peer before it reaches a worker:
   * params and shapes must be consistent, or it throws InvalidInputError.
   * Returns the number of units in the task.
   */
  validateTask: (task: ShardTask) => number
  /** Runs inside a worker thread on that worker's TF.js backend. */
  map: (tf: TF, task: ShardTask) => Promise<Tensors>
  /** A fresh reducer for one job. */
  reducer: (plan: JobPlan<P>) => Reducer
}
