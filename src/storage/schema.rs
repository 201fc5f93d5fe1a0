// The same tables on both back ends; see `migrations/sqlite` and
// `migrations/postgres`. Only types that diesel's multi-backend connection
// maps on both sides appear here: JSON and UUIDs are TEXT.

diesel::table! {
    records (collection, id) {
        collection -> Text,
        id -> Text,
        version -> BigInt,
        data -> Text,
        deleted -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        created_by -> Text,
        updated_by -> Text,
    }
}

diesel::table! {
    revisions (collection, record_id, version) {
        collection -> Text,
        record_id -> Text,
        version -> BigInt,
        operation -> Text,
        data -> Text,
        changed_fields -> Text,
        principal -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    changes (seq) {
        seq -> BigInt,
        txid -> BigInt,
        collection -> Text,
        record_id -> Text,
        version -> BigInt,
        operation -> Text,
        principal -> Text,
        changed_at -> Timestamp,
        detail -> Nullable<Text>,
    }
}

diesel::table! {
    idempotency_keys (principal, idempotency_key) {
        principal -> Text,
        idempotency_key -> Text,
        request_hash -> Text,
        completed -> Bool,
        collection -> Text,
        record_id -> Nullable<Text>,
        response_body -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    feed_horizon (id) {
        id -> Integer,
        txid -> BigInt,
        seq -> BigInt,
    }
}

diesel::table! {
    leases (collection, record_id) {
        collection -> Text,
        record_id -> Text,
        token_sha256 -> Text,
        holder -> Text,
        acquired_at -> Timestamp,
        expires_at -> Timestamp,
    }
}

diesel::allow_tables_to_appear_in_same_query!(records, revisions, changes, idempotency_keys, feed_horizon, leases);
