/**
 * /tensormesh/allreduce/1.0.0: a training round whose vectors are combined
 * by the peers among themselves (hivemind's butterfly: reduce-scatter, with
 * the weights all-gathered first), so the coordinator sends and receives
 * about one vector per round however many peers take part.
 *
 * A round has a group of k members (peer ids, in order) and two vectors cut
 * into k contiguous parts (`partition`): the weights w (length P) and the
 * result v (length V, the operator's output). Member i owns part i of both.
 *
 * 1. START, coordinator -> member i, on a stream the coordinator keeps open
 *    for the round (the stream is the lease): the round, the group, i, P, V,
 *    the task (operator, params, units, shared inputs and blobs by CID) and
 *    w's part i.
 * 2. Member i sends w's part i to every other member (PART kind w) and
 *    assembles w from the parts it receives.
 * 3. It runs the task with w (its executor, as a shard) and gets v.
 * 4. It sends v's part j to member j (PART kind v), adds the k - 1 parts i
 *    it receives to its own (float64), and answers START with the sum's
 *    part i. The coordinator concatenates the k answers.
 *
 * Each member sends about (P + V)(k - 1)/k bytes to the others and receives
 * as much; the coordinator sends P and receives V. A member that fails or
 * vanishes fails its START stream; the coordinator then closes every other
 * member's (their leases end, they stop waiting) and re-runs the round
 * without it. Parts that arrive before their START wait (bounded in count,
 * bytes and time); parts from a peer outside the group, of the wrong size
 * or twice are refused and count as a strike.
 */
import { lpStream } from '@libp2p/utils'
import { LimitExceededError, ProtocolError, TensormeshError, errorCode, errorMessage } from '../../errors.ts'
import { messageCodec } from '../codec.ts'
import { CHUNK_BYTES, DEFAULT_WIRE_LIMITS, MAX_HEADER_BYTES, MAX_PARAMS_BYTES, MAX_TENSORS_PER_FRAME } from '../limits.ts'
import { peerText } from '../sanitize.ts'
import { directConnection } from '../connections.ts'
import { isRelayed } from '../bulk/index.ts'
import { readTensorBytes, writeTensorBytes } from '../tensor-frames.ts'
import { OPEN_GUARD, isMalformed } from '../peer-guard.ts'
import type { PeerGuard } from '../peer-guard.ts'
import { ContentRefCodec } from '../shard/index.ts'
import type { ContentRef, RefResolver } from '../shard/index.ts'
import type { Params, ShardTask, Tensors } from '../../compute/operators/types.ts'
import type { WireLimits } from '../limits.ts'
import type { Libp2p, PeerId, Stream, Connection } from '@libp2p/interface'
import type { Logger } from 'pino'
import { peerIdFromString } from '@libp2p/peer-id'

export const ALLREDUCE_PROTOCOL = '/tensormesh/allreduce/1.0.0'

/** Most members of one round: a part per member, and a stream to each from each. */
export const MAX_GROUP = 64

/** Rounds a member takes part in at once (a node runs few train jobs' rounds together). */
export const MAX_ACTIVE_ROUNDS = 16

/** Rounds a member holds early parts for before their START (a member a little behind the others). */
export const MAX_EARLY_ROUNDS = 16

/** Bytes of early parts held across all rounds not yet started. */
export const MAX_EARLY_BYTES = 256 * 1024 * 1024

/** How long early parts wait for their START, and a started round for a part. */
export const PART_WAIT_MS = 60_000

/** Inbound streams per connection: a START and a PART from each member of a few rounds. */
export const MAX_INBOUND_ALLREDUCE_STREAMS = 2 * MAX_GROUP

const MAX_ROUND_ID = 96

/** Ended rounds remembered, to drop their late parts: a few per active round. */
export const MAX_ENDED_ROUNDS = 1024

/** Parts of n elements among k members: contiguous, sizes differing by at most one, the larger first. */
export function partition (n: number, k: number): Array<[number, number]> {
  const out: Array<[number, number]> = []
  const base = Math.floor(n / k)
  const extra = n % k
  let at = 0
  for (let i = 0; i < k; i++) {
    const len = base + (i < extra ? 1 : 0)
    out.push([at, at + len])
    at += len
  }
  return out
}

export interface StartHeader {
  round: string
  index: number
  group: string[]
  /** Length of w (P) and of the result v (V). */
  wLength: number
  vLength: number
  op: string
  params: string
  start: number
  end: number
  refs: ContentRef[]
  blobs: ContentRef[]
}

export interface PartHeader {
  round: string
  /** 1: a part of w; 2: a part of v. */
  kind: number
  part: number
  from: number
}

export interface AnswerHeader {
  ok: boolean
  errorCode: string
  errorMessage: string
  computeMs: number
}

const StartCodec = messageCodec<StartHeader>('AllReduceStart', {
  round: { no: 1, kind: 'string', maxBytes: MAX_ROUND_ID },
  index: { no: 2, kind: 'uint32' },
  group: { no: 3, kind: 'string', repeated: true, maxCount: MAX_GROUP, maxBytes: 128 },
  wLength: { no: 4, kind: 'uint64' },
  vLength: { no: 5, kind: 'uint64' },
  op: { no: 6, kind: 'string', maxBytes: 64 },
  params: { no: 7, kind: 'string', maxBytes: MAX_PARAMS_BYTES },
  start: { no: 8, kind: 'uint64' },
  end: { no: 9, kind: 'uint64' },
  refs: { no: 10, kind: 'message', codec: ContentRefCodec, repeated: true, maxCount: MAX_TENSORS_PER_FRAME },
  blobs: { no: 11, kind: 'message', codec: ContentRefCodec, repeated: true, maxCount: MAX_TENSORS_PER_FRAME }
}, MAX_HEADER_BYTES)

const PartCodec = messageCodec<PartHeader>('AllReducePart', {
  round: { no: 1, kind: 'string', maxBytes: MAX_ROUND_ID },
  kind: { no: 2, kind: 'uint32' },
  part: { no: 3, kind: 'uint32' },
  from: { no: 4, kind: 'uint32' }
}, 1024)

const AnswerCodec = messageCodec<AnswerHeader>('AllReduceAnswer', {
  ok: { no: 1, kind: 'bool' },
  errorCode: { no: 2, kind: 'string', maxBytes: 64 },
  errorMessage: { no: 3, kind: 'string', maxBytes: 2048 },
  computeMs: { no: 4, kind: 'double' }
}, 4096)

const KIND_W = 1
const KIND_V = 2

/** A member answered that its part of the round failed (its code in `remoteCode`). */
export class RemoteRoundError extends TensormeshError {
  readonly remoteCode: string
  readonly peer: string

  constructor (peer: string, remoteCode: string, message: string) {
    super('ERR_ROUND_MEMBER', message)
    this.remoteCode = remoteCode
    this.peer = peer
  }
}

/** Runs a member's task (the node's shard executor: admission, pool, faults). */
export type RoundExecutor = (task: ShardTask, units: { start: number, end: number }, from: PeerId, signal: AbortSignal) => Promise<{ partial: Tensors, computeMs: number }>

export interface AllReduceComponents {
  libp2p: Libp2p
  log: Logger
  execute: RoundExecutor
  resolve: RefResolver
  guard?: PeerGuard
  limits?: WireLimits
}

interface Waiter { resolve: () => void }

/** A member's state for one round: parts received so far, by kind and sender. */
class RoundState {
  readonly id: string
  started = false
  header?: StartHeader
  readonly w = new Map<number, Float32Array>()
  readonly v = new Map<number, Float32Array>()
  /** Parts received before START, with their senders (checked once the group is known). */
  readonly early: Array<{ peer: string, part: PartHeader, data: Float32Array }> = []
  earlyBytes = 0
  readonly controller = new AbortController()
  private readonly waiters = new Set<Waiter>()
  timer?: ReturnType<typeof setTimeout>

  constructor (id: string) {
    this.id = id
  }

  changed (): void {
    for (const w of this.waiters) w.resolve()
    this.waiters.clear()
  }

  /** Resolves when `done()` holds; rejects when the round is aborted (its lease ended or it was dropped). */
  async until (done: () => boolean): Promise<void> {
    const signal = this.controller.signal
    while (!done()) {
      if (signal.aborted) throw signal.reason as Error
      await new Promise<void>((resolve, reject) => {
        const onAbort = (): void => { this.waiters.delete(waiter); reject(signal.reason as Error) }
        const waiter: Waiter = { resolve: () => { signal.removeEventListener('abort', onAbort); resolve() } }
        signal.addEventListener('abort', onAbort, { once: true })
        this.waiters.add(waiter)
      })
    }
  }
}

/** One member of a round as the coordinator addresses it. */
export interface RoundMember {
  peer: string
  /** Units (e.g. replicas) of the task this member runs. */
  start: number
  end: number
}

export interface RoundSpec {
  round: string
  /** The task without its inputs: op and params (each member's units are added). */
  task: Pick<ShardTask, 'op' | 'params'>
  /** The task's inputs but w, by content address for remote members... */
  refs: ContentRef[]
  blobs: ContentRef[]
  /** ...and as they are for a member on this node. */
  local: { tensors: Tensors, blobs: Record<string, Uint8Array> }
  w: Float32Array
  vLength: number
}

/** One member's part of a round as the coordinator saw it. */
export interface MemberOutcome {
  /** From START sent to its answer read, on the coordinator's clock (Date.now()). */
  startedAt: number
  ms: number
  /** Its task's time in its executor. */
  computeMs: number
  /** Bytes between the coordinator and it (none for a member on this node). */
  bytesOut: number
  bytesIn: number
  /** Its START went through a circuit relay. */
  relayed: boolean
}

export interface RoundOutcome {
  /** The sum of every member's v. */
  sum: Float32Array
  /** What the coordinator moved: its START frames and w parts out, the answers in (a member on this node moves nothing). */
  bytesOut: number
  bytesIn: number
  /** Per member, by peer id. */
  members: Map<string, MemberOutcome>
}

/**
 * The allreduce service of one node: serves the member side of rounds, and
 * runs rounds as their coordinator (`runRound`). A member on the
 * coordinator's own node is served in process, without a stream.
 */
export class AllReduce {
  private readonly c: AllReduceComponents
  private readonly limits: WireLimits
  private readonly guard: PeerGuard
  private readonly rounds = new Map<string, RoundState>()
  /** Rounds that ended here lately: a part still on its way for one is dropped, not held as early. */
  private readonly ended = new Set<string>()
  private earlyBytes = 0
  private stopped = false

  constructor (components: AllReduceComponents) {
    this.c = components
    this.limits = components.limits ?? DEFAULT_WIRE_LIMITS
    this.guard = components.guard ?? OPEN_GUARD
  }

  get self (): string {
    return this.c.libp2p.peerId.toString()
  }

  async start (): Promise<void> {
    await this.c.libp2p.handle(ALLREDUCE_PROTOCOL, async (stream: Stream, connection: Connection) => {
      await this.handle(stream, connection.remotePeer)
    }, { maxInboundStreams: MAX_INBOUND_ALLREDUCE_STREAMS, maxOutboundStreams: MAX_INBOUND_ALLREDUCE_STREAMS, runOnLimitedConnection: true })
  }

  async stop (): Promise<void> {
    this.stopped = true
    for (const r of this.rounds.values()) this.drop(r, new TensormeshError('ERR_SHUTTING_DOWN', 'the node is stopping'))
    await this.c.libp2p.unhandle(ALLREDUCE_PROTOCOL).catch(() => {})
  }

  /** Rounds this node takes part in or holds early parts for (for tests and /v1/node). */
  get active (): number {
    return this.rounds.size
  }

  /** The round's state, made on first sight: by its START (at most MAX_ACTIVE_ROUNDS started) or by an early part (at most MAX_EARLY_ROUNDS waiting). */
  private state (id: string, by: 'start' | 'part'): RoundState {
    let r = this.rounds.get(id)
    if (r === undefined) {
      const pending = [...this.rounds.values()].filter(s => !s.started).length
      const started = this.rounds.size - pending
      if (by === 'part' && pending >= MAX_EARLY_ROUNDS) throw new LimitExceededError(`allreduce: already holding early parts of ${pending} rounds`)
      if (by === 'start' && started >= MAX_ACTIVE_ROUNDS) throw new LimitExceededError(`allreduce: already in ${started} rounds`)
      r = new RoundState(id)
      const state = r
      // Dropped when nothing completes it in time: a START that never comes, or a round that stalls.
      r.timer = setTimeout(() => { this.drop(state, new TensormeshError('ERR_ROUND_TIMEOUT', `round ${id}: abandoned after ${PART_WAIT_MS} ms`)) }, PART_WAIT_MS)
      r.timer.unref?.()
      this.rounds.set(id, r)
    }
    return r
  }

  private drop (r: RoundState, reason: Error): void {
    clearTimeout(r.timer)
    if (r.started) {
      this.ended.add(r.id)
      if (this.ended.size > MAX_ENDED_ROUNDS) this.ended.delete(this.ended.values().next().value as string)
    }
    if (!r.controller.signal.aborted) r.controller.abort(reason)
    this.earlyBytes -= r.earlyBytes
    r.earlyBytes = 0
    if (this.rounds.get(r.id) === r) this.rounds.delete(r.id)
  }

  private async handle (stream: Stream, from: PeerId): Promise<void> {
    const peer = from.toString()
    const admission = this.guard.admit(peer, 'allreduce')
    if (admission !== 'ok') {
      stream.abort(new TensormeshError(admission === 'banned' ? 'ERR_PEER_BANNED' : 'ERR_RATE_LIMITED', `allreduce: peer is ${admission}`))
      return
    }
    const lp = lpStream(stream, { maxDataLength: Math.max(CHUNK_BYTES, MAX_HEADER_BYTES) })
    try {
      const first = await lp.read({ signal: AbortSignal.timeout(this.limits.frameTimeoutMs) })
      const bytes = first.subarray()
      // The first byte of a protobuf message is its first field's tag; both headers start with field 1 (round), so a kind byte leads.
      const kind = bytes[0]
      const body = bytes.subarray(1)
      if (kind === KIND_START) await this.serveStart(lp, stream, StartCodec.decode(body), from)
      else if (kind === KIND_PART) await this.takePart(lp, stream, PartCodec.decode(body), peer)
      else throw new ProtocolError('allreduce: unknown message kind', 'ERR_BAD_MESSAGE')
    } catch (err) {
      this.c.log.debug({ peer, code: errorCode(err), err: errorMessage(err) }, 'allreduce stream failed')
      if (isMalformed(err)) this.guard.strike(peer, 'allreduce')
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    }
  }

  /** A part from another member: checked against the round's group once it is known. */
  private async takePart (lp: ReturnType<typeof lpStream>, stream: Stream, part: PartHeader, peer: string): Promise<void> {
    if (part.kind !== KIND_W && part.kind !== KIND_V) throw new ProtocolError('allreduce: part kind must be w or v', 'ERR_BAD_MESSAGE')
    if (part.part >= MAX_GROUP || part.from >= MAX_GROUP) throw new ProtocolError('allreduce: part index past the largest group', 'ERR_BAD_MESSAGE')
    if (this.ended.has(checkRoundId(part.round))) {
      // Late for a round that failed or was cancelled here: nobody waits for it.
      stream.abort(new TensormeshError('ERR_ROUND_DONE', `round ${part.round} is over`))
      return
    }
    const r = this.state(part.round, 'part')
    const declared = await readLength(lp, this.limits)
    const length = r.header !== undefined ? partLength(r.header, part) : undefined
    if (length !== undefined && declared !== length) throw new ProtocolError(`allreduce: round ${r.id}: part of ${declared} values, ${length} expected`, 'ERR_BAD_PART')
    // An early part is held against the bound before a byte of it is allocated.
    if (r.header === undefined && this.earlyBytes + declared * 4 > MAX_EARLY_BYTES) throw new LimitExceededError('allreduce: too many bytes of parts wait for their round')
    const { tensors } = await readTensorBytes(lp, [{ name: 'part', dtype: 'float32', shape: [declared] }], this.limits, 'allreduce part')
    const data = tensors.part?.data as Float32Array
    await stream.close({ signal: AbortSignal.timeout(this.limits.frameTimeoutMs) }).catch(() => {})
    if (r.header === undefined) {
      if (this.earlyBytes + data.byteLength > MAX_EARLY_BYTES) throw new LimitExceededError('allreduce: too many bytes of parts wait for their round')
      this.earlyBytes += data.byteLength
      r.earlyBytes += data.byteLength
      r.early.push({ peer, part, data })
      return
    }
    this.accept(r, peer, part, data)
  }

  /** Files a part of a started round; refuses one from outside the group, for another member, or twice. */
  private accept (r: RoundState, peer: string, part: PartHeader, data: Float32Array): void {
    const h = r.header as StartHeader
    if (h.group[part.from] !== peer) throw new ProtocolError(`allreduce: round ${r.id}: member ${part.from} is not ${peer}`, 'ERR_NOT_IN_GROUP')
    const want = part.kind === KIND_W ? part.from : h.index
    if (part.part !== want || part.from === h.index) throw new ProtocolError(`allreduce: round ${r.id}: part ${part.part} from member ${part.from} is not one this member takes`, 'ERR_BAD_PART')
    const length = partLength(h, part)
    if (data.length !== length) throw new ProtocolError(`allreduce: round ${r.id}: part of ${data.length} values, ${length} expected`, 'ERR_BAD_PART')
    const map = part.kind === KIND_W ? r.w : r.v
    if (map.has(part.from)) throw new ProtocolError(`allreduce: round ${r.id}: member ${part.from} sent its part twice`, 'ERR_BAD_PART')
    map.set(part.from, data)
    r.changed()
  }

  /** The member's side of a round: START on `lp`, answered with v's reduced part. */
  private async serveStart (lp: ReturnType<typeof lpStream>, stream: Stream, h: StartHeader, from: PeerId): Promise<void> {
    checkStart(h, this.self)
    const lease = new AbortController()
    const onClose = (): void => { lease.abort(new TensormeshError('ERR_LEASE_LOST', 'the coordinator closed the round')) }
    stream.addEventListener('close', onClose)
    try {
      const wParts = partition(h.wLength, h.group.length)
      const [ws, we] = wParts[h.index] as [number, number]
      const { tensors } = await readTensorBytes(lp, [{ name: 'w', dtype: 'float32', shape: [we - ws] }], this.limits, 'allreduce start')
      let answer: { reduced: Float32Array, computeMs: number }
      try {
        answer = await this.member(h, tensors.w?.data as Float32Array, from, lease.signal)
      } catch (err) {
        if (lease.signal.aborted) throw err
        await lp.write(AnswerCodec.encode({ ok: false, errorCode: errorCode(err), errorMessage: errorMessage(err).slice(0, 2000), computeMs: 0 }), { signal: AbortSignal.timeout(this.limits.frameTimeoutMs) })
        await stream.close({ signal: AbortSignal.timeout(this.limits.frameTimeoutMs) }).catch(() => {})
        return
      }
      await lp.write(AnswerCodec.encode({ ok: true, errorCode: '', errorMessage: '', computeMs: answer.computeMs }))
      await writeTensorBytes(lp, [{ dtype: 'float32', shape: [answer.reduced.length], data: answer.reduced }])
      await stream.close({ signal: AbortSignal.timeout(this.limits.frameTimeoutMs) })
    } finally {
      stream.removeEventListener('close', onClose)
    }
  }

  /**
   * Member i's work for a round, given its part of w: all-gather w, run the
   * task, reduce-scatter v. Returns the sum's part i. Used for remote STARTs
   * and, in process, for the coordinator's own membership.
   */
  async member (h: StartHeader, wPart: Float32Array, coordinator: PeerId, signal: AbortSignal, local?: RoundSpec['local']): Promise<{ reduced: Float32Array, computeMs: number }> {
    if (this.stopped) throw new TensormeshError('ERR_SHUTTING_DOWN', 'the node is stopping')
    const r = this.state(h.round, 'start')
    if (r.started) throw new ProtocolError(`allreduce: round ${h.round} started twice`, 'ERR_BAD_MESSAGE')
    r.started = true
    r.header = h
    // Started: no abandonment timer. The lease bounds the round (the coordinator closes it when a member fails or it is cancelled).
    clearTimeout(r.timer)
    const onAbort = (): void => { this.drop(r, signal.reason as Error) }
    signal.addEventListener('abort', onAbort, { once: true })
    try {
      const k = h.group.length
      const i = h.index
      const wParts = partition(h.wLength, k)
      const vParts = partition(h.vLength, k)
      // Early parts, now that the group is known. A bad one costs its sender a strike, as it would
      // have after START; it must not fail the round (anyone can send a part for a round id).
      for (const e of r.early.splice(0)) {
        try {
          this.accept(r, e.peer, e.part, e.data)
        } catch (err) {
          this.c.log.debug({ peer: e.peer, round: h.round, code: errorCode(err), err: errorMessage(err) }, 'allreduce early part refused')
          if (isMalformed(err)) this.guard.strike(e.peer, 'allreduce')
        }
      }
      this.earlyBytes -= r.earlyBytes
      r.earlyBytes = 0
      const others = h.group.map((p, j) => ({ p, j })).filter(({ j }) => j !== i)
      // 2. All-gather w.
      await Promise.all(others.map(async ({ p }) => { await this.sendPart(p, { round: h.round, kind: KIND_W, part: i, from: i }, wPart, r.controller.signal) }))
      await r.until(() => r.w.size === k - 1)
      const w = new Float32Array(h.wLength)
      for (let j = 0; j < k; j++) w.set(j === i ? wPart : r.w.get(j) as Float32Array, (wParts[j] as [number, number])[0])
      // 3. The task, with w.
      const task = await this.task(h, w, coordinator, local)
      const out = await this.c.execute(task, { start: h.start, end: h.end }, coordinator, r.controller.signal)
      const v = Object.values(out.partial)[0]?.data
      if (!(v instanceof Float32Array) || v.length !== h.vLength) throw new ProtocolError(`allreduce: the task returned ${v?.length ?? 0} values, ${h.vLength} expected`, 'ERR_BAD_PARTIAL')
      // 4. Reduce-scatter v.
      await Promise.all(others.map(async ({ p, j }) => {
        const [s, e] = vParts[j] as [number, number]
        await this.sendPart(p, { round: h.round, kind: KIND_V, part: j, from: i }, v.subarray(s, e), r.controller.signal)
      }))
      await r.until(() => r.v.size === k - 1)
      const [s, e] = vParts[i] as [number, number]
      const acc = Float64Array.from(v.subarray(s, e))
      for (const part of r.v.values()) for (let x = 0; x < acc.length; x++) acc[x] = (acc[x] as number) + (part[x] as number)
      return { reduced: Float32Array.from(acc), computeMs: out.computeMs }
    } finally {
      signal.removeEventListener('abort', onAbort)
      this.drop(r, new TensormeshError('ERR_ROUND_DONE', `round ${h.round} is over`))
    }
  }

  private async task (h: StartHeader, w: Float32Array, coordinator: PeerId, local?: RoundSpec['local']): Promise<ShardTask> {
    let params: Params
    try {
      const value: unknown = JSON.parse(h.params)
      if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error('not an object')
      params = value as Params
    } catch {
      throw new ProtocolError('allreduce: task params are not a JSON object', 'ERR_BAD_PARAMS')
    }
    const resolved = local ?? await this.c.resolve({ tensors: h.refs, blobs: h.blobs }, coordinator)
    const task: ShardTask = { op: h.op, params: { ...params, start: h.start, end: h.end }, inputs: { ...resolved.tensors, w: { dtype: 'float32', shape: [w.length], data: w } }, shared: h.refs.map(r => r.name) }
    if (h.blobs.length > 0) task.blobs = resolved.blobs
    return task
  }

  private async sendPart (peer: string, part: PartHeader, data: Float32Array, signal: AbortSignal): Promise<void> {
    if (peer === this.self) throw new ProtocolError('allreduce: a group names this node twice', 'ERR_BAD_MESSAGE')
    const connection = await directConnection(this.c.libp2p, peerIdFromString(peer), signal)
    const stream = await connection.newStream(ALLREDUCE_PROTOCOL, { signal, runOnLimitedConnection: true })
    try {
      const lp = lpStream(stream, { maxDataLength: Math.max(CHUNK_BYTES, MAX_HEADER_BYTES) })
      await lp.write(framed(KIND_PART, PartCodec.encode(part)), { signal })
      // A receiver that does not know the round yet reads the length first.
      await lp.write(lengthFrame(data.length), { signal })
      await writeTensorBytes(lp, [{ dtype: 'float32', shape: [data.length], data }], { signal })
      await stream.close({ signal })
    } catch (err) {
      stream.abort(err instanceof Error ? err : new Error(String(err)))
      throw err
    }
  }

  /**
   * Runs one round as its coordinator: START to every member (in process
   * for this node), then the answers' parts concatenated. The first member
   * to fail fails the round, and every other member's START is closed.
   */
  async runRound (members: RoundMember[], spec: RoundSpec, signal: AbortSignal): Promise<RoundOutcome> {
    const k = members.length
    if (k < 1 || k > MAX_GROUP) throw new TensormeshError('ERR_BAD_GROUP', `a round needs 1 to ${MAX_GROUP} members, not ${k}`)
    const group = members.map(m => m.peer)
    if (new Set(group).size !== k) throw new TensormeshError('ERR_BAD_GROUP', 'a round names a member twice')
    const wParts = partition(spec.w.length, k)
    const vParts = partition(spec.vLength, k)
    const ctl = new AbortController()
    const onAbort = (): void => { ctl.abort(signal.reason) }
    signal.addEventListener('abort', onAbort, { once: true })
    const sum = new Float32Array(spec.vLength)
    const outcomes = new Map<string, MemberOutcome>()
    const task = spec.task
    try {
      await Promise.all(members.map(async (m, i) => {
        const [ws, we] = wParts[i] as [number, number]
        const header: StartHeader = { round: spec.round, index: i, group, wLength: spec.w.length, vLength: spec.vLength, op: task.op, params: JSON.stringify(task.params), start: m.start, end: m.end, refs: spec.refs, blobs: spec.blobs }
        const wPart = spec.w.subarray(ws, we)
        const startedAt = Date.now()
        const t0 = performance.now()
        try {
          const out = m.peer === this.self
            ? { ...await this.member(header, wPart, this.c.libp2p.peerId, ctl.signal, spec.local), bytesOut: 0, bytesIn: 0, relayed: false }
            : await this.startRemote(m.peer, header, wPart, ctl.signal)
          const reduced = out.reduced
          outcomes.set(m.peer, { startedAt, ms: Math.round(performance.now() - t0), computeMs: Math.round(out.computeMs), bytesOut: out.bytesOut, bytesIn: out.bytesIn, relayed: out.relayed })
          const [vs, ve] = vParts[i] as [number, number]
          if (reduced.length !== ve - vs) throw new ProtocolError(`allreduce: member ${m.peer} answered ${reduced.length} values for a part of ${ve - vs}`, 'ERR_BAD_PARTIAL')
          sum.set(reduced, vs)
        } catch (err) {
          // One member down takes the round down: the others stop waiting for its parts.
          if (!ctl.signal.aborted) ctl.abort(err)
          throw err instanceof RemoteRoundError || signal.aborted ? err : new RemoteRoundError(m.peer, errorCode(err), errorMessage(err))
        }
      }))
    } finally {
      signal.removeEventListener('abort', onAbort)
    }
    let bytesOut = 0
    let bytesIn = 0
    for (const o of outcomes.values()) {
      bytesOut += o.bytesOut
      bytesIn += o.bytesIn
    }
    return { sum, bytesOut, bytesIn, members: outcomes }
  }

  private async startRemote (peer: string, header: StartHeader, wPart: Float32Array, signal: AbortSignal): Promise<{ reduced: Float32Array, computeMs: number, bytesOut: number, bytesIn: number, relayed: boolean }> {
    const connection = await directConnection(this.c.libp2p, peerIdFromString(peer), signal)
    const stream = await connection.newStream(ALLREDUCE_PROTOCOL, { signal, runOnLimitedConnection: true })
    const onAbort = (): void => { stream.abort(new TensormeshError('ERR_ABORTED', 'round cancelled')) }
    signal.addEventListener('abort', onAbort, { once: true })
    try {
      const lp = lpStream(stream, { maxDataLength: Math.max(CHUNK_BYTES, MAX_HEADER_BYTES) })
      const head = framed(KIND_START, StartCodec.encode(header))
      await lp.write(head, { signal })
      const sent = await writeTensorBytes(lp, [{ dtype: 'float32', shape: [wPart.length], data: wPart }], { signal })
      // The answer comes after the member's compute: no frame timeout on it, the round's signal bounds it.
      const answer = AnswerCodec.decode((await lp.read({ signal })).subarray())
      if (!answer.ok) throw new RemoteRoundError(peer, answer.errorCode, `member ${peer}: ${answer.errorCode}: ${peerText(answer.errorMessage)}`)
      const [vs, ve] = partition(header.vLength, header.group.length)[header.index] as [number, number]
      const { tensors, bytes } = await readTensorBytes(lp, [{ name: 'v', dtype: 'float32', shape: [ve - vs] }], this.limits, 'allreduce answer')
      await stream.close({ signal }).catch(() => {})
      return { reduced: tensors.v?.data as Float32Array, computeMs: answer.computeMs, bytesOut: head.byteLength + sent, bytesIn: bytes, relayed: connection.limits !== undefined || isRelayed(connection.remoteAddr) }
    } catch (err) {
      stream.abort(err instanceof Error ? err : new Error(String(err)))
      throw err
    } finally {
      signal.removeEventListener('abort', onAbort)
    }
  }
}

const KIND_START = 1
const KIND_PART = 2

function framed (kind: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(body.byteLength + 1)
  out[0] = kind
  out.set(body, 1)
  return out
}

function lengthFrame (n: number): Uint8Array {
  const out = new Uint8Array(8)
  new DataView(out.buffer).setFloat64(0, n, true)
  return out
}

/** A part's declared length (a receiver may not know the round's sizes yet), bounded by the tensor limit. */
async function readLength (lp: ReturnType<typeof lpStream>, limits: WireLimits): Promise<number> {
  const frame = (await lp.read({ signal: AbortSignal.timeout(limits.frameTimeoutMs) })).subarray()
  if (frame.byteLength !== 8) throw new ProtocolError('allreduce: a part length is 8 bytes', 'ERR_BAD_MESSAGE')
  const n = new DataView(frame.buffer, frame.byteOffset, 8).getFloat64(0, true)
  if (!Number.isSafeInteger(n) || n < 1 || n * 4 > limits.maxTensorBytes) throw new ProtocolError('allreduce: part length out of range', 'ERR_BAD_MESSAGE')
  return n
}

function partLength (h: StartHeader, part: PartHeader): number | undefined {
  const parts = partition(part.kind === KIND_W ? h.wLength : h.vLength, h.group.length)
  const p = parts[part.part]
  return p === undefined ? undefined : p[1] - p[0]
}

function checkRoundId (id: string): string {
  if (!/^[A-Za-z0-9_-]{1,96}$/.test(id)) throw new ProtocolError('allreduce: round id is not a plain id', 'ERR_BAD_MESSAGE')
  return id
}

function checkStart (h: StartHeader, self: string): void {
  checkRoundId(h.round)
  const k = h.group.length
  if (k < 1 || k > MAX_GROUP || h.index >= k) throw new ProtocolError('allreduce: START has no valid group or index', 'ERR_BAD_MESSAGE')
  if (h.group[h.index] !== self) throw new ProtocolError('allreduce: START addresses another member', 'ERR_NOT_IN_GROUP')
  if (new Set(h.group).size !== k) throw new ProtocolError('allreduce: a group names a member twice', 'ERR_BAD_MESSAGE')
  if (!Number.isSafeInteger(h.wLength) || !Number.isSafeInteger(h.vLength) || h.wLength < k || h.vLength < k) throw new ProtocolError('allreduce: vectors must have at least one value per member', 'ERR_BAD_MESSAGE')
  if (h.end <= h.start) throw new ProtocolError('allreduce: START names no units', 'ERR_BAD_RANGE')
  for (const r of [...h.refs, ...h.blobs]) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(r.name) || r.name === '__proto__' || r.name === 'w') throw new ProtocolError('allreduce: ref name is not an identifier, or is w', 'ERR_BAD_REF')
  }
}
