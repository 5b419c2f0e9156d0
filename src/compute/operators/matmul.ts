import { InvalidInputError } from '../../errors.ts'
import { BYTES_PER_ELEMENT, describe, hostTensor, rowSlice } from '../tensor.ts'
import { checkDType, checkInputs, checkOutputSize, checkParams, requireInput, rowsReducer } from './common.ts'
import type { HostTensor } from '../tensor.ts'
import type { JobPlan, Operator, Params, Tensors } from './types.ts'

/**
 * C = A B for A [m, k] and B [k, n], float32. The units are A's m rows: a
 * shard gets rows [start, end) of A and all of B, and returns those rows of C.
 */

const NAME = 'matmul'
const INPUTS = ['a', 'b'] as const

export type MatmulParams = Record<string, never>

interface Checked { a: HostTensor, b: HostTensor }

function check (inputs: unknown, params: unknown): Checked {
  checkParams(NAME, params, [])
  const t = checkInputs(NAME, inputs, INPUTS)
  const a = requireInput(t, 'a')
  const b = requireInput(t, 'b')
  checkDType(NAME, 'a', a, ['float32'])
  checkDType(NAME, 'b', b, ['float32'])
  if (a.shape.length !== 2 || b.shape.length !== 2) {
    throw new InvalidInputError(`${NAME}: a is ${describe(a)} and b is ${describe(b)}; both must be rank 2`, 'ERR_BAD_RANK')
  }
  const [, k] = a.shape as [number, number]
  const [kb, n] = b.shape as [number, number]
  if (k !== kb) {
    throw new InvalidInputError(`${NAME}: a is ${describe(a)} but b is ${describe(b)}; a's columns (${k}) must equal b's rows (${kb})`, 'ERR_SHAPE_MISMATCH')
  }
  checkOutputSize(NAME, [a.shape[0] as number, n])
  return { a, b }
}

export const matmul: Operator<MatmulParams> = {
  name: NAME,

  plan (inputs, params): JobPlan<MatmulParams> {
    const { a, b } = check(inputs, params)
    const [m, k] = a.shape as [number, number]
    const n = b.shape[1] as number
    return {
      op: NAME,
      units: m,
      // One multiply and one add per (column of B, element of the row).
      cost: { flopsPerUnit: 2 * k * n, bytesInPerUnit: k * BYTES_PER_ELEMENT, bytesInFixed: k * n * BYTES_PER_ELEMENT, bytesOutPerUnit: n * BYTES_PER_ELEMENT },
      params: {},
      output: { dtype: 'float32', shape: [m, n] }
    }
  },

  shard (_plan, inputs, range) {
    const a = requireInput(inputs, 'a')
    const b = requireInput(inputs, 'b')
    return { op: NAME, params: {} satisfies Params, inputs: { a: rowSlice(a, range.start, range.end), b }, shared: ['b'] }
  },

  validateTask (task) {
    const { a } = check(task.inputs, task.params)
    return a.shape[0] as number
  },

  async map (tf, task): Promise<Tensors> {
    const { a, b } = check(task.inputs, task.params)
    const c = tf.tidy(() => tf.matMul(tf.tensor2d(a.data, a.shape as [number, number], 'float32'), tf.tensor2d(b.data, b.shape as [number, number], 'float32')))
    try {
      const data = await c.data<'float32'>()
      return { out: hostTensor('float32', c.shape, data) }
    } finally {
      c.dispose()
    }
  },

  reducer (plan) {
    return rowsReducer(NAME, plan.output.shape)
  }
}
