/**
 * A fix for the cipher under @libp2p/pnet (xsalsa20 1.2.0, its WebAssembly
 * build), installed before a private node starts.
 *
 * xsalsa20 keeps one WebAssembly memory for all its cipher instances (two
 * per pnet connection), and each instance holds its own Uint8Array view of
 * it. When one instance meets an input larger than the free memory (about
 * 600 KiB at first), it grows the memory, which detaches every other
 * instance's view: their length reads 0, so each of their next updates
 * "needs" more memory and grows it again, detaching the others in turn. The
 * memory's limit is 1000 pages (64 MiB); measured here, one 1 MiB message
 * on one connection and about 500 small ones on two then throw RangeError
 * (Maximum memory size exceeded) from a socket event handler, and the
 * process dies. A relayed connection hands pnet messages that large; a
 * relay of a private mesh died this way within seconds of a 64 MiB job.
 *
 * The fix: an instance whose view was detached takes the current buffer
 * instead of growing, and inputs are ciphered in pieces of at most
 * PNET_XOR_PIECE_BYTES, so the memory does not need to grow at all. A
 * stream cipher's output does not depend on how its input is cut (pnet
 * already feeds it whatever sizes the socket delivers), so the bytes on the
 * wire are unchanged.
 */
import { createRequire } from 'node:module'

/** Well inside the module's first 10 pages (640 KiB), with room for its per-instance state below `head`. */
export const PNET_XOR_PIECE_BYTES = 64 * 1024

interface WasmXor {
  _memory: Uint8Array
  update: (input: Uint8Array, output: Uint8Array) => void
  realloc: (size: number) => void
}

interface XSalsa20Instance {
  _xor: WasmXor | object
  finalize: () => void
}

let installed: boolean | undefined

/** Patches xsalsa20's WebAssembly state once; true when the patch is in place (false: the pure-JS fallback, nothing to fix). */
export function installPnetCipherFix (): boolean {
  if (installed !== undefined) return installed
  const require = createRequire(import.meta.url)
  const xsalsa20 = require('xsalsa20') as (nonce: Uint8Array, key: Uint8Array) => XSalsa20Instance
  const probe = xsalsa20(new Uint8Array(24), new Uint8Array(32))
  const proto = Object.getPrototypeOf(probe._xor) as Partial<WasmXor>
  probe.finalize()
  const update = proto.update
  const realloc = proto.realloc
  if (typeof update !== 'function' || typeof realloc !== 'function') {
    installed = false
    return installed
  }
  // The buffer after the latest grow: only realloc grows, so this is always current.
  let current: ArrayBufferLike | undefined
  proto.realloc = function (this: WasmXor, size: number): void {
    realloc.call(this, size)
    current = this._memory.buffer
  }
  proto.update = function (this: WasmXor, input: Uint8Array, output: Uint8Array): void {
    for (let off = 0; off < input.length; off += PNET_XOR_PIECE_BYTES) {
      if (this._memory.length === 0 && current !== undefined) this._memory = new Uint8Array(current)
      const end = Math.min(off + PNET_XOR_PIECE_BYTES, input.length)
      update.call(this, input.subarray(off, end), output.subarray(off, end))
    }
  }
  installed = true
  return installed
}
