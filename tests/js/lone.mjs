// Scenario "lone" of tests/tests/interop_js.rs: a stock client alone in its room for a while.
// It must stay on its first connection the whole time: y-websocket closes a connection on
// which it received nothing for 30 s, and a lone client hears only its own awareness, which
// the server echoes.
//
// node lone.mjs version=1|3 ws=ws://127.0.0.1:PORT/ws room=ID token=T name=N hold_ms=120000
//
// Events: `synced` once connected, then `report` after hold_ms.

import { connect, deadline, during, emit, finish, leave, settings, snapshot, synced } from './stock.mjs'

const args = settings(['version', 'ws', 'room', 'token', 'name', 'hold_ms'])
const hold = Number(args.hold_ms)
const { provider, seen } = await connect(args)
const stop = deadline(hold + 20_000, () => `seen ${JSON.stringify(seen)}`)

during('connecting and syncing')
await synced(provider)
emit('synced')

// Holding on is what is tested: the provider runs its own checks meanwhile.
during(`holding the connection for ${hold} ms`)
await new Promise((resolve) => setTimeout(resolve, hold))
const report = { ...snapshot(seen), connected: provider.wsconnected, synced: provider.synced }

during('leaving')
await leave(provider)
stop()
finish(report)
