// Locks as handles: acquire, tryAcquire, release, extend, await using, holder/isLocked.
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import test from 'ava'
import ts from 'typescript'
import { LockError, addonLock, deferred, eventually, exposedGc, freshDatabase, sleep, url } from './helpers.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))

test('acquire resolves a held handle; release frees it once, for the next caller', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const other = addonLock(t, name)
  const handle = await lock.acquire(['invoice', 42])
  t.is(handle.key, 'invoice#42')
  t.is(typeof handle.fencingToken, 'bigint')
  t.false(handle.signal.aborted)
  t.is(typeof handle[Symbol.asyncDispose], 'function')
  t.is(await other.tryAcquire(['invoice', 42]), null, 'held: another instance gets null')
  t.true(await handle.release())
  t.false(await handle.release(), 'a second release is a no-op')
  const next = await other.tryAcquire(['invoice', 42])
  t.truthy(next)
  t.true(next.fencingToken > handle.fencingToken)
  t.false(handle.signal.aborted, 'release does not abort the signal')
  t.true(await next.release())
})

test('tryAcquire never waits: not for another process, not for a caller of its own', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const held = await lock.acquire(['busy'])
  const started = Date.now()
  t.is(await lock.tryAcquire(['busy']), null)
  t.is(await lock.tryAcquire(['busy'], { lease: 5_000 }), null)
  t.true(Date.now() - started < 2_000, 'it did not wait for the holder')
  await held.release()
  const mine = await lock.tryAcquire(['busy'])
  t.truthy(mine)
  await mine.release()
})

test('a handle and doWhileLocked share one queue: the waiter runs after release', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const handle = await lock.acquire(['shared'])
  const order = []
  const waiting = lock.doWhileLocked(['shared'], ({ fencingToken }) => { order.push('waiter'); return fencingToken }, { waitTimeout: 10_000 })
  await sleep(200)
  order.push('release')
  await handle.release()
  const token = await waiting
  t.deepEqual(order, ['release', 'waiter'])
  t.true(token > handle.fencingToken)
})

test('the lease is renewed while the handle is held, and extend() writes a new one', async (t) => {
  const { name, db } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const rival = addonLock(t, name)
  const handle = await lock.acquire(['kept'], { lease: 1_500 })
  await sleep(3_500)
  t.is(await rival.tryAcquire(['kept']), null, 'nobody took over a renewed lease')
  t.false(handle.signal.aborted)
  await handle.extend(60_000)
  const { lease_expires_at: expiry } = await db.collection('_locks').findOne({ id: 'kept' })
  const left = expiry.getTime() - Date.now()
  t.true(left > 50_000 && left <= 61_000, `the stored lease ends in ${left} ms`)
  await handle.release()
  const late = await t.throwsAsync(handle.extend(1_000))
  t.is(late.code, 'ERR_LOCK_LOST')
  t.true(late instanceof LockError)
})

test('extend() refuses a bad lease with a typed error naming it', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const handle = await lock.acquire(['bad-lease'])
  t.teardown(() => handle.release())
  for (const bad of [0, -1, NaN, Infinity]) {
    const error = await t.throwsAsync(handle.extend(bad), { instanceOf: RangeError, message: /lease/ })
    t.is(error.code, 'ERR_OUT_OF_RANGE')
  }
  const error = await t.throwsAsync(handle.extend('1000'), { instanceOf: TypeError, message: /lease/ })
  t.is(error.code, 'ERR_INVALID_ARG_TYPE')
})

test('a handle whose lock is deleted behind its back aborts its signal; release leaves the next holder alone', async (t) => {
  const { name, db } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const other = addonLock(t, name)
  const handle = await lock.acquire(['stolen'], { lease: 1_000 })
  const aborted = deferred()
  handle.signal.addEventListener('abort', () => aborted.resolve(handle.signal.reason))
  await db.collection('_locks').deleteOne({ id: 'stolen' })
  const next = await other.acquire(['stolen'], { waitTimeout: 5_000 })
  const reason = await aborted.promise
  t.is(reason.code, 'ERR_LOCK_LOST')
  t.false(await handle.release(), 'nothing of its own left to release')
  t.truthy(await db.collection('_locks').findOne({ id: 'stolen' }), "the next holder's lock is still there")
  await next.release()
})

test('a lock whose lease ran out before it came back is never handed out', async (t) => {
  const { name, db } = await freshDatabase(t)
  const lock = addonLock(t, name)
  // A lease of 1 ms is over before any write comes back: nothing may start under it.
  let called = 0
  for (let i = 0; i < 10; i++) {
    await t.throwsAsync(lock.acquire([`acquire-${i}`], { lease: 1 }), { instanceOf: LockError, code: 'ERR_LOCK_LOST' })
    await t.throwsAsync(lock.tryAcquire([`try-${i}`], { lease: 1 }), { instanceOf: LockError, code: 'ERR_LOCK_LOST' })
    await t.throwsAsync(lock.doWhileLocked([`call-${i}`], () => { called++ }, { lease: 1 }), { instanceOf: LockError, code: 'ERR_LOCK_LOST' })
  }
  t.is(called, 0, 'no callback ran')
  const handle = await lock.acquire(['acquire-0'], { waitTimeout: 2_000 })
  t.false(handle.signal.aborted, 'a lease long enough is held as before')
  await handle.release()
  t.true(await eventually(async () => await db.collection('_locks').countDocuments() === 0), 'the lost locks were released')
})

test('an abort while waiting rejects with an AbortError whose cause is the signal\'s reason', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const other = addonLock(t, name)
  const held = await lock.acquire(['waited'])
  const controller = new AbortController()
  const reason = new Error('shutting down')
  setTimeout(() => controller.abort(reason), 100)
  const error = await t.throwsAsync(other.acquire(['waited'], { waitTimeout: 10_000, signal: controller.signal }))
  t.is(error.name, 'AbortError')
  t.is(error.code, 'ABORT_ERR')
  t.is(error.cause, reason)
  const early = await t.throwsAsync(other.tryAcquire(['free'], { signal: AbortSignal.abort(reason) }))
  t.is(early.cause, reason)
  await held.release()
})

test('acquire waits up to waitTimeout and then rejects as doWhileLocked does', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const other = addonLock(t, name)
  const held = await lock.acquire(['slow'])
  const started = Date.now()
  const error = await t.throwsAsync(other.acquire(['slow'], { waitTimeout: 300 }))
  t.true(Date.now() - started >= 300)
  t.is(error.message, 'Unable to establish lock.')
  t.is(error.code, 'ERR_LOCK_WAIT_TIMEOUT')
  await held.release()
})

test('close() aborts the signal of a held handle and releases its lock', async (t) => {
  const { name, db } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const handle = await lock.acquire(['closing'], { lease: 30_000 })
  const aborted = deferred()
  handle.signal.addEventListener('abort', () => aborted.resolve(handle.signal.reason))
  await lock.close()
  t.is((await aborted.promise).code, 'ERR_LOCK_CLOSED')
  t.is(await db.collection('_locks').countDocuments({ id: 'closing' }), 0, 'the lock (lease 30 s) is gone')
  t.false(await handle.release(), 'close() released it already')
})

for (const how of ['idle', 'extending']) {
  test(`a handle collected without release() (${how}) releases its lock and aborts the signal kept from it`, async (t) => {
    const { name, db } = await freshDatabase(t)
    const child = spawn(process.execPath, ['--expose-gc', path.join(here, 'fixtures', 'collect-handle.mjs'), url, name, how], { stdio: ['ignore', 'pipe', 'inherit'] })
    t.teardown(() => child.kill('SIGKILL'))
    const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]()
    t.is((await lines.next()).value, 'held')
    t.is((await lines.next()).value, 'collected')
    t.is((await lines.next()).value, 'ERR_LOCK_LOST', 'the signal still referenced was not told that the lock went with its handle')
    t.true(await eventually(async () => await db.collection('_locks').countDocuments({ id: 'collected' }) === 0), 'the lock (lease 30 s) was still there 5 s after its handle was collected')
  })
}

// A listener on the signal that refers to the handle is the usual shape; the signal's
// abort must not be held from a released handle, or the two keep each other for good.
test('a released handle whose signal listener refers to it is still collected', async (t) => {
  const gc = exposedGc()
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  let collected = false
  const registry = new FinalizationRegistry(() => { collected = true })
  await (async () => {
    const handle = await lock.acquire(['listened'])
    handle.signal.addEventListener('abort', () => console.log(handle.key))
    registry.register(handle, 'handle')
    t.true(await handle.release())
  })()
  for (let i = 0; i < 40 && !collected; i++) {
    gc()
    await sleep(50)
  }
  t.true(collected, 'the released handle was never collected')
})

test('holder() and isLocked() read who holds a lock', async (t) => {
  const { name } = await freshDatabase(t)
  const lock = addonLock(t, name)
  const other = addonLock(t, name)
  t.is(await lock.holder(['h']), null)
  t.false(await lock.isLocked(['h']))
  const before = Date.now()
  const handle = await lock.acquire(['h'], { lease: 10_000 })
  const mine = await lock.holder(['h'])
  t.is(mine.key, 'h')
  t.true(mine.heldByThisInstance)
  t.true(mine.since instanceof Date && mine.since.getTime() >= before - 1_000)
  t.true(mine.leaseExpiresAt.getTime() > Date.now() + 5_000)
  t.false((await other.holder(['h'])).heldByThisInstance)
  t.true(await other.isLocked(['h']))
  await handle.release()
  t.false(await other.isLocked(['h']))
  await lock.lock(['manual'])
  const manual = await lock.holder(['manual'])
  t.true(manual.heldByThisInstance)
  t.is(manual.leaseExpiresAt, null, 'a lock without a lease')
  await lock.lock(['expired'], { lease: 50 })
  await sleep(300)
  t.false(await other.isLocked(['expired']), 'a lock whose lease has passed is free')
})

test('await using releases the handle at the end of the block (TypeScript down-levelled for Node 20)', async (t) => {
  const { name, db } = await freshDatabase(t)
  const source = `
    import { ResourceLock } from ${JSON.stringify(path.join(here, '..', 'index.js'))}
    export async function run (url: string, databaseName: string, seen: (held: boolean) => Promise<void>): Promise<void> {
      const locks = new ResourceLock({ url, databaseName })
      {
        await using lock = await locks.acquire(['invoice', 42])
        await seen(lock.signal.aborted === false)
      }
      await locks.close()
    }`
  const { outputText } = ts.transpileModule(source, { compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.CommonJS } })
  t.regex(outputText, /__addDisposableResource/, 'tsc down-levelled await using')
  const dir = mkdtempSync(path.join(os.tmpdir(), 'await-using-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'await-using.cjs')
  writeFileSync(file, outputText)
  const { run } = await import(file)
  let inside = 0
  await run(url, name, async (held) => {
    t.true(held)
    inside = await db.collection('_locks').countDocuments({ id: 'invoice#42' })
  })
  t.is(inside, 1, 'held inside the block')
  t.is(await db.collection('_locks').countDocuments({ id: 'invoice#42' }), 0, 'released at its end')
})
