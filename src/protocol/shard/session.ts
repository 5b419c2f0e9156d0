/**
 * /tensormesh/shard-session/1.0.0: many small shards on one long-lived stream.
 *
 * Opening a libp2p stream per shard costs about 2 ms here (a yamux SYN, then
 * multistream-select's round trip) against ~0.15 ms for a frame on an open
 * stream, so a job of tiny shards spends most of its time opening streams. A
 * coordinator keeps one session stream per peer and sends each small shard
 * as one frame, tagged with an id; the peer answers each with one frame of
 * the same id, in whatever order they finish. Frames written in the same
 * turn of the event loop leave in one write.
 *
 * The lease rule of the per-shard protocol holds per request: the stream
 * closing cancels every shard on it, and a CANCEL frame cancels one.
 *
 * Only shards whose inputs and expected result fit SESSION_MAX_PAYLOAD go
 * here, inline; larger ones keep their own stream and the bulk channel. A
 * result that turns out larger is answered ERR_SESSION_RESULT_TOO_LARGE and
 * the coordinator sends that shard again over its own stream.
 */
import { lpStream } from '@libp2p/utils'
import { LimitExceededError, ProtocolError, TensormeshError, errorCode, errorMessage } from '../../errors.ts'
import { messageCodec } from '../codec.ts'
import { DEFAULT_WIRE_LIMITS, MAX_HEADER_BYTES } from '../limits.ts'
import { peerText } from '../sanitize.ts'
import { allocateTensors, checkDescs, describeTensors, tensorBytes } from '../tensor-frames.ts'
import { OPEN_GUARD, RateLimitedError, isMalformed } from '../peer-guard.ts'
import { directConnection } from '../connections.ts'
import { isRelayed } from '../bulk/index.ts'
import { ResultHeaderCodec, ShardHeaderCodec, RemoteShardError, checkShardHeader, executeShard } from './index.ts'
import type { ContentRef, OutgoingShard, ResultHeader, ShardExecutor, ShardHeader, ShardOutcome, ShardTransport } from './index.ts'
import type { Tensors } from '../../compute/operators/types.ts'
import type { TensorDesc } from '../tensor-frames.ts'
import type { WireLimits } from '../limits.ts'
import type { LengthPrefixedStream } from '@libp2p/utils'
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface'
import type { Logger } from 'pino'

export const SHARD_SESSION_PROTOCOL = '/tensormesh/shard-session/1.0.0'

/**
 * Inline bytes a session frame carries (a shard's inputs, or its result).
 * Small enough that one frame never holds the stream for long (a 256 KiB
 * frame is ~0.5 ms here), far below the 4 MiB where the bulk channel starts.
 */
export const SESSION_MAX_PAYLOAD = 256 * 1024

/** Shards a peer runs at once on one session; the coordinator sends no more than the slots it bid. */
export const MAX_SESSION_INFLIGHT = 32

/** Session streams a peer accepts per connection: one per coordinator, and spares for one that is being replaced. */
export const MAX_SESSION_STREAMS = 4

/** A session with nothing in flight for this long is closed; the next small shard opens a new one. */
export const SESSION_IDLE_MS = 30_000

/** Jobs remembered as having results too large for a session (a bound, not a cache policy). */
const MAX_REMEMBERED_JOBS = 1024

const FRAME_REQUEST = 1
const FRAME_CANCEL = 2
const FRAME_RESULT = 3

/** Header and payload of the largest frame, with room for the envelope's own tags. */
const MAX_FRAME_BYTES = MAX_HEADER_BYTES + SESSION_MAX_PAYLOAD + 64

interface SessionFrame {
  kind: number
  id: number
  header?: ShardHeader
  result?: ResultHeader
  /** The tensors' bytes, in the order of their descriptors. */
  data: Uint8Array
}

export const SessionFrameCodec = messageCodec<SessionFrame>('SessionFrame', {
  kind: { no: 1, kind: 'uint32' },
  id: { no: 2, kind: 'uint32' },
  header: { no: 3, kind: 'message', codec: ShardHeaderCodec },
  result: { no: 4, kind: 'message', codec: ResultHeaderCodec },
  data: { no: 5, kind: 'bytes', maxBytes: SESSION_MAX_PAYLOAD }
}, MAX_FRAME_BYTES)

/** Bytes of tensors, one after the other (one copy: they go into a single frame). */
function pack (tensors: Tensors): Uint8Array {
  const parts = tensorBytes(Object.values(tensors))
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0))
  let off = 0
  for (const p of parts) { out.set(p, off); off += p.byteLength }
  return out
}

/** Tensors from their descriptors and packed bytes; the byte count must match exactly. */
function unpack (descs: TensorDesc[], data: Uint8Array, limits: WireLimits, what: string): Tensors {
  const sizes = checkDescs(descs, limits, what)
  const bytes = sizes.reduce((a, b) => a + b, 0)
  if (bytes !== data.byteLength) throw new ProtocolError(`${what}: ${data.byteLength} inline bytes for tensors of ${bytes}`, 'ERR_BAD_CHUNK')
  // Copied out of the frame: a typed array needs its element alignment, and the frame's buffer is the stream's.
  const { tensors, targets } = allocateTensors(descs, limits, what)
  let off = 0
  for (const t of targets) { t.set(data.subarray(off, off + t.byteLength)); off += t.byteLength }
  return tensors
}

export function payloadBytes (tensors: Tensors): number {
  let n = 0
  for (const t of Object.values(tensors)) n += t.data.byteLength
  return n
}

/**
 * Batches frames written in one turn of the event loop into a single write;
 * writes stay in order. A failed write ends the session through `onError`.
 */
class FrameWriter {
  private queue: Uint8Array[] = []
  private scheduled = false
  private chain: Promise<void> = Promise.resolve()

  private readonly lp: LengthPrefixedStream
  private readonly onError: (err: unknown) => void

  constructor (lp: LengthPrefixedStream, onError: (err: unknown) => void) {
    this.lp = lp
    this.onError = onError
  }

  push (frame: SessionFrame): void {
    this.queue.push(SessionFrameCodec.encode(frame))
    if (this.scheduled) return
    this.scheduled = true
    setImmediate(() => { this.flush() })
  }

  private flush (): void {
    this.scheduled = false
    const batch = this.queue
    this.queue = []
    this.chain = this.chain.then(async () => { await this.lp.writeV(batch) }).catch(this.onError)
  }

  /** Resolves when everything pushed so far is written (or the stream failed). */
  async drained (): Promise<void> {
    if (this.scheduled) this.flush()
    await this.chain
  }
}

// ---------------------------------------------------------------- peer side

/** Serves shard sessions, with the same executor, admission and guard as the per-shard protocol. */
export async function registerSessionHandler (libp2p: Libp2p, execute: ShardExecutor, log: Logger, transport: ShardTransport = {}): Promise<void> {
  await libp2p.handle(SHARD_SESSION_PROTOCOL, async (stream: Stream, connection: Connection) => {
    await handleSessionStream(stream, connection.remotePeer, execute, log, transport)
  }, {
    maxInboundStreams: MAX_SESSION_STREAMS,
    maxOutboundStreams: MAX_SESSION_STREAMS,
    runOnLimitedConnection: true
  })
}

/** Serves one session stream: runs each request as it arrives, answers each when it finishes. */
export async function handleSessionStream (stream: Stream, from: PeerId, execute: ShardExecutor, log: Logger, transport: ShardTransport = {}): Promise<void> {
  const limits = transport.limits ?? DEFAULT_WIRE_LIMITS
  const guard = transport.guard ?? OPEN_GUARD
  const peer = from.toString()
  const lp = lpStream(stream, { maxDataLength: MAX_FRAME_BYTES })
  const inflight = new Map<number, AbortController>()
  const lease = new AbortController()
  const end = (err: unknown): void => {
    if (!lease.signal.aborted) lease.abort(new TensormeshError('ERR_LEASE_LOST', `the coordinator's shard session ended: ${errorMessage(err)}`))
    for (const ctl of inflight.values()) ctl.abort(lease.signal.reason)
  }
  const writer = new FrameWriter(lp, (err) => { end(err); stream.abort(err instanceof Error ? err : new Error(String(err))) })
  const onClose = (): void => { end(new Error('stream closed')) }
  stream.addEventListener('close', onClose)

  const answer = (id: number, result: ResultHeader, data: Uint8Array = new Uint8Array(0)): void => {
    if (!lease.signal.aborted) writer.push({ kind: FRAME_RESULT, id, result, data })
  }
  const refuse = (id: number, err: unknown): void => {
    answer(id, { ok: false, errorCode: errorCode(err), errorMessage: errorMessage(err).slice(0, 2000), computeMs: 0, tensors: [] })
  }

  const serve = async (frame: SessionFrame): Promise<void> => {
    const id = frame.id
    let release: (() => void) | undefined
    const ctl = new AbortController()
    inflight.set(id, ctl)
    try {
      release = transport.admit?.(peer)
      const header = frame.header
      if (header === undefined) throw new ProtocolError('session request without a shard header', 'ERR_BAD_SESSION')
      if (header.bulk !== undefined) throw new ProtocolError('session requests carry their bytes inline, not over the bulk channel', 'ERR_BAD_SESSION')
      const params = checkShardHeader(header, limits)
      const tensors = unpack(header.tensors, frame.data, limits, 'shard request')
      const result = await executeShard(header, params, tensors, from, execute, transport.resolve, ctl.signal)
      const data = pack(result.partial)
      if (data.byteLength > SESSION_MAX_PAYLOAD) {
        throw new TensormeshError('ERR_SESSION_RESULT_TOO_LARGE', `the result has ${data.byteLength} bytes, more than a session frame's ${SESSION_MAX_PAYLOAD}`)
      }
      answer(id, { ok: true, errorCode: '', errorMessage: '', computeMs: result.computeMs, tensors: describeTensors(result.partial) }, data)
    } catch (err) {
      // Cancelled, or the session is gone: nobody waits for an answer.
      if (ctl.signal.aborted) return
      log.debug({ peer, code: errorCode(err), err: errorMessage(err) }, 'session shard failed')
      if (isMalformed(err)) guard.strike(peer, 'shard')
      refuse(id, err)
    } finally {
      inflight.delete(id)
      release?.()
    }
  }

  const serving = new Set<Promise<void>>()
  try {
    while (!lease.signal.aborted) {
      let frame: SessionFrame
      try {
        const bytes = await lp.read()
        frame = SessionFrameCodec.decode(bytes.subarray())
      } catch (err) {
        if (err instanceof Error && err.name === 'UnexpectedEOFError' && !lease.signal.aborted) {
          // The coordinator closed its side: no more requests. Answer the ones running, then close ours.
          await Promise.allSettled(serving)
          await writer.drained()
          await stream.close({ signal: AbortSignal.timeout(limits.frameTimeoutMs) }).catch(() => {})
          return
        }
        // A frame that does not decode cannot be answered by id: the stream goes.
        if (!lease.signal.aborted && isMalformed(err)) guard.strike(peer, 'shard')
        throw err
      }
      if (frame.kind === FRAME_CANCEL) {
        inflight.get(frame.id)?.abort(new TensormeshError('ERR_ABORTED', 'the coordinator cancelled this shard'))
        continue
      }
      if (frame.kind !== FRAME_REQUEST) throw new ProtocolError(`session frame of kind ${frame.kind}; a coordinator sends requests (1) and cancels (2)`, 'ERR_BAD_SESSION')
      if (inflight.has(frame.id)) {
        guard.strike(peer, 'shard')
        throw new ProtocolError(`session request ${frame.id} is already running`, 'ERR_BAD_SESSION')
      }
      // Admission per request, as for a stream of its own.
      const admission = guard.admit(peer, 'shard')
      if (admission === 'banned') throw new TensormeshError('ERR_PEER_BANNED', 'peer is banned')
      if (admission === 'limited') { refuse(frame.id, new RateLimitedError('shard requests from this peer are over their rate limit')); continue }
      if (inflight.size >= MAX_SESSION_INFLIGHT) {
        refuse(frame.id, new LimitExceededError(`more than ${MAX_SESSION_INFLIGHT} shards at once on one session`))
        continue
      }
      const served = serve(frame)
      serving.add(served)
      void served.finally(() => { serving.delete(served) })
    }
  } catch (err) {
    const closedByPeer = lease.signal.aborted
    end(err)
    if (!closedByPeer) log.debug({ peer, code: errorCode(err), err: errorMessage(err) }, 'shard session ended')
    stream.abort(err instanceof Error ? err : new Error(String(err)))
  } finally {
    stream.removeEventListener('close', onClose)
  }
}

// ---------------------------------------------------------------- coordinator side

interface Pending {
  resolve: (out: ShardOutcome) => void
  reject: (err: unknown) => void
  bytesOut: number
}

/** The session was refused or could not open: the caller sends the shard over a stream of its own. */
export class SessionUnavailableError extends TensormeshError {
  constructor (message: string, options?: ErrorOptions) {
    super('ERR_SESSION_UNAVAILABLE', message, options)
  }
}

/** One coordinator-side session stream to one peer (ShardSessions opens them; tests drive one directly). */
export class ShardSession {
  private nextId = 1
  private readonly pending = new Map<number, Pending>()
  private readonly writer: FrameWriter
  private readonly lp: LengthPrefixedStream
  private idleTimer: NodeJS.Timeout | undefined
  private ended = false

  readonly stream: Stream
  readonly relayed: boolean
  private readonly limits: WireLimits
  private readonly onEnd: () => void

  constructor (stream: Stream, relayed: boolean, limits: WireLimits, onEnd: () => void) {
    this.stream = stream
    this.relayed = relayed
    this.limits = limits
    this.onEnd = onEnd
    this.lp = lpStream(stream, { maxDataLength: MAX_FRAME_BYTES })
    this.writer = new FrameWriter(this.lp, (err) => { this.end(err) })
    stream.addEventListener('close', () => { this.end(new TensormeshError('ERR_SESSION_CLOSED', 'the shard session closed')) })
    void this.readLoop()
    this.armIdle()
  }

  get open (): boolean { return !this.ended }

  async request (shard: OutgoingShard, refs: ContentRef[], blobs: ContentRef[], inline: Tensors, signal: AbortSignal): Promise<ShardOutcome> {
    if (this.ended) throw new SessionUnavailableError('the shard session has ended')
    signal.throwIfAborted()
    const id = this.nextId++
    const data = pack(inline)
    const header: ShardHeader = {
      jobId: shard.jobId, index: shard.index, attempt: shard.attempt, op: shard.task.op,
      params: JSON.stringify(shard.task.params), start: shard.start, end: shard.end,
      tensors: describeTensors(inline), refs, blobs
    }
    clearTimeout(this.idleTimer)
    return await new Promise<ShardOutcome>((resolve, reject) => {
      const onAbort = (): void => {
        if (!this.pending.delete(id)) return
        this.writer.push({ kind: FRAME_CANCEL, id, data: new Uint8Array(0) })
        this.armIdle()
        reject(signal.reason)
      }
      signal.addEventListener('abort', onAbort, { once: true })
      const settle = <T>(f: (v: T) => void) => (v: T): void => { signal.removeEventListener('abort', onAbort); f(v) }
      this.pending.set(id, { resolve: settle(resolve), reject: settle(reject), bytesOut: data.byteLength })
      this.writer.push({ kind: FRAME_REQUEST, id, header, data })
    })
  }

  close (): void {
    this.end(new TensormeshError('ERR_SESSION_CLOSED', 'the shard session was closed'))
  }

  private async readLoop (): Promise<void> {
    try {
      for (;;) {
        const frame = SessionFrameCodec.decode((await this.lp.read()).subarray())
        if (frame.kind !== FRAME_RESULT) throw new ProtocolError(`session frame of kind ${frame.kind} from the peer; it sends results (3)`, 'ERR_BAD_SESSION')
        if (frame.id >= this.nextId || frame.id === 0) throw new ProtocolError(`session result for request ${frame.id}, which was never sent`, 'ERR_BAD_SESSION')
        const p = this.pending.get(frame.id)
        // An answer to a cancelled request crossed our cancel: nobody waits for it.
        if (p === undefined) continue
        this.pending.delete(frame.id)
        this.armIdle()
        try {
          p.resolve(this.outcome(frame, p.bytesOut))
        } catch (err) {
          p.reject(err)
        }
      }
    } catch (err) {
      this.end(err)
    }
  }

  private outcome (frame: SessionFrame, bytesOut: number): ShardOutcome {
    const result = frame.result
    if (result === undefined) throw new ProtocolError('session result without a result header', 'ERR_BAD_RESULT')
    if (!result.ok) throw new RemoteShardError(peerText(result.errorCode), peerText(result.errorMessage))
    if (!Number.isFinite(result.computeMs) || result.computeMs < 0) throw new ProtocolError('result header: computeMs is not a finite non-negative number', 'ERR_BAD_RESULT')
    if (result.bulk !== undefined) throw new ProtocolError('session result: results come inline, not over the bulk channel', 'ERR_BAD_RESULT')
    const partial = unpack(result.tensors, frame.data, this.limits, 'shard result')
    return { partial, computeMs: result.computeMs, bytesOut, bytesIn: frame.data.byteLength, relayed: this.relayed }
  }

  private armIdle (): void {
    clearTimeout(this.idleTimer)
    if (this.ended || this.pending.size > 0) return
    this.idleTimer = setTimeout(() => {
      if (this.pending.size > 0) return
      this.ended = true
      this.onEnd()
      void this.writer.drained().then(async () => { await this.stream.close({ signal: AbortSignal.timeout(5_000) }) }).catch(() => { this.stream.abort(new Error('idle session close failed')) })
    }, SESSION_IDLE_MS)
    this.idleTimer.unref()
  }

  private end (err: unknown): void {
    clearTimeout(this.idleTimer)
    if (!this.ended) {
      this.ended = true
      this.onEnd()
    }
    const reason = err instanceof TensormeshError ? err : new TensormeshError('ERR_SESSION_CLOSED', `the shard session ended: ${errorMessage(err)}`)
    for (const p of this.pending.values()) p.reject(reason)
    this.pending.clear()
    if (this.stream.status === 'open') this.stream.abort(reason)
  }
}

/**
 * A coordinator's session streams, one per peer, opened on a peer's first
 * small shard. A peer that does not speak the protocol is remembered and
 * gets per-shard streams.
 */
export class ShardSessions {
  private readonly sessions = new Map<string, Promise<ShardSession>>()
  private readonly unsupported = new Set<string>()
  /** Jobs whose results came back too large for a frame. */
  private readonly largeResults = new Set<string>()
  private stopped = false
  private shards = 0
  private fallbacks = 0

  private readonly libp2p: Libp2p
  private readonly limits: WireLimits

  constructor (libp2p: Libp2p, limits: WireLimits = DEFAULT_WIRE_LIMITS) {
    this.libp2p = libp2p
    this.limits = limits
  }

  /** Whether this shard may go by session: inline inputs and the expected result both fit a frame. */
  fits (peer: string, shard: OutgoingShard, inline: Tensors): boolean {
    if (this.stopped || this.unsupported.has(peer) || this.largeResults.has(shard.jobId)) return false
    return shard.resultBytes !== undefined && shard.resultBytes <= SESSION_MAX_PAYLOAD && payloadBytes(inline) <= SESSION_MAX_PAYLOAD
  }

  /**
   * Whether a session's failure means "send this shard over its own stream":
   * no session could open, or the result outgrew a frame (then the rest of
   * that job's shards skip sessions: an estimate that was wrong once is wrong for all).
   */
  fallsBack (shard: OutgoingShard, err: unknown): boolean {
    if (err instanceof RemoteShardError && err.remoteCode === 'ERR_SESSION_RESULT_TOO_LARGE') {
      if (this.largeResults.size >= MAX_REMEMBERED_JOBS) this.largeResults.clear()
      this.largeResults.add(shard.jobId)
      this.fallbacks++
      return true
    }
    if (errorCode(err) !== 'ERR_SESSION_UNAVAILABLE') return false
    this.fallbacks++
    return true
  }

  async send (peer: PeerId, shard: OutgoingShard, refs: ContentRef[], blobs: ContentRef[], inline: Tensors, signal: AbortSignal): Promise<ShardOutcome> {
    const session = await this.session(peer, signal)
    this.shards++
    return await session.request(shard, refs, blobs, inline, signal)
  }

  /** Sessions open now, shards sent on sessions, and shards that fell back to a stream of their own. */
  stats (): { open: number, shards: number, fallbacks: number } {
    return { open: this.sessions.size, shards: this.shards, fallbacks: this.fallbacks }
  }

  /** Closes every session; shards in flight on them fail with ERR_SESSION_CLOSED. */
  stop (): void {
    this.stopped = true
    for (const s of this.sessions.values()) void s.then(x => { x.close() }, () => {})
    this.sessions.clear()
  }

  private async session (peer: PeerId, signal: AbortSignal): Promise<ShardSession> {
    const key = peer.toString()
    let s = this.sessions.get(key)
    if (s === undefined) {
      s = this.open(peer, key)
      this.sessions.set(key, s)
      s.catch(() => { if (this.sessions.get(key) === s) this.sessions.delete(key) })
    }
    const session = await raceAbort(s, signal)
    if (!session.open) {
      if (this.sessions.get(key) === s) this.sessions.delete(key)
      return await this.session(peer, signal)
    }
    return session
  }

  private async open (peer: PeerId, key: string): Promise<ShardSession> {
    // Not the caller's signal: the session outlives the shard that opened it.
    const signal = AbortSignal.timeout(this.limits.frameTimeoutMs)
    const connection = await directConnection(this.libp2p, peer, signal)
    let stream: Stream
    try {
      stream = await connection.newStream(SHARD_SESSION_PROTOCOL, { signal, runOnLimitedConnection: true })
    } catch (err) {
      if (err instanceof Error && err.name === 'UnsupportedProtocolError') this.unsupported.add(key)
      throw new SessionUnavailableError(`no shard session with ${key.slice(-8)}: ${errorMessage(err)}`, { cause: err })
    }
    const relayed = connection.limits !== undefined || isRelayed(connection.remoteAddr)
    const session: ShardSession = new ShardSession(stream, relayed, this.limits, () => {
      void this.sessions.get(key)?.then(x => { if (x === session) this.sessions.delete(key) }, () => {})
    })
    return session
  }
}

async function raceAbort<T> (p: Promise<T>, signal: AbortSignal): Promise<T> {
  signal.throwIfAborted()
  return await new Promise<T>((resolve, reject) => {
    const onAbort = (): void => { reject(signal.reason) }
    signal.addEventListener('abort', onAbort, { once: true })
    p.then(resolve, reject).finally(() => { signal.removeEventListener('abort', onAbort) })
  })
}
