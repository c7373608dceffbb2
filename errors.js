'use strict'
// Node-API cannot define a class that extends Error (napi_define_class makes plain
// classes), so the class of the errors this package creates itself is defined here and
// handed to the addon by index.js.

/**
 * An error of this package: `code` says which (`ERR_LOCK_WAIT_TIMEOUT`,
 * `ERR_LOCK_TIMEOUT`, `ERR_LOCK_NOT_DELETED`, `ERR_LOCK_LOST`, `ERR_LOCK_CLOSED`).
 * Its `name` stays `'Error'` and its messages are the original class's, so code that
 * handles the original's plain errors handles these too.
 */
class LockError extends Error {}

/**
 * Makes the driver errors that are not a server's refusal (a network failure, a server
 * selection timeout) with the application's `mongodb` classes, so that code written
 * for the driver (`instanceof MongoNetworkError`, `hasErrorLabel(...)`) handles them
 * too. Here and not in the addon because the constructors differ:
 * `MongoServerSelectionError` wants the topology's description, which the Rust driver
 * does not give, so it gets an empty one. A class the driver does not export is made
 * as a `MongoError` with the Rust driver's name. `undefined` without `mongodb`.
 */
function driverErrors (mongodb) {
  if (typeof mongodb?.MongoError !== 'function') return undefined
  return (name, message, labels) => {
    const Class = typeof mongodb[name] === 'function' ? mongodb[name] : mongodb.MongoError
    const error = name === 'MongoServerSelectionError'
      ? new Class(message, { type: 'Unknown', servers: new Map() })
      : new Class(message)
    if (error.name !== name) Object.defineProperty(error, 'name', { value: name, configurable: true, writable: true })
    for (const label of labels) error.addErrorLabel(label)
    return error
  }
}

module.exports = { LockError, driverErrors }
