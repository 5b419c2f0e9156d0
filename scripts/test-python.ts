/**
 * `npm run test:python`: the Python client's pytest suite against a real
 * testnet. It tests the installed package when there is one (CI installs
 * it with pip), else the checkout's (PYTHONPATH=python), so `npm test`
 * needs no pip install first.
 */
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const args = ['-m', 'pytest', 'python/tests', '-q', '-p', 'no:cacheprovider']
const xml = process.env.TENSORMESH_PYTEST_XML
if (xml !== undefined && xml !== '') args.push(`--junitxml=${xml}`)
const installed = spawnSync('python3', ['-c', 'import tensormesh'], { cwd: '/', stdio: 'ignore' }).status === 0
const env = installed ? process.env : { ...process.env, PYTHONPATH: [`${root}python`, process.env.PYTHONPATH].filter(p => p !== undefined && p !== '').join(':') }
const run = spawnSync('python3', args, { cwd: root, env, stdio: 'inherit' })
process.exit(run.status ?? 1)
