import { readFile } from 'node:fs/promises'
import { HttpError } from '../server.ts'
import type { ApiServer, PeerView } from '../server.ts'
import type { JobView } from '../../jobs/job.ts'
import type { MeshNode, NodeInfo } from '../../mesh-node.ts'
import type { IncomingMessage, ServerResponse } from 'node:http'

/**
 * The dashboard's files, served as they are from the package: no bundler,
 * no CDN, nothing fetched from the network. Only these names are served.
 */
export const DASHBOARD_ASSETS: Readonly<Record<string, string>> = {
  'index.html': 'text/html; charset=utf-8',
  'login.html': 'text/html; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'examples.js': 'text/javascript; charset=utf-8',
  'style.css': 'text/css; charset=utf-8',
  'favicon.svg': 'image/svg+xml'
}

const STATIC_DIR = new URL('./static/', import.meta.url)

/** Everything the page loads comes from this node; peer-supplied text is only ever set as text. */
const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer'
}

/** Mesh streams open at once; each holds a timer and a socket. A dashboard needs one. */
export const MAX_MESH_STREAMS = 32
/** A snapshot goes out at most this often on changes (jobs progress hundreds of times a second). */
export const MESH_MIN_GAP_MS = 250
/** And at least this often, so peers' last-seen ages stay current. */
export const MESH_HEARTBEAT_MS = 1000
/** Jobs in a snapshot, newest first; the rest stay reachable through GET /v1/jobs. */
export const MESH_MAX_JOBS = 100

/** A job without its shards and bids: what the dashboard's job list needs. */
export interface JobSummary extends Pick<JobView, 'id' | 'op' | 'state' | 'createdAt' | 'startedAt' | 'finishedAt' | 'elapsedMs' | 'progress' | 'output' | 'error' | 'inputs'> {
  /** Distinct peers that ran or run a copy of a shard. */
  peers: number
  retries: number
  backups: number
}

/** One of this node's libp2p connections: the edges of the graph this node can vouch for. */
export interface ConnectionView {
  peerId: string
  direction: string
  addr: string
  openedAt: number
  streams: number
  rttMs?: number
}

/** What GET /v1/events sends as each `mesh` event. */
export interface MeshSnapshot {
  at: number
  node: NodeInfo
  peers: PeerView[]
  connections: ConnectionView[]
  jobs: JobSummary[]
}

/** Adds the dashboard (`/`, `/dashboard/:file`) and the mesh event stream (`/v1/events`) to the API. */
export function registerDashboard (api: ApiServer, node: MeshNode): void {
  const cache = new Map<string, Buffer>()
  const serve = async (res: ServerResponse, file: string, status = 200): Promise<void> => {
    const type = DASHBOARD_ASSETS[file]
    if (type === undefined) throw new HttpError(404, 'ERR_NOT_FOUND', `no dashboard file ${file}`)
    let body = cache.get(file)
    if (body === undefined) {
      body = await readFile(new URL(file, STATIC_DIR))
      cache.set(file, body)
    }
    // The login page submits its form to this node; no other page submits anything.
    const headers = file === 'login.html' ? { ...SECURITY_HEADERS, 'content-security-policy': SECURITY_HEADERS['content-security-policy'].replace("form-action 'none'", "form-action 'self'") } : SECURITY_HEADERS
    res.writeHead(status, { 'content-type': type, 'content-length': body.byteLength, 'cache-control': 'no-cache', ...headers })
    res.end(body)
  }
  // GET /?token=T logs the browser in: an HttpOnly, SameSite=Strict cookie, then the page without the token in its URL.
  api.route('GET', '/', async (req, res) => {
    const token = new URL(req.url ?? '/', 'http://localhost').searchParams.get('token')
    if (token !== null) {
      if (!api.checkToken(token)) { await serve(res, 'login.html', 401); return }
      res.writeHead(303, { location: '/', 'set-cookie': `${api.cookieName}=${encodeURIComponent(token)}; HttpOnly; SameSite=Strict; Path=/`, 'cache-control': 'no-store', ...SECURITY_HEADERS })
      res.end()
      return
    }
    await serve(res, api.authorized(req) ? 'index.html' : 'login.html')
  }, { open: true })
  api.route('GET', '/dashboard/:file', async (_req, res, p) => { await serve(res, p.file ?? '') }, { open: true })
  let streams = 0
  api.route('GET', '/v1/events', (req, res) => {
    if (streams >= MAX_MESH_STREAMS) throw new HttpError(503, 'ERR_TOO_MANY_STREAMS', `this node serves at most ${MAX_MESH_STREAMS} event streams at once`)
    streams++
    res.once('close', () => { streams-- })
    streamMesh(req, res, api, node)
  })
}

export function meshSnapshot (api: ApiServer, node: MeshNode): MeshSnapshot {
  const connections: ConnectionView[] = node.libp2p.getConnections().map(c => {
    const view: ConnectionView = { peerId: c.remotePeer.toString(), direction: c.direction, addr: c.remoteAddr.toString(), openedAt: c.timeline.open, streams: c.streams.length }
    if (c.rtt !== undefined) view.rttMs = c.rtt
    return view
  })
  const jobs = node.jobs.list().sort((a, b) => b.createdAt - a.createdAt).slice(0, MESH_MAX_JOBS).map(j => summary(j.toJSON()))
  return { at: Date.now(), node: node.info(), peers: api.peers(), connections, jobs }
}

function summary (v: JobView): JobSummary {
  const peers = new Set<string>()
  let retries = 0
  let backups = 0
  for (const s of v.shards) {
    for (const a of s.history) {
      peers.add(a.peer)
      if (a.kind === 'retry') retries++
      if (a.kind === 'backup') backups++
    }
  }
  const out: JobSummary = { id: v.id, op: v.op, state: v.state, createdAt: v.createdAt, progress: v.progress, inputs: v.inputs, peers: peers.size, retries, backups }
  if (v.startedAt !== undefined) out.startedAt = v.startedAt
  if (v.finishedAt !== undefined) out.finishedAt = v.finishedAt
  if (v.elapsedMs !== undefined) out.elapsedMs = v.elapsedMs
  if (v.output !== undefined) out.output = v.output
  if (v.error !== undefined) out.error = v.error
  return out
}

/**
 * Server-sent events: a `mesh` snapshot at once, then on every change
 * (coalesced) and on a heartbeat, until the client goes.
 */
function streamMesh (req: IncomingMessage, res: ServerResponse, api: ApiServer, node: MeshNode): void {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' })
  let last = 0
  let timer: NodeJS.Timeout | undefined
  /** When the pending timer fires (performance.now()). */
  let pendingAt = Infinity
  let closed = false
  const at = (when: number): void => {
    clearTimeout(timer)
    pendingAt = when
    timer = setTimeout(send, Math.max(0, when - performance.now()))
  }
  const send = (): void => {
    if (closed) return
    last = performance.now()
    try {
      res.write(`event: mesh\ndata: ${JSON.stringify(meshSnapshot(api, node))}\n\n`)
    } catch {
      // The node is stopping (libp2p or jobs gone): end the stream.
      close()
      return
    }
    at(last + MESH_HEARTBEAT_MS)
  }
  const schedule = (): void => {
    if (closed) return
    const when = Math.max(performance.now(), last + MESH_MIN_GAP_MS)
    if (pendingAt > when) at(when)
  }
  const close = (): void => {
    if (closed) return
    closed = true
    clearTimeout(timer)
    node.metrics.removeEventListener('change', schedule)
    res.end()
  }
  node.metrics.addEventListener('change', schedule)
  req.on('close', close)
  send()
}
