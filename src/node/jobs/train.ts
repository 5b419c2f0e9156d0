import { InvalidInputError, TensormeshError, errorMessage } from '../../errors.ts'
import { checkMlpSpec, initMlp, mlpArtifacts, mlpEval, mlpGrad, mlpParamCount } from '../../compute/operators/mlp.ts'
import { getOperator } from '../../compute/operators/index.ts'
import { packModel } from '../../compute/model.ts'
import { jobOwner } from '../storage.ts'
import { hostTensor } from '../../compute/tensor.ts'
import { checkDType, checkInputs, requireInput } from '../../compute/operators/common.ts'
import { Job } from './job.ts'
import type { Coordinator } from './coordinator.ts'
import type { MlpSpec } from '../../compute/operators/mlp.ts'
import type { HostTensor } from '../../compute/tensor.ts'
import type { Tensors } from '../../compute/operators/types.ts'
import type { ExecutorPool } from '../../compute/index.ts'
import type { BlobStore } from '../blob-store.ts'
import type { Logger } from '../log.ts'

/**
 * Rounds are bounded so one job cannot hold a mesh for ever; 10,000 full
 * passes is far beyond what any of our workloads needs.
 */
export const MAX_TRAIN_ROUNDS = 10_000

/** Adam's usual constants (Kingma and Ba, 2015). */
const ADAM_BETA1 = 0.9
const ADAM_BETA2 = 0.999
const ADAM_EPSILON = 1e-8

export const TRAIN_OPTIMIZERS = ['adam', 'sgd'] as const

export interface TrainParams extends MlpSpec {
  rounds: number
  learningRate: number
  optimizer: typeof TRAIN_OPTIMIZERS[number]
  seed: number
}

export interface RoundMetric {
  round: number
  /** Mean training cross-entropy over the rows of this round's gradient. */
  loss: number
  /** Fraction of held-out rows classified right after this round's update. */
  accuracy: number
  /** Held-out mean cross-entropy. */
  testLoss: number
  ms: number
  /** Peers that computed this round's gradient. */
  peers: number
}

/** What a round leaves behind: enough to resume after a restart. */
export interface TrainCheckpoint {
  round: number
  w: Float32Array
  m: Float32Array
  v: Float32Array
}

export function checkTrainParams (value: unknown): TrainParams {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new InvalidInputError('train: params must be an object', 'ERR_BAD_PARAMS')
  const p = value as Record<string, unknown>
  const allowed = ['layers', 'activation', 'rounds', 'learningRate', 'optimizer', 'seed']
  const extra = Object.keys(p).filter(k => !allowed.includes(k))
  if (extra.length > 0) throw new InvalidInputError(`train: unknown param ${extra.join(', ')}; allowed: ${allowed.join(', ')}`, 'ERR_BAD_PARAMS')
  const spec = checkMlpSpec('train', { layers: p.layers ?? [784, 128, 10], activation: p.activation })
  const rounds = p.rounds ?? 50
  if (typeof rounds !== 'number' || !Number.isInteger(rounds) || rounds < 1 || rounds > MAX_TRAIN_ROUNDS) throw new InvalidInputError(`train: params.rounds must be an integer from 1 to ${MAX_TRAIN_ROUNDS}`, 'ERR_BAD_PARAMS')
  const learningRate = p.learningRate ?? 0.005
  if (typeof learningRate !== 'number' || !(learningRate > 0 && learningRate < 10)) throw new InvalidInputError('train: params.learningRate must be a number in (0, 10)', 'ERR_BAD_PARAMS')
  const optimizer = p.optimizer ?? 'adam'
  if (!(TRAIN_OPTIMIZERS as readonly unknown[]).includes(optimizer)) throw new InvalidInputError(`train: params.optimizer must be one of ${TRAIN_OPTIMIZERS.join(', ')}`, 'ERR_BAD_PARAMS')
  const seed = p.seed ?? 1
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed)) throw new InvalidInputError('train: params.seed must be an integer', 'ERR_BAD_PARAMS')
  return { ...spec, rounds, learningRate, optimizer: optimizer as TrainParams['optimizer'], seed }
}

/** Validates a train job's inputs: x, y for training; xTest, yTest held out. */
export function checkTrainInputs (inputs: Tensors, spec: MlpSpec): void {
  const t = checkInputs('train', inputs, ['x', 'y', 'xTest', 'yTest'])
  for (const [x, y] of [['x', 'y'], ['xTest', 'yTest']] as const) {
    const xs = requireInput(t, x)
    const ys = requireInput(t, y)
    checkDType('train', x, xs, ['float32'])
    checkDType('train', y, ys, ['int32'])
    // The operators' own checks name shapes against the layer widths.
    mlpGrad.plan({ x: xs, y: ys, w: hostTensor('float32', [mlpParamCount(spec.layers)]) }, { layers: spec.layers, activation: spec.activation })
  }
}

export interface TrainComponents {
  coordinator: Coordinator
  pool: ExecutorPool
  blobs: BlobStore
  log: Logger
}

/**
 * Data-parallel training: each round the current weights go to the peers
 * that bid (by CID, with the data, which each peer fetches once), each
 * returns the summed gradient over its rows, the coordinator averages them,
 * takes one optimizer step and measures held-out accuracy. Peers are asked
 * for bids every round, so they may join or leave between rounds; a round
 * whose peer fails is finished by others like any job.
 */
export async function runTraining (c: TrainComponents, job: Job, params: TrainParams, resume?: TrainCheckpoint, onRound?: (cp: TrainCheckpoint) => Promise<void>): Promise<void> {
  if (job.finished) return
  const inputs = job.inputs
  if (inputs === undefined) throw new Error('train job has no inputs')
  const spec: MlpSpec = { layers: params.layers, activation: params.activation }
  const n = mlpParamCount(spec.layers)
  const x = inputs.x as HostTensor
  const y = inputs.y as HostTensor
  const w = resume?.w ?? initMlp(spec, params.seed)
  const m = resume?.m ?? new Float32Array(n)
  const v = resume?.v ?? new Float32Array(n)
  const metrics = job.metrics ?? { rounds: [] }
  job.metrics = metrics
  job.setState('running')
  try {
    for (let round = (resume?.round ?? 0) + 1; round <= params.rounds; round++) {
      if (job.finished) return
      const t0 = performance.now()
      // One map-reduce per round; the weights are a fresh tensor, so a fresh CID.
      // The id must stay a plain id ([A-Za-z0-9_-], the bid protocol's rule) or peers refuse to bid.
      const wt = hostTensor('float32', [n], w.slice())
      const sub = new Job({ id: `${job.id}-r${round}`, op: 'mlp-grad', params: { ...spec }, inputs: { x, y, w: wt }, verify: job.verify, schedule: job.schedule })
      sub.plan = getOperator('mlp-grad').plan(sub.inputs ?? {}, sub.params)
      const onCancel = (): void => { sub.cancel() }
      job.controller.signal.addEventListener('abort', onCancel)
      sub.addEventListener('progress', () => {
        job.bids = sub.bids
        job.shards = sub.shards
        job.progressed()
      })
      try {
        await c.coordinator.run(sub)
      } finally {
        job.controller.signal.removeEventListener('abort', onCancel)
      }
      if (job.finished) return
      if (sub.state !== 'succeeded' || sub.output === undefined) {
        throw new TensormeshError(sub.error?.code ?? 'ERR_ROUND_FAILED', `round ${round}: ${sub.error?.message ?? sub.state}`)
      }
      const g = sub.output.data as Float32Array
      const count = g[n + 1] ?? 0
      if (!(count > 0)) throw new TensormeshError('ERR_ROUND_FAILED', `round ${round}: the gradient covers no rows`)
      step(params, round, w, m, v, g, count)
      const evaluation = await evaluate(c.pool, spec, inputs, w)
      const metric: RoundMetric = {
        round,
        loss: (g[n] ?? 0) / count,
        accuracy: evaluation.accuracy,
        testLoss: evaluation.loss,
        ms: Math.round(performance.now() - t0),
        peers: new Set(sub.shards.map(s => s.peer)).size
      }
      metrics.rounds.push(metric)
      metrics.accuracy = metric.accuracy
      job.outvoted.push(...sub.outvoted)
      c.log.info({ job: job.id, ...metric }, 'training round')
      await onRound?.({ round, w, m, v })
      job.progressed()
    }
    const artifacts = mlpArtifacts(spec, w)
    const packed = packModel(artifacts)
    // Paid from the job's reservation (job-manager.ts), never refused by the budget at the last step.
    job.model = { cid: await c.blobs.put(packed, jobOwner(job.id)), bytes: packed.byteLength }
    job.finish('succeeded', hostTensor('float32', [n], w.slice()))
  } catch (err) {
    if (!job.finished) job.finish('failed', undefined, { code: (err as { code?: string }).code ?? 'ERR_TRAIN_FAILED', message: errorMessage(err) })
  }
}

/** One optimizer step from the summed gradient `g` over `count` rows (mean gradient). */
function step (p: TrainParams, t: number, w: Float32Array, m: Float32Array, v: Float32Array, g: Float32Array, count: number): void {
  const lr = p.learningRate
  if (p.optimizer === 'sgd') {
    for (let i = 0; i < w.length; i++) w[i] = (w[i] ?? 0) - lr * (g[i] ?? 0) / count
    return
  }
  const c1 = 1 - ADAM_BETA1 ** t
  const c2 = 1 - ADAM_BETA2 ** t
  for (let i = 0; i < w.length; i++) {
    const gi = (g[i] ?? 0) / count
    const mi = ADAM_BETA1 * (m[i] ?? 0) + (1 - ADAM_BETA1) * gi
    const vi = ADAM_BETA2 * (v[i] ?? 0) + (1 - ADAM_BETA2) * gi * gi
    m[i] = mi
    v[i] = vi
    w[i] = (w[i] ?? 0) - lr * (mi / c1) / (Math.sqrt(vi / c2) + ADAM_EPSILON)
  }
}

/** Held-out accuracy and loss, on this node's own pool (one task, no mesh round trip). */
async function evaluate (pool: ExecutorPool, spec: MlpSpec, inputs: Tensors, w: Float32Array): Promise<{ accuracy: number, loss: number }> {
  const x = inputs.xTest as HostTensor
  const y = inputs.yTest as HostTensor
  const evalInputs = { x, y, w: hostTensor('float32', [w.length], w.slice()) }
  const plan = mlpEval.plan(evalInputs, { ...spec })
  const rows = plan.units
  const reducer = mlpEval.reducer(plan)
  const range = { index: 0, start: 0, end: rows }
  const out = await pool.run(mlpEval.shard(plan, evalInputs, range), { transfer: false })
  reducer.add(range, out.partial)
  const r = reducer.result().data
  return { accuracy: (r[0] ?? 0) / rows, loss: (r[1] ?? 0) / rows }
}
