'use strict'
// The package entry. The classes come from the napi-generated loader (binding.js).
// This file exists because of two things a Node-API addon cannot do on Node 20: load
// another package (native code has no `require`, and `process.getBuiltinModule` needs
// Node 22.3), and define a class that extends Error. So the optional
// @opentelemetry/api (tracing.js) and the application's `mongodb` (whose error
// classes a held key's or a network failure's error must be instances of) are looked
// up here, and LockError is defined in errors.js; the addon is handed what it needs.
const { LockError, driverErrors } = require('./errors.js')
const { traced } = require('./tracing.js')

const binding = loadBinding()
const mongodb = applicationMongodb()
binding.useErrorClasses({ LockError, MongoServerError: mongodb?.MongoServerError, driverError: driverErrors(mongodb) })

exports.ResourceLock = traced(binding.ResourceLock)
exports.LockHandle = binding.LockHandle
exports.LockError = LockError

function applicationMongodb () {
  try {
    return require('mongodb')
  } catch {
    return undefined
  }
}

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
