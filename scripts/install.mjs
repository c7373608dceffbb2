// Installs the npm packages when node_modules is missing or older than the lock file,
// so that `npm test` and `npm start` work on a fresh clone.
import { ensureNodeModules } from './tools.mjs'

ensureNodeModules()
