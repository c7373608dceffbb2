// The npm packages as users get them: the Linux binary's glibc baseline, and the two
// tarballs (the main package without any binary, the platform package with it)
// installed into fresh projects, under the original's name, running the original's
// examples from CommonJS and ESM, type-checked with tsc --strict (no skipLibCheck), also
// without @types/node;
// and the error a user gets when the platform package is missing.
import { execFileSync } from 'node:child_process'
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import test from 'ava'
import { url } from './helpers.mjs'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const fixtures = path.join(root, '__test__', 'package')
const platform = 'linux-x64-gnu'
const binary = path.join(root, `mongodb-resource-lock.${platform}.node`)
const onLinuxX64 = process.platform === 'linux' && process.arch === 'x64' && Boolean(process.report.getReport().header.glibcVersionRuntime)
/** The oldest glibc the binary may need: the one of CentOS 7 / RHEL 7, as napi-rs builds. */
export const GLIBC_BASELINE = '2.17'

/** The glibc symbol versions an ELF file needs (`objdump -T`), highest last. */
export function glibcVersions (file) {
  const symbols = execFileSync('objdump', ['-T', file], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 })
  const versions = new Set(symbols.match(/GLIBC_\d+(\.\d+)*/g) ?? [])
  return [...versions].map((v) => v.slice('GLIBC_'.length)).sort(compareVersions)
}

function compareVersions (a, b) {
  const [x, y] = [a, b].map((v) => v.split('.').map(Number))
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) - (y[i] ?? 0)
  }
  return 0
}

const linuxOnly = onLinuxX64 ? test : test.skip

linuxOnly(`the Linux binary needs no glibc newer than ${GLIBC_BASELINE}`, (t) => {
  const versions = glibcVersions(binary)
  t.true(versions.length > 0, 'objdump found glibc symbol versions')
  const newer = versions.filter((v) => compareVersions(v, GLIBC_BASELINE) > 0)
  t.deepEqual(newer, [], `symbols need GLIBC ${newer.join(', ')}; build with \`npm run build\` (Zig, glibc ${GLIBC_BASELINE})`)
})

test('the glibc check sees a symbol version newer than the baseline', (t) => {
  // Node itself is linked against the build machine's glibc: the check must flag it
  // when that glibc is newer than the baseline (it is on every supported build host).
  const versions = glibcVersions(process.execPath)
  t.true(compareVersions(versions.at(-1), GLIBC_BASELINE) > 0, `node needs ${versions.at(-1)}`)
})

function npm (args, cwd) {
  return execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
}

/** Packs the main package and the platform package (a copy of npm/<platform> with the binary). */
function packBoth (dir) {
  const [main] = JSON.parse(npm(['pack', '--json', '--pack-destination', dir], root))
  const platformDir = path.join(dir, 'platform')
  cpSync(path.join(root, 'npm', platform), platformDir, { recursive: true })
  copyFileSync(binary, path.join(platformDir, path.basename(binary)))
  const [native] = JSON.parse(npm(['pack', '--json', '--pack-destination', dir], platformDir))
  return { main, native }
}

function app (dir, name, dependencies) {
  const folder = path.join(dir, name)
  mkdirSync(folder, { recursive: true })
  writeFileSync(path.join(folder, 'package.json'), JSON.stringify({ name, private: true, dependencies, devDependencies: { '@types/node': '^20.0.0' } }))
  return folder
}

linuxOnly('two tarballs, installed into a fresh project under the original\'s name: examples and typings work', async (t) => {
  t.timeout(300_000)
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mrl-pack-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const { main, native } = packBoth(dir)

  const mainFiles = main.files.map((f) => f.path)
  t.false(mainFiles.some((f) => f.endsWith('.node')), 'no binary in the main tarball')
  for (const f of ['index.js', 'index.d.ts', 'binding.js', 'binding.d.ts', 'tracing.js', 'README.md', 'LICENSE', 'package.json']) t.true(mainFiles.includes(f), f)
  t.deepEqual(native.files.map((f) => f.path).sort(), ['LICENSE', 'README.md', path.basename(binary), 'package.json'].sort())
  const manifest = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'))
  t.is(manifest.optionalDependencies[native.name], manifest.version, 'the main package lists the platform package at its own version')

  const folder = app(dir, 'app', {
    '@discue/mongodb-resource-client': `file:${path.join(dir, main.filename)}`,
    [native.name]: `file:${path.join(dir, native.filename)}`,
    mongodb: '^6.0.0'
  })
  for (const file of readdirSync(fixtures)) copyFileSync(path.join(fixtures, file), path.join(folder, file))
  // The typings test's file, importing from the original's name instead of this folder.
  const usage = readFileSync(path.join(root, '__test__', 'typings', 'usage.ts'), 'utf8')
  writeFileSync(path.join(folder, 'usage.ts'), usage.replace("'../../index.js'", "'@discue/mongodb-resource-client'"))
  npm(['install', '--no-audit', '--no-fund', '--prefer-offline'], folder)
  const installed = path.join(folder, 'node_modules', '@discue', 'mongodb-resource-client')
  t.false(readdirSync(installed).some((f) => f.endsWith('.node')))
  t.true(existsSync(path.join(folder, 'node_modules', native.name, path.basename(binary))))

  const env = { ...process.env, MONGODB_URL: url }
  t.regex(execFileSync(process.execPath, ['example.cjs'], { cwd: folder, env, encoding: 'utf8', timeout: 60_000 }), /cjs example ok/)
  t.regex(execFileSync(process.execPath, ['example.mjs'], { cwd: folder, env, encoding: 'utf8', timeout: 60_000 }), /esm example ok/)
  const tsc = (project) => execFileSync(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', project], { cwd: folder, encoding: 'utf8' })
  tsc('tsconfig.json')
  t.pass('tsc --strict accepted every method and option')
  // No @types/node and no lib esnext.disposable: nothing else declares AsyncDisposable.
  t.notThrows(() => tsc('tsconfig.no-node.json'), 'the typings need @types/node')
})

linuxOnly('without its platform package, the error names the package to install', async (t) => {
  t.timeout(300_000)
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mrl-pack-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const [main] = JSON.parse(npm(['pack', '--json', '--pack-destination', dir], root))
  const folder = app(dir, 'bare', { 'mongodb-resource-lock': `file:${path.join(dir, main.filename)}` })
  npm(['install', '--no-audit', '--no-fund', '--prefer-offline', '--omit=optional'], folder)
  const script = "try { require('mongodb-resource-lock') } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })) }"
  const error = JSON.parse(execFileSync(process.execPath, ['-e', script], { cwd: folder, encoding: 'utf8' }))
  t.is(error.code, 'ERR_MONGODB_RESOURCE_LOCK_BINARY_MISSING')
  t.regex(error.message, new RegExp(`Install the package mongodb-resource-lock-${platform}\\b`))
})
