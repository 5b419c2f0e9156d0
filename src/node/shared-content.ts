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

/**
 * The coordinator's side of content addressing for one job: shared inputs
 * and blobs get a CID once, and this node serves their bytes to peers until
 * the job ends.
 */
export class JobShares {
  private readonly store: BlobStore
  private readonly tensors = new WeakMap<TensorData, Promise<string>>()
  private readonly blobs = new WeakMap<Uint8Array, Promise<string>>()
  private readonly releases: Array<() => void> = []

  constructor (store: BlobStore) {
    this.store = store
  }

  async tensorRef (t: HostTensor): Promise<string> {
    let p = this.tensors.get(t.data)
    if (p === undefined) {
      p = this.publish(encodeNpy(t))
      this.tensors.set(t.data, p)
    }
    return await p
  }

  async blobRef (bytes: Uint8Array): Promise<string> {
    let p = this.blobs.get(bytes)
    if (p === undefined) {
      p = this.publish(bytes)
      this.blobs.set(bytes, p)
    }
    return await p
  }

  /** Stop serving this job's content. */
  release (): void {
    for (const r of this.releases.splice(0)) r()
  }

  private async publish (bytes: Uint8Array): Promise<string> {
    const cid = await cidOf(bytes)
    this.releases.push(this.store.provide(cid, () => bytes))
    return cid
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
