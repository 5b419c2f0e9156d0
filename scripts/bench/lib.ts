import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { encodeNpy } from '../../src/compute/npy.ts'
import { prng } from '../../src/compute/random.ts'
import { ApiClient, RemoteJob } from '../../src/node/client/index.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'
import type { JobView } from '../../src/node/jobs/job.ts'
import type { ChildProcess } from 'node:child_process'

export const BIN = fileURLToPath(new URL('../../bin/tensormesh.js', import.meta.url))

export interface Member { peerId: string, api: string, pid: number, multiaddrs: string[], token: string | null, netns?: string, ip?: string, nat?: boolean }

export function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? (s[m] ?? NaN) : ((s[m - 1] ?? NaN) + (s[m] ?? NaN)) / 2
}

export function log (msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`)
}

/** Starts a CLI command and resolves with its first stdout line. */
export async function startCli (args: string[], timeoutMs = 120_000): Promise<{ child: ChildProcess, line: string }> {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
  const rl = createInterface({ input: child.stdout as NodeJS.ReadableStream })
  const line = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`no output from ${args.join(' ')} within ${timeoutMs} ms`)) }, timeoutMs)
    rl.once('line', (l) => { clearTimeout(timer); resolve(l) })
    child.once('exit', (code, signal) => { clearTimeout(timer); reject(new Error(`${args[0] ?? ''} exited (${signal ?? code ?? '?'}) before printing`)) })
  })
  return { child, line }
}

export class Testnet {
  readonly child: ChildProcess
  readonly nodes: Member[]
  readonly formedMs: number
  /** The testnet's swarm key file: a node that joins it needs `--swarm-key` of it. */
  readonly swarmKey: string
  /** The one API token of its nodes (a later testnet's replaces TENSORMESH_TOKEN, not this). */
  readonly token?: string

  private constructor (child: ChildProcess, line: { nodes: Member[], swarmKey: string }, formedMs: number) {
    this.child = child
    this.nodes = line.nodes
    this.swarmKey = line.swarmKey
    this.token = line.nodes[0]?.token ?? undefined
    this.formedMs = formedMs
  }

  /** Starts `testnet --json`; its one API token goes into TENSORMESH_TOKEN, where every client here looks. */
  static async start (n: number, extra: string[] = []): Promise<Testnet> {
    const t0 = performance.now()
    const { child, line } = await startCli(['testnet', '--nodes', String(n), '--json', ...extra])
    const parsed = JSON.parse(line) as { nodes: Member[], swarmKey: string }
    const token = parsed.nodes[0]?.token
    if (typeof token === 'string') process.env.TENSORMESH_TOKEN = token
    return new Testnet(child, parsed, performance.now() - t0)
  }

  node (i: number): Member {
    const m = this.nodes[i]
    if (m === undefined) throw new Error(`no node ${i}`)
    return m
  }

  async stop (): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return
    const gone = new Promise<void>(resolve => { this.child.once('exit', () => { resolve() }) })
    this.child.kill('SIGTERM')
    await gone
  }
}

/** POSTs a job with .npy inputs and follows it to the end. */
export async function runJob (api: string, op: string, inputs: Record<string, HostTensor>, params: Record<string, unknown> = {}, extra: Record<string, unknown> = {}, onUpdate: (j: JobView) => void = () => {}): Promise<JobView> {
  const form = new FormData()
  form.set('spec', JSON.stringify({ op, params, ...extra }))
  for (const [name, t] of Object.entries(inputs)) form.set(name, new Blob([encodeNpy(t) as Uint8Array<ArrayBuffer>]), `${name}.npy`)
  const client = new ApiClient(api)
  const submitted = await (await client.request('POST', '/v1/jobs', form)).json() as JobView
  const job = await new RemoteJob(client, submitted.id).wait(onUpdate)
  if (job.state !== 'succeeded') throw new Error(`job ${job.id} ${job.state}: ${job.error?.message ?? ''}`)
  return job
}

/** Seeded uniform floats in [-1, 1): the same inputs on every run. */
export function randomTensor (shape: number[], seed: number): HostTensor {
  const n = shape.reduce((a, b) => a * b, 1)
  const data = new Float32Array(n)
  const random = prng(seed)
  for (let i = 0; i < n; i++) data[i] = random() * 2 - 1
  return { dtype: 'float32', shape, data }
}

export async function sleep (ms: number): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}
