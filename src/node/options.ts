import type { Logger } from './log.ts'

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
  /** Compute backend; 'auto' picks the best that loads. */
  backend?: string
  /** Executor worker threads; default one per core. */
  workers?: number
  /** Advert period; peers are gone after three of these. */
  advertIntervalMs?: number
  logger?: Logger
}
