// Random ids, callbacks and option objects thrown at every method: each call resolves
// or rejects with a TypeError, a RangeError, one of the documented errors or exactly
// what the callback threw; the process never crashes; no lock is left held.
import test from 'ava'
import fc from 'fast-check'
import { addonLock, eventually, freshDatabase, sleep } from './helpers.mjs'

const numberish = fc.oneof(
  fc.integer({ min: -5, max: 40 }),
  fc.double({ noDefaultInfinity: false }),
  fc.constantFrom(Infinity, -Infinity, NaN, 0, -0, 1e-9, 2 ** 53),
  fc.string({ maxLength: 3 }),
  fc.constantFrom(null, undefined, true, {}, [], () => 1, Symbol('s'), 10n)
)
const validIds = fc.array(fc.oneof(fc.string({ maxLength: 8 }), fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true })), { minLength: 1, maxLength: 3 })
const ids = fc.oneof(
  { arbitrary: validIds, weight: 4 },
  fc.array(fc.oneof(fc.string({ maxLength: 8 }), fc.double(), fc.integer(), fc.anything({ maxDepth: 1 })), { maxLength: 4 }),
  fc.anything({ maxDepth: 1 })
)
const outcome = fc.oneof(fc.anything({ maxDepth: 1 }), fc.constant(new Error('boom')), fc.constant(Symbol('r')))
const callback = fc.oneof(
  { arbitrary: outcome.map((v) => ({ fn: () => v, value: v })), weight: 3 },
  outcome.map((v) => ({ fn: () => v, value: v })),
  outcome.map((v) => ({ fn: () => { throw v }, thrown: v })),
  outcome.map((v) => ({ fn: async () => { await sleep(3); return v }, value: v })),
  outcome.map((v) => ({ fn: async () => { await sleep(3); throw v }, thrown: v })),
  fc.anything({ maxDepth: 1 }).map((v) => ({ fn: v, notAFunction: true }))
)
const validOptions = fc.record({
  lockTimeout: fc.integer({ min: 1, max: 50 }),
  waitTimeout: fc.integer({ min: 0, max: 50 }),
  retryInterval: fc.integer({ min: 1, max: 20 }),
  lease: fc.integer({ min: 1, max: 50 })
}, { requiredKeys: [] })
const options = fc.oneof(
  { arbitrary: validOptions, weight: 4 },
  fc.constantFrom(undefined, null, 'options', 5),
  fc.record({
    lockTimeout: numberish,
    waitTimeout: numberish,
    retryInterval: numberish,
    lease: numberish,
    signal: fc.constantFrom(undefined, {}, 'signal', AbortSignal.abort())
  }, { requiredKeys: [] })
)

const documented = /^(Unable to establish lock\.|Lock interrupted|Was not able to delete|The operation was aborted)/

function acceptable (error, callback = {}) {
  // `throw undefined` must reject with exactly `undefined` too.
  if (Object.hasOwn(callback, 'thrown') && Object.is(error, callback.thrown)) return true
  if (error instanceof TypeError || error instanceof RangeError) return /resourceIds|callback|options/.test(error.message)
  return error instanceof Error && (documented.test(error.message) || error.name === 'MongoServerError' || error.name === 'AbortError')
}

test('random arguments never crash, only documented rejections, nothing left locked', async (t) => {
  const { name, db } = await freshDatabase(t)
  const lock = addonLock(t, name)
  let calls = 0
  const seen = {}
  await fc.assert(fc.asyncProperty(ids, callback, options, async (resourceIds, cb, opts) => {
    calls++
    const settled = await lock.doWhileLocked(resourceIds, cb.fn, opts).then(
      (value) => ({ ok: true, value }),
      (error) => ({ ok: false, error })
    )
    const kind = settled.ok ? 'resolved' : settled.error?.constructor?.name ?? typeof settled.error
    seen[kind] = (seen[kind] ?? 0) + 1
    if (settled.ok) {
      if (!cb.notAFunction && 'value' in cb && !Object.is(settled.value, cb.value)) return false
    } else if (!acceptable(settled.error, cb)) {
      t.log('unexpected rejection', settled.error)
      return false
    }
    // Checked before this run's own lock/unlock below, which would delete a leaked lock.
    // A hold interrupted by a tiny lockTimeout is released right after the rejection.
    if (!await eventually(async () => await db.collection('_locks').countDocuments() === 0, 2_000)) {
      t.log('lock left held after doWhileLocked settled', await db.collection('_locks').find().toArray(), { resourceIds, opts })
      return false
    }
    const locked = await lock.lock(resourceIds, opts).then(() => true, (error) => {
      if (!acceptable(error)) throw error
      return false
    })
    if (locked) await lock.unlock(resourceIds)
    await lock.unlock(resourceIds).catch((error) => { if (!acceptable(error)) throw error })
    return true
  }), { numRuns: 150 })
  t.log('outcomes of doWhileLocked', seen)
  t.true(calls >= 150)
  t.true(seen.resolved > 0 && seen.TypeError > 0 && seen.RangeError > 0, 'the runs reach both success and each kind of refusal')
  // A hold interrupted by a tiny lockTimeout is released right away; give the last one a moment.
  await sleep(100)
  t.is(await db.collection('_locks').countDocuments(), 0, 'no lock left held')
})
