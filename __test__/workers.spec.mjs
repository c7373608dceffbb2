// The addon in worker threads. Each worker loads it on its own thread; a worker
// started after another has ended may get the ended one's thread-local storage, and
// the addon (its allocator included) must not depend on the first thread that loaded
// it still running. So this file never loads the addon on the main thread (it uses
// `database.mjs`, not `helpers.mjs`), and its tests run one at a time, the one with
// workers one after another first: its first worker is the first thread to load it.
import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import test from 'ava'
import { freshDatabase, url } from './database.mjs'

const fixture = new URL('./fixtures/lock-in-worker.mjs', import.meta.url)
const addon = fileURLToPath(new URL('../index.js', import.meta.url))

/** The tokens a worker got holding `key` `rounds` times; rejects unless it exits with 0. */
function inWorker (databaseName, key, rounds) {
  return new Promise((resolve, reject) => {
    const worker = new Worker(fixture, { workerData: { url, databaseName, key, rounds } })
    let tokens
    worker.once('message', (message) => { tokens = message })
    worker.once('error', reject)
    worker.once('exit', (code) => {
      if (code === 0 && tokens) resolve(tokens.map(BigInt))
      else reject(new Error(`worker exited with code ${code}`))
    })
  })
}

const increasing = (tokens) => tokens.every((token, i) => i === 0 || token > tokens[i - 1])

test.serial('workers loading the addon one after another each hold the lock, tokens increasing', async (t) => {
  const { name, db } = await freshDatabase(t)
  const tokens = []
  for (let i = 0; i < 4; i++) tokens.push(...await inWorker(name, 'worker-key', 3))
  t.is(tokens.length, 12)
  t.true(increasing(tokens), tokens.join(' '))
  t.is(await db.collection('_locks').countDocuments({ id: 'worker-key' }), 0)
})

test.serial('workers running at once take turns on one key', async (t) => {
  const { name, db } = await freshDatabase(t)
  const all = await Promise.all([1, 2, 3].map(() => inWorker(name, 'shared-key', 5)))
  t.deepEqual(all.map((tokens) => tokens.length), [5, 5, 5])
  t.true(all.every(increasing))
  t.is(new Set(all.flat().map(String)).size, 15, 'no two holds share a fencing token')
  t.is(await db.collection('_locks').countDocuments({ id: 'shared-key' }), 0)
})

/** Whether `find` finds something within `ms`. */
async function appears (find, ms = 5_000) {
  for (const deadline = Date.now() + ms; Date.now() < deadline; await sleep(20)) {
    if (await find()) return true
  }
  return false
}

test.serial('a worker terminated while it holds a lock and waits for another leaves neither behind', async (t) => {
  const { name, db } = await freshDatabase(t)
  const locks = db.collection('_locks')
  // Another worker keeps the addon loaded, as in a pool: the runtime the addon's work
  // runs on ends with the last thread that loaded it, and with it any work left.
  const companion = new Worker(`require(${JSON.stringify(addon)}); require('node:worker_threads').parentPort.postMessage('loaded'); setInterval(() => {}, 1_000)`, { eval: true })
  t.teardown(() => companion.terminate())
  await once(companion, 'message')
  await locks.insertOne({ id: 'busy', locked_at: Date.now() }) // someone else's, without a lease
  const worker = new Worker(new URL('./fixtures/hold-and-wait-in-worker.mjs', import.meta.url), { workerData: { url, databaseName: name } })
  await once(worker, 'message')
  t.true(await appears(() => locks.findOne({ id: 'busy', 'queue.0': { $exists: true } })), "the worker's wait never queued")
  await worker.terminate()
  t.true(await appears(async () => await locks.countDocuments({ id: 'mine' }) === 0), "the terminated worker's lock (lease 30 s) was still there 5 s later")
  await locks.deleteOne({ id: 'busy' })
  // A wait that outlived its worker would take the key as soon as it is free, and
  // keep it: nobody is left to run its callback.
  await sleep(1_500)
  t.is(await locks.countDocuments({ id: 'busy' }), 0, "a wait of the terminated worker took the key")
})
