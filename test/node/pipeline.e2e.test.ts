import { mkdtempSync, writeFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { decodeNpy, encodeNpy } from '../../src/compute/npy.ts'
import { ApiClient } from '../../src/node/client/api-client.ts'
import { MeshClient } from '../../src/node/client/index.ts'
import { jobForm, readPipeline, submitCommand } from '../../src/node/cli/jobs.ts'
import { TEST_TOKEN, startMesh, stopAll } from '../helpers/mesh.ts'
import { load, numpy, relError } from '../helpers/numpy.ts'
import type { JobView } from '../../src/node/jobs/job.ts'
import type { MeshNode } from '../../src/node/mesh-node.ts'

/**
 * Pipelines: a job's input named as an earlier job's result ({"job": ID})
 * or a stored .npy ({"cid": CID}); the tensor stays in the mesh. Results
 * are checked against numpy: float32 sums of 40 x 2x terms, 1e-5 relative.
 */
describe('pipelines: inputs by job id and by CID', () => {
  let nodes: MeshNode[] = []
  let dir: string
  let api: ApiClient
  let mesh: MeshClient

  beforeAll(async () => {
    dir = numpy(`
rng = np.random.default_rng(5)
x = rng.standard_normal((40, 6)).astype(np.float32)
np.save(f'{out}/x.npy', x)
np.save(f'{out}/sum2x.npy', (2 * x.astype(np.float64)).sum(axis=0).astype(np.float32))
`)
    nodes = await startMesh(2)
    api = new ApiClient(nodes[0]?.apiUrl ?? '', TEST_TOKEN)
    mesh = new MeshClient(nodes[0]?.apiUrl ?? '', { token: TEST_TOKEN })
  })

  afterAll(async () => {
    await stopAll(nodes)
  })

  async function post (body: unknown): Promise<{ status: number, view: JobView & { code?: string, message?: string } }> {
    const res = await api.request('POST', '/v1/jobs', JSON.stringify(body), { 'content-type': 'application/json' }).catch((err: { status?: number, code?: string, message?: string }) => err)
    if (res instanceof Response) return { status: res.status, view: await res.json() as JobView }
    return { status: res.status ?? 0, view: res as JobView & { code?: string, message?: string } }
  }

  async function finished (id: string): Promise<JobView> {
    return await mesh.job(id).wait()
  }

  async function result (id: string): Promise<Float32Array> {
    const res = await api.request('GET', `/v1/jobs/${id}/result`)
    return decodeNpy(new Uint8Array(await res.arrayBuffer()), 'result').data as Float32Array
  }

  it('a job takes an earlier job\'s result by id, and equals numpy', async () => {
    const x = await load(dir, 'x')
    const first = await post({ op: 'map', inputs: { x: { dtype: 'float32', shape: x.shape, data: Array.from(x.data) } }, params: { ops: [{ op: 'mul', value: 2 }] } })
    expect(first.status).toBe(202)
    expect((await finished(first.view.id)).state).toBe('succeeded')
    const second = await post({ op: 'reduce', inputs: { x: { job: first.view.id } }, params: { op: 'sum', axis: 0 } })
    expect(second.status).toBe(202)
    expect((await finished(second.view.id)).state).toBe('succeeded')
    expect(relError(await result(second.view.id), (await load(dir, 'sum2x')).data)).toBeLessThan(1e-5)
  })

  it('a job takes a stored .npy by CID', async () => {
    const x = await load(dir, 'x')
    const put = await api.request('PUT', '/v1/blobs', encodeNpy({ ...x, data: Float32Array.from(x.data, v => 2 * v) }) as Uint8Array<ArrayBuffer>, { 'content-type': 'application/octet-stream' })
    const { cid } = await put.json() as { cid: string }
    const job = await post({ op: 'reduce', inputs: { x: { cid } }, params: { op: 'sum', axis: 0 } })
    expect(job.status).toBe(202)
    expect((await finished(job.view.id)).state).toBe('succeeded')
    expect(relError(await result(job.view.id), (await load(dir, 'sum2x')).data)).toBeLessThan(1e-5)
  })

  it('refuses references that name nothing usable, saying which input', async () => {
    const missing = await post({ op: 'reduce', inputs: { x: { job: 'no-such-job' } }, params: { op: 'sum' } })
    expect(missing.status).toBe(404)
    expect(missing.view).toMatchObject({ code: 'ERR_JOB_NOT_FOUND' })
    expect(missing.view.message).toMatch(/input x/)
    const malformed = await post({ op: 'reduce', inputs: { x: { job: 7 } }, params: { op: 'sum' } })
    expect(malformed.status).toBe(400)
    expect(malformed.view).toMatchObject({ code: 'ERR_BAD_SPEC' })
    const extra = await post({ op: 'reduce', inputs: { x: { job: 'a', cid: 'b' } }, params: { op: 'sum' } })
    expect(extra.status).toBe(400)
    const badCid = await post({ op: 'reduce', inputs: { x: { cid: 'not-a-cid' } }, params: { op: 'sum' } })
    expect(badCid.status).toBe(400)
    expect(badCid.view).toMatchObject({ code: 'ERR_BAD_CID' })
    // A job that has not succeeded has no result to give.
    const x = await load(dir, 'x')
    const failed = await post({ op: 'reduce', inputs: { x: { dtype: 'float32', shape: x.shape, data: Array.from(x.data) } }, params: { op: 'sum', axis: 5 } })
    expect(failed.status).toBe(400)
    // A job that has not finished yet: checked before the job gets a turn to run.
    const running = nodes[0]?.submit({ op: 'map', inputs: { x }, params: { ops: [{ op: 'mul', value: 2 }] } })
    await expect(nodes[0]?.resolveInput('x', { job: running?.id ?? '' })).rejects.toMatchObject({ code: 'ERR_INPUT_NOT_READY', message: expect.stringMatching(/input x: job .* is (queued|running)/) })
    await running?.result()
  })

  it('a pipeline file runs its steps in order on one node, step 1 naming step 0 as {"job": "$0"}', async () => {
    const work = mkdtempSync(join(tmpdir(), 'tm-pipeline-'))
    writeFileSync(join(work, 'x.npy'), await readFile(join(dir, 'x.npy')))
    const file = join(work, 'pipeline.json')
    writeFileSync(file, JSON.stringify([
      { op: 'map', inputs: { x: 'x.npy' }, params: { ops: [{ op: 'mul', value: 2 }] } },
      { op: 'reduce', inputs: { x: { job: '$0' } }, params: { op: 'sum', axis: 0 } }
    ]))
    const steps = await readPipeline(file)
    expect(steps).toHaveLength(2)
    // The second step's form names the first job's id in its spec, and carries no tensor.
    const form = await jobForm(file, steps[1] ?? (undefined as never), ['job-zero'])
    expect(JSON.parse(String(form.get('spec')))).toMatchObject({ inputs: { x: { job: 'job-zero' } } })
    expect(form.get('x')).toBeNull()
    const out = join(work, 'out.npy')
    const code = await submitCommand({ api: nodes[0]?.apiUrl ?? '', token: TEST_TOKEN, file, out, json: true })
    expect(code).toBe(0)
    const got = decodeNpy(await readFile(out), 'out')
    expect(relError(got.data, (await load(dir, 'sum2x')).data)).toBeLessThan(1e-5)
  })

  it('refuses a pipeline step that names itself or a later step', async () => {
    const work = mkdtempSync(join(tmpdir(), 'tm-pipeline-'))
    const file = join(work, 'bad.json')
    writeFileSync(file, JSON.stringify([{ op: 'reduce', inputs: { x: { job: '$0' } }, params: { op: 'sum' } }]))
    await expect(readPipeline(file)).rejects.toMatchObject({ code: 'ERR_JOB_FILE', message: expect.stringMatching(/step \$0/) })
    writeFileSync(file, JSON.stringify([]))
    await expect(readPipeline(file)).rejects.toMatchObject({ code: 'ERR_JOB_FILE' })
  })
})
