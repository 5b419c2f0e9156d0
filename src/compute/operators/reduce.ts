import { InvalidInputError } from '../../errors.ts'
import { BYTES_PER_ELEMENT, describe, hostTensor, rowSize, rowSlice, sizeOf } from '../tensor.ts'
import { checkDType, checkInputs, checkMinRank, checkParams, checkPartial, RangeSet, requireInput } from './common.ts'
import type { DType, HostTensor } from '../tensor.ts'
import type { JobPlan, Operator, ShardRange, Tensors } from './types.ts'

/**
 * sum / mean / max / min of x over axis 0 (output x.shape[1:]) or over all
 * elements (axis omitted or null; output a scalar, shape []). Sharded by rows
 * of x. Each shard returns its sum (for sum and mean) or its extreme; the
 * coordinator combines them in float64 and divides a mean once, by the count
 * it derives from the ranges itself, so uneven shards weigh correctly and a
 * peer cannot skew a mean by lying about a count.
 *
 * Output dtype: float32 for sum and mean, x's dtype for max and min.
 * Precision: within a shard TF.js sums in float32; across shards in float64.
 */

const NAME = 'reduce'

export const REDUCE_OPS = ['sum', 'mean', 'max', 'min'] as const
export type ReduceOp = typeof REDUCE_OPS[number]

export interface ReduceParams {
  op: ReduceOp
  /** 0: along rows, output x.shape[1:]. null: all elements, output []. */
  axis: 0 | null
}

/** The job's params plus what the coordinator's reducer needs; only op and axis travel to peers. */
export interface ReducePlanParams extends ReduceParams {
  /** Elements in one row of x: the count one unit adds to an all-elements mean. */
  rowElements: number
}

function checkReduceParams (params: unknown): ReduceParams {
  const p = checkParams(NAME, params, ['op', 'axis'])
  if (!(REDUCE_OPS as readonly unknown[]).includes(p.op)) {
    throw new InvalidInputError(`${NAME}: params.op is ${JSON.stringify(p.op) ?? 'missing'}; allowed: ${REDUCE_OPS.join(', ')}`, 'ERR_BAD_PARAMS')
  }
  return { op: p.op as ReduceOp, axis: p.axis === undefined ? null : p.axis as 0 | null }
}

function check (inputs: unknown, params: unknown): { x: HostTensor, params: ReduceParams } {
  const p = checkReduceParams(params)
  const x = requireInput(checkInputs(NAME, inputs, ['x']), 'x')
  checkDType(NAME, 'x', x, ['float32', 'int32'])
  checkMinRank(NAME, 'x', x, 1)
  if (p.axis !== 0 && p.axis !== null) {
    throw new InvalidInputError(`${NAME}: axis ${JSON.stringify(p.axis) ?? String(p.axis)} is not allowed for x of rank ${x.shape.length}; allowed: 0 (along rows) or null (all elements)`, 'ERR_BAD_AXIS')
  }
  // max and min of nothing have no value (numpy raises too); a mean of nothing would be 0/0.
  const reduced = p.axis === 0 ? x.shape[0] as number : sizeOf(x.shape)
  if (p.op !== 'sum' && reduced === 0) {
    throw new InvalidInputError(`${NAME}: ${p.op} of x ${describe(x)} reduces over no elements`, 'ERR_EMPTY_REDUCTION')
  }
  return { x, params: p }
}

function outputShape (xShape: readonly number[], axis: 0 | null): number[] {
  return axis === 0 ? xShape.slice(1) : []
}

function outputDType (op: ReduceOp, x: DType): DType {
  return op === 'max' || op === 'min' ? x : 'float32'
}

export const reduce: Operator<ReducePlanParams> = {
  name: NAME,

  plan (inputs, params): JobPlan<ReducePlanParams> {
    const { x, params: p } = check(inputs, params)
    const r = rowSize(x)
    const outShape = outputShape(x.shape, p.axis)
    return {
      op: NAME,
      units: x.shape[0] as number,
      cost: { flopsPerUnit: r, bytesInPerUnit: r * BYTES_PER_ELEMENT, bytesInFixed: 0, bytesOutPerUnit: 0 },
      params: { ...p, rowElements: r },
      output: { dtype: outputDType(p.op, x.dtype), shape: outShape }
    }
  },

  shard (plan, inputs, range) {
    const x = requireInput(inputs, 'x')
    return { op: NAME, params: { op: plan.params.op, axis: plan.params.axis }, inputs: { x: rowSlice(x, range.start, range.end) } }
  },

  validateTask (task) {
    return check(task.inputs, task.params).x.shape[0] as number
  },

  async map (tf, task): Promise<Tensors> {
    const { x, params } = check(task.inputs, task.params)
    const axis = params.axis === 0 ? 0 : undefined
    const dtype = outputDType(params.op, x.dtype)
    const y = tf.tidy(() => {
      const t = tf.tensor(x.data, x.shape, x.dtype)
      switch (params.op) {
        // mean is a sum here: the coordinator divides once by the whole count.
        case 'sum':
        case 'mean': return tf.sum(tf.cast(t, 'float32'), axis)
        case 'max': return tf.max(t, axis)
        case 'min': return tf.min(t, axis)
      }
    })
    try {
      const data = await y.data()
      return { out: hostTensor(dtype, outputShape(x.shape, params.axis), data as Float32Array | Int32Array) }
    } finally {
      y.dispose()
    }
  },

  reducer (plan) {
    const { op, axis } = plan.params
    const { dtype, shape } = plan.output
    const size = sizeOf(shape)
    const acc = new Float64Array(size).fill(op === 'max' ? -Infinity : op === 'min' ? Infinity : 0)
    const seen = new RangeSet(plan.units)
    // Elements that went into each output element so far: mean's divisor,
    // counted from the ranges the coordinator made, never from a peer.
    const perUnit = axis === 0 ? 1 : plan.params.rowElements
    let count = 0
    return {
      add (range: ShardRange, partial) {
        seen.check(NAME, range)
        const p = checkPartial(NAME, partial, dtype, shape)
        seen.add(NAME, range)
        const d = p.data
        if (op === 'sum' || op === 'mean') {
          for (let i = 0; i < size; i++) acc[i] = (acc[i] as number) + (d[i] as number)
        } else {
          for (let i = 0; i < size; i++) {
            const v = d[i] as number
            const a = acc[i] as number
            // NaN wins, as in numpy's max/min.
            if (Number.isNaN(v) || (op === 'max' ? v > a : v < a)) acc[i] = v
          }
        }
        count += (range.end - range.start) * perUnit
      },
      result () {
        seen.requireComplete(NAME)
        const out = hostTensor(dtype, [...shape])
        if (op === 'mean') {
          for (let i = 0; i < size; i++) out.data[i] = (acc[i] as number) / count
        } else {
          out.data.set(acc)
        }
        return out
      }
    }
  }
}
