// The original class's JSDoc example (ESM, a client with the stable API), unchanged
// but for where the server is.
import { MongoClient } from 'mongodb'
import { ResourceLock } from '@discue/mongodb-resource-client'

const url = process.env.MONGODB_URL
const client = new MongoClient(url, {
  serverApi: { version: '1', strict: true, deprecationErrors: true } // https://www.mongodb.com/docs/manual/reference/stable-api/
})

const lock = new ResourceLock({
  client
})

await lock.doWhileLocked([123], () => {
  // do important stuff while lock is being held for 5s by default
})
await lock.close()
console.log('esm example ok')
