'use strict'
// The package entry. The classes come from the napi-generated loader (binding.js).
// This file exists because of two things a Node-API addon cannot do on Node 20: load
// another package (native code has no `require`, and `process.getBuiltinModule` needs
// Node 22.3), and define a class that extends Error. So the optional
// @opentelemetry/api (tracing.js) and the application's `mongodb` (whose
// MongoServerError a held key's error must be an instance of) are looked up here, and
// LockError is defined in errors.js; the addon is handed what it needs.
const binding = require('./binding.js')
const { LockError } = require('./errors.js')
const { traced } = require('./tracing.js')

function applicationMongoServerError () {
  try {
    return require('mongodb').MongoServerError
  } catch {
    return undefined
  }
}

binding.useErrorClasses({ LockError, MongoServerError: applicationMongoServerError() })

exports.ResourceLock = traced(binding.ResourceLock)
exports.LockHandle = binding.LockHandle
exports.LockError = LockError
