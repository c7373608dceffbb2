// Bad arguments, against the class users get without @opentelemetry/api (the native
// class, untouched) and against the class the tracing wrapper builds when they have it.
// Every test process here can load @opentelemetry/api, so index.js always hands out the
// wrapped class; the plain one is taken from binding.js directly.
import { createRequire } from 'node:module'
import test from 'ava'
import { url } from './helpers.mjs'

const require = createRequire(import.meta.url)
const Native = require('../binding.js').ResourceLock
const { traced } = require('../tracing.js')
const Traced = traced(Native, require('@opentelemetry/api'))

const classes = [['plain class', Native], ['traced class', Traced]]

const type = (message) => ({ instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE', message })
const range = (message) => ({ instanceOf: RangeError, code: 'ERR_OUT_OF_RANGE', message })
const value = (message) => ({ instanceOf: TypeError, code: 'ERR_INVALID_ARG_VALUE', message })

const cases = [
  ['lock: an object id', (l) => l.lock([{ $gt: '' }]), type(/^resourceIds\[0\] must be a string, a finite number or a BSON scalar such as an ObjectId, got an object$/)],
  ['lock: no ids', (l) => l.lock(), type(/^resourceIds must be/)],
  ['lock: null ids', (l) => l.lock(null), type(/^resourceIds must be/)],
  ['lock: empty ids', (l) => l.lock([]), value(/^resourceIds must not be empty$/)],
  ['lock: NaN id', (l) => l.lock([NaN]), type(/non-finite number/)],
  ['lock: sparse ids', (l) => l.lock([, 'a']), type(/^resourceIds\[0\] .* got undefined$/)], // eslint-disable-line no-sparse-arrays
  // Its length claims 4 294 967 295 ids: read one at a time, not allocated for up front.
  ['lock: a huge sparse array', (l) => l.lock(new Array(2 ** 32 - 1)), type(/^resourceIds\[0\] .* got undefined$/)],
  ['lock: negative lease', (l) => l.lock(['a'], { lease: -1 }), range(/^options\.lease/)],
  ['lock: string lease', (l) => l.lock(['a'], { lease: '5' }), type(/^options\.lease must be a number/)],
  ['lock: string options', (l) => l.lock(['a'], 'x'), type(/^options must be an object/)],
  ['unlock: an object id', (l) => l.unlock([{}]), type(/^resourceIds\[0\]/)],
  ['unlock: a bigint id beyond 64 bits', (l) => l.unlock([2n ** 64n]), type(/got a bigint beyond 64 bits$/)],
  ['lock: an invalid Date id', (l) => l.lock([new Date(NaN)]), type(/^resourceIds\[0\] .* got an invalid Date$/)],
  ['lock: one invalid Date', (l) => l.lock(new Date('never')), type(/^resourceIds must be .*, or one id, got an invalid Date$/)],
  ['lock: one plain object', (l) => l.lock({ id: 'a' }), type(/^resourceIds must be .*, or one id, got an object$/)],
  ['lock: a bigint lease', (l) => l.lock(['a'], { lease: 5n }), type(/^options\.lease must be a number, got a bigint$/)],
  ['doWhileLocked: no callback', (l) => l.doWhileLocked(['a']), type(/^callback must be a function, got undefined$/)],
  ['doWhileLocked: a string callback', (l) => l.doWhileLocked(['a'], 'x'), type(/^callback must be a function, got a string$/)],
  ['doWhileLocked: a function id', (l) => l.doWhileLocked([() => {}], () => {}), type(/^resourceIds\[0\]/)],
  ['doWhileLocked: a symbol id', (l) => l.doWhileLocked([Symbol('s')], () => {}), type(/got a symbol$/)],
  ['doWhileLocked: string options', (l) => l.doWhileLocked(['a'], () => {}, 'opts'), type(/^options must be an object/)],
  ['doWhileLocked: negative lockTimeout', (l) => l.doWhileLocked(['a'], () => {}, { lockTimeout: -1 }), range(/^options\.lockTimeout/)],
  ['doWhileLocked: string lockTimeout', (l) => l.doWhileLocked(['a'], () => {}, { lockTimeout: '5' }), type(/^options\.lockTimeout must be a number/)],
  ['doWhileLocked: NaN waitTimeout', (l) => l.doWhileLocked(['a'], () => {}, { waitTimeout: NaN }), range(/^options\.waitTimeout/)],
  ['doWhileLocked: infinite lease', (l) => l.doWhileLocked(['a'], () => {}, { lease: Infinity }), range(/^options\.lease .* got Infinity$/)],
  ['doWhileLocked: negative infinite lease', (l) => l.doWhileLocked(['a'], () => {}, { lease: -Infinity }), range(/^options\.lease .* got -Infinity$/)],
  ['doWhileLocked: a lease beyond the longest timer', (l) => l.doWhileLocked(['a'], () => {}, { lease: 2 ** 31 }), range(/^options\.lease .* at most 2147483647, got 2147483648$/)],
  ['doWhileLocked: zero lease', (l) => l.doWhileLocked(['a'], () => {}, { lease: 0 }), range(/^options\.lease/)],
  ['doWhileLocked: a plain object as signal', (l) => l.doWhileLocked(['a'], () => {}, { signal: {} }), type(/^options\.signal must be an AbortSignal/)],
  // A handle is held until release(): a lockTimeout would be ignored, so it is refused.
  ['acquire: lockTimeout', (l) => l.acquire(['a'], { lockTimeout: 100 }), value(/^options\.lockTimeout is not an option of a handle/)],
  ['tryAcquire: lockTimeout', (l) => l.tryAcquire(['a'], { lockTimeout: 100 }), value(/^options\.lockTimeout is not an option of a handle/)]
]

/** How a call ended: thrown synchronously, or the promise it returned rejected. */
async function outcome (call) {
  let promise
  try {
    promise = call()
  } catch (error) {
    return { how: 'threw', error }
  }
  if (!(promise instanceof Promise)) return { how: 'returned a non-promise' }
  return promise.then(() => ({ how: 'resolved' }), (error) => ({ how: 'rejected', error }))
}

for (const [label, ResourceLock] of classes) {
  test(`${label}: bad arguments reject with a TypeError or RangeError that has a code`, async (t) => {
    const lock = new ResourceLock({ url, databaseName: 'arguments' })
    t.teardown(() => lock.close())
    let called = 0
    const callback = () => { called++ }
    for (const [name, call, expected] of cases) {
      // Never a synchronous throw: both classes return a promise that rejects.
      const result = await outcome(() => call(lock, callback))
      t.is(result.how, 'rejected', name)
      t.true(result.error instanceof expected.instanceOf, `${name}: ${result.error?.constructor?.name}`)
      t.is(result.error?.code, expected.code, name)
      t.regex(result.error?.message ?? '', expected.message, name)
    }
    t.is(called, 0)
  })

  test(`${label}: the constructor throws a typed error synchronously`, (t) => {
    t.throws(() => new ResourceLock(), { instanceOf: TypeError, message: /client/ })
    t.throws(() => new ResourceLock({ url, connectTimeout: 'x' }), type(/^options\.connectTimeout must be a number/))
    t.throws(() => new ResourceLock({ url, connectTimeout: -1 }), { instanceOf: RangeError, message: /connectTimeout/ })
    t.throws(() => new ResourceLock({ url: 5 }), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE', message: /^options\.url must be a string/ })
    t.throws(() => new ResourceLock({ url, writeConcern: { wtimeoutMS: '5' } }), type(/^options\.writeConcern\.wtimeoutMS must be a number, got a string$/))
    t.throws(() => new ResourceLock({ url, writeConcern: { wtimeoutMS: -1 } }), range(/^options\.writeConcern\.wtimeoutMS must be a number of milliseconds >= 0/))
    // Each used to be taken, and then failed every write with an untyped error.
    for (const w of [0, 2 ** 31, 1e12, 1.5]) {
      t.throws(() => new ResourceLock({ url, writeConcern: { w } }), range(/^options\.writeConcern\.w must be an integer from 1 to 2147483647, as a lock needs acknowledged writes, got /), `w: ${w}`)
    }
  })

  // What each class does today when reading an argument throws (a getter): the
  // caller's own error comes back synchronously, from both classes, not as a
  // rejection. Pinned so that a change is noticed; no crash either way.
  test(`${label}: an argument whose getter throws: the caller's error, thrown synchronously`, async (t) => {
    const lock = new ResourceLock({ url, databaseName: 'arguments' })
    t.teardown(() => lock.close())
    const mine = new Error('from the getter')
    const ids = ['a']
    Object.defineProperty(ids, 0, { get () { throw mine } })
    const fromIds = await outcome(() => lock.lock(ids))
    t.is(fromIds.how, 'threw')
    t.is(fromIds.error, mine)
    const fromOptions = await outcome(() => lock.doWhileLocked(['a'], () => {}, { get lockTimeout () { throw mine } }))
    t.is(fromOptions.how, 'threw')
    t.is(fromOptions.error, mine)
  })

  // Error messages describe the wrong value's type; a finite number is "a number"
  // (it used to be called "a non-finite number").
  test(`${label}: a finite number in the wrong place is described as a number`, async (t) => {
    t.throws(() => new ResourceLock({ url: 5 }), { message: 'options.url must be a string, got a number' })
    const lock = new ResourceLock({ url, databaseName: 'arguments' })
    t.teardown(() => lock.close())
    await t.throwsAsync(lock.doWhileLocked(['a'], 5), { message: 'callback must be a function, got a number' })
  })
}

test('a method called without its instance: the plain class throws, the traced one rejects', async (t) => {
  const plain = new Native({ url, databaseName: 'arguments' })
  const wrapped = new Traced({ url, databaseName: 'arguments' })
  t.teardown(() => Promise.all([plain.close(), wrapped.close()]))
  const unboundPlain = await outcome(() => { const { lock } = plain; return lock(['a']) })
  t.is(unboundPlain.how, 'threw')
  t.true(unboundPlain.error instanceof TypeError)
  const unboundTraced = await outcome(() => { const { lock } = wrapped; return lock(['a']) })
  t.is(unboundTraced.how, 'rejected')
  t.true(unboundTraced.error instanceof TypeError)
})
