// One demo worker: takes the shared lock a few times and reports each hold as a JSON line.
// argv: <name> <databaseName> <rounds>
import { createRequire } from 'node:module'
const require = createRequire(import.meta.url)
const { ResourceLock } = require('../index.js')

const [name, databaseName, rounds] = process.argv.slice(2)
const lock = new ResourceLock({ url: process.env.MONGODB_URL, databaseName })
for (let round = 0; round < Number(rounds); round++) {
  await lock.doWhileLocked(['demo', 'report'], async ({ fencingToken }) => {
    const start = Date.now()
    await new Promise((resolve) => setTimeout(resolve, 20 + Math.random() * 40))
    process.stdout.write(JSON.stringify({ name, start, end: Date.now(), token: String(fencingToken) }) + '\n')
  }, { waitTimeout: 60_000 })
}
await lock.close()
