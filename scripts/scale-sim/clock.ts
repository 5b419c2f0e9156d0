/**
 * A virtual clock for the scale simulator: while installed, setTimeout,
 * setInterval, their clears, performance.now, Date.now and
 * AbortSignal.timeout all run on simulated time, so the node's own code
 * (JobRun, PeerDirectory, CapacityService) runs unchanged and a minute of
 * mesh costs what its events cost, not a minute.
 *
 * `run` fires timers in time order. Promise chains started by a timer (a
 * shard's result resolving a JobRun's `then`) must settle before time moves
 * on, so before advancing past the current instant the loop yields to the
 * real setImmediate, which runs every queued microtask first.
 */

const REAL = {
  setTimeout: globalThis.setTimeout,
  setInterval: globalThis.setInterval,
  clearTimeout: globalThis.clearTimeout,
  clearInterval: globalThis.clearInterval,
  setImmediate: globalThis.setImmediate,
  performanceNow: performance.now.bind(performance),
  dateNow: Date.now,
  abortTimeout: AbortSignal.timeout.bind(AbortSignal)
}

/** Wall-clock epoch of simulated time 0 (adverts carry wall-clock timestamps and seqs). */
export const SIM_EPOCH_MS = Date.UTC(2026, 0, 1)

interface Timer {
  id: number
  at: number
  seq: number
  fn: () => void
  intervalMs?: number
  cancelled: boolean
}

/** What the patched globals hand out: enough of Node's Timeout for callers that unref() or compare it. */
export class VirtualTimeout {
  readonly id: number
  constructor (id: number) { this.id = id }
  unref (): this { return this }
  ref (): this { return this }
  hasRef (): boolean { return true }
  [Symbol.toPrimitive] (): number { return this.id }
}

export class VirtualClock {
  /** Simulated milliseconds since the start. */
  now = 0
  /** Timers fired so far (for the progress line). */
  fired = 0
  private readonly heap: Timer[] = []
  private readonly live = new Map<number, Timer>()
  private nextId = 1
  private nextSeq = 0
  private installed = false
  private error: unknown

  /** Runs `fn` after `ms` of simulated time. */
  setTimeout (fn: () => void, ms: number): VirtualTimeout {
    return this.add(fn, ms, undefined)
  }

  setInterval (fn: () => void, ms: number): VirtualTimeout {
    return this.add(fn, ms, Math.max(1, ms))
  }

  clear (handle: unknown): void {
    const id = typeof handle === 'number' ? handle : handle instanceof VirtualTimeout ? handle.id : undefined
    if (id === undefined) return
    const t = this.live.get(id)
    if (t !== undefined) { t.cancelled = true; this.live.delete(id) }
  }

  /** Resolves after `ms` of simulated time. */
  async sleep (ms: number): Promise<void> {
    await new Promise<void>(resolve => { this.setTimeout(resolve, ms) })
  }

  get pending (): number {
    return this.live.size
  }

  /** Points the globals at this clock until uninstall(). */
  install (): void {
    if (this.installed) return
    this.installed = true
    const g = globalThis as unknown as Record<string, unknown>
    g.setTimeout = (fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) => this.setTimeout(() => { fn(...args) }, ms ?? 0)
    g.setInterval = (fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) => this.setInterval(() => { fn(...args) }, ms ?? 0)
    g.clearTimeout = (h: unknown) => { this.clear(h) }
    g.clearInterval = (h: unknown) => { this.clear(h) }
    performance.now = () => this.now
    Date.now = () => SIM_EPOCH_MS + Math.floor(this.now)
    AbortSignal.timeout = (ms: number): AbortSignal => {
      const ctl = new AbortController()
      this.setTimeout(() => { ctl.abort(new DOMException('The operation was aborted due to timeout', 'TimeoutError')) }, ms)
      return ctl.signal
    }
  }

  uninstall (): void {
    if (!this.installed) return
    this.installed = false
    const g = globalThis as unknown as Record<string, unknown>
    g.setTimeout = REAL.setTimeout
    g.setInterval = REAL.setInterval
    g.clearTimeout = REAL.clearTimeout
    g.clearInterval = REAL.clearInterval
    performance.now = REAL.performanceNow
    Date.now = REAL.dateNow
    AbortSignal.timeout = REAL.abortTimeout
  }

  /**
   * Fires timers in order until `done()` holds or simulated time reaches
   * `untilMs`. A timer that throws stops the run and the error is rethrown
   * here, as an uncaught one would stop a node.
   */
  async run (untilMs: number, done: () => boolean = () => false): Promise<void> {
    let settled = true
    for (;;) {
      if (!settled) {
        await new Promise<void>(resolve => { REAL.setImmediate(resolve) })
        settled = true
        continue
      }
      if (this.error !== undefined) { const e = this.error; this.error = undefined; throw e }
      if (done()) return
      const t = this.heap[0]
      if (t === undefined || t.at > untilMs) { this.now = Math.max(this.now, untilMs); return }
      if (t.cancelled) { this.pop(); continue }
      if (t.at > this.now) {
        // About to move time on: let the promise chains of this instant settle first.
        this.now = t.at
      }
      this.pop()
      if (t.intervalMs !== undefined) {
        t.at += t.intervalMs
        t.seq = this.nextSeq++
        this.push(t)
      } else {
        this.live.delete(t.id)
      }
      this.fired++
      try {
        t.fn()
      } catch (err) {
        this.error = err
      }
      const next = this.heap[0]
      // Yield to microtasks whenever the next timer is later (or none is left): the chains this one began settle at its instant.
      if (next === undefined || next.at > this.now || this.error !== undefined) settled = false
    }
  }

  private add (fn: () => void, ms: number, intervalMs: number | undefined): VirtualTimeout {
    const delay = Number.isFinite(ms) && ms > 0 ? ms : 0
    const t: Timer = { id: this.nextId++, at: this.now + delay, seq: this.nextSeq++, fn, intervalMs, cancelled: false }
    this.live.set(t.id, t)
    this.push(t)
    return new VirtualTimeout(t.id)
  }

  private less (a: Timer, b: Timer): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq)
  }

  private push (t: Timer): void {
    const h = this.heap
    h.push(t)
    let i = h.length - 1
    while (i > 0) {
      const p = (i - 1) >> 1
      const parent = h[p] as Timer
      if (!this.less(t, parent)) break
      h[i] = parent
      i = p
    }
    h[i] = t
  }

  private pop (): Timer | undefined {
    const h = this.heap
    const top = h[0]
    const last = h.pop()
    if (top === undefined || last === undefined || h.length === 0) return top
    let i = 0
    for (;;) {
      const l = 2 * i + 1
      if (l >= h.length) break
      const r = l + 1
      const c = r < h.length && this.less(h[r] as Timer, h[l] as Timer) ? r : l
      const child = h[c] as Timer
      if (!this.less(child, last)) break
      h[i] = child
      i = c
    }
    h[i] = last
    return top
  }
}

/** The real setImmediate, for callers that must yield to the event loop while the clock is installed. */
export const realSetImmediate = REAL.setImmediate
/** The real monotonic clock, for wall-time measurements while the virtual one is installed. */
export const realNow = REAL.performanceNow
