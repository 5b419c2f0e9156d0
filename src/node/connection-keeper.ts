/**
 * Which connections a node keeps. Dialling every peer one hears of makes
 * every node a neighbour of every other: fine at a dozen nodes, 10,000
 * connections each at 10,000 (js-libp2p prunes past 300). A node instead
 * keeps:
 *
 *  - `min` connections it dialed itself: gossipsub's mesh takes its D (6,
 *    up to D_hi 12) from the connected topic peers, and the rest are a random
 *    set for reach. Each node dials `min`, so a node's degree is about 2 x min
 *    (its own plus as many dialed by others).
 *  - the peers of jobs it runs or serves: any connection with a tensormesh
 *    stream open, or one that closed less than `idleMs` ago. Jobs dial the
 *    peers they need on demand (bids, shards, blobs) and these connections
 *    do not count against the bounds.
 *  - its bootstrap peers.
 *
 * Outside jobs, connections it dialed beyond `min` close once idle for
 * `idleMs` (the peers of a finished job), and past `max` it closes inbound
 * ones too, newest first, never a gossip mesh peer or a bootstrap peer. It
 * picks its own set among peers its neighbours named (hello's hints) before
 * directory peers, so random sets spread over the mesh. A
 * mesh of `min` + 1 nodes or fewer keeps every connection: as before.
 */
import { peerIdFromString } from '@libp2p/peer-id'
import { InvalidInputError, errorMessage } from '../errors.ts'
import type { PeerDirectory } from './peer-directory.ts'
import type { Logger } from './log.ts'
import type { Libp2p } from '@libp2p/interface'

export interface ConnectionBounds {
  /** Connections this node dials and keeps outside jobs. */
  min: number
  /** Connections outside jobs past which it closes inbound ones too. */
  max: number
  /** How long a connection stays after its last job stream closed. */
  idleMs: number
}

/**
 * min 16: gossipsub's D_hi (12) with room for 4 random peers. max 64: each
 * node dials 16 and is dialed by about as many, so 64 leaves a node chosen by
 * four times its share before it refuses anyone (the scale goal's bound).
 * idleMs 30 s: a coordinator that runs jobs back to back keeps its peers.
 */
export const DEFAULT_CONNECTION_BOUNDS: ConnectionBounds = { min: 16, max: 64, idleMs: 30_000 }

/** Ranges the flags accept. */
export const CONNECTION_BOUNDS_LIMITS = {
  min: { lo: 1, hi: 1000 },
  max: { lo: 2, hi: 10_000 },
  idleMs: { lo: 1000, hi: 24 * 3600_000 }
} as const

/** Protocols whose open streams are not job traffic: the control plane of every connection. */
export const CONTROL_PROTOCOL_PREFIXES = ['/meshsub/', '/ipfs/id/', '/ipfs/ping/', '/tensormesh/hello/', '/libp2p/circuit/', '/libp2p/autonat/', '/tensormesh/reach/']

export function checkConnectionBounds (b: Partial<ConnectionBounds>): ConnectionBounds {
  const out = { ...DEFAULT_CONNECTION_BOUNDS, ...b }
  for (const key of ['min', 'max', 'idleMs'] as const) {
    const { lo, hi } = CONNECTION_BOUNDS_LIMITS[key]
    const v = out[key]
    if (!Number.isInteger(v) || v < lo || v > hi) throw new InvalidInputError(`connections: ${key} ${String(v)} is outside ${lo}..${hi}`, 'ERR_BAD_CONNECTION_BOUNDS')
  }
  if (out.max < out.min) throw new InvalidInputError(`connections: max ${out.max} is below min ${out.min}`, 'ERR_BAD_CONNECTION_BOUNDS')
  return out
}

/** One connected peer, as the planner sees it. */
export interface PeerConnections {
  peer: string
  /** This node dialed (one of) its connections. */
  outbound: boolean
  /** The peer dialed (one of) its connections: it keeps it, whatever this node dialed besides. */
  inbound: boolean
  /** In the keeper's own set: the keeper (or bootstrap) dialed it to keep it. */
  own: boolean
  /** A job stream is open on it now. */
  busy: boolean
  /** When its last job stream was seen open (performance.now()); undefined: never. */
  lastJobUseAt?: number
  /** When this node first saw it connected. */
  since: number
  /** In gossipsub's mesh for the capacity topic. */
  mesh: boolean
  /** A bootstrap peer. */
  pinned: boolean
}

export interface ConnectionPlan {
  close: string[]
  /** How many more peers to dial. */
  dial: number
  /** Peers connected outside jobs once `close` is done. */
  outsideJobs: number
}

/** Whether a peer's connection belongs to a job now: a job stream is open, or closed less than idleMs ago. */
export function inJob (c: PeerConnections, now: number, idleMs: number): boolean {
  return c.busy || (c.lastJobUseAt !== undefined && now - c.lastJobUseAt < idleMs)
}

/**
 * Younger than idleMs: counted, but not closed. A job dials, then opens its
 * stream, and the keeper must not close the connection between the two.
 */
function fresh (c: PeerConnections, now: number, idleMs: number): boolean {
  return now - c.since < idleMs
}

/** What to close and how many to dial; pure, so the simulator and tests run the node's own rules. */
export function planConnections (conns: PeerConnections[], bounds: ConnectionBounds, now: number): ConnectionPlan {
  const outside = conns.filter(c => !inJob(c, now, bounds.idleMs))
  // Keep first: bootstrap, then gossip mesh peers, then the longest connected (a stable random set).
  const rank = (a: PeerConnections, b: PeerConnections): number =>
    Number(b.pinned) - Number(a.pinned) || Number(b.mesh) - Number(a.mesh) || a.since - b.since
  const own = outside.filter(c => c.own || c.pinned).sort(rank)
  const others = outside.filter(c => !(c.own || c.pinned))
  const closable = (c: PeerConnections): boolean => !c.pinned && !fresh(c, now, bounds.idleMs)
  const close = new Set<string>()
  // Beyond the keeper's own set, and connections a job dialed that are idle now: a finished job's peers.
  own.slice(bounds.min).filter(c => closable(c) && !c.mesh).forEach(c => close.add(c.peer))
  others.filter(c => c.outbound && !c.inbound && c.lastJobUseAt !== undefined && closable(c) && !c.mesh).forEach(c => close.add(c.peer))
  let count = outside.length - close.size
  // Past max, the newest inbound go first, then any of the own set that is neither mesh nor bootstrap.
  const inbound = others.filter(c => !c.outbound).sort(rank)
  // A fresh inbound one may go too: it is another node's dial, and that node dials elsewhere.
  for (const c of [...inbound].reverse()) {
    if (count <= bounds.max) break
    if (c.pinned || c.mesh || close.has(c.peer)) continue
    close.add(c.peer)
    count--
  }
  for (const c of [...own].reverse()) {
    if (count <= bounds.max) break
    if (!closable(c) || close.has(c.peer)) continue
    close.add(c.peer)
    count--
  }
  const kept = own.filter(c => !close.has(c.peer)).length
  const dial = count >= bounds.max ? 0 : Math.max(0, Math.min(bounds.min - kept, bounds.max - count))
  return { close: [...close], dial, outsideJobs: count }
}

/** Peers remembered from offers (mDNS, the peer store); a few dozen cover any LAN. */
const MAX_OFFERED = 256

export interface ConnectionKeeperInit {
  libp2p: Libp2p
  directory: PeerDirectory
  bounds: ConnectionBounds
  log: Logger
  /** Bootstrap peer ids. */
  pinned: () => Set<string>
  /** Gossipsub's mesh peers on the capacity topic. */
  meshPeers: () => Set<string>
  /** Dials a peer by id (the node's dial rules: bans, direct before relayed); settles when the dial has. */
  dial: (peer: string) => Promise<void>
  /** How often to look (ms). */
  intervalMs: number
  random?: () => number
}

export interface ConnectionInfo {
  min: number
  max: number
  idleMs: number
  /** Peers connected now, and those of them outside jobs. */
  peers: number
  outsideJobs: number
  dialed: number
  closed: number
}

/** Runs planConnections over the node's live connections. */
export class ConnectionKeeper {
  private readonly i: ConnectionKeeperInit
  private readonly random: () => number
  private readonly lastJobUse = new Map<string, number>()
  private readonly since = new Map<string, number>()
  /** Dials in flight: counted as connections, or every look before they land would dial again. */
  private readonly pending = new Set<string>()
  /** Peers the keeper dialed to keep (its own set), while connected. */
  private readonly own = new Set<string>()
  /** Peers found outside the directory (offer), candidates for the own set. */
  private readonly offered = new Set<string>()
  private timer?: NodeJS.Timeout
  private soon?: NodeJS.Timeout
  private dialed = 0
  private closed = 0
  private outsideJobs = 0

  constructor (init: ConnectionKeeperInit) {
    this.i = init
    this.random = init.random ?? Math.random
  }

  start (): void {
    this.timer = setInterval(() => { this.tick() }, this.i.intervalMs)
    this.timer.unref()
    this.i.libp2p.addEventListener('connection:close', this.onChange)
    this.i.directory.addEventListener('peer:join', this.onChange)
  }

  stop (): void {
    clearInterval(this.timer)
    clearTimeout(this.soon)
    this.i.libp2p.removeEventListener('connection:close', this.onChange)
    this.i.directory.removeEventListener('peer:join', this.onChange)
  }

  /** A connection closed or a peer appeared: look again shortly (coalesced). */
  private readonly onChange = (): void => {
    if (this.soon !== undefined) return
    this.soon = setTimeout(() => {
      this.soon = undefined
      this.tick()
    }, 50)
    this.soon.unref()
  }

  /**
   * A peer found by other means than an advert (mDNS, a peer store update):
   * dialed into the own set only while the set is short, as a directory
   * peer would be.
   */
  offer (peer: string): void {
    this.offered.delete(peer)
    this.offered.add(peer)
    // A bounded memory of them: the newest are the likeliest still there.
    if (this.offered.size > MAX_OFFERED) this.offered.delete(this.offered.values().next().value as string)
    this.onChange()
  }

  private dialOwn (peer: string): void {
    this.dialed++
    this.pending.add(peer)
    this.i.dial(peer).then(() => {
      if (this.i.libp2p.getConnections(peerIdFromString(peer)).length > 0) this.own.add(peer)
    }, () => {}).finally(() => { this.pending.delete(peer) })
  }

  info (): ConnectionInfo {
    const { min, max, idleMs } = this.i.bounds
    return { min, max, idleMs, peers: this.i.libp2p.getPeers().length, outsideJobs: this.outsideJobs, dialed: this.dialed, closed: this.closed }
  }

  /** One look: close what the plan says, dial what it wants. Public for tests. */
  tick (): ConnectionPlan {
    const now = performance.now()
    const pinned = this.i.pinned()
    const mesh = this.i.meshPeers()
    const views = new Map<string, PeerConnections>()
    for (const conn of this.i.libp2p.getConnections()) {
      if (conn.status !== 'open') continue
      const peer = conn.remotePeer.toString()
      const busy = conn.streams.some(s => s.protocol !== undefined && s.protocol.startsWith('/tensormesh/') && !CONTROL_PROTOCOL_PREFIXES.some(p => s.protocol?.startsWith(p) === true))
      if (busy) this.lastJobUse.set(peer, now)
      if (!this.since.has(peer)) this.since.set(peer, now)
      const v = views.get(peer)
      if (v === undefined) {
        views.set(peer, { peer, outbound: conn.direction === 'outbound', inbound: conn.direction === 'inbound', own: this.own.has(peer), busy, lastJobUseAt: this.lastJobUse.get(peer), since: this.since.get(peer) ?? now, mesh: mesh.has(peer), pinned: pinned.has(peer) })
      } else {
        v.outbound ||= conn.direction === 'outbound'
        v.inbound ||= conn.direction === 'inbound'
        v.busy ||= busy
      }
    }
    for (const peer of this.since.keys()) if (!views.has(peer)) { this.since.delete(peer); this.lastJobUse.delete(peer); this.own.delete(peer) }
    const plan = planConnections([...views.values()], this.i.bounds, now)
    this.outsideJobs = plan.outsideJobs
    for (const peer of plan.close) {
      this.closed++
      this.own.delete(peer)
      this.i.libp2p.hangUp(peerIdFromString(peer)).catch((err: unknown) => { this.i.log.debug({ peer, err: errorMessage(err) }, 'hang up failed') })
    }
    const wanted = plan.dial - this.pending.size
    if (wanted > 0) {
      // Hinted peers first: in the sampled regime every directory holds the same recent
      // publishers, and dialing only those would pile the whole mesh's random sets onto them.
      const open = (p: string): boolean => !views.has(p) && !this.pending.has(p)
      const hinted = sample([...this.offered].filter(open), wanted, this.random)
      const listed = sample(this.i.directory.list().map(e => e.capacity.peerId).filter(p => open(p) && !this.offered.has(p)), wanted, this.random)
      for (const peer of [...hinted, ...listed].slice(0, wanted)) this.dialOwn(peer)
    }
    return plan
  }
}

/** Up to k distinct items drawn uniformly (a partial Fisher-Yates). */
export function sample<T> (items: T[], k: number, random: () => number): T[] {
  const a = [...items]
  const n = Math.min(k, a.length)
  for (let i = 0; i < n; i++) {
    const j = i + Math.floor(random() * (a.length - i))
    const t = a[i] as T
    a[i] = a[j] as T
    a[j] = t
  }
  return a.slice(0, n)
}
