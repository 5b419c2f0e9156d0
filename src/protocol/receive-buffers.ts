/**
 * Reused memory for large received tensors. A fresh 256 MiB buffer costs
 * 65,536 page faults the first time its pages are written: measured here,
 * raw TCP into a fresh buffer ran at about half the rate of raw TCP into one
 * already mapped (bench section transfer). A peer that serves a stream of
 * large shards receives into the same few buffers instead.
 *
 * The buffers are SharedArrayBuffers, so the tensors cut from them reach a
 * worker thread as they are: the pool neither copies nor transfers shared
 * memory (pool.ts), and the buffer is still here to take back once the
 * shard's stream has ended. Idle buffers are bounded in bytes and in age.
 */

/** Idle bytes kept for reuse at most; a release past this lets the oldest idle buffer go. */
export const RECEIVE_BUFFERS_IDLE_BYTES = 768 * 1024 * 1024

/** An idle buffer unused this long is let go (a node that served one large job does not keep its memory). */
export const RECEIVE_BUFFERS_IDLE_MS = 60_000

/** Sizes round up to this, so shards of nearly the same size share buffers. */
const GRAIN = 1024 * 1024

/** A buffer this many times larger than asked is not reused for the request (it would hold memory for nothing). */
const MAX_SLACK = 2

export interface ReceiveLease {
  buffer: SharedArrayBuffer
  /** Gives the buffer back; later calls do nothing. Nothing may read or write views of it afterwards. */
  release: () => void
}

interface Idle {
  buffer: SharedArrayBuffer
  since: number
}

export class ReceiveBuffers {
  private idle: Idle[] = []
  private idleBytes = 0
  private readonly maxIdleBytes: number
  private readonly maxIdleMs: number
  private readonly now: () => number
  /** Counters for tests and the bench: buffers made, and takes served by a reused one. */
  readonly counters = { allocated: 0, reused: 0 }

  constructor (init: { maxIdleBytes?: number, maxIdleMs?: number, now?: () => number } = {}) {
    this.maxIdleBytes = init.maxIdleBytes ?? RECEIVE_BUFFERS_IDLE_BYTES
    this.maxIdleMs = init.maxIdleMs ?? RECEIVE_BUFFERS_IDLE_MS
    this.now = init.now ?? (() => performance.now())
  }

  /** A buffer of at least `bytes`: the smallest idle one that fits without much slack, or a new one. */
  take (bytes: number): ReceiveLease {
    this.expire()
    let best = -1
    for (let i = 0; i < this.idle.length; i++) {
      const len = this.idle[i]?.buffer.byteLength ?? 0
      if (len < bytes || len > Math.max(bytes, GRAIN) * MAX_SLACK) continue
      if (best < 0 || len < (this.idle[best]?.buffer.byteLength ?? Infinity)) best = i
    }
    let buffer: SharedArrayBuffer
    if (best >= 0) {
      buffer = (this.idle.splice(best, 1)[0] as Idle).buffer
      this.idleBytes -= buffer.byteLength
      this.counters.reused++
    } else {
      buffer = new SharedArrayBuffer(Math.max(GRAIN, Math.ceil(bytes / GRAIN) * GRAIN))
      this.counters.allocated++
    }
    let held = true
    return {
      buffer,
      release: () => {
        if (!held) return
        held = false
        this.give(buffer)
      }
    }
  }

  /** Bytes idle now (kept for the next take). */
  get idleByteCount (): number {
    return this.idleBytes
  }

  private give (buffer: SharedArrayBuffer): void {
    if (buffer.byteLength > this.maxIdleBytes) return
    this.expire()
    this.idle.push({ buffer, since: this.now() })
    this.idleBytes += buffer.byteLength
    // A node that goes quiet lets its idle buffers go too.
    setTimeout(() => { this.expire() }, this.maxIdleMs + 1).unref()
    while (this.idleBytes > this.maxIdleBytes) {
      const oldest = this.idle.shift() as Idle
      this.idleBytes -= oldest.buffer.byteLength
    }
  }

  private expire (): void {
    const cutoff = this.now() - this.maxIdleMs
    while (this.idle.length > 0 && (this.idle[0] as Idle).since < cutoff) {
      this.idleBytes -= (this.idle.shift() as Idle).buffer.byteLength
    }
  }
}
