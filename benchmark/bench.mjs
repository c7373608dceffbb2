// `npm run bench`: the original JavaScript ResourceLock and this addon, in the same run,
// alternating, on the same server (MONGODB_URL or the embedded one). Prints a table of
// medians, percentiles and ratios and saves it to benchmark/results/latest.json.
import { spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import readline from 'node:readline'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { ResourceLock as OriginalLock } from '@discue/mongodb-resource-client'
import { MongoClient } from 'mongodb'
import { contendOnMutex } from './one-key.mjs'

const require = createRequire(import.meta.url)
const { ResourceLock: AddonLock } = require('../index.js')
// The class index.js wraps with spans, with the error classes index.js registered.
const { ResourceLock: NativeLock } = require('../binding.js')
const here = path.dirname(fileURLToPath(import.meta.url))
const url = process.env.MONGODB_URL
const rounds = Number(process.env.BENCH_ROUNDS ?? 2)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const percentile = (values, p) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]
}
// Of the rounds; `percentile(values, 50)` of two rounds would be the higher one.
const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = sorted.length >> 1
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

// Every contended run starts all its callers at once, and its first second is that
// start: a queue forming, in which no process of the addon knows yet how fast its turns
// come (so every waiter listens), and all the original's processes race. What a service
// sees is the steady state after it, so the runs count from `WARM_UP_MS` on.
const WARM_UP_MS = 1_000
/** The counted part of a run of `seconds` that starts now: after the warm-up. */
const counted = (seconds) => {
  const from = Date.now() + WARM_UP_MS
  return { from, until: from + seconds * 1000 }
}

const implementations = {
  original: (databaseName) => new OriginalLock({ client: new MongoClient(url), databaseName }),
  addon: (databaseName) => new AddonLock({ client: new MongoClient(url), databaseName })
}

async function withLock (impl, fn) {
  const databaseName = `bench_${impl}_${Date.now()}`
  const lock = implementations[impl](databaseName)
  await sleep(300) // the original creates its indexes in the background
  await lock.doWhileLocked(['warm-up'], () => {})
  try {
    return await fn(lock)
  } finally {
    const client = new MongoClient(url)
    await client.db(databaseName).dropDatabase()
    await client.close()
    await lock.close()
  }
}

/**
 * Runs `processes` contender processes on one key, started together; with `slowHold`,
 * each also loops on a second key held that long, whose figures come as `slow_`.
 */
async function contend (impl, processes, callers, seconds, pause = 0, slowHold = 0) {
  const databaseName = `bench_${impl}_procs_${Date.now()}`
  const children = Array.from({ length: processes }, () => spawn(process.execPath,
    [path.join(here, 'contender.mjs'), impl, databaseName, String(callers), String(pause), String(slowHold)], { stdio: ['pipe', 'pipe', 'inherit'] }))
  const lines = children.map((child) => readline.createInterface({ input: child.stdout })[Symbol.asyncIterator]())
  await Promise.all(lines.map((it) => it.next()))
  // Once all are connected, each gets the same counted period as its start signal.
  const period = JSON.stringify(counted(seconds))
  children.forEach((child) => child.stdin.end(period))
  const reports = (await Promise.all(lines.map((it) => it.next()))).map(({ value }) => JSON.parse(value))
  const client = new MongoClient(url)
  await client.db(databaseName).dropDatabase()
  await client.close()
  const fast = handovers({ turns: reports.flatMap((r) => r.turns), waits: reports.flatMap((r) => r.waits) }, seconds)
  if (!slowHold) return fast
  const slow = handovers({ turns: reports.flatMap((r) => r.slow.turns), waits: reports.flatMap((r) => r.slow.waits) }, seconds)
  return { ...fast, slow_handovers_per_s: slow.handovers_per_s, slow_p99_wait_ms: slow.p99_wait_ms }
}

/** Hand-overs/s and waits of `turns`/`waits` over `seconds`. */
function handovers ({ turns, waits }, seconds) {
  const total = turns.reduce((a, b) => a + b, 0)
  return { handovers_per_s: total / seconds, p99_wait_ms: percentile(waits, 99), fewest_turns: Math.min(...turns), mean_turns: total / turns.length }
}

/**
 * 2 to 32 processes, one caller each, on one key: hand-overs/s and p99 wait. 8 s
 * counted, so that even at 32 processes each has dozens of turns. Odd rounds go from
 * the most processes to the fewest, so that every point has the same mean place in
 * the run: a shared machine's speed drifts over minutes (32-process runs a few
 * minutes apart on one server: 245-346 hand-overs/s), and a curve always run upwards
 * measured its 32-process point later than its 4-process point.
 */
async function scaling (impl, round) {
  const curve = {}
  const counts = (process.env.BENCH_SCALING ?? '2,4,8,16,32').split(',').map(Number)
  for (const processes of round % 2 ? counts.reverse() : counts) {
    const { handovers_per_s: rate, p99_wait_ms: p99, fewest_turns: fewest } = await contend(impl, processes, 1, 8)
    curve[`p${processes}_handovers_per_s`] = rate
    curve[`p${processes}_p99_wait_ms`] = p99
    curve[`p${processes}_fewest_turns`] = fewest
  }
  return curve
}

const workloads = {
  async uncontended (impl) {
    return withLock(impl, async (lock) => {
      const latencies = []
      for (let i = 0; i < 300; i++) {
        const start = process.hrtime.bigint()
        await lock.doWhileLocked([`fresh-${i}`], () => {})
        latencies.push(Number(process.hrtime.bigint() - start) / 1e6)
      }
      return { p50_ms: percentile(latencies, 50), p99_ms: percentile(latencies, 99) }
    })
  },
  async parallel (impl) {
    return withLock(impl, async (lock) => {
      let done = 0
      const until = Date.now() + 2_000
      await Promise.all(Array.from({ length: 64 }, async (_, caller) => {
        for (let i = 0; Date.now() < until; i++) {
          await lock.doWhileLocked([`p-${caller}-${i}`], () => {})
          done++
        }
      }))
      return { ops_per_s: done / 2 }
    })
  },
  // In a process of its own, like the other contended workloads (see contender.mjs).
  async oneKey16Callers (impl) {
    return contend(impl, 1, 16, 3)
  },
  async fourProcesses (impl) {
    return contend(impl, 4, 4, 4)
  },
  async fourProcessesOneCaller (impl) {
    return contend(impl, 4, 1, 4)
  },
  scaling,
  // Each of 8 processes loops on a 1 ms key and, with one more caller, on a 40 ms
  // key: the waits of the slow key must not slow the fast one (compare `scaling`'s 8
  // processes, which have the fast key alone).
  async twoKeys (impl) {
    return contend(impl, 8, 1, 8, 0, 40)
  },
  // Workers that do something else between two holds: a process that comes back after
  // its hand-over's place was given up queues with a write of its own.
  async pausing32 (impl) {
    return contend(impl, 32, 1, 4, 60)
  },
  // Parts and samples: see memory.mjs. Growth is from the sample after the first tenth
  // of the cycles (warm-up) to the last; the held figures are of the first round, the
  // last two after it returned and after a second round.
  async memory (impl) {
    const cycles = Number(process.env.BENCH_MEMORY_CYCLES ?? 100_000)
    const held = Number(process.env.BENCH_MEMORY_HELD ?? 10_000)
    const child = spawn(process.execPath, ['--expose-gc', path.join(here, 'memory.mjs'), impl, String(cycles), String(held)], { stdio: ['ignore', 'pipe', 'inherit'] })
    let report
    for await (const line of readline.createInterface({ input: child.stdout })) report = JSON.parse(line)
    const { cycleSamples, cyclesSeconds, rounds: [first, second], stray } = report
    for (const [round, { failed, errors }] of [first, second].entries()) {
      if (failed) console.error(`memory ${impl}: round ${round + 1} of ${held} held: ${failed} calls failed: ${errors.join('; ')}`)
    }
    if (stray.length) console.error(`memory ${impl}: rejections nobody could catch: ${stray.join('; ')}`)
    const warm = cycleSamples[0]
    const last = cycleSamples.at(-1)
    return {
      cycles,
      cycles_s: cyclesSeconds,
      rss_after_mb: last.rss_mb,
      heap_after_mb: last.heap_mb,
      rss_growth_mb: last.rss_mb - warm.rss_mb,
      heap_growth_mb: last.heap_mb - warm.heap_mb,
      held,
      held_failed: first.failed + second.failed,
      all_held_s: first.allInSeconds,
      held_round_s: first.seconds,
      held_rss_mb: first.whileHeld.rss_mb,
      after_release_rss_mb: first.afterRelease.rss_mb,
      after_second_round_rss_mb: second.afterRelease.rss_mb,
      held_heap_mb: first.whileHeld.heap_mb,
      after_release_heap_mb: first.afterRelease.heap_mb,
      after_second_round_heap_mb: second.afterRelease.heap_mb
    }
  },
  // What the binding itself costs per call: calls that cross into Rust and come back
  // rejected (ERR_LOCK_CLOSED) without touching the server, on the native class. The
  // `traced_` figures go through the class this package exports, which records spans:
  // in this process an OpenTelemetry SDK runs (the original's tracing dependency
  // starts one), so they include the SDK's cost of recording them.
  async bindingCost (impl) {
    if (impl === 'original') return { lock_us: NaN, doWhileLocked_us: NaN, traced_lock_us: NaN, traced_doWhileLocked_us: NaN }
    const native = new NativeLock({ url })
    await native.close()
    const traced = implementations.addon('bench_binding')
    await traced.close()
    const perCall = async (call) => {
      for (let i = 0; i < 2_000; i++) await call().catch(() => {}) // warm-up: steady state only
      const n = 20_000
      const start = process.hrtime.bigint()
      for (let i = 0; i < n; i++) await call().catch(() => {})
      return Number(process.hrtime.bigint() - start) / 1e3 / n
    }
    return {
      lock_us: await perCall(() => native.lock(['x'])),
      doWhileLocked_us: await perCall(() => native.doWhileLocked(['x'], () => {})),
      traced_lock_us: await perCall(() => traced.lock(['x'])),
      traced_doWhileLocked_us: await perCall(() => traced.doWhileLocked(['x'], () => {}))
    }
  }
}

async function ping () {
  const client = new MongoClient(url)
  await client.db('admin').command({ ping: 1 })
  const times = []
  for (let i = 0; i < 100; i++) {
    const start = process.hrtime.bigint()
    await client.db('admin').command({ ping: 1 })
    times.push(Number(process.hrtime.bigint() - start) / 1e6)
  }
  await client.close()
  return { p50_ms: percentile(times, 50), p99_ms: percentile(times, 99) }
}

const results = { date: new Date().toISOString(), server: url.replace(/\/\/[^@/]*@/, '//****@'), node: process.version, rounds, ping: await ping(), workloads: {} }
// The ceiling of one process on one key: an in-process mutex, same callers and section.
results.ceiling = handovers(await contendOnMutex(16, counted(3)), 3)
const only = process.env.BENCH_ONLY?.split(',')
for (const [name, workload] of Object.entries(workloads).filter(([name]) => !only || only.includes(name))) {
  const runs = { original: [], addon: [] }
  for (let round = 0; round < rounds; round++) {
    for (const impl of round % 2 ? ['addon', 'original'] : ['original', 'addon']) {
      runs[impl].push(await workload(impl, round))
    }
  }
  const medians = (impl) => Object.fromEntries(Object.keys(runs[impl][0]).map((k) => [k, median(runs[impl].map((r) => r[k]))]))
  results.workloads[name] = { original: medians('original'), addon: medians('addon') }
}

const rows = []
for (const [name, { original, addon }] of Object.entries(results.workloads)) {
  for (const metric of Object.keys(original)) {
    const higherIsBetter = /per_s|turns/.test(metric)
    const ratio = higherIsBetter ? addon[metric] / original[metric] : original[metric] / addon[metric]
    const comparable = Number.isFinite(ratio) && !/cycles$|growth|held$|failed/.test(metric)
    rows.push({ workload: name, metric, original: +original[metric].toFixed(2), addon: +addon[metric].toFixed(2), 'addon advantage': comparable ? `${ratio.toFixed(2)}x` : '' })
  }
}
console.log(`server ${results.server}; ping p50 ${results.ping.p50_ms.toFixed(2)} ms, p99 ${results.ping.p99_ms.toFixed(2)} ms; median of ${rounds} alternating rounds`)
console.table(rows)
const oneKey = results.workloads.oneKey16Callers?.addon
if (oneKey) {
  const { handovers_per_s: rate, p99_wait_ms: p99 } = results.ceiling
  console.log(`in-process mutex (the ceiling of one process): ${rate.toFixed(0)} hand-overs/s, p99 wait ${p99} ms; the addon reaches ${(oneKey.handovers_per_s / rate).toFixed(2)} of it, p99 ${(oneKey.p99_wait_ms / p99).toFixed(2)}x`)
}
results.table = rows
const label = process.env.BENCH_LABEL ?? 'latest'
writeFileSync(path.join(here, 'results', `${label}.json`), JSON.stringify(results, null, 2) + '\n')
console.log(`saved benchmark/results/${label}.json`)
process.exit(0)
