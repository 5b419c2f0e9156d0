import { existsSync, readdirSync, rmSync } from 'node:fs'
import { mkdir, mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { ApiClient, connect } from '../../src/node/client/index.ts'
import { initMlp, mlpArtifacts } from '../../src/compute/operators/mlp.ts'
import { packModel } from '../../src/compute/model.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { startNode, stopAll } from '../helpers/mesh.ts'
import { fillFilesystem, mountTmpfs } from '../helpers/tmpfs.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'
import type { MeshNode } from '../../src/node/mesh-node.ts'

const KiB = 1024
const MiB = 1024 * KiB

/** Folders this file makes, removed when it ends. */
const scratchDirs: string[] = []
async function scratch (): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'tm-storage-'))
  scratchDirs.push(dir)
  return dir
}

let nodes: MeshNode[] = []
afterEach(async () => {
  await stopAll(nodes)
  nodes = []
})

function bytesOf (n: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 131 + seed * 17 + (i >> 8)) & 0xff)
}

function matrix (rows: number, cols: number, seed: number): HostTensor {
  return hostTensor('float32', [rows, cols], Float32Array.from({ length: rows * cols }, (_, i) => ((i * 7 + seed) % 13) - 6))
}

/** A · B in float64, rounded to float32: the reference for matmul. */
function product (a: HostTensor, b: HostTensor): Float32Array {
  const [n = 0, k = 0] = a.shape
  const m = b.shape[1] ?? 0
  const out = new Float32Array(n * m)
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < m; j++) {
      let s = 0
      for (let t = 0; t < k; t++) s += (a.data[i * k + t] ?? 0) * (b.data[t * m + j] ?? 0)
      out[i * m + j] = s
    }
  }
  return out
}

/** A small classification set for a 4-feature, 3-class MLP. */
function trainInputs (): Record<string, HostTensor> {
  const rows = (n: number, seed: number): { x: HostTensor, y: HostTensor } => {
    const x = Float32Array.from({ length: n * 4 }, (_, i) => Math.sin(i * 1.7 + seed))
    const y = Int32Array.from({ length: n }, (_, r) => (x[r * 4] ?? 0) > 0.3 ? 2 : (x[r * 4] ?? 0) > -0.3 ? 1 : 0)
    return { x: hostTensor('float32', [n, 4], x), y: hostTensor('int32', [n], y) }
  }
  const train = rows(48, 1)
  const test = rows(16, 2)
  return { x: train.x, y: train.y, xTest: test.x, yTest: test.y }
}

async function put (api: ApiClient, bytes: Uint8Array): Promise<string> {
  const res = await api.request('PUT', '/v1/blobs', bytes as Uint8Array<ArrayBuffer>, { 'content-type': 'application/octet-stream' })
  return (await res.json() as { cid: string }).cid
}

async function refusal (p: Promise<unknown>): Promise<{ status?: number, code?: string, message?: string }> {
  try {
    await p
  } catch (err) {
    return err as { status?: number, code?: string, message?: string }
  }
  throw new Error('expected ERR_STORAGE_FULL, but the request was taken')
}

describe('storage budget', () => {
  it('evicts unreferenced blobs least recently used first, never a kept train job\'s model nor a blob a running job names; what cannot fit gets 507 ERR_STORAGE_FULL', async () => {
    let open!: () => void
    const gate = new Promise<void>(resolve => { open = resolve })
    let reached!: () => void
    const holding = new Promise<void>(resolve => { reached = resolve })
    const dataDir = await scratch()
    const node = await startNode({
      dataDir,
      maxStorageBytes: 2 * MiB,
      // The infer job stays running (past its bids) until the test opens the gate.
      hooks: { afterBids: async (job) => { if (job.op === 'infer') { reached(); await gate } } }
    })
    nodes = [node]
    const url = node.apiUrl ?? ''
    const api = new ApiClient(url)
    const client = connect(url)
    const onDisk = (cid: string): boolean => existsSync(join(dataDir, 'blobs', cid))
    const evicted = (): number => node.info().storage?.evictedBlobs ?? 0

    // A train job's model: kept for as long as the job's record is.
    const train = node.submit({ op: 'train', inputs: trainInputs(), params: { layers: [4, 8, 3], rounds: 2 } })
    await train.result()
    await train.persisted
    const modelCid = train.model?.cid ?? ''
    expect(onDisk(modelCid)).toBe(true)

    // An uploaded model that a running infer job names by CID.
    const spec = { layers: [4, 16, 3], activation: 'relu' as const }
    const named = await put(api, packModel(mlpArtifacts(spec, initMlp(spec, 3))))
    const infer = await client.submit({ op: 'infer', inputs: { x: { dtype: 'float32', shape: [8, 4], data: new Float32Array(32).fill(0.5) } }, model: named })
    await holding
    expect((await infer.view()).state).toBe('running')

    // Five uploads of 256 KiB fit; reading the first makes it the most recently used.
    const size = 256 * KiB
    const uploads: string[] = []
    for (let i = 0; i < 5; i++) uploads.push(await put(api, bytesOf(size, i)))
    expect(evicted()).toBe(0)
    await api.request('GET', `/v1/blobs/${uploads[0] ?? ''}`)
    const lru = [...uploads.slice(1), uploads[0] ?? '']
    // More uploads until the budget makes the store evict.
    for (let i = 5; evicted() === 0; i++) {
      if (i > 12) throw new Error(`no eviction after ${i} uploads of ${size} bytes into a 2 MiB budget`)
      lru.push(await put(api, bytesOf(size, i)))
    }
    await expect.poll(() => lru.filter(c => !onDisk(c)).length, { message: 'every blob evicted is one of the unreferenced uploads' }).toBe(evicted())
    const gone = lru.filter(c => !onDisk(c))
    expect(gone.length).toBeGreaterThan(0)
    expect(gone).toEqual(lru.slice(0, gone.length)) // least recently used first
    expect(onDisk(modelCid)).toBe(true)
    expect(onDisk(named)).toBe(true)
    expect(await refusal(api.request('GET', `/v1/blobs/${gone[0] ?? ''}`))).toMatchObject({ status: 404, code: 'ERR_BLOB_NOT_FOUND' })
    const storage = node.info().storage
    expect(storage?.usedBytes).toBeLessThanOrEqual(2 * MiB)
    expect(storage?.maxBytes).toBe(2 * MiB)

    // What cannot fit even after evicting everything unreferenced: 507, and nothing evicted for it.
    const before = evicted()
    const bigBlob = await refusal(put(api, bytesOf(2 * MiB, 99)))
    expect(bigBlob).toMatchObject({ status: 507, code: 'ERR_STORAGE_FULL' })
    expect(bigBlob.message).toContain('storage budget')
    const jobsBefore = node.jobs.list().length
    const bigJob = await refusal(client.submit({ op: 'matmul', inputs: { a: matrix(512, 512, 1), b: matrix(512, 512, 2) } }))
    expect(bigJob).toMatchObject({ status: 507, code: 'ERR_STORAGE_FULL' })
    expect(() => node.submit({ op: 'matmul', inputs: { a: matrix(512, 512, 1), b: matrix(512, 512, 2) } })).toThrow(expect.objectContaining({ code: 'ERR_STORAGE_FULL' }) as Error)
    expect(node.jobs.list().length).toBe(jobsBefore)
    expect(evicted()).toBe(before)

    // A job that fits by evicting is taken, evicts the next blobs in line, and succeeds.
    const a = matrix(160, 256, 3)
    const b = matrix(256, 64, 4)
    const fits = await client.submit({ op: 'matmul', inputs: { a, b } })
    expect(await fits.wait()).toMatchObject({ state: 'succeeded' })
    expect([...(await fits.result()).data]).toEqual([...product(a, b)])
    expect(evicted()).toBeGreaterThan(before)
    expect(onDisk(modelCid)).toBe(true)
    expect(onDisk(named)).toBe(true)

    // Once the infer job is done, its model is an ordinary blob, and the oldest one: the next to go.
    open()
    expect(await infer.wait()).toMatchObject({ state: 'succeeded' })
    const mark = evicted()
    for (let i = 50; evicted() === mark; i++) {
      if (i > 60) throw new Error('no eviction after 10 more uploads')
      await put(api, bytesOf(size, i))
    }
    await expect.poll(() => onDisk(named)).toBe(false)
    expect(onDisk(modelCid)).toBe(true)
    const model = await api.request('GET', `/v1/jobs/${train.id}/model`)
    expect((await model.arrayBuffer()).byteLength).toBe(train.model?.bytes)
  })

  it('finished results survive a restart on the same data directory and read back; a restart under a smaller budget starts, serves them and evicts only blobs', async () => {
    const dataDir = await scratch()
    const first = await startNode({ dataDir, maxStorageBytes: 8 * MiB })
    nodes = [first]
    const a = matrix(96, 64, 5)
    const b = matrix(64, 32, 6)
    const job = first.submit({ op: 'matmul', inputs: { a, b } })
    await job.result()
    await job.persisted
    const api = new ApiClient(first.apiUrl ?? '')
    const old = await put(api, bytesOf(512 * KiB, 1))
    await first.stop()

    // Measured again at start: the result and the blob are there.
    const second = await startNode({ dataDir, maxStorageBytes: 8 * MiB })
    nodes = [second]
    expect(second.info().storage?.usedBytes).toBeGreaterThan(512 * KiB + 96 * 32 * 4)
    const restored = second.jobs.get(job.id)
    expect(restored.state).toBe('succeeded')
    expect([...(await restored.result()).data]).toEqual([...product(a, b)])
    await second.stop()

    // 600 KiB is less than the data directory holds: it starts anyway, serves the result, and the
    // first upload makes the old blob go; the journal's result is never evicted.
    const third = await startNode({ dataDir, maxStorageBytes: 600 * KiB })
    nodes = [third]
    const used = third.info().storage?.usedBytes ?? 0
    expect(used).toBeGreaterThan(512 * KiB)
    const api3 = new ApiClient(third.apiUrl ?? '')
    const res = await api3.request('GET', `/v1/jobs/${job.id}/result`)
    expect((await res.arrayBuffer()).byteLength).toBeGreaterThan(96 * 32 * 4)
    await put(api3, bytesOf(64 * KiB, 2))
    expect(third.info().storage?.evictedBlobs).toBe(1)
    await expect.poll(() => existsSync(join(dataDir, 'blobs', old))).toBe(false)
    expect([...(await third.jobs.get(job.id).result()).data]).toEqual([...product(a, b)])
    // More than the budget can ever take: refused.
    expect(await refusal(put(api3, bytesOf(600 * KiB, 3)))).toMatchObject({ status: 507, code: 'ERR_STORAGE_FULL' })
  })

  it('a training job stopped between rounds resumes from its last checkpoint (one file per round) and finishes every round once', async () => {
    const dataDir = await scratch()
    const first = await startNode({ dataDir })
    nodes = [first]
    const job = first.submit({ op: 'train', inputs: trainInputs(), params: { layers: [4, 8, 3], rounds: 8 } })
    await new Promise<void>(resolve => {
      job.addEventListener('progress', () => { if (job.progress.done >= 2) resolve() })
    })
    await job.persisted
    await first.stop()
    const files = readdirSync(join(dataDir, 'jobs', job.id)).filter(f => f.startsWith('ckpt-'))
    expect(files).toHaveLength(1)
    expect(files[0]).toMatch(/^ckpt-\d+\.npy$/)

    const round = Number(/^ckpt-(\d+)/.exec(files[0] ?? '')?.[1])
    expect(round).toBeGreaterThanOrEqual(2)

    // Each round is a sub-job JOB-rN: after the restart the first one is the round after the checkpoint.
    const rounds: string[] = []
    const second = await startNode({ dataDir, hooks: { afterBids: (sub) => { rounds.push(sub.id) } } })
    nodes = [second]
    const resumed = second.jobs.get(job.id)
    await resumed.result()
    expect(resumed.state).toBe('succeeded')
    expect(rounds[0]).toBe(`${job.id}-r${round + 1}`)
    expect(rounds).toHaveLength(8 - round)
    expect(resumed.metrics?.rounds.map(r => r.round)).toEqual([1, 2, 3, 4, 5, 6, 7, 8])
    expect(resumed.model?.cid).toMatch(/^baf/)
    await resumed.persisted
    expect(readdirSync(join(dataDir, 'jobs', job.id))).toEqual(['result.npy'])
  })

  it('a model\'s training stopped after an epoch resumes from that epoch\'s checkpoint, with its optimizer state', async () => {
    const dataDir = await scratch()
    const first = await startNode({ dataDir })
    nodes = [first]
    // A weightless 4 -> 3 softmax layers-model; 48 rows at batch 8: 6 steps an epoch.
    const topology = { class_name: 'Sequential', config: { name: 'tiny', layers: [{ class_name: 'Dense', config: { name: 'out', units: 3, activation: 'softmax', batch_input_shape: [null, 4] } }] } }
    const model = packModel({ modelTopology: topology, weightSpecs: [], weightData: new ArrayBuffer(0) })
    const spec = { op: 'train', inputs: trainInputs(), params: { batchSize: 8, epochs: 4, optimizer: { name: 'adam', learningRate: 0.05 } }, blobs: { model } }
    const job = first.submit(spec)
    await new Promise<void>(resolve => {
      job.addEventListener('progress', () => { if ((job.metrics?.rounds.length ?? 0) >= 1) resolve() })
    })
    await job.persisted
    await first.stop()
    const files = readdirSync(join(dataDir, 'jobs', job.id)).filter(f => f.startsWith('ckpt-'))
    expect(files).toHaveLength(1)
    const epoch = Number(/^ckpt-(\d+)/.exec(files[0] ?? '')?.[1])
    expect(epoch).toBeGreaterThanOrEqual(1)

    const steps: string[] = []
    const second = await startNode({ dataDir, hooks: { afterBids: (sub) => { steps.push(sub.id) } } })
    nodes = [second]
    const resumed = second.jobs.get(job.id)
    await resumed.result()
    expect(resumed.error).toBeUndefined()
    expect(resumed.state).toBe('succeeded')
    // Steps are numbered through the job: the first after the restart is the first of the next epoch.
    expect(steps[0]).toBe(`${job.id}-s${epoch * 6 + 1}`)
    expect(steps).toHaveLength((4 - epoch) * 6)
    expect(resumed.metrics?.rounds.map(r => r.round)).toEqual([1, 2, 3, 4])
    expect(resumed.metrics?.progress).toEqual({ done: 24, total: 24, unit: 'steps' })
    expect(resumed.model?.cid).toMatch(/^baf/)
    // The same job run straight through, on a fresh node, ends on the same weights: the checkpoint kept Adam's moments.
    const third = await startNode({ dataDir: await scratch() })
    nodes = [second, third]
    const straight = third.submit(spec)
    await straight.result()
    const a = resumed.output?.data as Float32Array
    const b = straight.output?.data as Float32Array
    expect(Math.max(...Array.from(a, (v, i) => Math.abs(v - (b[i] ?? 0))))).toBeLessThan(1e-5)
  })
})

// A real full filesystem: a tiny tmpfs, mounted as root. Elsewhere this test is skipped, saying why.
const fs8 = mountTmpfs('8m', 'storage.e2e.test.ts')
const tmpfs = fs8.dir
const mounted = fs8.mounted

afterAll(async () => {
  await stopAll(nodes) // a node still holds the journal open when a test failed half way
  fs8.remove()
  for (const dir of scratchDirs) rmSync(dir, { recursive: true, force: true })
})

describe.skipIf(!mounted)('a full filesystem (8 MiB tmpfs)', () => {
  it('refuses jobs and uploads with 507 ERR_STORAGE_FULL; finished results and the journal survive a restart on the full disk; room again once space is freed', async () => {
    const dataDir = join(tmpfs, 'node')
    await mkdir(dataDir)
    const first = await startNode({ dataDir }) // the default budget (10 GiB) is far beyond this disk
    nodes = [first]
    const a = matrix(64, 48, 7)
    const b = matrix(48, 16, 8)
    const done = first.submit({ op: 'matmul', inputs: { a, b } })
    await done.result()
    await done.persisted
    const api = new ApiClient(first.apiUrl ?? '')
    const client = connect(first.apiUrl ?? '')
    const kept = await put(api, bytesOf(64 * KiB, 1))

    const filler = fillFilesystem(tmpfs)
    let freed = false
    try {
      expect(first.info().storage?.diskFreeBytes).toBe(0)
      const upload = await refusal(put(api, bytesOf(16 * KiB, 2)))
      expect(upload).toMatchObject({ status: 507, code: 'ERR_STORAGE_FULL' })
      expect(upload.message).toContain('filesystem')
      expect(await refusal(client.submit({ op: 'matmul', inputs: { a, b } }))).toMatchObject({ status: 507, code: 'ERR_STORAGE_FULL' })
      expect(await refusal(api.json('POST', '/v1/jobs', { op: 'matmul', inputs: { a: { shape: [1, 1], data: [2] }, b: { shape: [1, 1], data: [3] } } }))).toMatchObject({ status: 507, code: 'ERR_STORAGE_FULL' })
      // What it has, it still serves.
      const res = await api.request('GET', `/v1/jobs/${done.id}/result`)
      expect(res.status).toBe(200)
      await first.stop()

      // Restarted on the still-full disk: the journal opens and the finished job reads back from it.
      const second = await startNode({ dataDir })
      nodes = [second]
      const restored = second.jobs.get(done.id)
      expect(restored.state).toBe('succeeded')
      expect([...(await restored.result()).data]).toEqual([...product(a, b)])
      const api2 = new ApiClient(second.apiUrl ?? '')
      expect(new Uint8Array(await (await api2.request('GET', `/v1/blobs/${kept}`)).arrayBuffer())).toEqual(bytesOf(64 * KiB, 1))
      expect(await refusal(put(api2, bytesOf(1, 3)))).toMatchObject({ status: 507, code: 'ERR_STORAGE_FULL' })

      // Space freed: jobs are taken again, without a restart.
      rmSync(filler)
      freed = true
      const again = second.submit({ op: 'matmul', inputs: { a, b } })
      expect([...(await again.result()).data]).toEqual([...product(a, b)])
      await again.persisted
      await second.stop()
      const third = await startNode({ dataDir })
      nodes = [third]
      expect(third.jobs.list().map(j => [j.id, j.state]).sort()).toEqual([[done.id, 'succeeded'], [again.id, 'succeeded']].sort())
    } finally {
      if (!freed) rmSync(filler, { force: true })
    }
  })
})
