import { pino } from 'pino'
import type { Logger, Level } from 'pino'

export type { Logger }
export const LOG_LEVELS: readonly Level[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace']

/**
 * Structured, levelled logs on stderr (stdout belongs to the CLI's JSON
 * output). JSON lines always: readable enough on a terminal, parseable off it.
 */
export function createLogger (level: string = 'info', bindings: Record<string, unknown> = {}): Logger {
  return pino({ level, base: { pid: process.pid, ...bindings } }, pino.destination({ fd: 2, sync: true }))
}

/** For tests and in-process nodes that should stay quiet. */
export function silentLogger (): Logger {
  return pino({ level: 'silent' })
}
