// A fleet in which some processes run the original class and some this addon, on one
// database, must exclude each other on every key.
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import test from 'ava'
import { ResourceLock as OriginalLock } from '@discue/mongodb-resource-client'
import { MongoClient } from 'mongodb'
import { addonLock, freshDatabase, sleep, url } from './helpers.mjs'

const run = promisify(execFile)
const here = path.dirname(fileURLToPath(import.meta.url))

function originalLock (t, databaseName) {
  const lock = new OriginalLock({ client: new MongoClient(url), databaseName })
  t.teardown(() => lock.close())
  return lock
}

test('in one process: a key held by either implementation is refused by the other', async (t) => {
  const { name } = await freshDatabase(t)
  const addon = addonLock(t, name)
  await sleep(200) // let the original's constructor finish its index creation
  const original = originalLock(t, name)
  await addon.lock(['by-addon'])
  await t.throwsAsync(original.lock(['by-addon']), { message: /duplicate key/ })
  await original.lock(['by-original', 2])
  await t.throwsAsync(addon.lock(['by-original', 2]), { code: 11000 })
  await t.throwsAsync(addon.doWhileLocked(['by-original', 2], () => {}, { waitTimeout: 200 }), { message: 'Unable to establish lock.' })
  await original.unlock(['by-addon'])
  await addon.unlock(['by-original', 2])
})

test('in one process: waiters of both implementations never hold one key together', async (t) => {
  const { name } = await freshDatabase(t)
  const addon = addonLock(t, name)
  const original = originalLock(t, name)
  let inside = 0
  let overlaps = 0
  const work = async () => {
    if (++inside > 1) overlaps++
    await sleep(3)
    inside--
  }
  const callers = []
  for (let i = 0; i < 4; i++) {
    callers.push((async () => { for (let j = 0; j < 5; j++) await addon.doWhileLocked(['mixed'], work, { waitTimeout: 30_000 }) })())
    callers.push((async () => { for (let j = 0; j < 5; j++) await original.doWhileLocked(['mixed'], work, { waitTimeout: 30_000, retryInterval: 20 }) })())
  }
  await Promise.all(callers)
  t.is(overlaps, 0)
})

test('the original reads and releases locks written by the addon, and the reverse', async (t) => {
  const { name, db } = await freshDatabase(t)
  const addon = addonLock(t, name)
  const original = originalLock(t, name)
  await addon.lock([42])
  const written = await db.collection('_locks').findOne({ id: 42 })
  t.is(typeof written.locked_at, 'number')
  await original.unlock([42])
  await original.lock(['orig'])
  await addon.unlock(['orig'])
  t.is(await db.collection('_locks').countDocuments(), 0)
})

test('soak across processes: 2 addon + 2 original processes, read-modify-write increments stay exact', async (t) => {
  const { name, db } = await freshDatabase(t)
  const perProcess = Number(process.env.SOAK_INCREMENTS ?? 25)
  const impls = ['addon', 'original', 'addon', 'original']
  const outputs = await Promise.all(impls.map((impl) =>
    run(process.execPath, [path.join(here, 'fixtures', 'increment-worker.mjs'), impl, name, String(perProcess), 'fleet'], {
      env: { ...process.env, MONGODB_URL: url },
      timeout: 120_000
    })))
  const counter = await db.collection('counters').findOne({ _id: 'c' })
  t.is(counter.n, perProcess * impls.length)
  t.log(`${impls.length} processes x ${perProcess} increments`)
  const intervals = outputs.flatMap(({ stdout }) => JSON.parse(stdout.trim()).intervals).sort((a, b) => a[0] - b[0])
  for (let i = 1; i < intervals.length; i++) {
    t.true(intervals[i][0] >= intervals[i - 1][1], `hold ${i} started before hold ${i - 1} ended`)
  }
})
