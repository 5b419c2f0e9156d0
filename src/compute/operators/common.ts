import { InvalidInputError, LimitExceededError, ProtocolError, TensormeshError } from '../../errors.ts'
import { BYTES_PER_ELEMENT, describe, hostTensor, isDType, sizeOf } from '../tensor.ts'
import { DEFAULT_MAX_TENSOR_BYTES } from '../limits.ts'
import type { DType, HostTensor } from '../tensor.ts'
import type { Params, Reducer, ShardRange } from './types.ts'

/**
 * Checks shared by the operators. Everything here runs on data a hostile
 * peer may have built, so it checks structure as well as meaning.
 */

export function isPlainObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** Params as an object with only the allowed keys (undefined counts as `{}`). */
export function checkParams (op: string, params: unknown, allowed: readonly string[]): Params {
  if (params === undefined || params === null) return {}
  if (!isPlainObject(params)) throw new InvalidInputError(`${op}: params must be an object`, 'ERR_BAD_PARAMS')
  for (const key of Object.keys(params)) {
    if (!allowed.includes(key)) {
      throw new InvalidInputError(`${op}: unknown param '${key}'; allowed: ${allowed.length > 0 ? allowed.join(', ') : 'none'}`, 'ERR_BAD_PARAMS')
    }
  }
  return params
}

/** A structurally sound HostTensor: known dtype, integer shape, data of the right type and length. */
export function checkTensor (op: string, name: string, value: unknown): HostTensor {
  if (!isPlainObject(value)) throw new InvalidInputError(`${op}: input '${name}' is not a tensor`, 'ERR_BAD_INPUT')
  const { dtype, shape, data } = value
  if (!isDType(dtype)) throw new InvalidInputError(`${op}: input '${name}' has dtype ${String(dtype)}; allowed: float32, int32`, 'ERR_BAD_DTYPE')
  if (!Array.isArray(shape) || !shape.every((d: unknown) => Number.isSafeInteger(d) && (d as number) >= 0)) {
    throw new InvalidInputError(`${op}: input '${name}' has a shape that is not a list of non-negative integers`, 'ERR_BAD_SHAPE')
  }
  const dims = shape as number[]
  const ok = dtype === 'float32' ? data instanceof Float32Array : data instanceof Int32Array
  if (!ok) throw new InvalidInputError(`${op}: input '${name}' data is not a ${dtype} array`, 'ERR_BAD_DTYPE')
  const t = { dtype, shape: dims, data: data as Float32Array | Int32Array }
  if (t.data.length !== sizeOf(dims)) {
    throw new InvalidInputError(`${op}: input '${name}' is ${describe(t)} (${sizeOf(dims)} elements) but carries ${t.data.length}`, 'ERR_BAD_SHAPE')
  }
  return t
}

/** Exactly the named inputs, each a sound tensor. */
export function checkInputs (op: string, inputs: unknown, names: readonly string[]): Record<string, HostTensor> {
  if (!isPlainObject(inputs)) throw new InvalidInputError(`${op}: inputs must be an object of named tensors`, 'ERR_BAD_INPUT')
  for (const key of Object.keys(inputs)) {
    if (!names.includes(key)) throw new InvalidInputError(`${op}: unexpected input '${key}'; expected: ${names.join(', ')}`, 'ERR_BAD_INPUT')
  }
  const out: Record<string, HostTensor> = {}
  for (const name of names) {
    if (!(name in inputs)) throw new InvalidInputError(`${op}: missing input '${name}'; expected: ${names.join(', ')}`, 'ERR_MISSING_INPUT')
    out[name] = checkTensor(op, name, inputs[name])
  }
  return out
}

export function requireInput (inputs: Record<string, HostTensor>, name: string): HostTensor {
  const t = inputs[name]
  if (t === undefined) throw new InvalidInputError(`missing input '${name}'`, 'ERR_MISSING_INPUT')
  return t
}

export function checkDType (op: string, name: string, t: HostTensor, allowed: readonly DType[]): void {
  if (!allowed.includes(t.dtype)) {
    throw new InvalidInputError(`${op}: input '${name}' is ${describe(t)}; allowed dtypes: ${allowed.join(', ')}`, 'ERR_BAD_DTYPE')
  }
}

export function checkMinRank (op: string, name: string, t: HostTensor, rank: number): void {
  if (t.shape.length < rank) {
    throw new InvalidInputError(`${op}: input '${name}' is ${describe(t)} (rank ${t.shape.length}); it needs rank >= ${rank}`, 'ERR_BAD_RANK')
  }
}

/**
 * An output (or intermediate) the operator would allocate, bounded by the
 * same limit as inputs: a [1e9, 0] x [0, 1e9] matmul has tiny inputs and an
 * impossible output.
 */
export function checkOutputSize (op: string, shape: readonly number[], maxBytes = DEFAULT_MAX_TENSOR_BYTES): void {
  const bytes = sizeOf(shape) * BYTES_PER_ELEMENT
  if (!(bytes <= maxBytes)) {
    throw new LimitExceededError(`${op}: output [${shape.join(', ')}] would take ${bytes} bytes; the limit is ${maxBytes}`)
  }
}

/**
 * Tracks which unit ranges a reducer has seen: partials arrive in any order,
 * a late duplicate from a reassigned shard must not be counted twice, and the
 * result must not be read while a range is missing.
 */
export class RangeSet {
  private readonly units: number
  private readonly ranges: ShardRange[] = []
  private covered = 0

  constructor (units: number) {
    this.units = units
  }

  /** Throws on a range that is out of bounds or overlaps one already added. */
  check (op: string, range: ShardRange): void {
    const { start, end } = range
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end > this.units || start >= end) {
      throw new ProtocolError(`${op}: range [${start}, ${end}) is not within [0, ${this.units})`, 'ERR_BAD_RANGE')
    }
    for (const r of this.ranges) {
      if (start < r.end && r.start < end) {
        throw new ProtocolError(`${op}: range [${start}, ${end}) overlaps [${r.start}, ${r.end}) already reduced`, 'ERR_DUPLICATE_RANGE')
      }
    }
  }

  /** Records a range after `check`. */
  add (op: string, range: ShardRange): void {
    this.check(op, range)
    const { start, end } = range
    this.ranges.push({ index: range.index, start, end })
    this.covered += end - start
  }

  get complete (): boolean {
    return this.covered === this.units
  }

  /** Throws naming the missing ranges unless every unit was added. */
  requireComplete (op: string): void {
    if (this.complete) return
    const sorted = [...this.ranges].sort((a, b) => a.start - b.start)
    const missing: string[] = []
    let at = 0
    for (const r of sorted) {
      if (r.start > at) missing.push(`[${at}, ${r.start})`)
      at = r.end
    }
    if (at < this.units) missing.push(`[${at}, ${this.units})`)
    throw new TensormeshError('ERR_INCOMPLETE', `${op}: result requested with units ${missing.join(', ')} not reduced yet`)
  }
}

/** A partial from a peer: exactly `{ out }` with the expected dtype and shape. */
export function checkPartial (op: string, partial: unknown, dtype: DType, shape: readonly number[]): HostTensor {
  let t: HostTensor
  try {
    t = checkInputs(op, partial, ['out']).out as HostTensor
  } catch (err) {
    throw new ProtocolError(`${op}: bad partial: ${(err as Error).message}`, 'ERR_BAD_PARTIAL')
  }
  if (t.dtype !== dtype || t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new ProtocolError(`${op}: partial is ${describe(t)} but ${describe({ dtype, shape: [...shape] })} was expected`, 'ERR_BAD_PARTIAL')
  }
  return t
}

/**
 * The reducer of an operator whose output is its partials' rows in order
 * (matmul, map, infer): preallocated, each partial copied straight in at
 * its row offset, its shape checked first.
 */
export function rowsReducer (op: string, shape: readonly number[]): Reducer {
  const rowElements = sizeOf(shape.slice(1))
  const out = new Float32Array(sizeOf(shape))
  const seen = new RangeSet(shape[0] ?? 0)
  return {
    add (range, partial) {
      seen.check(op, range)
      const p = checkPartial(op, partial, 'float32', [range.end - range.start, ...shape.slice(1)])
      seen.add(op, range)
      out.set(p.data, range.start * rowElements)
    },
    result () {
      seen.requireComplete(op)
      return hostTensor('float32', [...shape], out)
    }
  }
}

/**
 * The reducer of an operator whose partials are vectors of one length that
 * add up (gradients, counts, sums): accumulated in float64, whatever order
 * the partials arrive in, each range counted once.
 */
export function sumReducer (op: string, units: number, length: number): Reducer {
  const acc = new Float64Array(length)
  const seen = new RangeSet(units)
  return {
    add (range, partial) {
      seen.check(op, range)
      const p = checkPartial(op, partial, 'float32', [length])
      seen.add(op, range)
      for (let i = 0; i < length; i++) acc[i] = (acc[i] ?? 0) + (p.data[i] ?? 0)
    },
    result () {
      seen.requireComplete(op)
      return hostTensor('float32', [length], Float32Array.from(acc))
    }
  }
}
