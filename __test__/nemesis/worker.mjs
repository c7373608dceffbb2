// One process of the fault-injection suite: `callers` loops that each take one key and,
// while holding it, increment the store's counter by read-modify-write, with this
// package or the original class. With this package, caller 0 uses doWhileLocked and
// caller 1 a handle (acquire, then release), so both paths share the faults. Appends its history to a
// file, one JSON event per line, synchronously (so that a SIGKILL loses nothing
// recorded). Times: performance.timeOrigin + performance.now(), the monotonic clock.
// IPC from the nemesis: { type: 'long', ms } makes the next hold last `ms` (it answers
// { type: 'inside' } once it holds), { type: 'stop' } ends the loops.
// argv: one JSON object (see run.mjs, `workerConfig`).
import { appendFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { MongoClient } from 'mongodb'
import { FencedCounter } from './store.mjs'

const require = createRequire(import.meta.url)
const config = JSON.parse(process.argv[2])
const { slot, impl, key, databaseName, historyFile, options } = config
const now = () => performance.timeOrigin + performance.now()
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const record = (event) => appendFileSync(historyFile, JSON.stringify(event) + '\n')

const storeClient = new MongoClient(config.storeUrl)
const counter = new FencedCounter(storeClient.db(databaseName).collection('store'))
const locks = storeClient.db(databaseName).collection('_locks')
let lock
if (impl === 'original') {
  const { ResourceLock } = await import('@discue/mongodb-resource-client')
  lock = new ResourceLock({ client: new MongoClient(config.lockUrl), databaseName })
} else {
  const { ResourceLock } = require('../../index.js')
  lock = new ResourceLock({ url: config.lockUrl, databaseName })
}

let stopping = false
let longHold = 0
process.on('message', (message) => {
  if (message.type === 'stop') stopping = true
  if (message.type === 'long') longHold = message.ms
})

async function hold (call, context, state) {
  const signal = context?.signal
  const token = impl === 'addon' ? context.fencingToken : null
  record({ type: 'hold', call, at: now(), token: token === null ? null : String(token) })
  signal?.addEventListener('abort', () => record({ type: 'abort', call, at: now(), reason: String(signal.reason?.message ?? signal.reason) }))
  // The original has no owner field: remember our own document, to delete it if the
  // original's release fails (it would block the key forever, its documented flaw).
  if (impl === 'original') state.mine = await locks.findOne({ id: key }, { projection: { _id: 1 } })
  const ms = longHold
  longHold = 0
  if (ms) process.send?.({ type: 'inside', call })
  const until = performance.now() + ms
  do {
    if (signal?.aborted) break
    const readAt = now()
    const n = await counter.read(token)
    if (n === null) {
      // Refused: a later holder has been here. Recorded as a refused store access
      // (made while the signal had not aborted: checked just above).
      record({ type: 'write', op: 'read', call, at: readAt, repliedAt: now(), aborted: false, accepted: false })
      break
    }
    await sleep(20)
    // Written even when the signal aborted meanwhile (recorded so, and not trusted by
    // the checker): the store's fencing must refuse it.
    const aborted = signal?.aborted ?? false
    const sentAt = now()
    let accepted = null
    try {
      accepted = await counter.write(n + 1, token)
    } finally {
      record({ type: 'write', call, at: sentAt, repliedAt: now(), aborted, accepted, n: n + 1 })
    }
    if (ms) await sleep(100)
  } while (performance.now() < until)
  record({ type: 'left', call, at: now() })
}

async function loop (caller) {
  for (let i = 0; !stopping; i++) {
    const call = `${process.pid}.${caller}.${i}`
    record({ type: 'call', call, slot, pid: process.pid, impl, at: now(), waitTimeout: options.waitTimeout })
    const state = {}
    try {
      if (impl === 'addon' && caller % 2 === 1) {
        const handle = await lock.acquire([key], options)
        try {
          await hold(call, handle, state)
        } finally {
          await handle.release()
        }
      } else {
        await lock.doWhileLocked([key], (context) => hold(call, context, state), options)
      }
      record({ type: 'end', call, at: now(), ok: true })
    } catch (error) {
      record({ type: 'end', call, at: now(), ok: false, error: String(error?.message ?? error).slice(0, 200) })
      if (state.mine) await cleanUp(state.mine._id)
      await sleep(50)
    }
    await sleep(Math.random() * 30)
  }
}

/** Deletes the original's own lock document after a failed release, retrying a while. */
async function cleanUp (id) {
  for (let attempt = 0; attempt < 20; attempt++) {
    try {
      await locks.deleteOne({ _id: id })
      return
    } catch {
      await sleep(500)
    }
  }
}

await Promise.all(Array.from({ length: config.callers }, (_, caller) => loop(caller)))
await lock.close().catch(() => {})
await storeClient.close().catch(() => {})
record({ type: 'exit', pid: process.pid, at: now() })
process.exit(0)
