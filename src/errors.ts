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

export class NotFoundError extends TensormeshError {
  constructor (message: string, code = 'ERR_NOT_FOUND') {
    super(code, message)
  }
}

export function errorMessage (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

export function errorCode (err: unknown): string {
  if (err instanceof TensormeshError) return err.code
  const code = (err as { code?: unknown } | null)?.code
  if (typeof code === 'string') return code
  return 'ERR_INTERNAL'
}
