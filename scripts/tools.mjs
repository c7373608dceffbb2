// Small helpers shared by the scripts: run a command, install what is missing.
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

/** Runs a command in the repository, output inherited; throws unless it exits 0. */
export function run (command, args, { env = {}, timeoutMs } = {}) {
  console.log(`\n$ ${[command, ...args].join(' ')}`)
  // On Windows npm and npx are .cmd scripts, which only a shell runs.
  const shell = process.platform === 'win32'
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env }, timeout: timeoutMs, shell })
  if (result.error?.code === 'ETIMEDOUT') {
    throw new Error(`${command} ${args.join(' ')} did not exit within ${timeoutMs / 1000} s (something kept the process alive)`)
  }
  if (result.error) throw result.error
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.status ?? result.signal})`)
}

/** `npm install` when node_modules is missing or older than package-lock.json. */
export function ensureNodeModules () {
  const installed = path.join(root, 'node_modules', '.package-lock.json')
  const lock = path.join(root, 'package-lock.json')
  if (existsSync(installed) && statSync(installed).mtimeMs >= statSync(lock).mtimeMs) return
  run('npm', ['install', '--no-audit', '--no-fund'])
}

/**
 * A git-ignored Python venv with the packages pinned in `requirements` (a file under
 * scripts/), reinstalled when that file changes. Returns the venv's bin folder.
 */
export function ensureVenv (venv, requirements) {
  const bin = path.join(venv, 'bin')
  const wanted = readFileSync(requirements, 'utf8')
  const stamp = path.join(venv, 'installed.txt')
  if (existsSync(stamp) && readFileSync(stamp, 'utf8') === wanted) return bin
  console.log(`[tools] installing ${path.basename(requirements)} into ${path.relative(root, venv)}/`)
  mkdirSync(path.dirname(venv), { recursive: true })
  if (!existsSync(path.join(bin, 'pip'))) execFileSync('python3', ['-m', 'venv', venv], { stdio: 'inherit' })
  execFileSync(path.join(bin, 'pip'), ['install', '--quiet', '--disable-pip-version-check', '-r', requirements], { stdio: 'inherit' })
  writeFileSync(stamp, wanted)
  return bin
}

/** Zig, cargo-zigbuild and zizmor (scripts/python-tools.txt) in .tools/venv. */
export function ensurePythonTools () {
  return ensureVenv(path.join(root, '.tools', 'venv'), path.join(root, 'scripts', 'python-tools.txt'))
}
