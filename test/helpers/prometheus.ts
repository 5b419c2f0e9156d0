/**
 * A small, strict parser of the Prometheus text format (0.0.4), for tests:
 * any line it does not understand is an error, every sample must belong to
 * a family declared by `# TYPE`, and no series may appear twice. (The npm
 * parser parse-prometheus-text-format drops the labels, sum and count of
 * labelled histograms, so it cannot check ours.)
 */

export type MetricType = 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped'

export interface Sample { name: string, labels: Record<string, string>, value: number }

export interface MetricFamily { name: string, type: MetricType, help: string, samples: Sample[] }

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped'])

export function parsePrometheusText (text: string): Map<string, MetricFamily> {
  const families = new Map<string, MetricFamily>()
  const series = new Set<string>()
  const lines = text.split('\n')
  lines.forEach((line, i) => {
    const where = `line ${i + 1} "${line}"`
    if (line.trim() === '') return
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line)
      if (m === null) return // a plain comment
      const [, kind, name = '', rest = ''] = m
      if (!NAME.test(name)) throw new Error(`bad metric name at ${where}`)
      const family = families.get(name) ?? { name, type: 'untyped', help: '', samples: [] }
      if (kind === 'TYPE') {
        if (!TYPES.has(rest)) throw new Error(`bad type at ${where}`)
        if (family.samples.length > 0) throw new Error(`TYPE after samples at ${where}`)
        family.type = rest as MetricType
      } else {
        family.help = rest.replace(/\\n/g, '\n').replace(/\\\\/g, '\\')
      }
      families.set(name, family)
      return
    }
    const { name, labels, rest } = readSeries(line, where)
    const parts = rest.trim().split(/\s+/)
    if (parts.length < 1 || parts.length > 2 || parts[0] === '') throw new Error(`expected "value [timestamp]" at ${where}`)
    const value = parseValue(parts[0] ?? '', where)
    const family = familyOf(families, name)
    if (family === undefined) throw new Error(`sample of an undeclared family at ${where}`)
    if (family.type === 'histogram' && name === `${family.name}_bucket` && labels.le === undefined) throw new Error(`bucket without le at ${where}`)
    const key = name + JSON.stringify(Object.entries(labels).sort())
    if (series.has(key)) throw new Error(`duplicate series at ${where}`)
    series.add(key)
    family.samples.push({ name, labels, value })
  })
  return families
}

function familyOf (families: Map<string, MetricFamily>, name: string): MetricFamily | undefined {
  const exact = families.get(name)
  if (exact !== undefined) return exact
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (!name.endsWith(suffix)) continue
    const f = families.get(name.slice(0, -suffix.length))
    if (f !== undefined && (f.type === 'histogram' || (f.type === 'summary' && suffix !== '_bucket'))) return f
  }
  return undefined
}

function readSeries (line: string, where: string): { name: string, labels: Record<string, string>, rest: string } {
  const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{|\s)/.exec(line)
  if (m === null) throw new Error(`bad sample at ${where}`)
  const name = m[1] ?? ''
  const labels: Record<string, string> = {}
  let pos = name.length
  if (line[pos] !== '{') return { name, labels, rest: line.slice(pos) }
  pos++
  while (line[pos] !== '}') {
    const lm = /^([a-zA-Z_][a-zA-Z0-9_]*)="/.exec(line.slice(pos))
    if (lm === null || !LABEL.test(lm[1] ?? '')) throw new Error(`bad label at ${where}`)
    pos += lm[0].length
    let value = ''
    for (;;) {
      const c = line[pos]
      if (c === undefined) throw new Error(`unterminated label value at ${where}`)
      pos++
      if (c === '"') break
      if (c === '\\') {
        const e = line[pos]
        pos++
        if (e === 'n') value += '\n'
        else if (e === '\\' || e === '"') value += e
        else throw new Error(`bad escape at ${where}`)
      } else {
        value += c
      }
    }
    const key = lm[1] ?? ''
    if (key in labels) throw new Error(`label ${key} twice at ${where}`)
    labels[key] = value
    if (line[pos] === ',') pos++
    else if (line[pos] !== '}') throw new Error(`expected , or } at ${where}`)
  }
  return { name, labels, rest: line.slice(pos + 1) }
}

/** As Prometheus reads values (Go's ParseFloat): NaN and Inf in any case; prom-client writes "Nan". */
function parseValue (s: string, where: string): number {
  const lower = s.toLowerCase()
  if (lower === '+inf' || lower === 'inf') return Infinity
  if (lower === '-inf') return -Infinity
  if (lower === 'nan') return NaN
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(s)) throw new Error(`bad value "${s}" at ${where}`)
  return Number(s)
}

/** One scrape of GET /metrics. */
export class Scrape {
  readonly families: Map<string, MetricFamily>

  constructor (text: string) {
    this.families = parsePrometheusText(text)
  }

  family (name: string): MetricFamily {
    const f = this.families.get(name)
    if (f === undefined) throw new Error(`no metric family ${name}`)
    return f
  }

  /** Samples named `sample` (default: the family's own name) whose labels include `labels`. */
  samples (family: string, labels: Record<string, string> = {}, sample = family): Sample[] {
    return this.family(family).samples.filter(s => s.name === sample && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
  }

  /** Sum of the matching samples (0 when none matches). */
  value (family: string, labels: Record<string, string> = {}, sample = family): number {
    return this.samples(family, labels, sample).reduce((t, s) => t + s.value, 0)
  }

  /** A histogram series: count, sum and cumulative buckets by `le`. */
  histogram (name: string, labels: Record<string, string>): { count: number, sum: number, buckets: Map<string, number> } {
    const buckets = new Map(this.samples(name, labels, `${name}_bucket`).map(s => [s.labels.le ?? '', s.value]))
    return { count: this.value(name, labels, `${name}_count`), sum: this.value(name, labels, `${name}_sum`), buckets }
  }
}

export async function scrape (api: string): Promise<{ scrape: Scrape, contentType: string }> {
  const token = process.env.TENSORMESH_TOKEN
  const res = await fetch(`${api}/metrics`, { headers: token === undefined ? {} : { authorization: `Bearer ${token}` } })
  if (!res.ok) throw new Error(`GET /metrics answered ${res.status}`)
  return { scrape: new Scrape(await res.text()), contentType: res.headers.get('content-type') ?? '' }
}
