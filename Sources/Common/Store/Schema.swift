/// Warren's database schema, as ordered migrations. Append new ones; never edit a shipped one.
package enum Schema {
    package static let migrations: [Migration] = [
        Migration(version: 1, name: "job_runs and message_logs, partitioned by day", sql: """
            -- One row per job. Keyed by (job_id, enqueued_at): a unique key on a partitioned
            -- table must hold the partition key, and enqueued_at comes from the envelope, so
            -- every redelivery of a job lands on the same row.
            CREATE TABLE job_runs (
                job_id          uuid        NOT NULL,
                enqueued_at     timestamptz NOT NULL,
                type            text        NOT NULL,
                tier            text        NOT NULL CHECK (tier IN ('enterprise', 'premium', 'free')),
                tenant          text,
                idempotency_key text,
                correlation_id  text,
                status          text        NOT NULL CHECK (status IN
                                  ('queued', 'running', 'retrying', 'succeeded', 'failed', 'dead', 'cancelled')),
                attempts        integer     NOT NULL DEFAULT 0,
                result          jsonb,
                error           text,
                consumer_id     text,
                batch_id        uuid,
                started_at      timestamptz,
                finished_at     timestamptz,
                updated_at      timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (job_id, enqueued_at)
            ) PARTITION BY RANGE (enqueued_at);
            CREATE INDEX job_runs_status_idx ON job_runs (status, enqueued_at);
            CREATE INDEX job_runs_batch_idx ON job_runs (batch_id) WHERE batch_id IS NOT NULL;

            -- One row per event in a job's life, partitioned by the event's time.
            CREATE TABLE message_logs (
                id          bigint      GENERATED ALWAYS AS IDENTITY,
                logged_at   timestamptz NOT NULL DEFAULT now(),
                job_id      uuid        NOT NULL,
                enqueued_at timestamptz NOT NULL,
                event       text        NOT NULL CHECK (event IN
                              ('published', 'started', 'retried', 'succeeded', 'failed', 'dead_lettered',
                               'cancelled', 'duplicate')),
                attempt     integer,
                tier        text,
                detail      jsonb,
                PRIMARY KEY (id, logged_at)
            ) PARTITION BY RANGE (logged_at);
            CREATE INDEX message_logs_job_idx ON message_logs (job_id, logged_at);
            """),
        Migration(version: 2, name: "api_tokens", sql: """
            -- Bearer tokens for the HTTP API. Only a SHA-256 of each token is stored; the token
            -- itself is shown once, when it is created. `prefix` (its first characters) lets
            -- people tell tokens apart in listings.
            CREATE TABLE api_tokens (
                id          uuid        PRIMARY KEY,
                prefix      text        NOT NULL,
                token_hash  bytea       NOT NULL UNIQUE,
                tenant      text        NOT NULL,
                tier        text        NOT NULL CHECK (tier IN ('enterprise', 'premium', 'free')),
                scopes      text[]      NOT NULL,
                created_at  timestamptz NOT NULL DEFAULT now(),
                expires_at  timestamptz,
                revoked_at  timestamptz
            );
            """),
        Migration(version: 3, name: "api_jobs: jobs accepted over HTTP, idempotency keys", sql: """
            -- One row per job accepted through the HTTP API: who sent it (for status and
            -- tenant isolation) and its idempotency key. `state` is 'pending' from the claim
            -- until the broker confirmed the publish.
            CREATE TABLE api_jobs (
                job_id          uuid        PRIMARY KEY,
                tenant          text        NOT NULL,
                type            text        NOT NULL,
                tier            text        NOT NULL,
                enqueued_at     timestamptz NOT NULL,
                idempotency_key text,
                request_id      text,
                state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'published')),
                created_at      timestamptz NOT NULL DEFAULT now()
            );
            CREATE UNIQUE INDEX api_jobs_idempotency_idx ON api_jobs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
            CREATE INDEX api_jobs_created_idx ON api_jobs (created_at);
            """),
    ]
}
