import { encodeNpy, decodeNpy } from '../compute/npy.ts'
import { cidOf } from './blob-store.ts'
import type { BlobStore } from './blob-store.ts'
import type { HostTensor, TensorData } from '../compute/tensor.ts'
import type { BlobFetcher } from '../protocol/blob/index.ts'
import type { PeerId } from '@libp2p/interface'

/**
 * Decoded shared tensors a peer keeps, most recently used first: one per
 * job that sends this peer shards, so a peer decodes matmul's b once.
 */
export const MAX_TENSOR_CACHE_BYTES = 1024 * 1024 * 1024

/** Bytes with their content address. */
interface Addressed {
  cid: string
  bytes: Uint8Array
}

/**
 * A coordinator's memory of what it has addressed: a tensor's .npy bytes and
 * CID, kept for as long as the tensor itself lives. A training job sends the
 * same data array every round; it is encoded and hashed once, not once a round.
 */
export class ContentIndex {
  private readonly tensors = new WeakMap<TensorData, Promise<Addressed>>()
  private readonly blobs = new WeakMap<Uint8Array, Promise<Addressed>>()

  async tensor (t: HostTensor): Promise<Addressed> {
    let p = this.tensors.get(t.data)
    if (p === undefined) {
      p = address(encodeNpy(t))
      this.tensors.set(t.data, p)
    }
    return await p
  }

  async blob (bytes: Uint8Array): Promise<Addressed> {
    let p = this.blobs.get(bytes)
    if (p === undefined) {
      p = address(bytes)
      this.blobs.set(bytes, p)
    }
    return await p
  }
}

async function address (bytes: Uint8Array): Promise<Addressed> {
  return { cid: await cidOf(bytes), bytes }
}

/**
 * The coordinator's side of content addressing for one job: shared inputs
 * and blobs are addressed through the node's index, and this node serves
 * their bytes until the job ends, to the peers it sent shards naming them
 * and to no one else (a grant per peer and CID, released with the job).
 */
export class JobShares {
  private readonly store: BlobStore
  private readonly index: ContentIndex
  private readonly served = new Set<string>()
  /** `peer cid` pairs this job granted. */
  private readonly granted = new Set<string>()
  private readonly releases: Array<() => void> = []
  private released = false

  constructor (store: BlobStore, index: ContentIndex) {
    this.store = store
    this.index = index
  }

  async tensorRef (t: HostTensor): Promise<string> {
    return this.serve(await this.index.tensor(t))
  }

  async blobRef (bytes: Uint8Array): Promise<string> {
    return this.serve(await this.index.blob(bytes))
  }

  /**
   * Lets `peer` fetch these CIDs while the job lives: called as a shard
   * naming them goes to that peer. After release() it grants nothing (a
   * shard still being sent then is aborted anyway).
   */
  grant (peer: string, cids: string[]): void {
    if (this.released) return
    for (const cid of cids) {
      const key = `${peer} ${cid}`
      if (this.granted.has(key)) continue
      this.granted.add(key)
      this.releases.push(this.store.grant(peer, cid))
    }
  }

  /** Stop serving this job's content, to every peer. */
  release (): void {
    this.released = true
    for (const r of this.releases.splice(0)) r()
    this.served.clear()
    this.granted.clear()
  }

  private serve (a: Addressed): string {
    if (!this.served.has(a.cid) && !this.released) {
      this.served.add(a.cid)
      this.releases.push(this.store.provide(a.cid, () => a.bytes))
    }
    return a.cid
  }
}

/** The peer's side: shared tensors and blobs by CID, fetched once from the coordinator and cached. */
export class SharedCache {
  private readonly fetcher: BlobFetcher
  private readonly maxTensorBytes: number
  private readonly tensors = new Map<string, HostTensor>()
  private readonly pending = new Map<string, Promise<HostTensor>>()
  private bytes = 0

  constructor (fetcher: BlobFetcher, maxTensorBytes: number) {
    this.fetcher = fetcher
    this.maxTensorBytes = maxTensorBytes
  }

  async tensor (cid: string, name: string, from: PeerId): Promise<HostTensor> {
    const hit = this.tensors.get(cid)
    if (hit !== undefined) {
      this.tensors.delete(cid)
      this.tensors.set(cid, hit)
      return hit
    }
    let p = this.pending.get(cid)
    if (p === undefined) {
      // No caller's signal here: several shards wait on one fetch, and one
      // being cancelled must not fail the others (frame timeouts bound it).
      p = this.fetcher.get(cid, [from], undefined, false).then(bytes => {
        const t = decodeNpy(bytes, name, { maxTensorBytes: this.maxTensorBytes })
        this.keep(cid, t)
        return t
      }).finally(() => { this.pending.delete(cid) })
      this.pending.set(cid, p)
    }
    return await p
  }

  async blob (cid: string, from: PeerId): Promise<Uint8Array> {
    return await this.fetcher.get(cid, [from])
  }

  private keep (cid: string, t: HostTensor): void {
    this.tensors.set(cid, t)
    this.bytes += t.data.byteLength
    for (const [key, value] of this.tensors) {
      if (this.bytes <= MAX_TENSOR_CACHE_BYTES || key === cid) break
      this.tensors.delete(key)
      this.bytes -= value.data.byteLength
    }
  }
}
