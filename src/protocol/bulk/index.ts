/**
 * The bulk channel: large tensor bytes go over a plain TCP connection of
 * their own, encrypted with AES-128-GCM by Node's native crypto, instead of
 * through yamux and noise's 64 KiB frames. Loopback measured 240 MB/s through
 * libp2p against 2.2 GB/s for raw TCP; the cost is per-frame JavaScript, not
 * the cipher (native AES-GCM runs at ~1.5 GB/s on one core here).
 *
 * Security comes from the libp2p stream that carries the ticket: a ticket
 * (id, one-time 128-bit key) is sent inside the noise-encrypted, mutually
 * authenticated shard or blob stream, so only the intended peer learns the
 * key. The bytes are cut into frames of at most BULK_FRAME_BYTES, each
 * sealed with a counter nonce and a final-frame flag in its associated data
 * (the "STREAM" construction), so a frame cannot be altered, reordered,
 * replayed or the transfer truncated without the receiver noticing. The
 * side that connects proves it holds the key (HMAC of the id) before any
 * tensor byte moves, and a ticket serves one connection only.
 *
 * Which side connects follows the libp2p connection (`bulkRoute`): the side
 * that dialed it knows the other accepts connections at that address. So the
 * receiver pulls from a sender that it dialed, and a sender pushes into a
 * receiver that it dialed. A node behind NAT therefore always connects out,
 * whichever way the bytes go; over a relayed connection there is no direct
 * path at all and the bytes stay on the libp2p stream.
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { connect, createServer } from 'node:net'
import { pipe } from 'it-pipe'
import { ProtocolError, TensormeshError } from '../../errors.ts'
import { messageCodec } from '../codec.ts'
import type { DecipherGCM } from 'node:crypto'
import type { Server, Socket } from 'node:net'
import type { Multiaddr } from '@multiformats/multiaddr'

/** Below this many bytes the libp2p stream is as fast (a connection costs a round trip). */
export const BULK_MIN_BYTES = 4 * 1024 * 1024

/** Plaintext per sealed frame: large enough that per-frame work is noise, small enough to stream. */
export const BULK_FRAME_BYTES = 1024 * 1024

/** An offer not taken within this long is dropped (the peer vanished or gave up). */
export const BULK_TICKET_TTL_MS = 60_000

/** A transfer that stalls this long (no bytes) is abandoned. */
export const BULK_IDLE_TIMEOUT_MS = 30_000

/** A bulk connection not accepted within this long counts as no path (a firewall that drops, not refuses). */
export const BULK_CONNECT_TIMEOUT_MS = 10_000

/**
 * Pushes that connect before their ticket reached us wait this long, at most
 * MAX_PARKED at a time: the ticket travels on a libp2p stream that is usually
 * milliseconds behind, and an outsider cannot hold more than these slots.
 */
export const PARK_MS = 10_000
export const MAX_PARKED = 64

const ID_BYTES = 16
const KEY_BYTES = 16
const PROOF_BYTES = 32
/** A hello: mode (pull or push), ticket id, HMAC of both under the ticket's key. */
const HELLO_BYTES = 1 + ID_BYTES + PROOF_BYTES
const MODE_PULL = 0x50
const MODE_PUSH = 0x55
const TAG_BYTES = 16
const HEADER_BYTES = 4

/** What the other side needs to move an offer: sent only inside an encrypted libp2p stream. */
export interface BulkTicket {
  /** Pull: the sender's bulk port. Push: the receiver's (informative; the pusher dials it). */
  port: number
  id: Uint8Array
  key: Uint8Array
  bytes: number
  /** True when the sender connects to the receiver and writes; false when the receiver pulls. */
  push?: boolean
}

/** A ticket as it travels inside an (encrypted) shard or blob stream. */
export const BulkTicketCodec = messageCodec<BulkTicket>('BulkTicket', {
  port: { no: 1, kind: 'uint32' },
  id: { no: 2, kind: 'bytes', maxBytes: 16 },
  key: { no: 3, kind: 'bytes', maxBytes: 16 },
  bytes: { no: 4, kind: 'uint64' },
  push: { no: 5, kind: 'bool' }
}, 128)

/** The IP address of a multiaddr, if it has one. */
export function hostOf (addr: Multiaddr | undefined): string | undefined {
  return addr?.getComponents().find(c => c.name === 'ip4' || c.name === 'ip6')?.value
}

/** True for an address through a circuit relay. */
export function isRelayed (addr: Multiaddr | undefined): boolean {
  return addr?.getComponents().some(c => c.name === 'p2p-circuit') === true
}

/**
 * How a payload of BULK_MIN_BYTES or more reaches the other side of a libp2p
 * connection: 'pull' (it connects to our bulk server), 'push' (we connect to
 * its bulk server, at the address we dialed it on) or 'stream' (no direct
 * path we know of: the bytes go over the libp2p stream itself).
 */
export type BulkRoute =
  | { mode: 'pull' }
  | { mode: 'push', host: string, port: number }
  | { mode: 'stream' }

/** What bulkRoute needs of a libp2p connection. */
export interface RouteConnection {
  direction: 'inbound' | 'outbound'
  remoteAddr: Multiaddr
  limits?: unknown
}

/**
 * The side that dialed the libp2p connection dials the bulk connection too:
 * only it knows that the other side accepts connections at that address.
 * `peerBulkPort` is the other side's bulk port (from its advert), 0 or
 * undefined when it has none.
 */
export function bulkRoute (conn: RouteConnection | undefined, peerBulkPort: number | undefined): BulkRoute {
  if (conn === undefined || conn.limits !== undefined || isRelayed(conn.remoteAddr)) return { mode: 'stream' }
  if (conn.direction === 'inbound') return { mode: 'pull' }
  const host = hostOf(conn.remoteAddr)
  if (host === undefined || peerBulkPort === undefined || peerBulkPort <= 0 || peerBulkPort > 65535) return { mode: 'stream' }
  return { mode: 'push', host, port: peerBulkPort }
}

/** How one payload travels beside a stream: its ticket, and where this side connects when it pushes. */
export interface BulkOffer {
  ticket: BulkTicket
  parts: Uint8Array[]
  /** Set when this side connects and writes (the other side could not reach us). */
  push?: { host: string, port: number }
}

/**
 * The one decision for every protocol: a payload of BULK_MIN_BYTES or more
 * goes beside the stream by `route` (no route: pulled from our bulk server,
 * if we have one); anything else, or a route of 'stream', stays on the stream
 * (undefined).
 */
export function bulkOffer (route: BulkRoute | undefined, bulk: BulkServer | undefined, parts: Uint8Array[]): BulkOffer | undefined {
  const r: BulkRoute = route ?? (bulk !== undefined ? { mode: 'pull' } : { mode: 'stream' })
  if (r.mode === 'stream' || parts.reduce((n, p) => n + p.byteLength, 0) < BULK_MIN_BYTES) return undefined
  if (r.mode === 'push') return { ticket: pushTicket(r.port, parts), parts, push: { host: r.host, port: r.port } }
  if (bulk === undefined) return undefined
  return { ticket: bulk.offer(parts), parts }
}

export class BulkError extends TensormeshError {
  constructor (message: string) {
    super('ERR_BULK', message)
  }
}

function nonce (counter: number): Buffer {
  const n = Buffer.alloc(12)
  n.writeUInt32LE(counter >>> 0, 4)
  n.writeUInt32LE(Math.floor(counter / 2 ** 32), 8)
  return n
}

function proof (key: Uint8Array, modeAndId: Uint8Array): Buffer {
  return createHmac('sha256', key).update(modeAndId).digest()
}

function hello (ticket: BulkTicket, mode: number): Buffer {
  const head = Buffer.concat([Uint8Array.of(mode), ticket.id])
  return Buffer.concat([head, proof(ticket.key, head)])
}

function proves (key: Uint8Array, hello: Buffer): boolean {
  return hello.byteLength === HELLO_BYTES && timingSafeEqual(proof(key, hello.subarray(0, 1 + ID_BYTES)), hello.subarray(1 + ID_BYTES))
}

function checkTicket (ticket: BulkTicket, total: number): void {
  if (ticket.id.byteLength !== ID_BYTES || ticket.key.byteLength !== KEY_BYTES) throw new ProtocolError('malformed bulk ticket', 'ERR_BULK')
  if (total !== ticket.bytes) throw new ProtocolError(`bulk ticket announces ${ticket.bytes} bytes, ${total} expected`, 'ERR_BULK')
}

interface Offer {
  key: Uint8Array
  parts: Uint8Array[]
  bytes: number
  timer: NodeJS.Timeout
}

/** A push this node waits for: the bytes of one ticket, into these targets. */
interface Expected {
  ticket: BulkTicket
  targets: Uint8Array[]
  resolve: () => void
  reject: (err: Error) => void
}

/** A connection whose hello named a push we do not expect yet (its header may still be on its way). */
interface Parked {
  socket: Socket
  hello: Buffer
  rest: Buffer
  timer: NodeJS.Timeout
}

/**
 * Serves offers (each a list of byte ranges sent once, sealed, to the peer
 * holding its key) and takes pushes (sealed bytes a peer writes into targets
 * we set aside for its ticket).
 */
export class BulkServer {
  private readonly host: string
  private server?: Server
  private readonly offers = new Map<string, Offer>()
  private readonly expected = new Map<string, Expected>()
  private readonly parked = new Map<string, Parked>()
  private readonly sockets = new Set<Socket>()
  port = 0
  /** Bytes sent to peers that pulled them, and transfers completed that way. */
  bytesServed = 0
  transfers = 0
  /** Bytes this node pushed to peers, and bytes peers pushed to it. */
  bytesPushed = 0
  bytesReceived = 0

  constructor (host: string) {
    this.host = host
  }

  async start (): Promise<void> {
    const server = createServer((socket) => { this.accept(socket) })
    this.server = server
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, this.host, () => { resolve() })
    })
    const addr = server.address()
    this.port = typeof addr === 'object' && addr !== null ? addr.port : 0
  }

  async stop (): Promise<void> {
    for (const offer of this.offers.values()) clearTimeout(offer.timer)
    this.offers.clear()
    for (const p of this.parked.values()) clearTimeout(p.timer)
    this.parked.clear()
    for (const e of this.expected.values()) e.reject(new BulkError('the bulk channel stopped'))
    this.expected.clear()
    for (const s of this.sockets) s.destroy()
    const server = this.server
    this.server = undefined
    if (server !== undefined) await new Promise<void>(resolve => { server.close(() => { resolve() }) })
  }

  /** Registers bytes for one peer to pull; the parts must not change until it has. */
  offer (parts: Uint8Array[]): BulkTicket {
    const id = randomBytes(ID_BYTES)
    const key = randomBytes(KEY_BYTES)
    const hex = id.toString('hex')
    const bytes = parts.reduce((n, p) => n + p.byteLength, 0)
    const timer = setTimeout(() => { this.offers.delete(hex) }, BULK_TICKET_TTL_MS)
    timer.unref()
    this.offers.set(hex, { key, parts, bytes, timer })
    return { port: this.port, id, key, bytes }
  }

  /** Drops an offer that will not be pulled (the stream failed first). */
  withdraw (ticket: BulkTicket): void {
    const hex = Buffer.from(ticket.id).toString('hex')
    const offer = this.offers.get(hex)
    if (offer === undefined) return
    clearTimeout(offer.timer)
    this.offers.delete(hex)
  }

  /**
   * Waits for the peer holding `ticket` to push its bytes into `targets`
   * (whose sizes add up to ticket.bytes), and checks every frame. The push
   * may have connected already, before its ticket reached us.
   */
  async receive (ticket: BulkTicket, targets: Uint8Array[], signal?: AbortSignal): Promise<void> {
    checkTicket(ticket, targets.reduce((n, t) => n + t.byteLength, 0))
    const hex = Buffer.from(ticket.id).toString('hex')
    if (this.expected.has(hex)) throw new ProtocolError('bulk ticket used twice', 'ERR_BULK')
    const done = new Promise<void>((resolve, reject) => { this.expected.set(hex, { ticket, targets, resolve, reject }) })
    const timer = setTimeout(() => { this.fail(hex, new BulkError(`no bulk push arrived within ${BULK_IDLE_TIMEOUT_MS} ms`)) }, BULK_IDLE_TIMEOUT_MS)
    const onAbort = (): void => { this.fail(hex, new BulkError('bulk transfer aborted')) }
    signal?.addEventListener('abort', onAbort)
    const early = this.parked.get(hex)
    if (early !== undefined) {
      this.parked.delete(hex)
      clearTimeout(early.timer)
      this.take(early.socket, early.hello, early.rest)
    }
    try {
      await done
    } finally {
      clearTimeout(timer)
      signal?.removeEventListener('abort', onAbort)
      this.expected.delete(hex)
    }
  }

  private fail (hex: string, err: Error): void {
    const e = this.expected.get(hex)
    if (e === undefined) return
    this.expected.delete(hex)
    e.reject(err)
  }

  private accept (socket: Socket): void {
    this.sockets.add(socket)
    socket.setNoDelay(true)
    socket.setTimeout(BULK_IDLE_TIMEOUT_MS, () => { socket.destroy() })
    socket.on('close', () => { this.sockets.delete(socket) })
    socket.on('error', () => {})
    let buf = Buffer.alloc(0)
    const onData = (chunk: Buffer): void => {
      buf = Buffer.concat([buf, chunk])
      if (buf.byteLength < HELLO_BYTES) return
      socket.off('data', onData)
      // Paused so that a pusher's first frames wait in the socket, not in a lost 'data' event.
      socket.pause()
      this.take(socket, buf.subarray(0, HELLO_BYTES), buf.subarray(HELLO_BYTES))
    }
    socket.on('data', onData)
  }

  /** Routes a connection by its hello: a pull of an offer, a push we expect, or one to park. */
  private take (socket: Socket, hi: Buffer, rest: Buffer): void {
    const mode = hi[0]
    const hex = hi.subarray(1, 1 + ID_BYTES).toString('hex')
    const offer = mode === MODE_PULL ? this.offers.get(hex) : undefined
    if (mode === MODE_PULL && offer === undefined) { socket.destroy(); return }
    if (offer !== undefined) {
      // Unknown ticket or wrong key: close without a word. A puller sends nothing after its hello.
      if (!proves(offer.key, hi) || rest.byteLength > 0) { socket.destroy(); return }
      clearTimeout(offer.timer)
      this.offers.delete(hex)
      socket.resume()
      writeSealed(socket, offer.key, offer.parts, (n) => { this.bytesServed += n }).then(() => {
        this.transfers++
        socket.end()
      }, () => { socket.destroy() })
      return
    }
    if (mode !== MODE_PUSH) { socket.destroy(); return }
    const expected = this.expected.get(hex)
    if (expected !== undefined) {
      if (!proves(expected.ticket.key, hi)) { socket.destroy(); return }
      this.expected.delete(hex)
      readSealed(socket, expected.ticket, expected.targets, rest).then(() => {
        this.bytesReceived += expected.ticket.bytes
        expected.resolve()
        socket.end()
      }, (err: unknown) => {
        socket.destroy()
        expected.reject(err instanceof Error ? err : new Error(String(err)))
      })
      return
    }
    // Perhaps a push whose ticket is still on its way to us; bounded in number and time.
    if (this.parked.size >= MAX_PARKED || this.parked.has(hex)) { socket.destroy(); return }
    const timer = setTimeout(() => {
      this.parked.delete(hex)
      socket.destroy()
    }, PARK_MS)
    timer.unref()
    this.parked.set(hex, { socket, hello: hi, rest, timer })
  }
}

/*
 * A transfer is a pipeline (it-pipe): the sender cuts its parts into pieces,
 * seals each into a frame and writes the frames to the socket; the receiver
 * reads the socket's chunks, opens frames and copies the plaintext straight
 * into the tensors' buffers. Each stage is an async iterable transform, so
 * socket backpressure (write -> drain) and the end of a transfer flow
 * through the chain without buffering more than a frame.
 */

/** The parts cut into pieces of at most BULK_FRAME_BYTES; nothing is still one (empty, final) piece. */
function* framePieces (parts: Uint8Array[]): Generator<Uint8Array> {
  let any = false
  for (const part of parts) {
    for (let off = 0; off < part.byteLength; off += BULK_FRAME_BYTES) {
      any = true
      yield part.subarray(off, Math.min(off + BULK_FRAME_BYTES, part.byteLength))
    }
  }
  // An empty transfer is one empty, final frame, so the receiver can tell it from a cut.
  if (!any) yield new Uint8Array(0)
}

/** Seals each piece as header, ciphertext, tag under a counter nonce; the last piece's frame is flagged final. */
function sealFrames (key: Uint8Array, onBytes: (n: number) => void): (pieces: Iterable<Uint8Array>) => AsyncGenerator<Uint8Array> {
  return async function * (pieces) {
    const it = pieces[Symbol.iterator]()
    let next = it.next()
    for (let i = 0; !next.done; i++) {
      const piece = next.value
      next = it.next()
      const cipher = createCipheriv('aes-128-gcm', key, nonce(i), { authTagLength: TAG_BYTES })
      cipher.setAAD(Uint8Array.of(next.done === true ? 1 : 0))
      const header = Buffer.alloc(HEADER_BYTES)
      header.writeUInt32LE(piece.byteLength)
      yield header
      yield cipher.update(piece)
      cipher.final()
      yield cipher.getAuthTag()
      onBytes(piece.byteLength)
    }
  }
}

/** The sink that writes to a socket, waiting for 'drain' when its buffer is full. */
function toSocket (socket: Socket): (source: AsyncIterable<Uint8Array>) => Promise<void> {
  return async (source) => {
    for await (const buf of source) {
      if (socket.write(buf)) continue
      await new Promise<void>((resolve, reject) => {
        const onDrain = (): void => { socket.off('close', onClose); resolve() }
        const onClose = (): void => { socket.off('drain', onDrain); reject(new BulkError('the other side closed the bulk connection')) }
        socket.once('drain', onDrain)
        socket.once('close', onClose)
      })
    }
  }
}

/** Writes parts as sealed frames of at most BULK_FRAME_BYTES, the last one flagged final. */
async function writeSealed (socket: Socket, key: Uint8Array, parts: Uint8Array[], onBytes: (n: number) => void): Promise<void> {
  await pipe(framePieces(parts), sealFrames(key, onBytes), toSocket(socket))
}

/** `first` (bytes that came with the hello), then the socket's chunks. */
async function * withFirst (first: Buffer, socket: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  if (first.byteLength > 0) yield first
  yield * socket
}

/**
 * Opens sealed frames from a stream of chunks cut anywhere: yields each
 * frame's plaintext as it deciphers, and ends after the final frame. Throws
 * on a frame that fails authentication, one larger than allowed or than
 * announced, an empty frame before the end, bytes after the final frame, or
 * a stream that ends first.
 */
function openFrames (ticket: BulkTicket): (source: AsyncIterable<Buffer>) => AsyncGenerator<Buffer> {
  return async function * (source) {
    const total = ticket.bytes
    let received = 0
    let counter = 0
    let final = false
    let header = Buffer.alloc(0)
    let frameLeft = -1
    let tag = Buffer.alloc(0)
    let decipher: DecipherGCM | undefined
    for await (const raw of source) {
      let chunk = raw
      while (chunk.byteLength > 0) {
        if (final) throw new ProtocolError('bulk sender sent bytes after the final frame', 'ERR_BULK')
        if (frameLeft < 0) {
          const need = HEADER_BYTES - header.byteLength
          header = Buffer.concat([header, chunk.subarray(0, need)])
          chunk = chunk.subarray(need)
          if (header.byteLength < HEADER_BYTES) break
          frameLeft = header.readUInt32LE(0)
          header = Buffer.alloc(0)
          if (frameLeft > BULK_FRAME_BYTES || received + frameLeft > total) throw new ProtocolError('bulk frame larger than allowed or than announced', 'ERR_BULK')
          // Only an empty transfer has an empty frame (its one, final frame). Empty
          // frames before the end carry nothing but reset the idle timer, so a
          // sender could hold this transfer open forever with 20-byte frames.
          if (frameLeft === 0 && received < total) throw new ProtocolError('bulk sender sent an empty frame before the end', 'ERR_BULK')
          decipher = createDecipheriv('aes-128-gcm', ticket.key, nonce(counter++), { authTagLength: TAG_BYTES })
          decipher.setAAD(Uint8Array.of(received + frameLeft === total ? 1 : 0))
          tag = Buffer.alloc(0)
        }
        if (frameLeft > 0) {
          const n = Math.min(frameLeft, chunk.byteLength)
          const plain = decipher?.update(chunk.subarray(0, n))
          if (plain !== undefined && plain.byteLength > 0) yield plain
          frameLeft -= n
          received += n
          chunk = chunk.subarray(n)
          continue
        }
        const need = TAG_BYTES - tag.byteLength
        tag = Buffer.concat([tag, chunk.subarray(0, need)])
        chunk = chunk.subarray(need)
        if (tag.byteLength < TAG_BYTES) break
        try {
          decipher?.setAuthTag(tag)
          decipher?.final()
        } catch {
          throw new ProtocolError('bulk frame failed authentication', 'ERR_BULK_AUTH')
        }
        frameLeft = -1
        if (received === total) final = true
      }
      // A pusher ends its side after the final frame; the puller need not wait for that.
      if (final) return
    }
    throw new ProtocolError(`bulk transfer ended after ${received} of ${total} bytes`, 'ERR_BULK')
  }
}

/** The sink that copies plaintext, in order, into `targets` (a native memcpy per piece). */
function intoTargets (targets: Uint8Array[]): (source: AsyncIterable<Buffer>) => Promise<void> {
  return async (source) => {
    let ti = 0
    let toff = 0
    for await (const plain of source) {
      let p = 0
      while (p < plain.byteLength) {
        const target = targets[ti]
        if (target === undefined) throw new ProtocolError('bulk sender sent more bytes than announced', 'ERR_BULK')
        const n = Math.min(plain.byteLength - p, target.byteLength - toff)
        // Buffer#copy is a native memcpy; TypedArray#set from a Buffer view was a third of the profile.
        plain.copy(target, toff, p, p + n)
        p += n
        toff += n
        if (toff === target.byteLength) { ti++; toff = 0 }
      }
    }
  }
}

/**
 * Reads sealed frames into `targets` (whose sizes add up to ticket.bytes), in
 * order, starting with `first` (bytes that came with the hello). Throws
 * unless every frame authenticates and the last is final.
 */
async function readSealed (socket: Socket, ticket: BulkTicket, targets: Uint8Array[], first: Buffer = Buffer.alloc(0)): Promise<void> {
  await pipe(withFirst(first, socket as AsyncIterable<Buffer>), openFrames(ticket), intoTargets(targets))
}

/**
 * Opens a bulk connection, runs `use` on it and destroys it afterwards; one
 * abort listener covers the connect and the transfer.
 */
async function withConnection<T> (host: string, port: number, signal: AbortSignal | undefined, use: (socket: Socket) => Promise<T>): Promise<T> {
  const socket = connect({ host, port })
  socket.setNoDelay(true)
  const onAbort = (): void => { socket.destroy(new BulkError('bulk transfer aborted')) }
  signal?.addEventListener('abort', onAbort)
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve)
      socket.once('error', reject)
      socket.setTimeout(BULK_CONNECT_TIMEOUT_MS, () => { socket.destroy(new BulkError(`bulk connection to ${host}:${port} not accepted within ${BULK_CONNECT_TIMEOUT_MS} ms`)) })
    })
    socket.on('error', () => {})
    socket.setTimeout(BULK_IDLE_TIMEOUT_MS, () => { socket.destroy(new BulkError(`bulk transfer stalled for ${BULK_IDLE_TIMEOUT_MS} ms`)) })
    return await use(socket)
  } finally {
    signal?.removeEventListener('abort', onAbort)
    socket.destroy()
  }
}

/**
 * Pulls an offer into `targets` (whose sizes add up to ticket.bytes), in
 * order. Throws unless every frame authenticates and the last is final.
 */
export async function bulkFetch (host: string, ticket: BulkTicket, targets: Uint8Array[], signal?: AbortSignal): Promise<void> {
  checkTicket(ticket, targets.reduce((n, t) => n + t.byteLength, 0))
  await withConnection(host, ticket.port, signal, async (socket) => {
    socket.write(hello(ticket, MODE_PULL))
    await readSealed(socket, ticket, targets)
  })
}

/** A ticket for bytes this node will push to a peer's bulk server at `port`. */
export function pushTicket (port: number, parts: Uint8Array[]): BulkTicket {
  return { port, id: randomBytes(ID_BYTES), key: randomBytes(KEY_BYTES), bytes: parts.reduce((n, p) => n + p.byteLength, 0), push: true }
}

/**
 * Connects to a peer's bulk server and writes `parts` under `ticket` (from
 * pushTicket). `stats.bytesPushed` (our BulkServer's counter) grows as frames go out.
 */
export async function bulkPush (host: string, port: number, ticket: BulkTicket, parts: Uint8Array[], signal?: AbortSignal, stats?: { bytesPushed: number }): Promise<number> {
  checkTicket(ticket, parts.reduce((n, p) => n + p.byteLength, 0))
  return await withConnection(host, port, signal, async (socket) => {
    socket.write(hello(ticket, MODE_PUSH))
    let sent = 0
    await writeSealed(socket, ticket.key, parts, (n) => {
      sent += n
      if (stats !== undefined) stats.bytesPushed += n
    })
    // The receiver closes once it has checked the final frame; a cut before that is a failure.
    await new Promise<void>((resolve, reject) => {
      socket.once('end', resolve)
      socket.once('close', (hadError) => { if (hadError) reject(new BulkError('the receiver dropped the bulk push')); else resolve() })
      socket.end()
      socket.resume()
    })
    return sent
  })
}
