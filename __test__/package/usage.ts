// Type-checked by `npm test` (tsc --strict, no skipLibCheck): every method and option.
import { MongoClient } from 'mongodb'
import { ResourceLock, type LockContext, type DoWhileLockedOptions } from '@discue/mongodb-resource-client'

async function main (): Promise<void> {
  const lock = new ResourceLock({ client: new MongoClient('mongodb://127.0.0.1'), databaseName: 'db', connectTimeout: 1_000, writeConcern: { w: 'majority', journal: true, wtimeoutMS: 5_000 } })
  const byUrl = new ResourceLock({ url: 'mongodb://127.0.0.1' })
  const key: string | number = await lock.lock(['a', 1], { lease: 1_000 })
  await lock.unlock([key])
  const options: DoWhileLockedOptions = { lockTimeout: Infinity, waitTimeout: 5_000, retryInterval: 125, lease: 3_000, signal: AbortSignal.timeout(10_000) }
  const n: number = await lock.doWhileLocked([123], async (context: LockContext) => {
    const token: bigint = context.fencingToken
    context.signal.throwIfAborted()
    return Number(token % 10n)
  }, options)
  const s: string = await lock.doWhileLocked('k', () => 'sync value')
  const nothing: void = await lock.doWhileLocked(['k'], () => {})
  console.log(n, s, nothing)
  await byUrl.close()
  await lock.close()
}

void main
