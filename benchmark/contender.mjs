// One process of the many-process workloads: `callers` callers loop on one key with a
// 1 ms critical section, pausing `pause` ms between calls, and with `slowHold`, one
// more caller loops on a second key with a critical section that long; prints "ready"
// once connected, starts when the period `{ from, until }` (epoch ms) arrives on
// stdin as JSON, runs until its end, and prints the turns and waits counted from its
// start (the second key's as `slow`).
// argv: <impl> <databaseName> <callers> [pause] [slowHold]
import { MongoClient } from 'mongodb'
import { contendOnOneKey } from './one-key.mjs'

const [impl, databaseName, callers, pause = '0', slowHold = '0'] = process.argv.slice(2)
const url = process.env.MONGODB_URL
// Only the measured implementation is loaded: importing the original also starts the
// OpenTelemetry SDK of its tracing dependency, which would then record this package's
// spans too, a cost an application that switched would not have.
const { ResourceLock } = impl === 'original'
  ? await import('@discue/mongodb-resource-client')
  : await import('../index.js')
const lock = new ResourceLock({ client: new MongoClient(url), databaseName })
await lock.doWhileLocked([`warm-${process.pid}`], () => {})
process.stdout.write('ready\n')
const period = JSON.parse(String(await new Promise((resolve) => process.stdin.once('data', resolve))))
const [fast, slow] = await Promise.all([
  contendOnOneKey(lock, Number(callers), period, Number(pause)),
  Number(slowHold) > 0 ? contendOnOneKey(lock, 1, period, 0, { key: 'slow', hold: Number(slowHold) }) : undefined
])
process.stdout.write(JSON.stringify({ ...fast, slow }) + '\n')
await lock.close()
process.exit(0)
