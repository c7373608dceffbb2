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

module.exports = { LockError }
