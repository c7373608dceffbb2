// Type-checked by package.spec.mjs without @types/node (`types: []`, lib ES2022 and DOM):
// the package's own typings must not need it. A stub stands in for the MongoClient,
// whose typings do need it.
import { LockError, ResourceLock, type LockHandle } from '@discue/mongodb-resource-client'

const client = { options: {}, close: async (): Promise<void> => {} }
const locks = new ResourceLock({ client })

async function use (): Promise<number> {
  const handle: LockHandle = await locks.acquire(['a'], { lease: 5_000 })
  await handle.release()
  return locks.doWhileLocked(['a'], async ({ signal }) => (signal.aborted ? 0 : 1), { signal: AbortSignal.timeout(5) })
}

void use().catch((error: unknown) => {
  if (error instanceof LockError) console.log(error.code)
})
