// The README's commands: `npm start` (demo), `npm test` (every check), `npm run bench`.
// Each installs what is missing, builds the addon, starts the embedded test server
// unless MONGODB_URL is set, runs, and stops the server again.
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const task = process.argv[2]
const tasks = ['demo', 'test', 'bench']
if (!tasks.includes(task)) {
  console.error(`usage: node scripts/run.mjs ${tasks.join('|')}`)
  process.exit(2)
}

function run (command, args, env = {}, timeoutMs = undefined) {
  console.log(`\n$ ${[command, ...args].join(' ')}`)
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env }, timeout: timeoutMs })
  if (result.error?.code === 'ETIMEDOUT') {
    throw new Error(`${command} ${args.join(' ')} did not exit within ${timeoutMs / 1000} s (something kept the process alive)`)
  }
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} failed (${result.status ?? result.signal})`)
  }
}

if (!existsSync(path.join(root, 'node_modules', '@napi-rs', 'cli'))) {
  run('npm', ['install', '--no-audit', '--no-fund'])
}

const { startServer } = await import('./test-server.mjs')

let server
let failed = false
try {
  if (task === 'test') {
    run('cargo', ['fmt', '--all', '--check'])
    run('cargo', ['clippy', '--workspace', '--all-targets', '--', '-D', 'warnings'])
  }
  run('npm', ['run', 'build'])
  const url = process.env.MONGODB_URL ?? (server = await startServer()).url
  console.log(`\nMongoDB: ${url.replace(/\/\/[^@/]*@/, '//****@')}${server ? ' (embedded SecantusDB test server)' : ''}`)
  const env = { MONGODB_URL: url }
  if (task === 'demo') {
    run('node', ['demo/demo.mjs'], env)
  } else if (task === 'bench') {
    run('node', ['benchmark/bench.mjs', ...process.argv.slice(3)], env)
  } else {
    run('cargo', ['test', '--workspace'], env)
    run('npx', ['tsc', '-p', '__test__/typings/tsconfig.json'])
    run('npx', ['ava'], env)
    run('npx', ['ava', '--config', 'ava.heavy.config.mjs'], env)
    // The same small spec under the other runners; each must exit on its own.
    run('npx', ['jest', '--ci', '--detectOpenHandles', '__test__/runners/jest.test.cjs'], env, 120_000)
    run('npx', ['mocha', '__test__/runners/mocha.spec.cjs'], env, 120_000)
    run('npx', ['vitest', 'run', '__test__/runners/vitest.test.mjs'], env, 120_000)
  }
} catch (error) {
  console.error(`\n${error.message}`)
  failed = true
} finally {
  await server?.stop()
}
process.exit(failed ? 1 : 0)
