/**
 * Whether peers can dial this node, and a relay when they cannot.
 *
 * A node asks a few peers it is connected to to dial it back
 * (/tensormesh/reach/1.0.0). One success makes it `public`; failures and no
 * success make it `private` (behind NAT or a firewall). A private node
 * reserves a slot on a relay of the mesh (circuit relay v2, served by every
 * reachable node) and advertises the relayed address, so that other private
 * nodes can reach it. Everything that can go direct still does: a private
 * node dials every reachable peer itself, and shards and bulk bytes prefer
 * that connection (see src/protocol/connections.ts and bulkRoute).
 *
 * It is a libp2p service because taking a relay means listening on a
 * `/p2p-circuit` address after start, which only the transport manager can do.
 */
import { multiaddr } from '@multiformats/multiaddr'
import { errorMessage } from '../errors.ts'
import { isRelayed } from '../protocol/bulk/index.ts'
import { REACH_PROTOCOL, askReach } from '../protocol/reach/index.ts'
import type { ConnectionManager, TransportManager } from '@libp2p/interface-internal'
import type { Connection, Libp2pEvents, PeerStore, Startable, TypedEventTarget, IdentifyResult } from '@libp2p/interface'
import type { Logger } from './log.ts'

/** js-libp2p's circuit relay v2 hop protocol: a peer that speaks it can relay for us. */
export const RELAY_HOP_PROTOCOL = '/libp2p/circuit/relay/0.2.0/hop'

/** Answers kept, from distinct peers: three agree well enough, and the cost stays flat as the mesh grows. */
export const REACH_PROBE_PEERS = 3

/** An answer is trusted this long; then that peer (or another) is asked again. */
export const REACH_REPROBE_MS = 10 * 60_000

/** Retry after a refused or failed reservation: doubling from the first to the last. */
export const RELAY_RETRY_MIN_MS = 1000
export const RELAY_RETRY_MAX_MS = 60_000

export type Reachability = 'unknown' | 'public' | 'private'

export interface ReachabilityComponents {
  transportManager: TransportManager
  connectionManager: ConnectionManager
  peerStore: PeerStore
  events: TypedEventTarget<Libp2pEvents>
}

export interface ReachabilityInit {
  log: Logger
  /** Take a relay when private (default true). */
  useRelays?: boolean
}

export interface ReachabilityInfo {
  reachability: Reachability
  /** The relay this node holds a reservation on, and its relayed addresses; null when none. */
  relay: { peer: string, addrs: string[] } | null
  /** Reservation attempts that failed (refused, or the relay went away). */
  relayFailures: number
}

interface Answer { ok: boolean, at: number }

export class ReachabilityService implements Startable {
  private readonly c: ReachabilityComponents
  private readonly log: Logger
  private readonly useRelays: boolean
  private readonly answers = new Map<string, Answer>()
  private readonly asking = new Set<string>()
  private started = false
  private relayPeer?: string
  private relayTimer?: NodeJS.Timeout
  private relayBusy = false
  private retryMs = RELAY_RETRY_MIN_MS
  relayFailures = 0
  /** Called when the verdict or the relay changes (the node re-advertises). */
  onChange: () => void = () => {}

  constructor (components: ReachabilityComponents, init: ReachabilityInit) {
    this.c = components
    this.log = init.log
    this.useRelays = init.useRelays !== false
  }

  readonly [Symbol.toStringTag] = 'tensormesh/reachability'

  start (): void {
    this.started = true
    this.c.events.addEventListener('peer:identify', this.onIdentify)
    this.c.events.addEventListener('connection:close', this.onClose)
  }

  /** libp2p closes connections after this: losing the relay then is no news. */
  beforeStop (): void {
    this.started = false
  }

  stop (): void {
    this.started = false
    clearTimeout(this.relayTimer)
    this.c.events.removeEventListener('peer:identify', this.onIdentify)
    this.c.events.removeEventListener('connection:close', this.onClose)
  }

  get reachability (): Reachability {
    // A node that listens on no address of its own (dial-only) is private by construction.
    if (this.started && this.directPorts().length === 0) return 'private'
    const now = Date.now()
    const fresh = [...this.answers.values()].filter(a => now - a.at < REACH_REPROBE_MS)
    if (fresh.some(a => a.ok)) return 'public'
    if (fresh.length > 0) return 'private'
    return 'unknown'
  }

  info (): ReachabilityInfo {
    const addrs = this.relayPeer === undefined ? [] : this.c.transportManager.getAddrs().filter(a => isRelayed(a) && a.toString().includes(this.relayPeer ?? '')).map(a => a.toString())
    return { reachability: this.reachability, relay: this.relayPeer !== undefined && addrs.length > 0 ? { peer: this.relayPeer, addrs } : null, relayFailures: this.relayFailures }
  }

  private readonly onIdentify = (evt: CustomEvent<IdentifyResult>): void => {
    const { connection, protocols } = evt.detail
    if (protocols.includes(REACH_PROTOCOL)) this.maybeAsk(connection)
    if (protocols.includes(RELAY_HOP_PROTOCOL)) this.maybeRelay()
  }

  private readonly onClose = (evt: CustomEvent<Connection>): void => {
    if (!this.started || this.relayPeer === undefined || evt.detail.remotePeer.toString() !== this.relayPeer) return
    if (this.c.connectionManager.getConnections(evt.detail.remotePeer).length > 0) return
    this.log.warn({ relay: this.relayPeer }, 'lost the relay connection; looking for another')
    this.relayPeer = undefined
    this.onChange()
    this.maybeRelay()
  }

  /** The TCP ports we listen on directly (not through a relay). */
  private directPorts (): number[] {
    return [...new Set(this.c.transportManager.getAddrs()
      .filter(a => !isRelayed(a))
      .map(a => a.getComponents().find(c => c.name === 'tcp')?.value)
      .filter((p): p is string => p !== undefined)
      .map(Number))]
  }

  /** Asks the peer on `conn` to dial us back, unless enough fresh answers are in. */
  private maybeAsk (conn: Connection): void {
    const peer = conn.remotePeer.toString()
    const now = Date.now()
    if (!this.started || conn.limits !== undefined || isRelayed(conn.remoteAddr) || this.asking.has(peer)) return
    const fresh = [...this.answers.entries()].filter(([, a]) => now - a.at < REACH_REPROBE_MS)
    if (fresh.some(([p]) => p === peer) || fresh.length + this.asking.size >= REACH_PROBE_PEERS) return
    const ports = this.directPorts()
    if (ports.length === 0) return
    this.asking.add(peer)
    const before = this.reachability
    askReach(conn, ports).then(answer => {
      this.answers.set(peer, { ok: answer.port !== 0, at: Date.now() })
      this.log.debug({ peer, dialed: answer.dialed, ok: answer.port !== 0 }, 'reach probe answered')
    }, (err: unknown) => {
      this.log.debug({ peer, err: errorMessage(err) }, 'reach probe failed')
    }).finally(() => {
      this.asking.delete(peer)
      const after = this.reachability
      if (after !== before) {
        this.log.info({ reachability: after }, after === 'private' ? 'peers cannot dial this node: it is behind NAT or a firewall' : 'peers can dial this node')
        this.onChange()
      }
      if (after === 'private') this.maybeRelay()
    })
  }

  /** Takes a relay when private and without one; one attempt at a time, with backoff after failures. */
  private maybeRelay (): void {
    if (!this.started || !this.useRelays || this.relayPeer !== undefined || this.relayBusy || this.relayTimer !== undefined) return
    if (this.reachability !== 'private') return
    void this.reserve()
  }

  private async candidates (): Promise<Connection[]> {
    const out: Connection[] = []
    for (const conn of this.c.connectionManager.getConnections()) {
      if (conn.status !== 'open' || conn.limits !== undefined || isRelayed(conn.remoteAddr)) continue
      try {
        const peer = await this.c.peerStore.get(conn.remotePeer)
        if (peer.protocols.includes(RELAY_HOP_PROTOCOL) && !out.some(c => c.remotePeer.equals(conn.remotePeer))) out.push(conn)
      } catch {}
    }
    // Spread private nodes over the relays rather than all on the first one.
    return out.sort(() => Math.random() - 0.5)
  }

  private async reserve (): Promise<void> {
    this.relayBusy = true
    try {
      for (const conn of await this.candidates()) {
        if (!this.started) return
        const relay = conn.remotePeer.toString()
        const addr = multiaddr(`${conn.remoteAddr.decapsulateCode(421).toString()}/p2p/${relay}/p2p-circuit`)
        try {
          await this.c.transportManager.listen([addr])
          if (this.c.transportManager.getAddrs().some(a => isRelayed(a) && a.toString().includes(relay))) {
            this.relayPeer = relay
            this.retryMs = RELAY_RETRY_MIN_MS
            this.log.info({ relay }, 'reserved a slot on a relay; advertising the relayed address')
            this.onChange()
            return
          }
          throw new Error('the relay gave no address')
        } catch (err) {
          this.relayFailures++
          this.log.warn({ relay, err: errorMessage(err), retryInMs: this.retryMs }, 'relay refused a reservation')
        }
      }
    } finally {
      this.relayBusy = false
    }
    if (!this.started) return
    // Nobody took us (or nobody relays yet): try again later, less often each time.
    this.relayTimer = setTimeout(() => {
      this.relayTimer = undefined
      this.maybeRelay()
    }, this.retryMs)
    this.relayTimer.unref()
    this.retryMs = Math.min(this.retryMs * 2, RELAY_RETRY_MAX_MS)
  }
}

/** The libp2p service factory (`services: { reachability: reachability({ log }) }`). */
export function reachability (init: ReachabilityInit): (components: ReachabilityComponents) => ReachabilityService {
  return (components) => new ReachabilityService(components, init)
}
