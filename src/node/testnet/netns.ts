import { spawn } from 'node:child_process'
import { accessSync, constants, existsSync, readFileSync } from 'node:fs'
import { delimiter, join } from 'node:path'
import { TensormeshError } from '../../errors.ts'
import type { ChildProcess } from 'node:child_process'

/*
 * A testnet whose nodes each live in a Linux network namespace.
 *
 * Address plan (every address from 198.18.0.0/15, RFC 2544's benchmarking
 * range, and from no other range):
 *
 *   198.18.B.0/24      the bridge, in the host namespace: the host at .1,
 *                      reachable node i at .(10+i), NAT router i's outer leg
 *                      at .(100+i). B is even: the testnet takes the /23
 *                      198.18.B.0/23, chosen so that it overlaps no route of
 *                      the host namespace (so two testnets never collide).
 *   198.18.B+1.4i/30   management link of NATed node i: host .4i+1 (host
 *                      namespace), node .4i+2. Carries the node's HTTP API
 *                      only; no other namespace has a route to it.
 *   198.19.i.0/30      inner link of NATed node i: router .1, node .2. It
 *                      exists only inside those two namespaces.
 *
 * Node namespaces have no default route (only their connected subnets), so
 * nothing routes through the host; a NATed node's default route is its
 * router, which masquerades out of its bridge leg and forwards nothing
 * inbound but replies (ct state established,related), as a home router does.
 *
 * Lifecycle: `NetnsTestnet.preflight()` (Linux, root, tools), `new`, `create()` (guard first, then
 * bridge, namespaces, links, shaping, nft tables), `node(i)` (spawn prefix
 * and addresses), `destroy()`. A guard process started at the beginning of
 * `create()` deletes whatever is left if this process dies without
 * `destroy()` (SIGKILL included).
 */

/** Interface names are at most IFNAMSIZ - 1 = 15 bytes (linux/if.h). */
export const MAX_IFNAME_LENGTH = 15

/** Most nodes a namespaced testnet takes: the management /24 holds 64 /30 links (and --nodes allows 64). */
export const MAX_NETNS_NODES = 64

/** Where bridge + management blocks come from: the lower half of 198.18.0.0/15, 128 /23s. */
const BLOCK_SPACE = { address: '198.18.0.0', prefix: 16 } as const

/** One testnet's block: a /23, the bridge's /24 and the management links' /24. */
const BLOCK_PREFIX = 23

/** The bridge subnet's length (the lower /24 of the block). */
const BRIDGE_PREFIX = 24

/** Where the NAT routers' inner links come from: the upper half of the range, one /24 per node index. */
const INNER_SPACE = '198.19.0.0'

/** A point-to-point link (management, NAT inner): a /30, two usable addresses. */
const LINK_PREFIX = 30

/** The host's address on the bridge: .1, the usual gateway-style first address. */
const HOST_ON_BRIDGE = 1

/** Reachable node i is at .(10 + i): 10..73 for 64 nodes, clear of the host and the routers. */
const NODE_HOST_BASE = 10

/** NAT router i's bridge leg is at .(100 + i): 100..163, clear of the nodes and the broadcast .255. */
const ROUTER_HOST_BASE = 100

/**
 * Two testnets starting at the same moment may pick the same free block;
 * each checks after claiming it and moves on when it collided. This many
 * tries is far more than two or three testnets at once need.
 */
const BLOCK_ATTEMPTS = 16

/** Up to this long a random pause after a clash: a few `ip` calls' time (each takes ~2 ms here). */
const BLOCK_CLASH_JITTER_MS = 50

/**
 * tbf's queue: 50 ms of traffic at the rate, as a router's buffer (tbf needs
 * a limit or a latency; 50 ms keeps a TCP flow at the rate without a large
 * standing queue).
 */
const TBF_LATENCY_MS = 50

/**
 * tbf burst: the larger of 2 ms of traffic at the rate and one veth GSO
 * super-packet. Measured on this kernel (6.18, two cores, a Node `net`
 * stream over veth): at 1gbit a 16 KiB burst gave 622 Mbit/s and 64 KiB 942; at
 * 100mbit 1600 B gave 86 Mbit/s and 64 KiB 96. 2 ms (250 KB at 1gbit)
 * covers the qdisc watchdog's timer slack.
 */
const TBF_BURST_WINDOW_S = 0.002

/**
 * A veth's gso_max_size is 65536 bytes: a TCP super-packet of that size plus
 * its headers should fit in the burst, or tbf must split it into segments
 * itself (this kernel does, but such bursts came out below the rate: 1600 B
 * gave 86 % of 100mbit). 68 KiB leaves room for the headers.
 */
const TBF_MIN_BURST_BYTES = 68 * 1024

/**
 * --bandwidth bounds. Below 100kbit the minimum burst alone is more than 5 s
 * of traffic, so the link no longer behaves as a rate; 100gbit is far past
 * what a veth carries here (12.7 Gbit/s measured unshaped).
 */
export const MIN_BANDWIDTH_BPS = 100_000
export const MAX_BANDWIDTH_BPS = 100_000_000_000

/**
 * `numgen random mod LOSS_MODULUS < threshold drop`: 1e6 steps resolve a
 * loss rate to 0.0001 %.
 */
export const LOSS_MODULUS = 1_000_000

/** After the testnet's death the guard gives processes in its namespaces this long after SIGTERM (in 0.1 s steps) before SIGKILL. */
const GUARD_TERM_STEPS = 50

/** Where a routing table entry lives, as `ip -j route` prints it. */
interface RouteEntry { dst?: string, dev?: string }

/** `--netns` cannot work here: not root, a tool missing, not Linux. The CLI exits 2. */
export class NetnsPrerequisiteError extends TensormeshError {
  constructor (message: string) {
    super('ERR_NETNS_PREREQUISITE', message)
  }
}

/** A command that sets up or tears down the namespaced network failed. */
export class NetnsSetupError extends TensormeshError {
  constructor (message: string) {
    super('ERR_NETNS_SETUP', message)
  }
}

export interface NetnsInit {
  nodes: number
  /** Node indices behind a NAT router of their own. */
  nat: readonly number[]
  /** Each node's link rate in bit/s, both ways (tc tbf); none: unshaped. */
  bandwidthBps?: number
  /** Share of packets dropped both ways on each node's link, in percent (nft numgen). */
  lossPct?: number
  /** Names carry this id; default this process's pid. */
  id?: number
}

/** What the orchestrator needs to run node i. */
export interface NetnsNode {
  index: number
  /** The node's namespace. */
  netns: string
  /** Its libp2p address: on the bridge, or on the inner link behind its router. */
  ip: string
  /** Where its HTTP API binds: its bridge address, or its end of the management link (both reachable from the host namespace). */
  apiHost: string
  nat: boolean
  /** Command words that run a program in the node's namespace (`ip netns exec NS`). */
  prefix: string[]
}

/** Tools the namespaced testnet runs, resolved to absolute paths. */
export interface NetnsTools {
  ip: string
  nft?: string
  tc?: string
}

/** An executable on PATH, or undefined. */
export function findExecutable (name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue
    const path = join(dir, name)
    try {
      accessSync(path, constants.X_OK)
      return path
    } catch {}
  }
  return undefined
}

/**
 * What --netns needs, checked before anything is made: Linux, root, `ip`,
 * and `nft` for NAT or loss, `tc` for bandwidth.
 */
export function preflightNetns (init: Pick<NetnsInit, 'nat' | 'bandwidthBps' | 'lossPct' | 'nodes'>): NetnsTools {
  if (process.platform !== 'linux') throw new NetnsPrerequisiteError(`--netns needs Linux network namespaces; this is ${process.platform}`)
  const uid = process.getuid?.()
  if (uid !== 0) throw new NetnsPrerequisiteError(`--netns needs root (to create network namespaces); this process runs as uid ${uid ?? '?'}`)
  if (init.nodes > MAX_NETNS_NODES) throw new NetnsPrerequisiteError(`--netns takes at most ${MAX_NETNS_NODES} nodes, got ${init.nodes}`)
  const missing: string[] = []
  const ip = findExecutable('ip')
  if (ip === undefined) missing.push('`ip` (iproute2)')
  const needNft = init.nat.length > 0 || init.lossPct !== undefined
  const nft = needNft ? findExecutable('nft') : undefined
  if (needNft && nft === undefined) missing.push(`\`nft\` (nftables, for ${[init.nat.length > 0 ? '--nat' : '', init.lossPct !== undefined ? '--loss' : ''].filter(Boolean).join(' and ')})`)
  const needTc = init.bandwidthBps !== undefined
  const tc = needTc ? findExecutable('tc') : undefined
  if (needTc && tc === undefined) missing.push('`tc` (iproute2, for --bandwidth)')
  if (ip === undefined || missing.length > 0) throw new NetnsPrerequisiteError(`--netns needs ${missing.join(', ')} on PATH; install ${needNft ? 'iproute2 and nftables' : 'iproute2'}`)
  return { ip, nft, tc }
}

/** `taskset` for --cpus, or a NetnsPrerequisiteError. */
export function findTaskset (): string {
  const taskset = findExecutable('taskset')
  if (taskset === undefined) throw new NetnsPrerequisiteError('--cpus needs `taskset` (util-linux) on PATH')
  return taskset
}

/** The CPUs this process may run on (Cpus_allowed_list), so that `--cpus` pins inside a narrowed set too. */
export function allowedCpus (): number[] {
  try {
    const line = /^Cpus_allowed_list:\s*(.+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? ''
    const cpus: number[] = []
    for (const part of line.split(',')) {
      const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim())
      if (m === null) continue
      for (let c = Number(m[1]); c <= Number(m[2] ?? m[1]); c++) cpus.push(c)
    }
    if (cpus.length > 0) return cpus
  } catch {}
  return [0]
}

function ipToInt (ip: string): number {
  return ip.split('.').reduce((n, octet) => n * 256 + Number(octet), 0)
}

function intToIp (n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.')
}

/** Do a.b.c.d/len and e.f.g.h/len2 share any address? */
function overlaps (a: number, aLen: number, b: number, bLen: number): boolean {
  const len = Math.min(aLen, bLen)
  if (len === 0) return true
  const mask = len === 32 ? 0xffffffff : (~(0xffffffff >>> len)) >>> 0
  return ((a & mask) >>> 0) === ((b & mask) >>> 0)
}

/** A route's destination as [address, prefix length]; undefined for `default` (it overlaps everything and says nothing of local use). */
function routePrefix (dst: string | undefined): [number, number] | undefined {
  if (dst === undefined || dst === 'default') return undefined
  const m = /^(\d+\.\d+\.\d+\.\d+)(?:\/(\d+))?$/.exec(dst)
  if (m === null) return undefined
  return [ipToInt(m[1] ?? '0.0.0.0'), Number(m[2] ?? 32)]
}

async function exec (file: string, args: string[], input?: string): Promise<string> {
  return await new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout?.on('data', (d: Buffer) => { stdout += d.toString() })
    child.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
    child.on('error', (err) => { reject(new NetnsSetupError(`${file} ${args.join(' ')}: ${err.message}`)) })
    child.on('close', (code) => {
      if (code === 0) resolve(stdout)
      else reject(new NetnsSetupError(`${[file, ...args].join(' ')} failed (exit ${code ?? '?'}): ${stderr.trim().split('\n')[0] ?? ''}`))
    })
    if (input !== undefined) child.stdin?.end(input)
  })
}

export class NetnsTestnet {
  readonly id: number
  private readonly init: NetnsInit
  private readonly tools: NetnsTools
  private readonly nat: ReadonlySet<number>
  private readonly prefix: string
  /** The block's first address (198.18.B.0), once create() claimed one. */
  private block?: number
  private guard?: ChildProcess
  /** create() in flight: destroy() waits for it, so that a signal during setup leaves nothing behind. */
  private creating?: Promise<void>
  /** What create() made, in order, so destroy() removes exactly that. */
  private readonly madeNamespaces: string[] = []
  private readonly madeLinks: string[] = []
  private readonly ipv6: boolean

  /** What --netns needs here, checked before anything is made (see preflightNetns). */
  static preflight (init: Pick<NetnsInit, 'nat' | 'bandwidthBps' | 'lossPct' | 'nodes'>): NetnsTools {
    return preflightNetns(init)
  }

  constructor (init: NetnsInit, tools: NetnsTools) {
    this.init = init
    this.tools = tools
    this.id = init.id ?? process.pid
    this.nat = new Set(init.nat)
    // "tm" + pid (at most 7 digits: pid_max is at most 2^22) + "-": 10 bytes, so that "n63p" still fits in 15.
    this.prefix = `tm${this.id}-`
    this.ipv6 = existsSync('/proc/sys/net/ipv6')
    for (const name of this.allLinkNames()) {
      if (name.length > MAX_IFNAME_LENGTH) throw new NetnsSetupError(`interface name ${name} is longer than ${MAX_IFNAME_LENGTH} bytes`)
    }
  }

  // Names. Host-namespace links carry the pid; so do those inside namespaces, so `ip -n NS link` tells whose they are.
  get bridge (): string { return `${this.prefix}br` }
  nodeNs (i: number): string { return `tm-${this.id}-node${i}` }
  routerNs (i: number): string { return `tm-${this.id}-nat${i}` }
  /** Reachable node i's veth: host end (bridge port), node end. */
  private nodeLink (i: number): [string, string] { return [`${this.prefix}n${i}`, `${this.prefix}n${i}p`] }
  /** NAT router i's outer veth: host end (bridge port), router end. */
  private routerLink (i: number): [string, string] { return [`${this.prefix}r${i}`, `${this.prefix}r${i}p`] }
  /** NATed node i's inner veth: router end, node end (both outside the host namespace). */
  private innerLink (i: number): [string, string] { return [`${this.prefix}i${i}`, `${this.prefix}i${i}p`] }
  /** NATed node i's management veth: host end, node end. */
  private mgmtLink (i: number): [string, string] { return [`${this.prefix}m${i}`, `${this.prefix}m${i}p`] }
  private get lossTable (): string { return `tm${this.id}_loss` }
  private get natTable (): string { return `tm${this.id}_nat` }

  private allLinkNames (): string[] {
    const names = [this.bridge]
    for (let i = 0; i < this.init.nodes; i++) {
      names.push(...(this.nat.has(i) ? [...this.routerLink(i), ...this.innerLink(i), ...this.mgmtLink(i)] : this.nodeLink(i)))
    }
    return names
  }

  /** Every namespace this testnet will make. */
  namespaces (): string[] {
    const out: string[] = []
    for (let i = 0; i < this.init.nodes; i++) {
      out.push(this.nodeNs(i))
      if (this.nat.has(i)) out.push(this.routerNs(i))
    }
    return out
  }

  /** The links with an end in the host namespace (deleting one end deletes its peer). */
  private hostLinks (): string[] {
    const out = [this.bridge]
    for (let i = 0; i < this.init.nodes; i++) {
      if (this.nat.has(i)) out.push(this.routerLink(i)[0], this.mgmtLink(i)[0])
      else out.push(this.nodeLink(i)[0])
    }
    return out
  }

  /** The bridge subnet (198.18.B.0/24), once created. */
  get subnet (): string | undefined {
    return this.block === undefined ? undefined : `${intToIp(this.block)}/${BRIDGE_PREFIX}`
  }

  private addr (offset: number): string {
    if (this.block === undefined) throw new NetnsSetupError('the testnet network is not created yet')
    return intToIp(this.block + offset)
  }

  private bridgeIp (i: number): string { return this.addr(this.nat.has(i) ? ROUTER_HOST_BASE + i : NODE_HOST_BASE + i) }
  private mgmtIp (i: number, side: 'host' | 'node'): string { return this.addr(256 + 4 * i + (side === 'host' ? 1 : 2)) }
  private innerIp (i: number, side: 'router' | 'node'): string { return intToIp(ipToInt(INNER_SPACE) + 256 * i + (side === 'router' ? 1 : 2)) }

  /** Node i's namespace, addresses and spawn prefix. */
  node (i: number): NetnsNode {
    const nat = this.nat.has(i)
    return {
      index: i,
      netns: this.nodeNs(i),
      ip: nat ? this.innerIp(i, 'node') : this.bridgeIp(i),
      apiHost: nat ? this.mgmtIp(i, 'node') : this.bridgeIp(i),
      nat,
      prefix: [this.tools.ip, 'netns', 'exec', this.nodeNs(i)]
    }
  }

  private async ip (...args: string[]): Promise<string> {
    return await exec(this.tools.ip, args)
  }

  /** Run a shell snippet inside a namespace (for /proc/sys writes, which have no `ip` verb). */
  private async inNs (ns: string, file: string, args: string[], input?: string): Promise<string> {
    return await exec(this.tools.ip, ['netns', 'exec', ns, file, ...args], input)
  }

  /**
   * Makes the network. On failure it removes what it made before throwing;
   * the guard covers this process dying half-way.
   */
  async create (): Promise<void> {
    if (this.creating !== undefined) throw new NetnsSetupError('create() was called twice')
    this.creating = this.doCreate()
    await this.creating
  }

  private async doCreate (): Promise<void> {
    this.startGuard()
    try {
      await this.createBridge()
      for (let i = 0; i < this.init.nodes; i++) {
        if (this.nat.has(i)) await this.createNatNode(i)
        else await this.createReachableNode(i)
      }
    } catch (err) {
      await this.teardown().catch(() => {})
      throw err
    }
  }

  /** New interfaces get no IPv6 link-local address: every address of the testnet is from 198.18.0.0/15. */
  private async noIpv6 (dev: string, ns?: string): Promise<void> {
    if (!this.ipv6) return
    await this.ip(...(ns === undefined ? [] : ['-n', ns]), 'link', 'set', 'dev', dev, 'addrgenmode', 'none')
  }

  private async routes (): Promise<RouteEntry[]> {
    return JSON.parse(await this.ip('-j', '-4', 'route', 'show', 'table', 'all')) as RouteEntry[]
  }

  /** The /23 blocks of 198.18.0.0/16 that no host route overlaps, starting at one picked by our id so that testnets started together try different ones first. */
  private async freeBlocks (): Promise<number[]> {
    const routes = (await this.routes()).map(r => routePrefix(r.dst)).filter((p): p is [number, number] => p !== undefined)
    const count = 2 ** (BLOCK_PREFIX - BLOCK_SPACE.prefix)
    const base = ipToInt(BLOCK_SPACE.address)
    const out: number[] = []
    for (let k = 0; k < count; k++) {
      const block = base + ((k + this.id) % count) * 2 ** (32 - BLOCK_PREFIX)
      if (!routes.some(([addr, len]) => overlaps(addr, len, block, BLOCK_PREFIX))) out.push(block)
    }
    return out
  }

  private async createBridge (): Promise<void> {
    await this.ip('link', 'add', this.bridge, 'type', 'bridge')
    this.madeLinks.push(this.bridge)
    await this.noIpv6(this.bridge)
    await this.ip('link', 'set', 'dev', this.bridge, 'up')
    const clashed = new Set<number>()
    for (let attempt = 0; attempt < BLOCK_ATTEMPTS; attempt++) {
      const block = (await this.freeBlocks()).find(b => !clashed.has(b))
      if (block === undefined) throw new NetnsSetupError(`no /${BLOCK_PREFIX} in ${BLOCK_SPACE.address}/${BLOCK_SPACE.prefix} is free of host routes`)
      const hostAddr = `${intToIp(block + HOST_ON_BRIDGE)}/${BRIDGE_PREFIX}`
      await this.ip('addr', 'add', hostAddr, 'dev', this.bridge)
      // Claimed: the bridge's route is in the table now. Did another testnet claim the same block meanwhile?
      const clash = (await this.routes()).some(r => {
        const p = routePrefix(r.dst)
        return p !== undefined && r.dev !== this.bridge && overlaps(p[0], p[1], block, BLOCK_PREFIX)
      })
      if (!clash) {
        this.block = block
        return
      }
      await this.ip('addr', 'del', hostAddr, 'dev', this.bridge)
      clashed.add(block)
      // Both sides of a clash back off; a random pause keeps them from moving to the next block in step.
      await new Promise(resolve => setTimeout(resolve, Math.random() * BLOCK_CLASH_JITTER_MS))
    }
    throw new NetnsSetupError(`could not claim a free /${BLOCK_PREFIX} in ${BLOCK_SPACE.address}/${BLOCK_SPACE.prefix} after ${BLOCK_ATTEMPTS} tries`)
  }

  private async createNs (ns: string): Promise<void> {
    await this.ip('netns', 'add', ns)
    this.madeNamespaces.push(ns)
    await this.ip('-n', ns, 'link', 'set', 'dev', 'lo', 'up')
  }

  /** A veth with one end on the bridge (host namespace) and the other in `ns` with `addr`/24, both up. */
  private async bridgePort ([hostEnd, nsEnd]: [string, string], ns: string, addr: string): Promise<void> {
    await this.ip('link', 'add', hostEnd, 'type', 'veth', 'peer', 'name', nsEnd, 'netns', ns)
    this.madeLinks.push(hostEnd)
    await this.noIpv6(hostEnd)
    await this.noIpv6(nsEnd, ns)
    await this.ip('link', 'set', 'dev', hostEnd, 'master', this.bridge, 'up')
    await this.ip('-n', ns, 'addr', 'add', `${addr}/${BRIDGE_PREFIX}`, 'dev', nsEnd)
    await this.ip('-n', ns, 'link', 'set', 'dev', nsEnd, 'up')
  }

  private async createReachableNode (i: number): Promise<void> {
    const ns = this.nodeNs(i)
    await this.createNs(ns)
    const link = this.nodeLink(i)
    await this.bridgePort(link, ns, this.bridgeIp(i))
    await this.shape(link[0], undefined, link[1], ns)
    await this.addLoss(ns, link[1])
  }

  private async createNatNode (i: number): Promise<void> {
    const ns = this.nodeNs(i)
    const router = this.routerNs(i)
    await this.createNs(router)
    await this.createNs(ns)
    const outer = this.routerLink(i)
    await this.bridgePort(outer, router, this.bridgeIp(i))
    // Inner link, router <-> node, made inside the router's namespace: it never appears in the host's.
    const [routerEnd, nodeEnd] = this.innerLink(i)
    await this.ip('-n', router, 'link', 'add', routerEnd, 'type', 'veth', 'peer', 'name', nodeEnd, 'netns', ns)
    await this.noIpv6(routerEnd, router)
    await this.noIpv6(nodeEnd, ns)
    await this.ip('-n', router, 'addr', 'add', `${this.innerIp(i, 'router')}/${LINK_PREFIX}`, 'dev', routerEnd)
    await this.ip('-n', router, 'link', 'set', 'dev', routerEnd, 'up')
    await this.ip('-n', ns, 'addr', 'add', `${this.innerIp(i, 'node')}/${LINK_PREFIX}`, 'dev', nodeEnd)
    await this.ip('-n', ns, 'link', 'set', 'dev', nodeEnd, 'up')
    await this.ip('-n', ns, 'route', 'add', 'default', 'via', this.innerIp(i, 'router'), 'dev', nodeEnd)
    await this.inNs(router, '/bin/sh', ['-c', 'echo 1 > /proc/sys/net/ipv4/ip_forward'])
    await this.nft(router, `table ip ${this.natTable} {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "${outer[1]}" masquerade
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "${routerEnd}" oifname "${outer[1]}" accept
  }
}
`)
    // Management link host <-> node for the API: only the host namespace routes to it.
    const [mgmtHost, mgmtNode] = this.mgmtLink(i)
    await this.ip('link', 'add', mgmtHost, 'type', 'veth', 'peer', 'name', mgmtNode, 'netns', ns)
    this.madeLinks.push(mgmtHost)
    await this.noIpv6(mgmtHost)
    await this.noIpv6(mgmtNode, ns)
    await this.ip('addr', 'add', `${this.mgmtIp(i, 'host')}/${LINK_PREFIX}`, 'dev', mgmtHost)
    await this.ip('link', 'set', 'dev', mgmtHost, 'up')
    await this.ip('-n', ns, 'addr', 'add', `${this.mgmtIp(i, 'node')}/${LINK_PREFIX}`, 'dev', mgmtNode)
    await this.ip('-n', ns, 'link', 'set', 'dev', mgmtNode, 'up')
    // The NATed node's own link is its inner veth: shape and drop there, as on a reachable node's veth.
    await this.shape(routerEnd, router, nodeEnd, ns)
    await this.addLoss(ns, nodeEnd)
  }

  /** tbf on both ends of a node's link: each end shapes what it sends, so the link is limited both ways. */
  private async shape (a: string, aNs: string | undefined, b: string, bNs: string | undefined): Promise<void> {
    const bps = this.init.bandwidthBps
    if (bps === undefined) return
    const tc = this.tools.tc
    if (tc === undefined) throw new NetnsSetupError('--bandwidth needs tc')
    const burst = Math.max(TBF_MIN_BURST_BYTES, Math.ceil(bps / 8 * TBF_BURST_WINDOW_S))
    for (const [dev, ns] of [[a, aNs], [b, bNs]] as const) {
      await exec(tc, [...(ns === undefined ? [] : ['-n', ns]), 'qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', `${bps}bit`, 'burst', String(burst), 'latency', `${TBF_LATENCY_MS}ms`])
    }
  }

  /**
   * Drops the loss share of packets in and out of `dev`, inside the node's
   * namespace (never in the host's). Each chain counts what it saw and what
   * it dropped, so that `nft list table` shows the share a run really lost.
   */
  private async addLoss (ns: string, dev: string): Promise<void> {
    const pct = this.init.lossPct
    if (pct === undefined) return
    const threshold = Math.round(pct / 100 * LOSS_MODULUS)
    await this.nft(ns, `table inet ${this.lossTable} {
  chain loss_in {
    type filter hook input priority filter; policy accept;
    iifname "${dev}" counter
    iifname "${dev}" numgen random mod ${LOSS_MODULUS} < ${threshold} counter drop
  }
  chain loss_out {
    type filter hook output priority filter; policy accept;
    oifname "${dev}" counter
    oifname "${dev}" numgen random mod ${LOSS_MODULUS} < ${threshold} counter drop
  }
}
`)
    // nft sees packets before GSO splits them: a dropped 64 KiB super-packet
    // would lose ~45 segments at once (measured: 1% dropped at the output hook
    // took 30 KB a packet, not 1.5 KB). One segment per packet from every
    // sender: each node's end of its link, and the bridge, which carries the
    // host's own traffic (its API calls). Routers and bridge ports only forward.
    await this.ip('-n', ns, 'link', 'set', 'dev', dev, 'gso_max_segs', '1')
    await this.ip('link', 'set', 'dev', this.bridge, 'gso_max_segs', '1')
  }

  private async nft (ns: string, ruleset: string): Promise<void> {
    const nft = this.tools.nft
    if (nft === undefined) throw new NetnsSetupError('--nat and --loss need nft')
    await this.inNs(ns, nft, ['-f', '-'], ruleset)
  }

  /**
   * The guard: a shell that ignores SIGINT, SIGTERM and SIGHUP, in its own
   * session, reading a pipe from us. When the pipe reaches EOF without the
   * word "disarm" (we died, even by SIGKILL), it ends what runs in our
   * namespaces and deletes every namespace and host link of ours.
   */
  private startGuard (): void {
    const ip = this.tools.ip
    const nss = this.namespaces().join(' ')
    const links = this.hostLinks().join(' ')
    const script = `trap '' INT TERM HUP
IFS= read -r msg
[ "$msg" = disarm ] && exit 0
for ns in ${nss}; do pids=$('${ip}' netns pids "$ns" 2>/dev/null); [ -n "$pids" ] && kill $pids 2>/dev/null; done
n=0
while [ $n -lt ${GUARD_TERM_STEPS} ]; do
  left=; for ns in ${nss}; do left="$left$('${ip}' netns pids "$ns" 2>/dev/null)"; done
  [ -z "$left" ] && break
  sleep 0.1; n=$((n+1))
done
for ns in ${nss}; do pids=$('${ip}' netns pids "$ns" 2>/dev/null); [ -n "$pids" ] && kill -9 $pids 2>/dev/null; done
for ns in ${nss}; do '${ip}' netns del "$ns" 2>/dev/null; done
for link in ${links}; do '${ip}' link del "$link" 2>/dev/null; done
exit 0
`
    const guard = spawn('/bin/sh', ['-c', script], { stdio: ['pipe', 'ignore', 'ignore'], detached: true })
    guard.on('error', () => {})
    guard.stdin?.on('error', () => {})
    guard.unref()
    this.guard = guard
  }

  /**
   * Removes every namespace and host link this testnet made (their qdiscs
   * and nft tables go with them). The nodes must have exited: a namespace
   * lives on while a process is in it. Disarms the guard when all went.
   */
  async destroy (): Promise<void> {
    await this.creating?.catch(() => {})
    await this.teardown()
  }

  private async teardown (): Promise<void> {
    const failures: string[] = []
    for (const ns of this.madeNamespaces.splice(0).reverse()) {
      await this.ip('netns', 'del', ns).catch((err: Error) => { failures.push(err.message) })
    }
    for (const link of this.madeLinks.splice(0).reverse()) {
      // A veth's host end goes with its peer's namespace: only what is still there needs deleting.
      if (!existsSync(`/sys/class/net/${link}`)) continue
      await this.ip('link', 'del', link).catch((err: Error) => { if (existsSync(`/sys/class/net/${link}`)) failures.push(err.message) })
    }
    const guard = this.guard
    this.guard = undefined
    if (failures.length === 0) guard?.stdin?.end('disarm\n')
    else guard?.stdin?.end()
    if (failures.length > 0) throw new NetnsSetupError(`clean-up failed: ${failures.join('; ')}`)
  }
}
