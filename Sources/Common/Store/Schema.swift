import WarrenPostgres

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
        Migration(version: 4, name: "api_jobs: cancellation requests", sql: """
            -- Set by DELETE /v1/jobs/{id}. Consumers load the requests of jobs not yet finished
            -- at start and poll for new ones (besides the warren.control fanout), and skip or
            -- cancel those jobs.
            ALTER TABLE api_jobs ADD COLUMN cancel_requested_at timestamptz;
            CREATE INDEX api_jobs_cancel_idx ON api_jobs (cancel_requested_at) WHERE cancel_requested_at IS NOT NULL;
            """),
        Migration(version: 5, name: "api_batches: batches of jobs and their on_complete job", sql: """
            -- One row per POST /v1/batches. Its jobs are api_jobs rows with this batch_id.
            -- `completed_at` is set once every job is terminal, in the same statement that
            -- claims the on_complete job (so it is published once); `on_complete_published_at`
            -- once the broker confirmed it.
            CREATE TABLE api_batches (
                batch_id                 uuid        PRIMARY KEY,
                tenant                   text        NOT NULL,
                tier                     text        NOT NULL,
                total                    integer     NOT NULL,
                request_id               text,
                on_complete_type         text,
                on_complete_payload      text,
                on_complete_job_id       uuid,
                on_complete_published_at timestamptz,
                created_at               timestamptz NOT NULL DEFAULT now(),
                completed_at             timestamptz
            );
            CREATE INDEX api_batches_open_idx ON api_batches (created_at) WHERE completed_at IS NULL;
            CREATE INDEX api_batches_unpublished_idx ON api_batches (completed_at)
                WHERE on_complete_type IS NOT NULL AND on_complete_published_at IS NULL;
            ALTER TABLE api_jobs ADD COLUMN batch_id uuid;
            CREATE INDEX api_jobs_batch_idx ON api_jobs (batch_id) WHERE batch_id IS NOT NULL;
            """),
        Migration(version: 6, name: "schedules and schedule_fires: cron in time zones, one row per fire", sql: """
            -- A cron schedule: expression, IANA zone, the job it publishes, and the next fire
            -- (UTC), always computed from the previous scheduled fire.
            CREATE TABLE schedules (
                id               uuid        PRIMARY KEY,
                tenant           text        NOT NULL,
                name             text        NOT NULL,
                cron             text        NOT NULL,
                time_zone        text        NOT NULL,
                job_type         text        NOT NULL,
                tier             text        NOT NULL CHECK (tier IN ('enterprise', 'premium', 'free')),
                payload          text        NOT NULL DEFAULT '{}',
                enabled          boolean     NOT NULL DEFAULT true,
                catch_up_seconds integer     NOT NULL DEFAULT 86400 CHECK (catch_up_seconds >= 0),
                next_fire_at     timestamptz NOT NULL,
                created_at       timestamptz NOT NULL DEFAULT now(),
                updated_at       timestamptz NOT NULL DEFAULT now(),
                UNIQUE (tenant, name)
            );
            CREATE INDEX schedules_due_idx ON schedules (next_fire_at) WHERE enabled;
            -- One row per fire, written before its job is published: the primary key is the
            -- fire key, so two schedulers, a restart mid-fire or an overlap hour cannot make a
            -- second job for it. `skipped`: missed beyond the catch-up window.
            CREATE TABLE schedule_fires (
                schedule_id uuid        NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
                fire_at     timestamptz NOT NULL,
                local_time  text        NOT NULL,
                job_id      uuid,
                state       text        NOT NULL CHECK (state IN ('pending', 'published', 'skipped')),
                created_at  timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (schedule_id, fire_at)
            );
            CREATE INDEX schedule_fires_pending_idx ON schedule_fires (created_at) WHERE state = 'pending';
            """),
        Migration(version: 7, name: "delayed_jobs: jobs held until their run_at", sql: """
            -- A job accepted with run_at / delay_seconds, held here until it is due. The
            -- scheduler's leader claims due rows (FOR UPDATE SKIP LOCKED) and marks them
            -- `published` in the same transaction, after the broker's confirm; a crash before
            -- the commit leaves the row pending, to be published again under the same job id.
            -- enqueued_at is run_at: the job_runs partition of the day it runs.
            CREATE TABLE delayed_jobs (
                job_id          uuid        PRIMARY KEY,
                tenant          text,
                type            text        NOT NULL,
                tier            text        NOT NULL CHECK (tier IN ('enterprise', 'premium', 'free')),
                payload         text        NOT NULL,
                idempotency_key text,
                correlation_id  text,
                run_at          timestamptz NOT NULL,
                state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'published', 'cancelled')),
                created_at      timestamptz NOT NULL DEFAULT now(),
                published_at    timestamptz
            );
            CREATE INDEX delayed_jobs_due_idx ON delayed_jobs (run_at) WHERE state = 'pending';
            CREATE INDEX delayed_jobs_published_idx ON delayed_jobs (published_at) WHERE state <> 'pending';
            """),
        Migration(version: 8, name: "contacts and their yearly events, sent at a local time in each contact's zone", sql: """
            CREATE TABLE contacts (
                id          uuid        PRIMARY KEY,
                tenant      text        NOT NULL,
                tier        text        NOT NULL CHECK (tier IN ('enterprise', 'premium', 'free')),
                first_name  text        NOT NULL,
                last_name   text        NOT NULL,
                email       text        NOT NULL,
                birthday    date        NOT NULL,
                anniversary date,
                time_zone   text        NOT NULL,
                created_at  timestamptz NOT NULL DEFAULT now(),
                updated_at  timestamptz NOT NULL DEFAULT now()
            );
            CREATE INDEX contacts_tenant_idx ON contacts (tenant, id);
            -- One row per contact and kind of event (birthday, anniversary): the day of the
            -- year it falls on (month * 100 + day) and the contact's zone, so one zone's events
            -- on one local date are one index range, whatever the number of contacts.
            CREATE TABLE contact_events (
                contact_id uuid     NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
                kind       text     NOT NULL,
                time_zone  text     NOT NULL,
                month_day  smallint NOT NULL CHECK (month_day BETWEEN 101 AND 1231),
                PRIMARY KEY (contact_id, kind)
            );
            CREATE INDEX contact_events_due_idx ON contact_events (time_zone, kind, month_day);
            -- Per zone and kind: the last local date whose events were sent (or skipped, past
            -- the catch-up window). Writing a contact sets it back to the zone's yesterday at
            -- most, so today is looked at again (those sent today keep their fire keys).
            CREATE TABLE contact_cursors (
                time_zone    text NOT NULL,
                kind         text NOT NULL,
                done_through date,
                PRIMARY KEY (time_zone, kind)
            );
            -- One row per message, written before its job is published: the primary key is
            -- the fire key (contact, kind, local date). The job is kept so an unconfirmed
            -- publish is repeated with the same id.
            CREATE TABLE contact_fires (
                contact_id uuid        NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
                kind       text        NOT NULL,
                local_date date        NOT NULL,
                job_id     uuid        NOT NULL,
                tenant     text        NOT NULL,
                tier       text        NOT NULL,
                payload    text        NOT NULL,
                state      text        NOT NULL CHECK (state IN ('pending', 'published')),
                created_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (contact_id, kind, local_date)
            );
            CREATE INDEX contact_fires_pending_idx ON contact_fires (created_at) WHERE state = 'pending';
            CREATE INDEX contact_fires_created_idx ON contact_fires (created_at);
            """),
        Migration(version: 9, name: "delayed_jobs claims; contact cursor versions", sql: """
            -- A delayed job is claimed for a short lease (in its own short transaction), then
            -- published, then marked; a lease that runs out (the scheduler died, or the broker
            -- refused it: retried after a pause) makes the job claimable again, same job id.
            ALTER TABLE delayed_jobs ADD COLUMN claimed_until timestamptz;
            -- Bumped by every contact write that touches the cursor: the leader moves a cursor
            -- on only if no write came in while it was sending that date.
            ALTER TABLE contact_cursors ADD COLUMN version bigint NOT NULL DEFAULT 0;
            """),
        Migration(version: 10, name: "schedules disabled because they no longer evaluate", sql: """
            -- A due schedule whose expression or zone no longer evaluates (a zone removed by a
            -- tzdata update, a bad stored expression, no next fire) is disabled by the leader
            -- with the error, so it never holds up the others; writing the schedule again
            -- clears both.
            ALTER TABLE schedules ADD COLUMN disabled_reason text, ADD COLUMN disabled_at timestamptz;
            CREATE INDEX schedules_disabled_idx ON schedules (disabled_at) WHERE disabled_reason IS NOT NULL;
            """),
        Migration(version: 11, name: "retention horizon; api_jobs and api_batches pruned with job_runs", sql: """
            -- One row: the instant before which job history is gone (job_runs partitions dropped
            -- after WARREN_RETENTION_DAYS, api_jobs and api_batches pruned with them). Moved
            -- forward by the leader's upkeep before it prunes, never back; a job enqueued before
            -- it reads 404 and its cancellation request is no longer loaded by consumers.
            CREATE TABLE retention_horizon (
                singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
                horizon    timestamptz NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now()
            );
            CREATE INDEX api_batches_created_idx ON api_batches (created_at);
            """),
        Migration(version: 12, name: "job_runs.seq: one lineage per job", sql: """
            -- The place in its job's lineage of the message this row speaks for: 0 as published,
            -- +1 at every retry or deferral (the x-warren-seq header). A `retrying` row holds the
            -- seq of the message already republished, so an older delivery of the same job
            -- (its ack lost with a connection) finds itself superseded and does not run.
            ALTER TABLE job_runs ADD COLUMN seq integer NOT NULL DEFAULT 0;
            """),
        Migration(version: 13, name: "job_cancellations: cancellation requests in a table of their own", sql: """
            -- One row per job asked to cancel (DELETE /v1/jobs/{id}), written in the transaction
            -- that writes the job's `cancelled` row when it has not started. Consumers load the
            -- open ones of their tier at start (tier, requested_at) and poll for new ones. Pruned
            -- by the leader's upkeep with the job's history (enqueued_at before the horizon).
            CREATE TABLE job_cancellations (
                job_id       uuid        PRIMARY KEY,
                enqueued_at  timestamptz NOT NULL,
                tier         text        NOT NULL,
                tenant       text,
                requested_at timestamptz NOT NULL DEFAULT now()
            );
            CREATE INDEX job_cancellations_tier_idx ON job_cancellations (tier, requested_at);
            CREATE INDEX job_cancellations_enqueued_idx ON job_cancellations (enqueued_at);
            INSERT INTO job_cancellations (job_id, enqueued_at, tier, tenant, requested_at)
                SELECT job_id, enqueued_at, tier, tenant, cancel_requested_at FROM api_jobs
                WHERE cancel_requested_at IS NOT NULL;
            DROP INDEX api_jobs_cancel_idx;
            ALTER TABLE api_jobs DROP COLUMN cancel_requested_at;
            """),
        Migration(version: 14, name: "one outbox: cron fires, contact fires and on_complete jobs go through delayed_jobs", sql: """
            -- Every job Warren publishes on someone's behalf is entered in delayed_jobs (the
            -- outbox) in the transaction that decided it; its writer publishes it and marks it,
            -- and the leader's dispatcher publishes what was left unconfirmed once its lease ends.
            -- A fire row is now `fired` (its job is in the outbox); the fires and on_complete
            -- jobs still waiting for a confirm move into the outbox, due at once.
            ALTER TABLE schedule_fires DROP CONSTRAINT schedule_fires_state_check,
                ADD CONSTRAINT schedule_fires_state_check CHECK (state IN ('pending', 'published', 'skipped', 'fired'));
            ALTER TABLE contact_fires DROP CONSTRAINT contact_fires_state_check,
                ADD CONSTRAINT contact_fires_state_check CHECK (state IN ('pending', 'published', 'fired'));
            INSERT INTO delayed_jobs (job_id, tenant, type, tier, payload, idempotency_key, run_at)
                SELECT f.job_id, s.tenant, s.job_type, s.tier, s.payload,
                       'schedule:' || f.schedule_id::text || ':' || f.local_time, f.created_at
                FROM schedule_fires f JOIN schedules s ON s.id = f.schedule_id
                WHERE f.state = 'pending' AND f.job_id IS NOT NULL
                ON CONFLICT (job_id) DO NOTHING;
            UPDATE schedule_fires SET state = 'fired' WHERE state = 'pending';
            INSERT INTO delayed_jobs (job_id, tenant, type, tier, payload, idempotency_key, run_at)
                SELECT job_id, tenant, 'message.send', tier, payload,
                       'contact:' || contact_id::text || ':' || kind || ':' || to_char(local_date, 'YYYY-MM-DD'), created_at
                FROM contact_fires WHERE state = 'pending'
                ON CONFLICT (job_id) DO NOTHING;
            UPDATE contact_fires SET state = 'fired' WHERE state = 'pending';
            INSERT INTO delayed_jobs (job_id, tenant, type, tier, payload, idempotency_key, correlation_id, run_at)
                SELECT a.job_id, a.tenant, a.type, a.tier, coalesce(b.on_complete_payload, '{}'), a.idempotency_key,
                       a.request_id, a.enqueued_at
                FROM api_batches b JOIN api_jobs a ON a.job_id = b.on_complete_job_id
                WHERE b.on_complete_published_at IS NULL
                ON CONFLICT (job_id) DO NOTHING;
            DROP INDEX schedule_fires_pending_idx;
            DROP INDEX contact_fires_pending_idx;
            """),
        Migration(version: 15, name: "rate_buckets: token buckets shared by every producer", sql: """
            -- One row per bucket (an API token's intake limit): tokens left as of updated_at, and
            -- what the last take granted (returned by the same statement). Replicas lease a few
            -- tokens at a time (SharedRateLimiter).
            CREATE TABLE rate_buckets (
                key text PRIMARY KEY,
                tokens double precision NOT NULL,
                granted double precision NOT NULL DEFAULT 0,
                updated_at timestamptz NOT NULL
            );
            """),
        Migration(version: 16, name: "concurrency_leases: per-key concurrency across every consumer", sql: """
            -- A job with a concurrency key runs only while it holds one of its key's `limit`
            -- slots (ConcurrencyLeases). A slot is taken by insert, or by update once its lease
            -- expired (a crashed holder); its holder refreshes expires_at while the job runs.
            CREATE TABLE concurrency_leases (
                key text NOT NULL,
                slot integer NOT NULL,
                job_id uuid NOT NULL,
                holder text NOT NULL,
                expires_at timestamptz NOT NULL,
                PRIMARY KEY (key, slot)
            );
            CREATE INDEX concurrency_leases_holder_idx ON concurrency_leases (holder);
            -- Delayed and outbox jobs keep their key until published.
            ALTER TABLE delayed_jobs ADD COLUMN concurrency_key text, ADD COLUMN concurrency_limit integer;
            """),
        Migration(version: 17, name: "unique_keys: one unfinished job per concurrency key, for unique: running", sql: """
            -- POST /v1/jobs with "unique": "running" records its concurrency key here, in the
            -- commit that accepts the job; a second such job of the key is refused (409 key_busy)
            -- while this row's job is unfinished (scheduled, queued, running or retrying), and
            -- takes the row over once it has finished. A job gone from api_jobs (its publish
            -- refused, or pruned) frees its key with it.
            CREATE TABLE unique_keys (
                key        text        PRIMARY KEY,
                job_id     uuid        NOT NULL REFERENCES api_jobs (job_id) ON DELETE CASCADE,
                created_at timestamptz NOT NULL DEFAULT now()
            );
            CREATE INDEX unique_keys_job_idx ON unique_keys (job_id);
            """),
        Migration(version: 18, name: "job_progress: what running jobs reported, and their heartbeats", sql: """
            -- The latest progress report of a job (done of total, a message) and its last sign of
            -- life. Written by the worker running it, a batch of jobs about once a second (the
            -- latest report of each wins), never in the path of a job's start or result; read by
            -- GET /v1/jobs/{id} (progress, stalled) and summed by GET /v1/batches/{id}. Pruned
            -- with the job's history (enqueued_at before the retention horizon).
            CREATE TABLE job_progress (
                job_id       uuid        PRIMARY KEY,
                enqueued_at  timestamptz NOT NULL,
                attempt      integer     NOT NULL,
                done         bigint,
                total        bigint,
                message      text,
                reported_at  timestamptz,
                heartbeat_at timestamptz NOT NULL
            );
            CREATE INDEX job_progress_enqueued_idx ON job_progress (enqueued_at);
            """),
        Migration(version: 19, name: "dead_letters: what reached warren.jobs.dead, to list, replay or discard", sql: """
            -- One row per message taken off warren.jobs.dead by a scheduler's dead-letter keeper
            -- (inserted, committed, then acked: a copy seen twice is one row, by (job_id, seq)).
            -- A message that is no job (malformed) keeps its body and headers, job_id NULL
            -- unless it had one, and cannot be replayed. Replay and discard change `state`; a
            -- replay enters the job in the outbox (delayed_jobs) in the same transaction.
            CREATE TABLE dead_letters (
                id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                job_id      uuid,
                enqueued_at timestamptz,
                seq         integer,
                attempt     integer,
                type        text,
                tier        text,
                tenant      text,
                correlation_id text,
                reason      text        NOT NULL,
                error       text,
                payload     text        NOT NULL,
                headers     jsonb       NOT NULL DEFAULT '{}',
                replayable  boolean     NOT NULL,
                dead_at     timestamptz NOT NULL DEFAULT now(),
                state       text        NOT NULL DEFAULT 'dead' CHECK (state IN ('dead', 'replayed', 'discarded')),
                settled_at  timestamptz,
                settled_by  text,
                UNIQUE (job_id, seq)
            );
            CREATE INDEX dead_letters_open_idx ON dead_letters (state, id);
            CREATE INDEX dead_letters_tenant_idx ON dead_letters (tenant, id);
            CREATE INDEX dead_letters_dead_at_idx ON dead_letters (dead_at);
            -- The outbox publishes a replay as the next message of its job's lineage.
            ALTER TABLE delayed_jobs ADD COLUMN seq integer NOT NULL DEFAULT 0, ADD COLUMN attempt integer NOT NULL DEFAULT 1;
            -- A replay is an event in its job's history.
            ALTER TABLE message_logs DROP CONSTRAINT message_logs_event_check,
                ADD CONSTRAINT message_logs_event_check CHECK (event IN
                  ('published', 'started', 'retried', 'succeeded', 'failed', 'dead_lettered', 'cancelled', 'duplicate', 'replayed'));
            """),
        Migration(version: 20, name: "console_sessions: who is signed in to the web console", sql: """
            -- One row per console sign-in (ConsoleSessionStore): the SHA-256 of the cookie's
            -- secret (never the secret), the token that signed in (its revocation or expiry ends
            -- the session at once), the session's CSRF token, and when it ends. Signing out
            -- deletes the row; expired rows are deleted by the next sign-in.
            CREATE TABLE console_sessions (
                id_hash    bytea       PRIMARY KEY,
                token_id   uuid        NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
                csrf       text        NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                expires_at timestamptz NOT NULL
            );
            CREATE INDEX console_sessions_expires_idx ON console_sessions (expires_at);
            """),
        Migration(version: 21, name: "job_runs.payload: the message of a job that did not simply succeed", sql: """
            -- The payload and the headers Warren adds (attempt, concurrency key and limit,
            -- traceparent) of the message a row speaks for, kept when the job did not succeed at
            -- its first try (retrying, failed, dead, cancelled while running; every job with
            -- WARREN_KEEP_PAYLOADS=all): the console shows it, and "retry now" republishes a
            -- job waiting between retries from it (JobRunStore.retryNow). Nullable, no default:
            -- adding it rewrites nothing.
            ALTER TABLE job_runs ADD COLUMN payload text, ADD COLUMN headers jsonb;
            -- "Retry now" is an event in its job's history.
            ALTER TABLE message_logs DROP CONSTRAINT message_logs_event_check,
                ADD CONSTRAINT message_logs_event_check CHECK (event IN
                  ('published', 'started', 'retried', 'succeeded', 'failed', 'dead_lettered', 'cancelled', 'duplicate', 'replayed',
                   'retried_now'));
            """),
    ]
}
