import { InvalidInputError } from '../../errors.ts'
import { BYTES_PER_ELEMENT, hostTensor, rowSize, rowSlice } from '../tensor.ts'
import { checkDType, checkInputs, checkMinRank, checkParams, isPlainObject, requireInput, rowsReducer } from './common.ts'
import type { Tensor } from '@tensorflow/tfjs-core'
import type { HostTensor } from '../tensor.ts'
import type { JobPlan, Operator, Tensors, TF } from './types.ts'

/**
 * Elementwise ops applied in order to x, sharded by rows of x. The op list is
 * fixed here: a job names ops, it never carries code. int32 input is computed
 * and returned as float32 (div, sigmoid, log... leave the integers anyway).
 */

const NAME = 'map'

export const MAP_SCALAR_OPS = ['add', 'sub', 'mul', 'div'] as const
export const MAP_UNARY_OPS = ['relu', 'sigmoid', 'tanh', 'exp', 'log', 'sqrt', 'abs', 'square'] as const
export type MapScalarOp = typeof MAP_SCALAR_OPS[number]
export type MapUnaryOp = typeof MAP_UNARY_OPS[number]
export type MapStep = { op: MapScalarOp, value: number } | { op: MapUnaryOp }

export interface MapParams { ops: MapStep[] }

/**
 * Each step is one TF.js kernel over the whole shard and holds one
 * intermediate; 64 is far more than any real chain of elementwise steps and
 * keeps a hostile peer from queueing a million kernels.
 */
export const MAX_MAP_OPS = 64

const ALLOWED = `allowed: ${[...MAP_SCALAR_OPS.map(o => `{op: '${o}', value: number}`), ...MAP_UNARY_OPS.map(o => `{op: '${o}'}`)].join(', ')}`

function checkMapParams (params: unknown): MapParams {
  const p = checkParams(NAME, params, ['ops'])
  const ops = p.ops
  if (!Array.isArray(ops)) throw new InvalidInputError(`${NAME}: params.ops must be a list of steps; ${ALLOWED}`, 'ERR_BAD_PARAMS')
  if (ops.length > MAX_MAP_OPS) throw new InvalidInputError(`${NAME}: params.ops has ${ops.length} steps; at most ${MAX_MAP_OPS} are allowed`, 'ERR_BAD_PARAMS')
  const steps: MapStep[] = ops.map((step: unknown, i): MapStep => {
    if (!isPlainObject(step)) throw new InvalidInputError(`${NAME}: params.ops[${i}] is not an object; ${ALLOWED}`, 'ERR_BAD_PARAMS')
    const { op, value } = step
    const keys = Object.keys(step)
    if ((MAP_SCALAR_OPS as readonly unknown[]).includes(op)) {
      if (typeof value !== 'number' || !Number.isFinite(value)) {
        throw new InvalidInputError(`${NAME}: params.ops[${i}] '${String(op)}' needs a finite number 'value'`, 'ERR_BAD_PARAMS')
      }
      if (keys.length !== 2) throw new InvalidInputError(`${NAME}: params.ops[${i}] has keys ${keys.join(', ')}; '${String(op)}' takes op and value`, 'ERR_BAD_PARAMS')
      return { op: op as MapScalarOp, value }
    }
    if ((MAP_UNARY_OPS as readonly unknown[]).includes(op)) {
      if (keys.length !== 1) throw new InvalidInputError(`${NAME}: params.ops[${i}] has keys ${keys.join(', ')}; '${String(op)}' takes op only`, 'ERR_BAD_PARAMS')
      return { op: op as MapUnaryOp }
    }
    throw new InvalidInputError(`${NAME}: params.ops[${i}] has unknown op ${JSON.stringify(op) ?? 'undefined'}; ${ALLOWED}`, 'ERR_UNKNOWN_MAP_OP')
  })
  return { ops: steps }
}

function check (inputs: unknown, params: unknown): { x: HostTensor, params: MapParams } {
  const p = checkMapParams(params)
  const x = requireInput(checkInputs(NAME, inputs, ['x']), 'x')
  checkDType(NAME, 'x', x, ['float32', 'int32'])
  checkMinRank(NAME, 'x', x, 1)
  return { x, params: p }
}

function apply (tf: TF, y: Tensor, step: MapStep): Tensor {
  switch (step.op) {
    case 'add': return tf.add(y, tf.scalar(step.value, 'float32'))
    case 'sub': return tf.sub(y, tf.scalar(step.value, 'float32'))
    case 'mul': return tf.mul(y, tf.scalar(step.value, 'float32'))
    case 'div': return tf.div(y, tf.scalar(step.value, 'float32'))
    case 'relu': return tf.relu(y)
    case 'sigmoid': return tf.sigmoid(y)
    case 'tanh': return tf.tanh(y)
    case 'exp': return tf.exp(y)
    case 'log': return tf.log(y)
    case 'sqrt': return tf.sqrt(y)
    case 'abs': return tf.abs(y)
    case 'square': return tf.square(y)
  }
}

export const map: Operator<MapParams> = {
  name: NAME,

  plan (inputs, params): JobPlan<MapParams> {
    const { x, params: p } = check(inputs, params)
    const r = rowSize(x)
    return {
      op: NAME,
      units: x.shape[0] as number,
      cost: { flopsPerUnit: r * p.ops.length, bytesInPerUnit: r * BYTES_PER_ELEMENT, bytesInFixed: 0, bytesOutPerUnit: r * BYTES_PER_ELEMENT },
      params: p,
      output: { dtype: 'float32', shape: [...x.shape] }
    }
  },

  shard (plan, inputs, range) {
    const x = requireInput(inputs, 'x')
    return { op: NAME, params: { ops: plan.params.ops }, inputs: { x: rowSlice(x, range.start, range.end) } }
  },

  validateTask (task) {
    return check(task.inputs, task.params).x.shape[0] as number
  },

  async map (tf, task): Promise<Tensors> {
    const { x, params } = check(task.inputs, task.params)
    const y = tf.tidy(() => {
      let t = tf.tensor(x.data, x.shape, x.dtype)
      if (t.dtype !== 'float32') t = tf.cast(t, 'float32')
      for (const step of params.ops) t = apply(tf, t, step)
      return t
    })
    try {
      const data = await y.data<'float32'>()
      return { out: hostTensor('float32', [...x.shape], data) }
    } finally {
      y.dispose()
    }
  },

  reducer (plan) {
    return rowsReducer(NAME, plan.output.shape)
  }
}
