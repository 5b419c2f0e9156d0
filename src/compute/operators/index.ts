import { InvalidInputError } from '../../errors.ts'
import { histogram } from './histogram.ts'
import { infer } from './infer.ts'
import { map } from './map.ts'
import { matmul } from './matmul.ts'
import { mlpEval, mlpGrad } from './mlp.ts'
import { modelTrain } from './model-train.ts'
import { reduce } from './reduce.ts'
import { sort } from './sort.ts'
import { topk } from './topk.ts'
import type { Operator } from './types.ts'

export * from './types.ts'
export { matmul } from './matmul.ts'
export type { MatmulParams } from './matmul.ts'
export { map, MAP_SCALAR_OPS, MAP_UNARY_OPS, MAX_MAP_OPS } from './map.ts'
export type { MapParams, MapStep, MapScalarOp, MapUnaryOp } from './map.ts'
export { reduce, REDUCE_OPS } from './reduce.ts'
export { mlpGrad, mlpEval, initMlp, mlpArtifacts, mlpParamCount, checkMlpSpec, MLP_ACTIVATIONS } from './mlp.ts'
export type { MlpSpec, MlpActivation } from './mlp.ts'
export type { ReduceOp, ReduceParams, ReducePlanParams } from './reduce.ts'
export { sort, chooseSplitters, MAX_SORT_SPLITTERS, SORT_MIN_BUCKET_KEYS, SORT_OVERSAMPLING } from './sort.ts'
export type { SortParams } from './sort.ts'
export { topk, MAX_SIM_BLOCK_ELEMENTS, MAX_TOPK_ITEMS, MAX_TOPK_K, TOPK_EPS } from './topk.ts'
export type { TopkParams } from './topk.ts'
export { histogram, histogramEdges, MAX_HISTOGRAM_BINS } from './histogram.ts'
export type { HistogramParams, HistogramPlanParams } from './histogram.ts'
export { infer, DEFAULT_INFER_BATCH, MAX_CACHED_MODELS, MAX_INFER_BATCH } from './infer.ts'
export type { InferParams } from './infer.ts'
export { modelTrain, MODEL_OPTIMIZERS, TRAIN_LOSSES } from './model-train.ts'
export type { ModelTrainParams, OptimizerSpec, TrainLoss } from './model-train.ts'

/**
 * The operators this build can run, by name. Fixed at build time: a job or a
 * peer names an operator, it never sends one.
 */
// Each operator checks its own params at run time, so the registry can hold
// them at the generic Params type (the cast drops only the compile-time P).
export const OPERATORS: ReadonlyMap<string, Operator> = new Map<string, Operator>(
  ([matmul, map, reduce, mlpGrad, mlpEval, sort, topk, histogram, infer, modelTrain] as unknown as Operator[]).map(op => [op.name, op])
)

export function operatorNames (registry: ReadonlyMap<string, Operator> = OPERATORS): string[] {
  return [...registry.keys()]
}

/** The operator called `name`, or InvalidInputError (ERR_UNKNOWN_OPERATOR) listing the known names. */
export function getOperator (name: unknown, registry: ReadonlyMap<string, Operator> = OPERATORS): Operator {
  const op = typeof name === 'string' ? registry.get(name) : undefined
  if (op === undefined) {
    throw new InvalidInputError(`unknown operator ${JSON.stringify(name) ?? String(name)}; known: ${operatorNames(registry).join(', ')}`, 'ERR_UNKNOWN_OPERATOR')
  }
  return op
}
