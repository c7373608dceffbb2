// The test server killed and restarted (on-disk storage) in the middle of a run.
import { execFile } from 'node:child_process'
import path from 'node:path'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'
import test from 'ava'
import { removeStorage, startServer, tempStorage } from '../scripts/test-server.mjs'
import { ResourceLock, sleep } from './helpers.mjs'

const run = promisify(execFile)
const here = path.dirname(fileURLToPath(import.meta.url))

test('a server restart: in-flight calls reject, no two holders, work resumes, workers exit', async (t) => {
  const storage = tempStorage()
  let server = await startServer({ storagePath: storage })
  const port = server.port
  t.teardown(async () => { await server.stop(); removeStorage(storage) })
  // Short server selection so that calls fail fast while the server is down.
  const url = `${server.url}/?serverSelectionTimeoutMS=1500&connectTimeoutMS=1500`
  const started = Date.now()
  const until = started + 9_000
  const workers = [1, 2, 3].map(() => run(process.execPath, [path.join(here, 'fixtures', 'restart-worker.mjs'), url, 'restart', String(until)], { timeout: 60_000 }))

  await sleep(2_000)
  await server.stop('SIGKILL')
  const downAt = Date.now()
  // Twice the selection timeout: a call that needs the server in the first half of
  // the outage surely times out. Down for about the timeout alone, whether any call
  // timed out came down to milliseconds (runs rejected 1, 1, 1 and 0 calls).
  await sleep(3_000)
  server = await startServer({ port, storagePath: storage })
  const upAt = Date.now()
  t.log(`server down for ${upAt - downAt} ms`)

  const results = (await Promise.all(workers)).map(({ stdout }) => JSON.parse(stdout.trim()))
  const holds = results.flatMap((r) => r.holds).sort((a, b) => a.start - b.start)
  const errors = results.flatMap((r) => r.errors)
  t.log(`${holds.length} holds, ${errors.length} rejected calls: ${[...new Set(errors.map((e) => e.message.slice(0, 70)))].join(' | ')}`)

  for (let i = 1; i < holds.length; i++) {
    t.true(holds[i].start >= holds[i - 1].end, `holds ${i - 1} and ${i} overlap`)
    t.true(BigInt(holds[i].token) > BigInt(holds[i - 1].token), `fencing token ${i} did not increase across the restart`)
  }
  t.true(holds.some((h) => h.end < downAt), 'work before the restart')
  t.true(holds.some((h) => h.start > upAt), 'work resumed after the restart')
  t.true(errors.length > 0, 'calls in flight while the server was down were rejected')
  t.true(errors.every((e) => e.message && e.message !== 'undefined'), 'every rejection has a message')
})

/**
 * A holder and a waiter on their own server; the waiter waits with a poll a minute
 * away (with a live stream the safety poll is max(1 s, retryInterval)), so only a
 * release event can wake it before its waitTimeout. The server is killed for
 * `downMs` and restarted on disk (server selection waits `selectionMs`); then the
 * lock is released. Returns how long after
 * the release the waiter got the lock.
 */
async function wokenAfterRestart (t, downMs, selectionMs) {
  const storage = tempStorage()
  let server = await startServer({ storagePath: storage })
  const port = server.port
  t.teardown(async () => { await server.stop(); removeStorage(storage) })
  // The driver's own resume of the stream waits at most this for the server.
  const url = `${server.url}/?serverSelectionTimeoutMS=${selectionMs}`
  const holder = new ResourceLock({ url, databaseName: 'reopen' })
  const waiter = new ResourceLock({ url, databaseName: 'reopen' })
  t.teardown(() => Promise.all([holder.close(), waiter.close()]).catch(() => {}))
  await holder.lock(['reopened']) // no lease: only a delete frees it
  let acquiredAt
  const waiting = waiter.doWhileLocked(['reopened'], () => { acquiredAt = Date.now() }, { retryInterval: 60_000, waitTimeout: 20_000 })
  await sleep(2_500) // the waiter is waiting in the database, its stream open
  await server.stop('SIGKILL')
  await sleep(downMs)
  server = await startServer({ port, storagePath: storage })
  await sleep(4_000) // the stream reopens about 1 s after it broke, once reconnected
  const releasedAt = Date.now()
  await holder.unlock(['reopened'])
  await waiting
  t.log(`acquired ${acquiredAt - releasedAt} ms after the release (server down ${downMs} ms)`)
  return acquiredAt - releasedAt
}

// Serial: these run before the test above, not beside it, each with a server of its own.
test.serial('a short outage: the change stream is resumed and wakes a waiter again', async (t) => {
  // Server selection outlasts the restart, so the driver's own resume succeeds.
  t.true(await wokenAfterRestart(t, 300, 10_000) < 5_000, 'woken by the stream, not at the waitTimeout')
})

// When the driver's own resume fails (the server is down longer than server selection
// waits), the feed must reopen the stream soon, not treat the outage like a server that
// refuses change streams (30 s later): until then only polls wake waiters, here none
// within the waitTimeout.
test.serial('a longer outage: the change stream is reopened soon and wakes a waiter again', async (t) => {
  t.true(await wokenAfterRestart(t, 3_000, 1_000) < 5_000, 'woken by the stream, not at the waitTimeout')
})
