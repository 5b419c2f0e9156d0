import { submitCommand } from '../../src/node/cli/jobs.ts'
import { TEST_TOKEN } from './mesh.ts'

/**
 * `tensormesh submit FILE --out OUT --json` in this process, against a node
 * of test/helpers/mesh.ts: its exit code and its JSON line (stdout is
 * captured for the call, then restored).
 */
export async function submitJson (api: string, file: string, out: string): Promise<{ code: number, line: Record<string, unknown> }> {
  const lines: string[] = []
  const write = process.stdout.write.bind(process.stdout)
  process.stdout.write = ((chunk: string) => { lines.push(String(chunk)); return true }) as typeof process.stdout.write
  try {
    const code = await submitCommand({ api, token: TEST_TOKEN, file, out, json: true })
    return { code, line: JSON.parse(lines.join('').trim().split('\n').at(-1) ?? '{}') as Record<string, unknown> }
  } finally {
    process.stdout.write = write
  }
}
