-- Balint Room's durable board store: persistent rooms only; nothing of an ephemeral room
-- is ever written here. Applied once, in order, recorded in `balint_migrations`, in the
-- schema the connection uses first (its `search_path`): by the server at start-up, or by
-- deploy/postgres-init.sh as the schema's owner (the nodes' role then only reads and writes
-- the rows).

-- A persistent room: its settings (the JSON the server wrote) and its whole board, compacted
-- into one Yjs v1 update, replaced whole at every save.
CREATE TABLE balint_boards (
    room text PRIMARY KEY CHECK (room ~ '^[A-Za-z0-9]{1,64}$'),
    settings bytea NOT NULL,
    board bytea NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now()
);

-- The tombstones of deleted rooms: the id only. A deleted room stays deleted: its links
-- answer "ended", and a late save from another node cannot bring its board back.
CREATE TABLE balint_deleted_rooms (
    room text PRIMARY KEY CHECK (room ~ '^[A-Za-z0-9]{1,64}$'),
    deleted_at timestamptz NOT NULL DEFAULT now()
);
