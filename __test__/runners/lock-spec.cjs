'use strict'
// One small spec shared by every test runner: lock, wait, release, close. Each runner
// must then exit on its own: nothing of ours may keep the process alive.
const assert = require('node:assert/strict')
const { MongoClient } = require('mongodb')
const { ResourceLock } = require('../..')

async function lockWaitReleaseClose (runner) {
  const url = process.env.MONGODB_URL
  const databaseName = `runner_${runner}_${process.pid}`
  const lock = new ResourceLock({ url, databaseName })
  try {
    assert.equal(await lock.lock(['runner']), 'runner')
    const waited = lock.doWhileLocked(['runner'], ({ signal }) => signal.aborted ? 'aborted' : 'got it', { waitTimeout: 10_000 })
    await new Promise((resolve) => setTimeout(resolve, 100))
    await lock.unlock(['runner'])
    assert.equal(await waited, 'got it')
    await assert.rejects(lock.unlock(['runner']), /Was not able to delete runner\./)
  } finally {
    await lock.close()
    const client = new MongoClient(url)
    await client.db(databaseName).dropDatabase()
    await client.close()
  }
}

module.exports = { lockWaitReleaseClose, title: 'lock, wait, release, close' }
