// The raw-TCP baseline's other process: reads N bytes from one connection,
// then answers one byte, so the sender times the whole transfer. With
// `--store` it copies them into a fresh buffer as a received tensor would be
// (a fresh 256 MiB buffer costs a page fault per 4 KiB page on first write);
// with `--reuse` as well, every transfer after the first stores into the
// same buffer, whose pages are already mapped.
import { createServer } from 'node:net'

let kept: Buffer | undefined

const server = createServer((socket) => {
  let expected = -1
  let seen = 0
  let header = Buffer.alloc(0)
  let store: Buffer | undefined
  socket.on('data', (chunk: Buffer) => {
    if (expected < 0) {
      header = Buffer.concat([header, chunk])
      if (header.length < 8) return
      expected = Number(header.readBigUInt64LE(0))
      if (process.argv.includes('--store')) {
        store = process.argv.includes('--reuse') && kept !== undefined && kept.length >= expected ? kept : Buffer.allocUnsafeSlow(expected)
        kept = store
      }
      store?.set(header.subarray(8), 0)
      seen = header.length - 8
    } else {
      if (store !== undefined) chunk.copy(store, seen)
      seen += chunk.length
    }
    if (seen >= expected) socket.end(Buffer.from([1]))
  })
})
server.listen(0, '127.0.0.1', () => {
  const addr = server.address()
  process.stdout.write(JSON.stringify({ port: typeof addr === 'object' && addr !== null ? addr.port : 0 }) + '\n')
})
process.on('disconnect', () => { process.exit(0) })
process.on('SIGTERM', () => { process.exit(0) })
