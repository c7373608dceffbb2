// The heavy specs (random-input property test, server restart, partition and clock
// steps, fault injection, npm pack), run after the main suite and one file at a time,
// so that their load on the test server does not distort the timing checks of the
// others, nor theirs.
export default {
  files: [
    '__test__/property.spec.mjs',
    '__test__/auth.spec.mjs',
    '__test__/fault.spec.mjs',
    '__test__/partition-clock.spec.mjs',
    '__test__/nemesis.spec.mjs',
    '__test__/package.spec.mjs'
  ],
  timeout: '5m',
  concurrency: 1,
  workerThreads: false
}
