import test from 'ava'
import spec from './lock-spec.cjs'

test(spec.title, async (t) => {
  await spec.lockWaitReleaseClose('ava')
  t.pass()
})
