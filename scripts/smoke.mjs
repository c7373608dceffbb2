// A smoke test of a built binary with no server and no npm install (CI runs it on each
// OS and Node version, and in an old-glibc container): the addon loads, validates its
// arguments, and closes a lock that never connected.
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { ResourceLock } = require('../index.js')
assert.equal(typeof ResourceLock, 'function')
assert.throws(() => new ResourceLock(), TypeError)
const lock = new ResourceLock({ url: 'mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100' })
await assert.rejects(lock.lock([{ $gt: '' }]), TypeError)
await lock.close()
console.log(`smoke ok: ${process.platform}-${process.arch}, Node ${process.version}`)
