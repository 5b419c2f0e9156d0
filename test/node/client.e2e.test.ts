import { createServer } from 'node:http'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { connect, resolveToken } from '../../src/node/client/index.ts'
import { startMesh, stopAll } from '../helpers/mesh.ts'
import { load, numpy, relError } from '../helpers/numpy.ts'
import type { AddressInfo } from 'node:net'
import type { JobView } from '../../src/node/client/index.ts'
import type { MeshNode } from '../../src/node/mesh-node.ts'

/** float32 products over k = 300 terms: 1e-4 of the largest entry. */
const MATMUL_TOLERANCE = 1e-4

describe('the TS client (tensormesh/client) against a two-node mesh', () => {
  let nodes: MeshNode[] = []
  let dir: string

  beforeAll(async () => {
    dir = numpy(`
rng = np.random.default_rng(11)
a = rng.standard_normal((64, 300)).astype(np.float32)
b = rng.standard_normal((300, 17)).astype(np.float32)
np.save(f'{out}/a.npy', a); np.save(f'{out}/b.npy', b)
np.save(f'{out}/ab.npy', (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32))
`)
    nodes = await startMesh(2)
  })

  afterAll(async () => {
    await stopAll(nodes)
  })

  it('submits tensors, follows the event stream to the end and reads the result', async () => {
    const mesh = connect(nodes[0]?.apiUrl ?? '')
    expect((await mesh.node()).peerId).toBe(nodes[0]?.peerId.toString())
    expect((await mesh.peers()).map(p => p.peerId)).toEqual([nodes[1]?.peerId.toString()])
    const job = await mesh.submit({ op: 'matmul', inputs: { a: await load(dir, 'a'), b: await load(dir, 'b') } })
    const seen: JobView[] = []
    const final = await job.wait(v => { seen.push(v) })
    expect(final.state).toBe('succeeded')
    expect(seen.length).toBeGreaterThan(0)
    expect(seen.at(-1)?.finishedAt).toBeDefined()
    const out = await job.result()
    expect(out.shape).toEqual([64, 17])
    expect(relError(out.data, (await load(dir, 'ab')).data)).toBeLessThan(MATMUL_TOLERANCE)
    expect((await mesh.jobs()).map(j => j.id)).toContain(job.id)
  })

  it('names the problem: mismatched shapes are a 400 with a code, an unknown job a 404, a dead node ERR_UNREACHABLE', async () => {
    const mesh = connect(nodes[0]?.apiUrl ?? '')
    const a = await load(dir, 'a')
    await expect(mesh.submit({ op: 'matmul', inputs: { a, b: a } })).rejects.toMatchObject({ name: 'ApiError', status: 400 })
    await expect(mesh.job('nope').view()).rejects.toMatchObject({ status: 404, code: 'ERR_JOB_NOT_FOUND' })
    // A data array that does not fill its shape is refused before any request.
    await expect(mesh.submit({ op: 'map', inputs: { x: { dtype: 'float32', shape: [3, 3], data: new Float32Array(4) } } })).rejects.toThrow(/shape/)
    const closed = createServer()
    await new Promise<void>(resolve => { closed.listen(0, '127.0.0.1', resolve) })
    const port = (closed.address() as AddressInfo).port
    await new Promise<void>(resolve => { closed.close(() => { resolve() }) })
    await expect(connect(`http://127.0.0.1:${port}`).node()).rejects.toMatchObject({ code: 'ERR_UNREACHABLE', message: expect.stringContaining(`127.0.0.1:${port}`) })
  })

  it('cancels a job: the record says cancelled and result() rejects with the job\'s code', async () => {
    const mesh = connect(nodes[0]?.apiUrl ?? '')
    const n = 1024
    const big = { dtype: 'float32' as const, shape: [n, n], data: new Float32Array(n * n).fill(1) }
    const job = await mesh.submit({ op: 'matmul', inputs: { a: big, b: big }, schedule: { shardsPerPeer: 64 } })
    const view = await job.cancel()
    expect(view.state).toBe('cancelled')
    await expect(job.result()).rejects.toMatchObject({ code: 'ERR_CANCELLED' })
  })
})

describe('the client token', () => {
  it('comes from the option, else TENSORMESH_TOKEN, else DATA_DIR/api-token, else none', () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'tm-token-'))
    const empty = mkdtempSync(join(tmpdir(), 'tm-token-'))
    writeFileSync(join(dataDir, 'api-token'), 'from-file\n')
    expect(resolveToken({ token: 'given', dataDir }, { TENSORMESH_TOKEN: 'from-env' })).toBe('given')
    expect(resolveToken({ dataDir }, { TENSORMESH_TOKEN: 'from-env' })).toBe('from-env')
    expect(resolveToken({ dataDir }, {})).toBe('from-file')
    expect(resolveToken({ dataDir: empty }, {})).toBeUndefined()
  })

  it('is sent as a bearer token on every request', async () => {
    const seen: Array<string | undefined> = []
    const server = createServer((req, res) => {
      seen.push(req.headers.authorization)
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end('[]')
    })
    await new Promise<void>(resolve => { server.listen(0, '127.0.0.1', resolve) })
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
    const env = process.env.TENSORMESH_TOKEN
    delete process.env.TENSORMESH_TOKEN
    try {
      await connect(url, { token: 's3cret' }).peers()
      await connect(url, { dataDir: mkdtempSync(join(tmpdir(), 'tm-token-')) }).jobs()
    } finally {
      process.env.TENSORMESH_TOKEN = env
      await new Promise<void>(resolve => { server.close(() => { resolve() }) })
    }
    expect(seen).toEqual(['Bearer s3cret', undefined])
  })
})
