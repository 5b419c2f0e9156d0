import { execFile } from 'node:child_process'
import { InvalidInputError, errorMessage } from '../errors.ts'
import { BackendInitError, BackendUnavailableError } from './errors.ts'
import type { TF } from './operators/types.ts'

/**
 * Backend selection: an ordered list of candidates, best first. Each says
 * whether it loads here, and knows how to load itself into the calling
 * thread's TF.js. A new backend (e.g. webgpu through Dawn) joins by adding a
 * name to BACKEND_NAMES and an entry to BACKEND_CANDIDATES.
 *
 * Loading happens inside the executor's worker threads, never on the main
 * thread: that one serves libp2p and must not run TF.js kernels.
 */

/** Backends in order of preference; `auto` picks the first that loads. */
export const BACKEND_NAMES = ['tensorflow-gpu', 'tensorflow', 'wasm', 'cpu'] as const
export type BackendName = typeof BACKEND_NAMES[number]
export type BackendChoice = BackendName | 'auto'

export interface GpuInfo {
  name: string
  memoryBytes?: number
}

/** Whether a candidate loads here; when not, a one-line reason for error messages. */
export type Availability = { ok: true } | { ok: false, reason: string }

export interface BackendCandidate {
  readonly name: BackendName
  /** Never throws. Imports the candidate's packages (no kernels run). */
  available: () => Promise<Availability>
  /** Loads the packages and makes this backend active in the calling thread's TF.js. */
  load: () => Promise<TF>
  /** The accelerator this backend computes on, if any. */
  gpu?: () => Promise<GpuInfo | undefined>
}

export interface LoadedBackend {
  name: BackendName
  tf: TF
  gpu?: GpuInfo
}

/**
 * `nvidia-smi` answers in well under a second when a driver is present; a
 * hung driver must not hold up node start, so give up after 5 s and treat the
 * GPU as absent.
 */
export const GPU_PROBE_TIMEOUT_MS = 5_000

const MIB = 1024 * 1024

/**
 * Imports a package by a name TypeScript does not resolve: the native TF.js
 * packages are optionalDependencies that are absent on most machines, so
 * their types are not available at compile time either.
 */
async function importOptional (specifier: string): Promise<unknown> {
  return await import(specifier)
}

async function activate (tf: TF, name: string): Promise<void> {
  let ok: boolean
  try {
    ok = await tf.setBackend(name)
    await tf.ready()
  } catch (err) {
    throw new BackendInitError(`TF.js backend '${name}' failed to initialise: ${errorMessage(err)}`, { cause: err })
  }
  // setBackend reports a failed initialisation as false rather than throwing.
  if (!ok || tf.getBackend() !== name) throw new BackendInitError(`TF.js backend '${name}' failed to initialise`)
}

async function loadCore (): Promise<TF> {
  return await import('@tensorflow/tfjs-core')
}

async function probe (specifiers: string[]): Promise<Availability> {
  try {
    for (const s of specifiers) await importOptional(s)
    return { ok: true }
  } catch (err) {
    return { ok: false, reason: firstLine(errorMessage(err)) }
  }
}

function firstLine (s: string): string {
  return s.split('\n', 1)[0] ?? ''
}

/**
 * The first NVIDIA GPU as `nvidia-smi` reports it, or undefined when there is
 * none (no driver, no binary, no device). TF.js's native GPU build silently
 * falls back to the CPU without a usable GPU, so this is also the test of
 * whether `tensorflow-gpu` is worth choosing over `tensorflow`.
 */
export async function detectGpu (): Promise<GpuInfo | undefined> {
  const out = await new Promise<string | undefined>((resolve) => {
    execFile('nvidia-smi', ['--query-gpu=name,memory.total', '--format=csv,noheader,nounits'],
      { timeout: GPU_PROBE_TIMEOUT_MS }, (err, stdout) => { resolve(err == null ? stdout : undefined) })
  })
  const line = out?.split('\n').map(l => l.trim()).find(l => l !== '')
  if (line === undefined) return undefined
  const cut = line.lastIndexOf(',')
  const name = (cut < 0 ? line : line.slice(0, cut)).trim()
  const mib = cut < 0 ? NaN : Number(line.slice(cut + 1))
  if (name === '') return undefined
  return Number.isFinite(mib) && mib > 0 ? { name, memoryBytes: mib * MIB } : { name }
}

/** tfjs-node(-gpu) exports the whole tfjs namespace with its own native backend registered as 'tensorflow'. */
function nativeCandidate (name: 'tensorflow' | 'tensorflow-gpu', pkg: string, gpu?: () => Promise<GpuInfo | undefined>): BackendCandidate {
  return {
    name,
    available: async () => {
      if (gpu !== undefined && await gpu() === undefined) return { ok: false, reason: 'no GPU visible to nvidia-smi' }
      return await probe([pkg])
    },
    load: async () => {
      let tf: TF
      try {
        tf = await importOptional(pkg) as TF
      } catch (err) {
        throw new BackendUnavailableError(`backend '${name}' does not load: ${firstLine(errorMessage(err))}`, { cause: err })
      }
      await activate(tf, 'tensorflow')
      return tf
    },
    ...(gpu === undefined ? {} : { gpu })
  }
}

function jsCandidate (name: 'wasm' | 'cpu', pkg: string): BackendCandidate {
  return {
    name,
    available: async () => await probe(['@tensorflow/tfjs-core', pkg]),
    load: async () => {
      const tf = await loadCore()
      try {
        await importOptional(pkg)
      } catch (err) {
        throw new BackendUnavailableError(`backend '${name}' does not load: ${firstLine(errorMessage(err))}`, { cause: err })
      }
      await activate(tf, name)
      if (name === 'cpu') {
        // The cpu backend prints a banner to stderr on first use advising
        // tfjs-node; choosing cpu here is deliberate (nothing better loaded).
        const backend = tf.backend() as unknown as { firstUse?: boolean }
        if ('firstUse' in backend) backend.firstUse = false
      }
      return tf
    }
  }
}

export const BACKEND_CANDIDATES: readonly BackendCandidate[] = [
  nativeCandidate('tensorflow-gpu', '@tensorflow/tfjs-node-gpu', detectGpu),
  nativeCandidate('tensorflow', '@tensorflow/tfjs-node'),
  jsCandidate('wasm', '@tensorflow/tfjs-backend-wasm'),
  jsCandidate('cpu', '@tensorflow/tfjs-backend-cpu')
]

export function isBackendName (value: unknown): value is BackendName {
  return typeof value === 'string' && (BACKEND_NAMES as readonly string[]).includes(value)
}

/** For CLI flags and config files: a string to a BackendChoice, or InvalidInputError. */
export function parseBackendChoice (value: string): BackendChoice {
  if (value === 'auto' || isBackendName(value)) return value
  throw new InvalidInputError(`unknown backend '${value}'; allowed: auto, ${BACKEND_NAMES.join(', ')}`, 'ERR_UNKNOWN_BACKEND')
}

function candidate (name: BackendName, candidates: readonly BackendCandidate[]): BackendCandidate {
  const c = candidates.find(c => c.name === name)
  if (c === undefined) throw new BackendUnavailableError(`backend '${name}' has no candidate; known: ${candidates.map(c => c.name).join(', ')}`)
  return c
}

/**
 * `auto` to the first candidate that loads; an explicit name to itself if it
 * loads, else BackendUnavailableError naming it, why, and what would load.
 */
export async function resolveBackend (choice: BackendChoice, candidates: readonly BackendCandidate[] = BACKEND_CANDIDATES): Promise<BackendName> {
  if (choice === 'auto') {
    const reasons: string[] = []
    for (const c of candidates) {
      const a = await c.available()
      if (a.ok) return c.name
      reasons.push(`${c.name}: ${a.reason}`)
    }
    throw new BackendUnavailableError(`no TF.js backend loads here (${reasons.join('; ')})`)
  }
  const wanted = await candidate(choice, candidates).available()
  if (wanted.ok) return choice
  const others: string[] = []
  for (const c of candidates) {
    if (c.name !== choice && (await c.available()).ok) others.push(c.name)
  }
  throw new BackendUnavailableError(`backend '${choice}' is not available (${wanted.reason}); available: ${others.length > 0 ? others.join(', ') : 'none'}`)
}

/**
 * Runs inside a worker: resolves the choice, loads that backend into this
 * thread's TF.js and returns the namespace to run operators with.
 */
export async function loadBackend (choice: BackendChoice, candidates: readonly BackendCandidate[] = BACKEND_CANDIDATES): Promise<LoadedBackend> {
  const name = await resolveBackend(choice, candidates)
  const c = candidate(name, candidates)
  const tf = await c.load()
  const gpu = await c.gpu?.()
  return gpu === undefined ? { name, tf } : { name, tf, gpu }
}
