// `npm run test:runners`: one lock/wait/release/close spec under jest, mocha and vitest
// (ava runs it with the rest). Each runner must exit on its own: a handle left open
// by the addon would keep it alive, so each gets a time limit.
import { run } from './tools.mjs'

const limit = { timeoutMs: 120_000 }
run('npx', ['jest', '--ci', '--detectOpenHandles', '__test__/runners/jest.test.cjs'], limit)
run('npx', ['mocha', '__test__/runners/mocha.spec.cjs'], limit)
run('npx', ['vitest', 'run', '__test__/runners/vitest.test.mjs'], limit)
