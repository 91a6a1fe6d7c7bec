-- Frames are stored one row per chunk, each feature an array over the chunk's
-- frames, in a table partitioned by day; `frames` becomes a view with one row per
-- frame. The per-sensor summary is fed by append-only deltas, so that replicas
-- writing the same sensor never wait on one row. Existing data is carried over.

-- Where a chunk's frames lie, for finding the chunks of a time range.
ALTER TABLE chunks ADD COLUMN first_ts timestamptz, ADD COLUMN last_ts timestamptz;
CREATE INDEX chunks_start_ts ON chunks (start_ts);

-- One row per chunk that has frames. `ts` holds each frame's exact time; the scalar
-- features are one value per frame; `mel` and `mfcc` hold the frames' vectors one
-- after the other (n_frames * n_mels values).
CREATE TABLE chunk_frames (
    sensor_id   text          NOT NULL,
    start_ts    timestamptz   NOT NULL,  -- the first frame's time: the partition key
    seq         bigint        NOT NULL,
    last_ts     timestamptz   NOT NULL,
    received_at timestamptz   NOT NULL,
    n_frames    integer       NOT NULL,
    ts          timestamptz[] NOT NULL,
    rms         real[]        NOT NULL,
    zcr         real[]        NOT NULL,
    centroid    real[]        NOT NULL,
    bandwidth   real[]        NOT NULL,
    rolloff     real[]        NOT NULL,
    flatness    real[]        NOT NULL,
    dominant_hz real[]        NOT NULL,
    mel         real[]        NOT NULL,
    mfcc        real[]        NOT NULL,
    PRIMARY KEY (sensor_id, start_ts, seq)
) PARTITION BY RANGE (start_ts);

-- Times outside every day partition (a sensor whose clock is far off) land here.
CREATE TABLE chunk_frames_default PARTITION OF chunk_frames DEFAULT;

-- The longest time from a chunk's first frame to its last, ever stored: a range
-- read looks back this far for chunks that started before the range. It only
-- grows, and is written only when it does.
CREATE TABLE frame_span (
    only_row boolean  PRIMARY KEY DEFAULT true CHECK (only_row),
    longest  interval NOT NULL
);
INSERT INTO frame_span VALUES (true, interval '0');

-- What each committed batch adds to a sensor's summary; folded into `sensors`
-- every few seconds by one replica at a time.
CREATE TABLE sensor_deltas (
    sensor_id        text        NOT NULL,
    first_ts         timestamptz,
    last_ts          timestamptz,
    chunks           bigint      NOT NULL,
    frames           bigint      NOT NULL,
    last_seq         bigint      NOT NULL,
    last_received_at timestamptz NOT NULL
);

-- Seqs at or below this were removed by retention: not reported missing.
ALTER TABLE sensors ADD COLUMN expired_through_seq bigint;

-- Day partitions for the data already stored (the service creates the days ahead).
DO $$
DECLARE
    day date;
BEGIN
    FOR day IN
        SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM frames
        WHERE ts > now() - interval '10 years' AND ts < now() + interval '2 days'
    LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF chunk_frames FOR VALUES FROM (%L) TO (%L)',
            'chunk_frames_' || to_char(day, 'YYYYMMDD'),
            day::timestamp AT TIME ZONE 'UTC',
            (day + 1)::timestamp AT TIME ZONE 'UTC'
        );
    END LOOP;
END $$;

-- Arrays joined end to end (array_agg of arrays would make them two-dimensional).
CREATE AGGREGATE array_concat_agg(anycompatiblearray) (
    SFUNC = array_cat, STYPE = anycompatiblearray, INITCOND = '{}'
);

INSERT INTO chunk_frames
SELECT f.sensor_id, min(f.ts), f.seq, max(f.ts), c.received_at, count(*),
       array_agg(f.ts ORDER BY f.ts),
       array_agg(f.rms ORDER BY f.ts), array_agg(f.zcr ORDER BY f.ts),
       array_agg(f.centroid ORDER BY f.ts), array_agg(f.bandwidth ORDER BY f.ts),
       array_agg(f.rolloff ORDER BY f.ts), array_agg(f.flatness ORDER BY f.ts),
       array_agg(f.dominant_hz ORDER BY f.ts),
       array_concat_agg(f.mel ORDER BY f.ts), array_concat_agg(f.mfcc ORDER BY f.ts)
FROM frames f JOIN chunks c USING (sensor_id, seq)
GROUP BY f.sensor_id, f.seq, c.received_at;

UPDATE chunks c SET first_ts = cf.start_ts, last_ts = cf.last_ts
FROM chunk_frames cf WHERE cf.sensor_id = c.sensor_id AND cf.seq = c.seq;

UPDATE frame_span SET longest = coalesce(
    (SELECT max(last_ts - start_ts) FROM chunk_frames), interval '0');

DROP TABLE frames;

-- The frames of one chunk row, one row each, in time order.
CREATE FUNCTION chunk_frame_rows(c chunk_frames)
RETURNS TABLE (
    ts timestamptz, rms real, zcr real, centroid real, bandwidth real, rolloff real,
    flatness real, dominant_hz real, mel real[], mfcc real[]
)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT f.ts, f.rms, f.zcr, f.centroid, f.bandwidth, f.rolloff, f.flatness, f.dominant_hz,
           c.mel[(f.i - 1) * (cardinality(c.mel) / c.n_frames) + 1
                 : f.i * (cardinality(c.mel) / c.n_frames)],
           c.mfcc[(f.i - 1) * (cardinality(c.mfcc) / c.n_frames) + 1
                  : f.i * (cardinality(c.mfcc) / c.n_frames)]
    FROM unnest(c.ts, c.rms, c.zcr, c.centroid, c.bandwidth, c.rolloff, c.flatness,
                c.dominant_hz) WITH ORDINALITY
         AS f(ts, rms, zcr, centroid, bandwidth, rolloff, flatness, dominant_hz, i)
$$;

-- One row per frame, keyed by (sensor_id, ts): where two chunks of a sensor hold
-- the same instant, the one received first counts.
CREATE VIEW frames AS
SELECT DISTINCT ON (c.sensor_id, f.ts)
       c.sensor_id, f.ts, c.seq, f.rms, f.zcr, f.centroid, f.bandwidth, f.rolloff,
       f.flatness, f.dominant_hz, f.mel, f.mfcc
FROM chunk_frames c, chunk_frame_rows(c) f
ORDER BY c.sensor_id, f.ts, c.received_at, c.seq;

-- The frames of one sensor in [range_start, range_end), through the chunk index:
-- what `frames` gives with those conditions, without reading the sensor's other
-- chunks.
CREATE FUNCTION sensor_frames(sensor text, range_start timestamptz, range_end timestamptz)
RETURNS SETOF frames
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT ON (f.ts)
           c.sensor_id, f.ts, c.seq, f.rms, f.zcr, f.centroid, f.bandwidth, f.rolloff,
           f.flatness, f.dominant_hz, f.mel, f.mfcc
    FROM chunk_frames c, chunk_frame_rows(c) f
    WHERE c.sensor_id = sensor
      AND c.start_ts < range_end
      AND c.start_ts >= range_start - (SELECT longest FROM frame_span)
      AND c.last_ts >= range_start
      AND f.ts >= range_start AND f.ts < range_end
    ORDER BY f.ts, c.received_at, c.seq
$$;
