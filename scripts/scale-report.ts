/**
 * Renders bench/scale.json (the real bench's records and the simulator's)
 * as bench/scale.md and one plot per figure, bench/scale-*.svg, against N.
 *
 *   node scripts/scale-report.ts [--in bench/scale.json]
 */
import { writeFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { fileURLToPath } from 'node:url'
import { logXPlot } from './scale-sim/svg.ts'
import { CALIBRATED_FIGURES, SCALE_JSON, readRecords } from './scale-sim/report.ts'
import type { ScaleRecord } from './scale-sim/report.ts'
import type { Series } from './scale-sim/svg.ts'

const { values } = parseArgs({ options: { in: { type: 'string' } } })
const file = values.in !== undefined ? new URL(values.in, `file://${process.cwd()}/`) : SCALE_JSON
const dir = new URL('./', file)
const records = readRecords(file)

/** Issue 16's goals, each against the figure it bounds. */
interface Figure {
  key: keyof ScaleRecord & string
  slug: string
  title: string
  unit: string
  /** The y axis' label. */
  axis: string
  goal: { text: string, y: (n: number) => number, ok: (v: number, n: number) => boolean }
  yLog?: boolean
  /** Simulated extras shown beside the main figure. */
  extras?: Array<{ key: string, label: string }>
}

const FIGURES: Figure[] = [
  {
    key: 'controlBytesPerNodePerSec',
    slug: 'control',
    axis: 'bytes/s per node',
    title: 'Control traffic per node',
    unit: 'bytes/s received per node',
    goal: { text: '<= 2 KB/s (2,000 B/s) at 10,000 nodes', y: () => 2000, ok: (v, n) => n < 10_000 || v <= 2000 },
    yLog: true,
    extras: [{ key: 'advertsHeardPerNodePerSec', label: 'adverts heard /s' }, { key: 'ihaveIdsPerNodePerSec', label: 'IHAVE ids /s' }, { key: 'hellosPerNodePerSec', label: 'hellos /s' }]
  },
  {
    key: 'connectionsPerNode',
    slug: 'connections',
    axis: 'connections per node',
    title: 'Connections per node outside jobs',
    unit: 'connections (mean over nodes and time)',
    goal: { text: '<= 64 outside jobs', y: () => 64, ok: (v) => v <= 64 },
    extras: [{ key: 'connectionsP99', label: 'p99' }, { key: 'connectionsMax', label: 'max' }, { key: 'connectionsTotalMean', label: 'all (jobs too), mean' }, { key: 'connectionsTotalMax', label: 'all, max' }]
  },
  {
    key: 'bidsPerJob',
    slug: 'bids',
    axis: 'bid requests per job',
    title: 'Bid requests per 1,000-shard job',
    unit: 'bid requests (each answered or timed out)',
    goal: { text: '<= 4 x S = 4,000 for S = 1,000 shards, not growing with N', y: () => 4000, ok: (v) => v <= 4000 },
    yLog: true,
    extras: [{ key: 'bidAnswersPerJob', label: 'answers' }, { key: 'acceptedPerJob', label: 'accepted (incl. coordinator)' }, { key: 'wantedPeers', label: 'wanted peers' }]
  },
  {
    key: 'makespanRatio',
    slug: 'makespan',
    axis: 'makespan / ideal',
    title: 'Makespan of a 1,000-shard job / ideal',
    unit: 'makespan / (work / accepting peers\' capacity)',
    goal: { text: '<= 1.2x', y: () => 1.2, ok: (v) => v > 0 && v <= 1.2 },
    extras: [{ key: 'makespanRatioMax', label: 'worst job' }, { key: 'makespanRatioDispatch', label: 'dispatch only (no bids)' }, { key: 'splitRatio', label: 'the split\'s own prediction' }, { key: 'makespanRatioVsWholeMesh', label: 'vs the whole mesh\'s capacity' }]
  },
  {
    key: 'jobsLost',
    slug: 'lost',
    axis: 'jobs lost',
    title: 'Jobs lost to churn',
    unit: 'jobs whose run failed (coordinator alive)',
    goal: { text: '0', y: () => 0, ok: (v) => v === 0 },
    extras: [{ key: 'jobs', label: 'jobs run' }, { key: 'jobsAbandoned', label: 'abandoned (coordinator left)' }, { key: 'participantsLostPerJob', label: 'participants lost per job' }, { key: 'retriesPerJob', label: 'retries per job' }]
  }
]

const ns = [...new Set(records.map(r => r.n))].sort((a, b) => a - b)
const of = (kind: 'real' | 'simulated', n: number): ScaleRecord | undefined => records.find(r => r.kind === kind && r.n === n)
const num = (v: unknown): string => typeof v === 'number' ? (Number.isInteger(v) ? v.toLocaleString('en-US') : String(+v.toPrecision(4))) : '-'

const md: string[] = [
  '# Scale: the mesh at 25 to 10,000 nodes (issue 16)',
  '',
  'Written by `node scripts/scale-report.ts` from [scale.json](scale.json). Two kinds of record, side by side against N:',
  '',
  '- **real**: `npm run bench -- --only scale` (scripts/bench/scale.ts): real MeshNodes in one process on loopback TCP.',
  '- **simulated**: `node scripts/scale-sim.ts` (scripts/scale-sim/): the node\'s own planner code from src/ (CapacityService, PeerDirectory, ConnectionKeeper with planConnections, bidOrder/gatherBids, planShards, JobRun) on a virtual clock over a modelled network. `mode: calibration` records re-run the real bench\'s setting (loopback, no churn, one job) to compare message counts; `mode: scale` records are the internet model with churn.',
  '',
  '## Goals',
  '',
  '| figure | goal | ' + ns.map(n => `N=${n.toLocaleString('en-US')}`).join(' | ') + ' |',
  '|---|---|' + ns.map(() => '---|').join('')
]
for (const f of FIGURES) {
  const cells = ns.map(n => {
    const s = of('simulated', n)?.[f.key]
    const r = of('real', n)?.[f.key]
    const applies = f.slug !== 'control' || n >= 10_000
    const mark = (v: unknown): string => typeof v === 'number' ? `${num(v)}${applies ? (f.goal.ok(v, n) ? ' ok' : ' **over**') : ''}` : ''
    // Connections are bounded per node: the busiest node's count is checked too.
    const maxOf = (rec: ScaleRecord | undefined): string => {
      const m = rec?.connectionsMax
      return f.slug === 'connections' && typeof m === 'number' ? ` (max ${num(m)}${m <= 64 ? '' : ' **over**'})` : ''
    }
    return [r !== undefined ? `real ${mark(r)}${maxOf(of('real', n))}` : '', s !== undefined ? `sim${of('simulated', n)?.mode === 'calibration' ? ' (bench setting)' : ''} ${mark(s)}${maxOf(of('simulated', n))}` : ''].filter(x => x !== '').join('<br>') || '-'
  })
  md.push(`| ${f.title} | ${f.goal.text} | ${cells.join(' | ')} |`)
}
md.push('')

for (const f of FIGURES) {
  md.push(`## ${f.title}`, '', `${f.unit}; goal ${f.goal.text}.`, '', `![${f.title}](scale-${f.slug}.svg)`, '')
  const extras = f.extras ?? []
  md.push(`| N | real | simulated | setting | ${extras.map(e => `sim ${e.label}`).join(' | ')} |`, `|---|---|---|---|${extras.map(() => '---|').join('')}`)
  for (const n of ns) {
    const r = of('real', n)
    const s = of('simulated', n)
    const setting = s === undefined ? '' : s.mode === 'calibration' ? 'bench setting' : 'internet, churn'
    md.push(`| ${n.toLocaleString('en-US')} | ${num(r?.[f.key])} | ${num(s?.[f.key])} | ${setting} | ${extras.map(e => num(s?.[e.key])).join(' | ')} |`)
  }
  md.push('')
  const points = (kind: 'real' | 'simulated', key: string, mode?: string): Array<[number, number]> => ns.flatMap(n => {
    const r = of(kind, n)
    const v = r?.[key]
    return typeof v === 'number' && (mode === undefined || r?.mode === mode) ? [[n, v] as [number, number]] : []
  })
  const series: Series[] = [
    { name: 'real (one process, loopback)', color: '#1f77b4', points: points('real', f.key) },
    { name: 'simulated, the real bench\'s setting', color: '#9467bd', points: points('simulated', f.key, 'calibration') },
    { name: 'simulated, internet model with churn', color: '#d62728', points: points('simulated', f.key, 'scale') }
  ]
  const extra = extras[0]
  if (f.slug === 'connections' && extra !== undefined) {
    series.push({ name: `simulated ${extra.label}`, color: '#ff7f0e', dashed: true, points: points('simulated', extra.key) })
  }
  const svg = logXPlot({ title: f.title, yLabel: f.axis, series, goal: { label: `goal: ${f.goal.text}`, y: f.goal.y }, yLog: f.yLog })
  writeFileSync(new URL(`scale-${f.slug}.svg`, dir), svg)
}

const sims = records.filter(r => r.kind === 'simulated')
const scale = sims.filter(r => r.mode === 'scale').sort((a, b) => a.n - b.n)
const top = scale.at(-1)
if (top !== undefined) {
  // What the largest simulated mesh says, in numbers read from its record.
  const b = (top.controlBytesBreakdown ?? {}) as Record<string, number>
  const cal = (top.calibration ?? {}) as Record<string, number>
  const failed = (top.failedCopies ?? {}) as Record<string, number>
  md.push('## Reading the figures', '', `At N = ${top.n.toLocaleString('en-US')} (simulated, internet model with churn):`, '')
  md.push(`- Control traffic ${num(top.controlBytesPerNodePerSec)} B/s per node: adverts ${num(b.adverts)} (${num(top.advertsReceivedPerNodePerSec)} a second x ${num(cal.copiesPerAdvert)} copies x ${num(cal.advertWireBytes)} B), IHAVE ${num(b.ihave)} (${num(top.ihaveIdsPerNodePerSec)} ids a second), connections ${num(b.baseline)}, hellos ${num(b.hello)}, bids ${num(b.bids)}. The mesh publishes ${num(top.advertsPublishedPerSec)} adverts a second in all (SAMPLED_ADVERTS_PER_SEC is 1), and estimates its size at ${num(top.meshEstimateRatio)} x N.`)
  md.push(`- Connections outside jobs: mean ${num(top.connectionsPerNode)}, p99 ${num(top.connectionsP99)}, max ${num(top.connectionsMax)}; all connections mean ${num(top.connectionsTotalMean)}, max ${num(top.connectionsTotalMax)}; ${num(top.dialsPerNodePerSec)} dials per node a second.`)
  md.push(`- A job asks ${num(top.bidsPerJob)} peers for bids (${num(top.bidAnswersPerJob)} answer) for ${num(top.wantedPeers)} wanted, and runs on the ${num(top.acceptedPerJob)} that accept; the call for bids takes ${num(top.bidPhaseMs)} ms on average (a round waits for its slowest answer, up to BID_TIMEOUT_MS from a peer that is gone).`)
  md.push(`- Makespan ${num(top.makespanRatio)} x ideal (worst ${num(top.makespanRatioMax)}); dispatch alone ${num(top.makespanRatioDispatch)} x; the split itself predicts ${num(top.splitRatio)} x (a shard runs on one slot at the peer's rate over its slots, so a peer with fewer shards than slots finishes its share late). Failed copies: ${Object.entries(failed).map(([k, v]) => `${k} ${v}`).join(', ') || 'none'}; ${num(top.retriesPerJob)} retries and ${num(top.backupsPerJob)} backup copies per job; ${num(top.participantsLostPerJob)} participants lost per job. Jobs lost: ${num(top.jobsLost)} of ${num(top.jobs)}.`)
  md.push('')
}
if (sims.length > 0) {
  md.push('## Control traffic, by part (simulated)', '', 'Bytes per second received per node, from the message counts and the wire sizes of the calibration object.', '')
  md.push('| N | mode | regime | adverts | IHAVE | per-connection baseline | hellos | bids | total | adverts published /s (mesh) | mesh estimate / N |', '|---|---|---|---|---|---|---|---|---|---|---|')
  for (const s of sims) {
    const b = (s.controlBytesBreakdown ?? {}) as Record<string, number>
    md.push(`| ${s.n.toLocaleString('en-US')} | ${String(s.mode)} | ${String(s.regime)} | ${num(b.adverts)} | ${num(b.ihave)} | ${num(b.baseline)} | ${num(b.hello)} | ${num(b.bids)} | ${num(s.controlBytesPerNodePerSec)} | ${num(s.advertsPublishedPerSec)} | ${num(s.meshEstimateRatio)} |`)
  }
  md.push('')
  md.push('## Jobs (simulated)', '', 'Per job: bid requests and answers, peers that accepted (the coordinator included), retries and backup copies, participants that left mid-job, the call for bids, dispatch, the ideal and the split\'s own prediction (ms), and the dispatch time by which 50/90/99/100% of the shards were done.', '')
  md.push('| N | job | state | requests | answers | accepted | retries | backups | lost peers | bids ms | dispatch ms | ideal ms | split ms | done 50/90/99/100% ms | ratio |', '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
  for (const s of sims) {
    const jobs = Array.isArray(s.jobDetails) ? s.jobDetails as Array<Record<string, unknown>> : []
    jobs.forEach((j, k) => {
      const d = j.doneMs as { p50: number, p90: number, p99: number, all: number } | undefined
      md.push(`| ${s.n.toLocaleString('en-US')} | ${k} | ${String(j.state)}${j.error !== undefined ? ` (${String(j.error)})` : ''} | ${num(j.bidRequests)} | ${num(j.bidAnswers)} | ${num(j.accepted)} | ${num(j.retries)} | ${num(j.backups)} | ${num(j.participantsLost)} | ${num(j.bidMs)} | ${num(j.dispatchMs)} | ${num(j.idealMs)} | ${num(j.splitMs)} | ${d !== undefined ? `${num(d.p50)} / ${num(d.p90)} / ${num(d.p99)} / ${num(d.all)}` : '-'} | ${num(j.ratio)} |`)
    })
  }
  md.push('')
  const failed = sims.filter(s => s.failedCopies !== undefined && Object.keys(s.failedCopies as object).length > 0)
  if (failed.length > 0) {
    md.push('Failed shard copies by code (simulated, all jobs of a run): ' + failed.map(s => `N=${s.n.toLocaleString('en-US')}: ${Object.entries(s.failedCopies as Record<string, number>).map(([k, v]) => `${k} ${v}`).join(', ')}`).join('; ') + '.', '')
  }
  const withErr = sims.filter(s => s.calibrationError !== undefined)
  md.push('## Calibration', '')
  if (withErr.length === 0) {
    md.push('No simulated record has a real record of the same N to compare with yet: run `npm run bench -- --only scale`, then `node scripts/scale-sim.ts --calibrate`.', '')
  } else {
    md.push('Relative error of the simulator against the real bench, (simulated - real) / real, same N and setting (`--calibrate`).', '')
    md.push(`| N | ${CALIBRATED_FIGURES.map(f => f.label).join(' | ')} |`, `|---|${CALIBRATED_FIGURES.map(() => '---|').join('')}`)
    for (const s of withErr) {
      const e = s.calibrationError as Record<string, number>
      md.push(`| ${s.n.toLocaleString('en-US')} | ${CALIBRATED_FIGURES.map(f => e[f.sim] !== undefined ? `${((e[f.sim] ?? 0) * 100).toFixed(1)}%` : '-').join(' | ')} |`)
    }
    md.push('')
  }
  md.push('## The model', '')
  const seen = new Set<string>()
  for (const s of sims) {
    const lines = Array.isArray(s.modelDescription) ? s.modelDescription as string[] : []
    const keyText = `${String(s.mode)}:${lines.join('\n')}`
    if (seen.has(keyText)) continue
    seen.add(keyText)
    const cal = s.calibration as { source?: string } | undefined
    md.push(`${String(s.mode)} runs (N = ${sims.filter(x => x.mode === s.mode).map(x => x.n.toLocaleString('en-US')).join(', ')}; wire sizes from ${cal?.source ?? 'defaults'}):`, '')
    for (const l of lines) md.push(`- ${l}`)
    md.push('')
  }
  md.push('Runs: ' + sims.map(s => `N=${s.n.toLocaleString('en-US')} ${num(s.secondsSimulated)} s simulated (${num(s.measuredSeconds)} s measured) in ${num(s.wallSeconds)} s, seed ${num(s.seed)}`).join('; ') + '.', '')
}

writeFileSync(new URL('scale.md', dir), md.join('\n'))
process.stdout.write(`scale-report: ${records.length} records -> ${fileURLToPath(new URL('scale.md', dir))} and ${FIGURES.length} plots\n`)
