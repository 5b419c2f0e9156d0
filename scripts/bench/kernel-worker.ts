// Times n x n float32 matmuls on one TF.js backend inside a worker thread:
// the kernel's own speed, without the pool or the network.
import { parentPort, workerData } from 'node:worker_threads'
import { loadBackend } from '../../src/compute/backend.ts'
import type { BackendChoice } from '../../src/compute/backend.ts'

const { backend, sizes, budgetMs } = workerData as { backend: BackendChoice, sizes: number[], budgetMs: number }
const { tf, name } = await loadBackend(backend)
const results: Array<{ n: number, gflops: number, runs: number }> = []
for (const n of sizes) {
  const a = tf.randomUniform([n, n])
  const b = tf.randomUniform([n, n])
  // Warm-up: first use compiles kernels and allocates.
  const warm = tf.matMul(a, b)
  await warm.data()
  warm.dispose()
  const times: number[] = []
  const until = performance.now() + budgetMs
  while (times.length < 3 || (performance.now() < until && times.length < 15)) {
    const t0 = performance.now()
    const c = tf.matMul(a, b)
    await c.data()
    times.push(performance.now() - t0)
    c.dispose()
  }
  times.sort((x, y) => x - y)
  const ms = times[Math.floor(times.length / 2)] ?? NaN
  results.push({ n, gflops: 2 * n ** 3 / (ms / 1000) / 1e9, runs: times.length })
  a.dispose()
  b.dispose()
}
parentPort?.postMessage({ backend: name, results })
