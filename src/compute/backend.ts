import { execFile } from 'node:child_process'
import type { KernelBackend } from '@tensorflow/tfjs-core'
import { InvalidInputError, errorMessage } from '../errors.ts'
import { BackendInitError, BackendUnavailableError } from './errors.ts'
import type { TF } from './operators/types.ts'
import { registerWasmGradKernels } from './wasm-kernels.ts'

/**
 * Backend selection: an ordered list of candidates, best first. Each says
 * whether it loads here, and knows how to load itself into the calling
 * thread's TF.js. A new backend joins by adding a name to BACKEND_NAMES and
 * an entry to BACKEND_CANDIDATES, as webgpu did.
 *
 * Loading happens inside the executor's worker threads, never on the main
 * thread: that one serves libp2p and must not run TF.js kernels.
 *
 * A GPU backend comes before every CPU one: `webgpu` (Dawn over Vulkan, no
 * libtensorflow download) sits between the CUDA build of libtensorflow and
 * its CPU build.
 */

/** Backends in order of preference; `auto` picks the first that loads. */
export const BACKEND_NAMES = ['tensorflow-gpu', 'webgpu', 'tensorflow', 'wasm', 'cpu'] as const
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
      // wasm ships no kernels for several gradients (and a wrong MaxPoolGrad); see wasm-kernels.ts.
      if (name === 'wasm') registerWasmGradKernels(tf)
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

/**
 * Asking Dawn for an adapter loads the Vulkan loader and every installed
 * driver: 40-70 ms for the whole probe here (no loader, or an unusable
 * lavapipe), under a second for NVIDIA's driver with persistence mode off,
 * longer on a host with many GPUs. 10 s covers that and still gives up on a
 * hung driver; load() may wait this long twice (adapter, then device), which
 * stays inside the pool's 30 s WORKER_START_TIMEOUT_MS.
 */
export const WEBGPU_ADAPTER_TIMEOUT_MS = 10_000

/** The probe's reason quotes Dawn's stderr; one line of it, cut to this length, is enough to say why. */
const WEBGPU_REASON_MAX_CHARS = 300

/** The probe prints one short JSON line and Dawn a few warnings (about 200 bytes here); far more is not a probe's answer. */
const WEBGPU_PROBE_MAX_BUFFER = 64 * 1024

/**
 * A capacity advert carries at most 128 bytes of GPU name
 * (protocol/capacity's MAX_GPU_NAME_BYTES, which this layer cannot import);
 * Dawn's device names are far shorter, but a driver description used in
 * their place need not be.
 */
const WEBGPU_NAME_MAX_BYTES = 100

/**
 * Adapters that emulate a GPU on the CPU (Mesa's llvmpipe/lavapipe/softpipe,
 * SwiftShader, Dawn's null backend). Dawn does not flag them
 * (isFallbackAdapter is false for llvmpipe), so they are known by name.
 */
const SOFTWARE_ADAPTER = /llvmpipe|lavapipe|softpipe|swiftshader|null-backend/i

export interface WebgpuCandidateInit {
  /** Options for Dawn's create(), e.g. 'backend=opengl' or 'adapter=NAME'; none by default. */
  dawnOptions?: readonly string[]
  /** 'compatibility' also admits OpenGL (ES) adapters; by default only full WebGPU ('core', Vulkan on Linux). */
  featureLevel?: 'core' | 'compatibility'
  /**
   * Accept an adapter that emulates a GPU on the CPU. Off by default: such
   * an adapter would win `auto` over wasm, which computes on the same CPU
   * without the emulation.
   */
  allowSoftware?: boolean
}

/** What Dawn says about its adapter (GPUAdapterInfo); empty strings where unknown. */
interface AdapterInfo {
  vendor: string
  architecture: string
  device: string
  description: string
}

/** The parts of the WebGPU API this file uses, typed here because the packages are optional (absent at compile time on some machines). */
interface GpuAdapter {
  readonly info?: Partial<AdapterInfo>
  requestAdapterInfo?: () => Promise<Partial<AdapterInfo>>
  readonly features: ReadonlySet<string>
  readonly limits: Readonly<Record<string, number>>
  requestDevice: (descriptor?: object) => Promise<unknown>
}

interface Gpu {
  requestAdapter: (options?: { powerPreference?: 'high-performance' | 'low-power', featureLevel?: string }) => Promise<GpuAdapter | null>
}

interface WebgpuModule {
  create: (options: string[]) => Gpu
  globals: object
}

interface WebgpuBackendModule {
  WebGPUBackend: new (device: unknown, adapterInfo?: Partial<AdapterInfo>) => KernelBackend
}

/**
 * Probes for an adapter in a child process. Dawn writes its reasons for
 * finding none straight to file descriptor 2 (no JS hook), which would add
 * stray lines to every node's stderr; and a driver that hangs inside a
 * synchronous native call would block the thread, which no timer can end.
 * A child keeps the noise (as the reason) and can be killed. It exits by
 * itself because a live Dawn instance keeps a Node process running.
 * argv: the `webgpu` module's URL, then {options, featureLevel} as JSON.
 */
const WEBGPU_PROBE_SCRIPT = `
const { create, globals } = await import(process.argv[1])
const { options, featureLevel } = JSON.parse(process.argv[2])
Object.assign(globalThis, globals)
const adapter = await create(options).requestAdapter({ powerPreference: 'high-performance', featureLevel })
const info = adapter == null ? null : (adapter.info ?? (typeof adapter.requestAdapterInfo === 'function' ? await adapter.requestAdapterInfo() : {}))
const pick = (k) => typeof info?.[k] === 'string' ? info[k] : ''
process.stdout.write(JSON.stringify({ adapter: info == null ? null : { vendor: pick('vendor'), architecture: pick('architecture'), device: pick('device'), description: pick('description') } }) + '\\n')
process.exit(0)
`

function adapterInfo (raw: unknown): AdapterInfo {
  const get = (k: keyof AdapterInfo): string => {
    const v: unknown = typeof raw === 'object' && raw !== null ? (raw as Record<string, unknown>)[k] : undefined
    return typeof v === 'string' ? v : ''
  }
  return { vendor: get('vendor'), architecture: get('architecture'), device: get('device'), description: get('description') }
}

/** Dawn fills `device` with the GPU's name (e.g. Vulkan's deviceName) and `description` with the driver's. */
function adapterName (info: AdapterInfo): string {
  const name = [info.device, info.description, [info.vendor, info.architecture].filter(s => s !== '').join(' ')].find(s => s !== '') ?? 'unnamed WebGPU adapter'
  let cut = name
  while (Buffer.byteLength(cut) > WEBGPU_NAME_MAX_BYTES) cut = cut.slice(0, -1)
  return cut
}

function isSoftware (info: AdapterInfo): boolean {
  return SOFTWARE_ADAPTER.test(`${info.vendor} ${info.device} ${info.description}`)
}

function softwareReason (info: AdapterInfo): string {
  return `only a software WebGPU adapter (${adapterName(info)}), which emulates a GPU on the CPU`
}

/** Dawn's own words from the probe's stderr: its Warning/Error lines, without the source locations that follow each. */
function dawnSays (stderr: string): string {
  const said = stderr.split('\n').map(l => l.trim())
    .filter(l => l !== '' && !l.startsWith('at ') && !l.startsWith('- '))
    .map(l => l.replace(/^(Warning|Error): /, ''))
    .join('; ')
  return said.length > WEBGPU_REASON_MAX_CHARS ? `${said.slice(0, WEBGPU_REASON_MAX_CHARS - 3)}...` : said
}

/** The probe's answer: the adapter found (null: none), or undefined when it printed something else. */
function parseProbe (stdout: string): { adapter: AdapterInfo | null } | undefined {
  const line = stdout.trim().split('\n').pop() ?? ''
  let parsed: unknown
  try { parsed = JSON.parse(line) } catch { return undefined }
  if (typeof parsed !== 'object' || parsed === null || !('adapter' in parsed)) return undefined
  const a = parsed.adapter
  if (a === null) return { adapter: null }
  return typeof a === 'object' ? { adapter: adapterInfo(a) } : undefined
}

async function probeWebgpuAdapter (init: WebgpuCandidateInit): Promise<Availability> {
  let url: string
  try {
    // Resolving finds both packages without loading dawn.node into this thread.
    url = import.meta.resolve('webgpu')
    import.meta.resolve('@tensorflow/tfjs-backend-webgpu')
  } catch (err) {
    return { ok: false, reason: firstLine(errorMessage(err)) }
  }
  const args = JSON.stringify({ options: init.dawnOptions ?? [], featureLevel: init.featureLevel ?? 'core' })
  return await new Promise<Availability>((resolve) => {
    execFile(process.execPath, ['--input-type=module', '-e', WEBGPU_PROBE_SCRIPT, url, args], {
      timeout: WEBGPU_ADAPTER_TIMEOUT_MS, killSignal: 'SIGKILL', maxBuffer: WEBGPU_PROBE_MAX_BUFFER, encoding: 'utf8'
    }, (err, stdout, stderr) => {
      const why = dawnSays(stderr)
      const failure = err as (Error & { code?: number | string, killed?: boolean, signal?: string | null }) | null
      if (failure?.code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER') {
        resolve({ ok: false, reason: `the WebGPU probe printed more than ${WEBGPU_PROBE_MAX_BUFFER} bytes` })
        return
      }
      if (failure?.killed === true) {
        resolve({ ok: false, reason: `no WebGPU adapter within ${WEBGPU_ADAPTER_TIMEOUT_MS} ms (the adapter request hung; probe killed)` })
        return
      }
      if (failure != null) {
        // err.message repeats the whole command line (the script); the exit status says enough.
        const how = typeof failure.code === 'number' ? `exited with code ${failure.code}` : `ended by ${failure.signal ?? String(failure.code)}`
        resolve({ ok: false, reason: `the WebGPU probe ${how}${why === '' ? '' : `: ${why}`}` })
        return
      }
      const found = parseProbe(stdout)
      if (found === undefined) resolve({ ok: false, reason: 'the WebGPU probe gave no answer' })
      else if (found.adapter === null) resolve({ ok: false, reason: `no WebGPU adapter${why === '' ? '' : ` (Dawn: ${why})`}` })
      else if (init.allowSoftware !== true && isSoftware(found.adapter)) resolve({ ok: false, reason: softwareReason(found.adapter) })
      else resolve({ ok: true })
    })
  })
}

async function withTimeout<T> (p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([p, new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => { reject(new BackendInitError(`${what} did not answer within ${ms} ms`)) }, ms)
    })])
  } finally {
    clearTimeout(timer)
  }
}

/**
 * TF.js's webgpu backend through Dawn (the `webgpu` package's dawn.node):
 * any GPU with a Vulkan driver, nothing downloaded at install or run time.
 */
export function webgpuCandidate (init: WebgpuCandidateInit = {}): BackendCandidate {
  // A thread probes once: adapters do not come and go while a node starts,
  // and each probe costs a child process.
  let probed: Promise<Availability> | undefined
  // Dawn lives as long as its GPU object is referenced; the thread that
  // loaded the backend holds it for the rest of its life.
  let held: Gpu | undefined
  let loadedInfo: AdapterInfo | undefined
  return {
    name: 'webgpu',
    available: async () => {
      probed ??= probeWebgpuAdapter(init).catch((err: unknown) => ({ ok: false, reason: firstLine(errorMessage(err)) }))
      return await probed
    },
    load: async () => {
      const tf = await loadCore()
      let webgpu: WebgpuModule
      let backendModule: WebgpuBackendModule
      try {
        webgpu = await importOptional('webgpu') as WebgpuModule
        backendModule = await importOptional('@tensorflow/tfjs-backend-webgpu') as WebgpuBackendModule
      } catch (err) {
        throw new BackendUnavailableError(`backend 'webgpu' does not load: ${firstLine(errorMessage(err))}`, { cause: err })
      }
      // In a browser these are globals: TF.js reads GPUBufferUsage and the
      // like from globalThis, and its backend refuses to start without
      // navigator.gpu. Only this worker thread's globals change.
      Object.assign(globalThis, webgpu.globals)
      const gpu = webgpu.create([...init.dawnOptions ?? []])
      if (!('gpu' in globalThis.navigator)) Object.defineProperty(globalThis.navigator, 'gpu', { value: gpu, configurable: true })
      held = gpu
      const adapter = await withTimeout(gpu.requestAdapter({ powerPreference: 'high-performance', featureLevel: init.featureLevel ?? 'core' }), WEBGPU_ADAPTER_TIMEOUT_MS, 'the WebGPU adapter request')
      if (adapter === null) throw new BackendUnavailableError("backend 'webgpu' does not load: no WebGPU adapter")
      const info = adapterInfo(adapter.info ?? await adapter.requestAdapterInfo?.())
      if (init.allowSoftware !== true && isSoftware(info)) throw new BackendUnavailableError(`backend 'webgpu' does not load: ${softwareReason(info)}`)
      // Registered here rather than by the package's import-time hook, which
      // runs only if navigator.gpu existed when the package was first
      // imported, and asks for its adapter without a time bound. The device
      // gets the adapter's limits, as that hook asks: WebGPU's defaults
      // (128 MiB storage bindings) are far below a GPU's.
      if (tf.findBackendFactory('webgpu') !== null) tf.removeBackend('webgpu')
      tf.registerBackend('webgpu', async () => {
        const l = adapter.limits
        const device = await withTimeout(adapter.requestDevice({
          requiredFeatures: adapter.features.has('timestamp-query') ? ['timestamp-query'] : [],
          requiredLimits: {
            maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
            maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
            maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
            maxBufferSize: l.maxBufferSize,
            maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
            maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup
          }
        }), WEBGPU_ADAPTER_TIMEOUT_MS, 'the WebGPU device request')
        return new backendModule.WebGPUBackend(device, info)
      })
      await activate(tf, 'webgpu')
      loadedInfo = info
      return tf
    },
    gpu: async () => {
      if (loadedInfo === undefined || held === undefined) return undefined
      const name = adapterName(loadedInfo)
      // WebGPU does not report memory; for an NVIDIA adapter nvidia-smi does.
      if (!/nvidia/i.test(`${loadedInfo.vendor} ${name}`)) return { name }
      const smi = await detectGpu()
      return smi?.memoryBytes === undefined ? { name } : { name, memoryBytes: smi.memoryBytes }
    }
  }
}

export const BACKEND_CANDIDATES: readonly BackendCandidate[] = [
  nativeCandidate('tensorflow-gpu', '@tensorflow/tfjs-node-gpu', detectGpu),
  webgpuCandidate(),
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
