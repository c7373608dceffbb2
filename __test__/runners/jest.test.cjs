'use strict'
const { lockWaitReleaseClose, title } = require('./lock-spec.cjs')

test(title, () => lockWaitReleaseClose('jest'), 30_000)
