/**
 * The mesh's pre-shared key (libp2p private networks, PSK v1): every
 * connection is wrapped in XSalsa20 under this key before noise runs, so a
 * process without it cannot complete a connection to a member at all.
 */
import { randomBytes } from 'node:crypto'
import { open, readFile } from 'node:fs/promises'
import { InvalidInputError, errorMessage } from '../../errors.ts'

/** Where a node keeps the key it made for itself when `start` is given none. */
export const SWARM_KEY_FILE = 'swarm.key'
/** PSK v1: a 256-bit key. */
export const SWARM_KEY_BYTES = 32
const TAG = '/key/swarm/psk/1.0.0/'
const CODEC = '/base16/'
/** Tag, codec and 64 hex digits with their newlines; anything longer is not a key file. */
const MAX_SWARM_KEY_FILE_BYTES = 1024

/** A fresh key in PSK v1 text form (what `@libp2p/pnet` reads). */
export function generateSwarmKey (): Uint8Array {
  return new TextEncoder().encode(`${TAG}\n${CODEC}\n${randomBytes(SWARM_KEY_BYTES).toString('hex')}\n`)
}

/**
 * Checks a key file's text: three lines, the PSK v1 tag, the base16 codec
 * and 64 hex digits. Returns the bytes in the exact form pnet decodes
 * (pnet itself only says "invalid PSK"; this says which line is wrong).
 */
export function parseSwarmKey (bytes: Uint8Array, path: string): Uint8Array {
  if (bytes.byteLength > MAX_SWARM_KEY_FILE_BYTES) throw new InvalidInputError(`swarm key ${path}: ${bytes.byteLength} bytes is too long for a PSK v1 key file`, 'ERR_BAD_SWARM_KEY')
  let text: string
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes)
  } catch {
    throw new InvalidInputError(`swarm key ${path}: not UTF-8 text`, 'ERR_BAD_SWARM_KEY')
  }
  const lines = text.split(/\r?\n/)
  while (lines.length > 3 && lines.at(-1) === '') lines.pop()
  const expect = (line: number, ok: boolean, what: string): void => {
    if (!ok) throw new InvalidInputError(`swarm key ${path}, line ${line}: expected ${what}`, 'ERR_BAD_SWARM_KEY')
  }
  expect(1, lines[0] === TAG, TAG)
  expect(2, lines[1] === CODEC, CODEC)
  expect(3, /^[0-9a-fA-F]{64}$/.test(lines[2] ?? ''), `${SWARM_KEY_BYTES * 2} hex digits`)
  expect(4, lines.length === 3, 'the end of the file')
  return new TextEncoder().encode(`${TAG}\n${CODEC}\n${(lines[2] ?? '').toLowerCase()}`)
}

export async function readSwarmKey (path: string): Promise<Uint8Array> {
  let bytes: Uint8Array
  try {
    bytes = await readFile(path)
  } catch (err) {
    throw new InvalidInputError(`cannot read swarm key ${path}: ${errorMessage(err)}`, 'ERR_BAD_SWARM_KEY')
  }
  return parseSwarmKey(bytes, path)
}

/**
 * Writes a fresh key, readable by its owner only, and never over an
 * existing file: overwriting a key would lock this machine out of its mesh.
 */
export async function writeSwarmKey (path: string): Promise<void> {
  let file
  try {
    file = await open(path, 'wx', 0o600)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EEXIST') throw new InvalidInputError(`${path} exists; a swarm key is never overwritten (remove it first if you mean to)`, 'ERR_KEY_EXISTS')
    throw new InvalidInputError(`cannot write swarm key ${path}: ${errorMessage(err)}`, 'ERR_BAD_SWARM_KEY')
  }
  try {
    await file.writeFile(generateSwarmKey())
    await file.sync()
  } finally {
    await file.close()
  }
}

/** The key at `path`, made first if there is none (a node's own key in its data directory). */
export async function loadOrCreateSwarmKey (path: string): Promise<{ key: Uint8Array, created: boolean }> {
  try {
    await writeSwarmKey(path)
    return { key: await readSwarmKey(path), created: true }
  } catch (err) {
    if ((err as { code?: string }).code !== 'ERR_KEY_EXISTS') throw err
    return { key: await readSwarmKey(path), created: false }
  }
}
