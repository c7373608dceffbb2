// The waiting paths against the real server: the local FIFO queue, change-stream
// wake-ups, polling with backoff where there are no change streams, and fair turns
// between processes (each ResourceLock has its own connection, queue and stream, so
// two of them contend exactly as two processes do).
import test from 'ava'
import { MongoClient } from 'mongodb'
import { startServer } from '../scripts/test-server.mjs'
import { ResourceLock, addonLock, deferred, freshDatabase, sleep } from './helpers.mjs'

test('local waiters get the lock in the order they asked for it', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  let release
  const holding = lock.doWhileLocked(['fifo'], () => new Promise((resolve) => { release = resolve }))
  await sleep(100)
  const order = []
  const waiters = []
  for (let i = 0; i < 6; i++) {
    waiters.push(lock.doWhileLocked(['fifo'], () => { order.push(i) }, { waitTimeout: 10_000 }))
    await sleep(10)
  }
  release()
  await Promise.all([holding, ...waiters])
  t.deepEqual(order, [0, 1, 2, 3, 4, 5])
})

test('a waiter in another process is woken by the release, not by a poll', async (t) => {
  const { name } = await freshDatabase(t)
  const holder = addonLock(t, name)
  const waiter = addonLock(t, name)
  await waiter.doWhileLocked(['warm'], () => {})
  const inside = deferred()
  const holding = holder.doWhileLocked(['woken'], async () => { inside.resolve(); await sleep(300) }, { lockTimeout: 10_000 })
  await inside.promise
  let releasedAt
  holding.then(() => { releasedAt = Date.now() })
  // retryInterval and the lease are long: only the change stream can wake it early.
  const acquiredAt = await waiter.doWhileLocked(['woken'], () => Date.now(), { retryInterval: 5_000, waitTimeout: 20_000 })
  await holding
  const delay = acquiredAt - releasedAt
  t.log(`acquired ${delay} ms after the release`)
  t.true(delay < 1_000, `took ${delay} ms`)
})

test('without change streams (standalone server) waiters poll with backoff capped at retryInterval', async (t) => {
  const server = await startServer({ standalone: true })
  t.teardown(() => server.stop())
  const probe = new MongoClient(server.url)
  const hello = await probe.db('admin').command({ hello: 1 }).finally(() => probe.close())
  t.falsy(hello.setName, 'the server is standalone')
  const holder = new ResourceLock({ url: server.url, databaseName: 'standalone' })
  const waiter = new ResourceLock({ url: server.url, databaseName: 'standalone' })
  t.teardown(() => Promise.all([holder.close(), waiter.close()]))
  await waiter.doWhileLocked(['warm'], () => {})
  const inside = deferred()
  const holding = holder.doWhileLocked(['polled'], async (context) => { inside.resolve(); await sleep(400); return context.fencingToken })
  await inside.promise
  const started = Date.now()
  const second = await waiter.doWhileLocked(['polled'], (context) => context.fencingToken, { retryInterval: 60, waitTimeout: 5_000 })
  const first = await holding
  t.true(Date.now() - started < 400 + 60 + 500, 'acquired soon after the release')
  t.true(second > first, 'fencing tokens increase without operationTime too (counter in _lock_fences)')
})

test('two processes on one key both get turns', async (t) => {
  const { name } = await freshDatabase(t)
  const a = addonLock(t, name)
  const b = addonLock(t, name)
  const turns = { a: 0, b: 0 }
  const until = Date.now() + 2_500
  const loop = async (lock, who) => {
    while (Date.now() < until) {
      await lock.doWhileLocked(['shared'], async () => { turns[who]++; await sleep(2) }, { waitTimeout: 10_000 }).catch(() => {})
    }
  }
  await Promise.all([loop(a, 'a'), loop(a, 'a'), loop(a, 'a'), loop(b, 'b'), loop(b, 'b'), loop(b, 'b')])
  t.log(turns)
  const total = turns.a + turns.b
  t.true(Math.min(turns.a, turns.b) >= total * 0.2, `turns ${JSON.stringify(turns)}`)
})
