// The addon's tokio runtime has one worker thread unless TOKIO_WORKER_THREADS says
// otherwise (src/runtime.rs). Counted from /proc, so Linux only; right after the addon
// loads, as tokio gives the threads of its blocking pool (host name look-ups, for one)
// the same name as its workers.
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import test from 'ava'

const run = promisify(execFile)
const onLinux = process.platform === 'linux' ? test : test.skip
const entry = fileURLToPath(new URL('../index.js', import.meta.url))

/** The tokio worker threads of a process that loaded the addon, with `env`. */
async function workers (env) {
  const script = `
    require(${JSON.stringify(entry)})
    const { readdirSync, readFileSync } = require('node:fs')
    const names = readdirSync('/proc/self/task').map((task) => {
      try { return readFileSync('/proc/self/task/' + task + '/comm', 'utf8').trim() } catch { return '' }
    })
    console.log(names.filter((name) => name === 'tokio-rt-worker').length)`
  const inherited = { ...process.env }
  delete inherited.TOKIO_WORKER_THREADS
  const { stdout } = await run(process.execPath, ['-e', script], { env: { ...inherited, ...env }, timeout: 30_000 })
  return Number(stdout.trim())
}

onLinux('the addon runs on one tokio worker thread by default', async (t) => {
  t.is(await workers({}), 1)
})

onLinux('TOKIO_WORKER_THREADS sets how many', async (t) => {
  t.is(await workers({ TOKIO_WORKER_THREADS: '3' }), 3)
})

onLinux('a TOKIO_WORKER_THREADS that is not a positive count is ignored, not a crash', async (t) => {
  t.is(await workers({ TOKIO_WORKER_THREADS: 'abc' }), 1)
  t.is(await workers({ TOKIO_WORKER_THREADS: '0' }), 1)
})
