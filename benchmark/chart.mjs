// Draws benchmark/results/chart.svg from the saved runs: the addon's advantage over the
// original (higher is better, 1x is parity) for each comparable metric, per server.
// argv: label[=title] ... (default: python-server rust-server)
import { readFileSync, writeFileSync, existsSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const specs = process.argv.slice(2).length ? process.argv.slice(2) : ['python-server=SecantusDB Python server', 'rust-server=SecantusDB Rust server']
const series = specs.map((spec) => {
  const [label, title = label] = spec.split('=')
  const file = path.join(here, 'results', `${label}.json`)
  return existsSync(file) ? { title, rows: JSON.parse(readFileSync(file, 'utf8')).table.filter((r) => r['addon advantage']) } : null
}).filter(Boolean)
if (!series.length) throw new Error('no saved results to draw')

const metrics = series[0].rows.map((r) => `${r.workload} ${r.metric}`)
const value = (s, m) => parseFloat(s.rows.find((r) => `${r.workload} ${r.metric}` === m)?.['addon advantage'] ?? 'NaN')
const colors = ['#4e79a7', '#f28e2b']
const max = Math.log10(Math.max(...series.flatMap((s) => metrics.map((m) => value(s, m))).filter(Number.isFinite), 10))
const min = -0.5
const left = 260
const width = 460
const barHeight = 12
const rowHeight = barHeight * series.length + 10
const top = 40
const x = (ratio) => left + ((Math.log10(ratio) - min) / (max - min)) * width
let svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${left + width + 80}" height="${top + metrics.length * rowHeight + 40}" font-family="sans-serif" font-size="11">\n`
svg += `<text x="10" y="18" font-size="13" font-weight="bold">mongodb-resource-lock vs the original ResourceLock (advantage, log scale; right of 1x is better)</text>\n`
metrics.forEach((metric, i) => {
  const y = top + i * rowHeight
  svg += `<text x="${left - 8}" y="${y + barHeight}" text-anchor="end">${metric}</text>\n`
  series.forEach((s, j) => {
    const ratio = value(s, metric)
    if (!Number.isFinite(ratio)) return
    const x0 = x(1)
    const x1 = x(ratio)
    svg += `<rect x="${Math.min(x0, x1)}" y="${y + j * barHeight}" width="${Math.max(1, Math.abs(x1 - x0))}" height="${barHeight - 2}" fill="${colors[j]}"/>`
    svg += `<text x="${Math.max(x0, x1) + 4}" y="${y + j * barHeight + barHeight - 3}">${ratio.toFixed(2)}x</text>\n`
  })
})
const bottom = top + metrics.length * rowHeight
svg += `<line x1="${x(1)}" y1="${top - 6}" x2="${x(1)}" y2="${bottom}" stroke="#333"/><text x="${x(1)}" y="${bottom + 14}" text-anchor="middle">1x</text>\n`
series.forEach((s, j) => {
  svg += `<rect x="${left + j * 230}" y="${bottom + 22}" width="10" height="10" fill="${colors[j]}"/><text x="${left + j * 230 + 14}" y="${bottom + 31}">${s.title}</text>\n`
})
svg += '</svg>\n'
writeFileSync(path.join(here, 'results', 'chart.svg'), svg)
console.log('wrote benchmark/results/chart.svg')
