import { isRelayed } from './bulk/index.ts'
import type { Connection, Libp2p, PeerId } from '@libp2p/interface'

/**
 * A connection to `peer`, direct where there is one: a node behind NAT may
 * be reachable both through a relay and over a connection it dialed itself,
 * and the direct one carries the bulk channel and no relay's traffic.
 */
export async function directConnection (libp2p: Libp2p, peer: PeerId, signal: AbortSignal): Promise<Connection> {
  const open = libp2p.getConnections(peer).filter(c => c.status === 'open')
  const direct = open.find(c => c.limits === undefined && !isRelayed(c.remoteAddr))
  return direct ?? open[0] ?? await libp2p.dial(peer, { signal })
}
