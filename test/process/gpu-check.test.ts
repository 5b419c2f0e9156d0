import { execFileSync, spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'
import { BACKEND_CANDIDATES } from '../../src/compute/backend.ts'

const SCRIPT = fileURLToPath(new URL('../../scripts/gpu-check.sh', import.meta.url))
/** The script promises to finish in under 5 minutes; this is that bound, not a timing test. */
const FIVE_MINUTES_MS = 5 * 60_000

interface Run { code: number | null, stdout: string, stderr: string, ms: number }

/** Runs the script without the bench (GPU_CHECK_SKIP_BENCH=1) and with no Vulkan settings of this process's own. */
async function gpuCheck (args: string[], env: Record<string, string> = {}): Promise<Run> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, GPU_CHECK_SKIP_BENCH: '1', ...env }
  for (const k of ['VK_DRIVER_FILES', 'VK_ICD_FILENAMES']) if (!(k in env)) Reflect.deleteProperty(childEnv, k)
  const t0 = performance.now()
  const child = spawn('bash', [SCRIPT, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const timer = setTimeout(() => { child.kill('SIGKILL') }, FIVE_MINUTES_MS + 30_000)
  const code = await new Promise<number | null>(resolve => { child.on('exit', (c) => { resolve(c) }) })
  clearTimeout(timer)
  return { code, stdout, stderr, ms: performance.now() - t0 }
}

const lines = (s: string): string[] => s.split('\n').filter(l => l !== '')

const work = mkdtempSync(join(tmpdir(), 'tm-gpu-check-'))
afterAll(() => { rmSync(work, { recursive: true, force: true }) })

function hasCommand (cmd: string): boolean {
  try {
    execFileSync('bash', ['-c', `command -v ${cmd}`], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/** Whether the system's own loader is there: then the script leaves DEBS_DIR alone. */
function systemVulkanLoader (): boolean {
  try {
    return execFileSync('bash', ['-c', 'PATH=$PATH:/sbin:/usr/sbin ldconfig -p | grep -c libvulkan || true'], { encoding: 'utf8' }).trim() !== '0'
  } catch {
    return false
  }
}

function nvidiaIcdInUsualPlaces (): boolean {
  const dirs = ['/etc/xdg/vulkan/icd.d', '/etc/vulkan/icd.d', '/usr/local/share/vulkan/icd.d', '/usr/share/vulkan/icd.d', join(process.env.HOME ?? '/nonexistent', '.local/share/vulkan/icd.d')]
  return dirs.some(d => existsSync(d) && readdirSync(d).some(f => f.endsWith('.json') && /nvidia/i.test(readFileSync(join(d, f), 'utf8'))))
}

describe('scripts/gpu-check.sh arguments', () => {
  const file = join(work, 'a-file')
  writeFileSync(file, 'x')

  it.each([
    ['no OUTDIR', [], /no OUTDIR given/],
    ['too many arguments', [join(work, 'o1'), work, work], /too many arguments \(3\)/],
    ['DEBS_DIR not a directory', [join(work, 'o2'), file], /DEBS_DIR .*a-file is not a directory/],
    ['DEBS_DIR missing', [join(work, 'o3'), join(work, 'missing')], /DEBS_DIR .*missing is not a directory/],
    ['OUTDIR a file', [file], /OUTDIR .*a-file exists and is not a directory/],
    ['OUTDIR empty', [''], /OUTDIR is empty/]
  ])('%s: exit 2 with one line of usage error, nothing written', async (_what, args, message) => {
    const r = await gpuCheck(args as string[])
    expect(r.code).toBe(2)
    expect(r.stdout).toBe('')
    expect(lines(r.stderr)).toHaveLength(1)
    expect(r.stderr).toMatch(message as RegExp)
    expect(r.stderr).toContain('usage: scripts/gpu-check.sh OUTDIR [DEBS_DIR]')
    const out = (args as string[])[0]
    if (out !== undefined && out !== '' && out !== file) expect(existsSync(out)).toBe(false)
  })
})

describe('scripts/gpu-check.sh on this machine', () => {
  it('exits 0 within 5 minutes and its report says whether a WebGPU adapter was found, and why not', async () => {
    const webgpu = await BACKEND_CANDIDATES.find(c => c.name === 'webgpu')?.available()
    const out = join(work, 'report-here')
    const r = await gpuCheck([out])
    expect(r.code).toBe(0)
    expect(r.ms).toBeLessThan(FIVE_MINUTES_MS)
    expect(r.stdout.trim()).toBe(`gpu-check: report in ${join(out, 'report.md')}`)
    const report = readFileSync(join(out, 'report.md'), 'utf8')
    const summary = report.slice(report.indexOf('## Summary'))
    expect(summary).not.toBe('')
    expect(report).toContain('## Bench, compute section\n\n- skipped (GPU_CHECK_SKIP_BENCH=1)')
    const backends = JSON.parse(readFileSync(join(out, 'backends.json'), 'utf8')) as Record<string, { ok: boolean, reason?: string }>
    expect(backends.webgpu?.ok).toBe(webgpu?.ok)
    expect(backends.wasm?.ok).toBe(true)
    if (webgpu?.ok === false) {
      expect(r.stderr).toBe('')
      // The reason the script reports is the candidate's own, as this process sees it.
      expect(backends.webgpu?.reason).toBe(webgpu.reason)
      expect(webgpu.reason).toMatch(/^no WebGPU adapter/)
      expect(summary).toContain(`- RESULT: no WebGPU adapter was found, so the webgpu backend does not load: ${webgpu.reason}`)
      // The node was still tried, and its own error line is in the report.
      expect(summary).toMatch(/- node --backend webgpu: did not start \(exit 1\): tensormesh start: backend 'webgpu' is not available \(no WebGPU adapter/)
      expect(report).toContain('- none: no GPU backend loads')
    } else {
      expect(summary).toContain('- RESULT: a WebGPU adapter was found; the webgpu backend loads')
      expect(summary).toMatch(/- node --backend webgpu: backend webgpu, \d+ workers, calibrated [\d.]+ GFLOPS, gpu \{"name":/)
    }
    expect(readFileSync(join(out, 'env.txt'), 'utf8')).toMatch(/^webgpu: \d+\.\d+\.\d+$/m)
  })

  it.skipIf(nvidiaIcdInUsualPlaces())('without an NVIDIA Vulkan driver in the usual places, points VK_DRIVER_FILES and VK_ICD_FILENAMES at NVIDIA\'s container path', async () => {
    const icd = join(work, 'nvidia_icd.json')
    writeFileSync(icd, JSON.stringify({ file_format_version: '1.0.0', ICD: { library_path: '/nonexistent/libGLX_nvidia.so.0', api_version: '1.3.0' } }))
    const out = join(work, 'report-icd')
    const r = await gpuCheck([out], { GPU_CHECK_NVIDIA_ICD: icd })
    expect(r.code).toBe(0)
    expect(readFileSync(join(out, 'report.md'), 'utf8')).toContain(`- Vulkan driver: no NVIDIA one in the usual places; VK_DRIVER_FILES=${icd}`)
    const env = readFileSync(join(out, 'env.txt'), 'utf8')
    expect(env).toContain(`VK_DRIVER_FILES=${icd}\nVK_ICD_FILENAMES=${icd}`)
    expect(readFileSync(join(out, 'nvidia_icd.json'), 'utf8')).toBe(readFileSync(icd, 'utf8'))
  })

  it.skipIf(!hasCommand('dpkg-deb') || systemVulkanLoader())('with no system Vulkan loader, unpacks DEBS_DIR under OUTDIR and the webgpu probe loads libvulkan from there', async () => {
    // A package with a libvulkan.so.1 that is not a library: Dawn's dlopen error names the file it found.
    const pkg = join(work, 'pkg')
    mkdirSync(join(pkg, 'DEBIAN'), { recursive: true })
    mkdirSync(join(pkg, 'usr/lib/x86_64-linux-gnu'), { recursive: true })
    writeFileSync(join(pkg, 'DEBIAN/control'), 'Package: tensormesh-test-libvulkan1\nVersion: 1.0\nArchitecture: all\nMaintainer: tensormesh tests <tests@example.invalid>\nDescription: not a Vulkan loader\n')
    writeFileSync(join(pkg, 'usr/lib/x86_64-linux-gnu/libvulkan.so.1'), 'not an ELF file\n')
    const debs = join(work, 'debs')
    mkdirSync(debs)
    execFileSync('dpkg-deb', ['--build', pkg, join(debs, 'libvulkan1.deb')], { stdio: 'ignore' })
    const out = join(work, 'report-debs')
    const r = await gpuCheck([out, debs])
    expect(r.code).toBe(0)
    const lib = join(out, 'vulkan-root/usr/lib/x86_64-linux-gnu')
    const report = readFileSync(join(out, 'report.md'), 'utf8')
    expect(report).toContain(`- Vulkan loader: unpacked from 1 .deb(s) into ${lib} (LD_LIBRARY_PATH points there)`)
    expect(readFileSync(join(out, 'env.txt'), 'utf8')).toMatch(new RegExp(`^LD_LIBRARY_PATH=${lib}(:|$)`, 'm'))
    const backends = JSON.parse(readFileSync(join(out, 'backends.json'), 'utf8')) as Record<string, { ok: boolean, reason?: string }>
    expect(backends.webgpu?.ok).toBe(false)
    expect(backends.webgpu?.reason).toContain(`${lib}/libvulkan.so.1`)
  })
})
