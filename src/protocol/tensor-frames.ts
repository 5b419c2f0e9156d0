/**
 * Tensors on a stream: a descriptor per tensor (name, dtype, shape) inside a
 * header message, then the raw little-endian bytes of all tensors in order,
 * cut into length-prefixed chunks of at most CHUNK_BYTES. The receiver checks
 * every declared size against its limits before it allocates anything, then
 * copies each chunk straight into the destination typed array.
 */
import { endianness } from 'node:os'
import { ProtocolError, LimitExceededError } from '../errors.ts'
import { allocate, isDType, sizeOf, BYTES_PER_ELEMENT } from '../compute/tensor.ts'
import { messageCodec } from './codec.ts'
import { CHUNK_BYTES, MAX_RANK } from './limits.ts'
import type { HostTensor } from '../compute/tensor.ts'
import type { Tensors } from '../compute/operators/types.ts'
import type { WireLimits } from './limits.ts'
import type { ReceiveBuffers } from './receive-buffers.ts'
import type { AbortOptions } from '@libp2p/interface'
import type { LengthPrefixedStream } from '@libp2p/utils'

if (endianness() !== 'LE') {
  // Typed arrays use the host's byte order and the wire is little-endian.
  throw new Error('tensormesh runs on little-endian hosts only')
}

export interface TensorDesc {
  name: string
  dtype: string
  shape: number[]
}

export const TensorDescCodec = messageCodec<TensorDesc>('TensorDesc', {
  name: { no: 1, kind: 'string', maxBytes: 64 },
  dtype: { no: 2, kind: 'string', maxBytes: 16 },
  shape: { no: 3, kind: 'uint64', repeated: true, maxCount: MAX_RANK }
}, 1024)

export function describeTensors (tensors: Tensors): TensorDesc[] {
  return Object.entries(tensors).map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape }))
}

/**
 * Checks descriptors from a peer against the limits and returns their byte
 * sizes. Nothing has been allocated when this throws.
 */
export function checkDescs (descs: TensorDesc[], limits: WireLimits, what: string): number[] {
  const sizes: number[] = []
  let total = 0
  const names = new Set<string>()
  for (const d of descs) {
    // `__proto__` is an identifier, but `tensors[name] = t` with it sets the
    // map's prototype instead of adding a key: the tensor would vanish.
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(d.name) || d.name === '__proto__' || names.has(d.name)) throw new ProtocolError(`${what}: tensor name is not a unique identifier (or is the reserved __proto__)`, 'ERR_BAD_TENSOR')
    names.add(d.name)
    if (!isDType(d.dtype)) throw new ProtocolError(`${what}: tensor ${d.name} has dtype "${d.dtype.slice(0, 16)}"; allowed float32, int32`, 'ERR_BAD_TENSOR')
    let elements = 1
    for (const dim of d.shape) {
      elements *= dim
      if (elements * BYTES_PER_ELEMENT > limits.maxTensorBytes) {
        throw new LimitExceededError(`${what}: tensor ${d.name} of shape [${d.shape.join(', ')}] exceeds the ${limits.maxTensorBytes}-byte tensor limit`)
      }
    }
    const bytes = sizeOf(d.shape) * BYTES_PER_ELEMENT
    total += bytes
    if (total > limits.maxShardBytes) throw new LimitExceededError(`${what}: tensors add up to more than the ${limits.maxShardBytes}-byte limit`)
    sizes.push(bytes)
  }
  return sizes
}

/** Writes the bytes of every tensor in order, in chunks of at most CHUNK_BYTES. */
export async function writeTensorBytes (lp: LengthPrefixedStream, tensors: HostTensor[], options?: AbortOptions): Promise<number> {
  let sent = 0
  for (const t of tensors) {
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)
    for (let off = 0; off < bytes.byteLength; off += CHUNK_BYTES) {
      const chunk = bytes.subarray(off, Math.min(off + CHUNK_BYTES, bytes.byteLength))
      await lp.write(chunk, options)
      sent += chunk.byteLength
    }
  }
  return sent
}

/**
 * Reads the bytes for tensors already described and checked. Each frame must
 * be at most CHUNK_BYTES and no frame may run past the declared total.
 */
/**
 * Allocates tensors for checked descriptors; `targets` are their bytes, in
 * order. With `memory`, all of them are views of one reused shared buffer,
 * and `release` gives it back (call it once nothing reads the tensors).
 */
export function allocateTensors (descs: TensorDesc[], limits: WireLimits, what: string, memory?: ReceiveBuffers): { tensors: Tensors, targets: Uint8Array[], bytes: number, release: () => void } {
  const sizes = checkDescs(descs, limits, what)
  const tensors: Tensors = {}
  const targets: Uint8Array[] = []
  const bytes = sizes.reduce((a, b) => a + b, 0)
  // Every element type here is 4 bytes, so views packed end to end stay aligned.
  const lease = memory?.take(bytes)
  let offset = 0
  for (const d of descs) {
    const dtype = d.dtype as HostTensor['dtype']
    const n = sizeOf(d.shape)
    const data = lease === undefined ? allocate(dtype, n) : dtype === 'float32' ? new Float32Array(lease.buffer, offset, n) : new Int32Array(lease.buffer, offset, n)
    offset += data.byteLength
    tensors[d.name] = { dtype, shape: d.shape, data }
    targets.push(new Uint8Array(data.buffer, data.byteOffset, data.byteLength))
  }
  return { tensors, targets, bytes, release: lease?.release ?? (() => {}) }
}

/** The bytes of tensors, as views (no copy), in order. */
export function tensorBytes (tensors: HostTensor[]): Uint8Array[] {
  return tensors.map(t => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength))
}

export async function readTensorBytes (lp: LengthPrefixedStream, descs: TensorDesc[], limits: WireLimits, what: string): Promise<{ tensors: Tensors, bytes: number }> {
  const { tensors, targets } = allocateTensors(descs, limits, what)
  let ti = 0
  let off = 0
  let received = 0
  const skipFilled = (): void => {
    while (ti < targets.length && off === (targets[ti]?.byteLength ?? 0)) { ti++; off = 0 }
  }
  skipFilled()
  while (ti < targets.length) {
    const frame = await lp.read({ signal: AbortSignal.timeout(limits.frameTimeoutMs) })
    if (frame.byteLength === 0 || frame.byteLength > CHUNK_BYTES) throw new ProtocolError(`${what}: tensor chunk of ${frame.byteLength} bytes; chunks are 1..${CHUNK_BYTES}`, 'ERR_BAD_CHUNK')
    for (const part of frame) {
      let p = 0
      while (p < part.byteLength) {
        const target = targets[ti]
        if (target === undefined) throw new ProtocolError(`${what}: more tensor bytes than the header declared`, 'ERR_BAD_CHUNK')
        const n = Math.min(part.byteLength - p, target.byteLength - off)
        target.set(part.subarray(p, p + n), off)
        p += n
        off += n
        received += n
        skipFilled()
      }
    }
  }
  return { tensors, bytes: received }
}
