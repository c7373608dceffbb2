// The original's API and behaviour (README, "Switching from the original"), point by point.
import test from 'ava'
import { ResourceLock as OriginalLock } from '@discue/mongodb-resource-client'
import { MongoClient } from 'mongodb'
import { ResourceLock, addonLock, deferred, freshDatabase, sleep, url, withDatabase } from './helpers.mjs'

test('lock resolves to the key: one id keeps its type, several are joined with #', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  t.is(await lock.lock([123]), 123)
  t.is(await lock.lock(['a']), 'a')
  t.is(await lock.lock(['a', 'b', 7]), 'a#b#7')
  t.is(await lock.lock('plain'), 'plain')
})

test('a held key rejects with a MongoServerError-shaped duplicate key error', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  await lock.lock(['dup'])
  const error = await t.throwsAsync(lock.lock(['dup']))
  t.is(error.code, 11000)
  t.is(error.name, 'MongoServerError')
  t.regex(error.message, /duplicate key/)
  t.regex(error.errorResponse.errmsg, /duplicate key/)
  t.deepEqual(error.keyPattern, { id: 1 })
  t.deepEqual(error.keyValue, { id: 'dup' })
})

test('123 and 123.0 are one key, "123" another', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  await lock.lock([123])
  const error = await t.throwsAsync(lock.lock([123.0]))
  t.deepEqual(error.keyValue, { id: 123 })
  t.is(await lock.lock(['123']), '123')
})

test('documents and indexes are the original\'s', async (t) => {
  const { name, db } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const before = Date.now()
  await lock.lock(['doc'])
  const doc = await db.collection('_locks').findOne({ id: 'doc' }, { promoteValues: false })
  t.is(doc.locked_at._bsontype, 'Double')
  t.true(doc.locked_at.value >= before && doc.locked_at.value <= Date.now())
  t.is(doc._meta_data.created_at._bsontype, 'Timestamp')
  t.true(Math.abs(doc._meta_data.created_at.toNumber() - doc.locked_at.value) < 5)
  const indexes = await db.collection('_locks').indexes()
  t.deepEqual(indexes.map((i) => i.name).sort(), ['_id_', 'id_1', 'locked_at_1'])
  t.true(indexes.find((i) => i.name === 'id_1').unique)
  t.is(indexes.find((i) => i.name === 'locked_at_1').expireAfterSeconds, 1)
})

test('unlock resolves undefined, and rejects when there is nothing to delete', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  await lock.lock(['a', 'b'])
  t.is(await lock.unlock(['a', 'b']), undefined)
  const error = await t.throwsAsync(lock.unlock(['a', 'b']))
  t.is(error.message, 'Was not able to delete a,b.')
  t.true(error instanceof Error)
  t.is(error.name, 'Error', 'a plain Error to code written for the original')
  t.is(error.code, 'ERR_LOCK_NOT_DELETED')
})

test('anyone may unlock any key, as in the original', async (t) => {
  const { name } = await freshDatabase(t)
  await addonLock(t, name).lock(['shared'])
  await t.notThrowsAsync(addonLock(t, name).unlock(['shared']))
})

test('doWhileLocked resolves with exactly what the callback returned', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const object = { same: true }
  const symbol = Symbol('s')
  t.is(await lock.doWhileLocked(['v'], () => object), object)
  t.is(await lock.doWhileLocked(['v'], () => undefined), undefined)
  t.is(await lock.doWhileLocked(['v'], () => symbol), symbol)
  t.is(await lock.doWhileLocked(['v'], async () => { await sleep(5); return object }), object)
  t.is(await lock.doWhileLocked(['v'], () => null), null)
})

test('doWhileLocked rejects with exactly what the callback threw, and releases', async (t) => {
  const { name, db } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const error = new RangeError('mine')
  t.is(await t.throwsAsync(lock.doWhileLocked(['e'], () => { throw error })), error)
  t.is(await t.throwsAsync(lock.doWhileLocked(['e'], async () => { throw error })), error)
  const thrown = await lock.doWhileLocked(['e'], () => { throw 'a string' }).catch((e) => e) // eslint-disable-line no-throw-literal
  t.is(thrown, 'a string')
  t.is(await db.collection('_locks').countDocuments(), 0)
})

test('a second caller runs after the first releases (original timing: 500-700 ms; only the order is asserted)', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  let start
  let secondRanAt
  const started = deferred()
  await Promise.all([
    lock.doWhileLocked(['timed'], () => { start = Date.now(); started.resolve(); return sleep(500) }),
    started.promise.then(() => sleep(50)).then(() => lock.doWhileLocked(['timed'], () => { secondRanAt = Date.now() - start }))
  ])
  t.log(`second ran at ${secondRanAt} ms`)
  t.true(secondRanAt >= 500, `second ran at ${secondRanAt} ms, inside the first hold`)
  t.true(secondRanAt < 5_000, `second ran at ${secondRanAt} ms, at its waitTimeout`)
})

test('waitTimeout: 250 against a 1 s holder rejects with Unable to establish lock.', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const inside = deferred()
  const holding = lock.doWhileLocked(['busy'], () => { inside.resolve(); return sleep(1_000) })
  await inside.promise
  const error = await t.throwsAsync(lock.doWhileLocked(['busy'], () => {}, { waitTimeout: 250 }))
  t.is(error.message, 'Unable to establish lock.')
  await holding
})

/** Both implementations on one fresh database; the addon's first call creates the unique index. */
async function bothImplementations (t, name) {
  const addon = addonLock(t, name)
  await addon.doWhileLocked(['indexes'], () => {})
  const original = new OriginalLock({ client: new MongoClient(url), databaseName: name })
  t.teardown(() => original.close())
  return { addon, original }
}

/**
 * A minimal thenable that is not a Promise (as a Mongoose Query, a Knex builder or a
 * Bluebird promise): it settles `ms` after `then` is called, as `await` calls it.
 */
function thenable (ms, { value, error }, onSettle) {
  return {
    // oxlint-disable-next-line unicorn/no-thenable -- being a thenable is the point
    then (resolve, reject) {
      setTimeout(() => {
        onSettle()
        if (error) reject(error)
        else resolve(value)
      }, ms)
    }
  }
}

/** A returns a thenable that settles 300 ms later; B asks for the key while A holds it. */
async function thenableOrder (lock, key, outcome) {
  const events = []
  const inside = deferred()
  const first = lock.doWhileLocked([key], () => {
    events.push('A start')
    inside.resolve()
    return thenable(300, outcome, () => events.push('A done'))
  })
  await inside.promise
  const second = lock.doWhileLocked([key], () => { events.push('B start') }, { waitTimeout: 5_000 })
  const [a, b] = await Promise.allSettled([first, second])
  return { events, a, b }
}

test('a returned thenable is adopted as await does: the lock is held until it settles, and its value is the result', async (t) => {
  const { name } = await freshDatabase(t)
  const { addon, original } = await bothImplementations(t, name)
  const value = { rows: 3 }
  for (const [impl, lock] of [['original', original], ['addon', addon]]) {
    const { events, a, b } = await thenableOrder(lock, `resolving-${impl}`, { value })
    t.deepEqual(events, ['A start', 'A done', 'B start'], `${impl}: B ran before A's thenable settled`)
    t.is(a.status, 'fulfilled', impl)
    t.is(a.value, value, `${impl}: doWhileLocked resolves with what the thenable resolved with`)
    t.is(b.status, 'fulfilled', impl)
  }
})

test('a returned thenable that rejects: the lock is held until it settles, and its reason is the rejection', async (t) => {
  const { name } = await freshDatabase(t)
  const { addon, original } = await bothImplementations(t, name)
  const error = new RangeError('query failed')
  for (const [impl, lock] of [['original', original], ['addon', addon]]) {
    const { events, a, b } = await thenableOrder(lock, `rejecting-${impl}`, { error })
    t.deepEqual(events, ['A start', 'A done', 'B start'], `${impl}: B ran before A's thenable settled`)
    t.is(a.status, 'rejected', impl)
    t.is(a.reason, error, `${impl}: doWhileLocked rejects with what the thenable rejected with`)
    t.is(b.status, 'fulfilled', impl)
  }
})

test('waitTimeout bounds the wait behind a holder of the same process too; 0 is one attempt, as in the original', async (t) => {
  const { name } = await freshDatabase(t)
  const { addon, original } = await bothImplementations(t, name)
  for (const [impl, lock] of [['original', original], ['addon', addon]]) {
    for (const waitTimeout of [0, 200]) {
      const key = `local-${impl}-${waitTimeout}`
      const events = []
      const inside = deferred()
      const holding = lock.doWhileLocked([key], async () => {
        inside.resolve()
        await sleep(1_500)
        events.push('holder done')
      })
      await inside.promise
      const waiting = lock.doWhileLocked([key], () => { events.push('waiter ran') }, { waitTimeout })
        .then(() => events.push('waiter resolved'), (error) => events.push(`waiter rejected: ${error.message}`))
      await Promise.all([holding, waiting])
      t.deepEqual(events, ['waiter rejected: Unable to establish lock.', 'holder done'], `${impl}, waitTimeout ${waitTimeout}`)
    }
  }
})

test('lockTimeout: 250 with a 1 s callback rejects with Lock interrupted by timeout', async (t) => {
  const { name, db } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const start = Date.now()
  const error = await t.throwsAsync(lock.doWhileLocked(['slow'], () => sleep(5_000), { lockTimeout: 250 }))
  t.is(error.message, 'Lock interrupted by timeout')
  const took = Date.now() - start
  t.true(took >= 250, `rejected after ${took} ms`)
  t.true(took < 4_000, `rejected after ${took} ms: at the callback's end, not at lockTimeout`)
  t.is(await db.collection('_locks').countDocuments({ id: 'slow' }), 0, 'released at the timeout')
})

test('database: databaseName, else the client\'s default database, else test; the env variable wins', async (t) => {
  const client = new MongoClient(withDatabase(url, 'fromurl'))
  const lock = new ResourceLock({ client })
  const key = `db-${Date.now()}`
  await lock.lock([key])
  t.truthy(await client.db('fromurl').collection('_locks').findOne({ id: key }))
  await lock.unlock([key])
  await lock.close()

  const plain = new MongoClient(url)
  const inTest = new ResourceLock({ url: withDatabase(url, '') })
  await inTest.lock([key])
  t.truthy(await plain.db('test').collection('_locks').findOne({ id: key }))
  await inTest.unlock([key])
  await inTest.close()

  process.env.DSQ_MONGODB_RESOURCE_CLIENT_DB_NAME = 'fromenv'
  try {
    const fromEnv = new ResourceLock({ url, databaseName: 'ignored' })
    await fromEnv.lock([key])
    t.truthy(await plain.db('fromenv').collection('_locks').findOne({ id: key }))
    await fromEnv.unlock([key])
    await fromEnv.close()
  } finally {
    delete process.env.DSQ_MONGODB_RESOURCE_CLIENT_DB_NAME
  }
  await plain.db('fromenv').dropDatabase()
  await plain.db('fromurl').dropDatabase()
  await plain.close()
})

test('without client or url the constructor throws a TypeError', (t) => {
  t.throws(() => new ResourceLock(), { instanceOf: TypeError, message: /client/ })
  t.throws(() => new ResourceLock({}), { instanceOf: TypeError, message: /client/ })
  t.throws(() => new ResourceLock({ client: {} }), { instanceOf: TypeError, message: /MongoClient/ })
  t.throws(() => new ResourceLock({ url, connectTimeout: -1 }), { instanceOf: RangeError, message: /connectTimeout/ })
})

test('close() closes the caller\'s MongoClient, as the original does', async (t) => {
  const client = new MongoClient(url)
  let closed = 0
  const close = client.close.bind(client)
  client.close = (...args) => { closed++; return close(...args) }
  const lock = new ResourceLock({ client })
  await lock.lock([`close-${Date.now()}`]).then((key) => lock.unlock([key]))
  await lock.close()
  t.is(closed, 1)
  const error = await t.throwsAsync(lock.lock(['after-close']))
  t.is(error.code, 'ERR_LOCK_CLOSED')
  await t.notThrowsAsync(lock.close())
})

// The original's async close() ends with `return this._mongoDbClient.close()`: what
// that throws or rejects with becomes close()'s rejection, and a value that is not a
// promise is fine. A throw used to escape into Node as an uncaught exception and end
// the process.
test('close() passes on what the client\'s close() throws or rejects with, as the original does', async (t) => {
  const closing = [
    ['throws', () => { throw new Error('already closed') }, 'already closed'],
    ['rejects', () => Promise.reject(new Error('close failed')), 'close failed'],
    ['returns undefined', () => undefined, null],
    // oxlint-disable-next-line unicorn/no-thenable -- being a thenable is the point
    ['returns a thenable', () => ({ then: (resolve) => resolve() }), null]
  ]
  for (const [how, close, message] of closing) {
    const client = new MongoClient(url)
    t.teardown(() => MongoClient.prototype.close.call(client))
    client.close = close
    const lock = new ResourceLock({ client })
    const [closed] = await Promise.allSettled([lock.close()])
    t.is(closed.status, message === null ? 'fulfilled' : 'rejected', how)
    t.is(closed.reason?.message ?? null, message, how)
  }
})
