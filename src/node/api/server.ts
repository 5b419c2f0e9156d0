import { createServer } from 'node:http'
import { isIP } from 'node:net'
import { tokenMatches } from '../access/index.ts'
import { InvalidInputError, LimitExceededError, TensormeshError, errorMessage } from '../../errors.ts'
import { MAX_BLOB_BYTES } from '../../protocol/blob/index.ts'
import { encodeNpy } from '../../compute/npy.ts'
import { readJobRequest } from './job-request.ts'
import { registerDashboard } from './dashboard/index.ts'
import type { Job } from '../jobs/job.ts'
import type { MeshNode } from '../mesh-node.ts'
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

/** What GET /v1/peers returns for each peer. */
export interface PeerView {
  peerId: string
  backend: string
  cores: number
  gflops: number
  slots: number
  busy: number
  queued: number
  /** Milliseconds since this node received the peer's last advert. */
  lastSeenMs: number
  memTotalBytes: number
  memFreeBytes: number
  gpu?: { name: string, memoryBytes: number }
  operators: string[]
  addrs: string[]
  connected: boolean
}

export class HttpError extends TensormeshError {
  readonly status: number

  constructor (status: number, code: string, message: string) {
    super(code, message)
    this.status = status
  }
}

export type RouteHandler = (req: IncomingMessage, res: ServerResponse, params: Record<string, string>) => Promise<void> | void

/** Coalesces job updates on an event stream to at most ten a second. */
const SSE_MIN_GAP_MS = 100

interface Route { method: string, pattern: RegExp, keys: string[], handler: RouteHandler, open: boolean }

export interface RouteOptions {
  /** Served without the token: the dashboard's static files and its login page. */
  open?: boolean
}

/**
 * The node's HTTP API (v1). Every route but the dashboard's static files
 * needs the node's token (`Authorization: Bearer`, or the dashboard's
 * cookie), and every request must name this server's own address in
 * `Host`, so a web page in a browser on this machine cannot reach it
 * through a DNS name it controls (DNS rebinding).
 */
export class ApiServer {
  private readonly node: MeshNode
  private readonly host: string
  private readonly port: number
  private readonly routes: Route[] = []
  private readonly token?: string
  /** The port the server listens on (known once started; port 0 lets the OS pick). */
  private boundPort = 0
  private server?: Server
  url?: string

  /** Without `token` the API is open (only allowed on loopback; the CLI checks). */
  constructor (node: MeshNode, address: { host: string, port: number }, token?: string) {
    this.node = node
    this.token = token
    this.host = address.host
    this.port = address.port
    this.route('GET', '/v1/node', (_req, res) => { sendJson(res, 200, this.node.info()) })
    this.route('GET', '/v1/peers', (_req, res) => { sendJson(res, 200, this.peers()) })
    this.route('GET', '/v1/jobs', (_req, res) => { sendJson(res, 200, this.node.jobs.list().map(j => j.toJSON())) })
    this.route('POST', '/v1/jobs', async (req, res) => {
      // A multipart body is about the size of the inputs it carries: refuse a full node before reading it.
      if ((req.headers['content-type'] ?? '').toLowerCase().startsWith('multipart/')) this.node.checkStorage(declaredLength(req), 'job')
      const blobCids: string[] = []
      const spec = await readJobRequest(req, this.node.limits.maxTensorBytes, async (cid) => {
        blobCids.push(cid)
        return await this.node.resolveBlob(cid)
      }, async (name, ref) => await this.node.resolveInput(name, ref))
      const job = this.node.submit(spec, { blobCids })
      sendJson(res, 202, job.toJSON())
    })
    this.route('GET', '/v1/jobs/:id', (_req, res, p) => { sendJson(res, 200, this.node.jobs.get(p.id ?? '').toJSON()) })
    this.route('DELETE', '/v1/jobs/:id', (_req, res, p) => { sendJson(res, 200, this.node.jobs.cancel(p.id ?? '').toJSON()) })
    this.route('GET', '/v1/jobs/:id/result', async (_req, res, p) => {
      const job = this.node.jobs.get(p.id ?? '')
      if (job.state !== 'succeeded') throw new HttpError(409, 'ERR_NO_RESULT', `job ${job.id} is ${job.state}; a result exists once it has succeeded`)
      const bytes = encodeNpy(await job.result())
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bytes.byteLength, 'content-disposition': `attachment; filename="${job.id}.npy"` })
      res.end(bytes)
    })
    this.route('GET', '/v1/jobs/:id/model', async (_req, res, p) => {
      const job = this.node.jobs.get(p.id ?? '')
      if (job.model === undefined) throw new HttpError(409, 'ERR_NO_MODEL', `job ${job.id} is ${job.state}${job.op === 'train' ? '' : ` and a ${job.op} job`}; a model exists once a train job has succeeded`)
      sendBytes(res, await this.node.resolveBlob(job.model.cid), `${job.id}.tmmodel`)
    })
    this.route('GET', '/v1/blobs/:cid', async (_req, res, p) => {
      sendBytes(res, await this.node.resolveBlob(p.cid ?? '', false), `${p.cid ?? 'blob'}.bin`)
    })
    this.route('PUT', '/v1/blobs', async (req, res) => {
      this.node.checkStorage(declaredLength(req), 'blob')
      const chunks: Buffer[] = []
      let size = 0
      for await (const chunk of req) {
        size += (chunk as Buffer).byteLength
        if (size > MAX_BLOB_BYTES) throw new LimitExceededError(`blob exceeds the ${MAX_BLOB_BYTES}-byte limit`)
        chunks.push(chunk as Buffer)
      }
      const bytes = new Uint8Array(Buffer.concat(chunks))
      sendJson(res, 201, { cid: await this.node.storeBlob(bytes), bytes: bytes.byteLength })
    })
    this.route('GET', '/v1/jobs/:id/events', (req, res, p) => { this.streamJob(req, res, this.node.jobs.get(p.id ?? '')) })
    this.route('GET', '/metrics', async (_req, res) => {
      const { contentType, body } = await this.node.metrics.text()
      res.writeHead(200, { 'content-type': contentType, 'content-length': Buffer.byteLength(body) })
      res.end(body)
    })
    registerDashboard(this, this.node)
  }

  /** Registers a route; `:name` segments become params. */
  route (method: string, path: string, handler: RouteHandler, options: RouteOptions = {}): void {
    const keys: string[] = []
    const pattern = new RegExp('^' + path.replace(/:([a-zA-Z]+)/g, (_m, k: string) => { keys.push(k); return '([^/]+)' }) + '$')
    this.routes.push({ method, pattern, keys, handler, open: options.open === true })
  }

  /** Whether the API asks for a token at all. */
  get authRequired (): boolean {
    return this.token !== undefined
  }

  /** The dashboard's cookie: one name per port, since browsers share cookies across a host's ports. */
  get cookieName (): string {
    return `tensormesh_token_${this.boundPort}`
  }

  /** A request carries the token: as a bearer header (clients) or the dashboard's cookie (browsers). */
  authorized (req: IncomingMessage): boolean {
    if (this.token === undefined) return true
    const header = req.headers.authorization
    if (header !== undefined && /^Bearer /i.test(header)) return tokenMatches(this.token, header.slice(7).trim())
    return tokenMatches(this.token, cookieValue(req.headers.cookie, this.cookieName))
  }

  /** Whether `token` is this API's token (the dashboard's login). */
  checkToken (token: string | undefined): boolean {
    return this.token === undefined || tokenMatches(this.token, token)
  }

  /**
   * `Host` must be this server's own address: an IP literal or localhost,
   * with our port. A DNS name would be how a hostile page in a local
   * browser reaches us after rebinding its name to 127.0.0.1.
   */
  private hostAllowed (host: string | undefined): boolean {
    if (host === undefined) return false
    let url: URL
    try {
      url = new URL(`http://${host}`)
    } catch {
      return false
    }
    const port = url.port === '' ? 80 : Number(url.port)
    if (port !== this.boundPort) return false
    const name = url.hostname.replace(/^\[|\]$/g, '')
    if (name === 'localhost') return true
    if (isIP(name) === 0) return false
    const wildcard = this.host === '0.0.0.0' || this.host === '::' || this.host === ''
    return wildcard || name === this.host.replace(/^\[|\]$/g, '')
  }

  peers (): PeerView[] {
    const libp2p = this.node.libp2p
    const connected = new Set(libp2p.getConnections().map(c => c.remotePeer.toString()))
    return this.node.directory.list().map(entry => {
      const c = entry.capacity
      const view: PeerView = {
        peerId: c.peerId,
        backend: c.backend,
        cores: c.cores,
        gflops: c.gflops,
        slots: c.slots,
        busy: c.busy,
        queued: c.queued,
        lastSeenMs: Math.round(this.node.directory.ageMs(entry)),
        memTotalBytes: c.memTotalBytes,
        memFreeBytes: c.memFreeBytes,
        operators: c.operators,
        addrs: c.addrs,
        connected: connected.has(c.peerId)
      }
      if (c.gpu !== undefined) view.gpu = c.gpu
      return view
    })
  }

  /** Server-sent events: the job's record on every change, until it finishes. */
  private streamJob (req: IncomingMessage, res: ServerResponse, job: Job): void {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' })
    let last = 0
    let timer: NodeJS.Timeout | undefined
    const send = (): void => {
      timer = undefined
      last = performance.now()
      const view = job.toJSON()
      res.write(`event: job\ndata: ${JSON.stringify(view)}\n\n`)
      if (job.finished) close()
    }
    // Progress can change hundreds of times a second; a client needs a few updates a second.
    const schedule = (): void => {
      // The end goes out at once: a client waiting for a tiny job should not wait out the gap.
      if (job.finished) { clearTimeout(timer); send(); return }
      if (timer !== undefined) return
      timer = setTimeout(send, Math.max(0, last + SSE_MIN_GAP_MS - performance.now()))
    }
    const close = (): void => {
      clearTimeout(timer)
      job.removeEventListener('progress', schedule)
      job.removeEventListener('state', schedule)
      res.end()
    }
    job.addEventListener('progress', schedule)
    job.addEventListener('state', schedule)
    req.on('close', close)
    send()
  }

  async start (): Promise<void> {
    const server = createServer((req, res) => { void this.handle(req, res) })
    this.server = server
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => {
        reject(err.code === 'EADDRINUSE'
          ? new InvalidInputError(`--api ${this.host}:${this.port}: address already in use`, 'ERR_ADDRESS_IN_USE')
          : new InvalidInputError(`--api ${this.host}:${this.port}: ${err.message}`, 'ERR_LISTEN'))
      })
      server.listen(this.port, this.host, () => { resolve() })
    })
    const addr = server.address() as AddressInfo
    this.boundPort = addr.port
    const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address
    this.url = `http://${host}:${addr.port}`
  }

  async stop (): Promise<void> {
    const server = this.server
    if (server === undefined) return
    this.server = undefined
    server.closeAllConnections()
    await new Promise<void>(resolve => { server.close(() => { resolve() }) })
  }

  private async handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0] ?? '/'
    try {
      if (!this.hostAllowed(req.headers.host)) throw new HttpError(403, 'ERR_BAD_HOST', `Host "${(req.headers.host ?? '').slice(0, 100)}" is not this API's address; use ${this.url ?? 'its IP address and port'}`)
      let pathMatched = false
      for (const route of this.routes) {
        const m = route.pattern.exec(path)
        if (m === null) continue
        pathMatched = true
        if (route.method !== req.method) continue
        const params: Record<string, string> = {}
        if (!route.open && !this.authorized(req)) {
          res.setHeader('www-authenticate', 'Bearer realm="tensormesh"')
          throw new HttpError(401, 'ERR_UNAUTHORIZED', 'this API needs the node\'s token: send Authorization: Bearer TOKEN (the token is in DATA_DIR/api-token; clients take --token or TENSORMESH_TOKEN)')
        }
        route.keys.forEach((k, i) => { params[k] = decodeURIComponent(m[i + 1] ?? '') })
        await route.handler(req, res, params)
        return
      }
      if (pathMatched) throw new HttpError(405, 'ERR_METHOD_NOT_ALLOWED', `${req.method ?? ''} is not allowed on ${path}`)
      throw new HttpError(404, 'ERR_NOT_FOUND', `no such endpoint: ${req.method ?? ''} ${path}`)
    } catch (err) {
      if (res.headersSent) {
        res.destroy()
        return
      }
      const status = err instanceof HttpError ? err.status : statusFor(err)
      const code = err instanceof TensormeshError ? err.code : 'ERR_INTERNAL'
      if (status >= 500) this.node.log.error({ err: errorMessage(err), path }, 'api request failed')
      sendJson(res, status, { error: { code, message: errorMessage(err) } })
    }
  }
}

function statusFor (err: unknown): number {
  if (err instanceof InvalidInputError) return 400
  if (err instanceof TensormeshError && err.code.endsWith('NOT_FOUND')) return 404
  if (err instanceof TensormeshError && err.code === 'ERR_LIMIT_EXCEEDED') return 413
  // 507 Insufficient Storage (RFC 4918): the budget or the disk is full, nothing was stored.
  if (err instanceof TensormeshError && err.code === 'ERR_STORAGE_FULL') return 507
  return 500
}

/** A request's Content-Length, or 0 when it has none (chunked): the real size is checked when it is stored. */
function declaredLength (req: IncomingMessage): number {
  const n = Number(req.headers['content-length'] ?? 0)
  return Number.isSafeInteger(n) && n > 0 ? n : 0
}

/** One cookie's value from a Cookie header, or undefined. */
function cookieValue (header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined
  for (const part of header.split(';')) {
    const eq = part.indexOf('=')
    if (eq <= 0 || part.slice(0, eq).trim() !== name) continue
    try {
      return decodeURIComponent(part.slice(eq + 1).trim())
    } catch {
      return undefined
    }
  }
  return undefined
}

export function sendBytes (res: ServerResponse, bytes: Uint8Array, filename: string): void {
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bytes.byteLength, 'content-disposition': `attachment; filename="${filename}"` })
  res.end(bytes)
}

export function sendJson (res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}
