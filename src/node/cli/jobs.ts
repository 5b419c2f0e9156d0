import { access, glob, readFile, writeFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { InvalidInputError, errorMessage } from '../../errors.ts'
import { decodeNpy } from '../../compute/npy.ts'
import { packModel, readModelDir } from '../../compute/model.ts'
import { describe } from '../../compute/tensor.ts'
import { MeshClient } from '../client/index.ts'
import type { JobView } from '../jobs/job.ts'
import type { HostTensor } from '../../compute/tensor.ts'

/**
 * An input of a job file: a .npy path (relative to the file), an earlier
 * job's result ({"job": ID}, or {"job": "$N"} for step N of the same
 * pipeline file), or a stored .npy by CID ({"cid": CID}).
 */
export type JobInput = string | { job: string } | { cid: string } | ImagesInput

/**
 * Images as an input: files or globs relative to the job file, in order
 * (each glob's matches sorted by name), resized to `size` [height, width]
 * and divided by `scale` (default 255) on the peers that run the shards.
 */
export interface ImagesInput {
  images: string[]
  size: [number, number]
  scale?: number
}

/** A job file: {"op": NAME, "inputs": {NAME: INPUT}, "params": {...}}, paths relative to the file. */
export interface JobFile {
  op: string
  inputs: Record<string, JobInput>
  params: Record<string, unknown>
  verify?: unknown
  schedule?: unknown
}

/** Whether a job file input is a reference, and which; throws on a malformed one. */
function checkInput (path: string, name: string, value: unknown): JobInput {
  if (typeof value === 'string') return value
  const v = value as Record<string, unknown> | null
  if (v !== null && typeof v === 'object' && !Array.isArray(v) && 'images' in v) {
    const size = v.size
    if (!Array.isArray(v.images) || v.images.length === 0 || !v.images.every(p => typeof p === 'string' && p !== '') ||
        !Array.isArray(size) || size.length !== 2 || !size.every(d => Number.isSafeInteger(d) && d > 0) ||
        (v.scale !== undefined && (typeof v.scale !== 'number' || !(v.scale > 0))) || Object.keys(v).some(k => !['images', 'size', 'scale'].includes(k))) {
      throw new InvalidInputError(`job file ${path}: input ${name} must be {"images": ["photos/*.jpg", ...], "size": [height, width], "scale": 255}`, 'ERR_JOB_FILE')
    }
    return { images: v.images as string[], size: [size[0] as number, size[1] as number], ...(v.scale !== undefined ? { scale: v.scale as number } : {}) }
  }
  if (v !== null && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length === 1) {
    if (typeof v.job === 'string' && v.job !== '') return { job: v.job }
    if (typeof v.cid === 'string' && v.cid !== '') return { cid: v.cid }
  }
  throw new InvalidInputError(`job file ${path}: input ${name} must be a .npy path, {"job": ID}, {"cid": CID} or {"images": [...], "size": [h, w]}`, 'ERR_JOB_FILE')
}

/**
 * A job file, or a pipeline: a JSON array of job objects run in order, where
 * step k may name step N's result (N < k) as {"job": "$N"}. The steps run
 * on the node the file is submitted to; only the last result comes back.
 */
export async function readPipeline (path: string): Promise<JobFile[]> {
  const value = await readJson(path)
  const steps = Array.isArray(value) ? value : [value]
  if (steps.length === 0) throw new InvalidInputError(`job file ${path} is an empty pipeline`, 'ERR_JOB_FILE')
  return steps.map((step, k) => {
    const where = steps.length > 1 ? `${path} (step ${k})` : path
    const file = checkJobFile(where, step)
    for (const [name, input] of Object.entries(file.inputs)) {
      if (typeof input === 'object' && 'job' in input && input.job.startsWith('$')) {
        const n = Number(input.job.slice(1))
        if (!Number.isInteger(n) || n < 0 || n >= k) throw new InvalidInputError(`job file ${where}: input ${name} names step ${input.job}; a step names an earlier one, $0..$${k - 1}`, 'ERR_JOB_FILE')
      }
    }
    return file
  })
}

export async function readJobFile (path: string): Promise<JobFile> {
  const value = await readJson(path)
  if (Array.isArray(value)) throw new InvalidInputError(`job file ${path} is a pipeline (an array of jobs); submit it with tensormesh submit`, 'ERR_JOB_FILE')
  return checkJobFile(path, value)
}

async function readJson (path: string): Promise<unknown> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new InvalidInputError(`cannot read job file ${path}: ${errorMessage(err)}`, 'ERR_JOB_FILE')
  }
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (err) {
    throw new InvalidInputError(`job file ${path} is not valid JSON: ${errorMessage(err)}`, 'ERR_JOB_FILE')
  }
  return value
}

function checkJobFile (path: string, value: unknown): JobFile {
  const v = value as Record<string, unknown> | null
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new InvalidInputError(`job file ${path} must hold a JSON object {"op", "inputs", "params"}`, 'ERR_JOB_FILE')
  if (typeof v.op !== 'string') throw new InvalidInputError(`job file ${path}: "op" must be an operator name`, 'ERR_JOB_FILE')
  const rawInputs = v.inputs ?? {}
  if (rawInputs === null || typeof rawInputs !== 'object' || Array.isArray(rawInputs)) {
    throw new InvalidInputError(`job file ${path}: "inputs" must map input names to .npy paths (or {"job": ID}, {"cid": CID})`, 'ERR_JOB_FILE')
  }
  const inputs = Object.fromEntries(Object.entries(rawInputs).map(([name, input]) => [name, checkInput(path, name, input)]))
  const params = v.params ?? {}
  if (params === null || typeof params !== 'object' || Array.isArray(params)) throw new InvalidInputError(`job file ${path}: "params" must be an object`, 'ERR_JOB_FILE')
  const known = new Set(['op', 'inputs', 'params', 'verify', 'schedule'])
  const extra = Object.keys(v).filter(k => !known.has(k))
  if (extra.length > 0) throw new InvalidInputError(`job file ${path}: unknown field ${extra.map(k => `"${k}"`).join(', ')}; allowed: ${[...known].join(', ')}`, 'ERR_JOB_FILE')
  const file: JobFile = { op: v.op, inputs, params: params as Record<string, unknown> }
  if (v.verify !== undefined) file.verify = v.verify
  if (v.schedule !== undefined) file.schedule = v.schedule
  return file
}

/**
 * Builds the multipart body of POST /v1/jobs from a job file; inputs are
 * checked here first. `steps` are the ids of a pipeline's earlier steps,
 * for its {"job": "$N"} inputs.
 */
export async function jobForm (path: string, job: JobFile, steps: string[] = []): Promise<FormData> {
  const form = new FormData()
  const params = { ...job.params }
  const spec: Record<string, unknown> = { op: job.op, params }
  const refs: Record<string, { job: string } | { cid: string }> = {}
  if (job.verify !== undefined) spec.verify = job.verify
  if (job.schedule !== undefined) spec.schedule = job.schedule
  // params.model names a TF.js model: a CID the mesh has, or a model.json path packed and sent along.
  if (typeof params.model === 'string') {
    const model = params.model
    delete params.model
    if (/^baf[a-z2-7]+$/.test(model)) {
      spec.blobs = { model: { cid: model } }
    } else {
      const artifacts = await readModelDir(resolve(dirname(path), model))
      form.set('blob.model', new Blob([packModel(artifacts) as Uint8Array<ArrayBuffer>]), 'model.tmmodel')
    }
  }
  delete params.labels // the client's own: it names the classes when it prints the result
  let imageInputs = 0
  for (const [name, input] of Object.entries(job.inputs)) {
    if (typeof input === 'string') continue
    if ('images' in input) {
      if (++imageInputs > 1) throw new InvalidInputError(`job file ${path}: only one input may be images`, 'ERR_JOB_FILE')
      const files = await expandImages(path, input.images)
      params.images = { size: input.size, scale: input.scale ?? 255 }
      // Each part is a file as it is on disk; the node packs them, the peers decode them.
      for (const f of files) form.append('image', new Blob([await readFile(f.path) as Uint8Array<ArrayBuffer>]), f.name)
      continue
    }
    refs[name] = 'job' in input && input.job.startsWith('$') ? { job: steps[Number(input.job.slice(1))] ?? input.job } : input
  }
  if (Object.keys(refs).length > 0) spec.inputs = refs
  form.set('spec', JSON.stringify(spec))
  for (const [name, rel] of Object.entries(job.inputs)) {
    if (typeof rel !== 'string') continue
    const file = resolve(dirname(path), rel)
    let bytes: Uint8Array
    try {
      bytes = await readFile(file)
    } catch (err) {
      throw new InvalidInputError(`input ${name}: cannot read ${file}: ${errorMessage(err)}`, 'ERR_JOB_FILE')
    }
    decodeNpy(bytes, name) // a clear local error beats a round trip
    form.set(name, new Blob([bytes as Uint8Array<ArrayBuffer>]), `${name}.npy`)
  }
  return form
}

/** The files an images input names, in order: each glob's matches sorted, duplicates kept once. */
export async function expandImages (jobFile: string, patterns: string[]): Promise<Array<{ path: string, name: string }>> {
  const base = dirname(jobFile)
  const seen = new Set<string>()
  const out: Array<{ path: string, name: string }> = []
  for (const pattern of patterns) {
    const matches: string[] = []
    if (/[*?[{]/.test(pattern)) {
      for await (const m of glob(pattern, { cwd: base })) matches.push(m)
      matches.sort()
      if (matches.length === 0) throw new InvalidInputError(`job file ${jobFile}: images pattern ${pattern} matches no file`, 'ERR_JOB_FILE')
    } else {
      matches.push(pattern)
    }
    for (const m of matches) {
      const full = resolve(base, m)
      if (seen.has(full)) continue
      seen.add(full)
      out.push({ path: full, name: m })
    }
  }
  for (const f of out) {
    try {
      await access(f.path)
    } catch {
      throw new InvalidInputError(`job file ${jobFile}: image ${f.name} does not exist`, 'ERR_JOB_FILE')
    }
  }
  return out
}

/** The class names of `params.labels` (a JSON list of strings, relative to the job file), or undefined. */
export async function readLabels (jobFile: string, job: JobFile): Promise<string[] | undefined> {
  const rel = job.params.labels
  if (rel === undefined) return undefined
  if (typeof rel !== 'string') throw new InvalidInputError(`job file ${jobFile}: params.labels must be the path of a JSON list of class names`, 'ERR_JOB_FILE')
  const value = await readJson(resolve(dirname(jobFile), rel))
  if (!Array.isArray(value) || !value.every(l => typeof l === 'string')) throw new InvalidInputError(`job file ${jobFile}: ${rel} must hold a JSON list of class names`, 'ERR_JOB_FILE')
  return value as string[]
}

/** Each row's best classes, "name: label p, label p, label p". */
export function topClasses (result: HostTensor, labels: string[], names: string[] | undefined, k = 3): string[] {
  const classes = result.shape.at(-1) ?? 0
  const rows = result.shape.length === 2 ? result.shape[0] ?? 0 : 0
  if (classes !== labels.length) return [`(the result has ${classes} classes per row, params.labels names ${labels.length})`]
  const lines: string[] = []
  for (let r = 0; r < rows; r++) {
    const row = Array.from(result.data.subarray(r * classes, (r + 1) * classes))
    const order = row.map((p, i) => [p, i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, k)
    lines.push(`${names?.[r] ?? `row ${r}`}: ${order.map(([p, i]) => `${labels[i] ?? i} ${p.toFixed(3)}`).join(', ')}`)
  }
  return lines
}

/** What a job's progress counts: training rounds, or shards. */
function unitOf (job: JobView): string {
  return job.op === 'train' ? job.metrics?.progress?.unit ?? 'rounds' : 'shards'
}

export function progressLine (job: JobView, width = 30): string {
  const { done, total } = job.progress
  const frac = total === 0 ? 0 : done / total
  const filled = Math.round(frac * width)
  const peers = new Set(job.shards.filter(s => s.state === 'running').map(s => s.history.at(-1)?.peer)).size
  const elapsed = (Date.now() - Date.parse(job.createdAt)) / 1000
  const eta = frac > 0 && frac < 1 ? ` eta ${(elapsed / frac - elapsed).toFixed(1)}s` : ''
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} ${unitOf(job)}, ${peers} peers working, ${elapsed.toFixed(1)}s${eta}`
}

export interface SubmitOptions {
  api: string
  /** The API token, when the caller has one (see resolveToken). */
  token?: string
  file: string
  out?: string
  json: boolean
}

/** `tensormesh submit`: upload, follow, write the result, print the record. Returns the exit code. */
export async function submitCommand (opts: SubmitOptions): Promise<number> {
  const client = new MeshClient(opts.api, { token: opts.token })
  const steps = await readPipeline(opts.file)
  const ids: string[] = []
  // A pipeline's earlier steps: each must succeed before the next names its result.
  for (const [k, step] of steps.slice(0, -1).entries()) {
    const earlier = await client.submitForm(await jobForm(opts.file, step, ids))
    const done = await earlier.wait()
    if (!opts.json) process.stderr.write(`step ${k}: job ${done.id} ${done.state}\n`)
    if (done.state !== 'succeeded') {
      if (opts.json) process.stdout.write(JSON.stringify({ id: done.id, state: done.state, step: k, ...(done.error !== undefined ? { error: done.error } : {}) }) + '\n')
      else printSummary(done)
      return 1
    }
    ids.push(done.id)
  }
  const file = steps.at(-1) as JobFile
  // Read before anything runs: a wrong labels file is a mistake in the job file.
  const labels = await readLabels(opts.file, file)
  const form = await jobForm(opts.file, file, ids)
  // The image files the form carries, in order: the rows of an image job's result.
  const images = form.getAll('image').map(f => (f as File).name)
  const submitted = await client.submitForm(form)
  const tty = process.stderr.isTTY && !opts.json
  let lastPlain = -1
  const job = await submitted.wait((j) => {
    if (tty) {
      process.stderr.write(`\r${progressLine(j)}\u001b[K`)
    } else if (!opts.json && j.progress.done !== lastPlain) {
      lastPlain = j.progress.done
      process.stderr.write(`${j.id} ${j.state} ${j.progress.done}/${j.progress.total} ${unitOf(j)}\n`)
    }
  })
  if (tty) process.stderr.write('\n')
  let outPath: string | undefined
  if (job.state === 'succeeded' && opts.out !== undefined) {
    outPath = resolve(opts.out)
    if (job.model !== undefined) {
      // A training job's result is a model: written as TF.js writes one (model.json + weights.bin).
      await submitted.saveModel(outPath)
    } else {
      await writeFile(outPath, await submitted.resultBytes())
    }
  }
  let top: string[] | undefined
  if (labels !== undefined && job.state === 'succeeded' && job.model === undefined) top = topClasses(await submitted.result(), labels, images.length > 0 ? images : undefined)
  if (opts.json) {
    process.stdout.write(JSON.stringify({
      ...(top !== undefined ? { top } : {}),
      id: job.id,
      state: job.state,
      elapsedMs: job.elapsedMs,
      output: job.model !== undefined ? { model: job.model.cid, path: outPath ?? null } : job.output === undefined ? null : { ...job.output, path: outPath ?? null },
      shards: job.shards.map(s => ({ index: s.index, peer: s.peer ?? null, attempts: s.attempts, ms: s.ms ?? null })),
      ...(job.metrics !== undefined ? { metrics: job.metrics } : {}),
      ...(job.error !== undefined ? { error: job.error } : {})
    }) + '\n')
  } else {
    printSummary(job, outPath)
    if (top !== undefined) process.stdout.write(top.map(l => `  ${l}`).join('\n') + '\n')
  }
  return job.state === 'succeeded' ? 0 : 1
}

export function printSummary (job: JobView, outPath?: string): void {
  const lines = [`job ${job.id}: ${job.state}${job.elapsedMs !== undefined ? ` in ${(job.elapsedMs / 1000).toFixed(2)} s` : ''}`]
  if (job.output !== undefined && job.model === undefined) lines.push(`  output ${describe(job.output as { dtype: 'float32', shape: number[] })}${outPath !== undefined ? ` -> ${outPath}` : ''}`)
  if (job.model !== undefined && outPath !== undefined) lines.push(`  model written to ${outPath}/model.json`)
  if (job.error !== undefined) lines.push(`  error ${job.error.code}: ${job.error.message}`)
  const last = job.metrics?.rounds.at(-1)
  if (last !== undefined) {
    // A model's training reports per epoch; the MLP shorthand per round.
    const per = job.metrics?.progress !== undefined ? 'epochs' : 'rounds'
    const accuracy = Number.isFinite(last.accuracy) ? `, held-out accuracy ${(last.accuracy * 100).toFixed(2)}%` : ''
    lines.push(`  ${job.metrics?.rounds.length ?? 0} ${per}, loss ${last.loss.toFixed(4)}, held-out loss ${last.testLoss.toFixed(4)}${accuracy}`)
  }
  if (job.model !== undefined) lines.push(`  model ${job.model.cid} (${job.model.bytes} bytes)`)
  const byPeer = new Map<string, number>()
  for (const s of job.shards) if (s.peer !== undefined) byPeer.set(s.peer, (byPeer.get(s.peer) ?? 0) + 1)
  for (const [peer, n] of byPeer) lines.push(`  ${n} shard${n === 1 ? '' : 's'} on ${peer}`)
  process.stdout.write(lines.join('\n') + '\n')
}
