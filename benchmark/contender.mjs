// One process of the many-process workloads: `callers` callers loop on one key with a
// 1 ms critical section, pausing `pause` ms between calls; prints "ready" once
// connected, starts when the period `{ from, until }` (epoch ms) arrives on stdin as
// JSON, runs until its end, and prints the turns and waits counted from its start.
// argv: <impl> <databaseName> <callers> [pause]
import { MongoClient } from 'mongodb'
import { contendOnOneKey } from './one-key.mjs'

const [impl, databaseName, callers, pause = '0'] = process.argv.slice(2)
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
process.stdout.write(JSON.stringify(await contendOnOneKey(lock, Number(callers), period, Number(pause))) + '\n')
await lock.close()
process.exit(0)
