'use strict'
const { lockWaitReleaseClose, title } = require('./lock-spec.cjs')

it(title, () => lockWaitReleaseClose('mocha')).timeout(30_000)
