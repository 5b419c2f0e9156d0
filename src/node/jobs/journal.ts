import { mkdir, readFile, readdir } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { decodeNpy, encodeNpy, readNpyFile } from '../../compute/npy.ts'
import { InvalidInputError } from '../../errors.ts'
import { jobOwner, removeFile, removeTree, storageError, writeAtomic } from '../storage.ts'
import type { StorageBudget } from '../storage.ts'
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

export { writeAtomic }

/** A shards row: job, index, files, record, inline data. */
type PartialRow = [string, number, string, string, Uint8Array | null]

/**
 * A journaled partial: each tensor in a file of its own, or, for small
 * partials, all of them in the shard's row (`data`: per tensor, in the order
 * of `files`, a little-endian uint32 length then the .npy bytes; the file
 * name is INLINE_PARTIAL then).
 */
export interface StoredPartial {
  files: Record<string, string>
  data?: Uint8Array
}

/**
 * Partials up to this size go into their shard's row instead of files. A
 * file costs an open, a write, an fsync, a stat and a rename per tensor:
 * ~0.3 ms of the main thread per shard here, which for tiny shards was half
 * of the coordinator's work. The row commits under the same WAL as the
 * record naming the files did, so a crash keeps it or the shard reruns.
 */
export const INLINE_PARTIAL_BYTES = 64 * 1024
const INLINE_PARTIAL = ':row'

/** The journal's SQLite files in the data directory; SQLite grows them, so the storage budget measures them when it checks. */
export const JOURNAL_FILES = ['journal.sqlite', 'journal.sqlite-wal', 'journal.sqlite-shm']

/** A job as the journal holds it. */
export interface StoredJob {
  id: string
  op: string
  state: JobState
  spec: { params: Record<string, unknown>, verify: Job['verify'], schedule?: Job['schedule'], inputs: Record<string, { dtype: string, shape: number[] }>, blobs?: string[], blobCids?: string[] }
  createdAt: number
  startedAt?: number
  finishedAt?: number
  error?: { code: string, message: string }
  /** The job's record (bids, shards, verification) as last written. */
  record?: Pick<JobView, 'bids' | 'shards' | 'verification' | 'output' | 'metrics' | 'model'>
  /** Shards whose partials are journaled, by index. */
  partials: Map<number, StoredPartial>
  resultPath?: string
  inputDir: string
}

/**
 * The job journal: one SQLite database for specs, states and records, and
 * tensors as .npy files beside it (inputs, accepted partials, results).
 * Every file is written to a temporary name, flushed and renamed before the
 * row that points to it is committed, so a crash leaves either the old state
 * or the new one, never a torn result. A full disk is the same: the write
 * that fails (ENOSPC, SQLITE_FULL) throws StorageFullError and leaves no
 * temporary file, and no row names a file that is not there.
 */
export class Journal {
  private readonly dir: string
  private readonly storage?: StorageBudget
  private db?: DatabaseSync
  private stmts?: Record<'insert' | 'update' | 'record' | 'finish' | 'partial' | 'remove' | 'removeShards', StatementSync>

  constructor (dataDir: string, storage?: StorageBudget) {
    this.dir = dataDir
    this.storage = storage
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
    // EXCLUSIVE: one process owns the journal, so WAL's index lives in its memory instead of a
    // -shm file; SQLite cannot create that file on a full disk, and the journal must still open
    // there (to serve finished results). A second node on the same data directory is refused.
    try {
      db.exec('PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;')
      db.exec(`CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY, op TEXT NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL,
        created INTEGER NOT NULL, started INTEGER, finished INTEGER, error TEXT, record TEXT, result TEXT)`)
      db.exec(`CREATE TABLE IF NOT EXISTS shards (
        job TEXT NOT NULL, idx INTEGER NOT NULL, files TEXT NOT NULL, record TEXT NOT NULL, data BLOB, PRIMARY KEY (job, idx))`)
      // Journals from before inline partials lack the column; their rows all name files.
      const columns = db.prepare('PRAGMA table_info(shards)').all() as Array<{ name: string }>
      if (!columns.some(c => c.name === 'data')) db.exec('ALTER TABLE shards ADD COLUMN data BLOB')
    } catch (err) {
      db.close()
      // SQLITE_BUSY: another process holds the exclusive lock.
      if ((err as { errcode?: unknown }).errcode === 5) throw new InvalidInputError(`data directory ${this.dir} is in use by another tensormesh node (its journal is locked); give each node its own --data-dir`, 'ERR_DATA_DIR', { cause: err })
      throw storageError(err, `the journal in ${this.dir}`)
    }
    this.db = db
    await this.removeOrphans()
    this.stmts = {
      insert: db.prepare('INSERT OR REPLACE INTO jobs (id, op, spec, state, created) VALUES (?, ?, ?, ?, ?)'),
      update: db.prepare('UPDATE jobs SET state = ?, started = ?, record = ? WHERE id = ?'),
      record: db.prepare('UPDATE jobs SET record = ? WHERE id = ?'),
      finish: db.prepare('UPDATE jobs SET state = ?, started = ?, finished = ?, error = ?, record = ?, result = ? WHERE id = ?'),
      partial: db.prepare('INSERT OR REPLACE INTO shards (job, idx, files, record, data) VALUES (?, ?, ?, ?, ?)'),
      remove: db.prepare('DELETE FROM jobs WHERE id = ?'),
      removeShards: db.prepare('DELETE FROM shards WHERE job = ?')
    }
  }

  close (): void {
    this.flushPartials()
    this.db?.close()
    this.db = undefined
  }

  /**
   * A job folder without a row is what a crash (or a full disk) between a
   * job's input files and its row left behind: nothing will ever name it.
   */
  private async removeOrphans (): Promise<void> {
    const db = this.db
    if (db === undefined) return
    const known = new Set((db.prepare('SELECT id FROM jobs').all() as Array<{ id: string }>).map(r => r.id))
    for (const id of await readdir(join(this.dir, 'jobs')).catch(() => [] as string[])) {
      if (!known.has(id)) await removeTree(this.jobDir(id), this.storage)
    }
  }

  /**
   * Inputs to disk, then the row: a job is resumable once this resolves.
   * When a write fails (a full disk: StorageFullError) the files already
   * written go again and no row is left, as if the job was never taken.
   * `blobCids`: the stored blobs the spec named, kept while the job is unfinished.
   */
  async submitted (job: Job, inputs: Tensors, blobs: Record<string, Uint8Array> = {}, blobCids: string[] = []): Promise<void> {
    const dir = this.jobDir(job.id)
    const owner = jobOwner(job.id)
    try {
      await mkdir(dir, { recursive: true })
      for (const [name, t] of Object.entries(inputs)) await writeAtomic(join(dir, `input-${name}.npy`), encodeNpy(t), this.storage, owner)
      for (const [name, bytes] of Object.entries(blobs)) await writeAtomic(join(dir, `blob-${name}.bin`), bytes, this.storage, owner)
      this.stmts?.insert.run(job.id, job.op, JSON.stringify({ params: job.params, verify: job.verify, schedule: job.schedule, inputs: job.inputDescs, blobs: Object.keys(blobs), ...(blobCids.length > 0 ? { blobCids } : {}) }), job.state, job.createdAt)
    } catch (err) {
      await removeTree(dir, this.storage).catch(() => {})
      throw storageError(err, `job ${job.id}'s inputs to the journal`)
    }
  }

  /** The record as it stands (state, shards, bids); small, written on every shard that finishes. */
  updated (job: Job): void {
    const v = job.toJSON()
    const record = JSON.stringify({ bids: v.bids, shards: v.shards, verification: v.verification, output: v.output, metrics: v.metrics, model: v.model })
    // The state column of a finished job is written once, by finished(); a stopping node's
    // jobs keep their unfinished state so that they resume.
    try {
      if (job.finished) this.stmts?.record.run(record, job.id)
      else this.stmts?.update.run(job.state, job.startedAt ?? null, record, job.id)
    } catch (err) {
      throw storageError(err, `job ${job.id}'s record to the journal`)
    }
  }

  /**
   * Small partials wait here for one transaction per turn of the event loop:
   * a job of many tiny shards finishes hundreds a second, and a commit each
   * cost more than the rows. Each shardDone still resolves only once its row
   * is committed. Every other write flushes them first, so a job's final
   * record never comes before its partials.
   */
  private pendingPartials: Array<{ row: PartialRow, what: string, resolve: () => void, reject: (err: unknown) => void }> = []

  private async queuePartial (row: PartialRow, what: string): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      // The first row of a batch schedules its flush (a flush that came earlier leaves a no-op behind).
      if (this.pendingPartials.push({ row, what, resolve, reject }) === 1) setImmediate(() => { this.flushPartials() })
    })
  }

  private flushPartials (): void {
    const batch = this.pendingPartials
    if (batch.length === 0) return
    this.pendingPartials = []
    const db = this.db
    const stmt = this.stmts?.partial
    if (db === undefined || stmt === undefined) {
      for (const p of batch) p.resolve()
      return
    }
    try {
      db.exec('BEGIN')
      for (const p of batch) stmt.run(...p.row)
      db.exec('COMMIT')
    } catch (err) {
      try {
        db.exec('ROLLBACK')
      } catch {} // SQLite rolled back itself
      // Which row failed does not matter: none of the batch is in the journal.
      for (const p of batch) p.reject(storageError(err, p.what))
      return
    }
    for (const p of batch) p.resolve()
  }

  async shardDone (job: Job, index: number, partial: Tensors): Promise<void> {
    const dir = this.jobDir(job.id)
    const files: Record<string, string> = {}
    const record = JSON.stringify(job.shards[index] ?? null)
    const encoded = Object.entries(partial).map(([name, t]) => [name, encodeNpy(t)] as const)
    const total = encoded.reduce((n, [, b]) => n + 4 + b.byteLength, 0)
    if (total <= INLINE_PARTIAL_BYTES) {
      const data = new Uint8Array(total)
      const view = new DataView(data.buffer)
      let off = 0
      for (const [name, bytes] of encoded) {
        view.setUint32(off, bytes.byteLength, true)
        data.set(bytes, off + 4)
        off += 4 + bytes.byteLength
        files[name] = INLINE_PARTIAL
      }
      await this.queuePartial([job.id, index, JSON.stringify(files), record, data], `shard ${index} of job ${job.id} to the journal`)
      return
    }
    try {
      for (const [name, t] of Object.entries(partial)) {
        const file = `shard-${index}-${name}.npy`
        await writeAtomic(join(dir, file), encodeNpy(t), this.storage, jobOwner(job.id))
        files[name] = file
      }
      // One row per accepted shard, with that shard's own record: the job's whole record is
      // written at plan and at finish only, so a job of n shards costs O(n) here, not O(n^2).
      this.flushPartials()
      this.stmts?.partial.run(job.id, index, JSON.stringify(files), record, null)
    } catch (err) {
      // No row names them: the shard runs again after a restart.
      for (const file of Object.values(files)) await removeFile(join(dir, file), this.storage).catch(() => {})
      throw storageError(err, `shard ${index} of job ${job.id} to the journal`)
    }
  }

  /** Result file first, then the row; inputs and partials go once the result is safe. */
  async finished (job: Job): Promise<void> {
    const dir = this.jobDir(job.id)
    let result: string | null = null
    if (job.output !== undefined) {
      // Full disk: this throws before the row changes, so the journal still holds the unfinished
      // job with its partials, and a restart finishes it again.
      await writeAtomic(join(dir, 'result.npy'), encodeNpy(job.output), this.storage, jobOwner(job.id))
      result = 'result.npy'
    }
    const v = job.toJSON()
    this.flushPartials()
    const db = this.db
    if (db === undefined) return
    db.exec('BEGIN')
    try {
      this.stmts?.finish.run(job.state, job.startedAt ?? null, job.finishedAt ?? Date.now(), job.error === undefined ? null : JSON.stringify(job.error),
        JSON.stringify({ bids: v.bids, shards: v.shards, verification: v.verification, output: v.output, metrics: v.metrics, model: v.model }), result, job.id)
      this.stmts?.removeShards.run(job.id)
      db.exec('COMMIT')
    } catch (err) {
      try {
        db.exec('ROLLBACK')
      } catch {} // SQLite rolled back itself (a failed COMMIT on a full disk)
      throw storageError(err, `job ${job.id}'s final record to the journal`)
    }
    for (const file of await readdir(dir).catch(() => [] as string[])) {
      if (file !== 'result.npy') await removeFile(join(dir, file), this.storage)
    }
  }

  /**
   * A training round's state: weights and optimizer moments in one file
   * named by its round, then the record with its metrics, then the older
   * rounds' files. One file, so a full disk or a crash can never pair one
   * round's weights with another round's moments; the record names the
   * round, and the file of every round a record names is on disk first.
   */
  async checkpoint (job: Job, state: { round: number, w: Float32Array, m: Float32Array, v: Float32Array }): Promise<void> {
    const dir = this.jobDir(job.id)
    const n = state.w.length
    const data = new Float32Array(3 * n)
    data.set(state.w, 0)
    data.set(state.m, n)
    data.set(state.v, 2 * n)
    const file = `ckpt-${state.round}.npy`
    await writeAtomic(join(dir, file), encodeNpy({ dtype: 'float32', shape: [3, n], data }), this.storage, jobOwner(job.id))
    this.updated(job)
    for (const old of await readdir(dir).catch(() => [] as string[])) {
      if (old.startsWith('ckpt-') && old !== file) await removeFile(join(dir, old), this.storage)
    }
  }

  /**
   * The newest checkpoint no later than the rounds the record holds (a
   * record written at stop may be a round ahead of the last checkpoint
   * that reached the disk); the caller drops the metrics of later rounds.
   */
  async readCheckpoint (stored: StoredJob): Promise<{ round: number, w: Float32Array, m: Float32Array, v: Float32Array } | undefined> {
    const rounds = stored.record?.metrics?.rounds.length ?? 0
    if (rounds === 0) return undefined
    let best = 0
    for (const file of await readdir(stored.inputDir).catch(() => [] as string[])) {
      const round = Number(/^ckpt-(\d+)\.npy$/.exec(file)?.[1] ?? NaN)
      if (round > best && round <= rounds) best = round
    }
    if (best > 0) {
      const t = await readNpyFile(join(stored.inputDir, `ckpt-${best}.npy`))
      const n = t.shape[1] ?? 0
      if (t.dtype !== 'float32' || t.shape.length !== 2 || t.shape[0] !== 3) return undefined
      const data = t.data as Float32Array
      return { round: best, w: data.slice(0, n), m: data.slice(n, 2 * n), v: data.slice(2 * n, 3 * n) }
    }
    // Journals written before checkpoints were one file: three files, the round the record's.
    const read = async (name: string): Promise<Float32Array | undefined> => {
      const path = join(stored.inputDir, `ckpt-${name}.npy`)
      return existsSync(path) ? (await readNpyFile(path)).data as Float32Array : undefined
    }
    const [w, m, v] = [await read('w'), await read('m'), await read('v')]
    if (w === undefined || m === undefined || v === undefined) return undefined
    return { round: rounds, w, m, v }
  }

  async remove (id: string): Promise<void> {
    this.flushPartials()
    this.stmts?.remove.run(id)
    this.stmts?.removeShards.run(id)
    await removeTree(this.jobDir(id), this.storage)
  }

  load (): StoredJob[] {
    const db = this.db
    if (db === undefined) return []
    const partials = new Map<string, Map<number, StoredPartial>>()
    const shardRecords = new Map<string, Map<number, ShardRecord>>()
    for (const row of db.prepare('SELECT job, idx, files, record, data FROM shards').all() as Array<{ job: string, idx: number, files: string, record: string, data: Uint8Array | null }>) {
      const m = partials.get(row.job) ?? new Map<number, StoredPartial>()
      m.set(row.idx, { files: JSON.parse(row.files) as Record<string, string>, ...(row.data !== null ? { data: row.data } : {}) })
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
    for (const [index, part] of stored.partials) {
      const partial: Tensors = {}
      let off = 0
      for (const [name, file] of Object.entries(part.files)) {
        if (file !== INLINE_PARTIAL) {
          partial[name] = await readNpyFile(join(stored.inputDir, file))
          continue
        }
        const data = part.data
        if (data === undefined || off + 4 > data.byteLength) throw new Error(`shard ${index}'s row names an inline partial ${name} it does not hold`)
        const n = new DataView(data.buffer, data.byteOffset, data.byteLength).getUint32(off, true)
        if (off + 4 + n > data.byteLength) throw new Error(`shard ${index}'s inline partial ${name} is cut short`)
        partial[name] = decodeNpy(data.subarray(off + 4, off + 4 + n), name)
        off += 4 + n
      }
      out.set(index, partial)
    }
    return out
  }

  async readResult (path: string): Promise<HostTensor> {
    return await readNpyFile(path)
  }
}
