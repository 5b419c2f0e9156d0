import { appendFileSync, existsSync, readdirSync, rmSync, statSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import { afterAll, describe, expect, it } from 'vitest'
import { BlobStore } from '../../src/node/blob-store.ts'
import { INLINE_PARTIAL_BYTES, JOURNAL_FILES, Journal } from '../../src/node/jobs/journal.ts'
import { Job } from '../../src/node/jobs/job.ts'
import { FREE_SPACE_FLOOR_BYTES, StorageBudget, isDiskFull, jobOwner, storageError } from '../../src/node/storage.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { nodeInit, parseBytesFlag } from '../../src/node/cli/index.ts'
import { runCli } from '../helpers/cli.ts'
import { fillFilesystem, mountTmpfs } from '../helpers/tmpfs.ts'
import type { FsStats } from '../../src/node/storage.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'

const KiB = 1024
const MiB = 1024 * KiB

/** Folders this file makes, removed when it ends. */
const scratchDirs: string[] = []
async function scratch (): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'tm-storage-'))
  scratchDirs.push(dir)
  return dir
}

/** A filesystem with plenty of room, so that only the budget (or the real disk's ENOSPC) refuses. */
const roomy = (): FsStats => ({ bsize: 4096, blocks: 1 << 30, bavail: 1 << 29 })

function bytesOf (n: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed * 7) & 0xff)
}

function tensor (rows: number, cols: number, seed = 1): HostTensor {
  return hostTensor('float32', [rows, cols], Float32Array.from({ length: rows * cols }, (_, i) => (i % 97) * 0.5 + seed))
}

function job (id: string, inputs: Record<string, HostTensor>): Job {
  return new Job({ id, op: 'matmul', inputs, verify: { replicas: 1, spotCheck: 0, rtol: 1e-3 } })
}

async function budgetOn (dir: string, maxBytes: number, statfs: (path: string) => FsStats = roomy): Promise<StorageBudget> {
  const budget = new StorageBudget({ dataDir: dir, maxBytes, live: JOURNAL_FILES, statfs })
  await budget.start()
  return budget
}

/** Files anywhere under `dir` (relative paths). */
function filesUnder (dir: string): string[] {
  return (readdirSync(dir, { recursive: true, withFileTypes: true }) as Array<{ name: string, parentPath: string, isFile: () => boolean }>)
    .filter(e => e.isFile()).map(e => join(e.parentPath, e.name).slice(dir.length + 1)).sort()
}

describe('StorageBudget', () => {
  it('measures the data directory at start (SQLite files live), and removes the temporary files a crash left', async () => {
    const dir = await scratch()
    await mkdir(join(dir, 'blobs'))
    await mkdir(join(dir, 'jobs', 'j1'), { recursive: true })
    await writeFile(join(dir, 'peer.key'), bytesOf(68, 1))
    await writeFile(join(dir, 'blobs', 'x'), bytesOf(1000, 2))
    await writeFile(join(dir, 'jobs', 'j1', 'input-a.npy'), bytesOf(3000, 3))
    await writeFile(join(dir, 'jobs', 'j1', 'result.npy.tmp-4242-7'), bytesOf(5000, 4))
    await writeFile(join(dir, 'blobs', 'y.tmp-4242'), bytesOf(7000, 5))
    await writeFile(join(dir, 'journal.sqlite'), bytesOf(4096, 6))
    const budget = await budgetOn(dir, 1 * MiB)
    expect(budget.usedBytes()).toBe(68 + 1000 + 3000 + 4096)
    expect(existsSync(join(dir, 'jobs', 'j1', 'result.npy.tmp-4242-7'))).toBe(false)
    expect(existsSync(join(dir, 'blobs', 'y.tmp-4242'))).toBe(false)
    // SQLite grows its files without telling anyone: they are measured whenever the budget is read.
    appendFileSync(join(dir, 'journal.sqlite-wal'), bytesOf(8192, 7))
    expect(budget.usedBytes()).toBe(68 + 1000 + 3000 + 4096 + 8192)
  })

  it('reserves synchronously: what does not fit is refused with ERR_STORAGE_FULL and the sizes; writes draw on their reservation; release gives back the rest', async () => {
    const dir = await scratch()
    const budget = await budgetOn(dir, 100 * KiB)
    budget.reserve(jobOwner('a'), 60 * KiB, 'job a')
    expect(budget.reservedBytes).toBe(60 * KiB)
    let err: unknown
    try {
      budget.reserve(jobOwner('b'), 50 * KiB, 'job b')
    } catch (e) {
      err = e
    }
    expect(err).toMatchObject({ code: 'ERR_STORAGE_FULL', name: 'StorageFullError', neededBytes: 50 * KiB, maxBytes: 100 * KiB, usedBytes: 0 })
    expect(budget.reservedBytes).toBe(60 * KiB) // nothing held for the refused one
    expect(budget.info().refused).toBe(1)
    // check() answers the same without reserving.
    expect(() => { budget.check(50 * KiB, 'a blob') }).toThrow(expect.objectContaining({ code: 'ERR_STORAGE_FULL' }) as Error)
    expect(() => { budget.check(30 * KiB, 'a blob') }).not.toThrow()
    expect(budget.reservedBytes).toBe(60 * KiB)
    // Job a writes 20 KiB: used grows, its reservation shrinks by as much; the total held is the same.
    budget.wrote(20 * KiB, jobOwner('a'))
    expect(budget.usedBytes()).toBe(20 * KiB)
    expect(budget.reservedBytes).toBe(40 * KiB)
    // Job a finishes: the 40 KiB it did not write go back, and b fits.
    budget.release(jobOwner('a'))
    expect(budget.reservedBytes).toBe(0)
    budget.reserve(jobOwner('b'), 50 * KiB, 'job b')
    budget.freed(20 * KiB)
    expect(budget.usedBytes()).toBe(0)
  })

  it('refuses when the filesystem is short, whatever the budget, keeping the floor free for the journal', async () => {
    const dir = await scratch()
    // A 1 GiB filesystem with 20 MiB free: the floor is 16 MiB, so 4 MiB can be taken.
    let bavail = (20 * MiB) / 4096
    const budget = await budgetOn(dir, 100 * 1024 * MiB, () => ({ bsize: 4096, blocks: (1024 * MiB) / 4096, bavail }))
    expect(budget.info()).toMatchObject({ diskFreeBytes: 20 * MiB, diskFloorBytes: FREE_SPACE_FLOOR_BYTES })
    budget.reserve('up:1', 3 * MiB, 'blob 1')
    // Reservations not yet written count against the disk too.
    expect(() => { budget.reserve('up:2', 2 * MiB, 'blob 2') }).toThrow(expect.objectContaining({ code: 'ERR_STORAGE_FULL', message: expect.stringContaining('filesystem') as string }) as Error)
    budget.release('up:1')
    budget.reserve('up:2', 2 * MiB, 'blob 2')
    budget.release('up:2')
    bavail = 0
    expect(() => { budget.reserve('up:3', 1, 'one byte') }).toThrow(expect.objectContaining({ code: 'ERR_STORAGE_FULL' }) as Error)
    // A small filesystem keeps an eighth of itself, not 16 MiB.
    const small = await budgetOn(dir, 100 * MiB, () => ({ bsize: 4096, blocks: (8 * MiB) / 4096, bavail: (8 * MiB) / 4096 }))
    expect(small.info().diskFloorBytes).toBe(1 * MiB)
    small.reserve('up:4', 6 * MiB, 'blob 4')
  })

  it('turns ENOSPC, EDQUOT and SQLite\'s SQLITE_FULL into ERR_STORAGE_FULL, and nothing else', () => {
    const db = new DatabaseSync(':memory:')
    db.exec('CREATE TABLE t (v TEXT); PRAGMA max_page_count = 2')
    let full: unknown
    try {
      for (let i = 0; i < 100; i++) db.prepare('INSERT INTO t VALUES (?)').run('x'.repeat(1000))
    } catch (e) {
      full = e
    }
    db.close()
    expect(isDiskFull(full)).toBe(true)
    expect(storageError(full, 'a row')).toMatchObject({ code: 'ERR_STORAGE_FULL' })
    expect(storageError(Object.assign(new Error('no space'), { code: 'ENOSPC' }), 'f')).toMatchObject({ code: 'ERR_STORAGE_FULL' })
    expect(storageError(Object.assign(new Error('quota'), { code: 'EDQUOT' }), 'f')).toMatchObject({ code: 'ERR_STORAGE_FULL' })
    const other = Object.assign(new Error('denied'), { code: 'EACCES' })
    expect(storageError(other, 'f')).toBe(other)
  })
})

describe('--max-storage', () => {
  it('takes plain bytes and K, M, G, T suffixes (powers of 1024), and refuses anything else naming the flag', async () => {
    expect(parseBytesFlag('1048576', '--max-storage', MiB)).toBe(MiB)
    expect(parseBytesFlag('512M', '--max-storage', MiB)).toBe(512 * MiB)
    expect(parseBytesFlag('10G', '--max-storage', MiB)).toBe(10 * 1024 * MiB)
    expect(parseBytesFlag('1.5GiB', '--max-storage', MiB)).toBe(1536 * MiB)
    expect(parseBytesFlag('2tb', '--max-storage', MiB)).toBe(2 * 1024 * 1024 * MiB)
    expect(parseBytesFlag('64k', '--max-storage', 1)).toBe(64 * KiB)
    for (const bad of ['', '12Q', '-5G', 'G', '1e9', '10 GB extra', '100']) {
      expect(() => parseBytesFlag(bad, '--max-storage', MiB)).toThrow(expect.objectContaining({ code: 'ERR_USAGE', message: expect.stringContaining('--max-storage') as string }) as Error)
    }
    const dir = await scratch()
    expect((await nodeInit({ 'data-dir': dir, open: true, 'max-storage': '3G' })).init.maxStorageBytes).toBe(3 * 1024 * MiB)
    expect((await nodeInit({ 'data-dir': dir, open: true })).init.maxStorageBytes).toBeUndefined()
  })

  it('a bad value stops `start` with exit code 2 and one line naming the flag, before the data directory is made', async () => {
    const dir = join(await scratch(), 'never')
    const res = await runCli(['start', '--data-dir', dir, '--max-storage', '10X'])
    expect(res.code).toBe(2)
    expect(res.stderr.trim().split('\n')).toHaveLength(1)
    expect(res.stderr).toMatch(/--max-storage must be a size .*"10X"/)
    expect(existsSync(dir)).toBe(false)
    const help = await runCli(['start', '--help'])
    expect(help.stdout).toMatch(/--max-storage BYTES .*512M, 10G/)
  })
})

describe('BlobStore on a storage budget', () => {
  async function storeOn (dir: string, maxBytes: number, referenced: Set<string> = new Set()): Promise<{ store: BlobStore, budget: StorageBudget }> {
    const budget = await budgetOn(dir, maxBytes)
    const store = new BlobStore(dir, budget)
    await store.start()
    store.useReferences(() => referenced)
    return { store, budget }
  }

  it('evicts unreferenced blobs least recently used first, and never one a job names, provides or grants', async () => {
    const dir = await scratch()
    const referenced = new Set<string>()
    const { store, budget } = await storeOn(dir, 100 * KiB, referenced)
    const size = 20 * KiB
    const cids: string[] = []
    for (let i = 0; i < 5; i++) cids.push(await store.put(bytesOf(size, i)))
    const [c0, c1, c2, c3, c4] = cids as [string, string, string, string, string]
    expect(budget.usedBytes()).toBe(5 * size)
    referenced.add(c0) // a job names c0
    const releaseProvider = store.provide(c2, () => bytesOf(size, 2)) // a running job serves c2
    const releaseGrant = store.grant('peer-1', c3) // a peer may fetch c3
    expect(await store.get(c1)).toEqual(bytesOf(size, 1)) // c1 is now the most recently used
    // Order now, oldest first: c0 (named), c2 (provided), c3 (granted), c4, c1.
    const c5 = await store.put(bytesOf(size, 5))
    expect(store.onDisk(c4)).toBe(false)
    for (const cid of [c0, c1, c2, c3, c5]) expect(store.onDisk(cid)).toBe(true)
    const c6 = await store.put(bytesOf(size, 6))
    expect(store.onDisk(c1)).toBe(false)
    expect(budget.info().evictedBlobs).toBe(2)
    expect(budget.usedBytes()).toBe(5 * size)
    // The evicted files are gone from disk too, once their unlink ran.
    await store.put(bytesOf(size, 5)) // already there: nothing written, nothing evicted
    expect(budget.info().evictedBlobs).toBe(2)
    await expect.poll(() => existsSync(join(dir, 'blobs', c4)) || existsSync(join(dir, 'blobs', c1))).toBe(false)
    expect(await store.get(c4)).toBeUndefined()
    // Unheld, c2 and c3 are the oldest: next to go.
    releaseProvider()
    releaseGrant()
    await store.put(bytesOf(size, 7))
    expect(store.onDisk(c2)).toBe(false)
    expect(store.onDisk(c3)).toBe(true)
    expect(store.onDisk(c0)).toBe(true)
    expect(store.onDisk(c6)).toBe(true)
  })

  it('refuses an upload that even eviction cannot make room for with ERR_STORAGE_FULL, evicting nothing and leaving no file', async () => {
    const dir = await scratch()
    const referenced = new Set<string>()
    const { store, budget } = await storeOn(dir, 100 * KiB, referenced)
    const kept = await store.put(bytesOf(40 * KiB, 1))
    const spare = await store.put(bytesOf(30 * KiB, 2))
    referenced.add(kept)
    // 70 KiB used, 30 KiB of it evictable: 70 KiB more cannot fit.
    await expect(store.put(bytesOf(70 * KiB, 3))).rejects.toMatchObject({ code: 'ERR_STORAGE_FULL', neededBytes: 70 * KiB, maxBytes: 100 * KiB })
    expect(store.onDisk(spare)).toBe(true)
    expect(budget.info()).toMatchObject({ evictedBlobs: 0, refused: 1, reservedBytes: 0, evictableBytes: 30 * KiB })
    expect(readdirSync(join(dir, 'blobs')).sort()).toEqual([kept, spare].sort())
    // 50 KiB can, by evicting the spare one.
    await store.put(bytesOf(50 * KiB, 4))
    expect(store.onDisk(spare)).toBe(false)
    expect(store.onDisk(kept)).toBe(true)
  })

  it('keeps the least-recently-used order across a restart (a read refreshes the file\'s mtime), and evicts nothing until told what is referenced', async () => {
    const dir = await scratch()
    const first = await storeOn(dir, 100 * KiB)
    const a = await first.store.put(bytesOf(30 * KiB, 1))
    const b = await first.store.put(bytesOf(30 * KiB, 2))
    const c = await first.store.put(bytesOf(30 * KiB, 3))
    await first.store.get(a) // order: b, c, a

    const budget = await budgetOn(dir, 100 * KiB)
    expect(budget.usedBytes()).toBe(90 * KiB)
    const store = new BlobStore(dir, budget)
    await store.start()
    // Before the job manager has restored its jobs, nothing is known to be unreferenced.
    expect(store.evictable()).toBe(0)
    await expect(store.put(bytesOf(30 * KiB, 4))).rejects.toMatchObject({ code: 'ERR_STORAGE_FULL' })
    store.useReferences(() => new Set())
    await store.put(bytesOf(30 * KiB, 4))
    expect([store.onDisk(a), store.onDisk(b), store.onDisk(c)]).toEqual([true, false, true])
    await store.put(bytesOf(30 * KiB, 5))
    expect([store.onDisk(a), store.onDisk(b), store.onDisk(c)]).toEqual([true, false, false])
  })

  it('a write past the budget by an admitted job is never refused; it evicts to get back under', async () => {
    const dir = await scratch()
    const { store, budget } = await storeOn(dir, 100 * KiB)
    const old = await store.put(bytesOf(60 * KiB, 1))
    budget.reserve(jobOwner('t'), 10 * KiB, 'job t')
    // The job's model is larger than it reserved: written anyway, and the old blob makes way.
    const model = await store.put(bytesOf(50 * KiB, 2), jobOwner('t'))
    expect(store.onDisk(model)).toBe(true)
    expect(store.onDisk(old)).toBe(false)
    expect(budget.reservedBytes).toBe(0)
  })
})

describe('Journal on a storage budget', () => {
  it('counts inputs, partials and results as the files on disk are; frees inputs and partials at finish and the folder at remove; drops folders no row names at open', async () => {
    const dir = await scratch()
    await mkdir(join(dir, 'jobs', 'orphan'), { recursive: true })
    await writeFile(join(dir, 'jobs', 'orphan', 'input-a.npy'), bytesOf(5000, 1))
    const budget = await budgetOn(dir, 10 * MiB)
    const journal = new Journal(dir, budget)
    await journal.open()
    // The budget's count is always what is under the data directory.
    const onDisk = (): number => filesUnder(dir).reduce((n, f) => n + statSync(join(dir, f)).size, 0)
    expect(existsSync(join(dir, 'jobs', 'orphan'))).toBe(false)
    expect(budget.usedBytes()).toBe(onDisk())
    const inputs = { a: tensor(64, 32), b: tensor(32, 8) }
    const j = job('j1', inputs)
    budget.reserve(jobOwner('j1'), 40 * KiB, 'job j1')
    await journal.submitted(j, inputs)
    expect(budget.usedBytes()).toBe(onDisk())
    const written = filesUnder(join(dir, 'jobs')).reduce((n, f) => n + statSync(join(dir, 'jobs', f)).size, 0)
    expect(written).toBeGreaterThan((64 * 32 + 32 * 8) * 4)
    expect(budget.reservedBytes).toBe(40 * KiB - written) // drawn from the job's reservation
    await journal.shardDone(j, 0, { out: tensor(32, 8, 2) })
    expect(budget.usedBytes()).toBe(onDisk())
    j.finish('succeeded', tensor(64, 8, 3))
    await journal.finished(j)
    expect(filesUnder(join(dir, 'jobs'))).toEqual(['j1/result.npy'])
    expect(budget.usedBytes()).toBe(onDisk())
    await journal.remove('j1')
    expect(filesUnder(join(dir, 'jobs'))).toEqual([])
    expect(budget.usedBytes()).toBe(onDisk())
    journal.close()
  })

  it('keeps small partials in their shard\'s row (no file) and large ones in files; both come back after a reopen', async () => {
    const dir = await scratch()
    const journal = new Journal(dir)
    await journal.open()
    const inputs = { a: tensor(64, 32), b: tensor(32, 8) }
    const j = job('j2', inputs)
    await journal.submitted(j, inputs)
    const small = { out: tensor(32, 8, 2), idx: hostTensor('int32', [3], Int32Array.from([7, -1, 2 ** 31 - 1])) }
    const large = { out: tensor(160, 128, 4) }
    expect(INLINE_PARTIAL_BYTES).toBeLessThan(160 * 128 * 4)
    await journal.shardDone(j, 0, small)
    await journal.shardDone(j, 1, large)
    expect(filesUnder(journal.jobDir('j2'))).toEqual(['input-a.npy', 'input-b.npy', 'shard-1-out.npy'])
    journal.close()
    const again = new Journal(dir)
    await again.open()
    const [stored] = again.load()
    const partials = await again.readPartials(stored ?? (undefined as never))
    expect(partials.get(0)?.out).toEqual(small.out)
    expect(partials.get(0)?.idx).toEqual(small.idx)
    expect(partials.get(1)?.out).toEqual(large.out)
    again.close()
  })

  it('opens a journal written before inline partials (no data column), whose rows name files', async () => {
    const dir = await scratch()
    const journal = new Journal(dir)
    await journal.open()
    const inputs = { a: tensor(4, 4) }
    const j = job('old', inputs)
    await journal.submitted(j, inputs)
    await journal.shardDone(j, 0, { out: tensor(160, 128, 5) })
    journal.close()
    // Rebuild the shards table as the old schema had it.
    const db = new DatabaseSync(join(dir, 'journal.sqlite'))
    db.exec(`CREATE TABLE shards_old (job TEXT NOT NULL, idx INTEGER NOT NULL, files TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (job, idx));
      INSERT INTO shards_old SELECT job, idx, files, record FROM shards; DROP TABLE shards; ALTER TABLE shards_old RENAME TO shards;`)
    db.close()
    const again = new Journal(dir)
    await again.open()
    const [stored] = again.load()
    expect((await again.readPartials(stored ?? (undefined as never))).get(0)?.out).toEqual(tensor(160, 128, 5))
    await again.shardDone(j, 1, { out: tensor(2, 2, 6) })
    again.close()
  })

  it('belongs to one process: a second journal on the same data directory is refused with ERR_DATA_DIR', async () => {
    const dir = await scratch()
    const first = new Journal(dir)
    await first.open()
    await expect(new Journal(dir).open()).rejects.toMatchObject({ code: 'ERR_DATA_DIR', message: expect.stringContaining('in use by another tensormesh node') as string })
    first.close()
    const second = new Journal(dir)
    await second.open()
    second.close()
  })

  it('a training checkpoint is one file per round; a record ahead of the last checkpoint on disk resumes from that checkpoint', async () => {
    const dir = await scratch()
    const journal = new Journal(dir)
    await journal.open()
    const inputs = { x: tensor(8, 4) }
    const j = new Job({ id: 'train1', op: 'train', params: { rounds: 5 }, inputs, verify: { replicas: 1, spotCheck: 0, rtol: 1e-3 } })
    await journal.submitted(j, inputs)
    const state = (round: number): { round: number, w: Float32Array, m: Float32Array, v: Float32Array } =>
      ({ round, w: Float32Array.from([round, 1, 2]), m: Float32Array.from([round, 10, 20]), v: Float32Array.from([round, 100, 200]) })
    const metric = (round: number): { round: number, loss: number, accuracy: number, testLoss: number, ms: number, peers: number } => ({ round, loss: 1 / round, accuracy: round / 10, testLoss: 1, ms: 1, peers: 1 })
    j.metrics = { rounds: [metric(1)] }
    await journal.checkpoint(j, state(1))
    j.metrics.rounds.push(metric(2))
    await journal.checkpoint(j, state(2))
    expect((await readdir(journal.jobDir('train1'))).filter(f => f.startsWith('ckpt-'))).toEqual(['ckpt-2.npy'])
    // The node stopped after round 3's metrics but before its checkpoint reached the disk.
    j.metrics.rounds.push(metric(3))
    journal.updated(j)
    const stored = journal.load().find(s => s.id === 'train1')
    expect(stored?.record?.metrics?.rounds).toHaveLength(3)
    const cp = await journal.readCheckpoint(stored ?? (undefined as never))
    expect(cp?.round).toBe(2)
    expect([...(cp?.w ?? [])]).toEqual([2, 1, 2])
    expect([...(cp?.m ?? [])]).toEqual([2, 10, 20])
    expect([...(cp?.v ?? [])]).toEqual([2, 100, 200])
    journal.close()
  })
})

// A real full filesystem: a tiny tmpfs, mounted as root. Elsewhere these tests are skipped, saying why.
const fs8 = mountTmpfs('8m', 'storage.test.ts')
const tmpfs = fs8.dir
const mounted = fs8.mounted

/** Journals opened on the tmpfs: closed before it is unmounted, even when a test failed half way. */
const opened: Journal[] = []

afterAll(() => {
  for (const j of opened) j.close()
  fs8.remove()
  for (const dir of scratchDirs) rmSync(dir, { recursive: true, force: true })
})

describe.skipIf(!mounted)('on a full filesystem (tmpfs)', () => {
  let n = 0
  async function freshDir (): Promise<string> {
    const dir = join(tmpfs, `d${n++}`)
    await mkdir(dir)
    return dir
  }

  async function openJournal (dir: string, budget?: StorageBudget): Promise<Journal> {
    const journal = new Journal(dir, budget)
    opened.push(journal)
    await journal.open()
    return journal
  }

  it('the journal opens on a full filesystem after a clean close (no WAL index file to create) and serves its finished jobs', async () => {
    const dir = await freshDir()
    const journal = await openJournal(dir)
    const inputs = { a: tensor(4, 4), b: tensor(4, 4) }
    const done = job('done', inputs)
    await journal.submitted(done, inputs)
    done.finish('succeeded', tensor(4, 4, 5))
    await journal.finished(done)
    journal.close() // with room: SQLite folds the WAL back and deletes its files
    expect(readdirSync(dir).filter(f => f.startsWith('journal.sqlite'))).toEqual(['journal.sqlite'])
    const filler = fillFilesystem(tmpfs)
    try {
      const again = await openJournal(dir)
      const stored = again.load()
      expect(stored.map(s => [s.id, s.state])).toEqual([['done', 'succeeded']])
      expect([...(await again.readResult(stored[0]?.resultPath ?? '')).data]).toEqual([...tensor(4, 4, 5).data])
      // Its own writes fail cleanly, as ERR_STORAGE_FULL, without tearing anything.
      await expect(again.submitted(job('late', inputs), inputs)).rejects.toMatchObject({ code: 'ERR_STORAGE_FULL' })
      again.close()
    } finally {
      rmSync(filler)
    }
    const third = await openJournal(dir)
    expect(third.load().map(s => s.id)).toEqual(['done'])
    third.close()
  })

  it('ENOSPC writing a job\'s inputs is ERR_STORAGE_FULL and leaves no temporary file, no folder and no row; the journal reopens with the jobs it had', async () => {
    const dir = await freshDir()
    // The budget believes there is room, so the writes reach the real disk and its ENOSPC.
    const budget = await budgetOn(dir, 1024 * MiB)
    const journal = await openJournal(dir, budget)
    const small = { a: tensor(4, 4), b: tensor(4, 4) }
    const done = job('done', small)
    await journal.submitted(done, small)
    done.finish('succeeded', tensor(4, 4, 9))
    await journal.finished(done)
    const filler = fillFilesystem(tmpfs)
    try {
      const big = { a: tensor(256, 256), b: tensor(256, 256) }
      await expect(journal.submitted(job('big', big), big)).rejects.toMatchObject({ code: 'ERR_STORAGE_FULL' })
      expect(existsSync(journal.jobDir('big'))).toBe(false)
      expect(filesUnder(join(dir, 'jobs'))).toEqual(['done/result.npy'])
      expect(journal.load().map(s => s.id)).toEqual(['done'])
      journal.close()
      // Reopened while the disk is still full: WAL's index is in memory, so it opens and serves.
      const again = await openJournal(dir, budget)
      const stored = again.load()
      expect(stored.map(s => [s.id, s.state])).toEqual([['done', 'succeeded']])
      expect([...(await again.readResult(stored[0]?.resultPath ?? '')).data]).toEqual([...tensor(4, 4, 9).data])
      again.close()
    } finally {
      rmSync(filler)
    }
  })

  it('ENOSPC writing a partial or a result leaves no row naming a missing file; the job stays resumable with its inputs', async () => {
    const dir = await freshDir()
    const budget = await budgetOn(dir, 1024 * MiB)
    const journal = await openJournal(dir, budget)
    const inputs = { a: tensor(32, 16), b: tensor(16, 8) }
    const j = job('j', inputs)
    await journal.submitted(j, inputs)
    // Over INLINE_PARTIAL_BYTES, so in a file of its own.
    await journal.shardDone(j, 0, { out: tensor(160, 128, 1) })
    const filler = fillFilesystem(tmpfs)
    try {
      await expect(journal.shardDone(j, 1, { out: tensor(512, 64, 2) })).rejects.toMatchObject({ code: 'ERR_STORAGE_FULL' })
      j.finish('succeeded', tensor(512, 64, 3))
      await expect(journal.finished(j)).rejects.toMatchObject({ code: 'ERR_STORAGE_FULL' })
      expect(filesUnder(journal.jobDir('j'))).toEqual(['input-a.npy', 'input-b.npy', 'shard-0-out.npy'])
    } finally {
      rmSync(filler)
    }
    journal.close()
    const again = await openJournal(dir, budget)
    const [stored] = again.load()
    expect(stored?.state).toBe('queued')
    expect(stored?.resultPath).toBeUndefined()
    expect([...(stored?.partials.keys() ?? [])]).toEqual([0])
    const read = await again.readInputs(stored ?? (undefined as never))
    expect('tensors' in read && [...(read.tensors.a?.data ?? [])]).toEqual([...inputs.a.data])
    expect((await again.readPartials(stored ?? (undefined as never))).get(0)?.out?.data).toEqual(tensor(160, 128, 1).data)
    again.close()
  })

  it('ENOSPC writing a blob is ERR_STORAGE_FULL: no temporary file, not stored, and the budget unchanged', async () => {
    const dir = await freshDir()
    const budget = await budgetOn(dir, 1024 * MiB)
    const store = new BlobStore(dir, budget)
    await store.start()
    store.useReferences(() => new Set())
    const kept = await store.put(bytesOf(10 * KiB, 1))
    const used = budget.usedBytes()
    const filler = fillFilesystem(tmpfs)
    try {
      await expect(store.put(bytesOf(100 * KiB, 2))).rejects.toMatchObject({ code: 'ERR_STORAGE_FULL' })
      expect(readdirSync(join(dir, 'blobs'))).toEqual([kept])
      expect(budget.usedBytes()).toBe(used)
      expect(budget.reservedBytes).toBe(0)
      expect(await store.get(kept)).toEqual(bytesOf(10 * KiB, 1))
    } finally {
      rmSync(filler)
    }
  })

  it('with the real statfs, a full filesystem refuses before writing anything', async () => {
    const dir = await freshDir()
    const budget = new StorageBudget({ dataDir: dir, live: JOURNAL_FILES })
    await budget.start()
    const filler = fillFilesystem(tmpfs)
    try {
      expect(budget.info().diskFreeBytes).toBe(0)
      expect(() => { budget.reserve('up', 1, 'one byte') }).toThrow(expect.objectContaining({ code: 'ERR_STORAGE_FULL', message: expect.stringContaining('filesystem') as string }) as Error)
    } finally {
      rmSync(filler)
    }
    // An 8 MiB filesystem keeps 1 MiB free, so 6 MiB fit and 7.5 do not.
    expect(() => { budget.check(6 * MiB, 'six') }).not.toThrow()
    expect(() => { budget.check(7.5 * MiB, 'seven and a half') }).toThrow(expect.objectContaining({ code: 'ERR_STORAGE_FULL' }) as Error)
  })
})
