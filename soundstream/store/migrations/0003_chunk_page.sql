-- The chunk rows a page of frames needs, in one round trip: the keys of the rows of
-- one sensor that can hold frames in [range_start, range_end), in (start_ts, seq)
-- order after (after_start, after_seq), until they hold `wanted` frames, plus the
-- next row with `boundary` set (frames from its start on may be in rows not read).
-- Reads n_frames only; the caller joins the keys back for the arrays it wants.
CREATE FUNCTION chunk_page(
    sensor text, range_start timestamptz, range_end timestamptz,
    after_start timestamptz, after_seq bigint, wanted integer
)
RETURNS TABLE (start_ts timestamptz, seq bigint, boundary boolean)
-- A page is a few dozen rows: planned as such, it joins back through the key.
LANGUAGE plpgsql STABLE ROWS 64 AS $$
DECLARE
    row record;
    frames bigint := 0;
BEGIN
    FOR row IN
        SELECT c.start_ts, c.seq, c.n_frames FROM chunk_frames c
        WHERE c.sensor_id = sensor
          AND c.start_ts < range_end
          AND c.start_ts >= range_start - (SELECT longest FROM frame_span)
          AND c.last_ts >= range_start
          AND (c.start_ts, c.seq) > (after_start, after_seq)
        ORDER BY c.start_ts, c.seq
    LOOP
        start_ts := row.start_ts;
        seq := row.seq;
        boundary := frames >= wanted;
        RETURN NEXT;
        EXIT WHEN boundary;
        frames := frames + row.n_frames;
    END LOOP;
END
$$;
