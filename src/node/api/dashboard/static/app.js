// The tensormesh dashboard: one page served by a node, fed by that node's
// server-sent events (GET /v1/events for peers, connections and jobs;
// GET /v1/jobs/:id/events for the selected job's shards). Text that peers
// supplied (backend names, ids) is only ever set as text, never as HTML.
import { EXAMPLES } from './examples.js'

const SVG = 'http://www.w3.org/2000/svg'
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled'])

const state = {
  /** Last `mesh` snapshot: {at, node, peers, connections, jobs}. */
  mesh: undefined,
  /** Id of the job shown in the timeline, and whether the user chose it. */
  selected: undefined,
  pinned: false,
  /** Full record of the selected job (GET /v1/jobs/:id). */
  job: undefined,
  jobStream: undefined,
  tick: undefined
}

// ---------- small DOM helpers ----------

function h (tag, attrs = {}, ...children) {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue
    if (k === 'class') el.className = v
    // CSSOM, not the style attribute: the page's CSP allows no inline styles.
    else if (k === 'style') el.style.cssText = v
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v)
    else el.setAttribute(k, v === true ? '' : String(v))
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue
    el.append(c instanceof Node ? c : document.createTextNode(String(c)))
  }
  return el
}

function s (tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag)
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined) el.setAttribute(k, String(v))
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)))
  return el
}

const $ = (id) => document.getElementById(id)

function short (id) {
  return id.length > 16 ? `${id.slice(0, 6)}…${id.slice(-6)}` : id
}

/** Distinct colours, handed to peers in the order the page first meets them (this node first). */
const PALETTE = ['#0ea5e9', '#f97316', '#a855f7', '#10b981', '#e11d48', '#eab308', '#6366f1', '#14b8a6', '#d946ef', '#84cc16']
const colours = new Map()

function peerColour (id) {
  let c = colours.get(id)
  if (c === undefined) {
    c = PALETTE[colours.size % PALETTE.length]
    colours.set(id, c)
  }
  return c
}

function bytes (n) {
  if (!(n >= 0)) return '-'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++ }
  return `${n.toFixed(n >= 10 || i === 0 ? 0 : 1)} ${units[i]}`
}

/** "21 / 24 GiB": free of total, in the total's unit. */
function memory (free, total) {
  const unit = bytes(total).split(' ')[1]
  const scale = Math.pow(1024, ['B', 'KiB', 'MiB', 'GiB', 'TiB'].indexOf(unit))
  return `${(free / scale).toFixed(free / scale >= 10 ? 0 : 1)} / ${bytes(total)}`
}

function duration (ms) {
  if (ms === undefined || ms === null || !Number.isFinite(ms)) return '-'
  if (ms < 1000) return `${Math.round(ms)} ms`
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`
}

function clock (iso) {
  return iso === undefined ? '-' : new Date(iso).toLocaleTimeString([], { hour12: false })
}

function peerCell (id, { self = false } = {}) {
  return h('span', { class: 'peer', title: id, 'data-peer-id': id },
    h('span', { class: 'dot', style: `background:${peerColour(id)}` }),
    h('code', {}, short(id)),
    self ? h('span', { class: 'badge self-badge' }, 'this node') : null)
}

// ---------- live connection ----------

function setLive (mode, text) {
  const el = $('live')
  el.dataset.state = mode
  el.textContent = text
}

function connect () {
  const es = new EventSource('/v1/events')
  es.addEventListener('open', () => { setLive('live', 'live') })
  es.addEventListener('error', () => { setLive('down', 'reconnecting…') })
  es.addEventListener('mesh', (e) => {
    state.mesh = JSON.parse(e.data)
    setLive('live', 'live')
    render()
  })
}

// ---------- rendering ----------

function render () {
  const m = state.mesh
  if (m === undefined) return
  renderSelf(m)
  renderPeers(m)
  renderGraph(m)
  renderJobs(m)
  followSelection(m)
}

function renderSelf (m) {
  const n = m.node
  $('self').replaceChildren(
    'this node ', peerCell(n.peerId),
    h('span', { class: 'muted' }, ` · ${n.backend} · ${n.cores} cores · ${n.gflops.toFixed(1)} GFLOPS · up ${duration(n.uptimeMs)}`))
}

function loadCell (busy, slots, queued) {
  const frac = slots > 0 ? Math.min(busy / slots, 1) : 0
  return h('div', { class: 'load', title: `${busy} of ${slots} workers busy, ${queued} queued` },
    h('div', { class: 'bar' }, h('div', { class: 'fill', style: `width:${(frac * 100).toFixed(0)}%` })),
    h('span', {}, `${busy}/${slots}`), queued > 0 ? h('span', { class: 'muted' }, `+${queued}`) : null)
}

function renderPeers (m) {
  const n = m.node
  const rows = [
    h('tr', { 'data-testid': 'peer-row', 'data-peer-id': n.peerId, class: 'is-self' },
      h('td', {}, peerCell(n.peerId, { self: true })),
      h('td', {}, n.backend + (n.gpu ? ` (${n.gpu.name})` : '')),
      h('td', { class: 'num' }, n.cores),
      h('td', { class: 'num' }, n.gflops.toFixed(1)),
      h('td', {}, loadCell(n.busy, n.slots, n.queued)),
      h('td', {}, memory(n.memFreeBytes, n.memTotalBytes)),
      h('td', { class: 'num' }, 'now'),
      h('td', {}, h('span', { class: 'link self' }, 'self')))
  ]
  const peers = [...m.peers].sort((a, b) => a.peerId.localeCompare(b.peerId))
  for (const p of peers) {
    rows.push(h('tr', { 'data-testid': 'peer-row', 'data-peer-id': p.peerId },
      h('td', {}, peerCell(p.peerId)),
      h('td', {}, p.backend + (p.gpu ? ` (${p.gpu.name})` : '')),
      h('td', { class: 'num' }, p.cores),
      h('td', { class: 'num' }, p.gflops.toFixed(1)),
      h('td', {}, loadCell(p.busy, p.slots, p.queued)),
      h('td', {}, memory(p.memFreeBytes, p.memTotalBytes)),
      h('td', { class: 'num' }, `${(p.lastSeenMs / 1000).toFixed(1)} s ago`),
      h('td', {}, p.connected ? h('span', { class: 'link up' }, 'connected') : h('span', { class: 'link down' }, 'no connection'))))
  }
  $('peers').tBodies[0].replaceChildren(...rows)
  $('peer-count').textContent = `${peers.length + 1} in view`
  const all = [n, ...peers]
  const sum = (f) => all.reduce((t, p) => t + f(p), 0)
  const rejected = Object.values(n.adverts.rejected).reduce((t, v) => t + v, 0)
  const stat = (label, value, title) => [h('dt', {}, label), h('dd', { title }, value)]
  $('totals').replaceChildren(
    ...stat('mesh GFLOPS', sum(p => p.gflops).toFixed(1), 'sum of calibrated GFLOPS of every node in view'),
    ...stat('workers busy', `${sum(p => p.busy)} / ${sum(p => p.slots)}`, 'executor workers running a task, over all nodes in view'),
    ...stat('connections', String(m.connections.length), "this node's open libp2p connections"),
    ...stat('adverts in / out', `${n.adverts.accepted} / ${n.adverts.published}`, 'capacity adverts accepted from peers / published by this node'),
    ...stat('adverts rejected', String(rejected), Object.entries(n.adverts.rejected).map(([k, v]) => `${k}: ${v}`).join(', ')))
}

function renderGraph (m) {
  const svg = $('graph')
  const self = m.node.peerId
  const conns = new Map()
  for (const c of m.connections) {
    const list = conns.get(c.peerId) ?? []
    list.push(c)
    conns.set(c.peerId, list)
  }
  const known = new Set(m.peers.map(p => p.peerId))
  const others = [...new Set([...m.peers.map(p => p.peerId), ...conns.keys()])].filter(id => id !== self).sort()
  // Up to two peers sit on a line through this node; more go round it.
  const W = 360
  const H = others.length <= 2 ? 150 : 260
  const cx = W / 2
  const cy = H / 2 - 6
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`)
  const r = others.length <= 2 ? 100 : Math.min(115, 95 + others.length * 2)
  const pos = new Map([[self, { x: cx, y: cy }]])
  others.forEach((id, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(others.length, 1) + (others.length === 2 ? Math.PI / 2 : 0)
    pos.set(id, { x: cx + r * Math.cos(a) * 1.25, y: cy + r * Math.sin(a) * 0.82 })
  })
  const edges = s('g', { class: 'edges' })
  const nodes = s('g', { class: 'nodes' })
  for (const id of others) {
    const p = pos.get(id)
    const list = conns.get(id)
    const up = list !== undefined && list.length > 0
    const line = s('line', { x1: cx, y1: cy, x2: p.x, y2: p.y, class: up ? 'edge up' : 'edge down' })
    const rtt = list?.find(c => c.rttMs !== undefined)?.rttMs
    line.append(s('title', {}, up ? `connected ${list.map(c => `${c.direction} ${c.addr}`).join(', ')}` : 'advertises, but no open connection from this node'))
    edges.append(line)
    if (up && rtt !== undefined) {
      edges.append(s('text', { x: (cx + p.x) / 2, y: (cy + p.y) / 2 - 4, class: 'edge-label' }, `${rtt} ms`))
    }
  }
  for (const id of [self, ...others]) {
    const p = pos.get(id)
    const isSelf = id === self
    const g = s('g', { class: `node${isSelf ? ' self' : ''}${!isSelf && !known.has(id) ? ' unknown' : ''}`, 'data-peer-id': id })
    g.append(s('title', {}, isSelf ? `${id} (this node)` : known.has(id) ? id : `${id} (connected, no advert yet)`))
    g.append(s('circle', { cx: p.x, cy: p.y, r: isSelf ? 20 : 15, fill: known.has(id) || isSelf ? peerColour(id) : '#9ca3af' }))
    if (isSelf) g.append(s('text', { x: p.x, y: p.y + 4, class: 'node-inner' }, 'you'))
    g.append(s('text', { x: p.x, y: p.y + (isSelf ? 34 : 28), class: 'node-label' }, short(id)))
    nodes.append(g)
  }
  svg.replaceChildren(edges, nodes)
}

function jobDuration (j) {
  if (j.elapsedMs !== undefined) return j.elapsedMs
  if (j.state === 'running' || j.state === 'queued') return Date.now() - Date.parse(j.createdAt)
  return undefined
}

function renderJobs (m) {
  const rows = m.jobs.map(j => {
    const frac = j.progress.total > 0 ? j.progress.done / j.progress.total : 0
    const active = !TERMINAL.has(j.state)
    return h('tr', {
      'data-testid': 'job-row',
      'data-job-id': j.id,
      'data-state': j.state,
      class: j.id === state.selected ? 'selected' : '',
      onclick: () => { select(j.id, true) }
    },
    h('td', { title: j.id }, h('code', {}, j.id.slice(0, 8))),
    h('td', {}, j.op, h('span', { class: 'muted' }, ' ' + Object.values(j.inputs).map(t => t.shape.join('×')).join(' · '))),
    h('td', {}, h('span', { class: `state s-${j.state}`, title: j.error ? `${j.error.code}: ${j.error.message}` : j.state }, j.state)),
    h('td', {}, h('div', { class: 'progress' },
      h('div', { class: 'bar' }, h('div', { class: `fill s-${j.state}`, style: `width:${(frac * 100).toFixed(0)}%` })),
      h('span', {}, `${j.progress.done}/${j.progress.total}`))),
    h('td', { class: 'num' }, j.peers),
    h('td', { class: 'num' }, duration(jobDuration(j))),
    h('td', {}, clock(j.createdAt)),
    h('td', {}, active
      ? h('button', { class: 'cancel', type: 'button', 'data-testid': 'cancel', onclick: (e) => { e.stopPropagation(); cancel(j.id) } }, 'Cancel')
      : null))
  })
  $('jobs').tBodies[0].replaceChildren(...rows)
  $('no-jobs').hidden = rows.length > 0
  const running = m.jobs.filter(j => !TERMINAL.has(j.state)).length
  $('job-count').textContent = m.jobs.length === 0 ? '' : `${m.jobs.length} · ${running} active`
}

// ---------- job selection and its own stream ----------

function followSelection (m) {
  // Until the user picks one, show the newest job.
  if (!state.pinned && m.jobs.length > 0 && m.jobs[0].id !== state.selected) select(m.jobs[0].id, false)
  const summary = m.jobs.find(j => j.id === state.selected)
  // The job finished while no stream was open (or between two): fetch its final record.
  if (summary !== undefined && state.job !== undefined && state.job.id === summary.id && TERMINAL.has(summary.state) && !TERMINAL.has(state.job.state) && state.jobStream === undefined) {
    void loadJob(summary.id)
  }
}

function select (id, pinned) {
  if (pinned) state.pinned = true
  if (state.selected === id) return
  state.selected = id
  state.job = undefined
  closeJobStream()
  if (state.mesh !== undefined) renderJobs(state.mesh)
  renderTimeline()
  void loadJob(id)
}

function closeJobStream () {
  state.jobStream?.close()
  state.jobStream = undefined
}

async function loadJob (id) {
  const res = await fetch(`/v1/jobs/${encodeURIComponent(id)}`)
  if (!res.ok || state.selected !== id) return
  state.job = await res.json()
  renderTimeline()
  if (!TERMINAL.has(state.job.state) && state.jobStream === undefined) {
    const es = new EventSource(`/v1/jobs/${encodeURIComponent(id)}/events`)
    state.jobStream = es
    es.addEventListener('job', (e) => {
      if (state.selected !== id) return
      state.job = JSON.parse(e.data)
      renderTimeline()
      // The server ends the stream when the job finishes; do not let EventSource reconnect.
      if (TERMINAL.has(state.job.state)) closeJobStream()
    })
  }
}

// ---------- the shard timeline ----------

/** Height of one row of bars in a peer's lane, px (bar 20 + gap 3). */
const BAR_ROW_PX = 23

const KIND_LABEL = { first: 'first copy', retry: 'retry', backup: 'backup copy', replica: 'replica', check: 'spot check' }

function renderTimeline () {
  const el = $('timeline')
  const job = state.job
  clearInterval(state.tick)
  state.tick = undefined
  if (job === undefined) {
    $('tl-title').textContent = state.selected ? `job ${state.selected.slice(0, 8)}` : ''
    $('tl-summary').textContent = ''
    el.replaceChildren(h('p', { class: 'empty' }, state.selected ? 'Loading…' : 'Select a job to see which peer ran which shard, and when.'))
    return
  }
  const running = !TERMINAL.has(job.state)
  const now = Date.now()
  const attempts = []
  for (const rec of job.shards) {
    rec.history.forEach((a, k) => {
      const end = a.ms !== undefined ? a.startedAt + a.ms : (running ? now : undefined)
      attempts.push({ rec, a, k, end, winner: rec.state === 'done' && rec.peer === a.peer && a.error === undefined && a.ms !== undefined })
    })
  }
  $('tl-title').textContent = `job ${job.id.slice(0, 8)} · ${job.op}`
  const peersUsed = new Set(attempts.map(x => x.a.peer))
  const count = (kind) => attempts.filter(x => x.a.kind === kind).length
  const failed = attempts.filter(x => x.a.error !== undefined && x.a.error.code !== 'ERR_SUPERSEDED').length
  $('tl-summary').replaceChildren(
    h('span', { class: `state s-${job.state}` }, job.state), ' ',
    `${job.shards.length} shards on ${peersUsed.size} peer${peersUsed.size === 1 ? '' : 's'} · ${attempts.length} copies · ${count('retry')} retries · ${count('backup')} backups · ${failed} failed · `,
    job.elapsedMs !== undefined ? duration(job.elapsedMs) : `running ${duration(now - Date.parse(job.createdAt))}`,
    job.error ? h('span', { class: 'error-text' }, ` · ${job.error.code}: ${job.error.message}`) : '')
  const curve = job.op === 'train' && job.metrics !== undefined ? [trainCurve(job)] : []
  if (attempts.length === 0) {
    el.replaceChildren(...curve, h('p', { class: 'empty' }, job.state === 'queued' || job.state === 'running' ? 'Waiting for bids…' : 'This job ran no shard.'))
    if (running) state.tick = setInterval(renderTimeline, 250)
    return
  }
  const t0 = Math.min(...attempts.map(x => x.a.startedAt))
  const t1 = Math.max(...attempts.map(x => x.end ?? x.a.startedAt), t0 + 1)
  const span = t1 - t0
  // Lanes: this node first, then peers in the order the mesh lists them.
  const selfId = state.mesh?.node.peerId
  const lanes = [...peersUsed].sort((a, b) => (a === selfId ? -1 : b === selfId ? 1 : a.localeCompare(b)))
  const pct = (t) => `${(((t - t0) / span) * 100).toFixed(3)}%`
  const rows = lanes.map(peer => {
    // Copies that overlap in time (a peer runs several at once) go on separate rows of the lane.
    const mine = attempts.filter(y => y.a.peer === peer).sort((p, q) => p.a.startedAt - q.a.startedAt)
    const rowEnds = []
    const track = h('div', { class: 'track' })
    for (const x of mine) {
      const { a, rec } = x
      const end = x.end ?? a.startedAt
      let row = rowEnds.findIndex(e => e <= a.startedAt)
      if (row < 0) { row = rowEnds.length; rowEnds.push(end) } else rowEnds[row] = end
      // A copy that lost to another stops without an error when the job has already settled: a done
      // shard's other finished copies lost, unless replicas or spot checks compared them.
      const compared = (job.verification?.replicas ?? 1) > 1 || (job.verification?.spotCheck ?? 0) > 0
      const superseded = a.error?.code === 'ERR_SUPERSEDED' || (!x.winner && !compared && a.error === undefined && a.ms !== undefined && rec.state === 'done')
      const cls = ['tl-bar', `k-${a.kind}`,
        a.error !== undefined && !superseded ? 'failed' : '',
        superseded ? 'superseded' : '',
        a.ms === undefined ? 'running' : '',
        x.winner ? 'winner' : ''].filter(Boolean).join(' ')
      const tip = [
        `shard ${rec.index} (units ${rec.start}..${rec.end}) · ${KIND_LABEL[a.kind] ?? a.kind}`,
        `peer ${a.peer}`,
        `started +${duration(a.startedAt - t0)}, ${a.ms !== undefined ? `took ${duration(a.ms)}` : 'running'}${a.computeMs !== undefined ? ` (compute ${duration(a.computeMs)})` : ''}`,
        a.error ? `${superseded ? 'stopped' : 'failed'}: ${a.error.code} ${a.error.message}` : (x.winner ? 'its partial was used' : superseded ? 'another copy finished first' : '')
      ].filter(Boolean).join('\n')
      track.append(h('div', {
        class: cls,
        'data-testid': 'shard-bar',
        'data-shard': rec.index,
        'data-kind': a.kind,
        'data-peer-id': a.peer,
        title: tip,
        style: `left:${pct(a.startedAt)};top:${3 + row * BAR_ROW_PX}px;width:max(4px, calc(${(((end - a.startedAt) / span) * 100).toFixed(3)}% - 1px))`
      }, h('span', {}, `#${rec.index}`)))
    }
    track.style.height = `${6 + rowEnds.length * BAR_ROW_PX - 2}px`
    return h('div', { class: 'lane' },
      h('div', { class: 'lane-label' }, peerCell(peer, { self: peer === selfId })),
      track)
  })
  // Axis: about six ticks at a round step.
  const step = niceStep(span / 6)
  const axis = h('div', { class: 'track axis' })
  for (let t = 0; t <= span + 1e-9; t += step) {
    axis.append(h('span', { class: 'tick', style: `left:${((t / span) * 100).toFixed(3)}%` }, duration(t)))
  }
  el.replaceChildren(...curve, ...rows, h('div', { class: 'lane axis-lane' }, h('div', { class: 'lane-label' }), axis))
  if (running) state.tick = setInterval(renderTimeline, 250)
}

/**
 * A train job's held-out accuracy (solid) and loss (dashed, on its own
 * scale) per epoch (per round for the MLP shorthand), redrawn as the job's
 * events arrive; the title says how far the current epoch is.
 */
function trainCurve (job) {
  const rounds = job.metrics?.rounds ?? []
  const progress = job.metrics?.progress
  const W = 640
  const H = 150
  const pad = { l: 44, r: 44, t: 10, b: 22 }
  const w = W - pad.l - pad.r
  const ht = H - pad.t - pad.b
  const n = Math.max(rounds.length, 1)
  const X = (i) => pad.l + (n === 1 ? w / 2 : (i / (n - 1)) * w)
  const accs = rounds.map(r => r.accuracy).filter(Number.isFinite)
  const losses = rounds.map(r => r.testLoss).filter(Number.isFinite)
  const aLo = accs.length > 0 ? Math.min(...accs) : 0
  const aHi = accs.length > 0 ? Math.max(...accs) : 1
  const lHi = losses.length > 0 ? Math.max(...losses) : 1
  const YA = (a) => pad.t + ht - ((a - aLo) / Math.max(aHi - aLo, 1e-6)) * ht
  const YL = (l) => pad.t + ht - (l / Math.max(lHi, 1e-9)) * ht
  const line = (pts, cls) => s('polyline', { points: pts.join(' '), class: cls, fill: 'none' })
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, width: '100%', height: H, 'data-testid': 'train-curve', 'data-points': rounds.length, role: 'img' },
    s('line', { x1: pad.l, y1: pad.t + ht, x2: pad.l + w, y2: pad.t + ht, class: 'curve-axis' }),
    s('text', { x: pad.l - 4, y: pad.t + 8, 'text-anchor': 'end', class: 'curve-label' }, accs.length > 0 ? `${(aHi * 100).toFixed(1)}%` : ''),
    s('text', { x: pad.l - 4, y: pad.t + ht, 'text-anchor': 'end', class: 'curve-label' }, accs.length > 0 ? `${(aLo * 100).toFixed(1)}%` : ''),
    s('text', { x: pad.l + w + 4, y: pad.t + 8, class: 'curve-label' }, losses.length > 0 ? `loss ${lHi.toFixed(3)}` : ''),
    s('text', { x: pad.l + w / 2, y: H - 4, 'text-anchor': 'middle', class: 'curve-label' }, progress !== undefined ? 'epoch' : 'round'))
  if (accs.length > 0) svg.append(line(rounds.map((r, i) => `${X(i).toFixed(1)},${YA(r.accuracy).toFixed(1)}`), 'curve-acc'))
  if (losses.length > 0) svg.append(line(rounds.map((r, i) => `${X(i).toFixed(1)},${YL(r.testLoss).toFixed(1)}`), 'curve-loss'))
  rounds.forEach((r, i) => {
    if (Number.isFinite(r.accuracy)) svg.append(s('circle', { cx: X(i).toFixed(1), cy: YA(r.accuracy).toFixed(1), r: 3, class: 'curve-dot' }, s('title', {}, `${progress !== undefined ? 'epoch' : 'round'} ${r.round}: held-out accuracy ${(r.accuracy * 100).toFixed(2)}%, loss ${r.testLoss.toFixed(4)}, training loss ${r.loss.toFixed(4)}`)))
  })
  const last = rounds.at(-1)
  const head = [
    last !== undefined && Number.isFinite(last.accuracy) ? `held-out accuracy ${(last.accuracy * 100).toFixed(2)}% after ${progress !== undefined ? 'epoch' : 'round'} ${last.round}` : 'no epoch finished yet',
    progress !== undefined ? ` · ${progress.done}/${progress.total} ${progress.unit}` : '',
    job.metrics?.wireBytes !== undefined ? ` · ${bytes(job.metrics.wireBytes)} on the wire` : ''
  ].join('')
  return h('div', { class: 'train-curve' }, h('div', { class: 'muted' }, head), svg)
}

function niceStep (raw) {
  const p = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1e-3))))
  for (const m of [1, 2, 5, 10]) if (raw <= m * p) return m * p
  return 10 * p
}

// ---------- actions ----------

function setStatus (text, kind = '') {
  const el = $('submit-status')
  el.textContent = text
  el.className = `status ${kind}`
}

async function submit (e) {
  e.preventDefault()
  const example = EXAMPLES.find(x => x.id === $('example').value)
  if (example === undefined) return
  const button = $('submit-button')
  button.disabled = true
  setStatus(`Submitting ${example.label}…`)
  try {
    const body = example.build((Date.now() ^ 0x5eed) >>> 0)
    const res = await fetch('/v1/jobs', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
    const answer = await res.json()
    if (!res.ok) {
      setStatus(`Refused: ${answer.error?.code ?? res.status} ${answer.error?.message ?? ''}`, 'error')
      return
    }
    setStatus(`Submitted job ${answer.id.slice(0, 8)} (${example.label}).`, 'ok')
    select(answer.id, true)
  } catch (err) {
    setStatus(`Could not submit: ${err instanceof Error ? err.message : String(err)}`, 'error')
  } finally {
    button.disabled = false
  }
}

async function cancel (id) {
  const res = await fetch(`/v1/jobs/${encodeURIComponent(id)}`, { method: 'DELETE' })
  if (!res.ok) {
    const answer = await res.json().catch(() => ({}))
    setStatus(`Cancel refused: ${answer.error?.message ?? res.status}`, 'error')
    return
  }
  setStatus(`Cancelled job ${id.slice(0, 8)}.`, 'ok')
  if (state.selected === id) void loadJob(id)
}

// ---------- start ----------

function init () {
  $('example').replaceChildren(...EXAMPLES.map(x => h('option', { value: x.id }, x.label)))
  $('submit').addEventListener('submit', (e) => { void submit(e) })
  connect()
}

init()
