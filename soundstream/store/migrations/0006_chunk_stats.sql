-- Per scalar feature, each chunk row carries the partial aggregates of its frames:
-- the float8 sum and the real min and max, as PostgreSQL computes them over the
-- arrays. The pool worker computes them with the row (store/pgcopy.py). A downsampled
-- read takes a chunk whose frames all lie in one bucket from these instead of
-- unnesting its arrays (store/downsample.py). They are NULL in rows written without
-- them (by a replica older than this migration, during a rolling upgrade), and a
-- read then falls back to the arrays.

ALTER TABLE chunk_frames
    ADD COLUMN rms_sum         float8, ADD COLUMN rms_min         real, ADD COLUMN rms_max         real,
    ADD COLUMN zcr_sum         float8, ADD COLUMN zcr_min         real, ADD COLUMN zcr_max         real,
    ADD COLUMN centroid_sum    float8, ADD COLUMN centroid_min    real, ADD COLUMN centroid_max    real,
    ADD COLUMN bandwidth_sum   float8, ADD COLUMN bandwidth_min   real, ADD COLUMN bandwidth_max   real,
    ADD COLUMN rolloff_sum     float8, ADD COLUMN rolloff_min     real, ADD COLUMN rolloff_max     real,
    ADD COLUMN flatness_sum    float8, ADD COLUMN flatness_min    real, ADD COLUMN flatness_max    real,
    ADD COLUMN dominant_hz_sum float8, ADD COLUMN dominant_hz_min real, ADD COLUMN dominant_hz_max real;

-- The primary key's index comes back below holding what a downsampled read needs of
-- a chunk besides its key (where its frames end, how many, the partials): a long
-- range at a coarse resolution is then an index-only scan of about 200 bytes a chunk
-- instead of a scan of the 1.6 KB rows (their inline arrays). One index, not a second
-- one beside the key: a chunk's insert updates one. Dropped while the rows are
-- filled, so that the fill adds no index entries only to rebuild them.
ALTER TABLE chunk_frames DROP CONSTRAINT chunk_frames_pkey;

-- Unnested in array order, as the worker adds the frames (sums in another order may
-- round otherwise). Every row is rewritten while writers wait, about 50 us a row
-- (130 s for a month of one sensor at a chunk a second, 2.68 M rows), and the days
-- migrated keep the old versions' room once vacuumed: their heap about twice as
-- large (the arrays stored out of line are not copied) until VACUUM FULL.
UPDATE chunk_frames c SET (
    rms_sum, rms_min, rms_max,
    zcr_sum, zcr_min, zcr_max,
    centroid_sum, centroid_min, centroid_max,
    bandwidth_sum, bandwidth_min, bandwidth_max,
    rolloff_sum, rolloff_min, rolloff_max,
    flatness_sum, flatness_min, flatness_max,
    dominant_hz_sum, dominant_hz_min, dominant_hz_max
) = (
    SELECT
    sum(f.rms::float8), min(f.rms), max(f.rms),
    sum(f.zcr::float8), min(f.zcr), max(f.zcr),
    sum(f.centroid::float8), min(f.centroid), max(f.centroid),
    sum(f.bandwidth::float8), min(f.bandwidth), max(f.bandwidth),
    sum(f.rolloff::float8), min(f.rolloff), max(f.rolloff),
    sum(f.flatness::float8), min(f.flatness), max(f.flatness),
    sum(f.dominant_hz::float8), min(f.dominant_hz), max(f.dominant_hz)
    FROM unnest(c.rms, c.zcr, c.centroid, c.bandwidth, c.rolloff, c.flatness, c.dominant_hz)
         AS f(rms, zcr, centroid, bandwidth, rolloff, flatness, dominant_hz)
);

ALTER TABLE chunk_frames ADD PRIMARY KEY (sensor_id, start_ts, seq) INCLUDE (
    last_ts, n_frames,
    rms_sum, rms_min, rms_max,
    zcr_sum, zcr_min, zcr_max,
    centroid_sum, centroid_min, centroid_max,
    bandwidth_sum, bandwidth_min, bandwidth_max,
    rolloff_sum, rolloff_min, rolloff_max,
    flatness_sum, flatness_min, flatness_max,
    dominant_hz_sum, dominant_hz_min, dominant_hz_max
);
