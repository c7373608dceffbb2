// Type-checked by `npm test` (tsc --strict, no skipLibCheck): every method and option.
// The `Equal` checks and `@ts-expect-error` lines make this file fail to compile when a
// type widens (for example to `any`) or stops refusing a wrong argument.
import { MongoClient } from 'mongodb'
import { ResourceLock, type LockContext, type DoWhileLockedOptions, type ResourceId, type ResourceIds } from '../../index.js'

/** True only when A and B are the same type (`any` equals nothing else). */
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false
function expectType<T extends true> (): T | void {}

async function main (): Promise<void> {
  const lock = new ResourceLock({ client: new MongoClient('mongodb://127.0.0.1'), databaseName: 'db', connectTimeout: 1_000, writeConcern: { w: 'majority', journal: true, wtimeoutMS: 5_000 } })
  const byUrl = new ResourceLock({ url: 'mongodb://127.0.0.1' })
  const key = await lock.lock(['a', 1], { lease: 1_000 })
  expectType<Equal<typeof key, string>>()
  const one = await lock.lock([123])
  expectType<Equal<typeof one, 123>>()
  const unlocked = await lock.unlock([key])
  expectType<Equal<typeof unlocked, void>>()
  const options: DoWhileLockedOptions = { lockTimeout: Infinity, waitTimeout: 5_000, retryInterval: 125, lease: 3_000, signal: AbortSignal.timeout(10_000) }
  const n = await lock.doWhileLocked([123], async (context) => {
    expectType<Equal<typeof context, LockContext>>()
    expectType<Equal<typeof context.fencingToken, bigint>>()
    expectType<Equal<typeof context.key, ResourceId>>()
    expectType<Equal<typeof context.signal, AbortSignal>>()
    context.signal.throwIfAborted()
    return Number(context.fencingToken % 10n)
  }, options)
  expectType<Equal<typeof n, number>>()
  const s = await lock.doWhileLocked('k', () => 'sync value' as const)
  expectType<Equal<typeof s, 'sync value'>>()
  const nested = await lock.doWhileLocked(['k'], async () => Promise.resolve({ ok: true }))
  expectType<Equal<typeof nested, { ok: boolean }>>()
  const nothing = await lock.doWhileLocked(['k'], () => {})
  expectType<Equal<typeof nothing, void>>()
  expectType<Equal<ReturnType<typeof lock.close>, Promise<void>>>()
  expectType<Equal<ResourceIds, ReadonlyArray<ResourceId> | ResourceId>>()

  // Wrong arguments are refused by the compiler.
  // @ts-expect-error an id must be a string, a number or a BSON scalar, not an object
  await lock.lock([{ $gt: '' }])
  // @ts-expect-error an id must be a string, a number or a BSON scalar
  await lock.unlock([Symbol('s')])
  // @ts-expect-error the callback is required
  await lock.doWhileLocked(['k'])
  // @ts-expect-error the callback must be a function
  await lock.doWhileLocked(['k'], 'not a function')
  // @ts-expect-error lockTimeout is a number
  await lock.doWhileLocked(['k'], () => {}, { lockTimeout: '5s' })
  // @ts-expect-error signal is an AbortSignal
  await lock.doWhileLocked(['k'], () => {}, { signal: {} })
  // @ts-expect-error there is no such option
  await lock.doWhileLocked(['k'], () => {}, { retries: 3 })
  // @ts-expect-error lease is a number
  await lock.lock(['k'], { lease: true })
  // @ts-expect-error the context is read-only
  await lock.doWhileLocked(['k'], (context) => { context.fencingToken = 1n })
  // @ts-expect-error the fencing token is a bigint, not a number
  await lock.doWhileLocked(['k'], (context) => { const token: number = context.fencingToken; return token })
  // @ts-expect-error the constructor needs an options object
  void new ResourceLock()
  // @ts-expect-error writeConcern.journal is a boolean
  void new ResourceLock({ url: 'mongodb://127.0.0.1', writeConcern: { journal: 'yes' } })
  // @ts-expect-error the key is not a boolean
  const notBoolean: boolean = await lock.lock(['k'])
  console.log(n, s, nested, nothing, notBoolean)
  await byUrl.close()
  await lock.close()
}

void main
