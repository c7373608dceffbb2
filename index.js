'use strict'
// The package entry. The class comes from the napi-generated loader (binding.js).
// This file exists because a Node-API addon cannot load another package on Node 20
// (native code has no `require`, and `process.getBuiltinModule` needs Node 22.3), so
// the optional @opentelemetry/api is looked up here, in JavaScript (tracing.js).
const { traced } = require('./tracing.js')

exports.ResourceLock = traced(loadBinding().ResourceLock)

// The binary comes in a package of its own per platform (optionalDependencies): when
// it is missing, say which package to install instead of napi's generic message.
function loadBinding () {
  try {
    return require('./binding.js')
  } catch (error) {
    if (!/Cannot find native binding|Failed to load native binding/.test(error.message)) throw error
    const wanted = `mongodb-resource-lock-${platformSuffix()}`
    const missing = new Error(
      `mongodb-resource-lock: the native binary for ${process.platform}-${process.arch} was not found. ` +
      `Install the package ${wanted} (npm installs it as an optional dependency; it is missing after ` +
      '`--omit=optional`, `--no-optional`, a lock file made on another platform, or on a platform without a prebuilt binary).'
    )
    missing.code = 'ERR_MONGODB_RESOURCE_LOCK_BINARY_MISSING'
    missing.cause = error
    throw missing
  }
}

function platformSuffix () {
  const { platform, arch } = process
  if (platform === 'win32') return `${platform}-${arch}-msvc`
  if (platform !== 'linux') return `${platform}-${arch}`
  const glibc = process.report?.getReport().header.glibcVersionRuntime
  return `${platform}-${arch}-${glibc ? 'gnu' : 'musl'}`
}
