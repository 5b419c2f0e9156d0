/**
 * Builds dist/ for the npm package: Node refuses to strip types from files
 * under node_modules, so an installed tensormesh must ship JavaScript. A
 * checkout never needs this (it runs src/ as it is); `npm pack` runs it.
 */
import { execFileSync } from 'node:child_process'
import { cpSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
rmSync(`${root}/dist`, { recursive: true, force: true })
execFileSync(process.execPath, [`${root}/node_modules/typescript/bin/tsc`, '-p', `${root}/tsconfig.build.json`], { stdio: 'inherit' })
// The dashboard's static files are read from beside its module at run time.
cpSync(`${root}/src/node/api/dashboard/static`, `${root}/dist/node/api/dashboard/static`, { recursive: true })

// Declarations keep the source's `.ts` specifiers; point them at the emitted .d.ts/.js names.
for (const file of readdirSync(`${root}/dist`, { recursive: true, encoding: 'utf8' })) {
  if (!file.endsWith('.d.ts')) continue
  const path = `${root}/dist/${file}`
  const text = readFileSync(path, 'utf8')
  const fixed = text.replace(/(from\s+['"]\.{1,2}\/[^'"]*?)\.ts(['"])/g, '$1.js$2').replace(/(import\(['"]\.{1,2}\/[^'"]*?)\.ts(['"]\))/g, '$1.js$2')
  if (fixed !== text) writeFileSync(path, fixed)
}
