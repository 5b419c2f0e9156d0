import { expect } from 'vitest'
import { prng, shuffleInPlace } from '../../src/compute/random.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'
import type { JobPlan, Operator, ShardRange, ShardTask, Tensors, TF } from '../../src/compute/operators/types.ts'

/**
 * Drives an operator as a coordinator would, in this process: plan, cut the
 * units into uneven ranges, run every shard's task through `run` (the map
 * in-process, or an ExecutorPool), and reduce in a shuffled order.
 */

/** Cuts and orders that are the same on every run. */
export { prng }

/** `shards` non-empty ranges over [0, units) of uneven, seeded sizes (one at least 4x another when units allow). */
export function unevenRanges (units: number, shards: number, seed: number): ShardRange[] {
  const u = prng(seed)
  const weights = Array.from({ length: shards }, (_, i) => (i === 0 ? 4 : 0.5) + u())
  const total = weights.reduce((a, b) => a + b, 0)
  const cuts = [0]
  let acc = 0
  for (let i = 0; i < shards - 1; i++) {
    acc += weights[i] as number
    cuts.push(Math.max(cuts[i] as number + 1, Math.min(units - (shards - 1 - i), Math.round(acc / total * units))))
  }
  cuts.push(units)
  return cuts.slice(1).map((end, i) => ({ index: i, start: cuts[i] as number, end }))
}

export function shuffled<T> (items: T[], seed: number): T[] {
  return shuffleInPlace([...items], prng(seed))
}

export type RunTask = (task: ShardTask) => Promise<Tensors>

export function inProcess (op: Operator, tf: () => TF): RunTask {
  return async (task) => await op.map(tf(), task)
}

export async function runSharded<P> (op: Operator<P>, inputs: Tensors, params: unknown, opts: { shards: number, seed: number, run: RunTask, blobs?: Record<string, Uint8Array> }): Promise<{ out: HostTensor, plan: JobPlan<P> }> {
  const plan = op.plan(inputs, params, opts.blobs)
  const ranges = unevenRanges(plan.units, opts.shards, opts.seed)
  const reducer = op.reducer(plan)
  const partials = await Promise.all(ranges.map(async (range) => {
    const task = op.shard(plan, inputs, range, opts.blobs)
    expect(op.validateTask(task)).toBe(range.end - range.start)
    return { range, partial: await opts.run(task) }
  }))
  for (const { range, partial } of shuffled(partials, opts.seed + 1)) reducer.add(range, partial)
  const out = reducer.result()
  expect(out.dtype).toBe(plan.output.dtype)
  expect(out.shape).toEqual(plan.output.shape)
  return { out, plan }
}
