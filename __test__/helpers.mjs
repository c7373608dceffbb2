// Shared by the specs: a real server from MONGODB_URL (scripts/with-server.mjs starts one).
import { createRequire } from 'node:module'
import v8 from 'node:v8'
import vm from 'node:vm'
import { MongoClient } from 'mongodb'
import { url } from './database.mjs'

const require = createRequire(import.meta.url)
export const { ResourceLock, LockError } = require('../index.js')
export { freshDatabase, url, withDatabase } from './database.mjs'

/** An addon ResourceLock on its own client, closed after the test. */
export function addonLock (t, databaseName, options = {}) {
  const lock = new ResourceLock({ client: new MongoClient(url), databaseName, ...options })
  t.teardown(() => lock.close())
  return lock
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** A promise and its `resolve` (Promise.withResolvers needs Node 22). */
export function deferred () {
  let resolve
  const promise = new Promise((r) => { resolve = r })
  return { promise, resolve }
}

/** `gc()` in this process, which ava starts without `--expose-gc`. */
export function exposedGc () {
  v8.setFlagsFromString('--expose-gc')
  return vm.runInNewContext('gc')
}

/** Waits until `predicate` holds (polling), or fails after `ms`. */
export async function eventually (predicate, ms = 5_000) {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await predicate()) return true
    await sleep(10)
  }
  return false
}
