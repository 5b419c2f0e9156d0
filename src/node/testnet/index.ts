import { fork } from 'node:child_process'
import { mkdtemp, mkdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { SWARM_KEY_FILE, generateApiToken, loadOrCreateSwarmKey, provideApiToken } from '../access/index.ts'
import type { ChildProcess } from 'node:child_process'

const BIN = fileURLToPath(new URL('../../../bin/tensormesh.js', import.meta.url))

/** How long a stopping daemon gets after SIGTERM before SIGKILL. */
const CHILD_STOP_GRACE_MS = 5000

export interface TestnetInit {
  nodes: number
  dataDir?: string
  backend?: string
  workers?: number
  advertIntervalMs?: number
  logLevel: string
  json: boolean
  /** Faults per node index (testing only), as `start --inject` takes them. */
  inject?: Map<number, string[]>
  /** The nodes' swarm key file; default a fresh one in the data folder, so every testnet is private. */
  swarmKey?: string
}

export interface TestnetMember {
  index: number
  peerId: string
  api: string
  pid: number
  multiaddrs: string[]
  /** The node's API token (null when it runs without one). */
  token: string | null
}

type ChildMessage =
  | { type: 'ready', peerId: string, multiaddrs: string[], api: string, token: string | null }
  | { type: 'peers', count: number }

interface Child {
  index: number
  proc: ChildProcess
  ready: Promise<TestnetMember>
  peers: number
  exited: boolean
}

/**
 * Runs N daemons as separate OS processes on 127.0.0.1, ports from the OS.
 * Node 0 starts first; the others bootstrap to it and find each other through
 * its adverts. Each child keeps an IPC channel to us: it reports readiness and
 * its peer count, and exits by itself when the channel closes (we died).
 */
export async function runTestnet (init: TestnetInit): Promise<number | undefined> {
  const ownDir = init.dataDir === undefined
  const base = ownDir ? await mkdtemp(join(tmpdir(), 'tensormesh-testnet-')) : resolve(init.dataDir ?? '.')
  await mkdir(base, { recursive: true })
  let swarmKey = init.swarmKey
  if (swarmKey === undefined) {
    swarmKey = join(base, SWARM_KEY_FILE)
    await loadOrCreateSwarmKey(swarmKey)
  }
  const children: Child[] = []
  let stopping = false
  let formed = false
  const started = performance.now()

  // One API token for the testnet's nodes (a node that already has one keeps it).
  const token = generateApiToken()
  await Promise.all(Array.from({ length: init.nodes }, async (_, i) => { await provideApiToken(join(base, `node-${i}`), token) }))

  const spawnNode = (index: number, bootstrap: string[]): Child => {
    const args = ['start', '--json', '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0',
      '--data-dir', join(base, `node-${index}`), '--log-level', init.logLevel, '--swarm-key', swarmKey]
    for (const b of bootstrap) args.push('--bootstrap', b)
    if (init.backend !== undefined) args.push('--backend', init.backend)
    if (init.workers !== undefined) args.push('--workers', String(init.workers))
    if (init.advertIntervalMs !== undefined) args.push('--advert-interval', String(init.advertIntervalMs))
    for (const fault of init.inject?.get(index) ?? []) args.push('--inject', fault)
    const proc = fork(BIN, args, { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
    const child: Child = { index, proc, peers: 0, exited: false, ready: Promise.resolve() as unknown as Promise<TestnetMember> }
    child.ready = new Promise<TestnetMember>((resolve, reject) => {
      proc.on('message', (msg: ChildMessage) => {
        if (msg.type === 'ready') resolve({ index, peerId: msg.peerId, api: msg.api, pid: proc.pid ?? 0, multiaddrs: msg.multiaddrs, token: msg.token })
        if (msg.type === 'peers') {
          child.peers = msg.count
          checkFormed()
        }
      })
      proc.on('exit', (code, signal) => {
        child.exited = true
        reject(new Error(`node ${index} exited before it was ready (${signal ?? `code ${code ?? '?'}`})`))
        if (!stopping) process.stderr.write(`testnet: node ${index} (pid ${proc.pid ?? '?'}) exited with ${signal ?? `code ${code ?? '?'}`}; the other nodes keep running\n`)
      })
    })
    child.ready.catch(() => {})
    children.push(child)
    return child
  }

  let onFormed: () => void = () => {}
  const formedPromise = new Promise<void>(resolve => { onFormed = resolve })
  const checkFormed = (): void => {
    if (formed || children.length < init.nodes) return
    if (children.every(c => c.peers >= init.nodes - 1)) {
      formed = true
      onFormed()
    }
  }

  const stopAll = async (): Promise<void> => {
    stopping = true
    await Promise.all(children.map(async c => {
      if (c.exited) return
      const gone = new Promise<void>(resolve => { c.proc.once('exit', () => { resolve() }) })
      c.proc.kill('SIGTERM')
      const timer = setTimeout(() => { c.proc.kill('SIGKILL') }, CHILD_STOP_GRACE_MS)
      await gone
      clearTimeout(timer)
    }))
    if (ownDir) await rm(base, { recursive: true, force: true })
  }

  let signals = 0
  const onSignal = (sig: string): void => {
    if (++signals > 1) {
      for (const c of children) c.proc.kill('SIGKILL')
      process.exit(1)
    }
    process.stderr.write(`testnet: ${sig}, stopping ${children.length} nodes\n`)
    stopAll().then(() => { process.exit(0) }, () => { process.exit(1) })
  }
  process.on('SIGINT', () => { onSignal('SIGINT') })
  process.on('SIGTERM', () => { onSignal('SIGTERM') })

  try {
    const first = await spawnNode(0, []).ready
    const boot = first.multiaddrs.find(a => a.includes('127.0.0.1')) ?? first.multiaddrs[0]
    if (boot === undefined) throw new Error('node 0 reported no listen address')
    for (let i = 1; i < init.nodes; i++) spawnNode(i, [boot])
    const members = await Promise.all(children.map(async c => await c.ready))
    checkFormed()
    await formedPromise
    const line = { nodes: members.map(m => ({ peerId: m.peerId, api: m.api, pid: m.pid, multiaddrs: m.multiaddrs, token: m.token })), swarmKey }
    if (init.json) {
      process.stdout.write(JSON.stringify(line) + '\n')
    } else {
      process.stdout.write(`testnet of ${init.nodes} nodes formed in ${((performance.now() - started) / 1000).toFixed(1)} s (Ctrl-C stops it)\n`)
      for (const m of members) process.stdout.write(`  node ${m.index}  pid ${m.pid}  api ${m.api}  ${m.peerId}\n`)
      const dashboard = members[0]
      if (dashboard !== undefined) process.stdout.write(`dashboard: ${dashboard.api}/${dashboard.token !== null ? `?token=${dashboard.token}` : ''}\n`)
    }
  } catch (err) {
    await stopAll()
    throw err
  }
  return undefined
}
