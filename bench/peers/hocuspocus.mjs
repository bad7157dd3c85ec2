// Hocuspocus (@hocuspocus/server, pinned in package.json), as balint-bench runs it: in memory,
// no extensions (no persistence, no auth hook), its defaults otherwise. HOST and PORT as for
// the y-websocket servers.
import { Server } from '@hocuspocus/server'

const port = Number.parseInt(process.env.PORT ?? '1234', 10)
const address = process.env.HOST ?? '127.0.0.1'
const server = new Server({ port, address, quiet: true })
await server.listen()
console.log(`hocuspocus is running on http://${address}:${server.address.port}`)
