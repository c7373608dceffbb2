// Keys of any BSON scalar, exactly as the original keys them, so that a rolling upgrade
// keeps exclusion between processes running either implementation.
import test from 'ava'
import { Decimal128, Long, ObjectId, UUID } from 'mongodb'
import { addonLock, deferred, freshDatabase, sleep } from './helpers.mjs'

const { ResourceLock: Original } = await import('@discue/mongodb-resource-client')

test('an ObjectId id is the same key for the original and the addon, alone or joined', async (t) => {
  const { name, client, db } = await freshDatabase(t)
  const ours = addonLock(t, name)
  const original = new Original({ client, databaseName: name })
  const id = new ObjectId()
  await original.lock([id])
  t.is((await t.throwsAsync(ours.lock([id]))).code, 11000, 'the original\'s lock of [id] excludes the addon')
  await original.unlock([id])
  t.is(await ours.lock([id]), id, 'lock([id]) resolves with the id itself, as the original')
  t.is((await t.throwsAsync(original.lock([id]))).code, 11000, 'and the addon\'s excludes the original')
  const stored = await db.collection('_locks').findOne({ id })
  t.true(stored.id instanceof ObjectId, 'stored as an ObjectId, not its string')
  await ours.unlock([id])
  t.is(await ours.lock(['user', id]), `user#${id.toHexString()}`)
  t.is((await t.throwsAsync(original.lock(['user', id]))).code, 11000)
})

test('other BSON scalars keep their type alone and print as JavaScript does when joined', async (t) => {
  const { name, db } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const date = new Date(86_400_000)
  const cases = [
    [new Long(5), (v) => v === 5],
    [Decimal128.fromString('1.5'), (v) => v instanceof Decimal128 && v.toString() === '1.5'],
    [new UUID(), (v) => v.sub_type === 4],
    [true, (v) => v === true],
    [date, (v) => v instanceof Date && v.getTime() === date.getTime()],
    [7n, (v) => v === 7]
  ]
  for (const [id, stored] of cases) {
    const key = await lock.doWhileLocked([id], ({ key }) => key)
    t.is(key, id, 'context.key is the caller\'s own id')
    await lock.lock([id])
    const [document] = await db.collection('_locks').find().toArray()
    t.true(stored(document.id), `${typeof id} ${String(id)} stored as ${String(document.id)}`)
    await lock.unlock([id])
    t.is(await lock.lock(['k', id]), `k#${String(id)}`)
    await lock.unlock(['k', id])
  }
})

test('a Long and the number of the same value are one key, as in the unique index', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const order = []
  const started = deferred()
  const released = deferred()
  const holding = lock.doWhileLocked([5], async () => {
    order.push('number')
    started.resolve()
    await released.promise
  })
  await started.promise
  t.is((await t.throwsAsync(lock.lock([new Long(5)]))).code, 11000, 'lock() of the Long finds the number\'s lock')
  const waiting = lock.doWhileLocked([new Long(5)], () => { order.push('long') }, { waitTimeout: 5_000 })
  await sleep(100)
  order.push('release')
  released.resolve()
  await Promise.all([holding, waiting])
  t.deepEqual(order, ['number', 'release', 'long'])
})

test('objects that are not BSON scalars are still refused, query operators included', async (t) => {
  const { name, db } = await freshDatabase(t)
  const lock = addonLock(t, name)
  await lock.lock(['victim'])
  for (const bad of [{ $gt: '' }, { _bsontype: 'ObjectId' }, { _bsontype: 'Code', code: 'x' }, [1], null, undefined, Symbol('s'), () => {}]) {
    const error = await t.throwsAsync(lock.unlock([bad]), { instanceOf: TypeError })
    t.is(error.code, 'ERR_INVALID_ARG_TYPE')
  }
  t.is(await db.collection('_locks').countDocuments({ id: 'victim' }), 1)
})

// Array.isArray holds for a Proxy of an array, and the original takes one as it takes
// the array: state libraries hand them out (Vue's reactive, MobX, Immer drafts).
test('a Proxy of an array is the array\'s key, as for the original', async (t) => {
  const { name, client } = await freshDatabase(t)
  const ours = addonLock(t, name)
  const original = new Original({ client, databaseName: name })
  const id = new ObjectId()
  t.is(await ours.lock(new Proxy(['invoice', 42], {})), 'invoice#42')
  t.is((await t.throwsAsync(original.lock(['invoice', 42]))).code, 11000)
  t.is(await ours.lock(new Proxy([id], {})), id, 'one id keeps its type through the Proxy')
  t.is((await t.throwsAsync(original.lock(new Proxy([id], {})))).code, 11000)
  await ours.unlock(new Proxy(['invoice', 42], {}))
  t.is(await original.lock(new Proxy(['invoice', 42], {})), 'invoice#42')
})
