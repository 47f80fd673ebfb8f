// Preloaded into the js-ipfs daemon by scripts/ipfs-daemon.sh (NODE_OPTIONS=--require ...).
//
// ipfs/src/cli.js registers `process.once('unhandledRejection', err => process.exit(1))`.
// js-ipfs 0.66.1 leaks rejected promises in some request paths, e.g. a
// `cat?timeout=1s` of a file whose second block is missing: the HTTP request
// gets its 500 "request timed out", then a parallel bitswap want rejects with
// "Want for <cid> aborted" that nobody awaits, and the whole daemon exits.
// A test daemon must survive that, so log such rejections instead of exiting.
// Set IPFS_DAEMON_KEEPALIVE=0 in scripts/ipfs-daemon.sh's environment to disable.
'use strict'

const onRejection = (err) => {
  console.error('[ipfs-daemon.sh keep-alive] ignored unhandled rejection:', err)
}

const origOnce = process.once
process.once = function once (event, listener) {
  if (event === 'unhandledRejection') {
    // Replace the CLI's exit-on-rejection handler with a logging one.
    return process.on('unhandledRejection', onRejection)
  }
  return origOnce.call(this, event, listener)
}
