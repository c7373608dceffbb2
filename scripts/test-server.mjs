// Starts the MongoDB-compatible SecantusDB test server (from PyPI, the version pinned in
// scripts/test-server.txt, installed into the git-ignored .test-server/ folder) on a free
// loopback port. Used by scripts/with-server.mjs and by tests that restart it.
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { ensureVenv } from './tools.mjs'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const venv = path.join(root, '.test-server', 'venv')
export const serverBinary = path.join(venv, 'bin', 'secantusd-py')

export function installServer () {
  ensureVenv(venv, path.join(root, 'scripts', 'test-server.txt'))
}

export function freePort () {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

async function waitForPort (port, child, timeoutMs) {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`test server exited with code ${child.exitCode}`)
    const open = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1')
      socket.once('connect', () => { socket.destroy(); resolve(true) })
      socket.once('error', () => resolve(false))
    })
    if (open) return
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  throw new Error(`test server did not listen on ${port} within ${timeoutMs} ms`)
}

/**
 * Starts a server. `storagePath` keeps data on disk (with --sync-on-commit, so that
 * acknowledged writes survive a kill, as a journaled mongod's do); default: memory.
 * `standalone` starts it without replica-set features (no change streams).
 * `binary`: another build of the server to run instead of the PyPI one.
 */
export async function startServer ({ port, storagePath, standalone = false, quiet = true, binary } = {}) {
  // Both builds (the PyPI one, and e.g. `secantusd-rs` from PATH) take these flags;
  // without --sync-on-commit a killed Rust build loses writes it acknowledged.
  const other = binary !== undefined && binary !== serverBinary
  if (!other) installServer()
  port ??= await freePort()
  const args = ['--host', '127.0.0.1', '--port', String(port), '--log-level', 'ERROR']
  args.push('--storage-path', storagePath ?? ':memory:')
  if (storagePath) args.push('--sync-on-commit')
  if (standalone) args.push('--standalone')
  const child = spawn(other ? binary : serverBinary, args, { stdio: quiet ? 'ignore' : 'inherit' })
  await waitForPort(port, child, 30_000)
  return {
    port,
    url: `mongodb://127.0.0.1:${port}`,
    child,
    async stop (signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill(signal)
      await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 5_000))])
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    }
  }
}

export function tempStorage () {
  return mkdtempSync(path.join(os.tmpdir(), 'mrl-server-'))
}

export function removeStorage (dir) {
  rmSync(dir, { recursive: true, force: true })
}
