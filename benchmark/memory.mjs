// Memory over many cycles, in a process of its own (run with --expose-gc): prints the
// RSS and heap after a forced GC at ten points of the run, as JSON.
// argv: <impl> <cycles>
import { createRequire } from 'node:module'
import { ResourceLock as OriginalLock } from '@discue/mongodb-resource-client'
import { MongoClient } from 'mongodb'

const require = createRequire(import.meta.url)
const [impl, cyclesText] = process.argv.slice(2)
const cycles = Number(cyclesText)
const url = process.env.MONGODB_URL
const databaseName = `bench_mem_${impl}_${process.pid}`
const lock = impl === 'original'
  ? new OriginalLock({ client: new MongoClient(url), databaseName })
  : new (require('../index.js').ResourceLock)({ client: new MongoClient(url), databaseName })
const parallel = 8
const samples = []
const sample = (cycle) => {
  global.gc()
  const { rss, heapUsed } = process.memoryUsage()
  samples.push({ cycle, rss_mb: rss / 2 ** 20, heap_mb: heapUsed / 2 ** 20 })
}
await lock.doWhileLocked(['warm-up'], () => {})
let done = 0
for (let step = 1; step <= 10; step++) {
  const target = Math.round((cycles * step) / 10)
  await Promise.all(Array.from({ length: parallel }, async (_, lane) => {
    for (let i = done + lane; i < target; i += parallel) await lock.doWhileLocked([`m-${i}`], () => i)
  }))
  done = target
  if (step === 1) sample(done) // after warm-up of pools and caches
  else if (step === 10 || step % 3 === 0) sample(done)
}
const client = new MongoClient(url)
await client.db(databaseName).dropDatabase()
await client.close()
await lock.close()
process.stdout.write(JSON.stringify(samples) + '\n')
