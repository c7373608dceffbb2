// The fault-injection run: a server on disk, worker processes of both implementations
// contending for one key (worker.mjs), and a nemesis injecting faults on a schedule:
//   partition      the target's lock connection goes through its own TCP proxy, frozen
//   pause          the target process is stopped (SIGSTOP) past its lease, as a GC pause
//   clock-forward  the target's wall clock steps 10 s ahead, and back 5 s later
//   clock-back     the target's wall clock steps 10 s back, and forward again 5 s later
//   kill           the target is SIGKILLed while it holds, then respawned
//   restart        the server is killed and restarted on the same port and storage
//   late           the target's next write that updates a lock (a renewal, a release, a
//                  take-over, a queueing write) is held in its proxy and its connection
//                  cut, so that the driver gives up on it or retries it; the server gets
//                  it 1.5 s later, past the lease. Worker a1 runs with retryable writes
//                  off, so that there the driver does give up.
// Only addon workers are targets (a killed original holder leaves a lock that never
// expires: the original's documented flaw). Each target is holding when its fault
// hits. Then the history goes to checker.mjs (and, with NEMESIS_HISTORY=<file>, to that
// file as JSON, to look into). NEMESIS_FAULTS=kill,restart limits the kinds injected.
import { fork } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { MongoClient } from 'mongodb'
import { removeStorage, startServer, tempStorage } from '../../scripts/test-server.mjs'
import { check } from './checker.mjs'
import { FakeClock } from './faketime.mjs'
import { startProxy, throughProxy } from './proxy.mjs'
import { createStore, readStore } from './store.mjs'

const require = createRequire(import.meta.url)
const here = path.dirname(fileURLToPath(import.meta.url))
const now = () => performance.timeOrigin + performance.now()
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

export const FAULT_KINDS = ['partition', 'pause', 'clock-forward', 'kill', 'restart', 'clock-back', 'late']
const LEASE = 1_000
const ADDON_OPTIONS = { lease: LEASE, lockTimeout: 4_000, waitTimeout: 3_000 }
const ORIGINAL_OPTIONS = { lockTimeout: 30_000, waitTimeout: 3_000 }
const LONG_HOLD = 3_000
/** Fail fast while the server is down or cut off, instead of waiting 30 s to select it. */
const FAST_FAIL = 'serverSelectionTimeoutMS=1500&connectTimeoutMS=1500'

/** A small seeded random generator (mulberry32), so that a schedule can be replayed. */
function random (seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/**
 * Runs the suite for `seconds` against a fresh server started from `binary` (default:
 * the PyPI build), and returns { history, verdict, schedule, seed }.
 */
export async function runSuite ({
  seconds = 60,
  binary,
  seed = Number(process.env.NEMESIS_SEED ?? (Date.now() & 0xffff)),
  kinds = process.env.NEMESIS_FAULTS ? process.env.NEMESIS_FAULTS.split(',') : FAULT_KINDS,
  addonWorkers = 3,
  originalWorkers = 2,
  log = console.log
} = {}) {
  const unknown = kinds.filter((kind) => !FAULT_KINDS.includes(kind))
  if (unknown.length) throw new RangeError(`unknown fault kinds ${unknown.join(', ')} (known: ${FAULT_KINDS.join(', ')})`)
  const rand = random(seed)
  const pick = (list) => list[Math.floor(rand() * list.length)]
  const storage = tempStorage()
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mrl-nemesis-'))
  let server = await startServer({ storagePath: storage, binary })
  const port = server.port
  const baseUrl = `mongodb://127.0.0.1:${port}/?${FAST_FAIL}`
  const databaseName = `nemesis_${randomBytes(4).toString('hex')}`
  const key = 'counter'
  const faults = []
  const slots = []
  const cleanups = []
  try {
    // The unique index first (the addon creates it before its first lock), then the store.
    const { ResourceLock } = require('../../index.js')
    const setup = new ResourceLock({ url: baseUrl, databaseName })
    await setup.doWhileLocked(['set-up'], () => {})
    await setup.close()
    const admin = new MongoClient(baseUrl)
    await createStore(admin.db(databaseName).collection('store'))
    await admin.close()

    for (let i = 0; i < addonWorkers + originalWorkers; i++) {
      const impl = i < addonWorkers ? 'addon' : 'original'
      const slot = { name: `${impl === 'addon' ? 'a' : 'o'}${i < addonWorkers ? i + 1 : i - addonWorkers + 1}`, impl }
      if (impl === 'addon') {
        slot.proxy = await startProxy(port)
        slot.clock = new FakeClock(0)
        cleanups.push(() => slot.proxy.stop(), () => slot.clock.remove())
      }
      slot.config = {
        slot: slot.name,
        impl,
        key,
        databaseName,
        historyFile: path.join(dir, `${slot.name}.jsonl`),
        callers: impl === 'addon' ? 2 : 1,
        lockUrl: impl === 'addon' ? throughProxy(baseUrl, slot.proxy.port) + (i === 0 ? '&retryWrites=false' : '') : baseUrl,
        storeUrl: baseUrl,
        options: impl === 'addon' ? ADDON_OPTIONS : ORIGINAL_OPTIONS
      }
      slots.push(slot)
    }

    let stopping = false
    const spawnWorker = (slot) => {
      const child = fork(path.join(here, 'worker.mjs'), [JSON.stringify(slot.config)], {
        env: { ...process.env, ...(slot.clock ? slot.clock.env() : {}) },
        stdio: ['ignore', 'inherit', 'inherit', 'ipc']
      })
      slot.child = child
      child.on('error', (error) => log(`[nemesis] worker ${slot.name} (pid ${child.pid}): ${error.message}`))
      slot.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
      slot.exited.then(({ code, signal }) => {
        if (stopping || slot.child !== child || signal === 'SIGKILL') return
        log(`[nemesis] worker ${slot.name} (pid ${child.pid}) exited on its own (${code ?? signal}); respawning`)
        faults.push({ kind: 'crash', slot: slot.name, pid: child.pid, start: now(), end: now() })
        spawnWorker(slot)
      })
    }
    for (const slot of slots) spawnWorker(slot)
    cleanups.push(() => Promise.all(slots.map((slot) => { if (slot.child.exitCode === null && slot.child.signalCode === null) { slot.child.kill('SIGCONT'); slot.child.kill('SIGKILL') } return slot.exited })))

    /** Asks the target for a long hold and resolves when it holds (false after 8 s). */
    const holding = (slot) => new Promise((resolve) => {
      const child = slot.child
      const timer = setTimeout(() => { child.off('message', onMessage); resolve(false) }, 8_000)
      const onMessage = (message) => {
        if (message.type !== 'inside') return
        clearTimeout(timer)
        child.off('message', onMessage)
        resolve(true)
      }
      child.on('message', onMessage)
      if (child.connected) child.send({ type: 'long', ms: LONG_HOLD })
    })

    const inject = {
      async partition (slot) {
        await sleep(300)
        slot.proxy.freeze()
        const fault = { kind: 'partition', slot: slot.name, pid: slot.child.pid, start: now() }
        // Longer than waitTimeout + the checker's bound: a call of the cut-off process
        // that waits on the server for all of it is late.
        await sleep(8_500)
        slot.proxy.thaw()
        faults.push({ ...fault, end: now() })
      },
      async pause (slot) {
        await sleep(200)
        slot.child.kill('SIGSTOP')
        const fault = { kind: 'pause', slot: slot.name, pid: slot.child.pid, start: now() }
        await sleep(LEASE + 1_500)
        slot.child.kill('SIGCONT')
        faults.push({ ...fault, end: now() })
      },
      async 'clock-forward' (slot) {
        await sleep(200)
        const fault = { kind: 'clock-forward', slot: slot.name, pid: slot.child.pid, start: now() }
        slot.clock.step(10)
        await sleep(5_000)
        slot.clock.step(-10)
        faults.push({ ...fault, end: now() })
      },
      async 'clock-back' (slot) {
        await sleep(200)
        const fault = { kind: 'clock-back', slot: slot.name, pid: slot.child.pid, start: now() }
        slot.clock.step(-10)
        await sleep(5_000)
        slot.clock.step(10)
        faults.push({ ...fault, end: now() })
      },
      async kill (slot) {
        await sleep(200)
        const pid = slot.child.pid
        slot.child.kill('SIGKILL')
        faults.push({ kind: 'kill', slot: slot.name, pid, start: now(), end: now() })
        await slot.exited
        await sleep(500)
        spawnWorker(slot)
      },
      async late (slot) {
        await slot.proxy.holdNext('update')
        const fault = { kind: 'late', slot: slot.name, pid: slot.child.pid, start: now() }
        await sleep(LEASE + 500)
        const outcome = await Promise.race([slot.proxy.deliverLate(), sleep(3_000).then(() => 'no reply')])
        faults.push({ ...fault, end: now() })
        return outcome
      },
      async restart () {
        const fault = { kind: 'restart', slot: 'server', pid: server.child.pid, start: now() }
        await server.stop('SIGKILL')
        await sleep(1_500)
        server = await startServer({ port, storagePath: storage, binary })
        faults.push({ ...fault, end: now() })
      }
    }

    // The schedule: every kind once in a random order, then again, while time remains.
    const startedAt = now()
    const injectUntil = startedAt + seconds * 1_000 - 10_000
    const schedule = []
    await sleep(3_000)
    const addonSlots = slots.filter((s) => s.impl === 'addon')
    while (now() < injectUntil) {
      const round = [...kinds].sort(() => rand() - 0.5)
      for (const kind of round) {
        if (now() >= injectUntil) break
        const target = kind === 'restart' ? null : pick(addonSlots)
        if (target && !(await holding(target))) {
          schedule.push(`${kind}@${target.name} skipped (never held within 8 s)`)
          continue
        }
        const at = Math.round((now() - startedAt) / 100) / 10
        const outcome = await inject[kind](target)
        schedule.push(`${at}s ${kind}${target ? `@${target.name}` : ''}${outcome ? ` (${outcome})` : ''}`)
        await sleep(1_500 + rand() * 1_500)
      }
    }
    const remaining = startedAt + seconds * 1_000 - now()
    if (remaining > 0) await sleep(remaining)

    // Stop: every worker finishes its call and exits; one that cannot within 30 s is
    // killed, and its unfinished calls count against it.
    stopping = true
    for (const slot of slots) if (slot.child.connected) slot.child.send({ type: 'stop' })
    const stopped = await Promise.race([
      Promise.all(slots.map((slot) => slot.exited)).then(() => true),
      sleep(30_000).then(() => false)
    ])
    if (!stopped) log('[nemesis] some workers did not stop within 30 s; killed')
    const endedAt = now()

    const reader = new MongoClient(baseUrl)
    const store = await readStore(reader.db(databaseName).collection('store'))
    await reader.close()
    const events = slots.flatMap((slot) => existsSync(slot.config.historyFile)
      ? readFileSync(slot.config.historyFile, 'utf8').split('\n').filter(Boolean).flatMap((line) => {
        try { return [JSON.parse(line)] } catch { return [] } // a line cut by SIGKILL
      })
      : [])
    const history = { events, faults, store, slots: slots.map((s) => s.name), endedAt, boundMs: 5_000 }
    if (process.env.NEMESIS_HISTORY) writeFileSync(process.env.NEMESIS_HISTORY, JSON.stringify(history))
    return { history, verdict: check(history), schedule, seed, seconds: Math.round((endedAt - startedAt) / 1_000) }
  } finally {
    for (const cleanup of cleanups.reverse()) await Promise.resolve().then(cleanup).catch((error) => log(`[nemesis] clean-up: ${error.message}`))
    await server.stop()
    removeStorage(storage)
    rmSync(dir, { recursive: true, force: true })
  }
}
