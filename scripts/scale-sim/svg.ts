/**
 * A small hand-written SVG line plot against N on a log axis, for
 * bench/scale-*.svg: one polyline with dots per series, an optional goal
 * line, ticks at the data's N.
 */

export interface Series {
  name: string
  color: string
  points: Array<[number, number]>
  /** Dashed: a figure of another kind (e.g. the sampled regime's against the full one's). */
  dashed?: boolean
}

export interface PlotSpec {
  title: string
  yLabel: string
  series: Series[]
  /** A horizontal goal (e.g. 64 connections) or one that grows with N. */
  goal?: { label: string, y: (n: number) => number }
  /** Log y axis (figures that span decades). */
  yLog?: boolean
}

const W = 640
const H = 380
const X0 = 80
const Y0 = 40
const PW = W - X0 - 30
const PH = H - Y0 - 70

function esc (s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
}

function fmt (v: number): string {
  if (v === 0) return '0'
  const a = Math.abs(v)
  if (a >= 1e6) return `${+(v / 1e6).toPrecision(3)}M`
  if (a >= 1e4) return `${+(v / 1e3).toPrecision(3)}k`
  if (a >= 100) return String(Math.round(v))
  return String(+v.toPrecision(3))
}

/** 1, 2 or 5 times a power of ten, at least `raw`. */
function niceStep (raw: number): number {
  const p = 10 ** Math.floor(Math.log10(Math.max(raw, 1e-9)))
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p
  return 10 * p
}

/** One plot as an SVG document. */
export function logXPlot (spec: PlotSpec): string {
  const xs = [...new Set(spec.series.flatMap(s => s.points.map(p => p[0])))].filter(x => x > 0).sort((a, b) => a - b)
  const lo = Math.min(...xs, 10)
  const hi = Math.max(...xs, lo * 10)
  const lx0 = Math.log10(lo) - 0.1
  const lx1 = Math.log10(hi) + 0.1
  const X = (x: number): number => X0 + (Math.log10(x) - lx0) / (lx1 - lx0) * PW
  const ys = spec.series.flatMap(s => s.points.map(p => p[1])).filter(Number.isFinite)
  if (spec.goal !== undefined) for (const x of xs) ys.push(spec.goal.y(x))
  const top = Math.max(...ys, 0)
  const yMax = top > 0 ? top : 1
  const yMinPos = Math.min(...ys.filter(y => y > 0), yMax)
  const ly0 = spec.yLog === true ? Math.floor(Math.log10(yMinPos)) : 0
  const step = niceStep(yMax * 1.1 / 5)
  const ly1 = spec.yLog === true ? Math.ceil(Math.log10(yMax) + 0.01) : step * Math.ceil(yMax * 1.1 / step)
  const Y = (y: number): number => spec.yLog === true
    ? Y0 + PH - (Math.log10(Math.max(y, 10 ** ly0)) - ly0) / Math.max(ly1 - ly0, 1e-9) * PH
    : Y0 + PH - y / Math.max(ly1, 1e-9) * PH
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${X0 + PW / 2}" y="22" text-anchor="middle" font-size="14">${esc(spec.title)}</text>`,
    `<line x1="${X0}" y1="${Y0 + PH}" x2="${X0 + PW}" y2="${Y0 + PH}" stroke="black"/><line x1="${X0}" y1="${Y0}" x2="${X0}" y2="${Y0 + PH}" stroke="black"/>`
  ]
  const yTicks = spec.yLog === true
    ? Array.from({ length: ly1 - ly0 + 1 }, (_, k) => 10 ** (ly0 + k))
    : Array.from({ length: Math.round(ly1 / step) + 1 }, (_, k) => k * step)
  for (const t of yTicks) {
    out.push(`<line x1="${X0}" y1="${Y(t).toFixed(1)}" x2="${X0 + PW}" y2="${Y(t).toFixed(1)}" stroke="#ddd"/><text x="${X0 - 6}" y="${(Y(t) + 4).toFixed(1)}" text-anchor="end">${fmt(t)}</text>`)
  }
  for (const x of xs) out.push(`<line x1="${X(x).toFixed(1)}" y1="${Y0 + PH}" x2="${X(x).toFixed(1)}" y2="${Y0 + PH + 4}" stroke="black"/><text x="${X(x).toFixed(1)}" y="${Y0 + PH + 18}" text-anchor="middle">${fmt(x)}</text>`)
  out.push(`<text x="${X0 + PW / 2}" y="${Y0 + PH + 38}" text-anchor="middle">nodes N (log scale)</text>`)
  out.push(`<text x="20" y="${Y0 + PH / 2}" transform="rotate(-90 20 ${Y0 + PH / 2})" text-anchor="middle">${esc(spec.yLabel)}</text>`)
  const legend: Array<{ name: string, color: string, dash: string }> = []
  if (spec.goal !== undefined && xs.length > 0) {
    const steps = 40
    const pts: string[] = []
    for (let k = 0; k <= steps; k++) {
      const x = 10 ** (Math.log10(lo) + (Math.log10(hi) - Math.log10(lo)) * k / steps)
      pts.push(`${X(x).toFixed(1)},${Y(spec.goal.y(x)).toFixed(1)}`)
    }
    out.push(`<polyline points="${pts.join(' ')}" fill="none" stroke="#2ca02c" stroke-width="1.5" stroke-dasharray="6 4"/>`)
    legend.push({ name: spec.goal.label, color: '#2ca02c', dash: '6 4' })
  }
  for (const s of spec.series) {
    const pts = [...s.points].filter(p => p[0] > 0 && Number.isFinite(p[1])).sort((a, b) => a[0] - b[0])
    if (pts.length === 0) continue
    const dash = s.dashed === true ? ' stroke-dasharray="3 3"' : ''
    out.push(`<polyline points="${pts.map(p => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(' ')}" fill="none" stroke="${s.color}" stroke-width="2"${dash}/>`)
    for (const p of pts) out.push(`<circle cx="${X(p[0]).toFixed(1)}" cy="${Y(p[1]).toFixed(1)}" r="3.5" fill="${s.color}"><title>${esc(s.name)}: N=${p[0]}, ${fmt(p[1])}</title></circle>`)
    legend.push({ name: s.name, color: s.color, dash: s.dashed === true ? '3 3' : '' })
  }
  legend.forEach((l, k) => {
    const y = Y0 + 8 + k * 16
    out.push(`<line x1="${X0 + 12}" y1="${y}" x2="${X0 + 32}" y2="${y}" stroke="${l.color}" stroke-width="2"${l.dash !== '' ? ` stroke-dasharray="${l.dash}"` : ''}/><text x="${X0 + 38}" y="${y + 4}">${esc(l.name)}</text>`)
  })
  out.push('</svg>')
  return out.join('\n') + '\n'
}
