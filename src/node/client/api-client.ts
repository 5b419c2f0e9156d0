import { TensormeshError } from '../../errors.ts'
import type { PeerView } from '../api.ts'
import type { NodeInfo } from '../mesh-node.ts'

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

  /** `token`, when given, goes with every request as `Authorization: Bearer`. */
  constructor (base: string, token?: string) {
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
