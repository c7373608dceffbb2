// Memory, in a process of its own (run with --expose-gc), in two parts; prints the RSS
// and heap after a forced GC at each point of interest, with how long each part took,
// as JSON.
// 1. `cycles` doWhileLocked on distinct keys, 8 at a time: sampled after the first
//    tenth (pools and caches warmed up) and at later points, to see growth per key.
// 2. `held` doWhileLocked on distinct keys at once, whose callbacks all wait until the
//    last has started: sampled while all are held, after they returned, and after a
//    second round on other keys, which must come back to the level of the first if
//    nothing is kept per key after release.
// argv: <impl> <cycles> <held>
import { MongoClient } from 'mongodb'

const [impl, cyclesText, heldText] = process.argv.slice(2)
const cycles = Number(cyclesText)
const held = Number(heldText)
const url = process.env.MONGODB_URL
// Only the measured implementation is loaded: importing the original also starts the
// OpenTelemetry SDK of its tracing dependency, whose memory the addon's figures would
// otherwise carry too.
const { ResourceLock } = impl === 'original'
  ? await import('@discue/mongodb-resource-client')
  : await import('../index.js')
const databaseName = `bench_mem_${impl}_${process.pid}`
const lock = new ResourceLock({ client: new MongoClient(url), databaseName })
const parallel = 8
// Generous, so that a slow server makes the rounds slow rather than failed.
const patient = { lockTimeout: 60_000, waitTimeout: 60_000 }
const sample = (at) => {
  global.gc()
  const { rss, heapUsed } = process.memoryUsage()
  return { at, rss_mb: rss / 2 ** 20, heap_mb: heapUsed / 2 ** 20 }
}
const seconds = (since) => Number(process.hrtime.bigint() - since) / 1e9

// A rejection nobody can catch (the original's own, when its lockTimeout unlocked a
// lock before the callback's end, one of its flaws) is reported instead of ending the run.
const stray = new Set()
process.on('unhandledRejection', (error) => { stray.add(String(error?.message ?? error)) })

await lock.doWhileLocked(['warm-up'], () => {})
const cyclesStart = process.hrtime.bigint()
const cycleSamples = []
let done = 0
for (let step = 1; step <= 10; step++) {
  const target = Math.round((cycles * step) / 10)
  await Promise.all(Array.from({ length: parallel }, async (_, lane) => {
    for (let i = done + lane; i < target; i += parallel) await lock.doWhileLocked([`m-${i}`], () => i)
  }))
  done = target
  if (step === 1 || step === 10 || step % 3 === 0) cycleSamples.push(sample(done))
}
const cyclesSeconds = seconds(cyclesStart)

/** One round of `held` locks at once; a call that fails is counted, not retried. */
async function holdAll (round) {
  const start = process.hrtime.bigint()
  let started = 0
  let failed = 0
  let whileHeld
  let allInSeconds
  let releaseAll
  const allIn = new Promise((resolve) => { releaseAll = resolve })
  // Failed calls count as arrived, so that the others are not kept waiting for them.
  const arrived = () => {
    if (started + failed < held) return
    allInSeconds = seconds(start)
    whileHeld = sample(`${started} held`)
    releaseAll()
  }
  const errors = new Set()
  await Promise.all(Array.from({ length: held }, async (_, i) => {
    let began = false
    try {
      await lock.doWhileLocked([`h-${round}-${i}`], async () => {
        began = true
        started++
        arrived()
        await allIn
      }, patient)
    } catch (error) {
      errors.add(error.message)
      if (!began) {
        failed++
        arrived()
      }
    }
  }))
  return { allInSeconds, seconds: seconds(start), started, failed, errors: [...errors], whileHeld, afterRelease: sample('released') }
}

const first = await holdAll(1)
const second = await holdAll(2)
const client = new MongoClient(url)
await client.db(databaseName).dropDatabase()
await client.close()
await lock.close()
process.stdout.write(JSON.stringify({ cycleSamples, cyclesSeconds, rounds: [first, second], stray: [...stray] }) + '\n')
