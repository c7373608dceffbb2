// Draws benchmark/results/scaling.svg from the saved runs: hand-overs/s and p99 wait
// against the number of processes on one key (one caller each), for both
// implementations, per server.
// argv: label[=title] ... (default: rust-server python-server)
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const specs = process.argv.slice(2).length ? process.argv.slice(2) : ['rust-server=Rust server', 'python-server=Python server']
const curves = specs.flatMap((spec) => {
  const [label, title = label] = spec.split('=')
  const file = path.join(here, 'results', `${label}.json`)
  const scaling = existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')).workloads.scaling : undefined
  if (!scaling) return []
  return ['addon', 'original'].map((impl) => ({ title: `${impl}, ${title}`, impl, dashed: label !== 'rust-server', points: points(scaling[impl]) }))
})
if (!curves.length) throw new Error('no saved scaling runs to draw')

function points (metrics) {
  return Object.keys(metrics).filter((k) => k.endsWith('_handovers_per_s')).map((k) => {
    const processes = Number(k.slice(1, k.indexOf('_')))
    return { processes, rate: metrics[k], p99: metrics[`p${processes}_p99_wait_ms`] }
  }).sort((a, b) => a.processes - b.processes)
}

const panel = (key, label, top, log) => {
  const values = curves.flatMap((c) => c.points.map((p) => p[key])).filter((v) => v > 0)
  const hi = Math.max(...values) * 1.1
  const lo = log ? Math.min(...values) / 1.5 : 0
  const xs = curves[0].points.map((p) => p.processes)
  const x = (n) => 70 + (Math.log2(n) - Math.log2(xs[0])) / (Math.log2(xs.at(-1)) - Math.log2(xs[0])) * 420
  const y = (v) => top + 180 - (log ? (Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo)) : v / hi) * 180
  let svg = `<text x="10" y="${top - 8}" font-weight="bold">${label}</text>\n`
  svg += `<line x1="70" y1="${top + 180}" x2="490" y2="${top + 180}" stroke="#333"/><line x1="70" y1="${top}" x2="70" y2="${top + 180}" stroke="#333"/>\n`
  xs.forEach((n) => { svg += `<text x="${x(n)}" y="${top + 195}" text-anchor="middle">${n}</text>\n` })
  for (const v of [lo || 0, hi / 2, hi].filter((v, i, a) => a.indexOf(v) === i)) {
    svg += `<text x="64" y="${y(Math.max(v, lo || 0.0001)) + 4}" text-anchor="end">${Math.round(v)}</text>\n`
  }
  curves.forEach((c) => {
    const color = c.impl === 'addon' ? '#4e79a7' : '#f28e2b'
    const d = c.points.filter((p) => p[key] > 0).map((p, i) => `${i ? 'L' : 'M'}${x(p.processes)},${y(p[key])}`).join(' ')
    svg += `<path d="${d}" fill="none" stroke="${color}" stroke-width="2"${c.dashed ? ' stroke-dasharray="5,4"' : ''}/>\n`
  })
  return svg
}

let svg = '<svg xmlns="http://www.w3.org/2000/svg" width="720" height="520" font-family="sans-serif" font-size="11">\n'
svg += '<text x="10" y="18" font-size="13" font-weight="bold">One key, one caller per process, 1 ms section: against the number of processes</text>\n'
svg += panel('rate', 'hand-overs/s (higher is better)', 50, false)
svg += panel('p99', 'p99 wait, ms (log scale; lower is better)', 300, true)
curves.forEach((c, i) => {
  const color = c.impl === 'addon' ? '#4e79a7' : '#f28e2b'
  svg += `<line x1="520" y1="${60 + i * 18}" x2="545" y2="${60 + i * 18}" stroke="${color}" stroke-width="2"${c.dashed ? ' stroke-dasharray="5,4"' : ''}/><text x="550" y="${64 + i * 18}">${c.title}</text>\n`
})
svg += '<text x="280" y="505" text-anchor="middle">processes</text>\n</svg>\n'
writeFileSync(path.join(here, 'results', 'scaling.svg'), svg)
console.log('wrote benchmark/results/scaling.svg')
