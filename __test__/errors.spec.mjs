// Errors callers can branch on: codes, classes, causes, and the driver's errors as the
// Node driver shows them.
import test from 'ava'
import { MongoError, MongoNetworkError, MongoServerError, MongoServerSelectionError } from 'mongodb'
import { startProxy, throughProxy } from './nemesis/proxy.mjs'
import { LockError, ResourceLock, addonLock, deferred, freshDatabase, sleep, url } from './helpers.mjs'

test('our errors are LockErrors with the original\'s messages and a stable code', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const check = (error, code, message) => {
    t.true(error instanceof LockError, code)
    t.true(error instanceof Error)
    t.is(error.name, 'Error', 'as the original\'s plain errors')
    t.is(error.code, code)
    t.is(error.message, message)
  }
  const held = await lock.acquire(['busy'])
  check(await t.throwsAsync(lock.doWhileLocked(['busy'], () => {}, { waitTimeout: 50 })), 'ERR_LOCK_WAIT_TIMEOUT', 'Unable to establish lock.')
  await held.release()
  check(await t.throwsAsync(lock.doWhileLocked(['slow'], () => sleep(500), { lockTimeout: 50 })), 'ERR_LOCK_TIMEOUT', 'Lock interrupted by timeout')
  check(await t.throwsAsync(lock.unlock(['a', 'b'])), 'ERR_LOCK_NOT_DELETED', 'Was not able to delete a,b.')
  const closing = addonLock(t, name)
  await closing.close()
  check(await t.throwsAsync(closing.lock(['x'])), 'ERR_LOCK_CLOSED', 'ResourceLock is closed')
})

test('a lock deleted behind the holder\'s back rejects with ERR_LOCK_LOST', async (t) => {
  const { name, db } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const inside = deferred()
  const holding = lock.doWhileLocked(['gone'], async ({ signal }) => {
    inside.resolve()
    await new Promise((resolve) => signal.addEventListener('abort', resolve))
  }, { lease: 1_000, lockTimeout: Infinity })
  await inside.promise
  await db.collection('_locks').deleteOne({ id: 'gone' })
  const error = await t.throwsAsync(holding)
  t.true(error instanceof LockError)
  t.is(error.code, 'ERR_LOCK_LOST')
  t.regex(error.message, /^Lock interrupted/)
})

/** A lock that reaches the server through a proxy the test can freeze or stop. */
async function lockBehindProxy (t, options) {
  const { name } = await freshDatabase(t)
  const proxy = await startProxy(new URL(url).port || 27017)
  t.teardown(() => proxy.stop())
  const lock = new ResourceLock({ url: throughProxy(url, proxy.port) + options, databaseName: name })
  t.teardown(() => lock.close().catch(() => {}))
  return { proxy, lock }
}

test('a lease that runs out while renewals fail keeps the driver\'s error as its cause', async (t) => {
  const { proxy, lock } = await lockBehindProxy(t, '&serverSelectionTimeoutMS=200&connectTimeoutMS=200')
  const inside = deferred()
  const holding = lock.doWhileLocked(['cut'], async ({ signal }) => {
    inside.resolve()
    await new Promise((resolve) => signal.addEventListener('abort', resolve))
  }, { lease: 1_500, lockTimeout: Infinity })
  await inside.promise
  await proxy.stop()
  const error = await t.throwsAsync(holding)
  t.is(error.code, 'ERR_LOCK_LOST')
  t.regex(error.message, /could not be renewed/)
  t.truthy(error.cause, 'the renewal\'s failure is kept')
  t.regex(error.cause.name, /^Mongo/)
  t.true(Array.isArray(error.cause.errorLabels))
})

test('a held key rejects with the application\'s MongoServerError, as the driver does', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  await lock.lock(['k'])
  const error = await t.throwsAsync(lock.lock(['k']))
  t.true(error instanceof MongoServerError, 'callers test e instanceof MongoServerError && e.code === 11000')
  t.is(error.code, 11000)
  t.is(error.codeName, 'DuplicateKey')
  t.deepEqual(error.keyPattern, { id: 1 })
  t.deepEqual(error.keyValue, { id: 'k' })
  t.regex(error.errorResponse.errmsg, /duplicate key/)
})

test('bad arguments are TypeError or RangeError with Node\'s codes', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const is = async (promise, constructor, code) => {
    const error = await t.throwsAsync(promise, { instanceOf: constructor })
    t.is(error.code, code)
  }
  await is(lock.lock([{ $gt: '' }]), TypeError, 'ERR_INVALID_ARG_TYPE')
  await is(lock.lock([]), TypeError, 'ERR_INVALID_ARG_VALUE')
  await is(lock.doWhileLocked(['x'], () => {}, { waitTimeout: -1 }), RangeError, 'ERR_OUT_OF_RANGE')
  await is(lock.doWhileLocked(['x'], 'not a function'), TypeError, 'ERR_INVALID_ARG_TYPE')
  await is(lock.acquire(['x'], { lease: 0 }), RangeError, 'ERR_OUT_OF_RANGE')
})

test('an unreachable server reads as the Node driver says it, without the topology dump', async (t) => {
  const lock = new ResourceLock({ url: 'mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300', databaseName: 'nowhere' })
  t.teardown(() => lock.close())
  const error = await t.throwsAsync(lock.lock(['x']))
  t.is(error.name, 'MongoServerSelectionError')
  t.true(error instanceof MongoServerSelectionError, 'the application\'s class, as the driver throws it')
  t.true(error instanceof MongoError)
  t.true(Array.isArray(error.errorLabels))
  t.false(error.hasErrorLabel('RetryableWriteError'))
  t.regex(error.message, /^Server selection timed out: .*refused/i)
  t.notRegex(error.message, /Topology|Kind:/)
})

test('against an unreachable server the first lock() fails within one server selection timeout, not two', async (t) => {
  // The constructor starts creating the indexes; before, a lock() that waited for that
  // attempt then made its own and failed after twice the timeout.
  const lock = new ResourceLock({ url: 'mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=2000', databaseName: 'nowhere' })
  t.teardown(() => lock.close())
  const started = Date.now()
  const error = await t.throwsAsync(lock.lock(['x']))
  const took = Date.now() - started
  t.is(error.name, 'MongoServerSelectionError')
  t.true(took < 3_500, `${took} ms`)
})

test('a connection that breaks under a write rejects with the application\'s MongoNetworkError and its labels', async (t) => {
  const { proxy, lock } = await lockBehindProxy(t, '&serverSelectionTimeoutMS=500')
  await lock.doWhileLocked(['warm-up'], () => {})
  proxy.freeze()
  const locking = lock.lock(['broken'])
  await sleep(200)
  await proxy.stop()
  const error = await t.throwsAsync(locking)
  t.log(`${error.name}: ${error.message} [${error.errorLabels}]`)
  t.true(error instanceof MongoNetworkError, `${error.name} is the driver's class`)
  t.true(error instanceof MongoError)
  t.true(error.hasErrorLabel('RetryableWriteError'), 'the label callers retry on, as the Node driver sets it')
  t.deepEqual(error.errorLabels.filter((label) => !error.hasErrorLabel(label)), [])
})
