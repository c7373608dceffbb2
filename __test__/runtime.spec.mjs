// The addon's tokio runtime has one worker thread unless TOKIO_WORKER_THREADS says
// otherwise (src/runtime.rs). Counted from /proc, so Linux only.
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import test from 'ava'
import { freshDatabase, url } from './database.mjs'

const run = promisify(execFile)
const onLinux = process.platform === 'linux' ? test : test.skip

/** The number of tokio worker threads of a process that took and released a lock. */
async function workers (databaseName, env) {
  const script = `
    const { readdirSync, readFileSync } = require('node:fs')
    const { MongoClient } = require('mongodb')
    const { ResourceLock } = require(${JSON.stringify(new URL('../index.js', import.meta.url).pathname)})
    const lock = new ResourceLock({ client: new MongoClient(${JSON.stringify(url)}), databaseName: ${JSON.stringify(databaseName)} })
    lock.doWhileLocked(['runtime'], () => {}).then(async () => {
      const names = readdirSync('/proc/self/task').map((t) => readFileSync('/proc/self/task/' + t + '/comm', 'utf8').trim())
      console.log(names.filter((n) => n === 'tokio-rt-worker').length)
      await lock.close()
    })`
  const inherited = { ...process.env }
  delete inherited.TOKIO_WORKER_THREADS
  const cwd = new URL('..', import.meta.url).pathname
  const { stdout } = await run(process.execPath, ['-e', script], { cwd, env: { ...inherited, ...env } })
  return Number(stdout.trim())
}

onLinux('the addon runs on one tokio worker thread by default', async (t) => {
  const { name } = await freshDatabase(t)
  t.is(await workers(name, {}), 1)
})

onLinux('TOKIO_WORKER_THREADS sets how many', async (t) => {
  const { name } = await freshDatabase(t)
  t.is(await workers(name, { TOKIO_WORKER_THREADS: '3' }), 3)
})
