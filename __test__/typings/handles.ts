// Type-checked by `npm test` (tsc --strict): handles, await using, errors, holder, keys.
import { MongoClient, ObjectId } from 'mongodb'
import { LockError, ResourceLock, type DoWhileLockedOptions, type LockErrorCode, type LockHandle, type LockHolder } from '../../index.js'

type Exactly<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false
const exactly = <A, B>(proof: Exactly<A, B>): Exactly<A, B> => proof

async function handles (locks: ResourceLock): Promise<void> {
  {
    await using lock = await locks.acquire(['invoice', 42], { waitTimeout: 1_000, lease: 5_000, retryInterval: 50, signal: AbortSignal.timeout(2_000) })
    exactly<typeof lock.fencingToken, bigint>(true)
    exactly<typeof lock.signal, AbortSignal>(true)
    await lock.extend(10_000)
  }
  const maybe = await locks.tryAcquire(['job'], { lease: 1_000 })
  exactly<typeof maybe, LockHandle | null>(true)
  if (maybe !== null) exactly<Awaited<ReturnType<typeof maybe.release>>, boolean>(true)
  // @ts-expect-error tryAcquire takes no waitTimeout: it never waits
  await locks.tryAcquire(['job'], { waitTimeout: 10 })
  // @ts-expect-error extend takes a number of milliseconds
  await maybe?.extend('1s')
  const holdOptions: DoWhileLockedOptions = { lockTimeout: 1_000 }
  // @ts-expect-error a handle has no lockTimeout (options of doWhileLocked do not fit): it is held until release()
  await locks.acquire(['job'], holdOptions)
  const holder = await locks.holder(['job'])
  exactly<typeof holder, LockHolder | null>(true)
  exactly<Awaited<ReturnType<typeof locks.isLocked>>, boolean>(true)
}

async function keys (locks: ResourceLock): Promise<void> {
  const id = new ObjectId()
  exactly<Awaited<ReturnType<typeof locks.lock<[ObjectId]>>>, ObjectId>(true)
  const joined: string = await locks.lock(['user', id])
  const one: 'k' = await locks.lock('k')
  // @ts-expect-error plain objects are not ids
  await locks.lock([{ $gt: '' }])
  console.log(joined, one)
}

function errors (error: unknown): void {
  if (error instanceof LockError) exactly<typeof error.code, LockErrorCode>(true)
  // @ts-expect-error not one of the codes
  const code: LockErrorCode = 'ERR_SOMETHING'
  console.log(code)
}

const locks = new ResourceLock({ client: new MongoClient('mongodb://127.0.0.1') })
void handles(locks)
void keys(locks)
errors(undefined)
