// The original's flaws that need no API change are fixed (see MIGRATION.md).
import test from 'ava'
import { MongoClient } from 'mongodb'
import { ResourceLock, addonLock, deferred, freshDatabase, sleep, url } from './helpers.mjs'

test('the unique index exists before the first lock: concurrent first locks, one winner', async (t) => {
  for (let round = 0; round < 3; round++) {
    const { name } = await freshDatabase(t)
    const locks = Array.from({ length: 5 }, () => new ResourceLock({ client: new MongoClient(url), databaseName: name }))
    const results = await Promise.allSettled(locks.map((lock) => lock.lock(['first'])))
    t.is(results.filter((r) => r.status === 'fulfilled').length, 1, `round ${round}`)
    t.true(results.filter((r) => r.status === 'rejected').every((r) => r.reason.code === 11000))
    await Promise.all(locks.map((lock) => lock.close()))
  }
})

test('a callback that outlived lockTimeout does not release the next holder\'s lock', async (t) => {
  const { name, db } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const slowDone = deferred()
  const slow = lock.doWhileLocked(['k'], () => slowDone.promise, { lockTimeout: 200 })
  await t.throwsAsync(slow, { message: 'Lock interrupted by timeout' })
  const secondInside = deferred()
  const secondDone = deferred()
  const second = lock.doWhileLocked(['k'], () => { secondInside.resolve(); return secondDone.promise })
  await secondInside.promise
  slowDone.resolve('late') // the first callback ends now, while the second holds the key
  await sleep(100)
  t.is(await db.collection('_locks').countDocuments({ id: 'k' }), 1, 'the second holder still holds')
  await t.throwsAsync(lock.lock(['k']), { code: 11000 })
  secondDone.resolve()
  await second
})

test('object ids are refused, so unlock([{ $gt: "" }]) deletes nothing', async (t) => {
  const { name, db } = await freshDatabase(t)
  const lock = addonLock(t, name)
  await lock.lock(['victim'])
  for (const bad of [[{ $gt: '' }], { $gt: '' }, [null], [undefined], [{ _bsontype: 'ObjectId' }], [NaN], [Infinity], [['nested']], [2n ** 64n]]) {
    await t.throwsAsync(lock.unlock(bad), { instanceOf: TypeError, message: /resourceIds/ })
    await t.throwsAsync(lock.lock(bad), { instanceOf: TypeError })
  }
  t.is(await db.collection('_locks').countDocuments({ id: 'victim' }), 1)
})

test('bad arguments are TypeError or RangeError naming the argument, as rejections', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  await t.throwsAsync(lock.lock([]), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_VALUE', message: /resourceIds/ })
  await t.throwsAsync(lock.doWhileLocked(['x'], 'not a function'), { instanceOf: TypeError, message: /callback/ })
  await t.throwsAsync(lock.doWhileLocked(['x'], () => {}, 'options'), { instanceOf: TypeError, message: /options/ })
  for (const option of ['lockTimeout', 'waitTimeout', 'retryInterval', 'lease']) {
    await t.throwsAsync(lock.doWhileLocked(['x'], () => {}, { [option]: -1 }), { instanceOf: RangeError, message: new RegExp(option) })
    await t.throwsAsync(lock.doWhileLocked(['x'], () => {}, { [option]: NaN }), { instanceOf: RangeError, message: new RegExp(option) })
    await t.throwsAsync(lock.doWhileLocked(['x'], () => {}, { [option]: '100' }), { instanceOf: TypeError, message: new RegExp(option) })
  }
  await t.throwsAsync(lock.doWhileLocked(['x'], () => {}, { signal: {} }), { instanceOf: TypeError, message: /signal/ })
  await t.throwsAsync(lock.lock(['x'], { lease: 0 }), { instanceOf: RangeError, message: /lease/ })
  // A rejection, not a synchronous throw: `.catch()` sees it.
  const pending = lock.unlock([{}])
  t.true(pending instanceof Promise)
  await t.throwsAsync(pending, { instanceOf: TypeError })
})
