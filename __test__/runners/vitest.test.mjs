import { test } from 'vitest'
import spec from './lock-spec.cjs'

test(spec.title, () => spec.lockWaitReleaseClose('vitest'), 30_000)
