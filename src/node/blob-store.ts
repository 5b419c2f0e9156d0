import { mkdir, readFile, readdir, rm, stat, utimes } from 'node:fs/promises'
import { join } from 'node:path'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { create as createDigest } from 'multiformats/hashes/digest'
import { sha256 } from 'multiformats/hashes/sha2'
import { InvalidInputError } from '../errors.ts'
import { writeAtomic } from './storage.ts'
import type { Evictor, StorageBudget } from './storage.ts'

/**
 * Blobs kept in memory for peers to fetch, most recently used first. A
 * model is a few MB and matmul's b up to 1 GiB; 1 GiB holds the working set
 * of a job or two without letting a long-running node grow without bound.
 */
export const MAX_MEMORY_BLOB_BYTES = 1024 * 1024 * 1024

/**
 * The content address of bytes: CIDv1, raw codec, sha-256 (as IPFS names raw
 * blocks). Hashed by WebCrypto, which runs off the event loop: a 64 MiB
 * tensor takes ~150 ms to hash, too long to block gossip.
 */
export async function cidOf (bytes: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>))
  return CID.createV1(raw.code, createDigest(sha256.code, digest)).toString()
}

/** Parses and checks a CID string: v1, raw, sha-256 only. */
export function parseCid (value: string): CID {
  let cid: CID
  try {
    cid = CID.parse(value)
  } catch {
    throw new InvalidInputError(`"${value.slice(0, 80)}" is not a CID`, 'ERR_BAD_CID')
  }
  if (cid.version !== 1 || cid.code !== raw.code || cid.multihash.code !== sha256.code) {
    throw new InvalidInputError(`CID ${value.slice(0, 80)} is not a CIDv1 raw sha-256 address`, 'ERR_BAD_CID')
  }
  return cid
}

/**
 * Content-addressed blobs: on disk (`DATA_DIR/blobs/CID`) for what must
 * outlive the process (trained models), in a bounded memory cache for what
 * peers fetch during a job, and from providers (functions that produce the
 * bytes on demand, e.g. a job's shared tensor encoded as .npy) so a job's
 * tensors are not held twice.
 *
 * On-disk blobs count against the data directory's StorageBudget: an
 * upload reserves its bytes before it is written, and when a reservation
 * needs room the store evicts the on-disk blobs that nothing references,
 * least recently used first (`get` refreshes a blob, and its file's mtime,
 * so the order survives a restart). Referenced: named by a job the job
 * manager keeps (`useReferences`), provided or granted by a running job.
 */
export class BlobStore implements Evictor {
  private readonly dir: string
  private readonly storage?: StorageBudget
  /** On-disk blobs: CID -> bytes, least recently used first. */
  private readonly disk = new Map<string, number>()
  /** Blobs being written (a second put of the same CID waits for the first), and evicted ones being unlinked. */
  private readonly writing = new Map<string, Promise<void>>()
  private readonly unlinking = new Map<string, Promise<void>>()
  /** Until the job manager has restored its jobs, nobody can say what is unreferenced: nothing is evicted. */
  private referenced?: () => Set<string>
  private lastTouch = 0
  private readonly memory = new Map<string, Uint8Array>()
  private memoryBytes = 0
  private readonly providers = new Map<string, { produce: () => Uint8Array, refs: number }>()
  /**
   * Which peer may fetch which CID over /tensormesh/blob/1.0.0: CID -> peer
   * -> how many of this node's running jobs granted it. A job grants what
   * its shards name to the peers it sends them to, and releases the grants
   * when it ends; nothing else is served to peers (this node's own API reads
   * the store directly). Bounded by the jobs that run at once, the refs a
   * shard carries and the peers a job uses.
   */
  private readonly grants = new Map<string, Map<string, number>>()

  constructor (dataDir: string, storage?: StorageBudget) {
    this.dir = join(dataDir, 'blobs')
    this.storage = storage
  }

  /** Indexes the blobs already on disk, oldest access first (by mtime, which `get` refreshes). */
  async start (): Promise<void> {
    await mkdir(this.dir, { recursive: true })
    const found: Array<{ cid: string, bytes: number, mtime: number }> = []
    for (const name of await readdir(this.dir)) {
      try {
        parseCid(name)
        const s = await stat(join(this.dir, name))
        if (s.isFile()) found.push({ cid: name, bytes: s.size, mtime: s.mtimeMs })
      } catch {} // not a blob (a stray file, a temporary one a crash left): neither served nor evicted
    }
    found.sort((a, b) => a.mtime - b.mtime)
    for (const f of found) this.disk.set(f.cid, f.bytes)
    this.storage?.useEvictor(this)
  }

  /**
   * Which CIDs must stay on disk whatever the budget: the job manager's
   * answer (blobs its kept jobs name), asked only when room is needed.
   * Eviction starts with this call, once every journaled job is back.
   */
  useReferences (referenced: () => Set<string>): void {
    this.referenced = referenced
  }

  /**
   * Stores bytes on disk and returns their CID. Bytes already stored cost
   * nothing. `owner`: the job whose reservation pays for them (a trained
   * model); without one the bytes are reserved here, evicting what
   * nothing references, or refused with ERR_STORAGE_FULL.
   */
  async put (bytes: Uint8Array, owner?: string): Promise<string> {
    const cid = await cidOf(bytes)
    for (;;) {
      if (this.disk.has(cid)) {
        await this.touch(cid)
        return cid
      }
      const pending = this.writing.get(cid)
      if (pending === undefined) break
      await pending.catch(() => {})
    }
    const write = this.write(cid, bytes, owner)
    this.writing.set(cid, write)
    try {
      await write
    } finally {
      this.writing.delete(cid)
    }
    return cid
  }

  private async write (cid: string, bytes: Uint8Array, owner: string | undefined): Promise<void> {
    const storage = this.storage
    const upload = owner === undefined && storage !== undefined ? `upload:${cid}` : undefined
    if (upload !== undefined) storage?.reserve(upload, bytes.byteLength, `blob ${cid.slice(0, 16)}… (${bytes.byteLength} bytes)`)
    try {
      await this.unlinking.get(cid) // evicted a moment ago: let its unlink finish before the file comes back
      await writeAtomic(join(this.dir, cid), bytes, storage, upload ?? owner)
      this.disk.set(cid, bytes.byteLength)
      await this.touch(cid)
    } finally {
      if (upload !== undefined) storage?.release(upload)
    }
  }

  /** Bytes of on-disk blobs that eviction could free now. */
  evictable (): number {
    if (this.referenced === undefined) return 0
    const keep = this.referenced()
    let bytes = 0
    for (const [cid, size] of this.disk) if (!this.held(cid, keep)) bytes += size
    return bytes
  }

  /** Removes unreferenced on-disk blobs, least recently used first, until `bytes` are freed or none is left. */
  evict (bytes: number): { bytes: number, count: number, done: Promise<void> } {
    if (this.referenced === undefined) return { bytes: 0, count: 0, done: Promise.resolve() }
    const keep = this.referenced()
    let freed = 0
    const gone: Array<Promise<void>> = []
    for (const [cid, size] of this.disk) {
      if (freed >= bytes) break
      if (this.held(cid, keep)) continue
      this.disk.delete(cid)
      freed += size
      const unlink = rm(join(this.dir, cid), { force: true }).catch(() => {}).finally(() => {
        if (this.unlinking.get(cid) === unlink) this.unlinking.delete(cid)
      })
      this.unlinking.set(cid, unlink)
      gone.push(unlink)
    }
    return { bytes: freed, count: gone.length, done: Promise.all(gone).then(() => {}) }
  }

  /** Whether an on-disk blob must stay: a kept job names it, or a running job provides or grants it. */
  private held (cid: string, keep: Set<string>): boolean {
    return keep.has(cid) || this.providers.has(cid) || this.grants.has(cid)
  }

  /** Whether the blob is on this node's disk (not memory or a provider). */
  onDisk (cid: string): boolean {
    return this.disk.has(cid)
  }

  /** Marks a blob most recently used: last in the eviction order, and its file's mtime (the order after a restart). */
  private async touch (cid: string): Promise<void> {
    const size = this.disk.get(cid)
    if (size === undefined) return
    this.disk.delete(cid)
    this.disk.set(cid, size)
    // Strictly increasing, so two touches in one millisecond keep their order after a restart.
    this.lastTouch = Math.max(Date.now(), this.lastTouch + 1)
    const when = new Date(this.lastTouch)
    await utimes(join(this.dir, cid), when, when).catch(() => {}) // evicted meanwhile: nothing to refresh
  }

  /** Keeps bytes in the memory cache (evicted when it is full). */
  remember (cid: string, bytes: Uint8Array): void {
    if (bytes.byteLength > MAX_MEMORY_BLOB_BYTES) return
    this.memory.delete(cid)
    this.memory.set(cid, bytes)
    this.memoryBytes += bytes.byteLength
    for (const [key, value] of this.memory) {
      if (this.memoryBytes <= MAX_MEMORY_BLOB_BYTES) break
      this.memory.delete(key)
      this.memoryBytes -= value.byteLength
    }
  }

  /** Registers a producer of a blob's bytes; returns a function that unregisters it. */
  provide (cid: string, produce: () => Uint8Array): () => void {
    const existing = this.providers.get(cid)
    if (existing !== undefined) existing.refs++
    else this.providers.set(cid, { produce, refs: 1 })
    return () => {
      const p = this.providers.get(cid)
      if (p === undefined) return
      if (--p.refs === 0) this.providers.delete(cid)
    }
  }

  /** Lets `peer` fetch `cid` until the returned release is called (once per grant; a second call does nothing). */
  grant (peer: string, cid: string): () => void {
    let peers = this.grants.get(cid)
    if (peers === undefined) {
      peers = new Map()
      this.grants.set(cid, peers)
    }
    peers.set(peer, (peers.get(peer) ?? 0) + 1)
    let released = false
    return () => {
      if (released) return
      released = true
      const ps = this.grants.get(cid)
      const n = ps?.get(peer)
      if (ps === undefined || n === undefined) return
      if (n > 1) ps.set(peer, n - 1)
      else ps.delete(peer)
      if (ps.size === 0) this.grants.delete(cid)
    }
  }

  /** Whether `peer` holds a grant for `cid` (a map lookup: no disk, no hashing). */
  servable (peer: string, cid: string): boolean {
    return this.grants.get(cid)?.has(peer) === true
  }

  async has (cid: string): Promise<boolean> {
    return this.memory.has(cid) || this.providers.has(cid) || this.disk.has(cid)
  }

  /** The blob's bytes if this node has them (memory, provider or disk). */
  async get (cid: string): Promise<Uint8Array | undefined> {
    const mem = this.memory.get(cid)
    if (mem !== undefined) {
      // Refresh its place in the LRU order.
      this.memory.delete(cid)
      this.memory.set(cid, mem)
      return mem
    }
    const provider = this.providers.get(cid)
    if (provider !== undefined) return provider.produce()
    parseCid(cid) // never turn a peer's string into a path before it is a valid CID
    if (!this.disk.has(cid)) return undefined
    try {
      const [bytes] = await Promise.all([readFile(join(this.dir, cid)), this.touch(cid)])
      return new Uint8Array(bytes)
    } catch {
      return undefined // evicted while we read
    }
  }
}
