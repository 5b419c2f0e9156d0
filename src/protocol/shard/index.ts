/**
 * /tensormesh/shard/1.0.0: one shard per stream. The coordinator sends a
 * header (job, shard, operator, params, tensor descriptors) and the tensor
 * bytes; the peer runs the shard in its executor pool and answers with a
 * result header and the partial's bytes. A peer stops working on a shard as
 * soon as the stream goes away (the coordinator cancelled it or died).
 */
import { lpStream } from '@libp2p/utils'
import { ProtocolError, TensormeshError, errorCode, errorMessage } from '../../errors.ts'
import { messageCodec } from '../codec.ts'
import { CHUNK_BYTES, DEFAULT_WIRE_LIMITS, MAX_HEADER_BYTES, MAX_PARAMS_BYTES, MAX_TENSORS_PER_FRAME } from '../limits.ts'
import { peerText } from '../sanitize.ts'
import { BulkError, BulkTicketCodec, bulkFetch, bulkOffer, bulkPush, bulkRoute, hostOf, isRelayed } from '../bulk/index.ts'
import { directConnection } from '../connections.ts'
import { TensorDescCodec, allocateTensors, checkDescs, describeTensors, readTensorBytes, tensorBytes, writeTensorBytes } from '../tensor-frames.ts'
import { OPEN_GUARD, RateLimitedError, isMalformed } from '../peer-guard.ts'
import type { PeerGuard } from '../peer-guard.ts'
import type { BulkOffer, BulkRoute, BulkServer, BulkTicket } from '../bulk/index.ts'
import type { ShardSessions } from './session.ts'
import type { LengthPrefixedStream } from '@libp2p/utils'
import type { Params, ShardTask, Tensors } from '../../compute/operators/types.ts'
import type { WireLimits } from '../limits.ts'
import type { TensorDesc } from '../tensor-frames.ts'
import type { ReceiveBuffers } from '../receive-buffers.ts'
import type { Libp2p, PeerId, Stream, Connection } from '@libp2p/interface'
import type { Logger } from 'pino'

export const SHARD_PROTOCOL = '/tensormesh/shard/1.0.0'

/** Shards a peer serves at once per connection; more queue in its pool's bounded queue or are refused. */
export const MAX_INBOUND_SHARD_STREAMS = 32

/** A tensor or blob sent by content address instead of inline. */
export interface ContentRef {
  name: string
  cid: string
}

const ContentRefCodec = messageCodec<ContentRef>('ContentRef', {
  name: { no: 1, kind: 'string', maxBytes: 64 },
  cid: { no: 2, kind: 'string', maxBytes: 128 }
}, 512)

export interface ShardHeader {
  jobId: string
  index: number
  attempt: number
  op: string
  /** The operator's params as JSON text. */
  params: string
  start: number
  end: number
  tensors: TensorDesc[]
  /** Shared inputs, by CID: the peer fetches each once from the coordinator. */
  refs: ContentRef[]
  blobs: ContentRef[]
  /** Present when the tensor bytes come over the bulk channel instead of this stream. */
  bulk?: BulkTicket
}

export interface ResultHeader {
  ok: boolean
  errorCode: string
  errorMessage: string
  computeMs: number
  tensors: TensorDesc[]
  bulk?: BulkTicket
}

const ShardHeaderCodec = messageCodec<ShardHeader>('ShardHeader', {
  jobId: { no: 1, kind: 'string', maxBytes: 64 },
  index: { no: 2, kind: 'uint32' },
  attempt: { no: 3, kind: 'uint32' },
  op: { no: 4, kind: 'string', maxBytes: 64 },
  params: { no: 5, kind: 'string', maxBytes: MAX_PARAMS_BYTES },
  start: { no: 6, kind: 'uint64' },
  end: { no: 7, kind: 'uint64' },
  tensors: { no: 8, kind: 'message', codec: TensorDescCodec, repeated: true, maxCount: MAX_TENSORS_PER_FRAME },
  refs: { no: 9, kind: 'message', codec: ContentRefCodec, repeated: true, maxCount: MAX_TENSORS_PER_FRAME },
  blobs: { no: 10, kind: 'message', codec: ContentRefCodec, repeated: true, maxCount: MAX_TENSORS_PER_FRAME },
  bulk: { no: 11, kind: 'message', codec: BulkTicketCodec }
}, MAX_HEADER_BYTES)

const ResultHeaderCodec = messageCodec<ResultHeader>('ResultHeader', {
  ok: { no: 1, kind: 'bool' },
  errorCode: { no: 2, kind: 'string', maxBytes: 64 },
  errorMessage: { no: 3, kind: 'string', maxBytes: 2048 },
  computeMs: { no: 4, kind: 'double' },
  tensors: { no: 5, kind: 'message', codec: TensorDescCodec, repeated: true, maxCount: MAX_TENSORS_PER_FRAME },
  bulk: { no: 6, kind: 'message', codec: BulkTicketCodec }
}, MAX_HEADER_BYTES)

export { ShardHeaderCodec, ResultHeaderCodec, ContentRefCodec }

/** The peer answered that the shard failed there (its code is kept in `remoteCode`). */
export class RemoteShardError extends TensormeshError {
  readonly remoteCode: string

  constructor (remoteCode: string, message: string) {
    super('ERR_SHARD_REMOTE', message)
    this.remoteCode = remoteCode
  }
}

/** What the peer-side handler gets: the checked header, the shard's task and who sent it. */
export interface IncomingShard extends OutgoingShard {
  from: PeerId
}

export type ShardExecutor = (shard: IncomingShard, signal: AbortSignal) => Promise<{ partial: Tensors, computeMs: number }>

/** Turns a shard's content refs into tensors and blobs (from a cache, or fetched from `from`). */
export type RefResolver = (refs: { tensors: ContentRef[], blobs: ContentRef[] }, from: PeerId) => Promise<{ tensors: Tensors, blobs: Record<string, Uint8Array> }>

/** Names a shard's tensors and refs use must not collide. */
function checkRefs (header: ShardHeader): void {
  const names = new Set(header.tensors.map(t => t.name))
  for (const r of [...header.refs, ...header.blobs]) {
    // `__proto__` is an identifier, but Object.assign(inputs, resolved) with it
    // sets the inputs' prototype to the ref's tensor instead of adding a key.
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(r.name) || r.name === '__proto__') throw new ProtocolError('shard ref name is not an identifier (or is the reserved __proto__)', 'ERR_BAD_REF')
    if (names.has(r.name)) throw new ProtocolError(`shard names ${r.name} twice`, 'ERR_BAD_REF')
    names.add(r.name)
  }
}

/** Checks a shard header from a peer before any of its bytes are taken; returns its params. */
export function checkShardHeader (header: ShardHeader, limits: WireLimits): Params {
  const params = parseParams(header.params)
  if (header.end < header.start) throw new ProtocolError('shard range ends before it starts', 'ERR_BAD_RANGE')
  checkDescs(header.tensors, limits, 'shard request')
  checkRefs(header)
  return params
}

/** Runs a checked shard whose inline tensors have arrived: resolves its refs, then executes it. */
export async function executeShard (header: ShardHeader, params: Params, tensors: Tensors, from: PeerId, execute: ShardExecutor, resolve: RefResolver | undefined, signal: AbortSignal): Promise<{ partial: Tensors, computeMs: number }> {
  const task: ShardTask = { op: header.op, params, inputs: tensors }
  if (header.refs.length > 0 || header.blobs.length > 0) {
    if (resolve === undefined) throw new ProtocolError('this node takes no content refs', 'ERR_BAD_REF')
    const resolved = await resolve({ tensors: header.refs, blobs: header.blobs }, from)
    Object.assign(task.inputs, resolved.tensors)
    task.shared = header.refs.map(r => r.name)
    if (header.blobs.length > 0) task.blobs = resolved.blobs
  }
  return await execute({
    jobId: header.jobId, index: header.index, attempt: header.attempt, start: header.start, end: header.end, from, task
  }, signal)
}

function parseParams (text: string): Params {
  let value: unknown
  try {
    value = text === '' ? {} : JSON.parse(text)
  } catch {
    throw new ProtocolError('shard params are not JSON', 'ERR_BAD_PARAMS')
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new ProtocolError('shard params are not a JSON object', 'ERR_BAD_PARAMS')
  return value as Params
}

/** How a node moves a shard's bytes; every field is optional but the limits. */
export interface ShardTransport {
  limits?: WireLimits
  /** Turns content refs into tensors (the peer side). */
  resolve?: RefResolver
  /** Serves this side's large payloads over the bulk channel, and takes the other side's pushes. */
  bulk?: BulkServer
  /** The other side's IP address, for pulling its bulk offers. */
  remoteHost?: string
  /** How this side's large payloads reach the other side (default: over the stream). */
  route?: BulkRoute
  /** A peer's bulk port, from its advert; a push needs it. */
  bulkPortOf?: (peer: string) => number | undefined
  /** Small shards travel as frames on one session stream per peer (the coordinator side); none: a stream per shard. */
  sessions?: ShardSessions
  /** Bans, rate limits and strikes per peer (the peer side); none lets everyone in. */
  guard?: PeerGuard
  /**
   * Admission of one more shard from this coordinator (the peer side): returns
   * the release to call when the shard's stream ends, or throws (a typed
   * error whose code the coordinator gets in the error answer).
   */
  admit?: (from: string) => () => void
  /** Reused memory for large shard inputs (the peer side); none: a fresh buffer per shard. */
  receiveBuffers?: ReceiveBuffers
}


/** Serves shards: reads one, runs it through `execute`, answers with the partial. */
export async function registerShardHandler (libp2p: Libp2p, execute: ShardExecutor, log: Logger, transport: ShardTransport = {}): Promise<void> {
  await libp2p.handle(SHARD_PROTOCOL, async (stream: Stream, connection: Connection) => {
    const route = bulkRoute(connection, transport.bulkPortOf?.(connection.remotePeer.toString()))
    await handleShardStream(stream, connection.remotePeer, execute, log, { ...transport, remoteHost: hostOf(connection.remoteAddr), route })
  }, {
    maxInboundStreams: MAX_INBOUND_SHARD_STREAMS,
    maxOutboundStreams: MAX_INBOUND_SHARD_STREAMS,
    // Two nodes behind NAT reach each other only through a relay of the mesh.
    runOnLimitedConnection: true
  })
}

/** Serves one shard on an open stream (the protocol handler's body). */
export async function handleShardStream (stream: Stream, from: PeerId, execute: ShardExecutor, log: Logger, transport: ShardTransport = {}): Promise<void> {
  const limits = transport.limits ?? DEFAULT_WIRE_LIMITS
  const resolve = transport.resolve
  const guard = transport.guard ?? OPEN_GUARD
  const peer = from.toString()
  const admission = guard.admit(peer, 'shard')
  if (admission === 'banned') {
    stream.abort(new TensormeshError('ERR_PEER_BANNED', 'peer is banned'))
    return
  }
  const lp = lpStream(stream, { maxDataLength: CHUNK_BYTES })
  // The lease: when the stream closes before we answer, the work is for nobody.
  const lease = new AbortController()
  const onClose = (): void => { lease.abort(new TensormeshError('ERR_LEASE_LOST', 'the coordinator closed the shard stream')) }
  stream.addEventListener('close', onClose)
  let answered = false
  let release: (() => void) | undefined
  // The inputs' reused memory goes back once the stream has ended: by then the worker is done with them.
  let freeInputs: (() => void) | undefined
  try {
    // Refused before a byte is read: a flood costs one small answer per
    // stream, and pausing keeps the sender's inputs in its flow-control window
    // rather than in our memory until it reads the answer and lets go.
    if (admission === 'limited') {
      stream.pause()
      throw new RateLimitedError('shard requests from this peer are over their rate limit')
    }
    try {
      release = transport.admit?.(peer)
    } catch (err) {
      stream.pause()
      throw err
    }
    const headerFrame = await lp.read({ signal: AbortSignal.timeout(limits.frameTimeoutMs) })
    if (headerFrame.byteLength > MAX_HEADER_BYTES) throw new ProtocolError('shard header too long', 'ERR_MESSAGE_TOO_LONG')
    const header = ShardHeaderCodec.decode(headerFrame.subarray())
    const params = checkShardHeader(header, limits)
    const received = await receiveTensors(lp, header, limits, 'shard request', transport, lease.signal, transport.receiveBuffers)
    freeInputs = received.release
    const tensors = received.tensors
    const result = await executeShard(header, params, tensors, from, execute, resolve, lease.signal)
    const out = Object.values(result.partial)
    answered = true
    const offer = offerBulk(transport, out)
    const ticket = offer?.ticket
    try {
      await lp.write(ResultHeaderCodec.encode({ ok: true, errorCode: '', errorMessage: '', computeMs: result.computeMs, tensors: describeTensors(result.partial), ...(ticket !== undefined ? { bulk: ticket } : {}) }))
      if (offer === undefined) await writeTensorBytes(lp, out)
      else if (offer.push !== undefined) await bulkPush(offer.push.host, offer.push.port, offer.ticket, offer.parts, lease.signal, transport.bulk)
      // With a bulk offer the coordinator pulls, then closes; our close waits for that.
    } catch (err) {
      if (ticket !== undefined) transport.bulk?.withdraw(ticket)
      throw err
    }
    await stream.close({ signal: AbortSignal.timeout(limits.frameTimeoutMs) })
  } catch (err) {
    log.debug({ peer, code: errorCode(err), err: errorMessage(err) }, 'shard failed')
    // A coordinator that let go of the stream cut its own bytes short: no strike.
    if (!answered && !lease.signal.aborted && isMalformed(err)) guard.strike(peer, 'shard')
    if (!answered && !lease.signal.aborted) {
      // Tell the coordinator why, in a frame it can decode; then close.
      try {
        await lp.write(ResultHeaderCodec.encode({ ok: false, errorCode: errorCode(err), errorMessage: errorMessage(err).slice(0, 2000), computeMs: 0, tensors: [] }), { signal: AbortSignal.timeout(limits.frameTimeoutMs) })
        await stream.close({ signal: AbortSignal.timeout(limits.frameTimeoutMs) })
        return
      } catch {}
    }
    stream.abort(err instanceof Error ? err : new Error(String(err)))
  } finally {
    freeInputs?.()
    release?.()
    stream.removeEventListener('close', onClose)
  }
}

/** One shard as the coordinator sends it. */
export interface OutgoingShard {
  jobId: string
  index: number
  attempt: number
  start: number
  end: number
  task: ShardTask
  /** The result's expected size in bytes, from the plan's cost (not sent): small shards go by session. */
  resultBytes?: number
}

export interface ShardOutcome {
  partial: Tensors
  computeMs: number
  bytesOut: number
  bytesIn: number
  /** True when the shard went through a circuit relay (both ends behind NAT). */
  relayed?: boolean
}

/** Gives shared inputs and blobs their CIDs (and serves them) on the coordinator. */
export interface RefPublisher {
  tensorRef: (t: Tensors[string]) => Promise<string>
  blobRef: (bytes: Uint8Array) => Promise<string>
  /** Lets `peer` fetch these CIDs: called before a shard naming them goes to it. */
  grant?: (peer: string, cids: string[]) => void
}

/** Sends one shard to a peer and waits for its partial. */
export async function sendShard (libp2p: Libp2p, peer: PeerId, shard: OutgoingShard, signal: AbortSignal, transport: ShardTransport & { publisher?: RefPublisher } = {}): Promise<ShardOutcome> {
  const publisher = transport.publisher
  const refs: ContentRef[] = []
  const blobs: ContentRef[] = []
  if (publisher === undefined && shard.task.blobs !== undefined) throw new Error('a shard with blobs needs a RefPublisher')
  if (publisher !== undefined) {
    for (const name of shard.task.shared ?? []) {
      const t = shard.task.inputs[name]
      if (t !== undefined) refs.push({ name, cid: await publisher.tensorRef(t) })
    }
    for (const [name, bytes] of Object.entries(shard.task.blobs ?? {})) blobs.push({ name, cid: await publisher.blobRef(bytes) })
    // Before the header leaves: the peer fetches as soon as it reads it.
    if (refs.length > 0 || blobs.length > 0) publisher.grant?.(peer.toString(), [...refs, ...blobs].map(r => r.cid))
  }
  const sessions = transport.sessions
  if (sessions !== undefined) {
    const byRef = new Set(refs.map(r => r.name))
    const inline = Object.fromEntries(Object.entries(shard.task.inputs).filter(([name]) => !byRef.has(name)))
    if (sessions.fits(peer.toString(), shard, inline)) {
      try {
        return await sessions.send(peer, shard, refs, blobs, inline, signal)
      } catch (err) {
        // Too big after all, or no session to be had: this shard takes a stream of its own.
        if (!sessions.fallsBack(shard, err)) throw err
      }
    }
  }
  const connection = await directConnection(libp2p, peer, signal)
  const stream = await connection.newStream(SHARD_PROTOCOL, { signal, runOnLimitedConnection: true })
  const route = bulkRoute(connection, transport.bulkPortOf?.(peer.toString()))
  const outcome = await shardOverStream(stream, shard, signal, { ...transport, remoteHost: hostOf(connection.remoteAddr), route }, refs, blobs)
  return { ...outcome, relayed: connection.limits !== undefined || isRelayed(connection.remoteAddr) }
}


/** Runs the coordinator's side of one shard on an open stream. */
export async function shardOverStream (stream: Stream, shard: OutgoingShard, signal: AbortSignal, transport: ShardTransport = {}, refs: ContentRef[] = [], blobs: ContentRef[] = []): Promise<ShardOutcome> {
  const limits = transport.limits ?? DEFAULT_WIRE_LIMITS
  let ticket: BulkTicket | undefined
  const onAbort = (): void => { stream.abort(new TensormeshError('ERR_ABORTED', 'shard cancelled')) }
  signal.addEventListener('abort', onAbort)
  try {
    const lp = lpStream(stream, { maxDataLength: CHUNK_BYTES })
    const byRef = new Set(refs.map(r => r.name))
    const inline = Object.fromEntries(Object.entries(shard.task.inputs).filter(([name]) => !byRef.has(name)))
    const offer = offerBulk(transport, Object.values(inline))
    ticket = offer?.ticket
    const header: ShardHeader = {
      jobId: shard.jobId, index: shard.index, attempt: shard.attempt, op: shard.task.op,
      params: JSON.stringify(shard.task.params), start: shard.start, end: shard.end,
      tensors: describeTensors(inline), refs, blobs, ...(ticket !== undefined ? { bulk: ticket } : {})
    }
    await lp.write(ShardHeaderCodec.encode(header), { signal })
    // The reply is read while the inputs go out: a peer may refuse the shard
    // before it reads them (over its rate, or over our share of it), and then
    // stops reading, so a write could wait for a window that never opens.
    // Its answer stops the writes and arrives as its code.
    const reply = lp.read({ signal })
    const sending = new AbortController()
    reply.then(() => { sending.abort(new TensormeshError('ERR_ANSWERED_EARLY', 'the peer answered before it took the inputs')) }, () => {})
    let bytesOut = ticket?.bytes ?? 0
    let cut = false
    if (offer === undefined || offer.push !== undefined) {
      try {
        const sendSignal = AbortSignal.any([signal, sending.signal])
        bytesOut = offer?.push !== undefined
          ? await bulkPush(offer.push.host, offer.push.port, offer.ticket, offer.parts, sendSignal, transport.bulk)
          : await writeTensorBytes(lp, Object.values(inline), { signal: sendSignal })
      } catch (err) {
        if (!sending.signal.aborted || signal.aborted) throw err
        cut = true
      }
    }
    // The peer computes now; the reply's first frame may take as long as the shard does.
    const resultFrame = await reply
    const result = ResultHeaderCodec.decode(resultFrame.subarray())
    if (!result.ok) throw new RemoteShardError(peerText(result.errorCode), peerText(result.errorMessage))
    if (cut) throw new ProtocolError('shard result: the peer answered ok before it received the inputs', 'ERR_BAD_RESULT')
    if (!Number.isFinite(result.computeMs) || result.computeMs < 0) throw new ProtocolError('result header: computeMs is not a finite non-negative number', 'ERR_BAD_RESULT')
    const { tensors } = await receiveTensors(lp, result, limits, 'shard result', transport, signal)
    await stream.close({ signal }).catch(() => {})
    const bytes = Object.values(tensors).reduce((n, t) => n + t.data.byteLength, 0)
    return { partial: tensors, computeMs: result.computeMs, bytesOut, bytesIn: bytes }
  } catch (err) {
    if (ticket !== undefined) transport.bulk?.withdraw(ticket)
    stream.abort(err instanceof Error ? err : new Error(String(err)))
    throw err
  } finally {
    signal.removeEventListener('abort', onAbort)
  }
}

/** Payloads of BULK_MIN_BYTES or more go beside the stream, by the transport's route; undefined: on the stream. */
function offerBulk (transport: ShardTransport, tensors: Tensors[string][]): BulkOffer | undefined {
  return bulkOffer(transport.route, transport.bulk, tensorBytes(tensors))
}

/**
 * Tensors described by a header: read from this stream, pulled over the bulk
 * channel, or pushed into ours. Bulk payloads land in `memory`'s reused
 * buffers when given; `release` gives them back (a no-op otherwise).
 */
async function receiveTensors (lp: LengthPrefixedStream, header: { tensors: TensorDesc[], bulk?: BulkTicket }, limits: WireLimits, what: string, transport: ShardTransport, signal: AbortSignal, memory?: ReceiveBuffers): Promise<{ tensors: Tensors, release: () => void }> {
  if (header.bulk === undefined) return { tensors: (await readTensorBytes(lp, header.tensors, limits, what)).tensors, release: () => {} }
  const t = header.bulk
  if (t.id.byteLength !== 16 || t.key.byteLength !== 16 || t.port === 0 || t.port > 65535) throw new ProtocolError(`${what}: malformed bulk ticket`, 'ERR_BULK')
  // Checked and allocated before a byte moves, like the in-stream path.
  const { tensors, targets, bytes, release } = allocateTensors(header.tensors, limits, what, memory)
  try {
    if (bytes !== t.bytes) throw new ProtocolError(`${what}: bulk ticket announces ${t.bytes} bytes, the tensors need ${bytes}`, 'ERR_BULK')
    if (t.push === true) {
      if (transport.bulk === undefined) throw new BulkError(`${what}: the peer pushes over the bulk channel, and this node has none`)
      await transport.bulk.receive(t, targets, signal)
    } else {
      if (transport.remoteHost === undefined) throw new ProtocolError(`${what}: bulk ticket but no address to pull from`, 'ERR_BULK')
      await bulkFetch(transport.remoteHost, t, targets, signal)
    }
  } catch (err) {
    release()
    throw err
  }
  return { tensors, release }
}
