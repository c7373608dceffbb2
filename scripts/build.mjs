// `npm run build`: the addon, in release mode (`--debug` for a debug build), with the
// JS loader (binding.js) and typings (binding.d.ts).
//
// On Linux x64 with glibc the binary is linked by Zig (cargo-zigbuild, both from PyPI,
// installed into .tools/venv) against glibc 2.17, so that it loads on every Linux
// that Node.js 18+ runs on (Debian 11, Ubuntu 20.04, Amazon Linux 2, RHEL 8, ...),
// not only on one as new as the build machine. Other arguments go to `napi build`
// as they are (the CI workflow passes its own --target and cross flags).
//
// Nothing is rebuilt when nothing changed: napi build recompiles the crate on every
// second call (it flips an env var that forces a rebuild), so the inputs are hashed
// and the build is skipped while the hash and the binary are the ones recorded.
import { createHash } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { ensureNodeModules, ensurePythonTools, root, run } from './tools.mjs'

export const glibcTarget = 'x86_64-unknown-linux-gnu.2.17'

const args = process.argv.slice(2)
const debug = args.includes('--debug')
const extra = args.filter((a) => a !== '--debug')
const napi = ['build', '--platform', '--js', 'binding.js', '--dts', 'binding.d.ts', ...(debug ? [] : ['--release'])]
const env = {}
const isGlibcX64 = process.platform === 'linux' && process.arch === 'x64' && Boolean(process.report?.getReport().header.glibcVersionRuntime)
if (extra.length > 0) {
  napi.push(...extra)
} else if (isGlibcX64) {
  env.PATH = `${ensurePythonTools()}${path.delimiter}${process.env.PATH}`
  napi.push('--cross-compile', '--target', glibcTarget)
}
if (extra.some((a) => a === '-x' || a === '--cross-compile')) {
  env.PATH = `${ensurePythonTools()}${path.delimiter}${process.env.PATH}`
}

function filesUnder (dir) {
  return readdirSync(path.join(root, dir), { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => path.relative(root, path.join(entry.parentPath, entry.name)))
}

function inputsHash () {
  const hash = createHash('sha256')
  hash.update(JSON.stringify({ napi, rustc: execFileSync('rustc', ['-V'], { encoding: 'utf8' }) }))
  hash.update(JSON.stringify(JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')).napi))
  const files = ['Cargo.toml', 'Cargo.lock', 'build.rs', 'core/Cargo.toml', ...filesUnder('src'), ...filesUnder('core/src')]
  for (const file of files.sort()) hash.update(`${file}\0`).update(readFileSync(path.join(root, file)))
  return hash.digest('hex')
}

function outputs () {
  const binaries = readdirSync(root).filter((f) => f.startsWith('mongodb-resource-lock.') && f.endsWith('.node'))
  return ['binding.js', 'binding.d.ts', ...binaries].map((f) => {
    const file = path.join(root, f)
    return [f, existsSync(file) ? createHash('sha256').update(readFileSync(file)).digest('hex') : null]
  })
}

ensureNodeModules()
const stampFile = path.join(root, 'target', 'build-inputs.json')
const hash = inputsHash()
const stamp = existsSync(stampFile) ? JSON.parse(readFileSync(stampFile, 'utf8')) : null
if (stamp?.hash === hash && JSON.stringify(stamp.outputs) === JSON.stringify(outputs()) && outputs().length > 2) {
  console.log('[build] inputs unchanged since the last build: nothing to do')
} else {
  run('npx', ['napi', ...napi], { env })
  mkdirSync(path.dirname(stampFile), { recursive: true })
  writeFileSync(stampFile, JSON.stringify({ hash, outputs: outputs() }))
}
