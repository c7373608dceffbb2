// The waiting paths against the real server: the local FIFO queue, change-stream
// wake-ups, polling with backoff where there are no change streams, and fair turns
// between processes (each ResourceLock has its own connection, queue and stream, so
// two of them contend exactly as two processes do).
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import test from 'ava'
import { MongoClient } from 'mongodb'
import { startServer } from '../scripts/test-server.mjs'
import { ResourceLock, addonLock, deferred, freshDatabase, sleep, url } from './helpers.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))

test('local waiters get the lock in the order they asked for it', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const inside = deferred()
  const done = deferred()
  // Waits until the holder is inside (a fixed sleep was too short on a loaded machine).
  const holding = lock.doWhileLocked(['fifo'], () => { inside.resolve(); return done.promise }, { lockTimeout: 20_000 })
  await inside.promise
  const order = []
  const waiters = []
  for (let i = 0; i < 6; i++) {
    waiters.push(lock.doWhileLocked(['fifo'], () => { order.push(i) }, { waitTimeout: 20_000 }))
    await sleep(25)
  }
  done.resolve()
  await Promise.all([holding, ...waiters])
  t.deepEqual(order, [0, 1, 2, 3, 4, 5])
})

/**
 * Holds `keys` with `holder` for staggered times of 6-7 s, while `waiter` waits
 * for each with a retryInterval of a minute. Returns how long after each release the
 * waiter got the key. A live change stream wakes a waiter at the release; polling
 * (standalone, or no stream) wakes it at its own backoff schedule, which after a few
 * seconds of doubling is seconds apart, and the release falls anywhere in between.
 */
async function delaysAfterRelease (holder, waiter, keys) {
  const entered = []
  const holds = keys.map((key, i) => {
    const inside = deferred()
    entered.push(inside.promise)
    return holder.doWhileLocked([key], async () => { inside.resolve(); await sleep(6_000 + 200 * i) }, { lockTimeout: 20_000 })
      .then(() => Date.now())
  })
  await Promise.all(entered)
  const acquired = keys.map((key) => waiter.doWhileLocked([key], () => Date.now(), { retryInterval: 60_000, waitTimeout: 20_000 }))
  const releasedAt = await Promise.all(holds)
  const acquiredAt = await Promise.all(acquired)
  // The waiter may get the key before the holder's promise has settled.
  return acquiredAt.map((at, i) => Math.max(0, at - releasedAt[i]))
}

const sum = (values) => values.reduce((a, b) => a + b, 0)

test('a waiter in another process is woken by the release, not by a poll', async (t) => {
  const { name } = await freshDatabase(t)
  const holder = addonLock(t, name)
  const waiter = addonLock(t, name)
  const keys = ['w1', 'w2', 'w3', 'w4', 'w5', 'w6']
  const delays = await delaysAfterRelease(holder, waiter, keys)
  t.log(`acquired ${delays.join(', ')} ms after the releases (change stream)`)
  // Generous for a loaded machine. After 6 s of backoff a poller pauses 2.5-5 s, so it
  // lands within 1 s of one release about one time in four, of all six about once in
  // a thousand runs.
  t.true(delays.every((d) => d < 1_000), `delays ${delays}`)

  // The same scenario without change streams is slower: only polls wake the waiter.
  const server = await startServer({ standalone: true })
  t.teardown(() => server.stop())
  const polled = [new ResourceLock({ url: server.url, databaseName: 'woken' }), new ResourceLock({ url: server.url, databaseName: 'woken' })]
  t.teardown(() => Promise.all(polled.map((lock) => lock.close())))
  const polledDelays = await delaysAfterRelease(polled[0], polled[1], keys)
  t.log(`acquired ${polledDelays.join(', ')} ms after the releases (standalone, polling)`)
  t.true(sum(polledDelays) > sum(delays), 'polling is slower than the change stream')
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
  let releasedAt
  const holding = holder.doWhileLocked(['polled'], async (context) => { inside.resolve(); await sleep(2_000); releasedAt = Date.now(); return context.fencingToken })
  await inside.promise
  let acquiredAt
  const second = await waiter.doWhileLocked(['polled'], (context) => { acquiredAt = Date.now(); return context.fencingToken }, { retryInterval: 60, waitTimeout: 10_000 })
  const first = await holding
  // After 2 s an uncapped backoff would pause for seconds; capped at 60 ms it polls
  // every 30-60 ms. The bound is generous for a loaded machine.
  t.log(`acquired ${acquiredAt - releasedAt} ms after the release`)
  t.true(acquiredAt >= releasedAt, 'not before the release')
  t.true(acquiredAt - releasedAt < 1_000, 'acquired soon after the release')
  t.true(second > first, 'fencing tokens increase without operationTime too (counter in _lock_fences)')
})

test('two processes on one key both get turns', async (t) => {
  const { name } = await freshDatabase(t)
  const a = addonLock(t, name)
  const b = addonLock(t, name)
  const turns = { a: 0, b: 0 }
  const errors = []
  const until = Date.now() + 2_500
  const loop = async (lock, who) => {
    while (Date.now() < until) {
      await lock.doWhileLocked(['shared'], async () => { turns[who]++; await sleep(2) }, { waitTimeout: 10_000 })
        .catch((error) => { errors.push(error) })
    }
  }
  await Promise.all([loop(a, 'a'), loop(a, 'a'), loop(a, 'a'), loop(b, 'b'), loop(b, 'b'), loop(b, 'b')])
  t.log(turns)
  t.deepEqual(errors.map((e) => e?.message ?? e), [], 'no call failed')
  const total = turns.a + turns.b
  t.true(turns.a > 0 && turns.b > 0, `turns ${JSON.stringify(turns)}`)
  t.true(Math.min(turns.a, turns.b) >= total * 0.2, `turns ${JSON.stringify(turns)}`)
})

test('a process that stops after taking turns gives up its place in the queue before it exits', async (t) => {
  // The child comes back at once after each release, so each hand-over to this
  // process also queues it again for its next call. After its last call it ends
  // without close(): the place its last release took must not outlive it, or this
  // process's next release would hand the lock to nobody, for a whole lease (5 s).
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const child = spawn(process.execPath, [path.join(here, 'fixtures', 'take-turns-and-exit.mjs'), name, 'turns', '40'], {
    env: { ...process.env, MONGODB_URL: url }, stdio: 'inherit'
  })
  let childDone = false
  const exited = once(child, 'exit').then(([code]) => { childDone = true; return code })
  const waits = []
  for (let after = 0; after < 20; after += childDone ? 1 : 0) {
    const asked = Date.now()
    await lock.doWhileLocked(['turns'], () => sleep(2), { waitTimeout: 20_000 })
    waits.push(Date.now() - asked)
  }
  t.is(await exited, 0)
  t.true(Math.max(...waits) < 2_500, `waits (ms): ${waits}`)
})
