// The test server and a database per test, without loading the addon: specs that must
// load it only in worker threads (workers.spec.mjs) use this instead of helpers.mjs.
import { randomBytes } from 'node:crypto'
import { MongoClient } from 'mongodb'

export const url = process.env.MONGODB_URL
if (!url) throw new Error('MONGODB_URL is not set: run the tests with `npm test`')

/** A database of its own for one test, dropped afterwards. */
export async function freshDatabase (t) {
  const name = `t_${randomBytes(6).toString('hex')}`
  const client = new MongoClient(url)
  t.teardown(async () => {
    await client.db(name).dropDatabase().catch(() => {})
    await client.close()
  })
  return { name, client, db: client.db(name) }
}

/**
 * `url` with `name` as its default database, keeping its hosts and options:
 * `mongodb://a:1,b:2/?replicaSet=rs` has no path a URL parser could set.
 */
export function withDatabase (url, name) {
  const [base, ...options] = url.split('?')
  const hostsEnd = base.indexOf('/', base.indexOf('://') + 3)
  const hosts = hostsEnd === -1 ? base : base.slice(0, hostsEnd)
  return `${hosts}/${name}${options.length ? `?${options.join('?')}` : ''}`
}
