import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { authHeaders, exited, startCli, useToken, waitGone } from '../helpers/cli.ts'
import { TEST_TOKEN, startNode } from '../helpers/mesh.ts'
import type { JobView } from '../../src/node/jobs/job.ts'
import type { MeshNode } from '../../src/node/mesh-node.ts'
import type { ChildProcess } from 'node:child_process'
import type { BrowserContext, Page } from 'playwright-core'

const CHROMIUM = '/usr/bin/chromium'
const SCREENSHOT = fileURLToPath(new URL('../../test-results/dashboard.png', import.meta.url))

interface TestnetLine { nodes: Array<{ peerId: string, api: string, pid: number, multiaddrs: string[], token: string }> }

let browser: BrowserContext
let profile: string

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium); .ci/run does`)
  profile = mkdtempSync(join(tmpdir(), 'tm-chromium-'))
  // A persistent context on a fresh profile folder: Playwright passes it as --user-data-dir.
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1440, height: 1000 },
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'
    ]
  })
})

afterAll(async () => {
  await browser?.close()
  if (profile !== undefined) rmSync(profile, { recursive: true, force: true })
})

/**
 * Opens the dashboard as a user does: the page asks for the token, the user
 * types it in (`form`) or opens the `/?token=` link once (`link`); either
 * way the browser keeps it in a cookie and the dashboard loads.
 */
async function openPage (api: string, token: string, login: 'form' | 'link'): Promise<{ page: Page, errors: string[] }> {
  const page = await browser.newPage()
  const errors: string[] = []
  page.on('pageerror', (err) => { errors.push(err.message) })
  page.on('console', (msg) => { if (msg.type() === 'error') errors.push(msg.text()) })
  // The page must load nothing but what the node serves.
  page.on('request', (req) => { if (!req.url().startsWith(api)) errors.push(`request off the node: ${req.url()}`) })
  if (login === 'form') {
    await page.goto(api)
    await page.locator('[data-testid=login] input[name=token]').fill(token)
    await page.locator('[data-testid=login] button').click()
  } else {
    await page.goto(`${api}/?token=${encodeURIComponent(token)}`)
  }
  // Logged in: the dashboard itself, and the token is not left in the address bar.
  await page.locator('#peers').waitFor()
  expect(new URL(page.url()).search).toBe('')
  return { page, errors }
}

describe('dashboard on a three-node testnet started through the CLI', () => {
  let testnet: ChildProcess
  let net: TestnetLine
  let page: Page
  let errors: string[]

  beforeAll(async () => {
    const started = await startCli(['testnet', '--nodes', '3', '--json', '--workers', '1', '--advert-interval', '500'])
    testnet = started.child
    net = JSON.parse(started.line) as TestnetLine
    useToken(net)
    const first = net.nodes[0]
    if (first === undefined) throw new Error('testnet printed no node')
    ;({ page, errors } = await openPage(first.api, first.token, 'form'))
  })

  afterAll(async () => {
    await page?.close()
    if (testnet !== undefined && testnet.exitCode === null) {
      testnet.kill('SIGTERM')
      await exited(testnet)
    }
    if (net !== undefined) await waitGone(net.nodes.map(n => n.pid), 10_000)
  })

  it('asks for the token: without it the page is a login form, the API answers 401, a wrong token is refused', async () => {
    const api = net.nodes[1]?.api ?? ''
    const other = await browser.newPage()
    try {
      await other.goto(api)
      expect(await other.locator('[data-testid=login]').count()).toBe(1)
      expect(await other.locator('#peers').count()).toBe(0)
      const wrong = await other.goto(`${api}/?token=not-the-token`)
      expect(wrong?.status()).toBe(401)
      expect(await other.locator('[data-testid=login]').count()).toBe(1)
    } finally {
      await other.close()
    }
    expect((await fetch(`${api}/v1/peers`)).status).toBe(401)
    expect((await fetch(`${api}/v1/peers`, { headers: authHeaders() })).status).toBe(200)
  })

  it('lists all three peers, each with its full peer id, this node marked', async () => {
    await page.waitForFunction("document.querySelectorAll('#peers [data-testid=peer-row]').length === 3")
    const rows = await page.$$eval('#peers [data-testid=peer-row]', (els) => els.map(e => ({
      id: e.getAttribute('data-peer-id'),
      title: e.querySelector('.peer')?.getAttribute('title'),
      self: e.querySelector('.self-badge') !== null,
      text: e.textContent ?? ''
    })))
    expect(rows.map(r => r.title).sort()).toEqual(net.nodes.map(n => n.peerId).sort())
    expect(rows.map(r => r.id)).toEqual(rows.map(r => r.title))
    expect(rows.filter(r => r.self).map(r => r.id)).toEqual([net.nodes[0]?.peerId])
    // Every peer shows its backend; the two others are connected to this node.
    for (const r of rows) expect(r.text).toMatch(/wasm|cpu|tensorflow/)
    await page.waitForFunction("document.querySelectorAll('#peers .link.up').length === 2")
    // The graph: this node and two peers, an open connection to each.
    await page.waitForFunction("document.querySelectorAll('#graph line.edge.up').length === 2")
    const graphIds = await page.$$eval('#graph g.node', (els) => els.map(e => e.getAttribute('data-peer-id')))
    expect(graphIds.sort()).toEqual(net.nodes.map(n => n.peerId).sort())
  })

  it('submits an example job and shows its shard timeline, one bar per shard copy', async () => {
    await page.selectOption('#example', 'matmul-small')
    await page.click('#submit-button')
    await page.locator('#submit-status', { hasText: 'Submitted job' }).waitFor()
    const row = page.locator('[data-testid=job-row][data-state=succeeded]')
    await row.waitFor()
    const id = await row.getAttribute('data-job-id')
    expect(id).toMatch(/^[0-9a-f-]{36}$/)
    const job = await (await fetch(`${net.nodes[0]?.api ?? ''}/v1/jobs/${id ?? ''}`, { headers: authHeaders() })).json() as JobView
    expect(job.state).toBe('succeeded')
    expect(job.op).toBe('matmul')
    expect(job.inputs).toEqual({ a: { dtype: 'float32', shape: [256, 128] }, b: { dtype: 'float32', shape: [128, 64] } })

    // The timeline shows the final record: as many bars as copies in the record, every shard present.
    const copies = job.shards.flatMap(s => s.history.map(a => ({ shard: s.index, peer: a.peer, kind: a.kind })))
    await page.waitForFunction(`document.querySelectorAll('#timeline [data-testid=shard-bar]').length === ${copies.length} && document.querySelectorAll('#timeline .tl-bar.running').length === 0`)
    const bars = await page.$$eval('#timeline [data-testid=shard-bar]', (els) => els.map(e => ({
      shard: Number(e.getAttribute('data-shard')),
      peer: e.getAttribute('data-peer-id') ?? '',
      kind: e.getAttribute('data-kind') ?? ''
    })))
    const key = (c: { shard: number, peer: string, kind: string }): string => `${c.shard} ${c.peer} ${c.kind}`
    expect(bars.map(key).sort()).toEqual(copies.map(key).sort())
    expect([...new Set(bars.map(b => b.shard))].sort((a, b) => a - b)).toEqual(job.shards.map(s => s.index))
    // Shards ran on all three peers (two shards cut per peer), and each peer has a lane.
    expect(new Set(bars.map(b => b.peer))).toEqual(new Set(net.nodes.map(n => n.peerId)))
    expect(await page.locator('#timeline .lane:not(.axis-lane)').count()).toBe(3)
    expect(await page.locator('#tl-summary').textContent()).toContain(`${job.shards.length} shards on 3 peers`)

    mkdirSync(dirname(SCREENSHOT), { recursive: true })
    await page.screenshot({ path: SCREENSHOT, fullPage: true })
    expect(statSync(SCREENSHOT).size).toBeGreaterThan(10_000)
    expect(errors).toEqual([])
  })
})

describe('dashboard: a train job\'s curve', () => {
  let node: MeshNode

  beforeAll(async () => {
    node = await startNode()
  })

  afterAll(async () => {
    await node?.stop()
  })

  it('draws held-out accuracy per epoch for a selected train job, one point per epoch', async () => {
    const api = node.apiUrl ?? ''
    const rows = 64
    const x = Float32Array.from({ length: rows * 2 }, (_, i) => ((i * 7919) % 101) / 50 - 1)
    const y = Int32Array.from({ length: rows }, (_, r) => (x[2 * r] ?? 0) + (x[2 * r + 1] ?? 0) > 0 ? 1 : 0)
    const { encodeNpy } = await import('../../src/compute/npy.ts')
    const { packModel } = await import('../../src/compute/model.ts')
    const topology = { class_name: 'Sequential', config: { name: 'tiny', layers: [{ class_name: 'Dense', config: { name: 'out', units: 2, activation: 'softmax', batch_input_shape: [null, 2] } }] } }
    const form = new FormData()
    form.set('spec', JSON.stringify({ op: 'train', params: { optimizer: { name: 'adam', learningRate: 0.05 }, batchSize: 16, epochs: 3 } }))
    form.set('blob.model', new Blob([packModel({ modelTopology: topology, weightSpecs: [], weightData: new ArrayBuffer(0) }) as Uint8Array<ArrayBuffer>]), 'model.tmmodel')
    for (const name of ['x', 'xTest']) form.set(name, new Blob([encodeNpy({ dtype: 'float32', shape: [rows, 2], data: x }) as Uint8Array<ArrayBuffer>]), `${name}.npy`)
    for (const name of ['y', 'yTest']) form.set(name, new Blob([encodeNpy({ dtype: 'int32', shape: [rows], data: y }) as Uint8Array<ArrayBuffer>]), `${name}.npy`)
    const res = await fetch(`${api}/v1/jobs`, { method: 'POST', body: form, headers: { authorization: `Bearer ${TEST_TOKEN}` } })
    expect(res.status).toBe(202)
    const { id } = await res.json() as { id: string }
    const { page, errors } = await openPage(api, TEST_TOKEN, 'link')
    try {
      const row = page.locator(`[data-testid=job-row][data-job-id="${id}"][data-state=succeeded]`)
      await row.waitFor()
      await row.click()
      await page.locator('[data-testid=train-curve][data-points="3"]').waitFor()
      expect(await page.locator('[data-testid=train-curve] .curve-dot').count()).toBe(3)
      expect(await page.locator('.train-curve').textContent()).toMatch(/held-out accuracy [\d.]+% after epoch 3 · 12\/12 steps/)
      expect(errors).toEqual([])
    } finally {
      await page.close()
    }
  })
})

describe('dashboard cancel', () => {
  let node: MeshNode
  let release: () => void = () => {}

  beforeAll(async () => {
    // The job waits after its bids until the test lets it go: it is running for as long as the test needs.
    const held = new Promise<void>(resolve => { release = resolve })
    node = await startNode({ hooks: { afterBids: async () => { await held } } })
  })

  afterAll(async () => {
    release()
    await node?.stop()
  })

  it('cancels a running job from its row', async () => {
    const api = node.apiUrl ?? ''
    const { page, errors } = await openPage(api, TEST_TOKEN, 'link')
    try {
      await page.selectOption('#example', 'map-chain')
      await page.click('#submit-button')
      const running = page.locator('[data-testid=job-row][data-state=running]')
      await running.waitFor()
      const id = await running.getAttribute('data-job-id') ?? ''
      expect(node.jobs.get(id).state).toBe('running')
      await running.locator('[data-testid=cancel]').click()
      await page.locator(`[data-testid=job-row][data-job-id="${id}"][data-state=cancelled]`).waitFor()
      expect(node.jobs.get(id).state).toBe('cancelled')
      // No cancel button on a finished job.
      expect(await page.locator(`[data-testid=job-row][data-job-id="${id}"] [data-testid=cancel]`).count()).toBe(0)
      expect(errors).toEqual([])
    } finally {
      await page.close()
    }
  })
})
