-- One row per received chunk, one per frame, and a running summary per sensor
-- so that listing sensors never scans the frames.

CREATE TABLE chunks (
    sensor_id   text        NOT NULL,
    seq         bigint      NOT NULL,
    start_ts    timestamptz NOT NULL,
    sample_rate integer     NOT NULL,
    n_samples   integer     NOT NULL,
    n_frames    integer     NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (sensor_id, seq)
);

CREATE TABLE frames (
    sensor_id   text        NOT NULL,
    ts          timestamptz NOT NULL,
    seq         bigint      NOT NULL,
    rms         real        NOT NULL,
    zcr         real        NOT NULL,
    centroid    real        NOT NULL,
    bandwidth   real        NOT NULL,
    rolloff     real        NOT NULL,
    flatness    real        NOT NULL,
    dominant_hz real        NOT NULL,
    mel         real[]      NOT NULL,
    mfcc        real[]      NOT NULL,
    PRIMARY KEY (sensor_id, ts)
);

CREATE TABLE sensors (
    sensor_id        text        PRIMARY KEY,
    first_ts         timestamptz,
    last_ts          timestamptz,
    chunks           bigint      NOT NULL,
    frames           bigint      NOT NULL,
    last_seq         bigint      NOT NULL,
    last_received_at timestamptz NOT NULL
);
