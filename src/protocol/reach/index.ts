/**
 * /tensormesh/reach/1.0.0: "can you dial me back?". A node asks a peer it is
 * connected to whether that peer can open a new connection to it at the
 * address the peer sees it on, at the ports the node listens on. The answer
 * tells a node behind NAT that it is not reachable, so it takes a relay.
 *
 * Why not @libp2p/autonat-v2 alone: it never tests private addresses
 * (@libp2p/utils' list counts 198.18.0.0/15, 10/8 and 192.168/16 as private)
 * and it wants REQUIRED_FAILED_DIALS = 8 failures from peers in 8 different
 * /8 networks before it gives up on an address, so on a LAN, in a testnet, or
 * in a mesh of a few dozen nodes it never decides. This check follows its
 * safety rule: the peer dials back only the IP address the connection came
 * from, so it cannot be used to make a peer dial a third party.
 */
import { lpStream } from '@libp2p/utils'
import { multiaddr } from '@multiformats/multiaddr'
import { ProtocolError, errorMessage } from '../../errors.ts'
import { messageCodec } from '../codec.ts'
import { hostOf, isRelayed } from '../bulk/index.ts'
import type { Connection, Libp2p, Stream } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'
import type { Logger } from 'pino'

export const REACH_PROTOCOL = '/tensormesh/reach/1.0.0'

/** A node listens on a handful of TCP ports at most (one per interface or family). */
export const MAX_REACH_PORTS = 4

/** A dial back that takes longer than this counts as a failure: a NAT that drops SYNs never answers. */
export const REACH_DIAL_TIMEOUT_MS = 5000

/** The whole exchange, dial backs included. */
export const REACH_TIMEOUT_MS = REACH_DIAL_TIMEOUT_MS * MAX_REACH_PORTS + 5000

/** Probes served at once (each may hold a dial for REACH_DIAL_TIMEOUT_MS); more wait or are refused by libp2p. */
export const MAX_INBOUND_REACH_STREAMS = 4

export interface ReachRequest {
  ports: number[]
}

export interface ReachAnswer {
  /** The port the dial back reached, 0 when none did. */
  port: number
  /** The address the peer dialed, for the log. */
  dialed: string
}

export const ReachRequestCodec = messageCodec<ReachRequest>('ReachRequest', {
  ports: { no: 1, kind: 'uint32', repeated: true, maxCount: MAX_REACH_PORTS }
}, 64)

export const ReachAnswerCodec = messageCodec<ReachAnswer>('ReachAnswer', {
  port: { no: 1, kind: 'uint32' },
  dialed: { no: 2, kind: 'string', maxBytes: 128 }
}, 256)

/** Opens a fresh connection to `addr` (which names the peer), closes it, and says whether it worked. */
export type DialBack = (addr: Multiaddr, signal: AbortSignal) => Promise<boolean>

/** A dial back on a libp2p node: a new connection even though one exists, authenticated as the asking peer. */
export function libp2pDialBack (libp2p: Libp2p): DialBack {
  return async (addr, signal) => {
    try {
      const conn = await libp2p.dial(addr, { signal, force: true })
      await conn.close().catch(() => {})
      return true
    } catch {
      return false
    }
  }
}

/** Serves one probe: dials the asker back at its connection's IP address and each port it names. */
export async function handleReachStream (stream: Stream, connection: Pick<Connection, 'remoteAddr' | 'remotePeer' | 'limits'>, dialBack: DialBack, log: Logger): Promise<void> {
  const lp = lpStream(stream, { maxDataLength: 64 })
  const signal = AbortSignal.timeout(REACH_TIMEOUT_MS)
  try {
    const req = ReachRequestCodec.decode((await lp.read({ signal })).subarray())
    const host = hostOf(connection.remoteAddr)
    // Through a relay there is no address of the asker's own to try.
    if (host === undefined || connection.limits !== undefined || isRelayed(connection.remoteAddr)) throw new ProtocolError('reach probe over a relayed connection', 'ERR_REACH_RELAYED')
    let port = 0
    let dialed = ''
    for (const p of req.ports) {
      if (p === 0 || p > 65535) throw new ProtocolError(`reach probe names port ${p}`, 'ERR_BAD_PORT')
      const addr = multiaddr(`/${host.includes(':') ? 'ip6' : 'ip4'}/${host}/tcp/${p}/p2p/${connection.remotePeer.toString()}`)
      dialed = addr.toString()
      if (await dialBack(addr, AbortSignal.any([signal, AbortSignal.timeout(REACH_DIAL_TIMEOUT_MS)]))) {
        port = p
        break
      }
    }
    await lp.write(ReachAnswerCodec.encode({ port, dialed }), { signal })
    await stream.close({ signal })
  } catch (err) {
    log.debug({ peer: connection.remotePeer.toString(), err: errorMessage(err) }, 'reach probe dropped')
    stream.abort(err instanceof Error ? err : new Error(String(err)))
  }
}

export async function registerReachHandler (libp2p: Libp2p, log: Logger, dialBack: DialBack = libp2pDialBack(libp2p)): Promise<void> {
  await libp2p.handle(REACH_PROTOCOL, async (stream: Stream, connection: Connection) => {
    await handleReachStream(stream, connection, dialBack, log)
  }, { maxInboundStreams: MAX_INBOUND_REACH_STREAMS })
}

/** Asks the peer on `connection` to dial us back at these ports; true when one worked. */
export async function askReach (connection: Connection, ports: number[], signal?: AbortSignal): Promise<ReachAnswer> {
  const sig = signal === undefined ? AbortSignal.timeout(REACH_TIMEOUT_MS) : AbortSignal.any([signal, AbortSignal.timeout(REACH_TIMEOUT_MS)])
  const stream = await connection.newStream(REACH_PROTOCOL, { signal: sig })
  try {
    const lp = lpStream(stream, { maxDataLength: 256 })
    await lp.write(ReachRequestCodec.encode({ ports: ports.slice(0, MAX_REACH_PORTS) }), { signal: sig })
    const answer = ReachAnswerCodec.decode((await lp.read({ signal: sig })).subarray())
    await stream.close({ signal: sig }).catch(() => {})
    if (answer.port !== 0 && !ports.includes(answer.port)) throw new ProtocolError(`reach answer names port ${answer.port}, which we did not ask about`, 'ERR_BAD_PORT')
    return answer
  } catch (err) {
    stream.abort(err instanceof Error ? err : new Error(String(err)))
    throw err
  }
}

