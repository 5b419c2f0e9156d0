import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { BACKEND_CANDIDATES, BACKEND_NAMES, WEBGPU_ADAPTER_TIMEOUT_MS, resolveBackend, webgpuCandidate } from '../../src/compute/backend.ts'
import { readNpyFile } from '../../src/compute/npy.ts'
import { ExecutorPool } from '../../src/compute/pool.ts'
import { maxRelativeError, python as numpy, tempDir } from '../helpers/numpy.ts'
import type { Availability, BackendCandidate, BackendName } from '../../src/compute/backend.ts'

function real (name: BackendName): BackendCandidate {
  const c = BACKEND_CANDIDATES.find(c => c.name === name)
  if (c === undefined) throw new Error(`no candidate ${name}`)
  return c
}

async function timed (c: BackendCandidate): Promise<{ a: Availability, ms: number }> {
  const t0 = performance.now()
  const a = await c.available()
  return { a, ms: performance.now() - t0 }
}

/** A candidate probed with these environment variables (the probe's child process inherits them). */
async function withEnv<T> (env: Record<string, string>, f: () => Promise<T>): Promise<T> {
  const before = Object.fromEntries(Object.keys(env).map(k => [k, process.env[k]]))
  Object.assign(process.env, env)
  try {
    return await f()
  } finally {
    for (const [k, v] of Object.entries(before)) {
      if (v === undefined) Reflect.deleteProperty(process.env, k)
      else process.env[k] = v
    }
  }
}

// Known before the tests are collected, so the GPU test can be skipped with the reason.
const here = await timed(real('webgpu'))
const skipWhy = here.a.ok ? '' : here.a.reason

// The probe's own bound plus a Node start for its child process (well under a second).
const ANSWER_WITHIN_MS = WEBGPU_ADAPTER_TIMEOUT_MS + 5_000

describe('webgpu backend candidate', () => {
  it('comes after tensorflow-gpu and before the CPU backends', () => {
    expect(BACKEND_NAMES.indexOf('webgpu')).toBe(BACKEND_NAMES.indexOf('tensorflow-gpu') + 1)
    expect(BACKEND_NAMES.indexOf('webgpu')).toBeLessThan(BACKEND_NAMES.indexOf('tensorflow'))
  })

  it('answers here within its timeout, and when it does not load says why in one line', () => {
    expect(here.ms).toBeLessThan(ANSWER_WITHIN_MS)
    if (!here.a.ok) {
      expect(here.a.reason).toMatch(/WebGPU|webgpu/)
      expect(here.a.reason).not.toMatch(/\n/)
    }
  })

  it('with no Vulkan driver to load, answers {ok: false} with "no WebGPU adapter" and Dawn\'s reason', async () => {
    // A driver list naming only a missing file leaves the loader (if any) no driver.
    const { a, ms } = await withEnv({ VK_DRIVER_FILES: '/nonexistent/tensormesh-test-icd.json', VK_ICD_FILENAMES: '/nonexistent/tensormesh-test-icd.json' },
      async () => await timed(webgpuCandidate()))
    expect(ms).toBeLessThan(ANSWER_WITHIN_MS)
    expect(a.ok).toBe(false)
    const reason = a.ok ? '' : a.reason
    expect(reason).toMatch(/^no WebGPU adapter \(Dawn: .+\)$/)
    expect(reason).not.toMatch(/\n/)
  })

  it('auto passes over a webgpu that does not load and takes wasm', async () => {
    const noDriver = webgpuCandidate()
    const refused = await withEnv({ VK_DRIVER_FILES: '/nonexistent/tensormesh-test-icd.json', VK_ICD_FILENAMES: '/nonexistent/tensormesh-test-icd.json' },
      async () => await noDriver.available())
    expect(refused.ok).toBe(false)
    // The probe is cached per candidate, so `auto` sees the same answer.
    expect(await resolveBackend('auto', [noDriver, real('wasm'), real('cpu')])).toBe('wasm')
    // On the real list, auto takes webgpu exactly when it loads and tensorflow-gpu does not.
    const auto = await resolveBackend('auto')
    expect(auto === 'webgpu').toBe(here.a.ok && !(await real('tensorflow-gpu').available()).ok)
  })

  it("refuses Dawn's null adapter (no GPU behind it) by default; allowed, the backend registers and activates", async () => {
    const plain = await webgpuCandidate({ dawnOptions: ['backend=null'] }).available()
    expect(plain).toEqual({ ok: false, reason: 'only a software WebGPU adapter (null-backend), which emulates a GPU on the CPU' })
    const allowed = webgpuCandidate({ dawnOptions: ['backend=null'], allowSoftware: true })
    expect(await allowed.available()).toEqual({ ok: true })
    const tf = await allowed.load()
    expect(tf.getBackend()).toBe('webgpu')
    expect(await allowed.gpu?.()).toEqual({ name: 'null-backend' })
  })
})

describe('webgpu on a GPU', () => {
  const { dir, cleanup } = tempDir()
  const pool = new ExecutorPool({ workers: 1, backend: 'webgpu' })
  afterAll(async () => { await pool.stop(); cleanup() })

  // fp32 products of 256 terms: rounding is ~1e-6 of the largest term; 1e-4 leaves room for
  // a GPU's fused multiply-adds and summation order, and still fails any wrong kernel.
  const TOLERANCE = 1e-4
  it.skipIf(!here.a.ok)(`loads in an executor worker and a 256x256 matmul matches numpy within ${TOLERANCE}${skipWhy === '' ? '' : ` (skipped: ${skipWhy})`}`, async () => {
    await pool.start()
    expect(pool.backend).toBe('webgpu')
    expect(pool.gpu?.name).toMatch(/\S/)
    expect(pool.gflops).toBeGreaterThan(0)
    numpy(`r = np.random.default_rng(17)\na = r.standard_normal((256, 256)).astype('<f4')\nb = r.standard_normal((256, 256)).astype('<f4')\nnp.save(d + '/a.npy', a)\nnp.save(d + '/b.npy', b)\nnp.save(d + '/c.npy', a.astype(np.float64) @ b.astype(np.float64))`, dir)
    const a = await readNpyFile(join(dir, 'a.npy'))
    const b = await readNpyFile(join(dir, 'b.npy'))
    const want = await readNpyFile(join(dir, 'c.npy'))
    const { partial } = await pool.run({ op: 'matmul', params: {}, inputs: { a, b } })
    expect(partial.out?.shape).toEqual([256, 256])
    expect(maxRelativeError(partial.out?.data ?? [], want.data)).toBeLessThan(TOLERANCE)
  })
})
