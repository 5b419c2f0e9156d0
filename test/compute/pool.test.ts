import { createRequire } from 'node:module'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { BACKEND_NAMES } from '../../src/compute/backend.ts'
import { readNpyFile } from '../../src/compute/npy.ts'
import { matmul } from '../../src/compute/operators/index.ts'
import { ExecutorPool, SHARED_MEMORY_MIN_BYTES } from '../../src/compute/pool.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { maxRelativeError, python as numpy, tempDir } from '../helpers/numpy.ts'
import type { PoolLoad, RunResult } from '../../src/compute/pool.ts'
import type { ShardTask } from '../../src/compute/operators/types.ts'
import { asyncCodeOf as codeOf } from '../helpers/codes.ts'

const TEST_WORKER = new URL('./fixtures/test-worker.ts', import.meta.url)

/**
 * The test's end of the fixture worker's BroadcastChannel: learn when a
 * task has started in a worker, and release a held one.
 */
class Control {
  readonly name = `tensormesh-pool-test-${Math.random().toString(36).slice(2)}`
  private readonly bc = new BroadcastChannel(this.name)
  private readonly seen = new Set<string>()
  private readonly waiting = new Map<string, () => void>()

  constructor () {
    this.bc.onmessage = (evt) => {
      const tag = ((evt as MessageEvent).data as { started?: string }).started
      if (tag === undefined) return
      this.seen.add(tag)
      this.waiting.get(tag)?.()
    }
  }

  task (op: 'hold' | 'spin' | 'fail' | 'crash', tag: string): ShardTask {
    return { op, params: { channel: this.name, tag }, inputs: {} }
  }

  async started (tag: string): Promise<void> {
    if (this.seen.has(tag)) return
    await new Promise<void>((resolve) => { this.waiting.set(tag, resolve) })
  }

  /** Releases a held task once it has started (a release sent earlier would not be heard). */
  async release (tag: string): Promise<void> {
    await this.started(tag)
    this.bc.postMessage({ release: tag })
  }

  close (): void {
    this.bc.close()
  }
}

function smallMatmul (): ShardTask {
  return {
    op: 'matmul',
    params: {},
    inputs: {
      a: hostTensor('float32', [2, 3], Float32Array.from([1, 2, 3, 4, 5, 6])),
      b: hostTensor('float32', [3, 1], Float32Array.from([1, 0, -1]))
    }
  }
}

function expectSmallMatmul (r: RunResult): void {
  expect(r.partial.out?.shape).toEqual([2, 1])
  expect(Array.from(r.partial.out?.data ?? [])).toEqual([-2, -2])
}

describe('executor pool with the real worker', () => {
  const pool = new ExecutorPool({ workers: 2 })
  const { dir, cleanup } = tempDir()
  beforeAll(async () => { await pool.start() })
  afterAll(async () => { await pool.stop(); cleanup() })

  it('starts its workers on a backend and calibrates', () => {
    expect(BACKEND_NAMES).toContain(pool.backend)
    expect(pool.slots).toBe(2)
    expect(pool.busy).toBe(0)
    expect(pool.gflops).toBeGreaterThan(0)
    expect(pool.operators).toEqual(expect.arrayContaining(['matmul', 'map', 'reduce', 'sort', 'topk', 'histogram', 'infer']))
  })

  it('runs a sharded matmul job whose reduced result matches numpy', async () => {
    numpy(`r = np.random.default_rng(11)\na = r.standard_normal((37, 64)).astype('<f4')\nb = r.standard_normal((64, 9)).astype('<f4')\nnp.save(d + '/a.npy', a)\nnp.save(d + '/b.npy', b)\nnp.save(d + '/c.npy', a.astype(np.float64) @ b.astype(np.float64))`, dir)
    const inputs = { a: await readNpyFile(join(dir, 'a.npy')), b: await readNpyFile(join(dir, 'b.npy')) }
    const want = await readNpyFile(join(dir, 'c.npy'))
    const plan = matmul.plan(inputs, {})
    const reducer = matmul.reducer(plan)
    const cuts = [0, 10, 11, 30, 37]
    await Promise.all(cuts.slice(1).map(async (end, index) => {
      const range = { index, start: cuts[index] as number, end }
      // A local shard reads the job's own tensors (all shards share b): copy.
      const { partial, computeMs } = await pool.run(matmul.shard(plan, inputs, range), { transfer: false })
      expect(computeMs).toBeGreaterThanOrEqual(0)
      reducer.add(range, partial)
    }))
    expect(maxRelativeError(reducer.result().data, want.data)).toBeLessThan(1e-4)
    expect(inputs.a.data.length).toBe(37 * 64)
    expect(inputs.b.data.length).toBe(64 * 9)
  })

  it('refuses an input whose buffer was already transferred, and keeps working', async () => {
    const b = hostTensor('float32', [3, 1], Float32Array.from([1, 0, -1]))
    const first = smallMatmul()
    expectSmallMatmul(await pool.run({ ...first, inputs: { a: first.inputs.a!, b } }, { transfer: true }))
    const second = smallMatmul()
    expect(await codeOf(pool.run({ ...second, inputs: { a: second.inputs.a!, b } }, { transfer: true }))).toBe('ERR_DETACHED_INPUT')
    expect(pool.busy).toBe(0)
    expectSmallMatmul(await pool.run(smallMatmul()))
  })

  it('transfer: true copies a view instead of detaching the tensor it belongs to', async () => {
    const whole = Float32Array.from([9, 9, 1, 2, 3, 4, 5, 6])
    const task = smallMatmul()
    const view = hostTensor('float32', [2, 3], whole.subarray(2))
    expectSmallMatmul(await pool.run({ ...task, inputs: { a: view, b: task.inputs.b! } }, { transfer: true }))
    expect(Array.from(whole)).toEqual([9, 9, 1, 2, 3, 4, 5, 6])
  })

  it('transfer: true moves an input that owns its buffer (the caller\'s array is detached)', async () => {
    const task = smallMatmul()
    const a = task.inputs.a?.data as Float32Array
    expectSmallMatmul(await pool.run(task, { transfer: true }))
    expect(a.buffer.byteLength).toBe(0)
    expect(a.length).toBe(0)
  })

  it('transfer: false (the default) copies and leaves the caller\'s arrays intact', async () => {
    const task = smallMatmul()
    const a = task.inputs.a?.data as Float32Array
    expectSmallMatmul(await pool.run(task, { transfer: false }))
    expectSmallMatmul(await pool.run(task))
    expect(Array.from(a)).toEqual([1, 2, 3, 4, 5, 6])
  })

  it('rejects a task that fails validation in the worker with its own code, and keeps working', async () => {
    const bad: ShardTask = { op: 'matmul', params: {}, inputs: { a: hostTensor('float32', [2, 3]), b: hostTensor('float32', [2, 2]) } }
    expect(await codeOf(pool.run(bad))).toBe('ERR_SHAPE_MISMATCH')
    expect(await codeOf(pool.run({ op: 'conv2d', params: {}, inputs: {} }))).toBe('ERR_UNKNOWN_OPERATOR')
    expectSmallMatmul(await pool.run(smallMatmul()))
  })
})

describe('executor pool scheduling and failures', () => {
  let pool: ExecutorPool
  let control: Control
  const loads: PoolLoad[] = []

  beforeAll(async () => {
    pool = new ExecutorPool({ workers: 2, backend: 'cpu', calibrate: false, maxQueue: 2, workerUrl: TEST_WORKER })
    pool.addEventListener('change', (evt) => { loads.push((evt as CustomEvent<PoolLoad>).detail) })
    await pool.start()
  })
  afterAll(async () => { await pool.stop() })
  beforeAll(() => { control = new Control() })
  afterAll(() => { control.close() })
  afterEach(() => {
    // Every test leaves the pool idle with both workers.
    expect(pool.busy).toBe(0)
    expect(pool.queued).toBe(0)
  })

  it('reports itself and is idle after start with calibrate: false', () => {
    expect(pool.backend).toBe('cpu')
    expect(pool.slots).toBe(2)
    expect(pool.gflops).toBe(0)
    expect(pool.operators).toEqual(expect.arrayContaining(['matmul', 'hold', 'fail']))
  })

  it('a large shared input reaches workers in shared memory (copied once per array), a small or unshared one by copy', async () => {
    const big = Float32Array.from({ length: SHARED_MEMORY_MIN_BYTES / 4 }, (_, i) => i % 7)
    const want = big.reduce((a, b) => a + b, 0)
    const probe = async (data: Float32Array, shared: boolean): Promise<number[]> => {
      const task: ShardTask = { op: 'probe', params: {}, inputs: { x: hostTensor('float32', [data.length], data) }, ...(shared ? { shared: ['x'] } : {}) }
      return [...(await pool.run(task)).partial.out?.data ?? []]
    }
    // Twice, so both workers (and a second task on one) read the same shared copy.
    for (let i = 0; i < 3; i++) expect(await probe(big, true)).toEqual([1, big.length, want])
    expect(await probe(big, false)).toEqual([0, big.length, want])
    expect(await probe(Float32Array.of(1, 2, 3), true)).toEqual([0, 3, 6])
    // The caller's array is untouched and still its own.
    expect(big.buffer instanceof SharedArrayBuffer).toBe(false)
    expect(big[8]).toBe(1)
  })

  it('an input already in shared memory (a received shard\'s reused buffer) reaches the worker where it is, even when the caller lets it move', async () => {
    const sab = new SharedArrayBuffer(4 * 1024)
    const data = new Float32Array(sab, 8, 100).fill(2)
    const out = await pool.run({ op: 'probe', params: {}, inputs: { x: hostTensor('float32', [100], data) } }, { transfer: true })
    expect([...out.partial.out?.data ?? []]).toEqual([1, 100, 200])
    // Neither copied nor transferred: still the caller's view of the same memory.
    expect(data.buffer).toBe(sab)
    expect(data[99]).toBe(2)
  })

  it('runs two tasks at once on two workers, queues the third, and moves busy/queued', async () => {
    loads.length = 0
    const p1 = pool.run(control.task('hold', '1'))
    const p2 = pool.run(control.task('hold', '2'))
    const p3 = pool.run(control.task('hold', '3'))
    expect(pool.busy).toBe(2)
    expect(pool.queued).toBe(1)
    // Both are inside map at the same time: each waits for its release.
    await Promise.all([control.started('1'), control.started('2')])
    await control.release('2')
    expect(Array.from((await p2).partial.out?.data ?? [])).toEqual([2])
    await control.started('3')
    await control.release('1')
    await control.release('3')
    const [r1, r3] = await Promise.all([p1, p3])
    expect(Array.from(r1.partial.out?.data ?? [])).toEqual([1])
    expect(Array.from(r3.partial.out?.data ?? [])).toEqual([3])
    expect(Math.max(...loads.map(l => l.busy))).toBe(2)
    expect(Math.max(...loads.map(l => l.queued))).toBe(1)
    expect(loads.at(-1)).toEqual({ slots: 2, busy: 0, queued: 0 })
  })

  it('refuses work past the queue bound with ERR_QUEUE_FULL', async () => {
    const running = [pool.run(control.task('hold', 'q1')), pool.run(control.task('hold', 'q2'))]
    const queued = [pool.run(control.task('hold', 'q3')), pool.run(control.task('hold', 'q4'))]
    expect(pool.queued).toBe(2)
    expect(await codeOf(pool.run(control.task('hold', 'q5')))).toBe('ERR_QUEUE_FULL')
    await Promise.all(['q1', 'q2', 'q3', 'q4'].map(async tag => { await control.release(tag) }))
    await Promise.all([...running, ...queued])
  })

  it('aborting a queued task removes it from the queue', async () => {
    const held = [pool.run(control.task('hold', 'a1')), pool.run(control.task('hold', 'a2'))]
    const ac = new AbortController()
    const queued = pool.run(smallMatmul(), { signal: ac.signal })
    expect(pool.queued).toBe(1)
    ac.abort()
    expect(await codeOf(queued)).toBe('ERR_ABORTED')
    expect(pool.queued).toBe(0)
    await Promise.all([control.started('a1'), control.started('a2')])
    await control.release('a1')
    await control.release('a2')
    await Promise.all(held)
    expect(pool.restarts).toBe(0)
  })

  it('an already aborted signal is refused before queueing', async () => {
    expect(await codeOf(pool.run(smallMatmul(), { signal: AbortSignal.abort() }))).toBe('ERR_ABORTED')
  })

  it('aborting a running task ends its worker and starts a fresh one', async () => {
    const before = pool.restarts
    const ac = new AbortController()
    const spinning = pool.run(control.task('spin', 's1'), { signal: ac.signal })
    await control.started('s1')
    ac.abort()
    expect(await codeOf(spinning)).toBe('ERR_ABORTED')
    expect(pool.restarts).toBe(before + 1)
    expect(pool.slots).toBe(2)
    // Two tasks held at once need both workers: the spinning one is gone.
    const held = [pool.run(control.task('hold', 's2')), pool.run(control.task('hold', 's3'))]
    await Promise.all([control.started('s2'), control.started('s3')])
    await control.release('s2')
    await control.release('s3')
    await Promise.all(held)
  })

  it('an error thrown by map rejects with ERR_MAP_FAILED and the worker keeps serving', async () => {
    const before = pool.restarts
    const err = await pool.run(control.task('fail', 'f1')).catch((e: unknown) => e as Error)
    expect((err as { code?: string }).code).toBe('ERR_MAP_FAILED')
    expect((err as Error).message).toContain('deliberate failure in map')
    expectSmallMatmul(await pool.run(smallMatmul()))
    expect(pool.restarts).toBe(before)
  })

  it('a worker that crashes is replaced and its task rejects with ERR_WORKER_CRASHED', async () => {
    const before = pool.restarts
    expect(await codeOf(pool.run(control.task('crash', 'c1')))).toBe('ERR_WORKER_CRASHED')
    expect(pool.restarts).toBe(before + 1)
    const held = [pool.run(control.task('hold', 'c2')), pool.run(control.task('hold', 'c3'))]
    await Promise.all([control.started('c2'), control.started('c3')])
    await control.release('c2')
    await control.release('c3')
    await Promise.all(held)
  })
})

describe('executor pool lifecycle', () => {
  it('refuses work before start and after stop, and stop rejects running work', async () => {
    const pool = new ExecutorPool({ workers: 1, backend: 'cpu', calibrate: false, workerUrl: TEST_WORKER })
    expect(await codeOf(pool.run(smallMatmul()))).toBe('ERR_POOL_NOT_RUNNING')
    await pool.start()
    const control = new Control()
    try {
      const held = codeOf(pool.run(control.task('hold', 'l1')))
      const queued = codeOf(pool.run(smallMatmul()))
      await control.started('l1')
      await pool.stop()
      expect(await held).toBe('ERR_POOL_NOT_RUNNING')
      expect(await queued).toBe('ERR_POOL_NOT_RUNNING')
      expect(pool.slots).toBe(0)
      expect(await codeOf(pool.run(smallMatmul()))).toBe('ERR_POOL_NOT_RUNNING')
    } finally {
      control.close()
      await pool.stop()
    }
  })

  it('an explicit backend that does not load fails start with ERR_BACKEND_UNAVAILABLE', async () => {
    // tfjs-node-gpu is only chosen with a visible GPU, so this holds on any machine without one.
    const pool = new ExecutorPool({ workers: 1, backend: 'tensorflow-gpu', calibrate: false })
    const code = await codeOf(pool.start())
    if (code === undefined) {
      await pool.stop()
      expect(pool.gpu).toBeDefined()
    } else {
      expect(code).toBe('ERR_BACKEND_UNAVAILABLE')
      expect(pool.slots).toBe(0)
    }
  })

  it('stop() during start() ends the start with ERR_POOL_NOT_RUNNING and leaves no worker', async () => {
    const pool = new ExecutorPool({ workers: 2, backend: 'cpu' })
    const starting = codeOf(pool.start())
    await pool.stop()
    expect(await starting).toBe('ERR_POOL_NOT_RUNNING')
    expect(pool.slots).toBe(0)
    // And it can start again afterwards.
    await pool.start()
    expect(pool.slots).toBe(2)
    await pool.stop()
  })

  it('never loads TF.js on the main thread', async () => {
    const pool = new ExecutorPool({ workers: 1 })
    await pool.start()
    try {
      expectSmallMatmul(await pool.run(smallMatmul()))
    } finally {
      await pool.stop()
    }
    const loaded = Object.keys(createRequire(import.meta.url).cache).filter(k => k.includes('@tensorflow'))
    expect(loaded).toEqual([])
  })

  it('checks its options', () => {
    expect(() => new ExecutorPool({ workers: 0 })).toThrow(expect.objectContaining({ code: 'ERR_BAD_OPTION' }))
    expect(() => new ExecutorPool({ maxQueue: -1 })).toThrow(expect.objectContaining({ code: 'ERR_BAD_OPTION' }))
  })
})
