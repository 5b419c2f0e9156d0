import { defineConfig } from 'vitest/config'

// CI asks for a machine-readable report beside the console one (`.ci/run`
// sets this) without passing flags through `npm test`, which also runs pytest.
const jsonReport = process.env.TENSORMESH_VITEST_JSON

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Two cores: multi-node and multi-process files must not run side by side,
    // or their timers and gossip heartbeats starve each other.
    fileParallelism: false,
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
    ...(jsonReport !== undefined && jsonReport !== '' ? { reporters: ['default', 'json'], outputFile: { json: jsonReport } } : {})
  }
})
