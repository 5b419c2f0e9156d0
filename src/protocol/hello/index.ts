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
 */
import { lpStream } from '@libp2p/utils'
import { errorCode, errorMessage } from '../../errors.ts'
import { MAX_ADVERT_BYTES } from '../capacity/advert.ts'
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface'
import type { Logger } from 'pino'

export const HELLO_PROTOCOL = '/tensormesh/hello/1.0.0'

/** Two small messages on an open connection; a peer slower than this is as good as absent. */
export const HELLO_TIMEOUT_MS = 5000

/** One hello per connection is the protocol; two leaves room for a reconnect racing the first. */
export const MAX_INBOUND_HELLO_STREAMS = 2

export interface HelloInit {
  /** Our advert as it would go on the topic now. */
  advert: () => Uint8Array
  /** Takes a peer's advert; the caller validates it (CapacityService.admitDirect). */
  admit: (from: PeerId, advert: Uint8Array) => void
  log: Logger
}

/** Serves hellos: read the dialer's advert, answer with ours. */
export async function registerHelloHandler (libp2p: Libp2p, init: HelloInit): Promise<void> {
  await libp2p.handle(HELLO_PROTOCOL, async (stream: Stream, connection: Connection) => {
    const lp = lpStream(stream, { maxDataLength: MAX_ADVERT_BYTES })
    const signal = AbortSignal.timeout(HELLO_TIMEOUT_MS)
    try {
      const theirs = await lp.read({ signal })
      init.admit(connection.remotePeer, theirs.subarray())
      await lp.write(init.advert(), { signal })
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
    const lp = lpStream(stream, { maxDataLength: MAX_ADVERT_BYTES })
    await lp.write(init.advert(), { signal })
    const theirs = await lp.read({ signal })
    init.admit(connection.remotePeer, theirs.subarray())
    await stream.close({ signal }).catch(() => {})
  } catch (err) {
    stream.abort(err instanceof Error ? err : new Error(String(err)))
    throw err
  }
}
