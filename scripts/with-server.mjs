// `node scripts/with-server.mjs <command> [args...]`: runs the command with MONGODB_URL
// pointing at a test server. When MONGODB_URL is already set (a real MongoDB, or an
// outer with-server), that one is used; otherwise the SecantusDB test server is started
// on a free loopback port and stopped afterwards.
import { spawn } from 'node:child_process'
import { startServer } from './test-server.mjs'
import { root } from './tools.mjs'

const [command, ...args] = process.argv.slice(2)
if (!command) {
  console.error('usage: node scripts/with-server.mjs <command> [args...]')
  process.exit(2)
}
const server = process.env.MONGODB_URL ? null : await startServer()
const url = process.env.MONGODB_URL ?? server.url
if (server) console.log(`[with-server] SecantusDB test server at ${url}`)
const child = spawn(command, args, { cwd: root, stdio: 'inherit', env: { ...process.env, MONGODB_URL: url }, shell: process.platform === 'win32' })
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => child.kill(signal))
const code = await new Promise((resolve) => child.on('exit', (status, signal) => resolve(status ?? (signal ? 1 : 0))))
await server?.stop()
process.exit(code)
