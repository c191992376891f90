"""The DuckDB schema: tables, views for the common questions, additive migrations, and the digest
that lets a current file open without writing anything (see Store._init_schema)."""

import hashlib

SCHEMA_VERSION = 2
"""1: activations in a DuckDB table (moved into parts on the first read-write open); 2: Parquet parts."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
-- The three per-sample tables carry no PRIMARY KEY: the writer keeps them unique (one writer at a time,
-- `pending` checked inside each write transaction), and their indexes took 2.4 bytes per (sample, feature)
-- pair and were rewritten at every checkpoint (bench/store_bench.py). Files from before keep theirs.
CREATE TABLE IF NOT EXISTS samples (
    sample_id BIGINT NOT NULL,         -- first 8 bytes of sha256(text), signed (unique)
    text VARCHAR NOT NULL,
    n_chars INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS benchmarks (
    name VARCHAR PRIMARY KEY,
    suite VARCHAR NOT NULL,            -- suite that last registered it
    spec JSON NOT NULL,                -- the BenchmarkSpec as given
    n_samples INTEGER NOT NULL,
    cost DOUBLE,                       -- custom selection cost, if any
    updated_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS memberships (
    benchmark VARCHAR NOT NULL,
    position INTEGER NOT NULL,         -- order within the benchmark (0-based)
    sample_id BIGINT NOT NULL          -- unique (benchmark, position)
);
CREATE TABLE IF NOT EXISTS encoders (
    encoder_id INTEGER PRIMARY KEY,
    key VARCHAR UNIQUE NOT NULL,       -- model@rev|sae|layer|pooling(params)|kind
    model VARCHAR NOT NULL,
    model_revision VARCHAR NOT NULL,
    sae VARCHAR NOT NULL,
    layer INTEGER NOT NULL,
    pooling VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,             -- 'sae' or 'null' (random dictionary baseline)
    d_sae INTEGER NOT NULL,
    params JSON NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS encoded (
    encoder_id INTEGER NOT NULL,
    sample_id BIGINT NOT NULL,
    n_tokens INTEGER NOT NULL,         -- prompt length after truncation
    truncated BOOLEAN NOT NULL,
    n_features INTEGER NOT NULL,
    encoded_at TIMESTAMP NOT NULL      -- unique (encoder_id, sample_id)
);
-- activations (encoder_id, sample_id, feature, value REAL: pooled value, n_tokens: tokens on which the
-- feature fired) live in immutable Parquet parts in <db>.parts/, listed here and read through the view
-- `activations` (parts.py); a part's row and its batch's `encoded` markers commit in one transaction.
CREATE TABLE IF NOT EXISTS parts (
    part VARCHAR PRIMARY KEY,          -- file name inside <db>.parts/
    encoder_id INTEGER NOT NULL,
    n_rows BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    suite VARCHAR NOT NULL,
    encoder_id INTEGER,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    status VARCHAR NOT NULL,           -- running | completed | failed
    error VARCHAR,
    params JSON,
    summary JSON,
    report_dir VARCHAR
);
CREATE TABLE IF NOT EXISTS run_features (
    run_id VARCHAR NOT NULL,           -- F(D) of each benchmark at that audit (drift between audits)
    benchmark VARCHAR NOT NULL,
    feature INTEGER NOT NULL,
    encoder_id INTEGER                 -- one F(D) per layer's encoder; NULL in files written before layers had their own
);
-- validation against behaviour (lm-eval per-sample logs, DESIGN §5a); added later: IF NOT EXISTS keeps old files working
CREATE TABLE IF NOT EXISTS models (
    model VARCHAR PRIMARY KEY,         -- lm-eval's model (results' model_args pretrained=...) or the run folder
    source VARCHAR,                    -- run folder(s) its scores were read from
    added_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS sample_scores (
    model VARCHAR NOT NULL,
    benchmark VARCHAR NOT NULL,        -- the stored benchmark the logged task matched
    sample_id BIGINT NOT NULL,         -- joins samples, memberships, activations
    value DOUBLE NOT NULL,             -- the metric's per-sample value (acc, exact_match: 0/1)
    metric VARCHAR NOT NULL,
    filter VARCHAR NOT NULL,
    task VARCHAR NOT NULL,             -- lm-eval task name as logged
    doc_id INTEGER NOT NULL,           -- lm-eval doc_id (first one if a prompt was logged twice)
    PRIMARY KEY (model, benchmark, sample_id)
);
CREATE TABLE IF NOT EXISTS validations (
    validation_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMP NOT NULL,
    encoder_id INTEGER,                -- the encoder whose features were compared with behaviour
    params JSON,
    result JSON                        -- the `validate --json` document
);
-- score tables (DESIGN §5a "Score tables"): one score per (model, benchmark), as `validate --scores --save` read it
CREATE TABLE IF NOT EXISTS benchmark_scores (
    model VARCHAR NOT NULL,
    benchmark VARCHAR NOT NULL,        -- the stored benchmark the table's column matched
    score DOUBLE NOT NULL,             -- points, 0-100 (a 0-1 column was multiplied by 100)
    scale VARCHAR NOT NULL,            -- the column's scale as read: '0-1' or '0-100'
    source VARCHAR,                    -- the file or folder it was read from
    metric VARCHAR,                    -- lm-eval `<metric>,<filter>` where the source says, else NULL
    PRIMARY KEY (model, benchmark)
);
"""

# Views for the common questions. A feature "fires" for a sample when its
# pooled value is > 0; thresholds can be changed in SQL on `activations`.
VIEWS = """
CREATE OR REPLACE VIEW sample_features AS
SELECT a.encoder_id, m.benchmark, b.role, m.position, a.sample_id,
       list(a.feature ORDER BY a.value DESC) AS features,
       list(a.value ORDER BY a.value DESC) AS "values"
FROM activations a JOIN memberships m USING (sample_id) JOIN benchmarks b ON b.name = m.benchmark
GROUP BY ALL;

-- benchmark metrics never count reference corpora (role = 'reference'): they are what the benchmarks are
-- compared with, not part of the suite
CREATE OR REPLACE VIEW bench_memberships AS
SELECT m.* FROM memberships m JOIN benchmarks b ON b.name = m.benchmark AND b.role = 'benchmark';

-- A sample's (encoder, feature) pair is stored once, so over distinct memberships (a prompt listed twice in one
-- benchmark counts once, as in the metrics) count(*) is the distinct samples; count(DISTINCT) was 6x slower.
CREATE OR REPLACE VIEW benchmark_features AS
SELECT a.encoder_id, m.benchmark, a.feature, count(*) AS n_samples
FROM activations a JOIN (SELECT DISTINCT benchmark, sample_id FROM bench_memberships) m USING (sample_id)
WHERE a.value > 0
GROUP BY ALL;

-- |F(D)| straight from the activations: counting benchmark_features' rows first counted each feature's distinct
-- samples, 7x slower on a `max` run's 10^7 pairs (python bench/write_bench.py --sections 7)
CREATE OR REPLACE VIEW coverage AS
SELECT f.encoder_id, f.benchmark, b.n_samples, f.n_features, f.n_features / e.d_sae AS share_of_dsae
FROM (SELECT a.encoder_id, m.benchmark, count(DISTINCT a.feature) AS n_features
      FROM activations a JOIN bench_memberships m USING (sample_id) WHERE a.value > 0 GROUP BY ALL) f
JOIN benchmarks b ON b.name = f.benchmark
JOIN encoders e USING (encoder_id);

-- each benchmark's fired features once (not benchmark_features' per-feature sample counts, twice, and coverage's
-- twice: 27x slower on 10^7 pairs, python bench/write_bench.py --sections 7)
CREATE OR REPLACE VIEW pairwise_overlap AS
WITH fired AS (
  SELECT DISTINCT a.encoder_id, m.benchmark, a.feature
  FROM activations a JOIN bench_memberships m USING (sample_id) WHERE a.value > 0),
sizes AS (SELECT encoder_id, benchmark, count(*) AS n_features FROM fired GROUP BY ALL),
inter AS (
  SELECT x.encoder_id, x.benchmark AS a, y.benchmark AS b, count(*) AS n_shared
  FROM fired x JOIN fired y ON x.encoder_id = y.encoder_id AND x.feature = y.feature
  GROUP BY ALL)
SELECT i.encoder_id, i.a, i.b, i.n_shared, ca.n_features AS n_a, cb.n_features AS n_b,
       i.n_shared / ca.n_features AS asym_a_to_b,
       i.n_shared / least(ca.n_features, cb.n_features) AS sym,
       i.n_shared / (ca.n_features + cb.n_features - i.n_shared) AS jaccard
FROM inter i
JOIN sizes ca ON ca.encoder_id = i.encoder_id AND ca.benchmark = i.a
JOIN sizes cb ON cb.encoder_id = i.encoder_id AND cb.benchmark = i.b;

CREATE OR REPLACE VIEW model_scores AS
SELECT model, benchmark, any_value(metric) AS metric, count(*) AS n_samples, avg(value) AS score
FROM sample_scores GROUP BY ALL;

-- (each sample once: a pair is stored once per sample; count(DISTINCT) over the joined rows was 3.4x slower)
CREATE OR REPLACE VIEW feature_frequency AS
WITH samples AS (
  SELECT encoder_id, feature, count(*) AS n_samples FROM activations
  WHERE value > 0 AND sample_id IN (SELECT sample_id FROM bench_memberships) GROUP BY ALL),
benches AS (SELECT encoder_id, feature, count(*) AS n_benchmarks FROM benchmark_features GROUP BY ALL)
SELECT encoder_id, feature, n_samples, n_benchmarks FROM samples JOIN benches USING (encoder_id, feature);

-- firing frequency of every feature in every benchmark AND reference corpus (share of its encoded samples)
-- (distinct memberships, as in benchmark_features: a prompt listed twice counts once, in n_encoded too)
CREATE OR REPLACE VIEW feature_support AS
WITH mem AS (
  SELECT DISTINCT m.benchmark, b.role, m.sample_id FROM memberships m JOIN benchmarks b ON b.name = m.benchmark),
sizes AS (
  SELECT e.encoder_id, mem.benchmark, count(*) AS n_encoded FROM mem JOIN encoded e USING (sample_id) GROUP BY ALL)
SELECT a.encoder_id, mem.role, mem.benchmark, a.feature, count(*) AS n_samples,
       any_value(z.n_encoded) AS n_encoded, count(*) / any_value(z.n_encoded) AS frequency
FROM activations a JOIN mem USING (sample_id)
JOIN sizes z ON z.encoder_id = a.encoder_id AND z.benchmark = mem.benchmark
WHERE a.value > 0
GROUP BY ALL;

-- per reference feature: its frequency there beside the highest frequency any benchmark reaches
-- (the raw table behind `qscope-eval gaps`, which adds the support test, the null and the grouping)
CREATE OR REPLACE VIEW reference_gaps AS
WITH r AS (SELECT * FROM feature_support WHERE role = 'reference'),
     -- a tie goes to the benchmark registered first (as in `gaps`), not to whichever row comes first
     bm AS (SELECT fs.encoder_id, fs.feature, max(fs.frequency) AS max_benchmark_frequency,
                   first(fs.benchmark ORDER BY fs.frequency DESC, b.updated_at, fs.benchmark) AS closest_benchmark
            FROM feature_support fs JOIN benchmarks b ON b.name = fs.benchmark WHERE fs.role = 'benchmark' GROUP BY ALL)
SELECT r.encoder_id, r.benchmark AS reference, r.feature, r.n_samples, r.frequency,
       coalesce(bm.max_benchmark_frequency, 0) AS max_benchmark_frequency, bm.closest_benchmark,
       r.frequency / greatest(coalesce(bm.max_benchmark_frequency, 0), 1.0 / r.n_encoded) AS ratio
FROM r LEFT JOIN bm USING (encoder_id, feature);
"""


# Additive migrations of older files (same schema version: old readers ignore the additions).
MIGRATIONS = (
    "ALTER TABLE run_features ADD COLUMN IF NOT EXISTS encoder_id INTEGER",  # per-layer drift
    # 'benchmark' or 'reference' (a suite's `reference:` corpora); files from before references read 'benchmark'
    "ALTER TABLE benchmarks ADD COLUMN IF NOT EXISTS role VARCHAR DEFAULT 'benchmark'",
    # 'samples' (lm-eval --log_samples, `validate LOGDIRS`) or 'scores' (a score table, `validate --scores`)
    "ALTER TABLE validations ADD COLUMN IF NOT EXISTS kind VARCHAR DEFAULT 'samples'",
)
SCHEMA_DIGEST = hashlib.sha256("\n".join((SCHEMA, *MIGRATIONS, VIEWS)).encode()).hexdigest()[:16]
