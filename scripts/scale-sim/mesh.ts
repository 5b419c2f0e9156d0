/**
 * The simulated mesh: nodes, the connections between them, gossip and
 * churn. What decides is the node's own code, run per node:
 *
 *  - CapacityService (src/protocol/capacity): its ticks, regime, estimate,
 *    publish decisions, hello admission and advert validation, over a
 *    stand-in pubsub that hands every advert to every live node's topic
 *    validator (gossipsub delivers each advert to the whole topic);
 *  - PeerDirectory (src/node/peer-directory.ts) with the node's expiry rules
 *    (entryExpiryMs, alive while connected), swept at each node's tick;
 *  - ConnectionKeeper (src/node/connection-keeper.ts) over a stand-in
 *    libp2p that lists the node's connections and their open streams: its
 *    own timer every interval, and 50 ms after a connection closes or a new
 *    peer enters the directory, with planConnections deciding.
 *
 * What is modelled: the wire (latency, bandwidth), gossipsub's mesh (D,
 * D_lo, D_hi) and its IHAVE gossip, machines (speed, slots), and churn.
 */
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { GOSSIP_FACTOR } from '../../src/protocol/capacity/sampling.ts'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { TopicValidatorResult } from '@libp2p/gossipsub'
import { multiaddr } from '@multiformats/multiaddr'
import { CAPACITY_TOPIC, CapacityService, EXPIRY_INTERVALS, entryExpiryMs } from '../../src/protocol/capacity/index.ts'
import { FULL_DIRECTORY_MAX, publishProbability } from '../../src/protocol/capacity/sampling.ts'
import { validateAdvert } from '../../src/protocol/capacity/validate.ts'
import { PeerDirectory } from '../../src/node/peer-directory.ts'
import { ConnectionKeeper, sample } from '../../src/node/connection-keeper.ts'
import { MAX_HELLO_HINTS } from '../../src/protocol/hello/index.ts'
import { silentLogger } from '../../src/node/log.ts'
import { TensormeshError } from '../../src/errors.ts'
import { prng } from '../../src/compute/random.ts'
import { expGap, lognormal, pairLatencyMs } from './model.ts'
import type { VirtualClock, VirtualTimeout } from './clock.ts'
import type { Calibration, ModelParams } from './model.ts'
import type { ConnectionBounds, ConnectionPlan } from '../../src/node/connection-keeper.ts'
import type { LocalCapacity } from '../../src/protocol/capacity/index.ts'
import type { PeerDirectoryInit } from '../../src/node/peer-directory.ts'
import type { PeerCapacity } from '../../src/protocol/capacity/validate.ts'
import type { GossipSub, Message } from '@libp2p/gossipsub'
import type { Libp2p, PeerId, PrivateKey } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'
import type { Logger } from 'pino'

/** What a node advertises it runs: the build's operator names (they size the advert). */
const OPERATOR_NAMES = ['matmul', 'map', 'reduce', 'mlp-grad', 'mlp-eval', 'sort', 'topk', 'histogram', 'infer', 'model-train']

export type LeaveKind = 'crash' | 'gone'

/** What ConnectionKeeper reads of a libp2p connection. */
interface FakeConnection {
  status: 'open' | 'closed'
  remotePeer: PeerId
  direction: 'inbound' | 'outbound'
  streams: Array<{ protocol: string }>
}

/** One connection; both ends share it. `a` dialed. */
export interface Link {
  a: SimNode
  b: SimNode
  since: number
  /** In gossipsub's mesh for the capacity topic (symmetric: GRAFT adds both ends). */
  mesh: boolean
  open: boolean
  /** Job streams open on it (both ends see the same ones). */
  streams: Array<{ protocol: string }>
  /** Job streams to fail when the connection goes. */
  failures: Set<(err: Error) => void>
  /** Each end's view of it. */
  atA: FakeConnection
  atB: FakeConnection
}

/** A task on a node's executor pool: `slots` at once, the rest wait in order. */
export interface Task {
  flops: number
  state: 'queued' | 'running' | 'done' | 'cancelled'
  timer?: VirtualTimeout
  done: (computeMs: number) => void
}

export class Executor {
  busy = 0
  private readonly waiting: Task[] = []
  private readonly clock: VirtualClock
  private readonly slots: number
  private readonly speedGflops: number
  private readonly jitter: () => number
  private readonly onChange: () => void

  constructor (clock: VirtualClock, slots: number, speedGflops: number, jitter: () => number, onChange: () => void) {
    this.clock = clock
    this.slots = slots
    this.speedGflops = speedGflops
    this.jitter = jitter
    this.onChange = onChange
  }

  get queued (): number {
    return this.waiting.length
  }

  submit (flops: number, done: (computeMs: number) => void): Task {
    const task: Task = { flops, state: 'queued', done }
    if (this.busy < this.slots) this.begin(task)
    else this.waiting.push(task)
    this.onChange()
    return task
  }

  cancel (task: Task): void {
    if (task.state === 'queued') {
      const k = this.waiting.indexOf(task)
      if (k >= 0) this.waiting.splice(k, 1)
    } else if (task.state === 'running') {
      this.clock.clear(task.timer)
      this.busy--
      this.next()
    } else {
      return
    }
    task.state = 'cancelled'
    this.onChange()
  }

  /** The node is gone: nothing it ran finishes. */
  killAll (): void {
    for (const t of this.waiting) t.state = 'cancelled'
    this.waiting.length = 0
    this.busy = 0
  }

  private begin (task: Task): void {
    task.state = 'running'
    this.busy++
    // One slot runs at the node's rate over its slots: the pool's GFLOPS are all workers at once.
    const ms = task.flops / (this.speedGflops * 1e9 / this.slots) * 1000 * this.jitter()
    task.timer = this.clock.setTimeout(() => {
      if (task.state !== 'running') return
      task.state = 'done'
      this.busy--
      this.next()
      this.onChange()
      task.done(ms)
    }, ms)
  }

  private next (): void {
    while (this.busy < this.slots) {
      const t = this.waiting.shift()
      if (t === undefined) return
      this.begin(t)
    }
  }
}

interface FakePubsub {
  topicValidators: Map<string, (from: PeerId, msg: Message) => TopicValidatorResult | Promise<TopicValidatorResult>>
  onSubscription?: (evt: CustomEvent<{ subscriptions: Array<{ topic: string, subscribe: boolean }> }>) => void
}

export interface SimNode {
  index: number
  id: string
  peerId: PeerId
  alive: boolean
  joinedAt: number
  diedAt?: number
  leave?: LeaveKind
  /** Advertised GFLOPS (the pool's calibration) and the real speed. */
  gflops: number
  speed: number
  slots: number
  bytesPerSecond: number
  addr: Multiaddr
  /** Bootstrap peers (pinned; re-dialed every interval while not connected, as MeshNode.repairConnectivity does). */
  bootstrap: string[]
  directory: PeerDirectory
  capacity: CapacityService
  pubsub: FakePubsub
  links: Map<string, Link>
  exec: Executor
  upFreeAt: number
  downFreeAt: number
  keeper: ConnectionKeeper
  /** This end's view of each of its connections, in opening order (what libp2p.getConnections lists). */
  conns: FakeConnection[]
  /** Its gossip mesh peers (kept as the mesh changes, read by the keeper). */
  meshPeers: Set<string>
  /** Bumped when one of its connections opens, closes, joins the gossip mesh or opens or closes a job stream. */
  linkVersion: number
  /** What the keeper's last look did, and until when the same look would do nothing again. */
  lastLook?: { version: number, idle: boolean, until: number, plan: ConnectionPlan }
  /** libp2p's connection:close listeners (the keeper's). */
  closeListeners: Set<(evt: Event) => void>
  ticker?: VirtualTimeout
  starter?: VirtualTimeout
  /** Shards admitted per remote coordinator (JobManager's share per coordinator), and in all. */
  serving: Map<string, number>
  remoteInflight: number
  liveAt: number
  onDeath: Set<() => void>
}

/** A directory whose gossiped entries share one object per advert (one process holds 10,000 directories). */
class SimDirectory extends PeerDirectory {
  private readonly intern: (c: PeerCapacity) => PeerCapacity

  constructor (init: PeerDirectoryInit, intern: (c: PeerCapacity) => PeerCapacity) {
    super(init)
    this.intern = intern
  }

  override upsert (capacity: PeerCapacity): void {
    super.upsert(this.intern(capacity))
  }
}

/** Counters over a measuring window. */
export class MeshStats {
  startedAt = 0
  endedAt = 0
  nodeMs = 0
  connMs = 0
  publishes = 0
  deliveries = 0
  accepted = 0
  hellos = 0
  ihaveIds = 0
  bidRequests = 0
  bidAnswers = 0
  dials = 0
  failedDials = 0
  closedByKeeper = 0
  leaves = 0
  joins = 0
  outside: number[] = []
  total: number[] = []
  estimateRatioSum = 0
  estimateSamples = 0
  estimateWithin30 = 0
  estimateSum = 0
  sampledTicks = 0
  directorySum = 0
  meshDegreeSum = 0
  ticks = 0
}

export interface MeshOptions {
  n: number
  seed: number
  model: ModelParams
  calibration: Calibration
  bounds: ConnectionBounds
  /** warm: the mesh as if it had long been N nodes; cold: nodes start one by one, as the real bench starts them. */
  start: 'warm' | 'cold'
  /** Cold start: each node bootstraps to up to this many random earlier nodes (the real bench: 3). */
  coldBootstraps: number
  coldGapMs: number
  churn: boolean
  /** Simulated time the run may last, to size the pool of keys for joiners. */
  horizonMs: number
}

export class Mesh {
  readonly clock: VirtualClock
  readonly o: MeshOptions
  readonly random: () => number
  readonly nodes = new Map<string, SimNode>()
  readonly live: SimNode[] = []
  readonly log: Logger = silentLogger()
  stats = new MeshStats()
  measuring = false
  private readonly keys: PrivateKey[]
  private nextKey = 0
  private nextIndex = 0
  private lastAt = 0
  private linkCount = 0
  private readonly publishTimes: number[] = []
  private publishHead = 0
  private delivering?: string
  private canonical?: PeerCapacity
  private churnTimers: VirtualTimeout[] = []
  /** Every advert published, for the report: bytes as encoded. */
  encodedAdvertBytes = 0

  private constructor (clock: VirtualClock, o: MeshOptions, keys: PrivateKey[]) {
    this.clock = clock
    this.o = o
    this.keys = keys
    this.random = prng(o.seed)
  }

  /** Keys first (async, real crypto), for the nodes and every joiner the horizon may need. */
  static async create (clock: VirtualClock, o: MeshOptions): Promise<Mesh> {
    const joins = o.churn ? o.model.churnPerMinute * o.n * o.horizonMs / 60_000 : 0
    const count = o.n + Math.ceil(joins + 6 * Math.sqrt(joins) + 20)
    const keys: PrivateKey[] = []
    const seed = new Uint8Array(32)
    for (let i = 0; i < count; i++) {
      new DataView(seed.buffer).setUint32(0, o.seed >>> 0)
      new DataView(seed.buffer).setUint32(4, i)
      keys.push(await generateKeyPairFromSeed('Ed25519', seed))
    }
    return new Mesh(clock, o, keys)
  }

  get now (): number {
    return this.clock.now
  }

  get interval (): number {
    return this.o.model.advertIntervalMs
  }

  /** Builds the starting mesh; the clock must be installed (services read it as they are made). */
  build (): void {
    if (this.o.start === 'warm') this.warmStart()
    else this.coldStart()
    if (this.o.churn && this.o.model.churnPerMinute > 0) this.startChurn()
  }

  beginMeasure (): void {
    this.advance()
    this.stats = new MeshStats()
    this.stats.startedAt = this.now
    this.measuring = true
  }

  endMeasure (): MeshStats {
    this.advance()
    this.measuring = false
    this.stats.endedAt = this.now
    return this.stats
  }

  stop (): void {
    for (const t of this.churnTimers) this.clock.clear(t)
    for (const node of [...this.live]) {
      node.capacity.stop()
      node.keeper.stop()
      this.clock.clear(node.ticker)
      this.clock.clear(node.starter)
    }
  }

  latency (a: SimNode, b: SimNode): number {
    return pairLatencyMs(a.index, b.index, this.o.seed, this.o.model)
  }

  /** Delay until `bytes` from `from` have reached `to`: each end's link serialises its transfers. */
  transfer (from: SimNode, to: SimNode, bytes: number): number {
    const now = this.now
    const start = Math.max(now, from.upFreeAt, to.downFreeAt)
    from.upFreeAt = start + bytes / from.bytesPerSecond * 1000
    to.downFreeAt = start + bytes / to.bytesPerSecond * 1000
    return start - now + bytes / Math.min(from.bytesPerSecond, to.bytesPerSecond) * 1000 + this.latency(from, to)
  }

  randomLive (): SimNode {
    const node = this.live[Math.floor(this.random() * this.live.length)]
    if (node === undefined) throw new Error('no live node')
    return node
  }

  // --- nodes ---------------------------------------------------------------

  private makeNode (bootstrap: string[]): SimNode {
    const key = this.keys[this.nextKey++]
    if (key === undefined) throw new Error('scale-sim: out of pre-generated keys (raise horizonMs)')
    const m = this.o.model
    const index = this.nextIndex++
    const peerId = peerIdFromPrivateKey(key)
    const r = this.random
    const gflops = m.speedPattern !== undefined
      ? m.gflopsMedian * (m.speedPattern[index % m.speedPattern.length] ?? 1)
      : Math.min(m.gflopsMax, Math.max(m.gflopsMin, lognormal(m.gflopsMedian, m.gflopsSigma, r)))
    const slots = m.slotChoices[Math.floor(r() * m.slotChoices.length)] ?? 1
    let u = r()
    let bits = m.bandwidth[m.bandwidth.length - 1]?.bitsPerSecond ?? 1e8
    for (const b of m.bandwidth) { if (u < b.share) { bits = b.bitsPerSecond; break } u -= b.share }
    const speed = m.speedNoiseSigma > 0 ? gflops * lognormal(1, m.speedNoiseSigma, r) : gflops
    const id = peerId.toString()
    const pubsub: FakePubsub = { topicValidators: new Map() }
    const node = {
      index, id, peerId, alive: true, joinedAt: this.now, gflops, speed, slots,
      bytesPerSecond: bits / 8,
      addr: multiaddr(`/ip4/10.${(index >> 16) & 255}.${(index >> 8) & 255}.${index & 255}/tcp/4001`),
      bootstrap,
      pubsub,
      links: new Map<string, Link>(),
      upFreeAt: 0,
      downFreeAt: 0,
      closeListeners: new Set<(evt: Event) => void>(),
      conns: [],
      meshPeers: new Set<string>(),
      linkVersion: 0,
      serving: new Map<string, number>(),
      remoteInflight: 0,
      liveAt: -1,
      onDeath: new Set<() => void>()
    } as unknown as SimNode
    const intervalMs = this.interval
    node.directory = new SimDirectory({
      expiryMs: intervalMs * EXPIRY_INTERVALS,
      // As MeshNode sets it up: a sampled advert lives a sample window, and past it while connected.
      expiryOf: (c) => entryExpiryMs(c, intervalMs, EXPIRY_INTERVALS),
      alive: (peer) => node.links.has(peer)
    }, (c) => this.intern(c))
    // MeshNode wires the pool's 'change' to the capacity service (loadChanged where it has one).
    const loadChanged = (): void => {
      const cap = node.capacity as CapacityService & { loadChanged?: () => void }
      if (typeof cap.loadChanged === 'function') cap.loadChanged()
      else cap.changed()
    }
    node.exec = new Executor(this.clock, slots, speed, () => m.taskJitterSigma > 0 ? lognormal(1, m.taskJitterSigma, r) : 1, loadChanged)
    const stand = {
      topicValidators: pubsub.topicValidators,
      subscribe: () => {},
      unsubscribe: () => {},
      addEventListener: (type: string, fn: FakePubsub['onSubscription']) => { if (type === 'subscription-change') pubsub.onSubscription = fn },
      removeEventListener: (type: string) => { if (type === 'subscription-change') pubsub.onSubscription = undefined },
      // floodPublish: the author sends to every connected topic peer; gossip carries it on to the rest.
      publish: async (_topic: string, data: Uint8Array) => {
        this.deliver(node, data)
        return { recipients: [...node.links.values()].map(l => (l.a === node ? l.b : l.a).peerId) }
      }
    }
    node.capacity = new CapacityService(
      { peerId, pubsub: stand as unknown as GossipSub, directory: node.directory, log: this.log },
      { intervalMs, local: () => this.local(node), random: r }
    )
    const view = (l: Link): FakeConnection => l.a === node ? l.atA : l.atB
    const libp2p = {
      peerId,
      getConnections: (peer?: PeerId): FakeConnection[] => {
        if (peer === undefined) return node.conns
        const l = node.links.get(peer.toString())
        return l === undefined ? [] : [view(l)]
      },
      getPeers: (): PeerId[] => [...node.links.values()].map(l => (l.a === node ? l.b : l.a).peerId),
      hangUp: async (peer: PeerId): Promise<void> => {
        const l = node.links.get(peer.toString())
        if (l !== undefined) {
          if (this.measuring) this.stats.closedByKeeper++
          this.closeLink(l, 'keeper')
        }
      },
      addEventListener: (type: string, fn: (evt: Event) => void) => { if (type === 'connection:close') node.closeListeners.add(fn) },
      removeEventListener: (type: string, fn: (evt: Event) => void) => { if (type === 'connection:close') node.closeListeners.delete(fn) }
    }
    node.keeper = new ConnectionKeeper({
      libp2p: libp2p as unknown as Libp2p,
      directory: node.directory,
      bounds: this.o.bounds,
      log: this.log,
      intervalMs,
      pinned: () => new Set(node.bootstrap),
      meshPeers: () => node.meshPeers,
      dial: async (peer) => { await this.keeperDial(node, peer) },
      random: r
    })
    // At 10,000 nodes every advert is a new peer to nearly every directory, and the keeper looks at each
    // (50 ms later): a look that provably does nothing (keeperWouldIdle) returns the last plan instead.
    // Its timers are the keeper's own, so when it looks is unchanged.
    const look = node.keeper.tick.bind(node.keeper)
    node.keeper.tick = () => {
      const last = node.lastLook
      if (last !== undefined && this.keeperWouldIdle(node)) return last.plan
      const plan = look()
      this.recordLook(node, plan)
      return plan
    }
    this.nodes.set(id, node)
    node.liveAt = this.live.length
    this.advance()
    this.live.push(node)
    return node
  }

  private local (node: SimNode): LocalCapacity {
    return {
      backend: 'wasm',
      cores: node.slots,
      memTotalBytes: 16e9,
      memFreeBytes: 8e9,
      gflops: node.gflops,
      slots: node.slots,
      busy: node.exec.busy,
      queued: node.exec.queued,
      operators: OPERATOR_NAMES,
      addrs: [node.addr],
      bulkPort: 4002
    }
  }

  /**
   * Starts a node's services at `delay` (its interval's phase): the
   * capacity service and the keeper, as MeshNode.start does, and this
   * simulator's tick (directory sweep, bootstrap redial, gossip mesh,
   * counters). `look`: the keeper looks at once (the warm start, whose
   * directories are already full).
   */
  private startNode (node: SimNode, delay: number, look = false): void {
    const go = (): void => {
      node.starter = undefined
      if (!node.alive) return
      node.capacity.start()
      node.keeper.start()
      if (look) node.keeper.tick()
      node.ticker = this.clock.setInterval(() => { this.nodeTick(node) }, this.interval)
    }
    if (delay <= 0) go()
    else node.starter = this.clock.setTimeout(go, delay)
  }

  /**
   * The mesh as if it had long been N nodes: every node's counters say
   * sampled with p = rate x T / N (so its adverts and hellos say N), and its
   * directory holds what a sample window brings, FULL_DIRECTORY_MAX random
   * peers' adverts. Each keeper then dials its `min` from there, and the
   * hellos on those connections give every node its priors.
   */
  private warmStart (): void {
    const n = this.o.n
    const r = this.random
    for (let i = 0; i < n; i++) this.makeNode([])
    const p = publishProbability('sampled', n, this.interval)
    for (const node of this.live) {
      node.capacity.counters.regime = 'sampled'
      node.capacity.counters.publishProbability = p
    }
    const adverts = this.live.map(node => {
      const verdict = validateAdvert(node.capacity.encodeAdvert(), { from: node.peerId, now: Date.now() })
      if (!verdict.ok) throw new Error(`warm start: own advert rejected (${verdict.reason})`)
      return verdict.capacity
    })
    for (const node of this.live) {
      const k = Math.min(FULL_DIRECTORY_MAX, n - 1)
      for (let got = 0, tries = 0; got < k && tries < 4 * k; tries++) {
        const c = adverts[Math.floor(r() * n)]
        if (c === undefined || c.peerId === node.id || node.directory.has(c.peerId)) continue
        node.directory.upsert(c)
        got++
      }
    }
    for (const node of this.live) this.startNode(node, r() * this.interval, true)
  }

  /** The real bench's start: nodes one after another, each bootstrapped to up to three random earlier ones. */
  private coldStart (): void {
    const n = this.o.n
    for (let i = 0; i < n; i++) {
      this.clock.setTimeout(() => {
        const earlier = sample(this.live, this.o.coldBootstraps, this.random).map(m => m.id)
        const node = this.makeNode(earlier)
        this.startNode(node, 0)
        for (const b of earlier) this.dial(node, b)
      }, i * this.o.coldGapMs)
    }
  }

  private startChurn (): void {
    const perMs = this.o.model.churnPerMinute * this.o.n / 60_000
    const leave = (): void => {
      if (this.live.length > 1) {
        const victim = this.randomLive()
        this.kill(victim, this.random() < this.o.model.crashShare ? 'crash' : 'gone')
      }
      this.churnTimers[0] = this.clock.setTimeout(leave, expGap(perMs, this.random))
    }
    const join = (): void => {
      this.join()
      this.churnTimers[1] = this.clock.setTimeout(join, expGap(perMs, this.random))
    }
    this.churnTimers = [this.clock.setTimeout(leave, expGap(perMs, this.random)), this.clock.setTimeout(join, expGap(perMs, this.random))]
  }

  /** A newcomer: a fresh identity that dials one random live node as its bootstrap. */
  join (): SimNode {
    const boot = this.randomLive()
    const node = this.makeNode([boot.id])
    if (this.measuring) this.stats.joins++
    this.startNode(node, 0)
    this.dial(node, boot.id)
    return node
  }

  /** The node leaves without goodbye; each peer notices when its connection's failure shows. */
  kill (node: SimNode, kind: LeaveKind): void {
    if (!node.alive) return
    this.advance()
    node.alive = false
    node.diedAt = this.now
    node.leave = kind
    if (this.measuring) this.stats.leaves++
    const last = this.live.pop()
    if (last !== undefined && last !== node) {
      this.live[node.liveAt] = last
      last.liveAt = node.liveAt
    }
    node.capacity.stop()
    node.keeper.stop()
    this.clock.clear(node.ticker)
    this.clock.clear(node.starter)
    node.exec.killAll()
    for (const cb of [...node.onDeath]) cb()
    const [lo, hi] = this.o.model.hostGoneDetectMs
    for (const link of node.links.values()) {
      const other = link.a === node ? link.b : link.a
      const delay = kind === 'crash' ? this.latency(node, other) : lo + this.random() * (hi - lo)
      this.clock.setTimeout(() => { this.closeLink(link, 'peer gone') }, delay)
    }
  }

  // --- connections -----------------------------------------------------------

  /** Dials `to` (by id) unless connected; undefined when it is not there. */
  dial (from: SimNode, to: string): Link | undefined {
    const existing = from.links.get(to)
    if (existing !== undefined) return existing
    if (this.measuring) this.stats.dials++
    const peer = this.nodes.get(to)
    if (peer === undefined || !peer.alive || peer === from) {
      if (this.measuring) this.stats.failedDials++
      return undefined
    }
    return this.openLink(from, peer)
  }

  /** The keeper's dial: settles once connected, or once a dial to a peer that is gone has failed. */
  private async keeperDial (from: SimNode, to: string): Promise<void> {
    if (this.dial(from, to) !== undefined) return
    const peer = this.nodes.get(to)
    const ms = peer === undefined ? 0 : peer.leave === 'crash' ? 2 * this.latency(from, peer) : this.o.model.dialTimeoutMs
    await this.clock.sleep(ms)
  }

  private openLink (a: SimNode, b: SimNode): Link {
    this.advance()
    const streams: Array<{ protocol: string }> = []
    const link: Link = {
      a, b, since: this.now, mesh: false, open: true, streams, failures: new Set(),
      atA: { status: 'open', remotePeer: b.peerId, direction: 'outbound', streams },
      atB: { status: 'open', remotePeer: a.peerId, direction: 'inbound', streams }
    }
    a.links.set(b.id, link)
    b.links.set(a.id, link)
    a.conns.push(link.atA)
    b.conns.push(link.atB)
    this.changed(link)
    this.linkCount++
    this.hello(a, b)
    return link
  }

  /** A job stream on a connection (what the keeper sees as job use); returns its close. */
  openStream (link: Link, protocol: string, onFail?: (err: Error) => void): () => void {
    const s = { protocol }
    link.streams.push(s)
    this.changed(link)
    if (onFail !== undefined) link.failures.add(onFail)
    return () => {
      const k = link.streams.indexOf(s)
      if (k >= 0) link.streams.splice(k, 1)
      this.changed(link)
        if (onFail !== undefined) link.failures.delete(onFail)
    }
  }

  private changed (link: Link): void {
    link.a.linkVersion++
    link.b.linkVersion++
  }

  /**
   * After a keeper's look: whether it did nothing (no close, no dial), and
   * until when a look over the same connections would do nothing again. Its
   * plan depends only on the connections (version), whether a job stream is
   * open on one, and two times per peer that the keeper keeps: when it first
   * saw the connection (fresh for idleMs) and when it last saw a job stream
   * on it (in a job for idleMs). Those are read from the keeper itself; if
   * they cannot be, every look runs.
   */
  private recordLook (node: SimNode, plan: ConnectionPlan): void {
    const now = this.now
    const idleMs = this.o.bounds.idleMs
    const k = node.keeper as unknown as { since?: unknown, lastJobUse?: unknown }
    let until = Infinity
    if (!(k.since instanceof Map) || !(k.lastJobUse instanceof Map)) {
      until = now
    } else {
      const since = k.since as Map<string, number>
      const lastJobUse = k.lastJobUse as Map<string, number>
      for (const [peer, l] of node.links) {
        const seen = since.get(peer)
        if (seen === undefined || l.streams.length > 0) { until = now; break }
        if (seen + idleMs > now) until = Math.min(until, seen + idleMs)
        const used = lastJobUse.get(peer)
        if (used !== undefined && used + idleMs > now) until = Math.min(until, used + idleMs)
      }
    }
    node.lastLook = { version: node.linkVersion, idle: plan.dial === 0 && plan.close.length === 0, until, plan }
  }

  /** Whether a look now would provably do what the last one did: nothing. */
  private keeperWouldIdle (node: SimNode): boolean {
    const last = node.lastLook
    return last !== undefined && last.idle && last.version === node.linkVersion && this.now < last.until
  }

  /**
   * The hello protocol (the dialer's advert, then the listener's answer,
   * each through admitDirect), then gossipsub's subscription exchange.
   */
  private hello (dialer: SimNode, listener: SimNode): void {
    listener.capacity.admitDirect(dialer.peerId, dialer.capacity.encodeAdvert())
    dialer.capacity.admitDirect(listener.peerId, listener.capacity.encodeAdvert())
    if (this.measuring) this.stats.hellos += 2
    // Each side names up to MAX_HELLO_HINTS of its other peers; the keeper dials those before directory peers.
    for (const [from, to] of [[listener, dialer], [dialer, listener]] as const) {
      for (const id of sample([...from.links.keys()].filter(id => id !== to.id), MAX_HELLO_HINTS, this.random)) to.keeper.offer(id)
    }
    const evt = new CustomEvent('subscription-change', { detail: { subscriptions: [{ topic: CAPACITY_TOPIC, subscribe: true }] } })
    dialer.pubsub.onSubscription?.(evt)
    listener.pubsub.onSubscription?.(evt)
  }

  closeLink (link: Link, reason: string): void {
    if (!link.open) return
    this.advance()
    link.open = false
    link.a.links.delete(link.b.id)
    link.b.links.delete(link.a.id)
    link.a.conns.splice(link.a.conns.indexOf(link.atA), 1)
    link.b.conns.splice(link.b.conns.indexOf(link.atB), 1)
    this.setMesh(link, false)
    this.changed(link)
    this.linkCount--
    link.atA.status = 'closed'
    link.atB.status = 'closed'
    if (link.failures.size > 0) {
      const err = new TensormeshError('ERR_PEER_GONE', `connection closed (${reason})`)
      for (const fail of [...link.failures]) fail(err)
    }
    for (const [side, conn] of [[link.a, link.atA], [link.b, link.atB]] as const) {
      if (!side.alive) continue
      for (const fn of [...side.closeListeners]) fn(new CustomEvent('connection:close', { detail: conn }))
    }
  }

  private setMesh (l: Link, on: boolean): void {
    if (l.mesh !== on) this.changed(l)
    l.mesh = on
    if (on) { l.a.meshPeers.add(l.b.id); l.b.meshPeers.add(l.a.id) } else { l.a.meshPeers.delete(l.b.id); l.b.meshPeers.delete(l.a.id) }
  }

  /** Gossipsub's heartbeat for the topic mesh: graft up to D below D_lo, prune to D above D_hi. */
  private gossipMesh (node: SimNode): number {
    const m = this.o.model
    let degree = 0
    for (const l of node.links.values()) if (l.mesh) degree++
    if (degree < m.meshDlo) {
      const free = [...node.links.values()].filter(l => !l.mesh)
      for (const l of sample(free, m.meshD - degree, this.random)) { this.setMesh(l, true); degree++ }
    } else if (degree > m.meshDhi) {
      const inMesh = [...node.links.values()].filter(l => l.mesh)
      for (const l of sample(inMesh, degree - m.meshD, this.random)) { this.setMesh(l, false); degree-- }
    }
    return degree
  }

  private nodeTick (node: SimNode): void {
    if (!node.alive) return
    node.directory.sweep()
    // MeshNode.repairConnectivity: a bootstrap peer we are not connected to is dialed again.
    for (const b of node.bootstrap) if (!node.links.has(b)) this.dial(node, b)
    const degree = this.gossipMesh(node)
    if (!this.measuring) return
    const s = this.stats
    bump(s.outside, node.keeper.info().outsideJobs)
    bump(s.total, node.links.size)
    const c = this.o.calibration
    // IHAVE: each heartbeat, the ids of the last few heartbeats' messages to max(D_lazy, 0.25 x non-mesh) non-mesh peers.
    const nonMesh = node.links.size - degree
    const targets = Math.min(nonMesh, Math.max(c.ihavePeers, Math.floor(GOSSIP_FACTOR * nonMesh)))
    s.ihaveIds += (this.interval / c.heartbeatMs) * targets * this.recentPublishes(c.ihaveHeartbeats * c.heartbeatMs)
    const est = node.capacity.counters.meshEstimate
    s.estimateSum += est
    s.estimateSamples++
    const ratio = est / Math.max(this.live.length, 1)
    s.estimateRatioSum += ratio
    if (Math.abs(ratio - 1) <= 0.3) s.estimateWithin30++
    if (node.capacity.counters.regime === 'sampled') s.sampledTicks++
    s.directorySum += node.directory.size
    s.meshDegreeSum += degree
    s.ticks++
  }

  // --- gossip ----------------------------------------------------------------

  /** Gossipsub delivers an advert to every subscribed node; each runs its topic validator on it. */
  private deliver (author: SimNode, data: Uint8Array): void {
    if (!author.alive) return
    this.encodedAdvertBytes = data.byteLength
    this.publishTimes.push(this.now)
    const msg = { type: 'signed', from: author.peerId, topic: CAPACITY_TOPIC, data, sequenceNumber: 0n, signature: new Uint8Array(0), key: new Uint8Array(0) } as unknown as Message
    this.delivering = author.id
    this.canonical = undefined
    let delivered = 0
    let accepted = 0
    for (const node of this.live) {
      if (node === author || node.links.size === 0) continue
      const validate = node.pubsub.topicValidators.get(CAPACITY_TOPIC)
      if (validate === undefined) continue
      delivered++
      if (validate(author.peerId, msg) === TopicValidatorResult.Accept) accepted++
    }
    this.delivering = undefined
    this.canonical = undefined
    if (this.measuring) {
      this.stats.publishes++
      this.stats.deliveries += delivered
      this.stats.accepted += accepted
    }
  }

  private intern (c: PeerCapacity): PeerCapacity {
    if (this.delivering !== c.peerId) return c
    if (this.canonical === undefined || this.canonical.seq !== c.seq) this.canonical = c
    return this.canonical
  }

  private recentPublishes (windowMs: number): number {
    const from = this.now - windowMs
    while (this.publishHead < this.publishTimes.length && (this.publishTimes[this.publishHead] ?? 0) < from) this.publishHead++
    if (this.publishHead > 4096) {
      this.publishTimes.splice(0, this.publishHead)
      this.publishHead = 0
    }
    return this.publishTimes.length - this.publishHead
  }

  // --- accounting ------------------------------------------------------------

  /** Integrates node-time and connection-time up to now (call before any change to either). */
  advance (): void {
    const now = this.now
    if (this.measuring && now > this.lastAt) {
      const dt = now - this.lastAt
      this.stats.nodeMs += this.live.length * dt
      this.stats.connMs += 2 * this.linkCount * dt
    }
    this.lastAt = now
  }
}

function bump (hist: number[], v: number): void {
  while (hist.length <= v) hist.push(0)
  hist[v] = (hist[v] ?? 0) + 1
}

/** Mean, p99 and max of a histogram of small integers. */
export function histStats (hist: number[]): { mean: number, p99: number, max: number, samples: number } {
  let n = 0
  let sum = 0
  let max = 0
  hist.forEach((c, v) => { n += c; sum += c * v; if (c > 0) max = v })
  let acc = 0
  let p99 = 0
  for (let v = 0; v < hist.length; v++) {
    acc += hist[v] ?? 0
    if (acc >= 0.99 * n) { p99 = v; break }
  }
  return { mean: n > 0 ? sum / n : 0, p99, max, samples: n }
}
