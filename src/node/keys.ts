import { mkdir, readFile, writeFile, rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { InvalidInputError, errorMessage } from '../errors.ts'
import type { PrivateKey } from '@libp2p/interface'

export const KEY_FILE = 'peer.key'

/** Ensures the data directory exists and can be written, with an error that names it. */
export async function prepareDataDir (dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true })
    const probe = join(dir, `.write-test-${process.pid}`)
    await writeFile(probe, '')
    await rm(probe)
  } catch (err) {
    throw new InvalidInputError(`data directory ${dir} is not writable: ${errorMessage(err)}`, 'ERR_DATA_DIR')
  }
}

/**
 * The node's identity: an Ed25519 key kept in the data directory so the peer
 * id survives restarts. Written to a temp file and renamed, so a crash never
 * leaves half a key.
 */
export async function loadOrCreateKey (dir: string): Promise<PrivateKey> {
  const path = join(dir, KEY_FILE)
  let bytes: Uint8Array | undefined
  try {
    bytes = await readFile(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new InvalidInputError(`cannot read ${path}: ${errorMessage(err)}`, 'ERR_DATA_DIR')
  }
  if (bytes !== undefined) {
    try {
      return privateKeyFromProtobuf(bytes)
    } catch (err) {
      throw new InvalidInputError(`${path} is not a libp2p private key: ${errorMessage(err)}`, 'ERR_BAD_KEY')
    }
  }
  const key = await generateKeyPair('Ed25519')
  const tmp = `${path}.${process.pid}.tmp`
  await writeFile(tmp, privateKeyToProtobuf(key), { mode: 0o600 })
  await rename(tmp, path)
  return key
}
