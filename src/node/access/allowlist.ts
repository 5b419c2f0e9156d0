/**
 * Allowed peers: with a list, a node keeps only connections, in or out,
 * whose peer id is on it. Checked after the noise handshake (the gater's
 * *EncryptedConnection hooks), so the id is proven, not claimed.
 */
import { readFile } from 'node:fs/promises'
import { peerIdFromString } from '@libp2p/peer-id'
import { InvalidInputError, errorMessage } from '../../errors.ts'
import type { ConnectionGater, MultiaddrConnection, PeerId } from '@libp2p/interface'

/** An allow file is a list of ids (~52 bytes a line); a megabyte is ~20,000 peers. */
export const MAX_ALLOW_FILE_BYTES = 1024 * 1024

export function parsePeerId (value: string, where: string): string {
  try {
    return peerIdFromString(value).toString()
  } catch (err) {
    throw new InvalidInputError(`${where}: "${value.slice(0, 100)}" is not a peer id (${errorMessage(err)})`, 'ERR_BAD_PEER_ID')
  }
}

/** One peer id per line; `#` starts a comment; blank lines are ignored. Errors name the file and line. */
export function parseAllowList (text: string, path: string): string[] {
  const out: string[] = []
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.replace(/#.*$/, '').trim()
    if (line !== '') out.push(parsePeerId(line, `${path}:${i + 1}`))
  })
  return out
}

export async function readAllowFile (path: string): Promise<string[]> {
  let bytes: Buffer
  try {
    bytes = await readFile(path)
  } catch (err) {
    throw new InvalidInputError(`cannot read allow file ${path}: ${errorMessage(err)}`, 'ERR_ALLOW_FILE')
  }
  if (bytes.byteLength > MAX_ALLOW_FILE_BYTES) throw new InvalidInputError(`allow file ${path} is ${bytes.byteLength} bytes; at most ${MAX_ALLOW_FILE_BYTES}`, 'ERR_ALLOW_FILE')
  return parseAllowList(bytes.toString('utf8'), path)
}

/** Why a connection was refused, as counted in GET /v1/node (`refused`). */
export type RefusalReason = 'notAllowed' | 'handshake' | 'banned'

/**
 * The node's admission: the allowlist as a connection gater, and counters
 * of refused connections by reason. A peer without the swarm key shows up
 * as a connection that closes before its handshake completes: pnet cannot
 * tell a wrong key from noise, and what comes through it is garbage to
 * multistream-select and noise.
 */
export class AccessGate {
  private readonly allowed?: ReadonlySet<string>
  private readonly banned: (peer: string) => boolean
  /** Raw connections that got as far as a proven peer id. */
  private readonly secured = new WeakSet<MultiaddrConnection>()
  readonly refused: Record<RefusalReason, number> = { notAllowed: 0, handshake: 0, banned: 0 }

  constructor (init: { allow?: string[], banned?: (peer: string) => boolean } = {}) {
    this.allowed = init.allow === undefined ? undefined : new Set(init.allow)
    this.banned = init.banned ?? (() => false)
  }

  /** Whether a proven peer id may stay connected. */
  admits (peer: PeerId): boolean {
    const id = peer.toString()
    if (this.allowed !== undefined && !this.allowed.has(id)) {
      this.refused.notAllowed++
      return false
    }
    if (this.banned(id)) {
      this.refused.banned++
      return false
    }
    return true
  }

  /** Counts a raw connection that closes before the handshake proved who is on the other end. */
  private watch (maConn: MultiaddrConnection): boolean {
    maConn.addEventListener('close', () => {
      if (!this.secured.has(maConn)) this.refused.handshake++
    }, { once: true })
    return false
  }

  private decide (peer: PeerId, maConn: MultiaddrConnection): boolean {
    this.secured.add(maConn)
    return !this.admits(peer)
  }

  gater (): ConnectionGater {
    return {
      denyInboundConnection: (maConn) => this.watch(maConn),
      denyOutboundConnection: (_peer, maConn) => this.watch(maConn),
      denyInboundEncryptedConnection: (peer, maConn) => this.decide(peer, maConn),
      denyOutboundEncryptedConnection: (peer, maConn) => this.decide(peer, maConn),
      // Do not even dial a peer we would drop after the handshake.
      denyDialPeer: (peer) => this.allowed !== undefined && !this.allowed.has(peer.toString())
    }
  }
}
