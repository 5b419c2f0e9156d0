#!/usr/bin/env node
// The CLI is TypeScript run by Node 22's type stripping (from a checkout) or the
// JavaScript built from it (an installed package). npm puts the project's
// Node 22 (the `node` package) first on PATH for `npx` and `npm run`; when this
// file is started by an older system node directly, hand over to that binary.
import { spawn } from 'node:child_process'
import * as nodeModule from 'node:module'
import { dirname, join, sep } from 'node:path'
import { fileURLToPath } from 'node:url'

const major = Number(process.versions.node.split('.')[0])
if (major < 22) {
  const require = nodeModule.createRequire(import.meta.url)
  let node22
  try {
    node22 = join(dirname(require.resolve('node/package.json')), 'bin', 'node')
  } catch {
    console.error(`tensormesh needs Node.js >= 22 (this is ${process.version}); run \`npm ci\` in the project to install it`)
    process.exit(1)
  }
  const child = spawn(node22, [...process.execArgv, ...process.argv.slice(1)], { stdio: 'inherit' })
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { child.kill(sig) })
  child.on('exit', (code, signal) => { process.exitCode = code ?? (signal !== null ? 1 : 0) })
} else {
  // A checkout runs its TypeScript as it is; Node strips no types under node_modules,
  // so an installed package runs the JavaScript that `npm pack` built into dist/.
  const installed = fileURLToPath(import.meta.url).split(sep).includes('node_modules')
  // V8's compiled code for the ~900 modules a node loads, kept on disk between starts
  // (Node's default folder under the OS temp dir): about 0.1 s less CPU per start.
  nodeModule.enableCompileCache?.()
  const { main } = await import(installed ? '../dist/node/cli/index.js' : '../src/node/cli/index.ts')
  await main(process.argv.slice(2))
}
