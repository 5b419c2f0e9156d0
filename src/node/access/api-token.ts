/**
 * The HTTP API's bearer token: 256 random bits in DATA_DIR/api-token
 * (0600), made on a node's first start. Whoever can read the file may use
 * the API; nobody else can, however they reach its port.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import { mkdir, open, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { InvalidInputError, errorMessage } from '../../errors.ts'

export const API_TOKEN_FILE = 'api-token'
/** 256 bits: beyond guessing at any rate an HTTP server can answer. */
export const API_TOKEN_BYTES = 32
/** The shortest token a node accepts from its file: 128 bits in hex. */
const MIN_TOKEN_CHARS = 32

/** A fresh token: 256 random bits in hex. */
export function generateApiToken (): string {
  return randomBytes(API_TOKEN_BYTES).toString('hex')
}

/**
 * Gives a node whose data directory is `dataDir` this token, unless it has
 * one already. `testnet` gives all its nodes one token: one local user runs
 * them all, and one login then opens every node's dashboard.
 */
export async function provideApiToken (dataDir: string, token: string): Promise<void> {
  await mkdir(dataDir, { recursive: true })
  try {
    const file = await open(join(dataDir, API_TOKEN_FILE), 'wx', 0o600)
    try {
      await file.writeFile(`${token}\n`)
    } finally {
      await file.close()
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new InvalidInputError(`cannot write the API token in ${dataDir}: ${errorMessage(err)}`, 'ERR_DATA_DIR')
  }
}

/** The node's token, made first when its file does not exist yet. */
export async function loadOrCreateApiToken (dataDir: string): Promise<{ token: string, path: string }> {
  const path = join(dataDir, API_TOKEN_FILE)
  try {
    const file = await open(path, 'wx', 0o600)
    try {
      await file.writeFile(`${generateApiToken()}\n`)
      await file.sync()
    } finally {
      await file.close()
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new InvalidInputError(`cannot write the API token ${path}: ${errorMessage(err)}`, 'ERR_DATA_DIR')
  }
  const token = (await readFile(path, 'utf8')).trim()
  if (token.length < MIN_TOKEN_CHARS || !/^[\x21-\x7e]+$/.test(token)) {
    throw new InvalidInputError(`API token ${path} must be at least ${MIN_TOKEN_CHARS} printable characters without spaces`, 'ERR_BAD_TOKEN')
  }
  return { token, path }
}

/** Constant-time comparison: both sides hashed first, so neither length nor content leaks through timing. */
export function tokenMatches (expected: string, given: string | undefined): boolean {
  if (given === undefined) return false
  const a = createHash('sha256').update(expected).digest()
  const b = createHash('sha256').update(given).digest()
  return timingSafeEqual(a, b)
}
