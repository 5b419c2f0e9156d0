import type { Logger } from './log.ts'
import type { RateLimit } from './access/peer-limits.ts'
import type { GuardedProtocol } from '../protocol/peer-guard.ts'
import type { BackendChoice } from '../compute/index.ts'
import type { WireLimits } from '../protocol/limits.ts'
import type { JobHooks } from './jobs/coordinator.ts'
import type { FaultInjection } from './jobs/job-manager.ts'
import type { ConnectionBounds } from './connection-keeper.ts'
import type { ExecutorPool } from '../compute/index.ts'

/** A node's options as plain data; the CLI translates its flags into this in one place. */
export interface MeshNodeInit {
  /** Data directory: the peer key and (later) the job journal. */
  dataDir: string
  /** Multiaddrs to listen on; default all IPv4 interfaces, a port the OS picks. */
  listen?: string[]
  /** Peers to connect to at start and to reconnect to when the connection drops. */
  bootstrap?: string[]
  /** Find peers on the local network by multicast DNS. */
  mdns?: boolean
  /** The HTTP API's address, or false for none (in-process use). */
  api?: { host: string, port: number } | false
  /** Require the bearer token of DATA_DIR/api-token on the API (default true). */
  apiAuth?: boolean
  /** The mesh's pre-shared key (PSK v1 file bytes): only nodes holding it can connect. None: an open mesh. */
  swarmKey?: Uint8Array
  /** Peer ids allowed to connect, in or out (after the handshake proves them); none: any peer with the key. */
  allow?: string[]
  /** Per-peer request rates (token buckets), each defaulting to DEFAULT_RATE_LIMITS. */
  rateLimits?: Partial<Record<GuardedProtocol, RateLimit>>
  /** Compute backend; 'auto' picks the best that loads. */
  backend?: BackendChoice
  /** Executor worker threads; default one per core. */
  workers?: number
  /** Advert period; peers are gone after three of these. */
  advertIntervalMs?: number
  /** Run shards for this node's own jobs and for peers (default true); false makes a coordinate-only node. */
  serve?: boolean
  /** Bounds on tensors and shards this node accepts; each defaults to DEFAULT_WIRE_LIMITS. */
  limits?: Partial<WireLimits>
  /** Shards cut per accepting peer (default 2). */
  shardsPerPeer?: number
  /**
   * Send small shards as frames on one session stream per peer (default true);
   * false opens a stream per shard, as before sessions (benchmarks compare the two).
   */
  shardSessions?: boolean
  /** Move large tensors over the AES-GCM bulk channel beside libp2p (default true); false keeps every byte on libp2p streams. */
  bulk?: boolean
  /**
   * This node as a circuit relay for peers behind NAT, and whether it takes a
   * relay when it is behind NAT itself; false does neither. `reservations`:
   * peers it relays for at once (default DEFAULT_RELAY_RESERVATIONS, 0 for
   * none); `dataLimitBytes`/`durationLimitMs` bound each relayed connection
   * (default 0: unlimited, since shards cross these connections).
   */
  relay?: { reservations?: number, dataLimitBytes?: number, durationLimitMs?: number } | false
  /** Keep jobs, partials and results in the data directory's journal (default true). */
  journal?: boolean
  /**
   * Bytes the data directory may hold (blobs, journal); default
   * DEFAULT_MAX_STORAGE_BYTES (10 GiB). Past it, unreferenced blobs are
   * evicted and new jobs and uploads refused with ERR_STORAGE_FULL.
   */
  maxStorageBytes?: number
  /** Connections kept outside jobs (connection-keeper.ts); each defaults to DEFAULT_CONNECTION_BOUNDS. */
  connections?: Partial<ConnectionBounds>
  /**
   * An executor pool to use instead of one of the node's own making (the
   * scale bench gives each of its hundreds of nodes a pool without workers);
   * the node starts and stops it as its own. Never set by the CLI.
   */
  pool?: ExecutorPool
  /** Faults injected into shards this node runs for others (tests and testnet only). */
  faults?: FaultInjection
  /** Test and fault-injection seams in a job's life; never set by the CLI. */
  hooks?: JobHooks
  logger?: Logger
}
