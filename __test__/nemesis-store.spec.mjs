// The fault suite's downstream store (nemesis/store.mjs) on its own: fencing tokens
// alone, without any lock, must keep its read-modify-write counter exact, or the suite's
// "lost updates" would blame the lock for the store's (or the server's) faults.
import test from 'ava'
import { MongoClient } from 'mongodb'
import { FencedCounter, createStore, readStore } from './nemesis/store.mjs'
import { freshDatabase, sleep, url } from './helpers.mjs'

test('concurrent fenced read-modify-writes without a lock lose no update; stale tokens are refused', async (t) => {
  const { db } = await freshDatabase(t)
  await createStore(db.collection('store'))
  const clients = await Promise.all([1, 2, 3, 4].map(() => new MongoClient(url).connect()))
  t.teardown(() => Promise.all(clients.map((c) => c.close())))
  let next = 1n
  let accepted = 0
  let refused = 0
  const deadline = Date.now() + 3_000
  await Promise.all(clients.map(async (client) => {
    const counter = new FencedCounter(client.db(db.databaseName).collection('store'))
    for (let i = 0; i < 500 && Date.now() < deadline; i++) {
      const token = next++
      const n = await counter.read(token)
      if (n === null) { refused++; continue }
      await sleep(Math.random() * 10)
      if (await counter.write(n + 1, token)) accepted++
      else refused++
    }
  }))
  const store = await readStore(db.collection('store'))
  t.log(`${accepted} accepted, ${refused} refused`)
  t.true(accepted > 0 && refused > 0, 'the run had both outcomes')
  t.is(store.accepted, accepted)
  t.is(store.n, store.accepted, 'an update was lost')
  // A write without a token (the original class) is accepted and keeps the highest token.
  const counter = new FencedCounter(db.collection('store'))
  t.true(await counter.write(store.n + 1, null))
  t.is((await readStore(db.collection('store'))).maxToken, store.maxToken)
  t.false(await counter.write(0, 1n), 'a stale token is refused')
  t.is(await counter.read(1n), null, 'a stale token cannot read either')
})
