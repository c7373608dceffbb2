'use strict'
// The package entry. The class comes from the napi-generated loader (binding.js).
// This file exists because a Node-API addon cannot load another package on Node 20
// (native code has no `require`, and `process.getBuiltinModule` needs Node 22.3), so
// the optional @opentelemetry/api is looked up here, in JavaScript (tracing.js).
const binding = require('./binding.js')
const { traced } = require('./tracing.js')

exports.ResourceLock = traced(binding.ResourceLock)
