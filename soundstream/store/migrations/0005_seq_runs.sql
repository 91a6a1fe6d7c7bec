-- The seqs each sensor's chunks arrived with, kept as runs of consecutive seqs, so
-- that a sensor's missing seqs are read from its first runs instead of from every
-- chunk it ever sent. Fed like the summary: every statement that adds chunks
-- appends its runs to `seq_run_deltas` (a trigger, so any writer feeds it, and
-- replicas writing one sensor never wait on a row), and upkeep folds them into
-- `seq_runs` under the fold lock. Existing chunks are carried over.

-- Maximal runs: per sensor, disjoint and never adjacent (the fold merges a run into
-- those it overlaps or touches). Seqs that retention removed go (at or below the
-- sensor's expired_through_seq).
CREATE TABLE seq_runs (
    sensor_id text   NOT NULL,
    first_seq bigint NOT NULL,
    last_seq  bigint NOT NULL,
    PRIMARY KEY (sensor_id, first_seq),
    CHECK (first_seq <= last_seq)
);

-- Runs of the chunks added since the last fold: append-only, one row per run of
-- each statement that inserted chunks; runs of different statements may overlap.
CREATE TABLE seq_run_deltas (
    sensor_id text   NOT NULL,
    first_seq bigint NOT NULL,
    last_seq  bigint NOT NULL
);

-- The transition table holds only the rows the statement inserted: chunks that an
-- `ON CONFLICT DO NOTHING` skipped (redelivered ones) add no run.
CREATE FUNCTION chunks_seq_runs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO seq_run_deltas (sensor_id, first_seq, last_seq)
    SELECT sensor_id, min(seq), max(seq)
    FROM (
        SELECT sensor_id, seq, seq - row_number() OVER (PARTITION BY sensor_id ORDER BY seq) AS run
        FROM added
    ) AS numbered
    GROUP BY sensor_id, run;
    RETURN NULL;
END
$$;

-- Created before the carry-over below: it locks out writers of `chunks` until this
-- migration commits, so every chunk is either carried over or fed by the trigger.
CREATE TRIGGER chunks_seq_runs
AFTER INSERT ON chunks
REFERENCING NEW TABLE AS added
FOR EACH STATEMENT EXECUTE FUNCTION chunks_seq_runs();

-- Gaps and islands: within a run, seq - row_number() is constant.
INSERT INTO seq_runs (sensor_id, first_seq, last_seq)
SELECT sensor_id, min(seq), max(seq)
FROM (
    SELECT sensor_id, seq, seq - row_number() OVER (PARTITION BY sensor_id ORDER BY seq) AS run
    FROM chunks
) AS numbered
GROUP BY sensor_id, run;
