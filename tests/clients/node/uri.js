// node-postgres given a connection URI exactly as pgwake prints it, for
// tests/integration/test_printed_uris.py.
//
// Usage: node uri.js '<uri>'. Connects with `connectionString` alone and prints one JSON
// object, {"user": current_user, "database": current_database()}.
'use strict'

const { Client } = require('pg')

async function main () {
  const client = new Client({ connectionString: process.argv[2] })
  await client.connect()
  try {
    const result = await client.query(
      'select current_user as user, current_database() as database'
    )
    console.log(JSON.stringify(result.rows[0]))
  } finally {
    await client.end()
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
