import { messageCodec } from '../codec.ts'

/** Bumped when an advert's meaning changes; peers ignore versions they do not know. */
export const ADVERT_VERSION = 1

/**
 * Hard cap on an encoded advert. A full advert with four addresses and a
 * dozen operators is about 300 bytes; DESIGN asks for well under 1 KiB.
 */
export const MAX_ADVERT_BYTES = 1024
export const MAX_ADVERT_ADDRS = 8
export const MAX_ADDR_BYTES = 64
export const MAX_ADVERT_OPERATORS = 32
export const MAX_NAME_BYTES = 64
/** GPU names reported by drivers are under 100 characters. */
export const MAX_GPU_NAME_BYTES = 128
/** A slot is a worker thread; no machine we target has more cores than this. */
export const MAX_SLOTS = 1024
/** More than the fastest GPU's fp32 rate (~100 TFLOPS) by a factor of ten. */
export const MAX_GFLOPS = 1e6
/** A week: a mean gap that long is a mesh of 600k nodes at the sampled rate; more is a broken author. */
export const MAX_MEAN_GAP_MS = 7 * 24 * 3600_000

/** What a node says about itself every advert interval. */
export interface Advert {
  version: number
  /** The author's peer id, as multihash bytes; must match the gossip signer. */
  peerId: Uint8Array
  /** Strictly increasing per author; a replayed or reordered advert is dropped. */
  seq: number
  /** Author's wall clock, ms since the epoch. */
  timestampMs: number
  backend: string
  cores: number
  memTotalBytes: number
  memFreeBytes: number
  gpuName: string
  gpuMemBytes: number
  gflops: number
  slots: number
  busy: number
  queued: number
  operators: string[]
  /** Multiaddrs (binary) the author listens on, so peers can dial it for shards. */
  addrs: Uint8Array[]
  /** The author's bulk channel TCP port, 0 for none: peers that dialed it push large tensors there. */
  bulkPort: number
  /**
   * Mean time between this author's adverts (its interval over its publish
   * probability, sampling.ts): how long its entry stays fresh, and what it
   * counts for in a mesh-size estimate. 0 from nodes before sampling: one
   * interval.
   */
  meanGapMs: number
  /** The author's advert interval (its tick); with meanGapMs, its publish probability. 0 from older nodes. */
  intervalMs: number
}

export const AdvertCodec = messageCodec<Advert>('Advert', {
  version: { no: 1, kind: 'uint32' },
  peerId: { no: 2, kind: 'bytes', maxBytes: 64 },
  seq: { no: 3, kind: 'uint64' },
  timestampMs: { no: 4, kind: 'uint64' },
  backend: { no: 5, kind: 'string', maxBytes: MAX_NAME_BYTES },
  cores: { no: 6, kind: 'uint32' },
  memTotalBytes: { no: 7, kind: 'uint64' },
  memFreeBytes: { no: 8, kind: 'uint64' },
  gpuName: { no: 9, kind: 'string', maxBytes: MAX_GPU_NAME_BYTES },
  gpuMemBytes: { no: 10, kind: 'uint64' },
  gflops: { no: 11, kind: 'double' },
  slots: { no: 12, kind: 'uint32' },
  busy: { no: 13, kind: 'uint32' },
  queued: { no: 14, kind: 'uint32' },
  operators: { no: 15, kind: 'string', maxBytes: MAX_NAME_BYTES, repeated: true, maxCount: MAX_ADVERT_OPERATORS },
  addrs: { no: 16, kind: 'bytes', maxBytes: MAX_ADDR_BYTES, repeated: true, maxCount: MAX_ADVERT_ADDRS },
  bulkPort: { no: 17, kind: 'uint32' },
  meanGapMs: { no: 18, kind: 'uint64' },
  intervalMs: { no: 19, kind: 'uint32' }
}, MAX_ADVERT_BYTES)
