// An application's flow with the JS kubo-rpc-client, unmodified, against an API
// address given as the first argument: add → pin add → pin ls → pin rm → pin ls.
import { create } from 'kubo-rpc-client'

const api = process.argv[2]
const ipfs = create({ url: api })
const fail = (msg) => { console.error(`FAIL: ${msg}`); process.exit(1) }

const { cid } = await ipfs.add(`kubo-rpc-client flow ${Date.now()}\n`, { pin: false })
const pinned = await ipfs.pin.add(cid)
if (pinned.toString() !== cid.toString()) fail(`pin.add returned ${pinned}`)
let found = false
for await (const p of ipfs.pin.ls({ type: 'recursive' })) {
  if (p.cid.toString() === cid.toString()) found = true
}
if (!found) fail('pinned CID not listed')
for await (const p of ipfs.pin.ls({ paths: [cid] })) {
  if (p.type !== 'recursive') fail(`pin.ls by path says ${p.type}`)
}
const removed = await ipfs.pin.rm(cid)
if (removed.toString() !== cid.toString()) fail(`pin.rm returned ${removed}`)
for await (const p of ipfs.pin.ls({ type: 'recursive' })) {
  if (p.cid.toString() === cid.toString()) fail('unpinned CID still listed')
}
try {
  await ipfs.pin.rm(cid)
  fail('a second pin.rm succeeded')
} catch (e) {
  if (!/not pinned/.test(e.message)) fail(`second pin.rm: ${e.message}`)
}
console.log(`ok ${cid}`)
