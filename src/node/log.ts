import { writeSync } from 'node:fs'
import { pino } from 'pino'
import type { Logger, Level } from 'pino'

export type { Logger }
export const LOG_LEVELS: readonly Level[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace']

/**
 * Structured, levelled logs on stderr (stdout belongs to the CLI's JSON
 * output): JSON lines when stderr is not a terminal (files, collectors,
 * testnet parents), one compact line per record on a terminal.
 */
export function createLogger (level: string = 'info', bindings: Record<string, unknown> = {}, tty = process.stderr.isTTY === true): Logger {
  const options = { level, base: { pid: process.pid, ...bindings } }
  if (!tty) return pino(options, pino.destination({ fd: 2, sync: true }))
  return pino(options, { write: (line: string) => { writeSync(2, compactLine(line)) } })
}

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' }

/** `12:34:56.789 WARN  shard copy failed job=… peer=… code=ERR_PEER_GONE` from one pino JSON line. */
export function compactLine (json: string): string {
  let record: Record<string, unknown>
  try {
    record = JSON.parse(json) as Record<string, unknown>
  } catch {
    return json.endsWith('\n') ? json : json + '\n'
  }
  const { level, time, msg, pid: _pid, hostname: _host, ...fields } = record
  const when = typeof time === 'number' ? new Date(time).toISOString().slice(11, 23) : ''
  const name = (typeof level === 'number' ? LEVEL_NAMES[level] : undefined) ?? String(level)
  const rest = Object.entries(fields).map(([k, v]) => `${k}=${typeof v === 'string' && /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v)}`)
  return [when, name.padEnd(5), typeof msg === 'string' ? msg : '', ...rest].join(' ').trimEnd() + '\n'
}

/** For tests and in-process nodes that should stay quiet. */
export function silentLogger (): Logger {
  return pino({ level: 'silent' })
}
