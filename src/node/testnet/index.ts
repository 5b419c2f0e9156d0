import { spawn } from 'node:child_process'
import { mkdtemp, mkdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { InvalidInputError } from '../../errors.ts'
import { SWARM_KEY_FILE, generateApiToken, loadOrCreateSwarmKey, provideApiToken } from '../access/index.ts'
import { NetnsTestnet, allowedCpus, findTaskset } from './netns.ts'
import type { NetnsNode } from './netns.ts'
import type { ChildProcess } from 'node:child_process'

export { LOSS_MODULUS, MAX_BANDWIDTH_BPS, MIN_BANDWIDTH_BPS, MAX_NETNS_NODES, NetnsPrerequisiteError, NetnsSetupError } from './netns.ts'

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
  /** Run each node in a network namespace of its own (Linux, root); see netns.ts. */
  netns?: TestnetNetnsInit
  /** Pin node i (and its worker threads) to CPU i mod the CPUs this process may use. */
  cpus?: boolean
}

export interface TestnetNetnsInit {
  /** Node indices behind a NAT router of their own (not all of them: someone must be reachable). */
  nat: number[]
  /** Each node's link rate in bit/s, both ways. */
  bandwidthBps?: number
  /** Share of packets dropped both ways, in percent (0 < pct < 100). */
  lossPct?: number
}

export interface TestnetMember {
  index: number
  peerId: string
  api: string
  pid: number
  multiaddrs: string[]
  /** The node's API token (null when it runs without one). */
  token: string | null
  /** With --netns: its namespace, its libp2p address and whether it is behind NAT. */
  netns?: string
  ip?: string
  nat?: boolean
  /** With --cpus: the CPU it is pinned to. */
  cpu?: number
}

type ChildMessage =
  | { type: 'listening', peerId: string, multiaddrs: string[] }
  | { type: 'ready', peerId: string, multiaddrs: string[], api: string, token: string | null }
  | { type: 'peers', count: number }

interface Child {
  index: number
  proc: ChildProcess
  ready: Promise<TestnetMember>
  /** Its libp2p addresses, as soon as it listens (before its workers are ready). */
  listening: Promise<string[]>
  peers: number
  exited: boolean
}

/**
 * Runs N daemons as separate OS processes, ports from the OS: on 127.0.0.1,
 * or (netns) each in a network namespace of its own on a bridge. The first
 * reachable node starts first; the others bootstrap to it and find each
 * other through its adverts. Each child keeps an IPC channel to us (through
 * `ip netns exec` and `taskset`, which exec the node in place): it reports
 * readiness and its peer count, and exits by itself when the channel closes
 * (we died).
 */
export async function runTestnet (init: TestnetInit): Promise<number | undefined> {
  // Before anything is made: what --netns and --cpus need.
  const tools = init.netns === undefined ? undefined : NetnsTestnet.preflight({ nodes: init.nodes, ...init.netns })
  const taskset = init.cpus === true ? findTaskset() : undefined
  const cpus = allowedCpus()
  const nat = new Set(init.netns?.nat ?? [])
  const firstIndex = Array.from({ length: init.nodes }, (_, i) => i).find(i => !nat.has(i))
  if (firstIndex === undefined) throw new InvalidInputError('every node is behind NAT: at least one must be reachable for the others to bootstrap to')

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
  const network = tools === undefined || init.netns === undefined ? undefined : new NetnsTestnet({ nodes: init.nodes, ...init.netns }, tools)
  const place = (index: number): NetnsNode | undefined => network?.node(index)

  // One API token for the testnet's nodes (a node that already has one keeps it).
  const token = generateApiToken()
  await Promise.all(Array.from({ length: init.nodes }, async (_, i) => { await provideApiToken(join(base, `node-${i}`), token) }))

  const spawnNode = (index: number, bootstrap: string[]): Child => {
    if (stopping) throw new Error('the testnet is stopping')
    const where = place(index)
    const listenIp = where?.ip ?? '127.0.0.1'
    const args = ['start', '--json', '--listen', `/ip4/${listenIp}/tcp/0`, '--api', `${where?.apiHost ?? '127.0.0.1'}:0`,
      '--data-dir', join(base, `node-${index}`), '--log-level', init.logLevel, '--swarm-key', swarmKey]
    for (const b of bootstrap) args.push('--bootstrap', b)
    if (init.backend !== undefined) args.push('--backend', init.backend)
    // Nodes of one machine share its cores: more workers than cores only adds
    // start-up (each worker loads TF.js and calibrates: ~0.5 CPU-s) and contention.
    // Pinned nodes (--cpus) see one core each and take one worker anyway.
    const workers = init.workers ?? (taskset === undefined ? Math.max(1, Math.floor(cpus.length / init.nodes)) : undefined)
    if (workers !== undefined) args.push('--workers', String(workers))
    if (init.advertIntervalMs !== undefined) args.push('--advert-interval', String(init.advertIntervalMs))
    for (const fault of init.inject?.get(index) ?? []) args.push('--inject', fault)
    // `ip netns exec NS` and `taskset -c K` each exec the next word in place: the pid we get is the node's, and its IPC fd survives.
    const cpu = taskset === undefined ? undefined : cpus[index % cpus.length]
    const command = [...(where?.prefix ?? []), ...(taskset === undefined ? [] : [taskset, '-c', String(cpu)]), process.execPath, ...process.execArgv, BIN, ...args]
    const proc = spawn(command[0] ?? process.execPath, command.slice(1), { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
    let listened: (addrs: string[]) => void = () => {}
    const child: Child = { index, proc, peers: 0, exited: false, ready: Promise.resolve() as unknown as Promise<TestnetMember>, listening: new Promise(resolve => { listened = resolve }) }
    child.ready = new Promise<TestnetMember>((resolve, reject) => {
      proc.on('message', (msg: ChildMessage) => {
        if (msg.type === 'listening') listened(msg.multiaddrs)
        if (msg.type === 'ready') {
          listened(msg.multiaddrs)
          resolve({
            index, peerId: msg.peerId, api: msg.api, pid: proc.pid ?? 0, multiaddrs: msg.multiaddrs, token: msg.token,
            ...(where === undefined ? {} : { netns: where.netns, ip: where.ip, nat: where.nat }),
            ...(cpu === undefined ? {} : { cpu })
          })
        }
        if (msg.type === 'peers') {
          child.peers = msg.count
          checkFormed()
        }
      })
      proc.on('error', (err) => { reject(new Error(`node ${index} could not start: ${err.message}`)) })
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

  // Ordered shutdown: the nodes first (a namespace lives while a process is in it), then the network, then the data.
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
    try {
      await network?.destroy()
    } finally {
      if (ownDir) await rm(base, { recursive: true, force: true })
    }
  }

  let signals = 0
  const onSignal = (sig: string): void => {
    // A second signal: no more waiting; the network's guard removes what is left once we are gone.
    if (++signals > 1) {
      for (const c of children) c.proc.kill('SIGKILL')
      process.exit(1)
    }
    process.stderr.write(`testnet: ${sig}, stopping ${children.length} nodes\n`)
    stopAll().then(() => { process.exit(0) }, (err: unknown) => {
      process.stderr.write(`testnet: ${err instanceof Error ? err.message : String(err)}\n`)
      process.exit(1)
    })
  }
  process.on('SIGINT', () => { onSignal('SIGINT') })
  process.on('SIGTERM', () => { onSignal('SIGTERM') })

  try {
    await network?.create()
    // The others start once the first listens: its workers calibrate meanwhile, and theirs with it.
    const firstChild = spawnNode(firstIndex, [])
    const firstAddrs = await Promise.race([firstChild.listening, firstChild.ready.then(m => m.multiaddrs)])
    const firstIp = place(firstIndex)?.ip ?? '127.0.0.1'
    const boot = firstAddrs.find(a => a.includes(`/ip4/${firstIp}/`)) ?? firstAddrs[0]
    if (boot === undefined) throw new Error(`node ${firstIndex} reported no listen address`)
    for (let i = 0; i < init.nodes; i++) if (i !== firstIndex) spawnNode(i, [boot])
    const members = (await Promise.all(children.map(async c => await c.ready))).sort((a, b) => a.index - b.index)
    checkFormed()
    await formedPromise
    const line = {
      nodes: members.map(m => ({
        peerId: m.peerId, api: m.api, pid: m.pid, multiaddrs: m.multiaddrs, token: m.token,
        ...(m.netns === undefined ? {} : { netns: m.netns, ip: m.ip, nat: m.nat }),
        ...(m.cpu === undefined ? {} : { cpu: m.cpu })
      })),
      swarmKey,
      ...(network === undefined ? {} : { subnet: network.subnet })
    }
    if (init.json) {
      process.stdout.write(JSON.stringify(line) + '\n')
    } else {
      const where = network === undefined ? '' : ` in network namespaces on bridge ${network.bridge} (${network.subnet ?? '?'})`
      process.stdout.write(`testnet of ${init.nodes} nodes${where} formed in ${((performance.now() - started) / 1000).toFixed(1)} s (Ctrl-C stops it)\n`)
      for (const m of members) {
        const net = m.netns === undefined ? '' : `  netns ${m.netns}  ip ${m.ip ?? '?'}${m.nat === true ? ' (behind NAT)' : ''}`
        process.stdout.write(`  node ${m.index}  pid ${m.pid}${m.cpu === undefined ? '' : `  cpu ${m.cpu}`}${net}  api ${m.api}  ${m.peerId}\n`)
      }
      const dashboard = members[0]
      if (dashboard !== undefined) process.stdout.write(`dashboard: ${dashboard.api}/${dashboard.token !== null ? `?token=${dashboard.token}` : ''}\n`)
    }
  } catch (err) {
    await stopAll().catch(() => {})
    throw err
  }
  return undefined
}
