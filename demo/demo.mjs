// The main job made visible: worker processes contend for one lock with doWhileLocked;
// this prints who held it when, and checks that no two holds overlapped.
import { spawn } from 'node:child_process'
import path from 'node:path'
import readline from 'node:readline'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const workers = Number(process.env.DEMO_WORKERS ?? 4)
const rounds = Number(process.env.DEMO_ROUNDS ?? 5)
const databaseName = `demo_${process.pid}`
const holds = []

console.log(`${workers} worker processes, ${rounds} holds each, one lock: ['demo', 'report'] (key 'demo#report')\n`)
await Promise.all(Array.from({ length: workers }, (_, i) => new Promise((resolve, reject) => {
  const name = `worker-${i + 1}`
  const child = spawn(process.execPath, [path.join(here, 'worker.mjs'), name, databaseName, String(rounds)], {
    stdio: ['ignore', 'pipe', 'inherit']
  })
  readline.createInterface({ input: child.stdout }).on('line', (line) => holds.push(JSON.parse(line)))
  child.once('exit', (code) => code === 0 ? resolve() : reject(new Error(`${name} exited with ${code}`)))
})))

holds.sort((a, b) => a.start - b.start)
const t0 = holds[0].start
const width = 60
const span = holds.at(-1).end - t0
console.log('  t (ms)      holder     fencing token          timeline')
let overlaps = 0
holds.forEach((hold, i) => {
  const overlap = i > 0 && hold.start < holds[i - 1].end
  if (overlap) overlaps++
  const from = Math.floor(((hold.start - t0) / span) * width)
  const to = Math.max(from + 1, Math.ceil(((hold.end - t0) / span) * width))
  const bar = ' '.repeat(from) + '#'.repeat(to - from)
  console.log(`${String(hold.start - t0).padStart(5)}-${String(hold.end - t0).padEnd(6)} ${hold.name.padEnd(10)} ${hold.token.padEnd(22)} |${bar.padEnd(width)}|${overlap ? '  OVERLAP' : ''}`)
})
const tokensIncrease = holds.every((hold, i) => i === 0 || BigInt(hold.token) > BigInt(holds[i - 1].token))
console.log(`\n${holds.length} holds in ${span} ms; overlapping holds: ${overlaps}; fencing tokens strictly increasing: ${tokensIncrease}`)

const { MongoClient } = await import('mongodb')
const client = new MongoClient(process.env.MONGODB_URL)
await client.db(databaseName).dropDatabase()
await client.close()
process.exit(overlaps === 0 && tokensIncrease ? 0 : 1)
