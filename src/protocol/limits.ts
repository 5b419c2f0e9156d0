import { DEFAULT_MAX_TENSOR_BYTES } from '../compute/limits.ts'

/**
 * DESIGN: tensor bytes travel in chunked frames of at most 1 MiB, so one
 * frame never holds the muxer or the decoder for long and a receiver never
 * buffers more than a chunk ahead of where it copies.
 */
export const CHUNK_BYTES = 1024 * 1024

/** A header frame (shard or result description) is small: names, shapes, params. */
export const MAX_HEADER_BYTES = 128 * 1024

/** An operator's params travel as JSON; 64 KiB holds any chain of map ops we accept. */
export const MAX_PARAMS_BYTES = 64 * 1024

/** Tensors per shard request or result; our operators use at most a handful. */
export const MAX_TENSORS_PER_FRAME = 16

/** Dimensions per tensor; TF.js itself supports rank up to 6 for most kernels. */
export const MAX_RANK = 8

/** Limits on what a node accepts from peers; all can be set per node. */
export interface WireLimits {
  /** Largest single tensor, in bytes. */
  maxTensorBytes: number
  /** Largest sum of tensor bytes in one shard request or result. */
  maxShardBytes: number
  /** Longest wait for the next frame of a message before the stream is dropped. */
  frameTimeoutMs: number
}

export const DEFAULT_WIRE_LIMITS: WireLimits = {
  maxTensorBytes: DEFAULT_MAX_TENSOR_BYTES,
  // Two 1 GiB tensors: matmul's A-rows and B at the largest size we accept.
  maxShardBytes: 2 * DEFAULT_MAX_TENSOR_BYTES,
  // Loopback moves 1 MiB in a few ms; a LAN in tens. Thirty seconds without
  // a single frame means the peer is gone or hostile.
  frameTimeoutMs: 30_000
}
