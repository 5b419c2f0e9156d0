import { mkdir, open, readFile, rename, rm, readdir } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { encodeNpy, readNpyFile } from '../../compute/npy.ts'
import type { HostTensor } from '../../compute/tensor.ts'
import type { Tensors } from '../../compute/operators/types.ts'
import type { Job, JobState, JobView, ShardRecord } from './job.ts'
import type { DatabaseSync, StatementSync } from 'node:sqlite'

/** node:sqlite warns that it is experimental on first load; that warning is noise on a CLI's stderr. */
async function loadSqlite (): Promise<typeof import('node:sqlite')> {
  const original = process.emitWarning
  process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
    if (String(warning).includes('SQLite is an experimental feature')) return
    ;(original as (...args: unknown[]) => void).call(process, warning, ...rest)
  }) as typeof process.emitWarning
  try {
    return await import('node:sqlite')
  } finally {
    process.emitWarning = original
  }
}

/** A job as the journal holds it. */
export interface StoredJob {
  id: string
  op: string
  state: JobState
  spec: { params: Record<string, unknown>, verify: Job['verify'], schedule?: Job['schedule'], inputs: Record<string, { dtype: string, shape: number[] }>, blobs?: string[] }
  createdAt: number
  startedAt?: number
  finishedAt?: number
  error?: { code: string, message: string }
  /** The job's record (bids, shards, verification) as last written. */
  record?: Pick<JobView, 'bids' | 'shards' | 'verification' | 'output' | 'metrics' | 'model'>
  /** Shards whose partials are on disk, by index: tensor name to file. */
  partials: Map<number, Record<string, string>>
  resultPath?: string
  inputDir: string
}

/**
 * The job journal: one SQLite database for specs, states and records, and
 * tensors as .npy files beside it (inputs, accepted partials, results).
 * Every file is written to a temporary name, flushed and renamed before the
 * row that points to it is committed, so a crash leaves either the old state
 * or the new one, never a torn result.
 */
export class Journal {
  private readonly dir: string
  private db?: DatabaseSync
  private stmts?: Record<'insert' | 'update' | 'record' | 'finish' | 'partial' | 'remove' | 'removeShards', StatementSync>

  constructor (dataDir: string) {
    this.dir = dataDir
  }

  jobDir (id: string): string {
    return join(this.dir, 'jobs', id)
  }

  async open (): Promise<void> {
    await mkdir(join(this.dir, 'jobs'), { recursive: true })
    const { DatabaseSync } = await loadSqlite()
    const db = new DatabaseSync(join(this.dir, 'journal.sqlite'))
    // WAL: a crash mid-write rolls back to the last commit; readers never see half a transaction.
    // NORMAL (no fsync per commit) keeps that after a process crash; a power cut may lose the last
    // commits, never tear one. The files the rows name are flushed by writeAtomic before the commit.
    db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;')
    db.exec(`CREATE TABLE IF NOT EXISTS jobs (
      id TEXT PRIMARY KEY, op TEXT NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL,
      created INTEGER NOT NULL, started INTEGER, finished INTEGER, error TEXT, record TEXT, result TEXT)`)
    db.exec(`CREATE TABLE IF NOT EXISTS shards (
      job TEXT NOT NULL, idx INTEGER NOT NULL, files TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (job, idx))`)
    this.db = db
    this.stmts = {
      insert: db.prepare('INSERT OR REPLACE INTO jobs (id, op, spec, state, created) VALUES (?, ?, ?, ?, ?)'),
      update: db.prepare('UPDATE jobs SET state = ?, started = ?, record = ? WHERE id = ?'),
      record: db.prepare('UPDATE jobs SET record = ? WHERE id = ?'),
      finish: db.prepare('UPDATE jobs SET state = ?, started = ?, finished = ?, error = ?, record = ?, result = ? WHERE id = ?'),
      partial: db.prepare('INSERT OR REPLACE INTO shards (job, idx, files, record) VALUES (?, ?, ?, ?)'),
      remove: db.prepare('DELETE FROM jobs WHERE id = ?'),
      removeShards: db.prepare('DELETE FROM shards WHERE job = ?')
    }
  }

  close (): void {
    this.db?.close()
    this.db = undefined
  }

  /** Inputs to disk, then the row: a job is resumable once this resolves. */
  async submitted (job: Job, inputs: Tensors, blobs: Record<string, Uint8Array> = {}): Promise<void> {
    const dir = this.jobDir(job.id)
    await mkdir(dir, { recursive: true })
    for (const [name, t] of Object.entries(inputs)) await writeAtomic(join(dir, `input-${name}.npy`), encodeNpy(t))
    for (const [name, bytes] of Object.entries(blobs)) await writeAtomic(join(dir, `blob-${name}.bin`), bytes)
    this.stmts?.insert.run(job.id, job.op, JSON.stringify({ params: job.params, verify: job.verify, schedule: job.schedule, inputs: job.inputDescs, blobs: Object.keys(blobs) }), job.state, job.createdAt)
  }

  /** The record as it stands (state, shards, bids); small, written on every shard that finishes. */
  updated (job: Job): void {
    const v = job.toJSON()
    const record = JSON.stringify({ bids: v.bids, shards: v.shards, verification: v.verification, output: v.output, metrics: v.metrics, model: v.model })
    // The state column of a finished job is written once, by finished(); a stopping node's
    // jobs keep their unfinished state so that they resume.
    if (job.finished) this.stmts?.record.run(record, job.id)
    else this.stmts?.update.run(job.state, job.startedAt ?? null, record, job.id)
  }

  async shardDone (job: Job, index: number, partial: Tensors): Promise<void> {
    const dir = this.jobDir(job.id)
    const files: Record<string, string> = {}
    for (const [name, t] of Object.entries(partial)) {
      const file = `shard-${index}-${name}.npy`
      await writeAtomic(join(dir, file), encodeNpy(t))
      files[name] = file
    }
    // One row per accepted shard, with that shard's own record: the job's whole record is
    // written at plan and at finish only, so a job of n shards costs O(n) here, not O(n^2).
    this.stmts?.partial.run(job.id, index, JSON.stringify(files), JSON.stringify(job.shards[index] ?? null))
  }

  /** Result file first, then the row; inputs and partials go once the result is safe. */
  async finished (job: Job): Promise<void> {
    const dir = this.jobDir(job.id)
    let result: string | null = null
    if (job.output !== undefined) {
      await writeAtomic(join(dir, 'result.npy'), encodeNpy(job.output))
      result = 'result.npy'
    }
    const v = job.toJSON()
    const db = this.db
    if (db === undefined) return
    db.exec('BEGIN')
    try {
      this.stmts?.finish.run(job.state, job.startedAt ?? null, job.finishedAt ?? Date.now(), job.error === undefined ? null : JSON.stringify(job.error),
        JSON.stringify({ bids: v.bids, shards: v.shards, verification: v.verification, output: v.output, metrics: v.metrics, model: v.model }), result, job.id)
      this.stmts?.removeShards.run(job.id)
      db.exec('COMMIT')
    } catch (err) {
      db.exec('ROLLBACK')
      throw err
    }
    for (const file of await readdir(dir).catch(() => [] as string[])) {
      if (file !== 'result.npy') await rm(join(dir, file), { force: true })
    }
  }

  /** A training round's state: weights and optimizer moments, then the record with its metrics. */
  async checkpoint (job: Job, state: { round: number, w: Float32Array, m: Float32Array, v: Float32Array }): Promise<void> {
    const dir = this.jobDir(job.id)
    for (const [name, data] of [['w', state.w], ['m', state.m], ['v', state.v]] as const) {
      await writeAtomic(join(dir, `ckpt-${name}.npy`), encodeNpy({ dtype: 'float32', shape: [data.length], data }))
    }
    this.updated(job)
  }

  async readCheckpoint (stored: StoredJob): Promise<{ round: number, w: Float32Array, m: Float32Array, v: Float32Array } | undefined> {
    const round = stored.record?.metrics?.rounds.length ?? 0
    if (round === 0) return undefined
    const read = async (name: string): Promise<Float32Array | undefined> => {
      const path = join(stored.inputDir, `ckpt-${name}.npy`)
      return existsSync(path) ? (await readNpyFile(path)).data as Float32Array : undefined
    }
    const [w, m, v] = [await read('w'), await read('m'), await read('v')]
    if (w === undefined || m === undefined || v === undefined) return undefined
    return { round, w, m, v }
  }

  async remove (id: string): Promise<void> {
    this.stmts?.remove.run(id)
    this.stmts?.removeShards.run(id)
    await rm(this.jobDir(id), { recursive: true, force: true })
  }

  load (): StoredJob[] {
    const db = this.db
    if (db === undefined) return []
    const partials = new Map<string, Map<number, Record<string, string>>>()
    const shardRecords = new Map<string, Map<number, ShardRecord>>()
    for (const row of db.prepare('SELECT job, idx, files, record FROM shards').all() as Array<{ job: string, idx: number, files: string, record: string }>) {
      const m = partials.get(row.job) ?? new Map<number, Record<string, string>>()
      m.set(row.idx, JSON.parse(row.files) as Record<string, string>)
      partials.set(row.job, m)
      const rec = JSON.parse(row.record) as ShardRecord | null
      if (rec !== null) {
        const r = shardRecords.get(row.job) ?? new Map<number, ShardRecord>()
        r.set(row.idx, rec)
        shardRecords.set(row.job, r)
      }
    }
    const rows = db.prepare('SELECT * FROM jobs ORDER BY created').all() as Array<Record<string, string | number | null>>
    return rows.map(r => {
      const id = String(r.id)
      const stored: StoredJob = {
        id,
        op: String(r.op),
        state: String(r.state) as JobState,
        spec: JSON.parse(String(r.spec)) as StoredJob['spec'],
        createdAt: Number(r.created),
        partials: partials.get(id) ?? new Map(),
        inputDir: this.jobDir(id)
      }
      if (r.started !== null) stored.startedAt = Number(r.started)
      if (r.finished !== null) stored.finishedAt = Number(r.finished)
      if (r.error !== null) stored.error = JSON.parse(String(r.error)) as StoredJob['error']
      if (r.record !== null) {
        const record = JSON.parse(String(r.record)) as NonNullable<StoredJob['record']>
        // Accepted shards' own rows are newer than the record written when the job was planned.
        for (const [idx, rec] of shardRecords.get(id) ?? []) if (idx < record.shards.length) record.shards[idx] = rec
        stored.record = record
      }
      if (r.result !== null) stored.resultPath = join(this.jobDir(id), String(r.result))
      return stored
    })
  }

  /** The inputs (and blobs) of a stored job, or the name of the first one that is gone. */
  async readInputs (stored: StoredJob): Promise<{ tensors: Tensors, blobs?: Record<string, Uint8Array> } | { missing: string }> {
    const tensors: Tensors = {}
    for (const name of Object.keys(stored.spec.inputs)) {
      const path = join(stored.inputDir, `input-${name}.npy`)
      if (!existsSync(path)) return { missing: path }
      tensors[name] = await readNpyFile(path)
    }
    if (stored.spec.blobs === undefined || stored.spec.blobs.length === 0) return { tensors }
    const blobs: Record<string, Uint8Array> = {}
    for (const name of stored.spec.blobs) {
      const path = join(stored.inputDir, `blob-${name}.bin`)
      if (!existsSync(path)) return { missing: path }
      blobs[name] = new Uint8Array(await readFile(path))
    }
    return { tensors, blobs }
  }

  async readPartials (stored: StoredJob): Promise<Map<number, Tensors>> {
    const out = new Map<number, Tensors>()
    for (const [index, files] of stored.partials) {
      const partial: Tensors = {}
      for (const [name, file] of Object.entries(files)) partial[name] = await readNpyFile(join(stored.inputDir, file))
      out.set(index, partial)
    }
    return out
  }

  async readResult (path: string): Promise<HostTensor> {
    return await readNpyFile(path)
  }
}

/** Write to a temporary name, flush to disk, rename over the target. */
export async function writeAtomic (path: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`
  const fh = await open(tmp, 'w')
  try {
    await fh.writeFile(bytes)
    await fh.sync()
  } finally {
    await fh.close()
  }
  await rename(tmp, path)
}
