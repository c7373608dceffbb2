// Module shapes, settings carried over from a MongoClient of each supported driver
// major (5, 6 and 7, installed as npm aliases), and secrets kept out of errors.
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import test from 'ava'
import { MongoClient, MongoParseError } from 'mongodb'
import { ResourceLock, freshDatabase, url, withDatabase } from './helpers.mjs'

const require = createRequire(import.meta.url)
const drivers = [
  ['driver 5', 'mongodb-driver-5', 5],
  ['driver 6', 'mongodb', 6],
  ['driver 7', 'mongodb-driver-7', 7]
]
/** Any readable file: a path option the drivers may read when the client is made. */
const someFile = fileURLToPath(import.meta.url)

/** `url` with `options` added to its query string. */
function withQuery (base, options) {
  return `${base}${base.includes('?') ? '&' : (base.endsWith('/') ? '?' : '/?')}${options}`
}

test('require() and ESM import give the same class', async (t) => {
  const esm = await import('../index.js')
  t.is(esm.ResourceLock, require('../index.js').ResourceLock)
  t.is(typeof esm.ResourceLock, 'function')
})

test('the package exports map resolves require, import and types', async (t) => {
  const manifest = require('../package.json')
  t.deepEqual(Object.keys(manifest.exports['.']), ['types', 'import', 'require'])
  t.is(require.resolve('mongodb-resource-lock'), require.resolve('../index.js'))
  t.is((await import('mongodb-resource-lock')).ResourceLock, require('../index.js').ResourceLock)
})

for (const [label, driver, major] of drivers) {
  const { MongoClient } = require(driver)
  test(`${label}: the installed alias is that major`, (t) => {
    t.is(Number(require(`${driver}/package.json`).version.split('.')[0]), major)
  })

  test(`${label}: a client configured in code (serverApi, appName, pool, write concern, compressors) is carried over`, async (t) => {
    const { name, db } = await freshDatabase(t)
    const client = new MongoClient(url, {
      serverApi: { version: '1' },
      appName: 'lock-test',
      maxPoolSize: 5,
      writeConcern: { w: 1, journal: false },
      connectTimeoutMS: 5_000,
      compressors: ['zstd', 'snappy', 'zlib'],
      zlibCompressionLevel: 6
    })
    const warnings = []
    const onWarning = (warning) => warnings.push(warning)
    process.on('warning', onWarning)
    t.teardown(() => process.off('warning', onWarning))
    const lock = new ResourceLock({ client, databaseName: name })
    t.teardown(() => lock.close())
    t.is(await lock.doWhileLocked(['carried'], () => 'ok'), 'ok')
    await lock.lock(['carried'])
    t.is(await db.collection('_locks').countDocuments({ id: 'carried' }), 1)
    t.deepEqual(warnings.filter((w) => w.name === 'MongoResourceLockWarning').map((w) => w.message), [], 'compression is carried, not warned about')
  })

  test(`${label}: the client's write concern is used for the lock writes`, async (t) => {
    const { name } = await freshDatabase(t)
    // w: 2 cannot be satisfied by a one-node replica set: the write fails exactly
    // when the write concern was carried over.
    const lock = new ResourceLock({ client: new MongoClient(url, { writeConcern: { w: 2, wtimeoutMS: 500 } }), databaseName: name })
    t.teardown(() => lock.close())
    const error = await t.throwsAsync(lock.lock([`wc-${Math.random()}`]))
    t.is(error.code, 100, error.message)
  })

  const refused = [
    ['MONGODB-AWS authentication', () => new MongoClient(url, { authMechanism: 'MONGODB-AWS' }), /MONGODB-AWS/],
    ['a checkServerIdentity function', () => new MongoClient(url, { tls: true, checkServerIdentity: () => undefined }), /checkServerIdentity/],
    ['a SOCKS5 proxy', () => new MongoClient(url, { proxyHost: 'localhost', proxyPort: 1080 }), /proxyHost/],
    // Driver 5 takes the revocation list's contents (`crl`), 6 and 7 its file.
    ['tlsCRLFile', () => major === 5
      ? new MongoClient(url, { tls: true, crl: readFileSync(someFile) })
      : new MongoClient(withQuery(url, `tls=true&tlsCRLFile=${encodeURIComponent(someFile)}`)), /tlsCRLFile/],
    ['tlsAllowInvalidHostnames', () => new MongoClient(withQuery(url, 'tls=true&tlsAllowInvalidHostnames=true')), /tlsAllowInvalidHostnames/]
  ]
  for (const [what, make, message] of refused) {
    test(`${label}: ${what} is refused with a clear error, not dropped`, (t) => {
      t.throws(() => new ResourceLock({ client: make() }), { instanceOf: TypeError, code: 'ERR_UNSUPPORTED_CLIENT_OPTION', message })
    })
  }
}

test('a url with socketTimeoutMS is accepted (the Rust driver has no socket timeout)', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = new ResourceLock({ url: withQuery(url, 'socketTimeoutMS=20000'), databaseName: name })
  t.teardown(() => lock.close())
  t.is(await lock.lock(['socket-timeout']), 'socket-timeout')
})

test('a url with compressors is accepted and works', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = new ResourceLock({ url: withQuery(url, 'compressors=zstd,snappy,zlib&zlibCompressionLevel=4'), databaseName: name })
  t.teardown(() => lock.close())
  t.is(await lock.doWhileLocked(['compressed'], () => 'ok'), 'ok')
})

test('a password never appears in an error message (server selection)', async (t) => {
  const password = 'pa55:w@rd'
  const encoded = encodeURIComponent(password)
  const lock = new ResourceLock({ url: `mongodb://someone:${encoded}@127.0.0.1:1/?serverSelectionTimeoutMS=300&connectTimeoutMS=300` })
  t.teardown(() => lock.close())
  const error = await t.throwsAsync(lock.lock(['x']))
  t.truthy(error.message)
  t.false(error.message.includes(password), error.message)
  t.false(error.message.includes(encoded), error.message)
})

test('a malformed url throws a MongoParseError when the instance is made, as new MongoClient(url) does', (t) => {
  for (const bad of ['not a url', '', 'mongodb://127.0.0.1/?tls=maybe']) {
    t.throws(() => new MongoClient(bad), { name: 'MongoParseError' }, bad)
    const error = t.throws(() => new ResourceLock({ url: bad }), { instanceOf: MongoParseError }, bad)
    t.is(error.name, 'MongoParseError')
    t.truthy(error.message)
  }
  t.throws(() => new ResourceLock({ url: 'mongodb://127.0.0.1:99999/' }), { name: 'MongoParseError', message: /port/ })
})

test('a password that the driver quotes in its error message is redacted', (t) => {
  // A stray `?` in the password ends the host list early: the driver's message quotes
  // `someone:hunter22` as a server address it cannot parse.
  const error = t.throws(() => new ResourceLock({ url: 'mongodb://someone:hunter22?tail@127.0.0.1:1/' }), { name: 'MongoParseError' })
  t.regex(error.message, /invalid server address/)
  t.false(error.message.includes('hunter22'), error.message)
})

test('an empty databaseName counts as none, as the original\'s client.db(\'\') takes it', async (t) => {
  const { name, db } = await freshDatabase(t)
  const lock = new ResourceLock({ url: withDatabase(url, name), databaseName: '' })
  t.teardown(() => lock.close())
  await lock.lock(['empty-name'])
  t.is(await db.collection('_locks').countDocuments({ id: 'empty-name' }), 1)
})

test('lock writes use the writeConcern option', async (t) => {
  const { name } = await freshDatabase(t)
  const byOption = new ResourceLock({ url, databaseName: name, writeConcern: { w: 2, wtimeoutMS: 500 } })
  const majority = new ResourceLock({ url, databaseName: name, writeConcern: { w: 'majority' } })
  t.teardown(() => Promise.all([byOption.close(), majority.close()]))
  const error = await t.throwsAsync(byOption.lock([`wc-${Math.random()}`]))
  t.is(error.code, 100, error.message)
  t.is(await majority.lock(['wc-majority']), 'wc-majority')
})

// An unacknowledged insert cannot tell a taken key from a free one, and the Rust driver
// refuses w: 0 at every write: lock writes use w: 1 then. They used to fail each call.
test('a client or url with w: 0 still locks, with acknowledged lock writes', async (t) => {
  const { name } = await freshDatabase(t)
  const client = new MongoClient(url, { writeConcern: { w: 0 } })
  const fromClient = new ResourceLock({ client, databaseName: name })
  const fromUrl = new ResourceLock({ url: withQuery(url, 'w=0'), databaseName: name })
  t.teardown(() => Promise.all([fromClient.close(), fromUrl.close()]))
  t.is(await fromClient.lock(['unacknowledged']), 'unacknowledged')
  t.is((await t.throwsAsync(fromUrl.lock(['unacknowledged']))).code, 11000, 'the second lock of the key is refused')
  await fromClient.unlock(['unacknowledged'])
  t.is(await fromUrl.doWhileLocked(['unacknowledged'], () => 'held'), 'held')
})

test('maxPoolSize sizes the lock connection; a bad value is a typed error naming it', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = new ResourceLock({ url, databaseName: name, maxPoolSize: 2 })
  t.teardown(() => lock.close())
  const keys = Array.from({ length: 20 }, (_, i) => `pooled-${i}`)
  t.deepEqual(await Promise.all(keys.map((key) => lock.doWhileLocked([key], ({ key }) => key))), keys)
  t.throws(() => new ResourceLock({ url, maxPoolSize: 0 }), { instanceOf: RangeError, code: 'ERR_OUT_OF_RANGE', message: /maxPoolSize/ })
  t.throws(() => new ResourceLock({ url, maxPoolSize: 1.5 }), { instanceOf: RangeError, message: /maxPoolSize/ })
  t.throws(() => new ResourceLock({ url, maxPoolSize: '5' }), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE', message: /maxPoolSize/ })
})
