import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import type { ChildProcess } from 'node:child_process'

export const BIN = fileURLToPath(new URL('../../bin/tensormesh.js', import.meta.url))

/**
 * A testnet gives all its nodes one API token: put it where every client
 * (this process's, and the CLI children it spawns) looks, TENSORMESH_TOKEN.
 */
export function useToken (net: { nodes: Array<{ token?: string | null }> }): string {
  const token = net.nodes[0]?.token
  if (typeof token !== 'string') throw new Error('the testnet printed no API token')
  process.env.TENSORMESH_TOKEN = token
  return token
}

/** Headers for a plain fetch() to a node's API. */
export function authHeaders (): Record<string, string> {
  const token = process.env.TENSORMESH_TOKEN
  return token === undefined ? {} : { authorization: `Bearer ${token}` }
}

export interface CliResult { code: number | null, signal: NodeJS.Signals | null, stdout: string, stderr: string }

/** Runs the real CLI to completion. */
export async function runCli (args: string[], timeoutMs = 60_000): Promise<CliResult> {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const timer = setTimeout(() => { child.kill('SIGKILL') }, timeoutMs)
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>(resolve => { child.on('exit', (c, s) => { resolve([c, s]) }) })
  clearTimeout(timer)
  return { code, signal, stdout, stderr }
}

/** Starts a long-running CLI command and resolves with its first stdout line. */
export async function startCli (args: string[], timeoutMs = 60_000): Promise<{ child: ChildProcess, line: string, stderr: () => string }> {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
  const rl = createInterface({ input: child.stdout as NodeJS.ReadableStream })
  const line = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`no output within ${timeoutMs} ms: ${stderr}`)) }, timeoutMs)
    rl.once('line', (l) => { clearTimeout(timer); resolve(l) })
    child.once('exit', (code, signal) => { clearTimeout(timer); reject(new Error(`exited (${signal ?? code ?? '?'}) before printing: ${stderr}`)) })
  })
  return { child, line, stderr: () => stderr }
}

export function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** Resolves once every pid has exited, or rejects after timeoutMs naming the survivors. */
/**
 * Polls `check` every 50 ms until it holds; throws `what` after timeoutMs.
 * For another process's state, which sends no event here (its HTTP API, its pid).
 */
export async function pollUntil (check: () => Promise<boolean> | boolean, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`${what} (after ${timeoutMs} ms)`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

export async function waitGone (pids: number[], timeoutMs: number): Promise<void> {
  // No event tells us a non-child process died: poll kill(pid, 0).
  await pollUntil(() => !pids.some(alive), timeoutMs, `still running: ${pids.filter(alive).join(', ')}`)
}

export async function exited (child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode
  return await new Promise(resolve => { child.once('exit', (code) => { resolve(code) }) })
}
