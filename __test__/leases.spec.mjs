// Leases, the context argument, fencing tokens and cancellation.
import { spawn } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import test from 'ava'
import { addonLock, deferred, freshDatabase, sleep, url } from './helpers.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))

test('the callback gets { key, signal, fencingToken }; tokens strictly increase', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const other = addonLock(t, name)
  const tokens = []
  for (const holder of [lock, other, lock, other]) {
    await holder.doWhileLocked(['a', 1], (context) => {
      t.is(context.key, 'a#1')
      t.false(context.signal.aborted)
      t.is(typeof context.fencingToken, 'bigint')
      tokens.push(context.fencingToken)
    })
  }
  for (let i = 1; i < tokens.length; i++) t.true(tokens[i] > tokens[i - 1])
})

test('context.signal aborts when lockTimeout passes', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  let signal
  await t.throwsAsync(lock.doWhileLocked(['t'], (context) => {
    signal = context.signal
    return sleep(600)
  }, { lockTimeout: 150 }), { message: /interrupt/ })
  t.true(signal.aborted)
  t.is(signal.reason.message, 'Lock interrupted by timeout')
})

test('a short lease is renewed while the callback runs', async (t) => {
  const { name, db, client } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const rival = addonLock(t, name)
  const locks = db.collection('_locks')
  const serverTime = async () => (await client.db('admin').command({ hello: 1 })).localTime.getTime()
  let rivalGotIt = false
  const inside = deferred()
  const samples = []
  const holding = lock.doWhileLocked(['renewed'], async (context) => {
    inside.resolve()
    for (let i = 0; i < 5; i++) {
      await sleep(800)
      const doc = await locks.findOne({ id: 'renewed' })
      samples.push({ expires: doc?.lease_expires_at?.getTime(), now: await serverTime() })
    }
    return context.signal.aborted
  }, { lease: 1_500, lockTimeout: Infinity }) // renewed every 500 ms: 1 s of slack on a loaded machine
  await inside.promise
  const rivalError = await rival.doWhileLocked(['renewed'], () => { rivalGotIt = true }, { waitTimeout: 3_000 }).catch((error) => error)
  t.false(await holding, 'the holder was never told it lost the lock')
  t.false(rivalGotIt, 'nobody took over a renewed lease')
  t.is(rivalError?.message, 'Unable to establish lock.')
  // 4 s into a 1.5 s lease, the stored lease is still ahead of the server's clock.
  t.log(samples.map((s) => `${s.expires - s.now} ms left`).join(', '))
  for (const sample of samples) t.true(sample.expires > sample.now, 'the stored lease had passed')
  t.true(samples.at(-1).expires >= samples[0].expires + 1_000, 'the stored lease moved forward')
})

test('aborting the caller\'s signal while waiting rejects at once with an AbortError', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  await lock.lock(['waited'])
  const controller = new AbortController()
  const started = Date.now()
  setTimeout(() => controller.abort(), 100)
  const error = await t.throwsAsync(lock.doWhileLocked(['waited'], () => {}, { waitTimeout: 10_000, signal: controller.signal }))
  t.is(error.name, 'AbortError')
  // At once, not at the 10 s waitTimeout; generous for a loaded machine.
  t.true(Date.now() - started < 5_000)
  const already = AbortSignal.abort()
  t.is((await t.throwsAsync(lock.doWhileLocked(['free'], () => {}, { signal: already }))).name, 'AbortError')
})

test('aborting the caller\'s signal while holding aborts context.signal', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const controller = new AbortController()
  const result = await lock.doWhileLocked(['held'], async (context) => {
    controller.abort()
    for (let i = 0; i < 100 && !context.signal.aborted; i++) await sleep(5)
    return context.signal.aborted
  }, { signal: controller.signal })
  t.true(result)
})

test('a manual lock with a lease expires and is taken over; one without never is', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  await lock.lock(['leased'], { lease: 200 })
  await lock.lock(['forever'])
  t.is(await lock.doWhileLocked(['leased'], () => 'taken', { waitTimeout: 2_000 }), 'taken')
  await t.throwsAsync(lock.doWhileLocked(['forever'], () => {}, { waitTimeout: 400 }), { message: 'Unable to establish lock.' })
})

test('lock() takes over a lock whose lease has passed, as tryAcquire does; a live one is still a duplicate key', async (t) => {
  const { name, db } = await freshDatabase(t)
  const first = addonLock(t, name)
  const second = addonLock(t, name)
  await first.lock(['leased'], { lease: 300 })
  await t.throwsAsync(second.lock(['leased']), { code: 11000 })
  await sleep(600)
  t.is(await second.lock(['leased']), 'leased')
  const taken = await db.collection('_locks').findOne({ id: 'leased' })
  t.is(taken.lease_expires_at, undefined, 'taken without a lease, it never expires')
  await t.throwsAsync(first.lock(['leased'], { lease: 300 }), { code: 11000 })
  await t.throwsAsync(first.unlock(['leased']), { message: 'Was not able to delete leased.' })
  await second.unlock(['leased'])
  t.is(await db.collection('_locks').countDocuments({ id: 'leased' }), 0)
})

test('a holder killed with SIGKILL frees the key within lease + one retry interval', async (t) => {
  const { name } = await freshDatabase(t)
  const lease = 1_000
  const child = spawn(process.execPath, [path.join(here, 'fixtures', 'hold-forever.mjs'), name, 'crash', String(lease)], {
    env: { ...process.env, MONGODB_URL: url },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  await new Promise((resolve, reject) => {
    child.stdout.on('data', (chunk) => { if (String(chunk).includes('held')) resolve() })
    child.once('exit', (code) => reject(new Error(`holder exited early (${code})`)))
  })
  // The waiter is connected and waiting before the kill, so only the takeover is timed.
  const lock = addonLock(t, name)
  await lock.doWhileLocked(['warm-up'], () => {})
  let tookOverAt
  const waiting = lock.doWhileLocked(['crash'], () => { tookOverAt = Date.now() }, { waitTimeout: 10_000 })
  await sleep(100)
  child.kill('SIGKILL')
  const killedAt = Date.now()
  await waiting
  const delay = tookOverAt - killedAt
  t.log(`taken over ${delay} ms after the kill (lease ${lease} ms)`)
  // The lease (counted from before the kill) bounds it; the slack is generous for a
  // loaded machine, and still far below the 10 s waitTimeout.
  t.true(delay <= lease + 3_000, `took ${delay} ms`)
})

test('a renewal that finds the lock gone aborts context.signal and rejects', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const intruder = addonLock(t, name)
  let signal
  const inside = deferred()
  const holding = lock.doWhileLocked(['stolen'], async (context) => {
    signal = context.signal
    inside.resolve()
    await sleep(2_000)
  }, { lease: 1_000, lockTimeout: Infinity })
  await inside.promise
  await intruder.unlock(['stolen']) // anyone may unlock, as in the original
  const error = await t.throwsAsync(holding)
  t.is(error.code, 'ERR_LOCK_LOST')
  t.regex(error.message, /^Lock interrupted/)
  t.true(signal.aborted)
  t.is(signal.reason.code, 'ERR_LOCK_LOST')
})

test('close() while holding aborts context.signal, releases the lock and rejects waiters', async (t) => {
  const { name, db } = await freshDatabase(t)
  const lock = addonLock(t, name)
  let signal
  const inside = deferred()
  const holding = lock.doWhileLocked(['closing'], async (context) => {
    signal = context.signal
    inside.resolve()
    await sleep(500)
  })
  await inside.promise
  // Only now: started together, either call could take the lock first.
  const waiting = lock.doWhileLocked(['closing'], () => {}, { waitTimeout: 10_000 })
  await sleep(50)
  await lock.close()
  t.is((await t.throwsAsync(holding)).code, 'ERR_LOCK_CLOSED')
  t.is((await t.throwsAsync(waiting)).code, 'ERR_LOCK_CLOSED')
  t.true(signal.aborted)
  t.is(await db.collection('_locks').countDocuments(), 0, 'the held lock was released')
})

test('a signal passed to many calls does not keep a listener per call', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const controller = new AbortController()
  const { signal } = controller
  let listeners = 0
  const add = signal.addEventListener.bind(signal)
  const remove = signal.removeEventListener.bind(signal)
  signal.addEventListener = (...args) => { listeners++; return add(...args) }
  signal.removeEventListener = (...args) => { listeners--; return remove(...args) }
  for (let i = 0; i < 20; i++) await lock.doWhileLocked(['many'], () => i, { signal })
  await t.throwsAsync(lock.doWhileLocked(['many'], () => { throw new Error('x') }, { signal }))
  t.is(listeners, 0)
})
