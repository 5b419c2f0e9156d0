import { multiaddr } from '@multiformats/multiaddr'
import { equals } from 'uint8arrays/equals'
import { errorMessage } from '../../errors.ts'
import { ADVERT_VERSION, AdvertCodec, MAX_ADVERT_BYTES, MAX_GFLOPS, MAX_MEAN_GAP_MS, MAX_SLOTS } from './advert.ts'
import type { Advert } from './advert.ts'
import type { PeerId } from '@libp2p/interface'

/**
 * How far an advert's timestamp may sit from our clock. NTP keeps hosts within
 * a second; 30 s tolerates a badly kept laptop without letting a peer pin an
 * advert far in the future.
 */
export const MAX_CLOCK_SKEW_MS = 30_000

/** Why an advert was dropped; each reason has its own counter. */
export type RejectReason = 'oversized' | 'garbage' | 'spoofed' | 'version' | 'invalid' | 'clock' | 'replayed'

/** A checked advert, with the peer id and addresses in their usual string forms. */
export interface PeerCapacity {
  peerId: string
  version: number
  seq: number
  timestampMs: number
  backend: string
  cores: number
  memTotalBytes: number
  memFreeBytes: number
  gpu?: { name: string, memoryBytes: number }
  gflops: number
  slots: number
  busy: number
  queued: number
  operators: string[]
  addrs: string[]
  /** The peer's bulk channel port (0: none). */
  bulkPort: number
  /** Mean ms between the peer's adverts (0: every interval); sampling.ts. */
  meanGapMs: number
  /** The peer's advert interval (0: unknown, an older node). */
  intervalMs: number
}

export type AdvertVerdict =
  | { ok: true, capacity: PeerCapacity }
  | { ok: false, reason: RejectReason, message: string }

const NAME = /^[a-z0-9][a-z0-9._-]*$/

function reject (reason: RejectReason, message: string): AdvertVerdict {
  return { ok: false, reason, message }
}

export interface ValidateContext {
  /** The gossip message's signer: the only peer allowed to describe itself. */
  from: PeerId
  /** Our wall clock. */
  now: number
  /** Highest sequence number accepted so far from this author, if any. */
  lastSeq?: number
}

/**
 * Decodes and checks one advert. Decoding bounds every field; this then checks
 * meaning: the author, ranges, the clock and the sequence number.
 */
export function validateAdvert (bytes: Uint8Array, ctx: ValidateContext): AdvertVerdict {
  if (bytes.byteLength > MAX_ADVERT_BYTES) return reject('oversized', `advert is ${bytes.byteLength} bytes, limit ${MAX_ADVERT_BYTES}`)
  let advert: Advert
  try {
    advert = AdvertCodec.decode(bytes)
  } catch (err) {
    return reject('garbage', `advert does not decode: ${errorMessage(err)}`)
  }
  if (advert.version !== ADVERT_VERSION) return reject('version', `advert version ${advert.version}, this node speaks ${ADVERT_VERSION}`)
  if (!equals(advert.peerId, ctx.from.toMultihash().bytes)) return reject('spoofed', `advert describes another peer than its author ${ctx.from.toString()}`)
  if (Math.abs(advert.timestampMs - ctx.now) > MAX_CLOCK_SKEW_MS) return reject('clock', `advert timestamp is ${advert.timestampMs - ctx.now} ms from our clock, limit ${MAX_CLOCK_SKEW_MS}`)
  if (ctx.lastSeq !== undefined && advert.seq <= ctx.lastSeq) return reject('replayed', `advert seq ${advert.seq} is not newer than ${ctx.lastSeq}`)

  if (!NAME.test(advert.backend)) return reject('invalid', 'advert backend is not a plain name')
  for (const op of advert.operators) if (!NAME.test(op)) return reject('invalid', 'advert operator is not a plain name')
  if (advert.cores < 1 || advert.cores > MAX_SLOTS) return reject('invalid', `advert cores ${advert.cores} outside 1..${MAX_SLOTS}`)
  if (advert.slots > MAX_SLOTS || advert.busy > advert.slots) return reject('invalid', `advert slots ${advert.slots} / busy ${advert.busy} out of range`)
  if (!Number.isFinite(advert.gflops) || advert.gflops < 0 || advert.gflops > MAX_GFLOPS) return reject('invalid', 'advert gflops out of range')
  if (advert.memFreeBytes > advert.memTotalBytes) return reject('invalid', 'advert free memory exceeds total')
  if (advert.bulkPort > 65535) return reject('invalid', `advert bulk port ${advert.bulkPort} is not a TCP port`)
  if (advert.meanGapMs > MAX_MEAN_GAP_MS) return reject('invalid', `advert mean gap ${advert.meanGapMs} ms exceeds ${MAX_MEAN_GAP_MS}`)
  if (advert.intervalMs > MAX_MEAN_GAP_MS) return reject('invalid', `advert interval ${advert.intervalMs} ms exceeds ${MAX_MEAN_GAP_MS}`)
  if (advert.meanGapMs > 0 && advert.meanGapMs < advert.intervalMs) return reject('invalid', `advert mean gap ${advert.meanGapMs} ms is shorter than its interval ${advert.intervalMs} ms`)

  const addrs: string[] = []
  for (const bytes of advert.addrs) {
    try {
      addrs.push(multiaddr(bytes).toString())
    } catch {
      return reject('invalid', 'advert carries a malformed multiaddr')
    }
  }

  const capacity: PeerCapacity = {
    peerId: ctx.from.toString(),
    version: advert.version,
    seq: advert.seq,
    timestampMs: advert.timestampMs,
    backend: advert.backend,
    cores: advert.cores,
    memTotalBytes: advert.memTotalBytes,
    memFreeBytes: advert.memFreeBytes,
    gflops: advert.gflops,
    slots: advert.slots,
    busy: advert.busy,
    queued: advert.queued,
    operators: advert.operators,
    addrs,
    bulkPort: advert.bulkPort,
    meanGapMs: advert.meanGapMs,
    intervalMs: advert.intervalMs
  }
  if (advert.gpuName !== '') capacity.gpu = { name: advert.gpuName, memoryBytes: advert.gpuMemBytes }
  return { ok: true, capacity }
}
