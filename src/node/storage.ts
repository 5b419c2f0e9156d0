import { statSync, statfsSync } from 'node:fs'
import { open, readdir, rename, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { StorageFullError, errorMessage } from '../errors.ts'
import type { Logger } from './log.ts'

const KiB = 1024
const MiB = 1024 * KiB
const GiB = 1024 * MiB

/**
 * The data directory's budget when `--max-storage` is not given. A node
 * coordinates MAX_RUNNING_JOBS (4) jobs at once and a tensor may be 1 GiB
 * (compute/limits.ts), so four jobs with two inputs at that limit journal
 * 8 GiB; 2 GiB more holds their results, or trained models and uploads at
 * the blob limit (1 GiB). A fixed number rather than a share of the free
 * space: a budget that moved with whatever else fills the disk would admit
 * a job on one start and refuse it on the next. The filesystem's own free
 * space is checked on every reservation besides (FREE_SPACE_FLOOR_BYTES).
 */
export const DEFAULT_MAX_STORAGE_BYTES = 10 * GiB

/**
 * Smallest budget the CLI takes: an empty data directory (key, token,
 * SQLite database and WAL) is about 50 KiB, and below 1 MiB not even a
 * small job's inputs fit beside it.
 */
export const MIN_MAX_STORAGE_BYTES = 1 * MiB

/**
 * Free space kept on the data directory's filesystem for writes no
 * reservation covers: SQLite's WAL grows to about 4 MiB (its
 * auto-checkpoint, 1,000 pages of 4 KiB) before it is folded back into the
 * database, and every job's record rows go there too. New jobs and uploads
 * are refused while less than this would be left, so that the writes of
 * jobs already admitted and the journal's commits still find room.
 */
export const FREE_SPACE_FLOOR_BYTES = 16 * MiB

/** ...or this share of a filesystem smaller than 128 MiB (a test's tmpfs), where 16 MiB would be all of it. */
export const FREE_SPACE_FLOOR_FRACTION = 1 / 8

/**
 * What one file costs beyond its payload, when a job's footprint is
 * estimated: a .npy header (128 bytes for the shapes we write) and the
 * filesystem's last partial block (4 KiB on ext4, xfs and tmpfs).
 */
export const FILE_OVERHEAD_BYTES = 4 * KiB

/** writeAtomic's temporary names (`NAME.tmp-PID-N`, and the older `NAME.tmp-PID`): never named by a row or indexed. */
const TEMP_FILE = /\.tmp-\d+(?:-\d+)?$/

/** The key under which a job's writes draw on its reservation. */
export function jobOwner (id: string): string {
  return `job:${id}`
}

/** What GET /v1/node reports as `storage`. */
export interface StorageInfo {
  /** The budget (--max-storage). */
  maxBytes: number
  /** Bytes under the data directory now: blobs, the journal's files and database, key and token. */
  usedBytes: number
  /** Bytes admitted jobs may still write (their inputs, partials, results and models), held against the budget. */
  reservedBytes: number
  /** Bytes of on-disk blobs that no job names: what eviction could free now. */
  evictableBytes: number
  /** Free bytes on the data directory's filesystem. */
  diskFreeBytes: number
  /** Of those, how many are kept for the journal's own writes (FREE_SPACE_FLOOR_BYTES). */
  diskFloorBytes: number
  /** Blobs evicted since start, and jobs or uploads refused with ERR_STORAGE_FULL. */
  evictedBlobs: number
  refused: number
}

/** What frees room: the blob store's unreferenced on-disk blobs, least recently used first. */
export interface Evictor {
  /** Bytes eviction could free now. */
  evictable: () => number
  /** Takes at least `bytes` if it can (fewer if fewer are unreferenced); `done` resolves once the files are gone, and never rejects. */
  evict: (bytes: number) => { bytes: number, count: number, done: Promise<void> }
}

/** The filesystem numbers the budget reads (fs.StatsFs). */
export interface FsStats { bsize: number, blocks: number, bavail: number }

export interface StorageInit {
  dataDir: string
  /** The budget; default DEFAULT_MAX_STORAGE_BYTES. */
  maxBytes?: number
  /**
   * Files in the data directory that another writer grows (SQLite's
   * database and WAL): their size is read whenever the budget is checked
   * instead of being tracked write by write.
   */
  live?: string[]
  log?: Logger
  /** Test seam: the filesystem's numbers (default fs.statfsSync of the data directory). */
  statfs?: (path: string) => FsStats
}

/**
 * The data directory's storage budget. It measures the directory once at
 * start, then tracks every write and delete the journal and the blob store
 * make. A job or an upload reserves its bytes before anything is written
 * (synchronously, so two requests cannot both take the last room); when
 * the budget or the filesystem cannot take them, it asks the evictor for
 * the difference and, failing that, refuses with ERR_STORAGE_FULL. Writes
 * of admitted jobs draw on their reservation and are never refused by the
 * budget (only the filesystem can refuse them), so a job admitted is a job
 * whose result can be kept.
 */
export class StorageBudget {
  readonly dir: string
  readonly maxBytes: number
  private readonly live: string[]
  private readonly log?: Logger
  private readonly statfs: (path: string) => FsStats
  /** Bytes of the files written and removed through this budget (live files excluded). */
  private tracked = 0
  private readonly reservations = new Map<string, number>()
  private reserved = 0
  /** Bytes evicted whose files are still being unlinked: gone from the budget, not yet from the disk. */
  private unlinking = 0
  private evictor?: Evictor
  private evicted = 0
  private refused = 0

  constructor (init: StorageInit) {
    this.dir = init.dataDir
    this.maxBytes = init.maxBytes ?? DEFAULT_MAX_STORAGE_BYTES
    this.live = (init.live ?? []).map(f => join(init.dataDir, f))
    this.log = init.log
    this.statfs = init.statfs ?? ((path) => statfsSync(path))
  }

  /**
   * Measures the data directory, and removes the temporary files a crash
   * left in its folders (a row or the blob index never names one: the
   * rename that would have made it real had not happened).
   */
  async start (): Promise<void> {
    const live = new Set(this.live)
    let bytes = 0
    const walk = async (dir: string): Promise<void> => {
      const entries = await readdir(dir, { withFileTypes: true }).catch(() => [])
      for (const e of entries) {
        const path = join(dir, e.name)
        if (e.isDirectory()) await walk(path)
        else if (!e.isFile() || live.has(path)) continue
        else if (dir !== this.dir && TEMP_FILE.test(e.name)) await rm(path, { force: true })
        else bytes += await fileSize(path)
      }
    }
    await walk(this.dir)
    this.tracked = bytes
    const used = this.usedBytes()
    if (used > this.maxBytes) this.log?.warn({ usedBytes: used, maxBytes: this.maxBytes }, 'data directory is over its storage budget; unreferenced blobs will be evicted and new jobs refused until it is under')
  }

  /** The blob store, which frees room when a reservation or a write needs it. */
  useEvictor (evictor: Evictor): void {
    this.evictor = evictor
  }

  usedBytes (): number {
    let live = 0
    for (const path of this.live) {
      try {
        live += statSync(path).size
      } catch {}
    }
    return Math.max(this.tracked, 0) + live
  }

  get reservedBytes (): number {
    return this.reserved
  }

  info (): StorageInfo {
    const disk = this.disk()
    return {
      maxBytes: this.maxBytes,
      usedBytes: this.usedBytes(),
      reservedBytes: this.reserved,
      evictableBytes: this.evictor?.evictable() ?? 0,
      diskFreeBytes: Number.isFinite(disk.free) ? disk.free : -1,
      diskFloorBytes: disk.floor,
      evictedBlobs: this.evicted,
      refused: this.refused
    }
  }

  /**
   * Holds `bytes` for `owner`'s coming writes (several calls add up).
   * Evicts unreferenced blobs when the budget or the disk needs room;
   * throws StorageFullError (nothing reserved) when that is not enough.
   */
  reserve (owner: string, bytes: number, what: string): void {
    let short = this.shortfall(bytes)
    if (short.bytes > 0 && short.bytes <= (this.evictor?.evictable() ?? 0)) {
      // Only when eviction can make the room: a refused request must not cost the cache anything.
      this.evict(short.bytes)
      short = this.shortfall(bytes)
    }
    if (short.bytes > 0) {
      this.refused++
      throw this.fullError(bytes, what, short)
    }
    this.reservations.set(owner, (this.reservations.get(owner) ?? 0) + bytes)
    this.reserved += bytes
  }

  /** Throws StorageFullError when `bytes` could not be reserved even after eviction; changes nothing (an early answer before a large body is read). */
  check (bytes: number, what: string): void {
    const short = this.shortfall(bytes)
    if (short.bytes > (this.evictor?.evictable() ?? 0)) {
      this.refused++
      throw this.fullError(bytes, what, short)
    }
  }

  /** Gives back what `owner` reserved and did not write. */
  release (owner: string): void {
    const left = this.reservations.get(owner)
    if (left === undefined) return
    this.reservations.delete(owner)
    this.reserved -= left
  }

  /**
   * A file was written (or replaced: `bytes` is the change in size). The
   * bytes are drawn from `owner`'s reservation; past the budget, blobs are
   * evicted to bring it back under.
   */
  wrote (bytes: number, owner?: string): void {
    this.tracked += bytes
    if (owner !== undefined && bytes > 0) {
      const left = this.reservations.get(owner)
      if (left !== undefined) {
        const take = Math.min(left, bytes)
        this.reservations.set(owner, left - take)
        this.reserved -= take
      }
    }
    const over = this.usedBytes() + this.reserved - this.maxBytes
    if (over > 0) this.evict(over)
  }

  /** A file was removed. */
  freed (bytes: number): void {
    this.tracked -= bytes
  }

  private evict (bytes: number): void {
    if (this.evictor === undefined) return
    const out = this.evictor.evict(bytes)
    if (out.bytes === 0) return
    this.tracked -= out.bytes
    this.unlinking += out.bytes
    this.evicted += out.count
    void out.done.finally(() => { this.unlinking -= out.bytes })
    this.log?.info({ bytes: out.bytes, blobs: out.count, needed: bytes }, 'evicted unreferenced blobs')
  }

  private disk (): { free: number, floor: number } {
    try {
      const s = this.statfs(this.dir)
      return { free: s.bavail * s.bsize, floor: Math.min(FREE_SPACE_FLOOR_BYTES, Math.floor(s.blocks * s.bsize * FREE_SPACE_FLOOR_FRACTION)) }
    } catch {
      // No statfs (an exotic filesystem): the budget alone bounds, ENOSPC still maps to ERR_STORAGE_FULL.
      return { free: Infinity, floor: 0 }
    }
  }

  /** How many bytes are missing for `bytes` more, against the budget and against the disk (whichever is short by more). */
  private shortfall (bytes: number): { bytes: number, used: number, free: number, floor: number, disk: boolean } {
    const used = this.usedBytes()
    const overBudget = used + this.reserved + bytes - this.maxBytes
    const { free, floor } = this.disk()
    // Reservations not written yet will land on this disk too; evicted files being unlinked will leave it.
    const overDisk = bytes + this.reserved + floor - free - this.unlinking
    return { bytes: Math.max(overBudget, overDisk, 0), used, free, floor, disk: overDisk > overBudget }
  }

  private fullError (bytes: number, what: string, s: { used: number, free: number, floor: number, disk: boolean }): StorageFullError {
    const message = s.disk
      ? `${what} needs ${formatBytes(bytes)}, but the filesystem of ${this.dir} is full: ${formatBytes(Math.max(s.free, 0))} free, of which ${formatBytes(s.floor)} is kept for the journal and ${formatBytes(this.reserved)} is reserved by running jobs; free some disk space`
      : `${what} needs ${formatBytes(bytes)}, but the storage budget of ${this.dir} is full: ${formatBytes(s.used)} of ${formatBytes(this.maxBytes)} used and ${formatBytes(this.reserved)} reserved by running jobs, after evicting every blob no job names; raise --max-storage or wait for running jobs to finish`
    return new StorageFullError(message, { neededBytes: bytes, maxBytes: this.maxBytes, usedBytes: s.used })
  }
}

/** `1.5 MiB`, `512 B`. */
export function formatBytes (n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = n
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i] ?? ''}`
}

/** Whether an error is a full disk: ENOSPC or EDQUOT from the filesystem, SQLITE_FULL from the journal's database. */
export function isDiskFull (err: unknown): boolean {
  const e = err as { code?: unknown, errcode?: unknown } | null
  if (e === null || typeof e !== 'object') return false
  if (e.code === 'ENOSPC' || e.code === 'EDQUOT') return true
  // node:sqlite: code ERR_SQLITE_ERROR with SQLite's result code; 13 is SQLITE_FULL.
  return e.code === 'ERR_SQLITE_ERROR' && typeof e.errcode === 'number' && (e.errcode & 0xff) === 13
}

/** A full disk as ERR_STORAGE_FULL naming what could not be written; any other error as it was. */
export function storageError (err: unknown, what: string): unknown {
  if (!isDiskFull(err) || err instanceof StorageFullError) return err
  return new StorageFullError(`cannot write ${what}: the disk is full (${errorMessage(err)})`, {}, { cause: err })
}

let tempSeq = 0

/**
 * Writes to a temporary name, flushes to disk and renames over the target,
 * so the target is the old bytes or the new ones, never part of them. On
 * any failure (ENOSPC included, which becomes StorageFullError) the
 * temporary file is removed and the target is untouched. The change in
 * size is counted against `storage`, drawn from `owner`'s reservation.
 */
export async function writeAtomic (path: string, bytes: Uint8Array, storage?: StorageBudget, owner?: string): Promise<void> {
  // One name per write: two writers of the same path (two puts of one CID) never share a temporary file.
  const tmp = `${path}.tmp-${process.pid}-${++tempSeq}`
  try {
    const fh = await open(tmp, 'w')
    try {
      await fh.writeFile(bytes)
      await fh.sync()
    } finally {
      await fh.close()
    }
    const before = await fileSize(path)
    await rename(tmp, path)
    storage?.wrote(bytes.byteLength - before, owner)
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => {})
    throw storageError(err, path)
  }
}

/** Removes a file and counts it as freed; a missing file is no error. */
export async function removeFile (path: string, storage?: StorageBudget): Promise<void> {
  const size = await fileSize(path)
  await rm(path, { force: true })
  if (size > 0) storage?.freed(size)
}

/** Removes a folder and everything under it, counting the bytes as freed. */
export async function removeTree (dir: string, storage?: StorageBudget): Promise<void> {
  const size = await treeSize(dir)
  await rm(dir, { recursive: true, force: true })
  if (size > 0) storage?.freed(size)
}

/** A file's size, 0 when it does not exist. */
export async function fileSize (path: string): Promise<number> {
  try {
    return (await stat(path)).size
  } catch {
    return 0
  }
}

async function treeSize (dir: string): Promise<number> {
  let bytes = 0
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const path = join(dir, e.name)
    if (e.isDirectory()) bytes += await treeSize(path)
    else if (e.isFile()) bytes += await fileSize(path)
  }
  return bytes
}
