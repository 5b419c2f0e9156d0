import { InvalidInputError, ProtocolError } from '../../errors.ts'
import { BYTES_PER_ELEMENT, describe, hostTensor, rowSize, rowSlice } from '../tensor.ts'
import { checkDType, checkInputs, checkMinRank, checkParams, checkPartial, RangeSet, requireInput } from './common.ts'
import type { DType, HostTensor } from '../tensor.ts'
import type { JobPlan, Operator, ShardRange, Tensors } from './types.ts'

/**
 * Counts of x's elements in `bins` equal-width bins over [min, max]:
 * params {bins, min, max}, x float32 or int32 of any rank >= 1 (sharded by
 * rows), output int32 [bins]. The semantics are numpy's
 * `np.histogram(x, bins=bins, range=(min, max))[0]`:
 *
 * - the edges are numpy's `linspace(min, max, bins + 1)` (computed in
 *   float64 as `i * ((max - min) / bins) + min`, the last edge exactly max)
 *   in x's comparison type: rounded to float32 for float32 x (numpy keeps a
 *   float32 input's edges in float32), float64 for int32 x;
 * - bin i counts edges[i] <= v < edges[i+1]; the last bin is closed
 *   (v == edges[bins] counts in it);
 * - values outside [edges[0], edges[bins]] and NaN are not counted.
 *
 * The count runs in plain typed-array loops in the worker, not TF.js: TF.js
 * has no float64 for int32 x's edges, and this is exact on every backend.
 */

const NAME = 'histogram'

/**
 * Bins: every shard returns all `bins` counts, so a partial is 4 bytes per
 * bin per shard; 2^20 bins is a 4 MiB partial, four chunks of the shard
 * protocol's 1 MiB frames, and far beyond any plot or quantile estimate.
 */
export const MAX_HISTOGRAM_BINS = 1 << 20

export interface HistogramParams {
  bins: number
  min: number
  max: number
}

/** The job's params plus what the reducer needs; only bins, min and max travel to peers. */
export interface HistogramPlanParams extends HistogramParams {
  /** Elements in one row of x: the most one unit can add to the counts. */
  rowElements: number
}

function checkHistogramParams (params: unknown): HistogramParams {
  const p = checkParams(NAME, params, ['bins', 'min', 'max'])
  const { bins, min, max } = p
  if (!Number.isSafeInteger(bins) || (bins as number) < 1 || (bins as number) > MAX_HISTOGRAM_BINS) {
    throw new InvalidInputError(`${NAME}: params.bins is ${JSON.stringify(bins) ?? 'missing'}; it must be an integer in [1, ${MAX_HISTOGRAM_BINS}]`, 'ERR_BAD_PARAMS')
  }
  for (const [key, v] of [['min', min], ['max', max]] as const) {
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new InvalidInputError(`${NAME}: params.${key} is ${JSON.stringify(v) ?? 'missing'}; it must be a finite number`, 'ERR_BAD_PARAMS')
  }
  if (!((min as number) < (max as number))) throw new InvalidInputError(`${NAME}: params.min (${String(min)}) must be less than params.max (${String(max)})`, 'ERR_BAD_PARAMS')
  return { bins: bins as number, min: min as number, max: max as number }
}

function check (inputs: unknown, params: unknown): { x: HostTensor, params: HistogramParams } {
  const p = checkHistogramParams(params)
  const x = requireInput(checkInputs(NAME, inputs, ['x']), 'x')
  checkDType(NAME, 'x', x, ['float32', 'int32'])
  checkMinRank(NAME, 'x', x, 1)
  if (x.dtype === 'float32' && !(Math.fround(p.min) < Math.fround(p.max))) {
    throw new InvalidInputError(`${NAME}: params.min and params.max are the same float32 value (${Math.fround(p.min)}); x is ${describe(x)}, so the range must be wider`, 'ERR_BAD_PARAMS')
  }
  return { x, params: p }
}

/** numpy's bin edges for this dtype (see the operator's comment). */
export function histogramEdges (p: HistogramParams, dtype: DType): Float64Array {
  const edges = new Float64Array(p.bins + 1)
  const step = (p.max - p.min) / p.bins
  for (let i = 0; i < p.bins; i++) edges[i] = i * step + p.min
  edges[p.bins] = p.max
  if (dtype === 'float32') for (let i = 0; i <= p.bins; i++) edges[i] = Math.fround(edges[i] as number)
  return edges
}

export const histogram: Operator<HistogramPlanParams> = {
  name: NAME,

  plan (inputs, params): JobPlan<HistogramPlanParams> {
    const { x, params: p } = check(inputs, params)
    const r = rowSize(x)
    return {
      op: NAME,
      units: x.shape[0] as number,
      // A multiply, a floor and two comparisons per element.
      cost: { flopsPerUnit: 4 * r, bytesInPerUnit: r * BYTES_PER_ELEMENT, bytesInFixed: 0, bytesOutPerUnit: 0 },
      params: { ...p, rowElements: r },
      output: { dtype: 'int32', shape: [p.bins] }
    }
  },

  shard (plan, inputs, range) {
    const x = requireInput(inputs, 'x')
    return { op: NAME, params: { bins: plan.params.bins, min: plan.params.min, max: plan.params.max }, inputs: { x: rowSlice(x, range.start, range.end) } }
  },

  validateTask (task) {
    return check(task.inputs, task.params).x.shape[0] as number
  },

  async map (_tf, task): Promise<Tensors> {
    const { x, params } = check(task.inputs, task.params)
    const { bins } = params
    const edges = histogramEdges(params, x.dtype)
    const lo = edges[0] as number
    const hi = edges[bins] as number
    // Only a first guess; the edge comparisons below decide, as in numpy.
    const scale = bins / (hi - lo)
    const counts = new Int32Array(bins)
    const d = x.data
    for (let k = 0; k < d.length; k++) {
      const v = d[k] as number
      if (!(v >= lo && v <= hi)) continue
      let i = Math.floor((v - lo) * scale)
      if (i >= bins) i = bins - 1
      if (i < 0) i = 0
      while (i > 0 && v < (edges[i] as number)) i--
      while (i < bins - 1 && v >= (edges[i + 1] as number)) i++
      counts[i] = (counts[i] as number) + 1
    }
    return { out: hostTensor('int32', [bins], counts) }
  },

  reducer (plan) {
    const { bins } = plan.params
    const acc = new Int32Array(bins)
    const seen = new RangeSet(plan.units)
    const perUnit = plan.params.rowElements
    return {
      add (range: ShardRange, partial) {
        seen.check(NAME, range)
        const p = checkPartial(NAME, partial, 'int32', [bins])
        // A peer cannot count more elements than it was sent, nor fewer than none.
        const most = (range.end - range.start) * perUnit
        let total = 0
        for (let i = 0; i < bins; i++) {
          const c = p.data[i] as number
          if (c < 0) throw new ProtocolError(`${NAME}: bad partial: negative count in bin ${i}`, 'ERR_BAD_PARTIAL')
          total += c
        }
        if (total > most) throw new ProtocolError(`${NAME}: bad partial: ${total} counted from ${most} elements`, 'ERR_BAD_PARTIAL')
        seen.add(NAME, range)
        for (let i = 0; i < bins; i++) acc[i] = (acc[i] as number) + (p.data[i] as number)
      },
      result () {
        seen.requireComplete(NAME)
        return hostTensor('int32', [bins], acc.slice())
      }
    }
  }
}
