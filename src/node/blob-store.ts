import { mkdir, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { create as createDigest } from 'multiformats/hashes/digest'
import { sha256 } from 'multiformats/hashes/sha2'
import { InvalidInputError } from '../errors.ts'
import { writeAtomic } from './jobs/journal.ts'

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
 */
export class BlobStore {
  private readonly dir: string
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

  constructor (dataDir: string) {
    this.dir = join(dataDir, 'blobs')
  }

  async start (): Promise<void> {
    await mkdir(this.dir, { recursive: true })
  }

  /** Stores bytes on disk and returns their CID. */
  async put (bytes: Uint8Array): Promise<string> {
    const cid = await cidOf(bytes)
    const path = join(this.dir, cid)
    if (!(await exists(path))) await writeAtomic(path, bytes)
    return cid
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
    return this.memory.has(cid) || this.providers.has(cid) || await exists(join(this.dir, cid))
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
    try {
      return new Uint8Array(await readFile(join(this.dir, cid)))
    } catch {
      return undefined
    }
  }
}

async function exists (path: string): Promise<boolean> {
  try {
    await stat(path)
    return true
  } catch {
    return false
  }
}
