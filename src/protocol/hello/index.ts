/**
 * /tensormesh/hello/1.0.0: two peers that just connected hand each other
 * their current capacity advert, once. The dialer writes its advert, the
 * listener answers with its own, and the stream closes.
 *
 * Gossip alone makes a newcomer wait for the mesh's next adverts (up to an
 * interval in the full regime, far longer in the sampled one, where a node
 * publishes rarely). Over hello a newcomer knows the peers it connects to,
 * and they know it, within a round trip; the advert is checked exactly as a
 * gossiped one is, with the connection's authenticated peer as its author.
 *
 * Each side then sends a few peers it is connected to (id and one address):
 * hints for the connection keeper's random set. In the sampled regime every
 * directory holds the same recent publishers, and a keeper that dialed only
 * from it would send every newcomer to the same few dozen nodes; a
 * neighbour's neighbours are spread over the whole mesh. Hints are not
 * trusted: a dial to one proves who answers, and a false one costs a dial.
 * A peer that sends no hints (an older node) simply ends the stream.
 */
import { lpStream } from '@libp2p/utils'
import { errorCode, errorMessage } from '../../errors.ts'
import { MAX_ADVERT_BYTES } from '../capacity/advert.ts'
import { messageCodec } from '../codec.ts'
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface'
import type { Logger } from 'pino'

export const HELLO_PROTOCOL = '/tensormesh/hello/1.0.0'

/** Two small messages on an open connection; a peer slower than this is as good as absent. */
export const HELLO_TIMEOUT_MS = 5000

/** One hello per connection is the protocol; two leaves room for a reconnect racing the first. */
export const MAX_INBOUND_HELLO_STREAMS = 2

/** Peers named per hello: enough to seed a keeper's own set from a few neighbours. */
export const MAX_HELLO_HINTS = 8
/** A peer id's multihash (38 bytes for Ed25519) and one multiaddr, each bounded as adverts bound theirs. */
const MAX_HINT_ID_BYTES = 64
const MAX_HINT_ADDR_BYTES = 64

/** A peer to try: its id (multihash bytes) and an address (binary multiaddr). */
export interface PeerHint {
  id: Uint8Array
  addr: Uint8Array
}

interface Hints {
  peers: PeerHint[]
}

const PeerHintCodec = messageCodec<PeerHint>('PeerHint', {
  id: { no: 1, kind: 'bytes', maxBytes: MAX_HINT_ID_BYTES },
  addr: { no: 2, kind: 'bytes', maxBytes: MAX_HINT_ADDR_BYTES }
}, MAX_HINT_ID_BYTES + MAX_HINT_ADDR_BYTES + 8)

const MAX_HINTS_BYTES = MAX_HELLO_HINTS * (MAX_HINT_ID_BYTES + MAX_HINT_ADDR_BYTES + 12)

export const HintsCodec = messageCodec<Hints>('Hints', {
  peers: { no: 1, kind: 'message', codec: PeerHintCodec, repeated: true, maxCount: MAX_HELLO_HINTS }
}, MAX_HINTS_BYTES)

export interface HelloInit {
  /** Our advert as it would go on the topic now. */
  advert: () => Uint8Array
  /** Takes a peer's advert; the caller validates it (CapacityService.admitDirect). */
  admit: (from: PeerId, advert: Uint8Array) => void
  /** A few peers we are connected to, for the other side (none: send no hints). */
  hints?: (to: PeerId) => Promise<PeerHint[]>
  /** Takes the peers the other side named; unverified, for dialing only. */
  hinted?: (from: PeerId, hints: PeerHint[]) => void
  log: Logger
}

async function writeHints (lp: ReturnType<typeof lpStream>, to: PeerId, init: HelloInit, signal: AbortSignal): Promise<void> {
  const peers = (await init.hints?.(to) ?? []).slice(0, MAX_HELLO_HINTS)
  await lp.write(HintsCodec.encode({ peers }), { signal })
}

async function readHints (lp: ReturnType<typeof lpStream>, from: PeerId, init: HelloInit, signal: AbortSignal): Promise<void> {
  let frame
  try {
    frame = await lp.read({ signal })
  } catch {
    return // an older peer closes after its advert
  }
  init.hinted?.(from, HintsCodec.decode(frame.subarray()).peers)
}

/** Serves hellos: read the dialer's advert, answer with ours. */
export async function registerHelloHandler (libp2p: Libp2p, init: HelloInit): Promise<void> {
  await libp2p.handle(HELLO_PROTOCOL, async (stream: Stream, connection: Connection) => {
    const lp = lpStream(stream, { maxDataLength: Math.max(MAX_ADVERT_BYTES, MAX_HINTS_BYTES) })
    const signal = AbortSignal.timeout(HELLO_TIMEOUT_MS)
    try {
      const theirs = await lp.read({ signal })
      init.admit(connection.remotePeer, theirs.subarray())
      await lp.write(init.advert(), { signal })
      await writeHints(lp, connection.remotePeer, init, signal)
      await readHints(lp, connection.remotePeer, init, signal)
      await stream.close({ signal })
    } catch (err) {
      init.log.debug({ peer: connection.remotePeer.toString(), code: errorCode(err), err: errorMessage(err) }, 'hello dropped')
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    }
  }, { maxInboundStreams: MAX_INBOUND_HELLO_STREAMS, runOnLimitedConnection: true })
}

/** Says hello on a connection we opened; resolves once the peer's advert has been handed to `admit`. */
export async function sayHello (connection: Connection, init: HelloInit): Promise<void> {
  const signal = AbortSignal.timeout(HELLO_TIMEOUT_MS)
  const stream = await connection.newStream(HELLO_PROTOCOL, { signal, runOnLimitedConnection: true })
  try {
    const lp = lpStream(stream, { maxDataLength: Math.max(MAX_ADVERT_BYTES, MAX_HINTS_BYTES) })
    await lp.write(init.advert(), { signal })
    const theirs = await lp.read({ signal })
    init.admit(connection.remotePeer, theirs.subarray())
    await readHints(lp, connection.remotePeer, init, signal)
    await writeHints(lp, connection.remotePeer, init, signal)
    await stream.close({ signal }).catch(() => {})
  } catch (err) {
    stream.abort(err instanceof Error ? err : new Error(String(err)))
    throw err
  }
}
