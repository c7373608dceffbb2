// The addon in worker threads. Each worker loads it on its own thread; a worker
// started after another has ended may get the ended one's thread-local storage, and
// the addon (its allocator included) must not depend on the first thread that loaded
// it still running. So this file never loads the addon on the main thread (it uses
// `database.mjs`, not `helpers.mjs`), and its tests run one at a time, the one with
// workers one after another first: its first worker is the first thread to load it.
import { Worker } from 'node:worker_threads'
import test from 'ava'
import { freshDatabase, url } from './database.mjs'

const fixture = new URL('./fixtures/lock-in-worker.mjs', import.meta.url)

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
