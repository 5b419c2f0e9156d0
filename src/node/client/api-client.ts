import { readFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { TensormeshError } from '../../errors.ts'
import { API_TOKEN_FILE } from '../access/index.ts'
import type { PeerView } from '../api/server.ts'
import type { NodeInfo } from '../mesh-node.ts'

/** Where a node keeps its key, journal and API token unless told otherwise. */
export const DEFAULT_DATA_DIR = join(homedir(), '.tensormesh')
/** The API token's file name inside a node's data directory. */
export const TOKEN_FILE = API_TOKEN_FILE

export interface ConnectOptions {
  /** The API token; else `TENSORMESH_TOKEN`; else `DATA_DIR/api-token`. */
  token?: string
  /** Where to look for the token file (default ~/.tensormesh). */
  dataDir?: string
}

/**
 * The token a client sends, in the order every client uses: an explicit
 * one, then the environment, then the node's token file. Undefined when
 * there is none (a node without API auth).
 */
export function resolveToken (options: ConnectOptions = {}, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (options.token !== undefined && options.token !== '') return options.token
  const fromEnv = env.TENSORMESH_TOKEN
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv
  try {
    const text = readFileSync(join(options.dataDir ?? DEFAULT_DATA_DIR, TOKEN_FILE), 'utf8').trim()
    return text === '' ? undefined : text
  } catch {
    return undefined
  }
}

/** An error the API answered with (`{error: {code, message}}`), or a failure to reach it. */
export class ApiError extends TensormeshError {
  readonly status: number

  constructor (status: number, code: string, message: string) {
    super(code, message)
    this.status = status
  }
}

/** The low-level client for a node's HTTP API: one request, JSON errors as ApiError. */
export class ApiClient {
  readonly base: string
  private readonly token?: string

  /** `token` goes with every request as `Authorization: Bearer`; by default it is found as every client finds it (resolveToken). */
  constructor (base: string, token: string | undefined = resolveToken()) {
    this.base = base.replace(/\/+$/, '')
    this.token = token
  }

  async node (): Promise<NodeInfo> {
    return await this.json<NodeInfo>('GET', '/v1/node')
  }

  async peers (): Promise<PeerView[]> {
    return await this.json<PeerView[]>('GET', '/v1/peers')
  }

  async request (method: string, path: string, body?: RequestInit['body'], headers?: Record<string, string>, signal?: AbortSignal): Promise<Response> {
    let res: Response
    try {
      const all = this.token === undefined ? headers : { ...headers, authorization: `Bearer ${this.token}` }
      res = await fetch(this.base + path, { method, body, headers: all, signal, duplex: 'half' } as RequestInit)
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err instanceof Error ? err.message : String(err))
      throw new ApiError(0, 'ERR_UNREACHABLE', `cannot reach the node API at ${this.base}: ${cause}`)
    }
    if (!res.ok) {
      let code = 'ERR_HTTP'
      let message = `${method} ${path} answered ${res.status}`
      try {
        const body = await res.json() as { error?: { code?: string, message?: string } }
        code = body.error?.code ?? code
        message = body.error?.message ?? message
      } catch {}
      throw new ApiError(res.status, code, message)
    }
    return res
  }

  async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.request(method, path, body === undefined ? undefined : JSON.stringify(body), body === undefined ? undefined : { 'content-type': 'application/json' })
    return await res.json() as T
  }
}
