import os from 'node:os'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { TypedEventEmitter } from '@libp2p/interface'
import { mdns } from '@libp2p/mdns'
import { peerIdFromMultihash, peerIdFromString } from '@libp2p/peer-id'
import * as Digest from 'multiformats/hashes/digest'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { preSharedKey } from '@libp2p/pnet'
import { circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { ExecutorPool } from '../compute/index.ts'
import { InvalidInputError, NotFoundError, errorMessage } from '../errors.ts'
import { decodeNpy } from '../compute/npy.ts'
import { registerBidHandler, BID_PROTOCOL } from '../protocol/bid/index.ts'
import { CAPACITY_TOPIC, CapacityService, EXPIRY_INTERVALS, GOSSIP_D, GOSSIP_D_HI, GOSSIP_D_LAZY, GOSSIP_D_LO, GOSSIP_FACTOR, capacityScoreParams, capacityScoreThresholds, entryExpiryMs } from '../protocol/capacity/index.ts'
import { MAX_HELLO_HINTS, registerHelloHandler, sayHello } from '../protocol/hello/index.ts'
import type { HelloInit, PeerHint } from '../protocol/hello/index.ts'
import { DEFAULT_WIRE_LIMITS } from '../protocol/limits.ts'
import { registerShardHandler, SHARD_PROTOCOL } from '../protocol/shard/index.ts'
import { AllReduce } from '../protocol/allreduce/index.ts'
import { registerSessionHandler, SHARD_SESSION_PROTOCOL, ShardSessions } from '../protocol/shard/session.ts'
import { JobManager } from './jobs/job-manager.ts'
import { JOURNAL_FILES, Journal } from './jobs/journal.ts'
import { StorageBudget } from './storage.ts'
import type { StorageInfo } from './storage.ts'
import type { SubmitRefs } from './jobs/job-manager.ts'
import { BlobStore, parseCid } from './blob-store.ts'
import { SharedCache } from './shared-content.ts'
import { BlobFetcher, BLOB_PROTOCOL, registerBlobHandler } from '../protocol/blob/index.ts'
import { BulkServer, isRelayed } from '../protocol/bulk/index.ts'
import { REACH_PROTOCOL, registerReachHandler } from '../protocol/reach/index.ts'
import { reachability } from './reachability.ts'
import type { ReachabilityInfo, ReachabilityService } from './reachability.ts'
import type { CircuitRelayService } from '@libp2p/circuit-relay-v2'
import type { Tensors } from '../compute/operators/types.ts'
import type { HostTensor } from '../compute/tensor.ts'
import type { InputRef } from './api/job-request.ts'
import type { IncomingShard, ShardTransport } from '../protocol/shard/index.ts'
import { ApiServer } from './api/server.ts'
import { loadOrCreateKey, prepareDataDir } from './keys.ts'
import { ReceiveBuffers } from '../protocol/receive-buffers.ts'
import { AccessGate, installPnetCipherFix, loadOrCreateApiToken } from './access/index.ts'
import type { RefusalReason } from './access/index.ts'
import { NodeMetrics } from './metrics.ts'
import { PeerLimits } from './access/peer-limits.ts'
import type { MisbehaviourInfo } from './access/peer-limits.ts'
import { silentLogger } from './log.ts'
import { PeerDirectory } from './peer-directory.ts'
import { ConnectionKeeper, checkConnectionBounds, sample } from './connection-keeper.ts'
import type { ConnectionBounds, ConnectionInfo } from './connection-keeper.ts'
import type { Job, JobSpec } from './jobs/job.ts'
import type { MeshNodeInit } from './options.ts'
import type { WireLimits } from '../protocol/limits.ts'
import type { LocalCapacity } from '../protocol/capacity/index.ts'
import type { PeerDirectoryEvents } from './peer-directory.ts'
import type { Logger } from './log.ts'
import type { GossipSub } from '@libp2p/gossipsub'
import type { Identify } from '@libp2p/identify'
import type { Libp2p, PeerId } from '@libp2p/interface'
import type { Ping } from '@libp2p/ping'
import type { Multiaddr } from '@multiformats/multiaddr'

export const DEFAULT_LISTEN = '/ip4/0.0.0.0/tcp/0'

/** How often libp2p checks a quiet connection with a ping (its default: 10 s). */
export const CONNECTION_PING_INTERVAL_MS = 60_000

/**
 * How often to re-dial bootstrap peers and advertised peers we are not
 * connected to. Once per advert interval: a new peer is dialled as soon as
 * its first advert arrives, this only repairs connections that dropped.
 */
const CONNECTIVITY_CHECK_INTERVALS = 1

/**
 * The first retry of a failed bootstrap dial; each next one waits twice as
 * long, until the connectivity check's interval takes over. A testnet starts
 * its nodes together, so the first one may not listen yet when the others dial.
 */
const BOOTSTRAP_RETRY_MS = 100

type Services = { pubsub: GossipSub, identify: Identify, ping: Ping, reachability: ReachabilityService, relay?: CircuitRelayService }

/**
 * Relay defaults. libp2p's own (128 KiB and 2 minutes per relayed
 * connection) suit a public relay that hands out free hole-punching help; a
 * relay of this mesh carries shards between nodes that are both behind NAT,
 * so by default it limits the number of reservations, not the bytes.
 */
export const DEFAULT_RELAY_RESERVATIONS = 32
/** A reservation lasts this long before its holder must refresh it (libp2p's default: 2 h). */
export const RELAY_RESERVATION_TTL_MS = 2 * 60 * 60_000

export interface NodeInfo {
  peerId: string
  multiaddrs: string[]
  api?: string
  version: string
  backend: string
  cores: number
  gflops: number
  slots: number
  busy: number
  queued: number
  memTotalBytes: number
  memFreeBytes: number
  gpu?: { name: string, memoryBytes?: number }
  operators: string[]
  uptimeMs: number
  peers: number
  /** Peers this node no longer asks for bids: their partials lost too many votes. */
  distrusted: string[]
  /** Shards this node is running for coordinators right now. */
  servingShards: number
  /** Bytes of shared inputs and models this node fetched from peers by CID. */
  blobBytesFetched: number
  /** The bulk channel (large tensors beside libp2p), or null when disabled. */
  bulk: { port: number, bytesServed: number, transfers: number, bytesPushed: number, bytesReceived: number } | null
  /** Small shards this node sent as coordinator on session streams, the sessions open now, and shards that fell back to a stream of their own; null when sessions are off. */
  shardSessions: { open: number, shards: number, fallbacks: number } | null
  /** Whether peers can dial this node ("private": behind NAT or a firewall), and the relay it holds a slot on. */
  reachability: ReachabilityInfo['reachability']
  relay: ReachabilityInfo['relay']
  /** Reservations this node asked for and did not get (refused, or the relay vanished); it retries with backoff. */
  relayFailures: number
  /** Transfer rates this node's jobs measured to each peer, bytes per second (the split and deadlines use them). */
  links: Record<string, number>
  /** This node as a relay for others: reservations held now and the limit; null when it relays for nobody. */
  relayServer: { reservations: number, maxReservations: number } | null
  adverts: CapacityService['counters']
  /** Connections kept outside jobs, and the bounds (connection-keeper.ts). */
  connections: ConnectionInfo | null
  /** Admission: whether the mesh is private (a swarm key), how many peers the allowlist holds (null: any with the key), connections refused by reason. */
  access: { private: boolean, allowlist: number | null, refused: Record<RefusalReason, number> }
  /** Per-peer limits: strikes for malformed frames and adverts, peers banned now, refusals. */
  misbehaving: MisbehaviourInfo
  /** The data directory's storage budget: bytes allowed, used, reserved by running jobs, evictable; the disk's free space. */
  storage: StorageInfo | null
}

export type MeshNodeEvents = PeerDirectoryEvents & {
  /** libp2p listens (its addresses are final); the workers may still be calibrating, so the node is not ready yet. */
  listening: CustomEvent<string[]>
}

export const VERSION = '0.1.0'

/**
 * One tensormesh daemon: a libp2p host, the capacity gossip, the peer
 * directory, an executor pool and the HTTP API. Every node is the same; the
 * node a job is submitted to coordinates that job.
 */
export class MeshNode extends TypedEventEmitter<MeshNodeEvents> {
  readonly log: Logger
  readonly directory: PeerDirectory
  readonly pool: ExecutorPool
  /** Prometheus metrics of this node (GET /metrics), in a registry of its own. */
  readonly metrics: NodeMetrics
  private readonly init: MeshNodeInit
  private libp2pNode?: Libp2p<Services>
  private capacity?: CapacityService
  private api?: ApiServer
  private startedAt = 0
  private connectivityTimer?: NodeJS.Timeout
  private bootstrapTimer?: NodeJS.Timeout
  /** Reused memory for large shard inputs this node serves (receive-buffers.ts). */
  readonly receiveBuffers = new ReceiveBuffers()
  private readonly bootstrap: Multiaddr[]
  private readonly listen: string[]
  private readonly intervalMs: number
  readonly limits: WireLimits
  private jobManager?: JobManager
  private journal?: Journal
  private blobs?: BlobStore
  private storage?: StorageBudget
  private fetcher?: BlobFetcher
  private bulk?: BulkServer
  private sessions?: ShardSessions
  private allreduce?: AllReduce
  private keeper?: ConnectionKeeper
  private readonly connectionBounds: ConnectionBounds
  private readonly gate: AccessGate
  /** Rate limits, strikes and bans per peer; `isBanned` is for the connection gater. */
  readonly peerLimits: PeerLimits
  private token?: { token: string, path: string }

  constructor (init: MeshNodeInit) {
    super()
    this.init = init
    this.log = init.logger ?? silentLogger()
    this.listen = (init.listen ?? [DEFAULT_LISTEN]).map(a => parseMultiaddr(a, '--listen').toString())
    this.bootstrap = (init.bootstrap ?? []).map(a => parseMultiaddr(a, '--bootstrap'))
    this.intervalMs = init.advertIntervalMs ?? 2000
    this.limits = { ...DEFAULT_WIRE_LIMITS, ...init.limits }
    this.gate = new AccessGate({ allow: init.allow, banned: (peer) => this.peerLimits.isBanned(peer) })
    this.connectionBounds = checkConnectionBounds(init.connections ?? {})
    this.directory = new PeerDirectory({
      expiryMs: this.intervalMs * EXPIRY_INTERVALS,
      // A sampled advert lives a sample window, and past it while its peer is connected (sampling.ts).
      expiryOf: (c) => entryExpiryMs(c, this.intervalMs, EXPIRY_INTERVALS),
      alive: (peer) => this.libp2pNode?.getConnections(peerIdFromString(peer)).some(c => c.status === 'open') === true
    })
    this.pool = init.pool ?? new ExecutorPool({ workers: init.workers, backend: init.backend ?? 'auto' })
    this.peerLimits = new PeerLimits({ log: this.log, rates: init.rateLimits })
    this.metrics = new NodeMetrics({ directory: this.directory, pool: this.pool, libp2p: () => this.libp2pNode, adverts: () => this.capacity?.counters, jobs: () => this.jobManager?.list() ?? [], misbehaving: () => this.peerLimits.info() })
    for (const type of ['peer:join', 'peer:update', 'peer:leave'] as const) {
      this.directory.addEventListener(type, (evt) => { this.safeDispatchEvent(type, { detail: evt.detail }) })
    }
  }

  get libp2p (): Libp2p<Services> {
    if (this.libp2pNode === undefined) throw new Error('node is not started')
    return this.libp2pNode
  }

  get peerId (): PeerId {
    return this.libp2p.peerId
  }

  get apiUrl (): string | undefined {
    return this.api?.url
  }

  /** The API's bearer token, when the API requires one. */
  get apiToken (): string | undefined {
    return this.token?.token
  }

  /** Where the API token is kept (DATA_DIR/api-token). */
  get apiTokenFile (): string | undefined {
    return this.token?.path
  }

  get capacityService (): CapacityService | undefined {
    return this.capacity
  }

  async start (): Promise<void> {
    this.startedAt = performance.now()
    try {
      await prepareDataDir(this.init.dataDir)
      const privateKey = await loadOrCreateKey(this.init.dataDir)
      this.storage = new StorageBudget({ dataDir: this.init.dataDir, maxBytes: this.init.maxStorageBytes, live: JOURNAL_FILES, log: this.log })
      await this.storage.start()
      // Workers load their backend and calibrate while libp2p starts: a node is usable about one
      // advert interval after start, not after the two one after the other.
      const poolReady = this.pool.start()
      poolReady.catch(() => {})
      // Before the first protected connection: pnet's cipher otherwise dies on a large message (pnet-cipher.ts).
      if (this.init.swarmKey !== undefined) installPnetCipherFix()
      const relay = this.init.relay ?? {}
      const relayReservations = relay === false ? 0 : relay.reservations ?? DEFAULT_RELAY_RESERVATIONS
      const relayLimited = relay !== false && ((relay.dataLimitBytes ?? 0) > 0 || (relay.durationLimitMs ?? 0) > 0)
      this.libp2pNode = await createLibp2p({
        privateKey,
        addresses: { listen: this.listen },
        // The relay transport dials /p2p-circuit addresses; a node listens on one only once it learns it is private.
        transports: [tcp(), circuitRelayTransport()],
        // With a swarm key, every connection is sealed under it before noise: outsiders never get a handshake.
        ...(this.init.swarmKey !== undefined ? { connectionProtector: preSharedKey({ psk: this.init.swarmKey }) } : {}),
        connectionGater: this.gate.gater(),
        // The keeper bounds connections outside jobs; libp2p's own cap only has to leave room for jobs above it.
        connectionManager: { maxConnections: Math.max(300, this.connectionBounds.max + 256) },
        // libp2p pings every connection every 10 s (a ping stream: ~600 B both ways with its
        // multistream negotiation); at 30 connections that alone was ~1.8 KB/s per node. A
        // crashed peer's connection closes at once anyway (its host resets it), a vanished
        // host's at the next ping or a job's first stream, and its advert expires.
        connectionMonitor: { pingInterval: CONNECTION_PING_INTERVAL_MS },
        connectionEncrypters: [noise()],
        streamMuxers: [yamux()],
        peerDiscovery: this.init.mdns === true ? [mdns()] : [],
        metrics: this.metrics.libp2pMetrics(),
        services: {
          identify: identify(),
          ping: ping(),
          reachability: reachability({ log: this.log, useRelays: relay !== false }),
          ...(relayReservations > 0
            ? {
                relay: circuitRelayServer({
                  reservations: {
                    maxReservations: relayReservations,
                    reservationTtl: RELAY_RESERVATION_TTL_MS,
                    applyDefaultLimit: relayLimited,
                    ...(relayLimited
                      ? {
                          // One of the two set: the other is as good as unlimited.
                          defaultDataLimit: BigInt((relay.dataLimitBytes ?? 0) > 0 ? relay.dataLimitBytes ?? 0 : Number.MAX_SAFE_INTEGER),
                          defaultDurationLimit: (relay.durationLimitMs ?? 0) > 0 ? relay.durationLimitMs : 2 ** 31 - 1
                        }
                      : {})
                  }
                })
              }
            : {}),
          pubsub: gossipsub({
            // A lone node still advertises; the first peer to connect gets the next one.
            allowPublishToZeroTopicPeers: true,
            // Adverts are small and few: send our own to every peer we know, not only mesh peers.
            floodPublish: true,
            // A thinner mesh than libp2p's default: adverts need little redundancy (sampling.ts).
            D: GOSSIP_D,
            Dlo: GOSSIP_D_LO,
            Dhi: GOSSIP_D_HI,
            Dlazy: GOSSIP_D_LAZY,
            gossipFactor: GOSSIP_FACTOR,
            // Rejected adverts cost their sender score, so a peer sending garbage is graylisted (loopback and the testnet range excepted from IP colocation).
            scoreParams: capacityScoreParams(),
            scoreThresholds: capacityScoreThresholds()
          })
        }
      }).catch((err: unknown) => { throw listenError(err, this.listen) })
      this.safeDispatchEvent('listening', { detail: this.multiaddrs() })

      // libp2p reports a peer as discovered for mDNS and whenever its peer store first hears of it
      // (the addresses in an advert): the keeper dials it only while its own set is short.
      this.libp2p.addEventListener('peer:discovery', (evt) => {
        if (evt.detail.multiaddrs.length > 0) this.libp2p.peerStore.merge(evt.detail.id, { multiaddrs: evt.detail.multiaddrs }).catch(() => {})
        this.keeper?.offer(evt.detail.id.toString())
      })
      this.directory.addEventListener('peer:join', (evt) => {
        this.learnAddrs(evt.detail.capacity.peerId, evt.detail.capacity.addrs)
      })
      this.libp2p.addEventListener('connection:open', (evt) => {
        // The dialer says hello; the listener answers. Both then know each other's capacity.
        const conn = evt.detail
        if (conn.direction !== 'outbound' || this.capacity === undefined) return
        const capacity = this.capacity
        sayHello(conn, this.helloInit(capacity))
          .catch((err: unknown) => { this.log.debug({ peer: conn.remotePeer.toString(), err: errorMessage(err) }, 'hello failed') })
      })
      this.directory.start()
      // Adverts carry the calibrated GFLOPS, and jobs need workers: both wait for the pool.
      await poolReady
      this.peerLimits.attach(this.libp2p, this.directory)
      this.metrics.start()
      this.capacity = new CapacityService(
        { peerId: this.libp2p.peerId, pubsub: this.libp2p.services.pubsub, directory: this.directory, log: this.log, guard: this.peerLimits },
        { intervalMs: this.intervalMs, local: () => this.localCapacity() }
      )
      this.pool.addEventListener('change', () => { this.capacity?.poolChanged({ slots: this.init.serve === false ? 0 : this.pool.slots, operators: this.pool.operators }) })
      const capacity = this.capacity
      await registerHelloHandler(this.libp2p, this.helloInit(capacity))
      // The GossipSub class has getMeshPeers; its exported interface does not say so.
      const pubsub = this.libp2p.services.pubsub as GossipSub & { getMeshPeers?: (topic: string) => string[] }
      this.keeper = new ConnectionKeeper({
        libp2p: this.libp2p,
        directory: this.directory,
        bounds: this.connectionBounds,
        log: this.log,
        intervalMs: this.intervalMs,
        pinned: () => new Set(this.bootstrap.map(a => a.getComponents().find(c => c.name === 'p2p')?.value).filter((p): p is string => p !== undefined)),
        meshPeers: () => new Set(pubsub.getMeshPeers?.(CAPACITY_TOPIC) ?? []),
        dial: async (peer) => { await this.dialQuietly(peerIdFromString(peer), []) }
      })
      if (this.init.journal !== false) {
        this.journal = new Journal(this.init.dataDir, this.storage)
        await this.journal.open()
      }
      this.blobs = new BlobStore(this.init.dataDir, this.storage)
      await this.blobs.start()
      if (this.init.bulk !== false) {
        // Same interface as libp2p: loopback for a local testnet, all interfaces otherwise.
        this.bulk = new BulkServer(this.listen.some(a => a.startsWith('/ip4/127.')) ? '127.0.0.1' : '0.0.0.0')
        await this.bulk.start()
      }
      this.fetcher = new BlobFetcher(this.libp2p, this.blobs, this.bulk)
      const shared = new SharedCache(this.fetcher, this.limits.maxTensorBytes)
      const bulkPortOf = (peer: string): number | undefined => this.directory.get(peer)?.capacity.bulkPort
      await registerBlobHandler(this.libp2p, this.blobs, this.log, this.bulk, this.peerLimits, bulkPortOf)
      await registerReachHandler(this.libp2p, this.log)
      this.libp2p.services.reachability.onChange = () => { this.capacity?.changed() }
      if (this.init.shardSessions !== false) this.sessions = new ShardSessions(this.libp2p, this.limits)
      this.jobManager = new JobManager(
        { libp2p: this.libp2p, directory: this.directory, pool: this.pool, log: this.log, blobs: this.blobs, bulk: this.bulk, bulkPortOf, sessions: this.sessions },
        { journal: this.journal, limits: this.limits, serve: this.init.serve !== false, shardsPerPeer: this.init.shardsPerPeer, hooks: this.init.hooks, faults: this.init.faults, observer: this.metrics, peers: this.peerLimits, storage: this.storage }
      )
      const jobs = this.jobManager
      await registerBidHandler(this.libp2p, (req, from) => jobs.bid(req, from.toString()), this.log, this.peerLimits)
      const execute = async (shard: IncomingShard, signal: AbortSignal): Promise<{ partial: Tensors, computeMs: number }> => await jobs.execute(shard, signal)
      const shardTransport: ShardTransport = {
        limits: this.limits,
        bulk: this.bulk,
        bulkPortOf,
        guard: this.peerLimits,
        admit: (from) => jobs.admitShard(from),
        receiveBuffers: this.receiveBuffers,
        resolve: async (refs, from) => {
          const tensors: Tensors = {}
          const blobs: Record<string, Uint8Array> = {}
          await Promise.all([
            ...refs.tensors.map(async r => { tensors[r.name] = await shared.tensor(r.cid, r.name, from) }),
            ...refs.blobs.map(async r => { blobs[r.name] = await shared.blob(r.cid, from) })
          ])
          return { tensors, blobs }
        }
      }
      await registerShardHandler(this.libp2p, execute, this.log, shardTransport)
      await registerSessionHandler(this.libp2p, execute, this.log, shardTransport)
      // Butterfly rounds: a member's task runs as a shard would (admission, pool, faults); this node's own membership skips admission.
      const selfId = this.libp2p.peerId.toString()
      this.allreduce = new AllReduce({
        libp2p: this.libp2p,
        log: this.log,
        guard: this.peerLimits,
        limits: this.limits,
        resolve: shardTransport.resolve as NonNullable<ShardTransport['resolve']>,
        execute: async (task, units, from, signal) => {
          const peer = from.toString()
          if (peer === selfId) return await this.pool.run(task, { signal, transfer: false })
          const release = jobs.admitShard(peer)
          try {
            return await jobs.execute({ jobId: 'allreduce', index: 0, attempt: 0, start: units.start, end: units.end, from, task }, signal)
          } finally {
            release()
          }
        }
      })
      await this.allreduce.start()
      this.jobManager.useAllReduce(this.allreduce)
      this.capacity.start()
      this.keeper.start()
      await this.jobManager.restore()
      // Only now is every journaled job back, so only now can the store tell which blobs nothing names.
      this.blobs.useReferences(() => jobs.blobsInUse())

      this.dialBootstrap(BOOTSTRAP_RETRY_MS)
      this.connectivityTimer = setInterval(() => { this.repairConnectivity() }, this.intervalMs * CONNECTIVITY_CHECK_INTERVALS)
      this.connectivityTimer.unref()

      if (this.init.api !== false) {
        if (this.init.apiAuth !== false) this.token = await loadOrCreateApiToken(this.init.dataDir)
        this.api = new ApiServer(this, this.init.api ?? { host: '127.0.0.1', port: 0 }, this.token?.token)
        await this.api.start()
      }
      this.log.info({ peerId: this.peerId.toString(), addrs: this.multiaddrs(), api: this.api?.url, backend: this.pool.backend, gflops: round(this.pool.gflops) }, 'node started')
    } catch (err) {
      await this.stop().catch(() => {})
      throw err
    }
  }

  /** Ordered shutdown: stop taking requests, stop advertising, close peers, then compute. */
  async stop (): Promise<void> {
    clearInterval(this.connectivityTimer)
    clearTimeout(this.bootstrapTimer)
    this.keeper?.stop()
    await this.api?.stop()
    this.jobManager?.stop()
    await this.allreduce?.stop()
    this.sessions?.stop()
    this.peerLimits.detach()
    this.metrics.stop()
    if (this.libp2pNode !== undefined) await this.libp2pNode.unhandle([BID_PROTOCOL, SHARD_PROTOCOL, SHARD_SESSION_PROTOCOL, BLOB_PROTOCOL, REACH_PROTOCOL]).catch(() => {})
    this.capacity?.stop()
    this.directory.stop()
    await this.libp2pNode?.stop()
    await this.bulk?.stop()
    await this.pool.stop()
    this.journal?.close()
  }

  get jobs (): JobManager {
    if (this.jobManager === undefined) throw new Error('node is not started')
    return this.jobManager
  }

  /**
   * Submits a job that this node coordinates. Throws InvalidInputError at once
   * (nothing started) when the spec is wrong; otherwise returns the job, whose
   * `result()` resolves with the output and which emits progress events.
   */
  submit (spec: JobSpec, refs?: SubmitRefs): Job {
    return this.jobs.submit(spec, refs)
  }

  /**
   * Throws StorageFullError when `bytes` more (a job's inputs, a blob)
   * could not fit even after evicting unreferenced blobs: the API's answer
   * before it reads a large body. A node without a journal stores no job
   * inputs, so only blobs are checked there.
   */
  checkStorage (bytes: number, what: 'job' | 'blob'): void {
    if (what === 'job' && this.journal === undefined) return
    this.storage?.check(bytes, what === 'job' ? `a job of ${bytes} bytes` : `a blob of ${bytes} bytes`)
  }

  /**
   * A blob by CID: from this node's store, else (when `ask` is true) from
   * whichever connected peer has it, checked against the hash.
   */
  async resolveBlob (cid: string, ask = true): Promise<Uint8Array> {
    parseCid(cid)
    const store = this.blobs
    if (store === undefined || this.fetcher === undefined) throw new Error('node is not started')
    const local = await store.get(cid)
    if (local !== undefined) return local
    if (!ask) throw new NotFoundError(`no blob ${cid} on this node`, 'ERR_BLOB_NOT_FOUND')
    const peers = this.libp2p.getConnections().map(c => c.remotePeer)
    return await this.fetcher.get(cid, peers)
  }

  /**
   * A job input named by reference (a pipeline): `{job}` is a job of this
   * node's that succeeded, its result used as is (it never went back to a
   * client); `{cid}` a stored .npy, from this node's store or a peer's.
   */
  async resolveInput (name: string, ref: InputRef): Promise<HostTensor> {
    if ('job' in ref) {
      const job = this.jobManager?.list().find(j => j.id === ref.job)
      if (job === undefined) throw new NotFoundError(`input ${name}: no job ${ref.job.slice(0, 64)} on this node (a pipeline's steps run on one node)`, 'ERR_JOB_NOT_FOUND')
      if (job.state !== 'succeeded') throw new InvalidInputError(`input ${name}: job ${job.id} is ${job.state}; an input names a job that has succeeded`, 'ERR_INPUT_NOT_READY')
      if (job.op === 'train') throw new InvalidInputError(`input ${name}: job ${job.id} trained a model; its result is a model, not a tensor (GET /v1/jobs/${job.id}/model)`, 'ERR_BAD_SPEC')
      return await job.result()
    }
    let bytes: Uint8Array
    try {
      bytes = await this.resolveBlob(ref.cid)
    } catch (err) {
      if (err instanceof InvalidInputError) throw new InvalidInputError(`input ${name}: ${err.message}`, err.code, { cause: err })
      throw new NotFoundError(`input ${name}: blob ${ref.cid.slice(0, 128)} is on neither this node nor a peer that would give it: ${errorMessage(err)}`, 'ERR_BLOB_NOT_FOUND')
    }
    return decodeNpy(bytes, name, { maxTensorBytes: this.limits.maxTensorBytes })
  }

  /** Keeps bytes in this node's blob store (on disk) and returns their CID. */
  async storeBlob (bytes: Uint8Array): Promise<string> {
    if (this.blobs === undefined) throw new Error('node is not started')
    return await this.blobs.put(bytes)
  }

  multiaddrs (): string[] {
    if (this.libp2pNode === undefined) return []
    return this.libp2p.getMultiaddrs().map(a => a.toString())
  }

  info (): NodeInfo {
    const c = this.localCapacity()
    return {
      peerId: this.peerId.toString(),
      multiaddrs: this.multiaddrs(),
      api: this.api?.url,
      version: VERSION,
      backend: c.backend,
      cores: c.cores,
      gflops: c.gflops,
      slots: c.slots,
      busy: c.busy,
      queued: c.queued,
      memTotalBytes: c.memTotalBytes,
      memFreeBytes: c.memFreeBytes,
      gpu: c.gpu,
      operators: c.operators,
      uptimeMs: Math.round(performance.now() - this.startedAt),
      peers: this.directory.size,
      distrusted: this.jobManager?.distrusted() ?? [],
      blobBytesFetched: this.fetcher?.fetchedBytes ?? 0,
      bulk: this.bulk === undefined ? null : { port: this.bulk.port, bytesServed: this.bulk.bytesServed, transfers: this.bulk.transfers, bytesPushed: this.bulk.bytesPushed, bytesReceived: this.bulk.bytesReceived },
      shardSessions: this.sessions?.stats() ?? null,
      ...this.reachabilityInfo(),
      links: this.jobManager?.links.snapshot() ?? {},
      servingShards: this.jobManager?.servingShards ?? 0,
      adverts: this.capacity?.counters ?? { published: 0, accepted: 0, rejected: { oversized: 0, garbage: 0, spoofed: 0, version: 0, invalid: 0, clock: 0, replayed: 0 }, lastAdvertBytes: 0, skipped: 0, direct: 0, regime: 'full', meshEstimate: 1, publishProbability: 1 },
      connections: this.keeper?.info() ?? null,
      access: { private: this.init.swarmKey !== undefined, allowlist: this.init.allow?.length ?? null, refused: { ...this.gate.refused } },
      misbehaving: this.peerLimits.info(),
      storage: this.storage?.info() ?? null
    }
  }

  localCapacity (): LocalCapacity {
    const c: LocalCapacity = {
      backend: this.pool.backend,
      cores: os.availableParallelism(),
      memTotalBytes: os.totalmem(),
      memFreeBytes: Math.min(os.freemem(), os.totalmem()),
      gflops: this.pool.gflops,
      slots: this.init.serve === false ? 0 : this.pool.slots,
      busy: this.pool.busy,
      queued: this.pool.queued,
      operators: this.pool.operators,
      addrs: this.advertisedAddrs(),
      bulkPort: this.bulk?.port ?? 0
    }
    if (this.pool.gpu !== undefined) c.gpu = this.pool.gpu
    return c
  }

  /** Reachability, our relay, and what we relay for others. */
  private reachabilityInfo (): Pick<NodeInfo, 'reachability' | 'relay' | 'relayFailures' | 'relayServer'> {
    const r = this.libp2pNode?.services.reachability.info()
    const server = this.libp2pNode?.services.relay
    const relay = this.init.relay ?? {}
    return {
      reachability: r?.reachability ?? 'unknown',
      relay: r?.relay ?? null,
      relayFailures: r?.relayFailures ?? 0,
      relayServer: server === undefined ? null : { reservations: server.reservations.size, maxReservations: relay === false ? 0 : relay.reservations ?? DEFAULT_RELAY_RESERVATIONS }
    }
  }

  /**
   * Our addresses for adverts, without our own /p2p suffix. A private node's
   * direct addresses go first but peers cannot use them; its relayed address
   * is how other private nodes reach it.
   */
  private advertisedAddrs (): Multiaddr[] {
    if (this.libp2pNode === undefined) return []
    const addrs = this.libp2p.getMultiaddrs().map(a => a.decapsulateCode(421))
    // Relayed addresses end in /p2p-circuit/p2p/US: keep the relay's part.
    return addrs.sort((a, b) => Number(isRelayed(b)) - Number(isRelayed(a)))
  }

  /** Hello's part on this node: our advert and a few of our peers out, theirs in. */
  private helloInit (capacity: CapacityService): HelloInit {
    return {
      advert: () => capacity.encodeAdvert(),
      admit: (from, bytes) => { capacity.admitDirect(from, bytes) },
      hints: async (to) => {
        const peers = sample(this.libp2p.getPeers().filter(p => !p.equals(to)), MAX_HELLO_HINTS, Math.random)
        const hints = await Promise.all(peers.map(async (p): Promise<PeerHint | undefined> => {
          const addr = (await this.libp2p.peerStore.get(p).catch(() => undefined))?.addresses.map(a => a.multiaddr).find(a => !isRelayed(a) && a.bytes.byteLength <= 64)
          return addr === undefined ? undefined : { id: p.toMultihash().bytes, addr: addr.bytes }
        }))
        return hints.filter((h): h is PeerHint => h !== undefined)
      },
      hinted: (_from, hints) => {
        for (const h of hints) {
          try {
            const id = peerIdFromMultihash(Digest.decode(h.id))
            if (id.equals(this.libp2p.peerId)) continue
            const addr = multiaddr(h.addr)
            this.libp2p.peerStore.merge(id, { multiaddrs: [addr] }).then(() => { this.keeper?.offer(id.toString()) }, () => {})
          } catch {
            // A malformed hint is only a dial not made.
          }
        }
      },
      log: this.log
    }
  }

  /**
   * Remembers a peer's advertised addresses, so a job can dial it by id. The
   * connection keeper decides whether to connect now (connection-keeper.ts).
   */
  private learnAddrs (peer: string, addrs: string[]): void {
    let id: PeerId
    try {
      id = peerIdFromString(peer)
    } catch {
      return
    }
    const mas = addrs.map(a => multiaddr(a))
    this.libp2p.peerStore.merge(id, { multiaddrs: mas }).catch(() => {})
  }

  /**
   * Dials a peer (by id: the addresses it advertised) unless a direct
   * connection exists. A relayed connection is what two private nodes have;
   * a private node still tries the peer's direct addresses (the peer may be
   * public and merely have dialed us through a relay first), while a public
   * node never dials through a relay: a private peer dials it directly.
   */
  private dialQuietly (peer: PeerId | undefined, addrs: Multiaddr[]): Promise<void> {
    if (this.libp2pNode === undefined || this.libp2pNode.status !== 'started') return Promise.resolve()
    const fail = (err: unknown): void => { this.log.debug({ peer: peer?.toString(), err: errorMessage(err) }, 'dial failed') }
    const signal = AbortSignal.timeout(this.intervalMs * 2)
    if (peer === undefined) {
      return addrs.length > 0 ? this.libp2p.dial(addrs, { signal }).then(() => {}, fail) : Promise.resolve()
    }
    if (this.peerLimits.isBanned(peer.toString())) return Promise.resolve()
    const conns = this.libp2p.getConnections(peer)
    if (conns.some(c => c.limits === undefined && !isRelayed(c.remoteAddr))) return Promise.resolve()
    const privateNode = this.libp2p.services.reachability.reachability === 'private'
    if (conns.length > 0 && !privateNode) return Promise.resolve()
    const known = addrs.length > 0
      ? Promise.resolve(addrs)
      : this.libp2p.peerStore.get(peer).then(p => p.addresses.map(a => a.multiaddr), () => [] as Multiaddr[])
    return known.then(async (list) => {
      const direct = list.filter(a => !isRelayed(a))
      const targets = (privateNode && conns.length === 0 ? list : direct).map(a => a.getComponents().at(-1)?.name === 'p2p' ? a : a.encapsulate(`/p2p/${peer.toString()}`))
      if (targets.length === 0) return
      await this.libp2p.dial(targets, { signal, force: conns.length > 0 })
    }).catch(fail)
  }

  /** The bootstrap addresses this node has no connection to. */
  private unconnectedBootstrap (): Multiaddr[] {
    const connected = new Set(this.libp2p.getConnections().map(c => c.remoteAddr.toString()))
    return this.bootstrap.filter(addr => {
      const peer = addr.getComponents().find(c => c.name === 'p2p')?.value
      return peer !== undefined ? this.libp2p.getConnections(peerIdFromString(peer)).length === 0 : !connected.has(addr.toString())
    })
  }

  /** Dials the bootstrap peers, and again after `delayMs` (doubling) while none answers, up to the connectivity check's interval. */
  private dialBootstrap (delayMs: number): void {
    const missing = this.unconnectedBootstrap()
    if (missing.length === 0) return
    void Promise.all(missing.map(async addr => { await this.dialQuietly(undefined, [addr]) })).then(() => {
      if (this.libp2pNode?.status !== 'started' || delayMs >= this.intervalMs * CONNECTIVITY_CHECK_INTERVALS) return
      if (this.unconnectedBootstrap().length < this.bootstrap.length) return
      this.bootstrapTimer = setTimeout(() => { this.dialBootstrap(delayMs * 2) }, delayMs)
      this.bootstrapTimer.unref()
    })
  }

  private repairConnectivity (): void {
    for (const addr of this.unconnectedBootstrap()) this.dialQuietly(undefined, [addr])
    // Directory peers are the keeper's: it dials up to its bounds, not every peer.
  }
}

function parseMultiaddr (value: string, flag: string): Multiaddr {
  try {
    const ma = multiaddr(value)
    if (!ma.toString().includes('/tcp/')) throw new Error('only TCP addresses are supported')
    return ma
  } catch (err) {
    throw new InvalidInputError(`${flag}: "${value}" is not a valid TCP multiaddr (${errorMessage(err)}); expected e.g. /ip4/127.0.0.1/tcp/4001`, 'ERR_BAD_MULTIADDR')
  }
}

function listenError (err: unknown, listen: string[]): Error {
  const msg = errorMessage(err)
  if (/EADDRINUSE|address already in use/i.test(msg)) {
    return new InvalidInputError(`cannot listen on ${listen.join(', ')}: address already in use`, 'ERR_ADDRESS_IN_USE', { cause: err })
  }
  if (/EADDRNOTAVAIL|EACCES/i.test(msg)) {
    return new InvalidInputError(`cannot listen on ${listen.join(', ')}: ${msg}`, 'ERR_LISTEN', { cause: err })
  }
  return err instanceof Error ? err : new Error(msg)
}

function round (n: number): number {
  return Math.round(n * 10) / 10
}
