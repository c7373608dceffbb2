// The original API reference's example, unchanged but for where the server is.
const { ResourceLock } = require('@discue/mongodb-resource-client')

const url = process.env.MONGODB_URL
const lock = new ResourceLock({
  url
})

;(async () => {
  await lock.doWhileLocked([123], () => {
    // do important stuff while lock is being held for 5s by default
  })
  console.log('cjs example ok')
})()
