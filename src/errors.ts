/**
 * Every failure a caller may act on has its own class with a stable `code`.
 * Callers and tests match on `code` (or `name`), never on message text.
 */
export class TensormeshError extends Error {
  readonly code: string

  constructor (code: string, message: string, options?: ErrorOptions) {
    super(message, options)
    this.code = code
    this.name = new.target.name
  }
}

/** Bad input from a user: a job spec, a CLI flag, a file. Maps to HTTP 400. */
export class InvalidInputError extends TensormeshError {
  constructor (message: string, code = 'ERR_INVALID_INPUT', options?: ErrorOptions) {
    super(code, message, options)
  }
}

/** Bad bytes from a peer: a frame that does not decode or breaks a limit. */
export class ProtocolError extends TensormeshError {
  constructor (message: string, code = 'ERR_PROTOCOL', options?: ErrorOptions) {
    super(code, message, options)
  }
}

/** A declared size above a named limit, caught before anything was allocated. */
export class LimitExceededError extends TensormeshError {
  constructor (message: string, options?: ErrorOptions) {
    super('ERR_LIMIT_EXCEEDED', message, options)
  }
}

/**
 * The data directory cannot take more bytes: its storage budget is spent
 * (after evicting what could go) or its filesystem is full. Nothing was
 * written. Maps to HTTP 507.
 */
export class StorageFullError extends TensormeshError {
  /** What the refused write needed, and the budget and use when it was refused (bytes; absent for a filesystem's own ENOSPC). */
  readonly neededBytes?: number
  readonly maxBytes?: number
  readonly usedBytes?: number

  constructor (message: string, sizes: { neededBytes?: number, maxBytes?: number, usedBytes?: number } = {}, options?: ErrorOptions) {
    super('ERR_STORAGE_FULL', message, options)
    this.neededBytes = sizes.neededBytes
    this.maxBytes = sizes.maxBytes
    this.usedBytes = sizes.usedBytes
  }
}

export class NotFoundError extends TensormeshError {
  constructor (message: string, code = 'ERR_NOT_FOUND') {
    super(code, message)
  }
}

/** Some libraries reject with an Event (a stream's 'close', a socket's 'error'); what it carries is the error. */
function unwrapEvent (err: unknown): unknown {
  if (typeof Event !== 'undefined' && err instanceof Event) {
    const inner = (err as Event & { error?: unknown }).error
    return inner ?? new Error(`${err.type} event without an error`)
  }
  return err
}

export function errorMessage (err: unknown): string {
  const e = unwrapEvent(err)
  return e instanceof Error ? e.message : String(e)
}

export function errorCode (err: unknown): string {
  err = unwrapEvent(err)
  if (err instanceof TensormeshError) return err.code
  const code = (err as { code?: unknown } | null)?.code
  if (typeof code === 'string') return code
  // libp2p's errors carry a class name instead (StreamResetError -> ERR_STREAM_RESET).
  const name = err instanceof Error ? err.name : ''
  if (name !== '' && name !== 'Error' && /^[A-Za-z]+Error$/.test(name)) {
    return 'ERR_' + name.slice(0, -5).replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()
  }
  return 'ERR_INTERNAL'
}
