import { InvalidInputError, TensormeshError, errorCode, errorMessage } from '../../errors.ts'
import { RemoteRoundError } from '../../protocol/allreduce/index.ts'
import type { AllReduce } from '../../protocol/allreduce/index.ts'
import type { JobShares } from '../shared-content.ts'
import type { JobPlan } from '../../compute/operators/types.ts'
import { describeModel, packModel, viewPackedModel } from '../../compute/model.ts'
import { checkLoss, checkOptimizer, checkTrainData, initModelBytes, initTask, MAX_LOCAL_STEPS, MAX_REPLICAS, MAX_TRAIN_BATCH, modelTrain } from '../../compute/operators/model-train.ts'
import { checkInputs, isPlainObject, requireInput } from '../../compute/operators/common.ts'
import { hostTensor } from '../../compute/tensor.ts'
import { getOperator } from '../../compute/operators/index.ts'
import { jobOwner } from '../storage.ts'
import { Job } from './job.ts'
import type { OptimizerSpec, TrainLoss } from '../../compute/operators/model-train.ts'
import type { HostTensor } from '../../compute/tensor.ts'
import type { Tensors } from '../../compute/operators/types.ts'
import type { RoundMetric, TrainCheckpoint, TrainComponents } from './train.ts'

/**
 * `train` with `params.model`: any TF.js layers-model, mini-batch, over the
 * mesh, in one of two modes.
 *
 * - step: one optimizer step per global batch. Each batch is a job of
 *   `model-train` grad shards over its rows; the coordinator adds the
 *   partial gradients (float64) and takes the step itself (adam, sgd with
 *   momentum, rmsprop: TF.js's own update rules, over the flat vector).
 * - local (DiLoCo, Douillard et al. 2023): the rows are split into
 *   `replicas` fixed parts; each outer round is a job whose shards take
 *   `steps` inner optimizer steps per replica from the same weights and
 *   return their change; the coordinator averages the changes (by rows)
 *   and takes an outer Nesterov step with them as the (negated) gradient.
 *
 * Rounds are ordinary jobs, so bids, the split, retries, backups and
 * verification apply to each, and a peer lost mid-round costs that round's
 * shard a retry elsewhere, not the job. x and y travel once per peer (by
 * content address, shared by every round); the weights go once per round
 * per peer.
 */

/** Keras' outer defaults from the DiLoCo paper: outer lr 0.7, Nesterov momentum 0.9. */
export const DILOCO_OUTER_LEARNING_RATE = 0.7
export const DILOCO_OUTER_MOMENTUM = 0.9

/** Most epochs: a train job is bounded like every job. */
export const MAX_TRAIN_EPOCHS = 1000

/** Default inner steps per local round. */
export const DEFAULT_LOCAL_STEPS = 50

/** A job's replicas when it does not say: one per peer that can compute, at most this many. */
export const DEFAULT_MAX_REPLICAS = 16

/**
 * How a round's job is cut unless the train job's schedule says otherwise:
 * one shard per peer (a shard costs a fixed overhead, and a step's rows are
 * few), and no backup copies, which near the end of a two-shard round would
 * run half the round twice.
 */
export const ROUND_SCHEDULE = { shardsPerPeer: 1, backups: false } as const

/**
 * How a round's vectors are combined: `star`, each shard's result to the
 * coordinator (the round is an ordinary job); `butterfly`, among the
 * round's peers (src/protocol/allreduce), the coordinator sending and
 * receiving one vector per round whatever their number.
 */
export const AVERAGING = ['star', 'butterfly'] as const
export type Averaging = typeof AVERAGING[number]

export type SyncSpec =
  | { mode: 'step', averaging: Averaging }
  | { mode: 'local', averaging: Averaging, steps: number, outerLearningRate: number, outerMomentum: number, replicas?: number }

/** Attempts of a butterfly round, each without the members that failed the ones before. */
export const BUTTERFLY_ATTEMPTS = 4

/** Most members of a step-mode butterfly round: rows of one batch are few. */
export const MAX_STEP_MEMBERS = 16

export interface ModelTrainJobParams {
  loss: TrainLoss
  optimizer: OptimizerSpec
  batchSize: number
  epochs: number
  seed: number
  sync: SyncSpec
}

/** The keys a model-train job's params may hold (the model itself travels as blobs.model). */
export const MODEL_TRAIN_PARAMS = ['loss', 'optimizer', 'batchSize', 'epochs', 'seed', 'sync'] as const

const badParam = (message: string): InvalidInputError => new InvalidInputError(`train: ${message}`, 'ERR_BAD_PARAMS')

/**
 * The default averaging: butterfly for local mode (a round's vectors are
 * few and large), star for step mode (a step's are small and come fast,
 * and each step's job is cheap to run as an ordinary one); star whenever
 * the job asks for verification, which only ordinary jobs do (replicas and
 * spot checks compare shards' partials, which a butterfly never gathers).
 */
function checkSync (v: unknown, verified: boolean): SyncSpec {
  const s = v ?? { mode: 'step' }
  if (!isPlainObject(s)) throw badParam('params.sync must be {"mode": "step"} or {"mode": "local", "steps": H, ...}')
  const averaging = s.averaging ?? (s.mode === 'local' && !verified ? 'butterfly' : 'star')
  if (!(AVERAGING as readonly unknown[]).includes(averaging)) throw badParam(`params.sync.averaging must be one of ${AVERAGING.join(', ')}`)
  if (averaging === 'butterfly' && verified) throw badParam('params.sync.averaging "butterfly" cannot be verified (verify compares shards\' partials, which a butterfly round never gathers); use "star" with verify')
  if (s.mode === 'step') {
    const extra = Object.keys(s).filter(k => k !== 'mode' && k !== 'averaging')
    if (extra.length > 0) throw badParam(`params.sync {"mode": "step"} takes only averaging; not ${extra.join(', ')}`)
    return { mode: 'step', averaging: averaging as Averaging }
  }
  if (s.mode !== 'local') throw badParam(`params.sync.mode must be "step" or "local", got ${JSON.stringify(s.mode) ?? 'nothing'}`)
  for (const k of Object.keys(s)) {
    if (!['mode', 'averaging', 'steps', 'outerLearningRate', 'outerMomentum', 'replicas'].includes(k)) throw badParam(`params.sync (local) takes averaging, steps, outerLearningRate, outerMomentum, replicas; not '${k}'`)
  }
  const steps = s.steps ?? DEFAULT_LOCAL_STEPS
  if (!Number.isSafeInteger(steps) || (steps as number) < 1 || (steps as number) > MAX_LOCAL_STEPS) throw badParam(`params.sync.steps must be an integer from 1 to ${MAX_LOCAL_STEPS}, got ${JSON.stringify(steps)}`)
  const lr = s.outerLearningRate ?? DILOCO_OUTER_LEARNING_RATE
  if (typeof lr !== 'number' || !(lr > 0 && lr <= 10)) throw badParam('params.sync.outerLearningRate must be a number in (0, 10]')
  const mu = s.outerMomentum ?? DILOCO_OUTER_MOMENTUM
  if (typeof mu !== 'number' || !(mu >= 0 && mu < 1)) throw badParam('params.sync.outerMomentum must be a number in [0, 1)')
  const out: SyncSpec = { mode: 'local', averaging: averaging as Averaging, steps: steps as number, outerLearningRate: lr, outerMomentum: mu }
  if (s.replicas !== undefined) {
    if (!Number.isSafeInteger(s.replicas) || (s.replicas as number) < 1 || (s.replicas as number) > MAX_REPLICAS) throw badParam(`params.sync.replicas must be an integer from 1 to ${MAX_REPLICAS}`)
    out.replicas = s.replicas as number
  }
  return out
}

/** A model-train job's params, defaults filled in; `verified`: the job's verify asks for replicas or spot checks. */
export function checkModelTrainParams (value: unknown, verified = false): ModelTrainJobParams {
  if (!isPlainObject(value)) throw badParam('params must be an object')
  const extra = Object.keys(value).filter(k => !(MODEL_TRAIN_PARAMS as readonly string[]).includes(k))
  if (extra.length > 0) throw badParam(`unknown param ${extra.join(', ')} for a model; allowed: model, ${MODEL_TRAIN_PARAMS.join(', ')} (layers, activation, rounds and learningRate belong to the MLP shorthand, without a model)`)
  const loss = checkLoss(value.loss ?? 'sparseCategoricalCrossentropy', 'train')
  const optimizer = checkOptimizer(value.optimizer ?? { name: 'adam' }, 'train')
  const batchSize = value.batchSize ?? 32
  if (!Number.isSafeInteger(batchSize) || (batchSize as number) < 1 || (batchSize as number) > MAX_TRAIN_BATCH) throw badParam(`params.batchSize must be an integer from 1 to ${MAX_TRAIN_BATCH}`)
  const epochs = value.epochs ?? 1
  if (!Number.isSafeInteger(epochs) || (epochs as number) < 1 || (epochs as number) > MAX_TRAIN_EPOCHS) throw badParam(`params.epochs must be an integer from 1 to ${MAX_TRAIN_EPOCHS}`)
  const seed = value.seed ?? 1
  if (!Number.isSafeInteger(seed)) throw badParam('params.seed must be an integer')
  return { loss, optimizer, batchSize: batchSize as number, epochs: epochs as number, seed: seed as number, sync: checkSync(value.sync, verified) }
}

/**
 * Checks a model-train job before anything starts: a layers-model whose
 * layers are all supported, x/y and xTest/yTest that fit its input and
 * output and the loss (labels in range), and a batch no larger than the
 * data. Throws InvalidInputError naming what is wrong.
 */
export function checkModelTrainJob (inputs: Tensors, blobs: Record<string, Uint8Array> | undefined, params: ModelTrainJobParams): void {
  const model = blobs?.model
  if (!(model instanceof Uint8Array)) throw new InvalidInputError('train: params.model names no model', 'ERR_MISSING_MODEL')
  for (const k of Object.keys(blobs ?? {})) if (k !== 'model') throw new InvalidInputError(`train: unexpected blob '${k}'; expected: model`, 'ERR_BAD_INPUT')
  const view = viewPackedModel(model)
  const info = describeModel(view)
  if (info.format !== 'layers-model') throw new InvalidInputError(`train: the model is a ${info.format}; training takes a layers-model (a Keras or TF.js model.json with model_config)`, 'ERR_UNSUPPORTED_MODEL')
  for (const s of view.weightSpecs) {
    if (s.dtype !== 'float32') throw new InvalidInputError(`train: weight ${s.name} is ${s.dtype}; training takes float32 weights`, 'ERR_UNSUPPORTED_MODEL')
  }
  const t = checkInputs('train', inputs, ['x', 'y', 'xTest', 'yTest'])
  const rows = checkTrainData('train', requireInput(t, 'x'), requireInput(t, 'y'), info, params.loss)
  const testRows = checkTrainData('train', requireInput(t, 'xTest'), requireInput(t, 'yTest'), info, params.loss, ['xTest', 'yTest'])
  if (testRows === 0) throw new InvalidInputError('train: xTest has no rows', 'ERR_EMPTY_INPUT')
  checkEmbeddingIds(t, inputEmbeddings(view.modelTopology))
  if (params.batchSize > rows) throw badParam(`params.batchSize is ${params.batchSize} but x has ${rows} rows; the batch must fit in the data`)
  if (params.sync.mode === 'local' && params.sync.replicas !== undefined && params.sync.replicas * params.batchSize > rows) {
    throw badParam(`params.sync.replicas x batchSize (${params.sync.replicas} x ${params.batchSize}) is more than x's ${rows} rows; every replica needs a batch of its own`)
  }
}

/**
 * The Embedding layers the model's input feeds directly (the first layer of
 * a Sequential, or any layer called on the InputLayer of a functional
 * model): their names and input_dim. Their ids must be in [0, input_dim);
 * an id outside fails TF.js's gather in the first step, so it is checked at
 * submit instead.
 */
export function inputEmbeddings (topology: Record<string, unknown>): Array<{ name: string, inputDim: number }> {
  const root = isPlainObject(topology.model_config) ? topology.model_config : topology
  const config = root.config
  const layers = (isPlainObject(config) && Array.isArray(config.layers) ? config.layers : Array.isArray(config) ? config : []) as unknown[]
  const list = layers.filter(isPlainObject)
  const inputs = new Set(list.filter(l => l.class_name === 'InputLayer').map(l => String(isPlainObject(l.config) ? l.config.name : l.name)))
  const sequential = root.class_name === 'Sequential'
  const first = list.find(l => l.class_name !== 'InputLayer')
  const out: Array<{ name: string, inputDim: number }> = []
  for (const l of list) {
    if (l.class_name !== 'Embedding' || !isPlainObject(l.config)) continue
    const fed = sequential
      ? l === first
      : JSON.stringify(l.inbound_nodes ?? []).match(/"([^"]+)"/g)?.some(m => inputs.has(m.slice(1, -1))) === true
    const dim = l.config.input_dim
    if (fed && Number.isSafeInteger(dim)) out.push({ name: String(l.config.name ?? l.name ?? 'embedding'), inputDim: dim as number })
  }
  return out
}

/** Every id of x (and xTest) in range for the embeddings its rows feed. */
function checkEmbeddingIds (t: Record<string, HostTensor>, embeddings: Array<{ name: string, inputDim: number }>): void {
  if (embeddings.length === 0) return
  const dim = Math.min(...embeddings.map(e => e.inputDim))
  const layer = embeddings.find(e => e.inputDim === dim)?.name ?? ''
  for (const name of ['x', 'xTest']) {
    const x = t[name]
    if (x === undefined) continue
    const row = x.shape.slice(1).reduce((a, b) => a * b, 1)
    const data = x.data
    for (let i = 0; i < data.length; i++) {
      const v = data[i] as number
      if (!(v >= 0 && v < dim && Number.isInteger(v))) {
        throw new InvalidInputError(`train: ${name}[${Math.floor(i / row)}, ${i % row}] is ${v}, but Embedding layer '${layer}' takes integer ids in [0, ${dim})`, 'ERR_BAD_INPUT')
      }
    }
  }
}

/** What the train job needs besides TrainComponents. */
export interface ModelTrainComponents extends TrainComponents {
  /** Peers that could compute a shard now, this node included. */
  peers: () => number
  /** The node's allreduce service, for butterfly rounds. */
  allreduce?: AllReduce
  /** Holds bytes the job will write (checkpoints, the model) once the model's size is known. */
  reserve?: (bytes: number) => void
}

/**
 * The job's optimizer over flat vectors, with TF.js's update rules
 * (tfjs-core's optimizers), for step mode. One loop per rule, constants
 * hoisted: it runs on the event loop, ~1 ms per million weights.
 */
function stepOptimizer (o: OptimizerSpec, w: Float32Array, m: Float32Array, v: Float32Array, trainable: Uint8Array): (g: Float64Array, count: number, t: number) => void {
  const lr = o.learningRate
  const n = w.length
  return (g, count, t) => {
    const inv = 1 / count
    // Moving statistics (non-trainable) take their mean change over the batch's rows.
    for (let i = 0; i < n; i++) if (trainable[i] === 0) w[i] = (w[i] as number) + (g[i] as number) * inv
    if (o.name === 'adam') {
      const b1 = o.beta1 ?? 0.9
      const b2 = o.beta2 ?? 0.999
      const eps = o.epsilon ?? 1e-7
      // tfjs-core's AdamOptimizer: lr * m_hat / (sqrt(v_hat) + eps).
      const c1 = 1 / (1 - b1 ** t)
      const c2 = 1 / (1 - b2 ** t)
      for (let i = 0; i < n; i++) {
        if (trainable[i] === 0) continue
        const gi = (g[i] as number) * inv
        const mi = b1 * (m[i] as number) + (1 - b1) * gi
        const vi = b2 * (v[i] as number) + (1 - b2) * gi * gi
        m[i] = mi
        v[i] = vi
        w[i] = (w[i] as number) - lr * (mi * c1) / (Math.sqrt(vi * c2) + eps)
      }
      return
    }
    if (o.name === 'rmsprop') {
      const rho = o.rho ?? 0.9
      const eps = o.epsilon ?? 1e-7
      const mom = o.momentum ?? 0
      for (let i = 0; i < n; i++) {
        if (trainable[i] === 0) continue
        const gi = (g[i] as number) * inv
        const ms = rho * (v[i] as number) + (1 - rho) * gi * gi
        v[i] = ms
        const step = lr * gi / Math.sqrt(ms + eps)
        if (mom > 0) {
          m[i] = mom * (m[i] as number) + step
          w[i] = (w[i] as number) - (m[i] as number)
        } else {
          w[i] = (w[i] as number) - step
        }
      }
      return
    }
    const mom = o.momentum ?? 0
    const nesterov = o.nesterov === true
    for (let i = 0; i < n; i++) {
      if (trainable[i] === 0) continue
      const gi = (g[i] as number) * inv
      if (mom === 0) {
        w[i] = (w[i] as number) - lr * gi
        continue
      }
      // tfjs-core's MomentumOptimizer: a = mom * a + g; w -= lr * (nesterov ? g + mom * a : a).
      const a = mom * (m[i] as number) + gi
      m[i] = a
      w[i] = (w[i] as number) - lr * (nesterov ? gi + mom * a : a)
    }
  }
}

/** Per-weight trainable flags expanded to one per element of the flat vector. */
function elementMask (model: Uint8Array, trainable: boolean[]): Uint8Array {
  const specs = viewPackedModel(model).weightSpecs
  const sizes = specs.map(s => s.shape.reduce((a, b) => a * b, 1))
  const mask = new Uint8Array(sizes.reduce((a, b) => a + b, 0))
  let off = 0
  sizes.forEach((n, i) => {
    mask.fill(trainable[i] === true ? 1 : 0, off, off + n)
    off += n
  })
  return mask
}

export async function runModelTraining (c: ModelTrainComponents, job: Job, params: ModelTrainJobParams, resume?: TrainCheckpoint, onEpoch?: (cp: TrainCheckpoint) => Promise<void>): Promise<void> {
  if (job.finished) return
  const inputs = job.inputs
  const blob = job.blobs?.model
  if (inputs === undefined || blob === undefined) throw new Error('train job has no inputs or model')
  const x = inputs.x as HostTensor
  const y = inputs.y as HostTensor
  const n = x.shape[0] as number
  const metrics = job.metrics ?? { rounds: [] }
  job.metrics = metrics
  job.setState('running')
  // Butterfly rounds serve x, y and the model by CID themselves (outside Coordinator.run), for the whole job.
  const shares = c.coordinator.shares()
  try {
    // The canonical model: initialisers seeded (or the given weights), float32, in the flat vector's order.
    const built = initModelBytes((await c.pool.run(initTask(blob, params.loss, params.seed), { transfer: false })).partial)
    const model = built.model
    const w = resume?.w.slice() ?? new Float32Array(viewPackedModel(model).weights.slice().buffer)
    const P = w.length
    if (resume !== undefined && resume.w.length !== P) throw new TensormeshError('ERR_BAD_CHECKPOINT', `the checkpoint holds ${resume.w.length} weights but the model ${P}`)
    const m = resume?.m.slice() ?? new Float32Array(P)
    const v = resume?.v.slice() ?? new Float32Array(P)
    const mask = elementMask(model, built.trainable)
    // Checkpoints (w, m, v twice while one replaces the other) and the trained model.
    c.reserve?.(2 * 3 * P * 4 + P * 4 + model.byteLength)
    const blobs = { model }
    const step = params.sync.mode === 'step'
    const sync = params.sync
    const replicas = sync.mode === 'local' ? Math.max(1, Math.min(sync.replicas ?? Math.min(c.peers(), DEFAULT_MAX_REPLICAS), Math.floor(n / params.batchSize))) : 1
    const perRound = step ? params.batchSize : replicas * (sync.mode === 'local' ? sync.steps : 1) * params.batchSize
    const roundsPerEpoch = Math.ceil(n / perRound)
    const totalRounds = roundsPerEpoch * params.epochs
    const startEpoch = resume?.round ?? 0
    metrics.progress = { done: startEpoch * roundsPerEpoch, total: totalRounds, unit: step ? 'steps' : 'rounds' }
    metrics.wireBytes ??= 0
    const apply = stepOptimizer(params.optimizer, w, m, v, mask)
    const excluded = new Set<string>()
    for (let epoch = startEpoch; epoch < params.epochs; epoch++) {
      const t0 = performance.now()
      let lossSum = 0
      let lossRows = 0
      const peers = new Set<string>()
      for (let r = 0; r < roundsPerEpoch; r++) {
        if (job.finished) return
        const global = epoch * roundsPerEpoch + r + 1
        const wt = hostTensor('float32', [P], w.slice())
        const subParams = step
          ? { mode: 'grad', loss: params.loss, paramCount: P, seed: params.seed, epoch, offset: r * params.batchSize, batchRows: Math.min(params.batchSize, n - r * params.batchSize) }
          : { mode: 'local', loss: params.loss, paramCount: P, seed: params.seed, replicas, round: global, steps: (sync as { steps: number }).steps, batchSize: params.batchSize, optimizer: params.optimizer }
        const sub = new Job({ id: `${job.id}-${step ? 's' : 'r'}${global}`, op: modelTrain.name, params: subParams, inputs: { x, y, w: wt }, blobs, verify: job.verify, schedule: { ...ROUND_SCHEDULE, ...job.schedule } })
        sub.plan = getOperator(modelTrain.name).plan(sub.inputs ?? {}, sub.params, blobs)
        let g: Float64Array
        if (sync.averaging === 'butterfly' && c.allreduce !== undefined) {
          const out = await butterflyRound(c, job, sub, shares, excluded, global)
          if (job.finished) return
          g = Float64Array.from(out.sum)
          for (const p of out.members) peers.add(p)
          metrics.wireBytes += out.bytes
        } else {
          const out = await runRound(c, job, sub, global)
          if (job.finished) return
          g = Float64Array.from(out.data)
          for (const s of sub.shards) if (s.peer !== undefined) peers.add(s.peer)
          metrics.wireBytes += wireBytes(sub, P, c.coordinator.selfId)
        }
        const count = g[P + 1] ?? 0
        if (!(count > 0)) throw new TensormeshError('ERR_ROUND_FAILED', `round ${global}: the result covers no rows`)
        lossSum += g[P] ?? 0
        lossRows += count
        if (step) {
          apply(g, count, global)
        } else {
          // DiLoCo's outer step: the averaged change is minus the pseudo-gradient; Nesterov momentum on it.
          const { outerLearningRate: lr, outerMomentum: mu } = sync as { outerLearningRate: number, outerMomentum: number }
          for (let i = 0; i < P; i++) {
            const pg = -(g[i] as number) / count
            const buf = mu * (m[i] as number) + pg
            m[i] = buf
            w[i] = (w[i] as number) - lr * (pg + mu * buf)
          }
        }
        metrics.progress.done = global
        job.progressed()
      }
      const evaluation = await evaluate(c, inputs, blobs, w, params.loss)
      const metric: RoundMetric = {
        round: epoch + 1,
        loss: lossSum / Math.max(1, lossRows),
        accuracy: evaluation.accuracy,
        testLoss: evaluation.loss,
        ms: Math.round(performance.now() - t0),
        peers: peers.size
      }
      metrics.rounds.push(metric)
      metrics.accuracy = metric.accuracy
      c.log.info({ job: job.id, epoch: epoch + 1, ...metric }, 'training epoch')
      await onEpoch?.({ round: epoch + 1, w, m, v })
      job.progressed()
    }
    const trained = packModel({ ...viewPackedModel(model), weightData: w.slice().buffer })
    job.model = { cid: await c.blobs.put(trained, jobOwner(job.id)), bytes: trained.byteLength }
    job.finish('succeeded', hostTensor('float32', [P], w.slice()))
  } catch (err) {
    if (!job.finished) job.finish('failed', undefined, { code: (err as { code?: string }).code ?? 'ERR_TRAIN_FAILED', message: errorMessage(err) })
  } finally {
    // Succeeded, failed or cancelled: its content is no longer served to the members.
    shares.release()
  }
}

/**
 * One round combined by butterfly: its group is the peers that accept the
 * round's call for bids (this node first), less those that failed an
 * earlier round of the job; the units (a step's rows, or the replicas)
 * are split evenly among them. A member that fails is left out and the
 * round runs again, up to BUTTERFLY_ATTEMPTS times. Returns the summed
 * vector, the members, and the coordinator's own bytes (START frames and
 * weight parts out, reduced parts in).
 */
async function butterflyRound (c: ModelTrainComponents, job: Job, sub: Job, shares: JobShares, excluded: Set<string>, round: number): Promise<{ sum: Float32Array, members: string[], bytes: number }> {
  const allreduce = c.allreduce as AllReduce
  const plan = sub.plan as JobPlan
  const inputs = sub.inputs as Tensors
  const wt = inputs.w as HostTensor
  const units = plan.units
  const cap = sub.params.mode === 'grad' ? Math.min(units, MAX_STEP_MEMBERS) : units
  const accepted = await c.coordinator.acceptingPeers(sub, cap + excluded.size)
  job.bids = sub.bids
  let candidates = accepted.filter(p => !excluded.has(p)).slice(0, cap)
  if (candidates.length === 0) candidates = accepted.slice(0, 1)
  const { batchRows: _b, ...taskParams } = sub.params
  void _b
  const refs = [{ name: 'x', cid: await shares.tensorRef(inputs.x as HostTensor) }, { name: 'y', cid: await shares.tensorRef(inputs.y as HostTensor) }]
  const blobRefs = [{ name: 'model', cid: await shares.blobRef((sub.blobs as { model: Uint8Array }).model) }]
  let bytes = 0
  let lastError: unknown
  for (let attempt = 0; attempt < BUTTERFLY_ATTEMPTS && candidates.length > 0; attempt++) {
    if (job.finished) break
    const k = Math.min(candidates.length, units)
    const members = candidates.slice(0, k).map((peer, i) => ({ peer, start: Math.floor(i * units / k), end: Math.floor((i + 1) * units / k) }))
    for (const m of members) if (m.peer !== c.coordinator.selfId) shares.grant(m.peer, [...refs, ...blobRefs].map(r => r.cid))
    try {
      const out = await allreduce.runRound(members, {
        round: `${sub.id}-a${attempt}`,
        task: { op: sub.op, params: taskParams },
        refs,
        blobs: blobRefs,
        local: { tensors: { x: inputs.x as HostTensor, y: inputs.y as HostTensor }, blobs: { model: (sub.blobs as { model: Uint8Array }).model } },
        w: wt.data as Float32Array,
        vLength: plan.output.shape[0] as number
      }, job.controller.signal)
      bytes += out.bytesOut + out.bytesIn
      // The round's record, one shard per member, as a star round's would be: the timeline and the job view show it.
      job.shards = members.map((m, index) => {
        const o = out.members.get(m.peer)
        const remote = m.peer !== c.coordinator.selfId
        return {
          index, start: m.start, end: m.end, state: 'done' as const, peer: m.peer, attempts: 1,
          ms: o?.ms, computeMs: o?.computeMs, bytesIn: o?.bytesIn ?? 0, bytesOut: o?.bytesOut ?? 0,
          ...(remote ? { via: o?.relayed === true ? 'relay' as const : 'direct' as const } : {}),
          history: [{ peer: m.peer, startedAt: o?.startedAt ?? Date.now(), ms: o?.ms, computeMs: o?.computeMs, kind: 'first' as const }]
        }
      })
      return { sum: out.sum, members: members.map(m => m.peer), bytes }
    } catch (err) {
      if (job.finished) break
      lastError = err
      const failed = err instanceof RemoteRoundError ? err.peer : undefined
      c.log.warn({ job: job.id, round, attempt, peer: failed, code: errorCode(err), err: errorMessage(err) }, 'butterfly round failed; running it again without the member')
      if (failed === undefined) break
      excluded.add(failed)
      candidates = candidates.filter(p => p !== failed)
    }
  }
  if (job.finished) return { sum: new Float32Array(0), members: [], bytes }
  throw new TensormeshError('ERR_ROUND_FAILED', `round ${round}: the butterfly failed ${BUTTERFLY_ATTEMPTS} times or ran out of members: ${errorMessage(lastError)}`)
}

/** One round (a step or an outer round) as a job of its own, its shards shown on the train job. */
async function runRound (c: ModelTrainComponents, job: Job, sub: Job, round: number): Promise<HostTensor> {
  const onCancel = (): void => { sub.cancel() }
  job.controller.signal.addEventListener('abort', onCancel)
  sub.addEventListener('progress', () => {
    job.bids = sub.bids
    job.shards = sub.shards
  })
  try {
    await c.coordinator.run(sub)
  } finally {
    job.controller.signal.removeEventListener('abort', onCancel)
  }
  job.outvoted.push(...sub.outvoted)
  if (sub.state !== 'succeeded' || sub.output === undefined) {
    if (job.finished) return hostTensor('float32', [0])
    throw new TensormeshError(sub.error?.code ?? 'ERR_ROUND_FAILED', `round ${round}: ${sub.error?.message ?? sub.state}`)
  }
  return sub.output
}

/**
 * Bytes a round moved between this node and others: the weights to each
 * remote peer (by content address, once per round) and each remote
 * shard's own frames and result.
 */
function wireBytes (sub: Job, P: number, self: string): number {
  const remote = new Set<string>()
  let bytes = 0
  for (const s of sub.shards) {
    if (s.peer === undefined || s.peer === self || s.via === undefined) continue
    remote.add(s.peer)
    bytes += s.bytesIn + s.bytesOut
  }
  return bytes + remote.size * P * 4
}

/** Held-out loss and accuracy on this node's own pool (one task, no mesh round trip). */
async function evaluate (c: ModelTrainComponents, inputs: Tensors, blobs: { model: Uint8Array }, w: Float32Array, loss: TrainLoss): Promise<{ accuracy: number, loss: number }> {
  const x = inputs.xTest as HostTensor
  const y = inputs.yTest as HostTensor
  const rows = x.shape[0] as number
  const evalInputs = { x, y, w: hostTensor('float32', [w.length], w.slice()) }
  const plan = modelTrain.plan(evalInputs, { mode: 'eval', loss, paramCount: w.length }, blobs)
  const reducer = modelTrain.reducer(plan)
  const range = { index: 0, start: 0, end: rows }
  const out = await c.pool.run(modelTrain.shard(plan, evalInputs, range, blobs), { transfer: false })
  reducer.add(range, out.partial)
  const r = reducer.result().data
  return { accuracy: loss === 'meanSquaredError' ? NaN : (r[1] ?? 0) / rows, loss: (r[0] ?? 0) / rows }
}
