// A server that requires authentication: a wrong password rejects as the Node driver
// reports it (MongoServerError, code 18), at once rather than at the end of server
// selection, without the password; the right one works.
import { spawn } from 'node:child_process'
import test from 'ava'
import { MongoClient, MongoServerError } from 'mongodb'
import { removeStorage, serverBinary, startServer, tempStorage } from '../scripts/test-server.mjs'
import { ResourceLock } from './helpers.mjs'

async function authServer (t) {
  const storage = tempStorage()
  const open = await startServer({ storagePath: storage })
  const admin = new MongoClient(open.url)
  await admin.db('admin').command({ createUser: 'locker', pwd: 'right-secret', roles: ['root'] })
  await admin.close()
  await open.stop()
  const child = spawn(serverBinary, ['--host', '127.0.0.1', '--port', String(open.port), '--storage-path', storage, '--auth', '--log-level', 'ERROR'], { stdio: 'ignore' })
  t.teardown(() => { child.kill('SIGKILL'); removeStorage(storage) })
  const url = (password) => `mongodb://locker:${password}@127.0.0.1:${open.port}/?authSource=admin`
  for (let i = 0; i < 100; i++) {
    const probe = new MongoClient(url('right-secret'), { serverSelectionTimeoutMS: 200 })
    const up = await probe.db('admin').command({ ping: 1 }).then(() => true, () => false)
    await probe.close()
    if (up) return url
  }
  throw new Error('the server with --auth did not come up')
}

test('a wrong password rejects at once with the server\'s code 18; the right one locks', async (t) => {
  const url = await authServer(t)
  // Server selection would go on for 30 s: the refusal must not wait for it.
  const wrong = new ResourceLock({ url: `${url('wrong-secret')}&serverSelectionTimeoutMS=30000`, databaseName: 'auth' })
  t.teardown(() => wrong.close())
  const started = Date.now()
  const error = await t.throwsAsync(wrong.lock(['k']))
  const waited = Date.now() - started
  t.true(waited < 15_000, `the refusal took ${waited} ms`)
  const held = await t.throwsAsync(wrong.doWhileLocked(['k'], () => t.fail('ran without a lock'), { waitTimeout: 60_000 }))
  t.is(held.code, 18)
  t.true(error instanceof MongoServerError)
  t.is(error.code, 18)
  t.is(error.codeName, 'AuthenticationFailed')
  t.is(error.message, 'Authentication failed.')
  t.notRegex(JSON.stringify({ message: error.message, stack: error.stack }), /wrong-secret/)
  const right = new ResourceLock({ url: url('right-secret'), databaseName: 'auth' })
  t.teardown(() => right.close())
  t.is(await right.lock(['k']), 'k')
})
