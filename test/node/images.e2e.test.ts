import { copyFileSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { writeExampleModels, writeExamplePhotos, EXAMPLE_PHOTOS } from '../../scripts/examples-models.ts'
import { loadBackend } from '../../src/compute/backend.ts'
import { imageTensor } from '../../src/compute/images.ts'
import { readModelDir } from '../../src/compute/model.ts'
import { decodeNpy, writeNpyFile } from '../../src/compute/npy.ts'
import { submitCommand } from '../../src/node/cli/jobs.ts'
import { MeshClient } from '../../src/node/client/index.ts'
import { TEST_TOKEN, startMesh, stopAll } from '../helpers/mesh.ts'
import { submitJson } from '../helpers/submit.ts'
import { maxAbsDiff, python, tempDir } from '../helpers/numpy.ts'
import type { MeshNode } from '../../src/node/mesh-node.ts'
import type { TF } from '../../src/compute/operators/types.ts'

/**
 * Photos in, classes out, over a real two-node mesh: the job file lists
 * images by glob, the client sends the files, the peers decode them, and
 * the result equals the same model's predict in this process (max abs
 * difference <= 1e-5 per output), rows in the files' order. Then the
 * recommendation path: embeddings, then cosine top-k among them.
 */
const TOL = 1e-5
const ROOT = join(import.meta.dirname, '..', '..')

describe('images over the mesh', () => {
  let nodes: MeshNode[] = []
  let work: string
  let tf: TF

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'tm-images-'))
    await writeExampleModels(join(work, 'models'))
    await writeExamplePhotos(join(work, 'images'))
    for (const f of ['mobilenet-classify.json', 'similar-images.json']) copyFileSync(join(ROOT, 'examples', f), join(work, f))
    tf = (await loadBackend('wasm')).tf
    nodes = await startMesh(3, () => ({ workers: 1 }))
  })

  afterAll(async () => {
    await stopAll(nodes)
  })

  const submit = async (file: string, out: string): Promise<{ code: number, line: Record<string, unknown> }> => await submitJson(nodes[0]?.apiUrl ?? '', file, out)

  const photos = async (): Promise<Array<{ name: string, bytes: Uint8Array }>> => await Promise.all(EXAMPLE_PHOTOS.map(async n => ({ name: n, bytes: new Uint8Array(await readFile(join(work, 'images', `${n}.jpg`))) })))

  it('classifies the example photos with MobileNetV2 as predict does in one process, naming each file', async () => {
    const out = join(work, 'classes.npy')
    const { code, line } = await submit(join(work, 'mobilenet-classify.json'), out)
    expect(code).toBe(0)
    const got = decodeNpy(await readFile(out), 'classes')
    expect(got.shape).toEqual([5, 5])
    const x = imageTensor(await photos(), [224, 224], 255)
    const L = await import('@tensorflow/tfjs-layers')
    const model = await L.loadLayersModel(tf.io.fromMemory(await readModelDir(join(work, 'models', 'mobilenet-v2', 'model.json'))))
    const want = tf.tidy(() => (model.predict(tf.tensor(x.data, x.shape as [number, number, number, number])) as ReturnType<TF['tensor']>).dataSync())
    model.dispose()
    expect(maxAbsDiff(got.data, want)).toBeLessThanOrEqual(TOL)
    // One line per photo, in the glob's (sorted) order, each naming the file and its best class.
    const top = line.top as string[]
    expect(top.map(l => l.split(':')[0])).toEqual(EXAMPLE_PHOTOS.map(n => `images/${n}.jpg`))
    for (const l of top) expect(l).toMatch(/: (Drawing|Hentai|Neutral|Porn|Sexy) \d\.\d{3}/)
    // The photos were decoded by the peers: both nodes ran shards.
    const job = await new MeshClient(nodes[0]?.apiUrl ?? '', { token: TEST_TOKEN }).job(line.id as string).view()
    expect(new Set(job.shards.map(s => s.peer)).size).toBeGreaterThanOrEqual(2)
  })

  it('runs the graph-model sibling on the photos as executeAsync does in one process', async () => {
    const file = join(work, 'graph.json')
    writeFileSync(file, JSON.stringify({ op: 'infer', inputs: { x: { images: ['images/*.jpg'], size: [224, 224], scale: 255 } }, params: { model: 'models/mobilenet-v2-graph/model.json', batchSize: 2 } }))
    const out = join(work, 'graph.npy')
    const { code } = await submit(file, out)
    expect(code).toBe(0)
    const got = decodeNpy(await readFile(out), 'graph')
    const x = imageTensor(await photos(), [224, 224], 255)
    const C = await import('@tensorflow/tfjs-converter')
    const model = await C.loadGraphModel(tf.io.fromMemory(await readModelDir(join(work, 'models', 'mobilenet-v2-graph', 'model.json'))))
    const input = tf.tensor(x.data, x.shape as [number, number, number, number])
    const y = await model.executeAsync(input) as ReturnType<TF['tensor']>
    const want = await y.data()
    input.dispose()
    y.dispose()
    model.dispose()
    expect(got.shape).toEqual([5, 5])
    expect(maxAbsDiff(got.data, want)).toBeLessThanOrEqual(TOL)
  })

  it('runs the similar-images pipeline: embeddings, then each photo\'s cosine neighbours among them', async () => {
    const out = join(work, 'similar.npy')
    const { code } = await submit(join(work, 'similar-images.json'), out)
    expect(code).toBe(0)
    const got = decodeNpy(await readFile(out), 'similar')
    expect(got.shape).toEqual([5, 3, 2])
    // numpy's brute force on the same embeddings (step 0's result, fetched here only to check).
    const client = new MeshClient(nodes[0]?.apiUrl ?? '', { token: TEST_TOKEN })
    const jobs = await client.jobs()
    const embed = jobs.find(j => j.op === 'infer' && j.state === 'succeeded' && (j.params as { outputLayer?: string }).outputLayer === 'flatten_1')
    const emb = decodeNpy(await client.job(embed?.id ?? '').resultBytes(), 'embeddings')
    expect(emb.shape).toEqual([5, 1280])
    const d = tempDir()
    try {
      await writeNpyFile(join(d.dir, 'e.npy'), emb)
      const ref = JSON.parse(python(`
e = np.load(f'{d}/e.npy').astype(np.float64)
n = np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
s = (e / n) @ (e / n).T
out = []
for q in range(len(e)):
    idx = np.lexsort((np.arange(len(e)), -s[q]))[:3]
    out.append([[int(i), float(s[q, i])] for i in idx])
print(json.dumps(out))
`, d.dir)) as number[][][]
      ref.forEach((rows, q) => rows.forEach(([i, sim], r) => {
        expect(got.data[(q * 3 + r) * 2]).toBe(i)
        expect(Math.abs((got.data[(q * 3 + r) * 2 + 1] ?? NaN) - (sim ?? NaN))).toBeLessThan(1e-5)
      }))
    } finally {
      d.cleanup()
    }
    for (let q = 0; q < 5; q++) {
      // Its own embedding is each photo's nearest neighbour, at cosine 1.
      expect(got.data[q * 6]).toBe(q)
      expect(got.data[q * 6 + 1]).toBeCloseTo(1, 5)
      expect(got.data[q * 6 + 3]).toBeLessThan(got.data[q * 6 + 1] as number)
    }
  })

  it('refuses a job file whose images glob matches nothing, or a file that is not an image, naming it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tm-images-bad-'))
    mkdirSync(join(dir, 'photos'))
    writeFileSync(join(dir, 'photos', 'notes.jpg'), 'not a jpeg')
    const job = (images: string[], tag: string): string => {
      const f = join(dir, `job-${tag}.json`)
      writeFileSync(f, JSON.stringify({ op: 'infer', inputs: { x: { images, size: [224, 224] } }, params: { model: join(work, 'models', 'mobilenet-v2', 'model.json') } }))
      return f
    }
    await expect(submitCommand({ api: nodes[0]?.apiUrl ?? '', token: TEST_TOKEN, file: job(['nothing/*.jpg'], 'none'), json: true })).rejects.toMatchObject({ code: 'ERR_JOB_FILE', message: expect.stringMatching(/nothing\/\*\.jpg matches no file/) })
    await expect(submitCommand({ api: nodes[0]?.apiUrl ?? '', token: TEST_TOKEN, file: job(['photos/missing.jpg'], 'missing'), json: true })).rejects.toMatchObject({ code: 'ERR_JOB_FILE', message: expect.stringMatching(/missing\.jpg does not exist/) })
    // The node reads every file's structure before a shard starts: 400, naming the file.
    await expect(submitCommand({ api: nodes[0]?.apiUrl ?? '', token: TEST_TOKEN, file: job(['photos/*.jpg'], 'text'), json: true })).rejects.toMatchObject({ status: 400, message: expect.stringMatching(/notes\.jpg/) })
  })
})
