// Module shapes, settings carried over from a MongoClient, and secrets kept out of errors.
import { createRequire } from 'node:module'
import test from 'ava'
import { MongoClient } from 'mongodb'
import { ResourceLock, freshDatabase, url } from './helpers.mjs'

const require = createRequire(import.meta.url)

test('require() and ESM import give the same class', async (t) => {
  const esm = await import('../index.js')
  t.is(esm.ResourceLock, require('../index.js').ResourceLock)
  t.is(typeof esm.ResourceLock, 'function')
})

test('a client configured in code (serverApi, appName, pool, write concern) is carried over', async (t) => {
  const { name, db } = await freshDatabase(t)
  const client = new MongoClient(url, {
    serverApi: { version: '1' },
    appName: 'lock-test',
    maxPoolSize: 5,
    writeConcern: { w: 1, journal: false },
    connectTimeoutMS: 5_000
  })
  const lock = new ResourceLock({ client, databaseName: name })
  t.teardown(() => lock.close())
  t.is(await lock.doWhileLocked(['carried'], () => 'ok'), 'ok')
  await lock.lock(['carried'])
  t.is(await db.collection('_locks').countDocuments({ id: 'carried' }), 1)
})

test('settings that cannot be carried are refused with a clear error', (t) => {
  const client = new MongoClient(url, { authMechanism: 'MONGODB-AWS' })
  t.throws(() => new ResourceLock({ client }), { instanceOf: TypeError, code: 'ERR_UNSUPPORTED_CLIENT_OPTION', message: /MONGODB-AWS/ })
})

test('a password never appears in an error message', async (t) => {
  const password = 'pa55:w@rd'
  const encoded = encodeURIComponent(password)
  const lock = new ResourceLock({ url: `mongodb://someone:${encoded}@127.0.0.1:1/?serverSelectionTimeoutMS=300&connectTimeoutMS=300` })
  t.teardown(() => lock.close())
  const error = await t.throwsAsync(lock.lock(['x']))
  t.truthy(error.message)
  t.false(error.message.includes(password), error.message)
  t.false(error.message.includes(encoded), error.message)
})

test('lock writes use the writeConcern option, or the client\'s write concern', async (t) => {
  const { name } = await freshDatabase(t)
  // w: 2 cannot be satisfied by the one-node test replica set: the write concern is
  // applied exactly when the lock write fails for it.
  const byOption = new ResourceLock({ url, databaseName: name, writeConcern: { w: 2, wtimeoutMS: 500 } })
  const fromClient = new ResourceLock({ client: new MongoClient(url, { writeConcern: { w: 2, wtimeoutMS: 500 } }), databaseName: name })
  const majority = new ResourceLock({ url, databaseName: name, writeConcern: { w: 'majority' } })
  t.teardown(() => Promise.all([byOption.close(), fromClient.close(), majority.close()]))
  for (const lock of [byOption, fromClient]) {
    const error = await t.throwsAsync(lock.lock([`wc-${Math.random()}`]))
    t.is(error.code, 100, error.message)
  }
  t.is(await majority.lock(['wc-majority']), 'wc-majority')
})
